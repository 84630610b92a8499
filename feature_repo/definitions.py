"""Feast objects of fraudmesh: entities, sources, feature views, on-demand views.

``build_definitions(snapshot_dir)`` makes them with the batch sources pointing at
the daily snapshot Parquet tables in ``snapshot_dir`` (``customer_daily.parquet``,
``terminal_daily.parquet``; timestamp column ``snapshot_ts``, UTC midnight of the
day the row is valid for). Snapshot rows are valid for one day (TTL just under a
day), so an entity without a row that day reads as unknown (0 features).

Request-time features (amount over the customer's usual, hour, night, weekend)
are not a Feast on-demand view: the Features service computes them with the same
pure function as the offline path (``transforms.request_features``) from the
snapshot row it has just read. A python-mode on-demand view cost about 0.5 ms of
Feast's own machinery per call, as much as the online read itself, for a few
lines of arithmetic.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from feast import (
    Entity,
    FeatureView,
    Field,
    FileSource,
    PushSource,
    ValueType,
)
from feast.types import Float64

from feature_repo import transforms as tf
from feature_repo.snapshots import TIMESTAMP_FIELD

CUSTOMER_VIEW = "customer_spending"
TERMINAL_VIEW = "terminal_risk"
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
    return [customer, terminal, customer_batch, terminal_batch, customer_push,
            terminal_push, customer_view, terminal_view]


def online_feature_refs() -> list[str]:
    """Feature references of one online lookup: both snapshot views."""
    return ([f"{CUSTOMER_VIEW}:{n}" for n in tf.CUSTOMER_SNAPSHOT_FEATURES]
            + [f"{TERMINAL_VIEW}:{n}" for n in tf.TERMINAL_SNAPSHOT_FEATURES])


def _cli_snapshot_dir() -> Path:
    import os

    state = os.environ.get("FRAUDMESH_STATE_DIR", ".fraudmesh")
    return Path(state).expanduser() / "snapshots" / "online"


# Module-level objects, so the Feast CLI can read this folder as a repository
# (`feast -c feature_repo plan`); fraudmesh itself calls build_definitions().
(_, _, customer_daily, terminal_daily, customer_spending_push, terminal_risk_push,
 customer_spending, terminal_risk) = build_definitions(_cli_snapshot_dir())
