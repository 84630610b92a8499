"""Policy: a score and its context in, a decision and reasons in words out.

:func:`decide` is pure (no I/O, no clock): the ``Policy`` deployment calls it for
each payment and hands the decision on to ``Actuation``. Thresholds come from the
deployment's ``user_config`` (orchestration/serve_config.yaml) through
:meth:`PolicyConfig.from_user_config`.

Rules, in order:

1. The risk starts as the model's score.
2. Stripe Radar, when present, is combined with it: the risk is at least the blend
   ``(1 - radar_weight) * score + radar_weight * radar_risk_score / 100``; Radar's
   ``elevated`` level lifts the risk into the gray zone and ``highest`` to the
   block threshold. Absent Radar signals change nothing.
3. An account change (email, phone, address) at most
   ``account_change_window_h`` hours before a payment of at least
   ``unusual_amount_ratio`` times the customer's usual amount is the classic
   account-takeover pattern: the risk rises by ``account_change_boost`` and is at
   least in the gray zone.
4. A customer's first payment (no payment in the daily snapshot's 30 days nor in
   the behaviour history) at or above the review amount of its currency is at
   least in the gray zone, so it goes to review: the model has no behaviour to
   judge it by, and a large first payment is how a stolen card is cashed out
   before anyone reports it. ``first_payment_review: false`` turns this off.
5. risk < ``allow_below``: allow; risk >= ``block_at_or_above``: block; in between
   (the gray zone): review when the amount is large for its currency, else a
   3-D Secure challenge.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

import services.actuation as _actuation_module
from feature_repo.transforms import FEATURE_DESCRIPTIONS
from fraudmesh.errors import ConfigError
from fraudmesh.replica import settle
from fraudmesh.schemas import Decision, Payment
from fraudmesh.tracing import (
    Carriers,
    hops,
    score_bucket,
    setup_tracing,
    shutdown_tracing,
)

RADAR_LEVELS = ("normal", "elevated", "highest")


@dataclass(frozen=True, slots=True)
class Contribution:
    """A feature that pushed the score, with its value for the reason text."""

    feature: str
    value: float | None
    contribution: float


@dataclass(frozen=True, slots=True)
class PolicyContext:
    """What the policy knows about one payment. Amounts in major units."""

    score: float
    amount: float
    currency: str
    amount_over_usual: float | None = None
    hours_since_account_change: float | None = None
    radar_risk_score: int | None = None
    radar_risk_level: str | None = None
    contributions: Sequence[Contribution] = ()
    first_payment: bool = False


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    allow_below: float = 0.2
    block_at_or_above: float = 0.8
    # Major units; a currency not in review_amount_by_currency uses the default.
    review_amount_at_or_above: float = 500.0
    review_amount_by_currency: Mapping[str, float] = field(
        default_factory=lambda: {"jpy": 75_000.0, "krw": 700_000.0, "kwd": 150.0}
    )
    radar_weight: float = 0.5
    account_change_window_h: float = 72.0
    unusual_amount_ratio: float = 3.0
    account_change_boost: float = 0.3
    first_payment_review: bool = True
    max_reasons: int = 4

    def __post_init__(self) -> None:
        if not 0.0 <= self.allow_below <= self.block_at_or_above <= 1.0:
            raise ConfigError(
                "Policy.user_config",
                f"need 0 <= allow_below ({self.allow_below}) <= block_at_or_above "
                f"({self.block_at_or_above}) <= 1; fix serve_config.yaml",
            )
        if not 0.0 <= self.radar_weight <= 1.0:
            raise ConfigError(
                "Policy.user_config.radar_weight",
                f"{self.radar_weight} is outside [0, 1]",
            )

    @classmethod
    def from_user_config(cls, user_config: Mapping[str, Any] | None) -> PolicyConfig:
        """Build from a deployment user_config; unknown keys are an error."""
        user_config = dict(user_config or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(user_config) - known)
        if unknown:
            raise ConfigError(
                "Policy.user_config",
                f"unknown keys {unknown}; known keys are {sorted(known)}",
            )
        if "review_amount_by_currency" in user_config:
            user_config["review_amount_by_currency"] = {
                k.lower(): float(v)
                for k, v in user_config["review_amount_by_currency"].items()
            }
        return cls(**user_config)

    def review_amount(self, currency: str) -> float:
        return self.review_amount_by_currency.get(
            currency.lower(), self.review_amount_at_or_above
        )


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    decision: Decision
    reasons: list[str]
    risk: float


def decide(ctx: PolicyContext, config: PolicyConfig) -> PolicyDecision:
    """The decision and its reasons for one payment. Pure."""
    risk = ctx.score
    signal_reasons: list[str] = []

    risk = _with_radar(ctx, config, risk, signal_reasons)
    risk = _with_account_takeover(ctx, config, risk, signal_reasons)
    risk = _with_first_payment(ctx, config, risk, signal_reasons)
    risk = min(max(risk, 0.0), 1.0)

    if risk < config.allow_below:
        decision = Decision.ALLOW
        head = f"risk {risk:.2f} is below the allow threshold {config.allow_below:.2f}"
    elif risk >= config.block_at_or_above:
        decision = Decision.BLOCK
        head = (
            f"risk {risk:.2f} is at or above the block threshold "
            f"{config.block_at_or_above:.2f}"
        )
    else:
        limit = config.review_amount(ctx.currency)
        head = (
            f"risk {risk:.2f} is in the gray zone "
            f"[{config.allow_below:.2f}, {config.block_at_or_above:.2f})"
        )
        if ctx.amount >= limit:
            decision = Decision.REVIEW
            head += (
                f" and the amount {ctx.amount:,.2f} {ctx.currency.upper()} is at or "
                f"above the review limit {limit:,.2f}: manual review"
            )
        else:
            decision = Decision.CHALLENGE
            head += ": ask for 3-D Secure"

    reasons = [head, *signal_reasons, *feature_reasons(ctx.contributions)]
    return PolicyDecision(decision, reasons[: config.max_reasons], risk)


def _with_radar(
    ctx: PolicyContext, config: PolicyConfig, risk: float, reasons: list[str]
) -> float:
    level = (ctx.radar_risk_level or "").lower() or None
    if ctx.radar_risk_score is not None:
        radar = min(max(ctx.radar_risk_score, 0), 100) / 100.0
        blended = (1.0 - config.radar_weight) * risk + config.radar_weight * radar
        if blended > risk:
            reasons.append(
                f"Stripe Radar risk score {ctx.radar_risk_score} raises the risk"
            )
            risk = blended
    if level == "highest" and risk < config.block_at_or_above:
        reasons.append("Stripe Radar rates the payment's risk as highest")
        risk = config.block_at_or_above
    elif level == "elevated" and risk < config.allow_below:
        reasons.append("Stripe Radar rates the payment's risk as elevated")
        risk = config.allow_below
    return risk


def _with_first_payment(
    ctx: PolicyContext, config: PolicyConfig, risk: float, reasons: list[str]
) -> float:
    limit = config.review_amount(ctx.currency)
    if not (config.first_payment_review and ctx.first_payment
            and ctx.amount >= limit and risk < config.allow_below):
        return risk
    reasons.append(
        f"the customer's first payment seen here, of {ctx.amount:,.2f} "
        f"{ctx.currency.upper()}, at or above the review limit {limit:,.2f}"
    )
    return config.allow_below


def _with_account_takeover(
    ctx: PolicyContext, config: PolicyConfig, risk: float, reasons: list[str]
) -> float:
    hours = ctx.hours_since_account_change
    ratio = ctx.amount_over_usual
    if hours is None or ratio is None:
        return risk
    if hours > config.account_change_window_h or ratio < config.unusual_amount_ratio:
        return risk
    reasons.append(
        f"account details changed {hours:.0f} h before a payment of {ratio:.1f}x "
        "the customer's usual amount (possible account takeover)"
    )
    return max(risk + config.account_change_boost, config.allow_below)


def feature_reasons(contributions: Sequence[Contribution]) -> list[str]:
    """Phrases for the features that pushed the score up, strongest first."""
    phrases = []
    for c in sorted(contributions, key=lambda c: -c.contribution):
        if c.contribution <= 0:
            continue
        template = FEATURE_DESCRIPTIONS.get(c.feature)
        if template is not None and c.value is not None:
            try:
                phrases.append(template.format(value=c.value))
                continue
            except (ValueError, KeyError, IndexError):
                pass  # a template this value cannot fill: fall back to the name
        phrases.append(f"{c.feature.replace('_', ' ')} raised the score")
    return phrases or ["no single signal stood out"]


def contexts_for(
    payments: Sequence[Any], scored: Sequence[Mapping[str, Any]]
) -> list[PolicyContext]:
    """PolicyContexts from payments and the Model hop's per-payment results."""
    out = []
    for payment, s in zip(payments, scored, strict=True):
        ctx = s.get("context") or {}
        over = ctx.get("amount_over_usual")
        if over is None:
            mean = ctx.get("customer_mean_amount_30d")
            over = payment.amount / mean if mean else None
        out.append(
            PolicyContext(
                score=float(s["score"]),
                amount=payment.amount,
                currency=payment.currency,
                amount_over_usual=over,
                hours_since_account_change=ctx.get("hours_since_account_change"),
                radar_risk_score=_opt_int(ctx.get("radar_risk_score")),
                radar_risk_level=ctx.get("radar_risk_level"),
                contributions=[Contribution(*c) for c in s.get("contributions", ())],
                first_payment=bool(ctx.get("first_payment", False)),
            )
        )
    return out


def enforced(outcome: PolicyDecision, action: Mapping[str, Any] | None) -> dict:
    """The decision in force and its reasons.

    When Stripe could not be reached (Actuation's circuit breaker is open), the
    decision in force is Actuation's configured safe decision, and the reasons
    say so.
    """
    fallback = (action or {}).get("fallback_decision")
    if not fallback:
        return {"decision": outcome.decision.value, "reasons": outcome.reasons}
    note = (action or {}).get("note") or f"fell back to the safe decision {fallback}"
    return {"decision": fallback, "reasons": [*outcome.reasons, note]}


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


@serve.deployment
class Policy:
    """The Policy hop: decisions for a batch of scored payments, then Actuation.

    Answers one response dict per payment (ScoreResponse fields but trace id and
    the duplicate flag), in input order.
    """

    def __init__(self, actuation: DeploymentHandle) -> None:
        setup_tracing("policy")
        self._actuation = actuation
        self._config = PolicyConfig()
        impl = getattr(_actuation_module.Actuation, "func_or_class", None)
        self._act_many = hasattr(impl, "act_many")
        settle()  # last: what start-up made is frozen (fraudmesh/replica.py)

    def reconfigure(self, user_config: Mapping[str, Any]) -> None:
        self._config = PolicyConfig.from_user_config(user_config)

    async def decide(
        self,
        payments: list[Payment],
        scored: list[dict[str, Any]],
        carrier: Carriers = None,
    ) -> list[dict[str, Any]]:
        """Decisions, acted on. ``carrier``: one, or one per payment (see
        ``fraudmesh.tracing.hops``)."""
        attributes = {"fraudmesh.batch_size": len(payments)}
        with hops("policy.decide", carrier, attributes) as h:
            outcomes = [decide(c, self._config) for c in contexts_for(payments, scored)]
            decisions = [o.decision for o in outcomes]
            scores = [float(s["score"]) for s in scored]
            if self._act_many:
                actions = await self._actuation.act_many.remote(
                    payments, decisions, scores, carrier=h.carrier
                )
            else:
                # Fallback for an Actuation without a batch method: one call each.
                each = (h.carrier if isinstance(h.carrier, list)
                        else [h.carrier] * len(payments))
                actions = await asyncio.gather(
                    *(
                        self._actuation.act.remote(p, d, s, carrier=c)
                        for p, d, s, c in zip(payments, decisions, scores, each,
                                              strict=True)
                    )
                )
            for one, rows in h.groups(len(payments)):
                if len(rows) == 1:  # a single payment's hop names its decision
                    [i] = rows
                    one.span.set_attribute("fraudmesh.decision", decisions[i].value)
                    one.span.set_attribute("fraudmesh.score_bucket",
                                           score_bucket(scores[i]))
        return [
            {
                "payment_id": p.payment_id,
                "score": float(s["score"]),
                **enforced(o, a),
                "model_version": s["model_version"],
                "actuation_mode": (a or {}).get("mode", "dry-run"),
                "action": a,
            }
            for p, s, o, a in zip(payments, scored, outcomes, actions, strict=True)
        ]


    def __del__(self) -> None:
        # Serve calls this on a graceful shutdown: export the last spans.
        shutdown_tracing()
