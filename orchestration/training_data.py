"""Point-in-time correct training examples (the offline half of the features).

``build_examples(transactions, start, end)`` returns the payments in
``[start, end)`` with:

- the daily snapshot views (customer spending; terminal risk over payments and
  labels at least 7 days older than the payment's day) joined by Feast historical
  retrieval on the DuckDB offline store, from per-day snapshot Parquet tables
  cached under ``<state_dir>/snapshots/<fingerprint>/``;
- the time since the terminal's latest fraud paid at least 7 days before the
  payment (to the second), the request-time features and the behaviour history
  (last HISTORY_LENGTH events strictly before the payment), computed by the same
  functions as online.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from feature_repo import transforms as tf
from fraudmesh.errors import DataError, FeatureStoreError

log = logging.getLogger("fraudmesh.features.training")
RETRIEVAL_CHUNK_ROWS = 100_000
INPUT_CHUNK_ROWS = 32_768
FRAME_COLUMNS = [
    "payment_key", "transaction_id", "customer_id", "customer_key", "terminal_key",
    "tx_datetime", "tx_time_days", "tx_amount", "tx_fraud",
]
_REQUIRED = ["transaction_id", "customer_id", "customer_key", "terminal_key",
             "payment_key", "tx_datetime", "tx_amount", "tx_fraud"]


@dataclass(frozen=True)
class Examples:
    """Model inputs of payments in time order (see CONTRACTS.md)."""

    frame: pd.DataFrame
    static: np.ndarray  # float32 [B, len(STATIC_FEATURES)]
    sequence: np.ndarray  # float32 [B, HISTORY_LENGTH, len(SEQUENCE_FEATURES)]
    lengths: np.ndarray  # int64 [B]
    labels: np.ndarray  # float32 [B]


def build_examples(
    transactions: pd.DataFrame,
    start: datetime,
    end: datetime,
    *,
    state_dir: Path | None = None,
) -> Examples:
    """Examples of the payments in ``[start, end)`` (UTC), in time order.

    ``transactions`` is the frame of ``fraudmesh.dataset.load_transactions`` (time
    order, UTC); history before ``start`` is used. Raises DataError naming the
    column or date when the frame or window is unusable.
    """
    _check_frame(transactions)
    start_ts, end_ts = _utc(start, "start"), _utc(end, "end")
    if end_ts <= start_ts:
        raise DataError(f"end {end_ts} is not after start {start_ts}")
    times = transactions["tx_datetime"]
    rows = np.flatnonzero(((times >= start_ts) & (times < end_ts)).to_numpy())
    targets = transactions.iloc[rows]
    state = Path(state_dir) if state_dir is not None else _default_state_dir()
    snapshot_dir = ensure_snapshots(transactions, state)
    snapshot = _retrieve(targets, snapshot_dir, state)
    static, sequence, lengths = _inputs(transactions, rows, snapshot)
    return Examples(
        frame=_frame(targets, transactions),
        static=static,
        sequence=sequence,
        lengths=lengths,
        labels=targets["tx_fraud"].to_numpy(dtype=np.float32),
    )


def _inputs(tx: pd.DataFrame, rows: np.ndarray, snapshot: dict[str, np.ndarray]):
    """Model inputs of ``tx.iloc[rows]`` in chunks (bounded temporaries)."""
    n = len(rows)
    static = np.zeros((n, len(tf.STATIC_FEATURES)), dtype=np.float32)
    sequence = np.zeros((n, tf.HISTORY_LENGTH, len(tf.SEQUENCE_FEATURES)),
                        dtype=np.float32)
    lengths = np.zeros(n, dtype=np.int64)
    index = _HistoryIndex(tx)
    unix_s = tf_unix(tx)
    amounts = tx["tx_amount"].to_numpy(dtype=np.float64)
    terminals = tx["terminal_key"].to_numpy()
    # Every fraud in the frame, gathered once: terminal_fraud_recency keeps, per
    # payment, only those paid at least the label delay before it.
    fraud = tx["tx_fraud"].to_numpy() == 1
    fraud_terminals, fraud_unix_s = terminals[fraud], unix_s[fraud]
    for lo in range(0, n, INPUT_CHUNK_ROWS):
        part = rows[lo: lo + INPUT_CHUNK_ROWS]
        hi = lo + len(part)
        block = index.blocks(part)
        snap = {k: v[lo:hi] for k, v in snapshot.items()}
        label = tf.terminal_fraud_recency(fraud_terminals, fraud_unix_s,
                                          terminals[part], unix_s[part])
        static[lo:hi], sequence[lo:hi], lengths[lo:hi], _ = tf.model_inputs(
            snap, block, unix_s[part], amounts[part], label)
    return static, sequence, lengths


def _default_state_dir() -> Path:
    from fraudmesh.config import get_settings

    return Path(get_settings().state_dir)


def _check_frame(tx: pd.DataFrame) -> None:
    for column in _REQUIRED:
        if column not in tx.columns:
            raise DataError("column missing from the transactions frame; load it "
                            "with fraudmesh.dataset.load_transactions", column=column)
    if getattr(tx["tx_datetime"].dt, "tz", None) is None:
        raise DataError("timestamps must be UTC-aware", column="tx_datetime")
    if not tx["tx_datetime"].is_monotonic_increasing:
        raise DataError("rows must be in time order", column="tx_datetime")


def _utc(value: datetime, name: str) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    if ts.tzinfo is None:
        raise DataError(f"{name} {value} must be timezone-aware (UTC)")
    return ts.tz_convert("UTC")


def tf_unix(tx: pd.DataFrame) -> np.ndarray:
    from feature_repo.snapshots import unix_seconds

    return unix_seconds(tx["tx_datetime"])


def _frame(targets: pd.DataFrame, tx: pd.DataFrame) -> pd.DataFrame:
    frame = targets.reset_index(drop=True).copy()
    if "tx_time_days" not in frame.columns:
        origin = tx["tx_datetime"].iloc[0].normalize()
        frame["tx_time_days"] = (frame["tx_datetime"] - origin).dt.days
    columns = FRAME_COLUMNS + (
        ["tx_fraud_scenario"] if "tx_fraud_scenario" in frame.columns else []
    )
    return frame[columns]


# ------------------------------------------------------------------- snapshots


def fingerprint(tx: pd.DataFrame) -> str:
    """A digest of the columns snapshots depend on (ids, times, amounts, labels)."""
    hashed = pd.util.hash_pandas_object(
        tx[["transaction_id", "customer_id", "terminal_id", "tx_datetime",
            "tx_amount", "tx_fraud"]] if "terminal_id" in tx.columns else
        tx[["transaction_id", "customer_key", "terminal_key", "tx_datetime",
            "tx_amount", "tx_fraud"]],
        index=False,
    )
    digest = hashlib.sha256(hashed.to_numpy().tobytes())
    digest.update(tf.FEATURE_SCHEMA_VERSION.encode())
    return digest.hexdigest()[:16]


def ensure_snapshots(tx: pd.DataFrame, state_dir: Path) -> Path:
    """The directory of this data's daily snapshot tables, built when missing.

    Rows exist for every day from the first data day to the day after the last.
    """
    from feature_repo.definitions import CUSTOMER_FILE, TERMINAL_FILE

    directory = state_dir / "snapshots" / fingerprint(tx)
    if (directory / CUSTOMER_FILE).exists() and (directory / TERMINAL_FILE).exists():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    customers, terminals = snapshot_tables(tx)
    for frame, name in ((customers, CUSTOMER_FILE), (terminals, TERMINAL_FILE)):
        tmp = directory / f".{name}.tmp"
        frame.to_parquet(tmp, index=False)
        tmp.replace(directory / name)  # atomic: a reader never sees half a file
    log.info("snapshot tables written to %s", directory)
    return directory


def snapshot_tables(tx: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Customer and terminal snapshot rows of every day of ``tx`` (plus one)."""
    from feature_repo import snapshots

    days = tf_unix(tx) // tf.SECONDS_PER_DAY
    first, last = int(days.min()), int(days.max())
    cust_agg, term_agg = snapshots.day_aggregates(tx, first, last - first + 1)
    span = range(first, last + 2)
    customers = pd.concat([snapshots.customer_rows(cust_agg, d) for d in span],
                          ignore_index=True)
    terminals = pd.concat([snapshots.terminal_rows(term_agg, d) for d in span],
                          ignore_index=True)
    return customers, terminals


def _retrieve(
    targets: pd.DataFrame, snapshot_dir: Path, state_dir: Path
) -> dict[str, np.ndarray]:
    """Snapshot-view columns of ``targets`` by Feast historical retrieval."""
    from feature_repo.definitions import CUSTOMER_VIEW, TERMINAL_VIEW
    from feature_repo.store import open_store
    from fraudmesh.config import Settings

    settings = Settings(state_dir=state_dir, online_store="sqlite",
                        feast_registry=None)
    store = open_store(settings, snapshot_dir,
                       registry_path=snapshot_dir / "registry.db")
    refs = [f"{CUSTOMER_VIEW}:{n}" for n in tf.CUSTOMER_SNAPSHOT_FEATURES] + [
        f"{TERMINAL_VIEW}:{n}" for n in tf.TERMINAL_SNAPSHOT_FEATURES]
    names = tf.CUSTOMER_SNAPSHOT_FEATURES + tf.TERMINAL_SNAPSHOT_FEATURES
    out = {n: np.full(len(targets), np.nan) for n in names}
    for lo in range(0, len(targets), RETRIEVAL_CHUNK_ROWS):
        chunk = targets.iloc[lo: lo + RETRIEVAL_CHUNK_ROWS]
        entity = pd.DataFrame({
            "row_id": np.arange(lo, lo + len(chunk)),
            "customer_id": chunk["customer_key"].to_numpy(),
            "terminal_id": chunk["terminal_key"].to_numpy(),
            "event_timestamp": chunk["tx_datetime"].to_numpy(),
        })
        entity["event_timestamp"] = pd.to_datetime(entity["event_timestamp"],
                                                   utc=True)
        try:
            got = store.get_historical_features(entity_df=entity,
                                                features=refs).to_df()
        except Exception as exc:  # Feast/DuckDB errors are untyped; translate here
            raise FeatureStoreError(
                f"historical retrieval failed for rows {lo}..{lo + len(chunk)} "
                f"({type(exc).__name__}: {exc})") from exc
        if len(got) != len(chunk):
            raise FeatureStoreError(
                f"historical retrieval returned {len(got)} rows for {len(chunk)}")
        got = got.sort_values("row_id")
        for n in names:
            out[n][lo: lo + len(chunk)] = got[n].to_numpy(dtype=np.float64,
                                                          na_value=np.nan)
    return out


# --------------------------------------------------------------------- history


def history_blocks(tx: pd.DataFrame, rows: np.ndarray,
                   n: int = tf.HISTORY_LENGTH) -> tf.HistoryBlock:
    """History blocks of ``tx.iloc[rows]``: each customer's last ``n`` payments
    strictly earlier (in seconds) than the payment, most recent last."""
    return _HistoryIndex(tx).blocks(rows, n)


class _HistoryIndex:
    """Payments sorted by (customer, time), to gather history blocks quickly."""

    def __init__(self, tx: pd.DataFrame) -> None:
        self.unix_s = tf_unix(tx)
        self.codes = pd.factorize(tx["customer_key"])[0].astype(np.int64)
        self.order = np.lexsort((self.unix_s, self.codes))  # stable: file order
        self.keys = self.codes[self.order] * (1 << 34) + self.unix_s[self.order]
        self.terminals = pd.factorize(tx["terminal_key"])[0]
        self.amounts = tx["tx_amount"].to_numpy(dtype=np.float64)

    def blocks(self, rows: np.ndarray, n: int = tf.HISTORY_LENGTH) -> tf.HistoryBlock:
        base = self.codes[rows] * (1 << 34)
        ends = np.searchsorted(self.keys, base + self.unix_s[rows], side="left")
        firsts = np.searchsorted(self.keys, base, side="left")
        idx = ends[:, None] - n + np.arange(n)[None, :]
        mask = idx >= firsts[:, None]
        src = self.order[np.clip(idx, 0, len(self.order) - 1)]
        same = self.terminals[src] == self.terminals[rows][:, None]
        return tf.HistoryBlock(
            unix_s=np.where(mask, self.unix_s[src].astype(np.float64), 0.0),
            amount=np.where(mask, self.amounts[src], 0.0),
            same_terminal=same & mask,
            kind=np.zeros(mask.shape, dtype=np.int8),
            mask=mask,
        )
