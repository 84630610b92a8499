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


def _few_payments(tmp_path, bad_amount: bool):
    """The first 20 payments of MESH_DAY as a data file; one amount too large."""
    import pandas as pd

    from fraudmesh.dataset import day_start, parse_day

    day = day_start(parse_day(MESH_DAY, option="--from"))
    frame = pd.read_parquet(SAMPLE_PATH)
    frame = frame[frame["tx_datetime"] >= pd.Timestamp(day).tz_localize(None)]
    frame = frame.head(20).reset_index(drop=True)
    if bad_amount:
        frame.loc[10, "tx_amount"] = 1e15
    path = tmp_path / "few.parquet"
    frame.to_parquet(path)
    return path


def test_a_payment_the_mesh_refuses_stops_the_replay_with_one_error(
    mesh_url, tmp_path, replayed
):
    # `replayed` first: this test runs after the agreement check's replay.
    from fraudmesh.dataset import parse_day
    from orchestration.replay import ReplayError, replay

    path = _few_payments(tmp_path, bad_amount=True)
    day = parse_day(MESH_DAY, option="--from")
    with pytest.raises(ReplayError, match="422.*amount"):
        replay(path, day, day, mesh_url, batch_size=4, show_progress=False)


def test_a_replay_without_a_mesh_says_so(tmp_path):
    import socket

    from fraudmesh.dataset import parse_day
    from orchestration.replay import ReplayError, replay

    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = _few_payments(tmp_path, bad_amount=False)
    day = parse_day(MESH_DAY, option="--from")
    with pytest.raises(ReplayError, match="no mesh answers"):
        replay(path, day, day, f"http://127.0.0.1:{port}", show_progress=False)
