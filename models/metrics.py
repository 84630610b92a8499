"""Fraud detection metrics and the handbook's test-set construction.

Everything here follows Le Borgne et al., *Reproducible Machine Learning for Credit
Card Fraud Detection - Practical Handbook* (chapters 3 and 4), so that the backtest's
figures sit beside the handbook's published table on equal terms:

- :func:`handbook_test_mask` picks a fold's test payments: the 7 days from S+14,
  with the payments of cards already *known* to be compromised removed (cards with
  frauds in the handbook's 7-day training window [S, S+7), plus, before each test day
  S+14+i, the cards with frauds on day S+6+i, the last day whose labels are known).
- :func:`card_precision_at_k`: per test day, each card's maximum score, the share of
  truly compromised cards among the top k (divided by k even when fewer cards exist),
  cards detected on earlier test days removed; the mean over days.
- :func:`recall_per_scenario`: the share of each fraud scenario's frauds among the
  top ``alerts_per_day`` payments of each day.

All functions are pure and take plain arrays or frames; days are UTC calendar days.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

HANDBOOK_TRAIN_DAYS = 7
HANDBOOK_DELAY_DAYS = 7
HANDBOOK_TEST_DAYS = 7


def _as_days(days: np.ndarray | pd.Series) -> np.ndarray:
    """Calendar days as int64 day numbers (accepts datetimes, dates or integers)."""
    values = pd.Series(days)
    if pd.api.types.is_integer_dtype(values):
        return values.to_numpy(dtype=np.int64)
    stamps = pd.to_datetime(values)
    if stamps.dt.tz is not None:
        stamps = stamps.dt.tz_convert("UTC").dt.tz_localize(None)
    return (stamps.dt.floor("D").to_numpy().astype("datetime64[D]")).astype(np.int64)


def day_number(day: date) -> int:
    """The day number :func:`_as_days` gives ``day`` (days since 1970-01-01)."""
    return int(np.datetime64(day.isoformat(), "D").astype(np.int64))


def auc_roc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    labels = np.asarray(labels)
    if labels.min(initial=0) == labels.max(initial=0):
        return float("nan")
    return float(roc_auc_score(labels, scores))


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision (scikit-learn); NaN when there is no positive."""
    labels = np.asarray(labels)
    if not (labels == 1).any():
        return float("nan")
    return float(average_precision_score(labels, scores))


def handbook_test_mask(
    days: np.ndarray | pd.Series,
    customers: np.ndarray | pd.Series,
    labels: np.ndarray | pd.Series,
    fold_start: date,
    *,
    train_days: int = HANDBOOK_TRAIN_DAYS,
    delay_days: int = HANDBOOK_DELAY_DAYS,
    test_days: int = HANDBOOK_TEST_DAYS,
) -> np.ndarray:
    """Boolean mask over all payments: the fold's test set exactly as the handbook.

    ``days``, ``customers`` and ``labels`` describe every payment of the data set
    (at least those from ``fold_start`` to the end of the test period). The
    known-compromised cards start as the cards with a fraud in
    ``[S, S + train_days)``; before test day ``S + train_days + delay_days + i`` the
    cards with a fraud on day ``S + train_days + i - 1`` are added, and that test
    day's payments of known cards are dropped. The window is the handbook's 7 days
    whatever the model's own training window is, so the test sets are identical.
    """
    day_arr = _as_days(days)
    cust_arr = np.asarray(customers)
    fraud = np.asarray(labels).astype(bool)
    start = day_number(fold_start)
    in_train = (day_arr >= start) & (day_arr < start + train_days)
    known = set(np.unique(cust_arr[in_train & fraud]).tolist())
    mask = np.zeros(len(day_arr), dtype=bool)
    for i in range(test_days):
        delay_day = start + train_days + i - 1
        known.update(np.unique(cust_arr[(day_arr == delay_day) & fraud]).tolist())
        test_day = start + train_days + delay_days + i
        on_day = day_arr == test_day
        mask |= on_day & ~np.isin(cust_arr, np.fromiter(known, dtype=cust_arr.dtype))
    return mask


def card_precision_at_k(
    days: np.ndarray | pd.Series,
    customers: np.ndarray | pd.Series,
    labels: np.ndarray | pd.Series,
    scores: np.ndarray | pd.Series,
    k: int = 100,
    *,
    remove_detected: bool = True,
) -> tuple[float, list[float]]:
    """Card precision@k: ``(mean over days, per-day values in day order)``.

    Per day: each card's maximum score and maximum label; the ``k`` cards with the
    highest score (ties broken by card id, ascending); the number of compromised
    cards among them divided by ``k``. Cards detected (compromised and in a day's top
    k) are removed from the following days when ``remove_detected``.
    """
    frame = pd.DataFrame(
        {
            "day": _as_days(days),
            "card": np.asarray(customers),
            "label": np.asarray(labels).astype(np.int64),
            "score": np.asarray(scores, dtype=np.float64),
        }
    )
    detected: set = set()
    per_day: list[float] = []
    for _, day_frame in frame.groupby("day", sort=True):
        if detected:
            day_frame = day_frame[~day_frame["card"].isin(detected)]
        cards = day_frame.groupby("card", sort=True)[["score", "label"]].max()
        cards = cards.reset_index().sort_values(
            ["score", "card"], ascending=[False, True], kind="stable"
        )
        top = cards.head(k)
        hits = top.loc[top["label"] == 1, "card"].tolist()
        per_day.append(len(hits) / k)
        if remove_detected:
            detected.update(hits)
    mean = float(np.mean(per_day)) if per_day else float("nan")
    return mean, per_day


def recall_per_scenario(
    days: np.ndarray | pd.Series,
    scenarios: np.ndarray | pd.Series,
    scores: np.ndarray | pd.Series,
    alerts_per_day: int = 100,
) -> dict[int, float]:
    """Per fraud scenario (> 0), the share of its frauds among each day's top alerts.

    Alerts are the ``alerts_per_day`` payments of each day with the highest score
    (ties broken by position). Scenarios with no fraud are left out.
    """
    day_arr = _as_days(days)
    scen = np.asarray(scenarios).astype(np.int64)
    score = np.asarray(scores, dtype=np.float64)
    alerted = np.zeros(len(score), dtype=bool)
    for day in np.unique(day_arr):
        idx = np.flatnonzero(day_arr == day)
        order = idx[np.argsort(-score[idx], kind="stable")]
        alerted[order[:alerts_per_day]] = True
    result: dict[int, float] = {}
    for s in sorted(set(np.unique(scen).tolist()) - {0}):
        of_s = scen == s
        result[int(s)] = float(alerted[of_s].sum() / of_s.sum())
    return result


@dataclass(frozen=True)
class FoldMetrics:
    """The backtest's figures for one fold."""

    fold_start: date
    n_payments: int
    n_frauds: int
    auc_roc: float
    average_precision: float
    card_precision_100: float
    recall_per_scenario: dict[int, float]


def fold_metrics(
    fold_start: date,
    days: np.ndarray | pd.Series,
    customers: np.ndarray | pd.Series,
    labels: np.ndarray | pd.Series,
    scores: np.ndarray | pd.Series,
    scenarios: np.ndarray | pd.Series | None = None,
    *,
    k: int = 100,
) -> FoldMetrics:
    """All figures of one fold from its (already masked) test payments."""
    labels_arr = np.asarray(labels)
    cp, _ = card_precision_at_k(days, customers, labels_arr, scores, k)
    recalls = (
        recall_per_scenario(days, scenarios, scores, k) if scenarios is not None else {}
    )
    return FoldMetrics(
        fold_start=fold_start,
        n_payments=len(labels_arr),
        n_frauds=int(labels_arr.sum()),
        auc_roc=auc_roc(labels_arr, scores),
        average_precision=average_precision(labels_arr, scores),
        card_precision_100=cp,
        recall_per_scenario=recalls,
    )


def test_period(fold_start: date) -> tuple[date, date]:
    """``[first, end)`` of the fold's test period: the 7 days from S + 14."""
    first = fold_start + timedelta(days=HANDBOOK_TRAIN_DAYS + HANDBOOK_DELAY_DAYS)
    return first, first + timedelta(days=HANDBOOK_TEST_DAYS)
