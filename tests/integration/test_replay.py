"""A short replay end to end: one day of the sample through the real mesh.

Also the check that online scores agree with backtest-style scores
(build_examples + Scorer, same model) on the same payments.
"""

from __future__ import annotations

import json

import pytest

from fraudmesh.dataset import SAMPLE_PATH
from orchestration.replay import run_replay
from tests.integration.conftest import MESH_DAY

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def replayed(mesh_url, mesh_models_dir, redis_url, tmp_path_factory):
    out = tmp_path_factory.mktemp("replay-report")
    # Warm again for MESH_DAY: tests before this one may have scored payments.
    report = run_replay(
        SAMPLE_PATH,
        MESH_DAY,
        MESH_DAY,
        url=mesh_url,
        report_dir=out,
        concurrency=8,
        batch_size=8,
        models_dir=mesh_models_dir,
        materialize=True,
        redis_url=redis_url,
        show_progress=False,
    )
    return report, out


def test_replay_scores_every_payment_and_reports(replayed):
    report, out = replayed
    assert report["payments"] > 1000
    assert sum(report["decisions"].values()) == report["payments"]
    assert report["labels_sent"] > 0
    assert report["duplicates"] == 0
    assert report["latency_ms"]["p50"] > 0
    written = json.loads((out / "report.json").read_text())
    assert written["payments"] == report["payments"]
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3


def test_online_scores_agree_with_backtest_scores(replayed):
    agreement = replayed[0]["agreement"]
    assert agreement["available"], agreement
    assert agreement["payments"] == replayed[0]["payments"]
    assert agreement["within_0_01"] >= 0.99, agreement
    assert agreement["mean_abs_diff"] <= 1e-3, agreement
    # Every payment, not just most: a fraud label reaches the mesh at its due
    # second, so no feature differs from the offline one.
    assert agreement["max_abs_diff"] <= 1e-3, agreement
