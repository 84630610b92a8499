"""The policy is a pure function: context and config in, decision and reasons out."""

from __future__ import annotations

import pytest

from fraudmesh.errors import ConfigError
from fraudmesh.schemas import Decision
from services.policy import (
    Contribution,
    PolicyConfig,
    PolicyContext,
    decide,
    feature_reasons,
)

CONFIG = PolicyConfig(allow_below=0.2, block_at_or_above=0.8)


def ctx(score: float, amount: float = 40.0, **kw) -> PolicyContext:
    return PolicyContext(score=score, amount=amount, currency="eur", **kw)


@pytest.mark.parametrize(
    ("score", "amount", "expected"),
    [
        (0.05, 40.0, Decision.ALLOW),
        (0.5, 40.0, Decision.CHALLENGE),
        (0.5, 900.0, Decision.REVIEW),
        (0.95, 40.0, Decision.BLOCK),
        (0.95, 900.0, Decision.BLOCK),
        (0.2, 40.0, Decision.CHALLENGE),  # thresholds: allow is strictly below
        (0.8, 40.0, Decision.BLOCK),
    ],
)
def test_thresholds(score, amount, expected):
    out = decide(ctx(score, amount), CONFIG)
    assert out.decision is expected
    assert out.reasons and out.reasons[0].startswith(f"risk {score:.2f}")


def test_review_limit_is_per_currency():
    config = PolicyConfig(review_amount_by_currency={"jpy": 75_000.0})
    small_yen = PolicyContext(score=0.5, amount=5_000.0, currency="jpy")
    big_yen = PolicyContext(score=0.5, amount=80_000.0, currency="jpy")
    assert decide(small_yen, config).decision is Decision.CHALLENGE
    assert decide(big_yen, config).decision is Decision.REVIEW


def test_radar_is_combined_when_present_and_ignored_when_absent():
    assert decide(ctx(0.1), CONFIG).decision is Decision.ALLOW
    raised = decide(ctx(0.1, radar_risk_score=90), CONFIG)
    assert raised.decision is Decision.CHALLENGE
    assert any("Radar risk score 90" in r for r in raised.reasons)
    highest = decide(ctx(0.1, radar_risk_level="highest"), CONFIG)
    assert highest.decision is Decision.BLOCK
    assert any("highest" in r for r in highest.reasons)
    # A low Radar score never lowers our own risk.
    assert decide(ctx(0.9, radar_risk_score=1), CONFIG).decision is Decision.BLOCK


def test_account_change_before_an_unusually_large_payment_raises_the_risk():
    quiet = ctx(0.05, amount_over_usual=6.0, hours_since_account_change=None)
    assert decide(quiet, CONFIG).decision is Decision.ALLOW
    takeover = ctx(0.05, amount_over_usual=6.0, hours_since_account_change=3.0)
    out = decide(takeover, CONFIG)
    assert out.decision is not Decision.ALLOW
    assert out.risk > 0.05
    assert any("account details changed 3 h" in r for r in out.reasons)
    assert any("account takeover" in r for r in out.reasons)
    long_ago = ctx(0.05, amount_over_usual=6.0, hours_since_account_change=500.0)
    assert decide(long_ago, CONFIG).decision is Decision.ALLOW
    usual = ctx(0.05, amount_over_usual=1.1, hours_since_account_change=3.0)
    assert decide(usual, CONFIG).decision is Decision.ALLOW


def test_reasons_put_feature_contributions_in_words():
    from feature_repo.transforms import FEATURE_DESCRIPTIONS

    name = next(iter(FEATURE_DESCRIPTIONS))
    contributions = [
        Contribution(name, 3.0, 0.4),
        Contribution("unknown_feature", None, 0.1),
        Contribution(name, 1.0, -0.2),  # pushed the score down: no reason
    ]
    phrases = feature_reasons(contributions)
    assert phrases[0] == FEATURE_DESCRIPTIONS[name].format(value=3.0)
    assert phrases[1] == "unknown feature raised the score"
    assert len(phrases) == 2
    assert feature_reasons([]) == ["no single signal stood out"]
    out = decide(ctx(0.9, contributions=contributions), CONFIG)
    assert out.reasons[1] == phrases[0]


def test_user_config_is_checked():
    config = PolicyConfig.from_user_config(
        {"allow_below": 0.1, "review_amount_by_currency": {"JPY": 1000}}
    )
    assert config.allow_below == 0.1
    assert config.review_amount("jpy") == 1000.0
    with pytest.raises(ConfigError, match="unknown keys"):
        PolicyConfig.from_user_config({"allow_belw": 0.1})
    with pytest.raises(ConfigError, match="allow_below"):
        PolicyConfig.from_user_config({"allow_below": 0.9, "block_at_or_above": 0.5})


def test_a_first_payment_at_or_above_the_review_limit_goes_to_review():
    config = PolicyConfig()
    first = decide(ctx(0.0, amount=50_000.0, first_payment=True), config)
    assert first.decision == Decision.REVIEW
    assert any("first payment" in r for r in first.reasons)
    # Below the limit, or a customer seen before: the model's score decides.
    assert decide(ctx(0.0, amount=499.0, first_payment=True),
                  config).decision == Decision.ALLOW
    assert decide(ctx(0.0, amount=50_000.0), config).decision == Decision.ALLOW
    # Per currency, like the review limit itself.
    yen = PolicyContext(score=0.0, amount=50_000.0, currency="jpy",
                        first_payment=True)
    assert decide(yen, config).decision == Decision.ALLOW
    # A risk already past the gray zone is not lowered.
    assert decide(ctx(0.9, amount=50_000.0, first_payment=True),
                  config).decision == Decision.BLOCK
    off = PolicyConfig.from_user_config({"first_payment_review": False})
    assert decide(ctx(0.0, amount=50_000.0, first_payment=True),
                  off).decision == Decision.ALLOW
