"""Daily snapshot tables from per-day aggregates (offline side, no Feast).

A snapshot row of day D describes an entity as of D 00:00 UTC, from the days
before D only (terminal risk also skips the 7-day label delay). The per-day
aggregates and the window maths are the same as online
(``transforms.customer_snapshot`` / ``transforms.terminal_snapshot``); only how
the aggregates are gathered differs (a pandas frame here, Redis hashes online).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from feature_repo import transforms as tf

# The snapshot tables' timestamp column (UTC midnight of the day a row is for).
TIMESTAMP_FIELD = "snapshot_ts"


@dataclass(frozen=True)
class DayAggregates:
    """Dense per-day aggregates: rows are entities, columns days ``first_day..``."""

    keys: np.ndarray  # entity ids (str), [K]
    first_day: int  # unix day number of column 0
    columns: dict[str, np.ndarray]  # name -> float64 [K, days]


def unix_seconds(times: pd.Series) -> np.ndarray:
    """UTC-aware timestamps to int64 unix seconds."""
    return times.dt.tz_convert("UTC").astype("int64").to_numpy() // 1_000_000_000


def _dense(keys: pd.Series, days: np.ndarray, values: dict[str, np.ndarray],
           first_day: int, n_days: int) -> DayAggregates:
    codes, uniques = pd.factorize(keys, sort=True)
    flat = codes.astype(np.int64) * n_days + (days - first_day)
    size = len(uniques) * n_days
    columns = {
        name: np.bincount(flat, weights=v, minlength=size).reshape(-1, n_days)
        for name, v in values.items()
    }
    return DayAggregates(np.asarray(uniques, dtype=object), first_day, columns)


def day_aggregates(
    tx: pd.DataFrame, first_day: int, n_days: int
) -> tuple[DayAggregates, DayAggregates]:
    """Customer (count/sum/sumsq) and terminal (count/fraud) per-day aggregates."""
    days = unix_seconds(tx["tx_datetime"]) // tf.SECONDS_PER_DAY
    amount = tx["tx_amount"].to_numpy(dtype=np.float64)
    ones = np.ones(len(tx))
    customers = _dense(tx["customer_key"], days,
                       {"count": ones, "sum": amount, "sumsq": amount * amount},
                       first_day, n_days)
    terminals = _dense(tx["terminal_key"], days,
                       {"count": ones,
                        "fraud": tx["tx_fraud"].to_numpy(dtype=np.float64)},
                       first_day, n_days)
    return customers, terminals


def _window(agg: DayAggregates, name: str, day: int, lookback: int) -> np.ndarray:
    """Columns of days [day - lookback, day), zero-padded before the data starts."""
    lo, hi = day - lookback - agg.first_day, day - agg.first_day
    data = agg.columns[name]
    out = np.zeros((data.shape[0], lookback))
    src_lo, src_hi = max(lo, 0), min(hi, data.shape[1])
    if src_hi > src_lo:
        out[:, src_lo - lo: src_hi - lo] = data[:, src_lo:src_hi]
    return out


def _frame(key_name: str, keys: np.ndarray, day: int,
           features: dict[str, np.ndarray], active: np.ndarray) -> pd.DataFrame:
    frame = pd.DataFrame({key_name: keys[active]})
    for name, values in features.items():
        frame[name] = values[active]
    frame[TIMESTAMP_FIELD] = pd.Timestamp(day * tf.SECONDS_PER_DAY, unit="s",
                                          tz="UTC")
    return frame


def customer_rows(agg: DayAggregates, day: int) -> pd.DataFrame:
    """Customer snapshot rows of ``day`` for customers active in the look-back."""
    lb = tf.CUSTOMER_LOOKBACK_DAYS
    counts = _window(agg, "count", day, lb)
    feats = tf.customer_snapshot(counts, _window(agg, "sum", day, lb),
                                 _window(agg, "sumsq", day, lb))
    return _frame("customer_id", agg.keys, day, feats, counts.sum(axis=1) > 0)


def terminal_rows(agg: DayAggregates, day: int) -> pd.DataFrame:
    """Terminal snapshot rows of ``day`` for terminals active in the look-back."""
    lb = tf.TERMINAL_LOOKBACK_DAYS
    counts = _window(agg, "count", day, lb)
    feats = tf.terminal_snapshot(counts, _window(agg, "fraud", day, lb))
    return _frame("terminal_id", agg.keys, day, feats, counts.sum(axis=1) > 0)
