"""The backtest metrics against small cases computed by hand."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest

from models.metrics import (
    auc_roc,
    average_precision,
    card_precision_at_k,
    day_number,
    handbook_test_mask,
    recall_per_scenario,
)

D0 = day_number(date(2018, 8, 1))


def test_auc_and_ap_hand_computed():
    labels = np.array([0, 1, 0, 1])
    scores = np.array([0.1, 0.9, 0.8, 0.3])
    # positive/negative pairs ranked right: (0.9>0.1, 0.9>0.8, 0.3>0.1) = 3 of 4
    assert auc_roc(labels, scores) == pytest.approx(0.75)
    # ranking 1,0,1,0: precision 1 at the first hit, 2/3 at the second
    assert average_precision(labels, scores) == pytest.approx((1 + 2 / 3) / 2)


def test_auc_and_ap_undefined_for_one_class():
    assert np.isnan(auc_roc(np.zeros(3), np.array([0.1, 0.2, 0.3])))
    assert np.isnan(average_precision(np.zeros(3), np.array([0.1, 0.2, 0.3])))


def test_card_precision_max_per_card_and_divides_by_k():
    # one day, cards A (fraud on a low-score payment), B genuine, C fraud
    days = [D0] * 5
    cards = ["A", "A", "B", "C", "C"]
    labels = [0, 1, 0, 0, 1]
    scores = [0.9, 0.1, 0.8, 0.2, 0.3]
    # per card: A max score 0.9 label 1; B 0.8 label 0; C 0.3 label 1
    mean, per_day = card_precision_at_k(days, cards, labels, scores, k=2)
    assert per_day == [0.5]  # top 2 = A, B; one compromised
    mean, per_day = card_precision_at_k(days, cards, labels, scores, k=4)
    assert per_day == [0.5]  # all 3 cards, 2 compromised, divided by k=4
    assert mean == 0.5


def test_card_precision_removes_cards_detected_on_earlier_days():
    days = [D0, D0, D0 + 1, D0 + 1]
    cards = ["A", "B", "A", "B"]
    labels = [1, 0, 1, 1]
    scores = [0.9, 0.1, 0.9, 0.5]
    # day 0: top1 = A (fraud) -> 1.0; day 1: A removed, top1 = B (fraud) -> 1.0
    mean, per_day = card_precision_at_k(days, cards, labels, scores, k=1)
    assert per_day == [1.0, 1.0]
    # without removal day 1's top1 is A again: still 1.0, but check a miss case
    _, kept = card_precision_at_k(
        [D0, D0 + 1, D0 + 1], ["A", "A", "B"], [1, 0, 1], [0.9, 0.9, 0.5], k=1
    )
    assert kept == [1.0, 1.0]  # A removed on day 1 so B is the top card
    _, no_removal = card_precision_at_k(
        [D0, D0 + 1, D0 + 1],
        ["A", "A", "B"],
        [1, 0, 1],
        [0.9, 0.9, 0.5],
        k=1,
        remove_detected=False,
    )
    assert no_removal == [1.0, 0.0]
    assert mean == 1.0


def test_card_precision_undetected_fraud_card_is_not_removed():
    # day 0: A fraud but not in the top 1 (B is) -> A stays for day 1
    days = [D0, D0, D0 + 1]
    cards = ["A", "B", "A"]
    labels = [1, 0, 1]
    scores = [0.1, 0.9, 0.8]
    _, per_day = card_precision_at_k(days, cards, labels, scores, k=1)
    assert per_day == [0.0, 1.0]


def test_handbook_test_mask_removes_known_cards():
    start = date(2018, 8, 1)
    s = day_number(start)
    rows = [
        # (day, card, fraud)
        (s + 2, "A", 1),  # A known from the training week
        (s + 6, "B", 1),  # B: fraud on S+6, known before test day S+14 (i=0)
        (s + 8, "C", 1),  # C: fraud on S+8, known before test day S+16 (i=2)
        (s + 14, "A", 0),  # dropped (A known)
        (s + 14, "B", 1),  # dropped (B known at i=0)
        (s + 14, "C", 0),  # kept (C not yet known)
        (s + 15, "C", 1),  # kept (C's day S+8 fraud only counts from i=2)
        (s + 16, "C", 0),  # dropped
        (s + 16, "D", 0),  # kept
        (s + 20, "D", 1),  # kept, last test day
        (s + 21, "D", 0),  # outside the test week
        (s + 13, "D", 0),  # in the delay week, not a test day
    ]
    frame = pd.DataFrame(rows, columns=["day", "card", "fraud"])
    mask = handbook_test_mask(frame["day"], frame["card"], frame["fraud"], start)
    kept = frame[mask][["day", "card"]].apply(tuple, axis=1).tolist()
    assert kept == [(s + 14, "C"), (s + 15, "C"), (s + 16, "D"), (s + 20, "D")]


def test_handbook_test_mask_accepts_timestamps():
    start = date(2018, 8, 1)
    times = pd.to_datetime(
        ["2018-08-03 10:00", "2018-08-15 23:59", "2018-08-15 00:00"], utc=True
    )
    mask = handbook_test_mask(times, [1, 1, 2], [1, 0, 0], start)
    assert mask.tolist() == [False, False, True]


def test_recall_per_scenario_top_alerts_per_day():
    days = [D0, D0, D0, D0 + 1, D0 + 1]
    scenario = [1, 2, 0, 2, 3]
    scores = [0.9, 0.2, 0.5, 0.1, 0.8]
    # day 0 top 2: idx 0 (s1), idx 2 (genuine); day 1 top 2: both
    recall = recall_per_scenario(days, scenario, scores, alerts_per_day=2)
    assert recall == {1: 1.0, 2: 0.5, 3: 1.0}
