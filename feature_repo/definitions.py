"""Feast objects of fraudmesh: entities, sources, feature views, on-demand views.

``build_definitions(snapshot_dir)`` makes them with the batch sources pointing at
the daily snapshot Parquet tables in ``snapshot_dir`` (``customer_daily.parquet``,
``terminal_daily.parquet``; timestamp column ``snapshot_ts``, UTC midnight of the
day the row is valid for). Snapshot rows are valid for one day (TTL just under a
day), so an entity without a row that day reads as unknown (0 features).

The on-demand view runs in python mode (a pandas-mode view costs ~5 ms a call) and
calls the same pure function as the offline path, ``transforms.request_features``.
"""

from __future__ import annotations

import inspect
from datetime import timedelta
from pathlib import Path

import numpy as np
from feast import (
    Entity,
    FeatureView,
    Field,
    FileSource,
    PushSource,
    RequestSource,
    ValueType,
)
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.types import Float64, Int64

from feature_repo import transforms as tf
from feature_repo.snapshots import TIMESTAMP_FIELD

CUSTOMER_VIEW = "customer_spending"
TERMINAL_VIEW = "terminal_risk"
REQUEST_VIEW = "request_context"
CUSTOMER_PUSH = "customer_spending_push"
TERMINAL_PUSH = "terminal_risk_push"
CUSTOMER_FILE = "customer_daily.parquet"
TERMINAL_FILE = "terminal_daily.parquet"
SNAPSHOT_TTL = timedelta(days=1) - timedelta(seconds=1)

customer = Entity(
    name="customer", join_keys=["customer_id"], value_type=ValueType.STRING,
    description="A paying card / Stripe customer, id cus_N.",
)
terminal = Entity(
    name="terminal", join_keys=["terminal_id"], value_type=ValueType.STRING,
    description="A merchant terminal, id term_N.",
)

request_source = RequestSource(
    name="payment_request",
    schema=[Field(name="tx_amount", dtype=Float64),
            Field(name="tx_unix_s", dtype=Int64)],
)


def _request_context(inputs: dict) -> dict:
    """Python-mode UDF. Feast may run it from its source text, so it only imports
    and delegates (the import is a dict lookup after the first call)."""
    from feature_repo.definitions import request_context

    return request_context(inputs)


def request_context(inputs: dict) -> dict:
    """Request-time features: Feast's batch dict form, lists in, lists out."""
    out = tf.request_features(
        np.asarray(inputs["tx_amount"], dtype=np.float64),
        np.asarray(inputs["tx_unix_s"], dtype=np.float64),
        np.asarray(_nan_for_none(inputs["customer_mean_amount_30d"])),
        np.asarray(_nan_for_none(inputs["customer_std_amount_30d"])),
    )
    return {name: out[name].tolist() for name in tf.REQUEST_FEATURES}


def _nan_for_none(values: list) -> list[float]:
    return [np.nan if v is None else float(v) for v in values]


def _batch_source(path: Path, name: str) -> FileSource:
    return FileSource(name=name, path=str(path), timestamp_field=TIMESTAMP_FIELD)


def build_definitions(snapshot_dir: Path) -> list:
    """Every Feast object, batch sources reading from ``snapshot_dir``."""
    customer_batch = _batch_source(snapshot_dir / CUSTOMER_FILE, "customer_daily")
    terminal_batch = _batch_source(snapshot_dir / TERMINAL_FILE, "terminal_daily")
    customer_push = PushSource(name=CUSTOMER_PUSH, batch_source=customer_batch)
    terminal_push = PushSource(name=TERMINAL_PUSH, batch_source=terminal_batch)
    customer_view = FeatureView(
        name=CUSTOMER_VIEW, entities=[customer], ttl=SNAPSHOT_TTL,
        schema=[Field(name=n, dtype=Float64) for n in tf.CUSTOMER_SNAPSHOT_FEATURES],
        source=customer_push, online=True,
        description="Customer spending over 1, 7, 30 days, as of UTC midnight.",
    )
    terminal_view = FeatureView(
        name=TERMINAL_VIEW, entities=[terminal], ttl=SNAPSHOT_TTL,
        schema=[Field(name=n, dtype=Float64) for n in tf.TERMINAL_SNAPSHOT_FEATURES],
        source=terminal_push, online=True,
        description="Terminal fraud risk over 1, 7, 30 days before the 7-day "
        "label delay, as of UTC midnight.",
    )
    # Built directly rather than with Feast's decorator, which renames the UDF's
    # module to __main__ (so a second build in one process cannot find its
    # source). The UDF is pickled by reference: every process has this module.
    request_view = OnDemandFeatureView(
        name=REQUEST_VIEW,
        sources=[customer_view[["customer_mean_amount_30d",
                                "customer_std_amount_30d"]], request_source],
        schema=[Field(name=n, dtype=Float64) for n in tf.REQUEST_FEATURES],
        mode="python",
        udf=_request_context,
        udf_string=inspect.getsource(_request_context),
    )
    return [customer, terminal, customer_batch, terminal_batch, customer_push,
            terminal_push, request_source, customer_view, terminal_view,
            request_view]


def online_feature_refs() -> list[str]:
    """Feature references of one online lookup, in STATIC_FEATURES order groups."""
    return (
        [f"{CUSTOMER_VIEW}:{n}" for n in tf.CUSTOMER_SNAPSHOT_FEATURES]
        + [f"{TERMINAL_VIEW}:{n}" for n in tf.TERMINAL_SNAPSHOT_FEATURES]
        + [f"{REQUEST_VIEW}:{n}" for n in tf.REQUEST_FEATURES]
    )


def _cli_snapshot_dir() -> Path:
    import os

    state = os.environ.get("FRAUDMESH_STATE_DIR", ".fraudmesh")
    return Path(state).expanduser() / "snapshots" / "online"


# Module-level objects, so the Feast CLI can read this folder as a repository
# (`feast -c feature_repo plan`); fraudmesh itself calls build_definitions().
(_, _, customer_daily, terminal_daily, customer_spending_push, terminal_risk_push,
 _, customer_spending, terminal_risk, request_context_view) = build_definitions(
    _cli_snapshot_dir())
