"""The pure feature functions against small hand-computed cases (no services)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from feature_repo import history as hs
from feature_repo import transforms as tf
from feature_repo.snapshots import DayAggregates, customer_rows, terminal_rows

DAY = 86_400


def _ts(*args) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp())


def test_contract_lists_are_consistent():
    assert len(set(tf.STATIC_FEATURES)) == len(tf.STATIC_FEATURES)
    assert set(tf.FEATURE_DESCRIPTIONS) == set(tf.STATIC_FEATURES)
    assert 32 <= tf.HISTORY_LENGTH <= 64
    assert len(tf.FEATURE_SCHEMA_VERSION) == 16


def test_customer_snapshot_windows_hand_computed():
    counts = np.zeros((1, 31))
    sums = np.zeros((1, 31))
    sumsq = np.zeros((1, 31))
    # day before: payments 10 and 30; 5 days before: 20; 31 days before: 1000.
    counts[0, -1], sums[0, -1], sumsq[0, -1] = 2, 40, 100 + 900
    counts[0, -5], sums[0, -5], sumsq[0, -5] = 1, 20, 400
    counts[0, 0], sums[0, 0], sumsq[0, 0] = 1, 1000, 1e6
    out = tf.customer_snapshot(counts, sums, sumsq)
    assert out["customer_count_1d"][0] == 2
    assert out["customer_mean_amount_1d"][0] == pytest.approx(20)
    assert out["customer_std_amount_1d"][0] == pytest.approx(10)
    assert out["customer_count_7d"][0] == 3
    assert out["customer_mean_amount_7d"][0] == pytest.approx(20)
    assert out["customer_count_30d"][0] == 3  # the 31-day-old payment is out


def test_terminal_snapshot_skips_the_label_delay():
    counts = np.zeros((1, 38))
    frauds = np.zeros((1, 38))
    counts[0, -1], frauds[0, -1] = 5, 5  # yesterday: inside the delay
    counts[0, -8], frauds[0, -8] = 4, 1  # 8 days ago: the 1-day window
    out = tf.terminal_snapshot(counts, frauds)
    assert out["terminal_count_1d"][0] == 4
    assert out["terminal_fraud_ratio_1d"][0] == pytest.approx(0.25)
    assert out["terminal_fraud_ratio_30d"][0] == pytest.approx(0.25)


def test_terminal_fraud_recency_counts_only_frauds_older_than_the_delay():
    now = _ts(2018, 8, 20, 12)
    delay = tf.LABEL_DELAY_DAYS * DAY
    fraud_terminal = np.array(["t1", "t1", "t1", "t2"])
    fraud_unix_s = np.array([now - delay - 3600,  # known: 7 days and 1 hour ago
                             now - delay + 1,     # one second inside the delay
                             now - DAY,           # inside the delay
                             now - delay - 60])   # another terminal
    got = tf.terminal_fraud_recency(fraud_terminal, fraud_unix_s,
                                    np.array(["t1", "t3"]), np.array([now, now]))
    hours = np.expm1(got["log_hours_since_terminal_fraud"])
    assert hours[0] == pytest.approx(7 * 24 + 1)
    assert hours[1] == pytest.approx(tf.NO_TERMINAL_FRAUD_SECONDS / 3600)

    # A label inside the delay never changes the feature, to the second.
    without = tf.terminal_fraud_recency(fraud_terminal[[0, 3]],
                                        fraud_unix_s[[0, 3]],
                                        np.array(["t1"]), np.array([now]))
    assert without["log_hours_since_terminal_fraud"][0] == (
        got["log_hours_since_terminal_fraud"][0])
    exactly = tf.terminal_fraud_recency(np.array(["t1"]), np.array([now - delay]),
                                        np.array(["t1"]), np.array([now]))
    assert np.expm1(exactly["log_hours_since_terminal_fraud"][0]) == (
        pytest.approx(7 * 24))


def test_terminal_fraud_recency_saturates_and_handles_no_frauds():
    now = _ts(2018, 8, 20)
    old = now - (tf.TERMINAL_FRAUD_LOOKBACK_DAYS + 5) * DAY
    cap = np.log1p(tf.NO_TERMINAL_FRAUD_SECONDS / 3600)
    got = tf.terminal_fraud_recency(np.array(["t1"]), np.array([old]),
                                    np.array(["t1"]), np.array([now]))
    assert got["log_hours_since_terminal_fraud"][0] == pytest.approx(cap)
    none = tf.terminal_fraud_recency(np.array([], dtype=str),
                                     np.array([], dtype=np.int64),
                                     np.array(["t1", "t2"]), np.array([now, now]))
    np.testing.assert_allclose(none["log_hours_since_terminal_fraud"], cap)


def test_snapshot_rows_include_emptied_windows_as_zero():
    first = 100
    agg = DayAggregates(
        keys=np.array(["cus_1"], dtype=object), first_day=first,
        columns={"count": np.array([[1.0, 0.0]]), "sum": np.array([[5.0, 0.0]]),
                 "sumsq": np.array([[25.0, 0.0]])})
    # 31 days after the payment its 30-day window is empty: a zero row, so a
    # stale online row is overwritten.
    rows = customer_rows(agg, first + 31)
    assert len(rows) == 1 and rows["customer_count_30d"].iloc[0] == 0
    assert customer_rows(agg, first + 32).empty
    term = DayAggregates(np.array(["term_1"], dtype=object), first,
                         {"count": np.array([[2.0]]), "fraud": np.array([[1.0]])})
    assert terminal_rows(term, first + 8)["terminal_fraud_ratio_1d"].iloc[0] == 0.5
    assert terminal_rows(term, first + 7)["terminal_fraud_ratio_1d"].iloc[0] == 0.0


def test_request_features_hour_night_weekend_and_unknown_customer():
    saturday_3am = _ts(2018, 8, 4, 3, 30)
    monday_noon = _ts(2018, 8, 6, 12, 0)
    out = tf.request_features(np.array([100.0, 50.0]),
                              np.array([saturday_3am, monday_noon]),
                              np.array([50.0, np.nan]), np.array([10.0, np.nan]))
    assert out["hour_of_day"].tolist() == [3, 12]
    assert out["is_night"].tolist() == [1, 0]
    assert out["is_weekend"].tolist() == [1, 0]
    assert out["amount_over_usual"].tolist() == [2.0, 1.0]
    assert out["amount_zscore_30d"][1] == 0.0


def _block(events: list[tuple[int, float, bool, int]]) -> tf.HistoryBlock:
    block = tf.empty_block(1)
    n = block.mask.shape[1]
    for j, (t, amount, same, kind) in enumerate(events):
        col = n - len(events) + j
        block.unix_s[0, col] = t
        block.amount[0, col] = amount
        block.same_terminal[0, col] = same
        block.kind[0, col] = kind
        block.mask[0, col] = True
    return block


def test_sequence_is_padded_in_front_most_recent_last():
    now = _ts(2018, 8, 6, 12)
    block = _block([(now - 7200, 10.0, True, 0), (now - 3600, 30.0, False, 0)])
    seq = tf.sequence_features(block, np.array([now]), np.array([30.0]))
    assert seq.shape == (1, tf.HISTORY_LENGTH, len(tf.SEQUENCE_FEATURES))
    assert not seq[0, :-2].any()
    col = {n: i for i, n in enumerate(tf.SEQUENCE_FEATURES)}
    assert seq[0, -1, col["log_hours_before"]] == pytest.approx(np.log1p(1.0))
    assert seq[0, -1, col["log_amount_over_current"]] == pytest.approx(0.0)
    assert seq[0, -2, col["same_terminal"]] == 1.0


def test_recency_and_account_change():
    now = _ts(2018, 8, 6, 12)
    block = _block([(now - 2 * DAY, 10.0, False, 0), (now - 7200, 0.0, False, 1),
                    (now - 600, 20.0, True, 0)])
    out = tf.recency_features(block, np.array([now]), np.array([100.0]))
    assert out["log_seconds_since_previous"][0] == pytest.approx(np.log1p(600))
    assert out["payments_last_1h"][0] == 1
    assert out["payments_last_24h"][0] == 1
    assert out["account_change_last_24h"][0] == 1
    assert out["amount_over_history_max"][0] == pytest.approx(101 / 21)
    assert out["history_length"][0] == 3
    assert tf.hours_since_account_change(block, np.array([now])) == [2.0]
    empty = tf.recency_features(tf.empty_block(1), np.array([now]),
                                np.array([1.0]))
    assert empty["log_seconds_since_previous"][0] == pytest.approx(
        np.log1p(tf.NO_EVENT_SECONDS))


def _history_of(events: list[hs.Event], unix_s: int, exclude: str,
                terminal: str = "t") -> tf.HistoryBlock:
    block = tf.empty_block(1)
    raw = [hs.encode_event(e).encode() for e in events]
    hs.fill_history(block, 0, hs.decode_events(raw), unix_s, exclude, terminal)
    return block


def test_history_excludes_self_later_and_repeats():
    ev = [hs.Event(10, 1.0, "t", 0, "pi_1"), hs.Event(30, 3.0, "t", 0, "pi_3"),
          hs.Event(20, 2.0, "u", 0, "pi_2"), hs.Event(20, 2.5, "t", 0, "pi_2"),
          hs.Event(25, 0.0, "", 1, "account_change:email")]
    block = _history_of(ev, 30, "pi_3")
    assert block.mask[0].sum() == 3
    assert block.unix_s[0, -3:].tolist() == [10, 20, 25]
    assert block.amount[0, -3:].tolist() == [1.0, 2.0, 0.0]  # the first pi_2 stays
    assert block.same_terminal[0, -3:].tolist() == [True, False, False]
    assert block.kind[0, -3:].tolist() == [0, 0, 1]
    same_second = _history_of(ev, 20, "x")  # the same second is not before
    assert same_second.unix_s[0, same_second.mask[0]].tolist() == [10]
    assert hs.decode_event(hs.encode_event(ev[0])) == ev[0]


def _reference_history(events: list[hs.Event], unix_s: int, exclude: str,
                       n: int) -> list[hs.Event]:
    """The rule, one event at a time: earlier than the payment, not itself,
    each payment id once (first arrival), stable by time, the last n."""
    seen, kept = set(), []
    for e in events:
        if e.unix_s >= unix_s or e.event_id == exclude:
            continue
        if e.kind == tf.EVENT_PAYMENT:
            if e.event_id in seen:
                continue
            seen.add(e.event_id)
        kept.append(e)
    kept.sort(key=lambda e: e.unix_s)
    return kept[-n:]


@pytest.mark.parametrize("seed", range(20))
def test_history_columns_follow_the_rule(seed):
    rng = np.random.default_rng(seed)
    size = int(rng.integers(0, 3 * tf.HISTORY_LENGTH))
    stored = [hs.Event(int(rng.integers(0, 50)), float(rng.integers(1, 999)) / 4,
                       str(rng.choice(["t", "u"])), int(rng.random() < 0.1),
                       f"pi_{rng.integers(0, size + 1)}") for _ in range(size)]
    own = [hs.Event(int(rng.integers(0, 50)), 5.0, "t", 0, f"pi_own{i}")
           for i in range(3)]
    columns = hs.decode_events([hs.encode_event(e) for e in stored], own)
    for p in own:
        block = tf.empty_block(1)
        hs.fill_history(block, 0, columns, p.unix_s, p.event_id, "t")
        want = _reference_history(stored + own, p.unix_s, p.event_id,
                                  tf.HISTORY_LENGTH)
        got = block.mask[0]
        assert got.sum() == len(want)
        assert block.unix_s[0, got].tolist() == [e.unix_s for e in want]
        assert block.amount[0, got].tolist() == [e.amount for e in want]
        assert block.kind[0, got].tolist() == [e.kind for e in want]
        assert block.same_terminal[0, got].tolist() == [
            e.kind == tf.EVENT_PAYMENT and e.terminal == "t" for e in want]


def test_aggregates_from_hashes():
    agg = hs.aggregates_from_hashes(
        [{b"term_1:n": b"3", b"term_1:f": b"1"}, {}, {"term_2:n": "2"}], 50,
        ("n", "f"))
    assert agg.keys.tolist() == ["term_1", "term_2"]
    assert agg.columns["count"].tolist() == [[3, 0, 0], [0, 0, 2]]
    assert agg.columns["fraud"].tolist() == [[1, 0, 0], [0, 0, 0]]


def test_static_matrix_fills_missing_with_zero_and_names_absent_columns():
    cols = {n: np.array([np.nan]) for n in tf.STATIC_FEATURES}
    assert not tf.static_matrix(cols).any()
    cols.pop("amount")
    with pytest.raises(KeyError, match="amount"):
        tf.static_matrix(cols)
