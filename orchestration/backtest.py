"""``fraudmesh backtest``: the handbook's prequential protocol.

For each fold start S: the model trains on payments before S + 7 d with only the
labels of payments before S + 7 d (the last ``train_days`` days; 7 reproduces the
handbook), and scores the 7 days from S + 14 d. Every payment of those test days
gets a row in the predictions Parquet (``fold_start`` YYYY-MM-DD, ``transaction_id``,
``score``); the metrics use the handbook's test set, with the payments of cards
already known to be compromised removed (``models.metrics.handbook_test_mask``).
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from fraudmesh.dataset import day_start, load_transactions, parse_day
from fraudmesh.errors import DataError
from models.metrics import (
    HANDBOOK_DELAY_DAYS,
    HANDBOOK_TEST_DAYS,
    HANDBOOK_TRAIN_DAYS,
    FoldMetrics,
    fold_metrics,
    handbook_test_mask,
)
from models.training import TrainConfig
from orchestration.outputs import output_file
from orchestration.training_job import (
    DEFAULT_TRAIN_DAYS,
    MIN_TRAIN_DAYS,
    fit_window,
    resolve_data,
)

SCENARIO_NAMES = {
    1: "1: amount > 220",
    2: "2: compromised terminal",
    3: "3: leaked credentials",
}

# The handbook's published test performance on this data (Le Borgne et al.,
# chapters 5-7; ../shared/data/README.md): AUC ROC, AP, card precision@100.
HANDBOOK_RESULTS: list[tuple[str, float, float, float]] = [
    ("decision tree", 0.797, 0.579, 0.284),
    ("logistic regression", 0.868, 0.623, 0.297),
    ("random forest", 0.870, 0.678, 0.299),
    ("XGBoost", 0.869, 0.687, 0.303),
    ("feed-forward network", 0.876, 0.675, 0.303),
    ("CNN over the last transactions", 0.872, 0.599, 0.288),
    ("LSTM over the last transactions", 0.876, 0.665, 0.297),
    ("LSTM with attention", 0.874, 0.667, 0.295),
]
TARGETS = {"auc_roc": 0.876, "average_precision": 0.687, "card_precision_100": 0.303}


@dataclass
class FoldReport:
    metrics: FoldMetrics
    train_s: float
    build_s: float
    best_epoch: int
    n_train_examples: int


def parse_fold_starts(value: str) -> list[date]:
    """Comma-separated YYYY-MM-DD days, increasing; DataError on a bad one."""
    parts = [p.strip() for p in value.split(",") if p.strip()]
    if not parts:
        raise DataError(f"--fold-starts: {value!r} names no day")
    days = [parse_day(p, option="--fold-starts") for p in parts]
    if len(set(days)) != len(days):
        raise DataError(f"--fold-starts: {value!r} repeats a day")
    return sorted(days)


def _check_coverage(
    transactions: pd.DataFrame, path: Path, folds: list[date], train_days: int
) -> None:
    first = transactions["tx_datetime"].iloc[0].date()
    last = transactions["tx_datetime"].iloc[-1].date()
    for s in folds:
        test_end = s + timedelta(
            days=HANDBOOK_TRAIN_DAYS + HANDBOOK_DELAY_DAYS + HANDBOOK_TEST_DAYS - 1
        )
        if test_end > last:
            raise DataError(
                f"--fold-starts: fold {s} tests up to {test_end}, after the last "
                f"payment ({last}); use a fold start up to "
                f"{last - timedelta(days=20)}",
                path=path,
            )
        label_end = s + timedelta(days=HANDBOOK_TRAIN_DAYS)
        if (label_end - first).days < MIN_TRAIN_DAYS:
            raise DataError(
                f"--fold-starts: fold {s} leaves fewer than {MIN_TRAIN_DAYS} "
                f"training days after the first payment ({first})",
                path=path,
            )


def run_backtest(
    data: str | Path | None,
    fold_starts: str,
    out: str | Path,
    train_days: int | None,
    *,
    config: TrainConfig | None = None,
    state_dir: Path | None = None,
) -> list[FoldReport]:
    """Run the folds, write the predictions Parquet, print the tables."""
    from rich.console import Console
    from rich.progress import Progress

    from models.scorer import Scorer
    from orchestration.training_data import build_examples
    from orchestration.training_job import default_state_dir

    path = resolve_data(data)
    state_dir = Path(state_dir).resolve() if state_dir else default_state_dir()
    folds = parse_fold_starts(fold_starts)
    train_days = DEFAULT_TRAIN_DAYS if train_days is None else int(train_days)
    if train_days < MIN_TRAIN_DAYS:
        raise DataError(f"--train-days: {train_days} is below {MIN_TRAIN_DAYS}")
    out = output_file(out, "--out", ".parquet")  # before the folds are trained
    console = Console()
    began = time.perf_counter()
    transactions = load_transactions(path)
    _check_coverage(transactions, path, folds, train_days)
    first_day = transactions["tx_datetime"].iloc[0].normalize()

    reports: list[FoldReport] = []
    predictions: list[pd.DataFrame] = []
    with Progress(console=console, transient=True) as progress:
        for s in folds:
            label_end = day_start(s + timedelta(days=HANDBOOK_TRAIN_DAYS))
            days = min(train_days, (label_end - first_day.to_pydatetime()).days)
            outcome = fit_window(
                transactions,
                label_end,
                days,
                config=config,
                state_dir=state_dir,
                progress=progress,
            )
            test_start = label_end + timedelta(days=HANDBOOK_DELAY_DAYS)
            test_end = test_start + timedelta(days=HANDBOOK_TEST_DAYS)
            examples = build_examples(
                transactions, test_start, test_end, state_dir=state_dir
            )
            scorer = Scorer(
                outcome.result.net,
                outcome.result.normaliser,
                _static_names(),
                version=f"backtest-{s}",
            )
            scores = _predict(scorer, examples)
            frame = examples.frame
            predictions.append(
                pd.DataFrame(
                    {
                        "fold_start": s.isoformat(),
                        "transaction_id": frame["transaction_id"].to_numpy(),
                        "score": scores,
                    }
                )
            )
            metrics = _fold_metrics(transactions, frame, scores, s)
            reports.append(
                FoldReport(
                    metrics=metrics,
                    train_s=outcome.result.train_s,
                    build_s=outcome.build_s,
                    best_epoch=outcome.result.best_epoch,
                    n_train_examples=outcome.n_examples,
                )
            )
            console.print(_fold_line(metrics, outcome))
            del examples, outcome, scorer
            gc.collect()

    table = pd.concat(predictions, ignore_index=True)
    tmp = out.with_name(f".{out.name}.tmp")
    table.to_parquet(tmp, index=False)
    tmp.replace(out)
    print_report(console, reports, train_days, time.perf_counter() - began)
    console.print(f"predictions: {len(table)} rows written to {out}")
    return reports


def _static_names() -> list[str]:
    from feature_repo.transforms import STATIC_FEATURES

    return list(STATIC_FEATURES)


def _predict(scorer, examples, batch: int = 8192) -> np.ndarray:
    out = np.empty(len(examples.labels), dtype=np.float32)
    for lo in range(0, len(out), batch):
        hi = lo + batch
        out[lo:hi] = scorer.predict(
            examples.static[lo:hi], examples.sequence[lo:hi], examples.lengths[lo:hi]
        )
    return out


def _fold_metrics(
    transactions: pd.DataFrame, frame: pd.DataFrame, scores: np.ndarray, s: date
) -> FoldMetrics:
    """Metrics on the handbook's test set: known-compromised cards removed."""
    window = transactions[
        (transactions["tx_datetime"] >= day_start(s))
        & (transactions["tx_datetime"] < day_start(s + timedelta(days=21)))
    ]
    mask = handbook_test_mask(
        window["tx_datetime"], window["customer_id"], window["tx_fraud"], s
    )
    keep_ids = window.loc[mask, "transaction_id"].to_numpy()
    keep = np.isin(frame["transaction_id"].to_numpy(), keep_ids)
    test = frame[keep]
    scenarios = (
        test["tx_fraud_scenario"] if "tx_fraud_scenario" in test.columns else None
    )
    return fold_metrics(
        s,
        test["tx_datetime"],
        test["customer_id"],
        test["tx_fraud"],
        scores[keep],
        scenarios,
    )


def _fold_line(metrics: FoldMetrics, outcome) -> str:
    return (
        f"fold {metrics.fold_start}: AUC {metrics.auc_roc:.3f} "
        f"AP {metrics.average_precision:.3f} CP@100 {metrics.card_precision_100:.3f}"
        f" ({outcome.n_examples} training examples, features "
        f"{outcome.build_s:.0f} s, training {outcome.result.train_s:.0f} s, "
        f"best epoch {outcome.result.best_epoch})"
    )


def mean_metrics(reports: list[FoldReport]) -> dict[str, float]:
    """Means over folds of AUC ROC, AP and card precision@100 (NaN-aware)."""
    return {
        key: float(np.nanmean([getattr(r.metrics, key) for r in reports]))
        for key in ("auc_roc", "average_precision", "card_precision_100")
    }


def print_report(console, reports: list[FoldReport], train_days: int, wall_s: float):
    """The per-fold table with means, the handbook's table, recall per scenario."""
    from rich.table import Table

    ours = Table(title=f"fraudmesh backtest (training window {train_days} days)")
    for col in ("fold start", "test payments", "frauds", "AUC ROC", "AP", "CP@100"):
        ours.add_column(col, justify="right")
    for r in reports:
        m = r.metrics
        ours.add_row(
            str(m.fold_start),
            str(m.n_payments),
            str(m.n_frauds),
            f"{m.auc_roc:.3f}",
            f"{m.average_precision:.3f}",
            f"{m.card_precision_100:.3f}",
        )
    means = mean_metrics(reports)
    ours.add_row(
        "mean",
        "",
        "",
        f"{means['auc_roc']:.3f}",
        f"{means['average_precision']:.3f}",
        f"{means['card_precision_100']:.3f}",
        style="bold",
    )
    console.print(ours)

    book = Table(title="the handbook's published means (same folds and test sets)")
    for col in ("model", "AUC ROC", "AP", "CP@100"):
        book.add_column(col, justify="right")
    for name, auc, ap, cp in HANDBOOK_RESULTS:
        book.add_row(name, f"{auc:.3f}", f"{ap:.3f}", f"{cp:.3f}")
    book.add_row(
        "fraudmesh (this run)",
        f"{means['auc_roc']:.3f}",
        f"{means['average_precision']:.3f}",
        f"{means['card_precision_100']:.3f}",
        style="bold",
    )
    console.print(book)
    beats = all(means[k] > v for k, v in TARGETS.items())
    console.print(
        "beats the best handbook model on every mean"
        if beats
        else "does NOT beat the best handbook model on every mean "
        f"(targets: AUC > {TARGETS['auc_roc']}, AP > "
        f"{TARGETS['average_precision']}, CP@100 > {TARGETS['card_precision_100']})"
    )

    scenarios = sorted({s for r in reports for s in r.metrics.recall_per_scenario})
    if scenarios:
        rec = Table(title="recall per fraud scenario at 100 alerts a day")
        rec.add_column("fold start")
        for s in scenarios:
            rec.add_column(SCENARIO_NAMES.get(s, str(s)), justify="right")
        for r in reports:
            rec.add_row(
                str(r.metrics.fold_start),
                *[
                    f"{r.metrics.recall_per_scenario.get(s, float('nan')):.3f}"
                    for s in scenarios
                ],
            )
        rec.add_row(
            "mean",
            *[
                f"{np.nanmean([r.metrics.recall_per_scenario.get(s, np.nan) for r in reports]):.3f}"  # noqa: E501
                for s in scenarios
            ],
            style="bold",
        )
        console.print(rec)
    console.print(f"wall time {wall_s:.0f} s")
