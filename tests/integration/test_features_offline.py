"""build_examples against the real Feast DuckDB offline store: point-in-time
correctness and errors that name the column, date or file."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from feature_repo import transforms as tf
from fraudmesh.dataset import SAMPLE_PATH, load_transactions
from fraudmesh.errors import DataError
from orchestration.training_data import build_examples

pytestmark = pytest.mark.integration

START = datetime(2018, 8, 1, tzinfo=UTC)
END = START + timedelta(days=2)
TERMINAL_COLUMNS = [tf.STATIC_FEATURES.index(n) for n in tf.TERMINAL_SNAPSHOT_FEATURES]


@pytest.fixture(scope="module")
def small_tx() -> pd.DataFrame:
    """The sample's payments of every 25th customer, up to 2018-08-10."""
    tx = load_transactions(SAMPLE_PATH, end=datetime(2018, 8, 10, tzinfo=UTC))
    return tx[tx["customer_id"] % 25 == 0].reset_index(drop=True)


def _examples(tx: pd.DataFrame, state):
    return build_examples(tx, START, END, state_dir=state)


def test_examples_follow_the_contract(small_tx, tmp_path):
    ex = _examples(small_tx, tmp_path)
    n = len(ex.frame)
    assert n > 100
    assert ex.static.shape == (n, len(tf.STATIC_FEATURES))
    assert ex.sequence.shape == (n, tf.HISTORY_LENGTH, len(tf.SEQUENCE_FEATURES))
    assert ex.static.dtype == np.float32 and ex.lengths.dtype == np.int64
    assert ex.frame["tx_datetime"].is_monotonic_increasing
    assert ex.frame["tx_datetime"].min() >= pd.Timestamp(START)
    assert ex.frame["tx_datetime"].max() < pd.Timestamp(END)
    assert (ex.labels == ex.frame["tx_fraud"].to_numpy()).all()
    # The cache makes a second build read the same snapshot tables.
    again = _examples(small_tx, tmp_path)
    np.testing.assert_array_equal(again.static, ex.static)


def test_labels_inside_the_delay_never_change_a_feature(small_tx, tmp_path):
    base = _examples(small_tx, tmp_path / "a")
    flipped = small_tx.copy()
    # Every payment of the window may use labels of days before 2018-07-26 only.
    inside = flipped["tx_datetime"] >= pd.Timestamp("2018-07-26", tz="UTC")
    flipped.loc[inside, "tx_fraud"] = 1 - flipped.loc[inside, "tx_fraud"]
    changed = _examples(flipped, tmp_path / "b")
    np.testing.assert_array_equal(changed.static, base.static)
    np.testing.assert_array_equal(changed.sequence, base.sequence)


def test_labels_older_than_the_delay_do_change_terminal_risk(small_tx, tmp_path):
    base = _examples(small_tx, tmp_path / "a")
    flipped = small_tx.copy()
    old = flipped["tx_datetime"].between(pd.Timestamp("2018-07-10", tz="UTC"),
                                         pd.Timestamp("2018-07-24", tz="UTC"))
    flipped.loc[old, "tx_fraud"] = 1
    changed = _examples(flipped, tmp_path / "b")
    assert (changed.static[:, TERMINAL_COLUMNS] != base.static[:, TERMINAL_COLUMNS]
            ).any()


def test_future_payments_never_change_past_features(small_tx, tmp_path):
    base = _examples(small_tx, tmp_path / "a")
    past_only = small_tx[small_tx["tx_datetime"] < pd.Timestamp(END)]
    future = small_tx[small_tx["tx_datetime"] >= pd.Timestamp(END)].copy()
    future["tx_amount"] *= 10  # a very different future
    changed = _examples(pd.concat([past_only, future], ignore_index=True),
                        tmp_path / "b")
    truncated = _examples(past_only.reset_index(drop=True), tmp_path / "c")
    for other in (changed, truncated):
        np.testing.assert_array_equal(other.static, base.static)
        np.testing.assert_array_equal(other.sequence, base.sequence)


def test_a_payment_never_sees_itself_or_later_payments(small_tx, tmp_path):
    ex = _examples(small_tx, tmp_path)
    hours = tf.SEQUENCE_FEATURES.index("log_hours_before")
    real = np.arange(tf.HISTORY_LENGTH)[None, :] >= (tf.HISTORY_LENGTH
                                                     - ex.lengths[:, None])
    assert (ex.sequence[..., hours][real] > 0).all()


def test_errors_name_the_column_and_the_date(small_tx, tmp_path):
    with pytest.raises(DataError, match="tx_amount"):
        build_examples(small_tx.drop(columns=["tx_amount"]), START, END,
                       state_dir=tmp_path)
    with pytest.raises(DataError, match="timezone-aware"):
        build_examples(small_tx, datetime(2018, 8, 1), END, state_dir=tmp_path)
    with pytest.raises(DataError, match="2018-07-01"):
        build_examples(small_tx, START, datetime(2018, 7, 1, tzinfo=UTC),
                       state_dir=tmp_path)
    shuffled = small_tx.sample(frac=1.0, random_state=0)
    with pytest.raises(DataError, match="time order"):
        build_examples(shuffled, START, END, state_dir=tmp_path)
