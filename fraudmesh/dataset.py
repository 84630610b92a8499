"""Reading payment data sets with the schema of the handbook's simulated payments.

``load_transactions`` is the only reader: it checks columns and types, names the
file and column on any problem, and returns rows sorted by time with UTC
timestamps and the string identifiers the live system uses.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fraudmesh.errors import DataError

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_PATH = REPO_ROOT / "data" / "sample" / "transactions_sample.parquet"
SHARED_PATH = REPO_ROOT.parent / "shared" / "data" / "transactions.parquet"

REQUIRED_COLUMNS: dict[str, str] = {
    "transaction_id": "integer",
    "tx_datetime": "timestamp",
    "customer_id": "integer",
    "terminal_id": "integer",
    "tx_amount": "floating",
    "tx_fraud": "integer",
}
OPTIONAL_COLUMNS = ("tx_fraud_scenario",)


def customer_key(customer_id: int) -> str:
    return f"cus_{customer_id}"


def terminal_key(terminal_id: int) -> str:
    return f"term_{terminal_id}"


def payment_key(transaction_id: int) -> str:
    return f"pi_{transaction_id}"


def default_data_path() -> Path:
    """The full data set when it sits beside the repo, else the shipped sample."""
    return SHARED_PATH if SHARED_PATH.exists() else SAMPLE_PATH


def _check_type(path: Path, schema: pa.Schema, column: str, kind: str) -> None:
    field_type = schema.field(column).type
    ok = {
        "integer": pa.types.is_integer(field_type),
        "floating": pa.types.is_floating(field_type) or pa.types.is_integer(field_type),
        "timestamp": pa.types.is_timestamp(field_type),
    }[kind]
    if not ok:
        raise DataError(
            f"expected a {kind} column, found {field_type}", path=path, column=column
        )


def load_transactions(
    path: str | Path,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
) -> pd.DataFrame:
    """Payments from ``path`` in time order, optionally within ``[start, end)``.

    Adds ``customer_key``, ``terminal_key`` and ``payment_key`` string columns
    and makes ``tx_datetime`` UTC-aware. Raises :class:`DataError` naming the
    file and column when the file is missing, unreadable or of another schema.
    """
    path = Path(path)
    if not path.exists():
        raise DataError("no such file", path=path)
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"not a readable Parquet file ({exc})", path=path) from exc
    for column, kind in REQUIRED_COLUMNS.items():
        if column not in schema.names:
            raise DataError("required column is missing", path=path, column=column)
        _check_type(path, schema, column, kind)

    columns = list(REQUIRED_COLUMNS) + [
        c for c in OPTIONAL_COLUMNS if c in schema.names
    ]
    filters = []
    if start is not None:
        filters.append(
            (
                "tx_datetime",
                ">=",
                pd.Timestamp(start).tz_localize(None)
                if pd.Timestamp(start).tzinfo
                else pd.Timestamp(start),
            )
        )
    if end is not None:
        filters.append(
            (
                "tx_datetime",
                "<",
                pd.Timestamp(end).tz_localize(None)
                if pd.Timestamp(end).tzinfo
                else pd.Timestamp(end),
            )
        )
    try:
        frame = pq.read_table(
            path, columns=columns, filters=filters or None
        ).to_pandas()
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"could not read ({exc})", path=path) from exc

    times = frame["tx_datetime"]
    if times.dt.tz is None:
        frame["tx_datetime"] = times.dt.tz_localize(UTC)
    else:
        frame["tx_datetime"] = times.dt.tz_convert(UTC)
    if frame["tx_amount"].isna().any() or (frame["tx_amount"] < 0).any():
        bad = int(frame.index[frame["tx_amount"].isna() | (frame["tx_amount"] < 0)][0])
        raise DataError(
            "amount is missing or negative", path=path, column="tx_amount", row=bad
        )
    if not frame["tx_fraud"].isin([0, 1]).all():
        raise DataError("labels must be 0 or 1", path=path, column="tx_fraud")

    frame = frame.sort_values(["tx_datetime", "transaction_id"], kind="stable")
    frame = frame.reset_index(drop=True)
    frame["customer_key"] = "cus_" + frame["customer_id"].astype("int64").astype(str)
    frame["terminal_key"] = "term_" + frame["terminal_id"].astype("int64").astype(str)
    frame["payment_key"] = "pi_" + frame["transaction_id"].astype("int64").astype(str)
    return frame


def parse_day(value: str, *, option: str) -> date:
    """``YYYY-MM-DD`` to a date; the error names the option and the bad value."""
    try:
        return date.fromisoformat(value.strip())
    except ValueError as exc:
        raise DataError(
            f"{option}: {value!r} is not a date of the form YYYY-MM-DD"
        ) from exc


def day_start(day: date) -> datetime:
    """Midnight UTC at the start of ``day``."""
    return datetime(day.year, day.month, day.day, tzinfo=UTC)
