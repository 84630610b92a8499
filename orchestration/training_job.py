"""``fraudmesh train``: fit the fraud model on point-in-time correct examples.

The label delay decides which payments can be training examples: a model trained at
``--until`` U scores payments from U on, and at U only the labels of payments before
U - 7 days are known. So the examples are the payments in
``[U - 7 d - train_days, U - 7 d)``, with their labels, and every feature of every
example is point in time (``orchestration.training_data.build_examples``). The
backtest trains through :func:`fit_window` in the same way, with the label end
S + 7 d of each fold.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from fraudmesh.dataset import day_start, default_data_path, load_transactions, parse_day
from fraudmesh.errors import DataError
from models.metrics import HANDBOOK_DELAY_DAYS
from models.training import TrainConfig, TrainResult, train_model
from orchestration.outputs import output_dir

logger = logging.getLogger(__name__)

# Chosen by measurement on the backtest (README, "Training and backtest").
DEFAULT_TRAIN_DAYS = 42
MIN_TRAIN_DAYS = 3
BUILD_CHUNK_DAYS = 7


@dataclass
class FitOutcome:
    """A trained model and the window and data it came from."""

    result: TrainResult
    start: datetime
    label_end: datetime
    n_examples: int
    n_frauds: int
    build_s: float


def resolve_data(data: str | Path | None) -> Path:
    """The data file: the option's value, else the full set or the sample."""
    return Path(data) if data is not None else default_data_path()


def available_days(
    transactions: pd.DataFrame, path: Path, label_end: datetime, train_days: int
) -> int:
    """``train_days``, shortened to the days of data before ``label_end``.

    Raises DataError naming the file and date when fewer than MIN_TRAIN_DAYS remain.
    """
    if len(transactions) == 0:
        raise DataError("no payments before the training end", path=path)
    first = transactions["tx_datetime"].iloc[0].normalize().to_pydatetime()
    days = min(train_days, (label_end - first).days)
    if days < MIN_TRAIN_DAYS:
        raise DataError(
            f"only {max(days, 0)} days of labelled payments between the first payment "
            f"({first:%Y-%m-%d}) and {label_end:%Y-%m-%d} (labels are known 7 days "
            f"late); use a later --until",
            path=path,
            column="tx_datetime",
        )
    if days < train_days:
        logger.warning(
            "training window shortened to %d days: the data starts %s", days, first
        )
    return days


def fit_window(
    transactions: pd.DataFrame,
    label_end: datetime,
    train_days: int,
    *,
    config: TrainConfig | None = None,
    state_dir: Path | None = None,
    progress: object | None = None,
) -> FitOutcome:
    """Train on the payments of ``[label_end - train_days, label_end)``.

    ``progress`` is an optional ``rich.progress.Progress`` that gets a task per
    epoch. Raises DataError when the window holds no fraud (nothing to learn).
    """
    start = label_end - timedelta(days=train_days)
    state_dir = Path(state_dir).resolve() if state_dir else default_state_dir()
    began = time.perf_counter()
    examples = build_window(transactions, start, label_end, state_dir=state_dir)
    build_s = time.perf_counter() - began
    n_frauds = int(examples.labels.sum())
    if len(examples.labels) == 0 or n_frauds == 0:
        raise DataError(
            f"no {'fraud' if len(examples.labels) else 'payment'} between "
            f"{start:%Y-%m-%d} and {label_end:%Y-%m-%d}; choose another window",
            column="tx_fraud" if len(examples.labels) else "tx_datetime",
        )
    days = _day_numbers(examples.frame["tx_datetime"])
    config = config or TrainConfig()
    task = None
    if progress is not None:
        task = progress.add_task(
            f"training {start:%Y-%m-%d}..{label_end:%Y-%m-%d}",
            total=config.max_epochs * config.members,
        )

    def on_epoch(record: dict[str, float]) -> None:
        if progress is not None and task is not None:
            progress.update(task, advance=1)
        logger.info("epoch %s", record)

    static, sequence = examples.static, examples.sequence
    lengths, labels = examples.lengths, examples.labels
    del examples  # the arrays are normalised in place below; drop the frame
    result = train_model(
        static,
        sequence,
        lengths,
        labels,
        days,
        config,
        on_epoch=on_epoch,
        inplace=True,
    )
    if progress is not None and task is not None:
        progress.update(task, completed=config.max_epochs * config.members)
    return FitOutcome(
        result=result,
        start=start,
        label_end=label_end,
        n_examples=len(labels),
        n_frauds=n_frauds,
        build_s=build_s,
    )


def build_window(
    transactions: pd.DataFrame,
    start: datetime,
    end: datetime,
    *,
    state_dir: Path | None = None,
    chunk_days: int = BUILD_CHUNK_DAYS,
):
    """``build_examples`` over ``[start, end)`` in chunks of ``chunk_days``.

    Same result as one call (examples are per payment and point in time), but the
    peak memory of the feature computation stays that of one chunk.
    """
    from orchestration.training_data import Examples, build_examples

    parts = []
    lo = start
    while lo < end:
        hi = min(lo + timedelta(days=chunk_days), end)
        parts.append(build_examples(transactions, lo, hi, state_dir=state_dir))
        lo = hi
    if len(parts) == 1:
        return parts[0]
    joined = Examples(
        frame=pd.concat([p.frame for p in parts], ignore_index=True),
        static=np.concatenate([p.static for p in parts]),
        sequence=np.concatenate([p.sequence for p in parts]),
        lengths=np.concatenate([p.lengths for p in parts]),
        labels=np.concatenate([p.labels for p in parts]),
    )
    return joined


def _day_numbers(times: pd.Series) -> np.ndarray:
    stamps = pd.to_datetime(times, utc=True).dt.tz_localize(None)
    return stamps.dt.floor("D").to_numpy().astype("datetime64[D]").astype(np.int64)


def artifact_metadata(outcome: FitOutcome, data_path: Path) -> dict:
    """The metadata of an artefact trained by :func:`fit_window`."""
    from models.artifact import file_fingerprint

    result = outcome.result
    cfg = result.config
    return {
        "network": result.network_spec(),
        "normalisation": result.normaliser.to_dict(),
        "train_config": cfg.to_dict(),
        "training_window": {
            "start": outcome.start.isoformat(),
            "label_end": outcome.label_end.isoformat(),
            "label_delay_days": HANDBOOK_DELAY_DAYS,
            "train_days": (outcome.label_end - outcome.start).days,
            "n_examples": outcome.n_examples,
            "n_frauds": outcome.n_frauds,
        },
        "data": {
            "path": str(data_path),
            "sha256": file_fingerprint(data_path),
        },
        "metrics": {
            **result.val_metrics,
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
            "n_train": result.n_train,
            "n_val": result.n_val,
            "train_s": round(result.train_s, 1),
            "build_examples_s": round(outcome.build_s, 1),
        },
    }


def default_state_dir() -> Path:
    """The settings' state directory as an absolute path (Feast needs one)."""
    from fraudmesh.config import get_settings

    return Path(get_settings().state_dir).resolve()


def default_models_dir() -> Path:
    from fraudmesh.config import get_settings

    settings = get_settings()
    if settings.model_dir is not None:
        return Path(settings.model_dir)
    return Path(settings.state_dir) / "models"


def run_train(
    data: str | Path | None,
    until: str,
    out: str | Path | None,
    train_days: int | None,
    *,
    config: TrainConfig | None = None,
    state_dir: Path | None = None,
) -> Path:
    """Train on labels known at ``until`` and write an artefact; returns its dir.

    ``until`` is YYYY-MM-DD; ``out`` the models directory (default the settings'
    model dir); ``train_days`` the window length (default DEFAULT_TRAIN_DAYS).
    Raises DataError naming the option, file, column or date on bad input.
    """
    from rich.console import Console
    from rich.progress import Progress

    from models.artifact import save_artifact

    path = resolve_data(data)
    until_day = parse_day(until, option="--until")
    train_days = DEFAULT_TRAIN_DAYS if train_days is None else int(train_days)
    if train_days < MIN_TRAIN_DAYS:
        raise DataError(f"--train-days: {train_days} is below {MIN_TRAIN_DAYS}")
    # Checked (and made) before minutes of training, not after.
    models_dir = output_dir(Path(out) if out is not None else default_models_dir(),
                            "--out")
    label_end = day_start(until_day) - timedelta(days=HANDBOOK_DELAY_DAYS)
    console = Console(stderr=True)
    transactions = load_transactions(path, end=day_start(until_day))
    console.print(f"{len(transactions)} payments before {until_day} in {path}")
    train_days = available_days(transactions, path, label_end, train_days)
    with Progress(console=console, transient=True) as progress:
        outcome = fit_window(
            transactions,
            label_end,
            train_days,
            config=config,
            state_dir=state_dir,
            progress=progress,
        )
    version_dir = save_artifact(
        models_dir, outcome.result.net.state_dict(), artifact_metadata(outcome, path)
    )
    metrics = outcome.result.val_metrics
    console.print(
        f"model {version_dir.name}: {outcome.n_examples} examples "
        f"({outcome.n_frauds} frauds) from {outcome.start:%Y-%m-%d} to "
        f"{label_end:%Y-%m-%d}, validation AP {metrics.get('val_ap', float('nan')):.3f}"
        f", written to {version_dir}"
    )
    return version_dir
