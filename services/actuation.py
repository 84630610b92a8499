"""Actuation: the Stripe call each decision implies, made through the Stripe SDK.

Decision -> Stripe, by the PaymentIntent's status (:func:`plan`, pure):

- allow: confirm (``requires_confirmation``) or capture (``requires_capture``);
- challenge: confirm with ``payment_method_options.card.request_three_d_secure =
  "any"``;
- review: hold: set ``capture_method = "manual"`` and confirm, so the funds are
  authorised and wait until an analyst decides (:meth:`StripeActuator.resolve_review`
  then captures or cancels);
- block: cancel with ``cancellation_reason = "fraudulent"``, or refund with reason
  ``fraudulent`` when the money was already captured;
- fraud learnt after capture (:meth:`StripeActuator.on_label`): refund with reason
  ``fraudulent``; optionally add the card fingerprint and the email to Radar value
  lists (the values are never logged or returned).

Modes (``FRAUDMESH_ACTUATION_MODE``; dry-run when ``STRIPE_API_KEY`` is unset):
``live`` makes the calls; ``dry-run`` records the calls it would make (reading the
PaymentIntent's status when a key is set, never writing); ``shadow`` records the
decision and never talks to Stripe. Every record names its mode.

Every write carries an idempotency key derived from the payment id and the step
(:func:`idempotency_key`), so a retry, a redelivered webhook or a second replica
never acts twice. Each attempt has a timeout; only 429, 5xx and network errors are
retried (:func:`is_retryable`, :func:`backoff_s`, :func:`should_stop`), honouring
``Stripe-Should-Retry`` and ``Retry-After``. A circuit breaker (:class:`Breaker`)
stops calling Stripe after repeated failures and answers with the configured safe
decision, saying so in the record. Stripe errors become
:class:`fraudmesh.errors.ActuationError` with Stripe's request id.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

import stripe
from ray import serve

from fraudmesh.config import ActuationMode, Settings, get_settings
from fraudmesh.errors import ActuationError, ConfigError
from fraudmesh.replica import settle
from fraudmesh.schemas import Decision, Payment
from fraudmesh.tracing import (
    Carriers,
    client_span,
    hash_id,
    hop,
    hops,
    setup_tracing,
    shutdown_tracing,
)

log = logging.getLogger("fraudmesh.actuation")

THREE_DS = {"card": {"request_three_d_secure": "any"}}
CANCELABLE = frozenset(
    {
        "requires_payment_method",
        "requires_confirmation",
        "requires_action",
        "requires_capture",
        "processing",
    }
)


class Step(StrEnum):
    """One Stripe call; the value is the idempotency-key suffix."""

    CONFIRM = "confirm"
    CONFIRM_3DS = "confirm-3ds"
    HOLD_UPDATE = "hold-manual-capture"
    HOLD_CONFIRM = "hold-confirm"
    CAPTURE = "capture"
    CANCEL = "cancel-fraudulent"
    REFUND = "refund-fraudulent"
    BLOCK_CARD = "blocklist-card"
    BLOCK_EMAIL = "blocklist-email"


_STEP_HTTP: dict[Step, tuple[str, str]] = {
    Step.CONFIRM: ("POST", "/v1/payment_intents/{id}/confirm"),
    Step.CONFIRM_3DS: ("POST", "/v1/payment_intents/{id}/confirm"),
    Step.HOLD_UPDATE: ("POST", "/v1/payment_intents/{id}"),
    Step.HOLD_CONFIRM: ("POST", "/v1/payment_intents/{id}/confirm"),
    Step.CAPTURE: ("POST", "/v1/payment_intents/{id}/capture"),
    Step.CANCEL: ("POST", "/v1/payment_intents/{id}/cancel"),
    Step.REFUND: ("POST", "/v1/refunds"),
    Step.BLOCK_CARD: ("POST", "/v1/radar/value_list_items"),
    Step.BLOCK_EMAIL: ("POST", "/v1/radar/value_list_items"),
}


def idempotency_key(payment_id: str, step: Step) -> str:
    """Deterministic per payment and step: the same step is never done twice."""
    return f"fraudmesh-{payment_id}-{step.value}"


@dataclass(frozen=True, slots=True)
class StripeCall:
    step: Step
    payment_id: str
    params: Mapping[str, Any] = field(default_factory=dict)
    # Params that are secrets or personal data: sent, never recorded.
    private: bool = False

    @property
    def method(self) -> str:
        return _STEP_HTTP[self.step][0]

    @property
    def path(self) -> str:
        return _STEP_HTTP[self.step][1].format(id=self.payment_id)

    @property
    def idempotency_key(self) -> str:
        return idempotency_key(self.payment_id, self.step)

    def record(self) -> dict[str, Any]:
        return {
            "step": self.step.value,
            "method": self.method,
            "path": self.path,
            "params": "<redacted>" if self.private else dict(self.params),
            "idempotency_key": self.idempotency_key,
        }


@dataclass(frozen=True, slots=True)
class Plan:
    """What a decision means for a PaymentIntent in a given status."""

    action: str
    calls: tuple[StripeCall, ...]
    note: str | None = None


def plan(payment_id: str, decision: Decision, status: str | None) -> Plan:
    """The Stripe calls ``decision`` implies for a PaymentIntent in ``status``.

    Pure. ``status`` None (not read, e.g. dry-run without a key) is taken as
    ``requires_confirmation``, the status of a PaymentIntent fraudmesh scores
    when it is created.
    """
    status = status or "requires_confirmation"
    if decision is Decision.BLOCK:
        return _plan_block(payment_id, status)
    if status == "requires_capture":
        if decision is Decision.ALLOW:
            return Plan("capture", (StripeCall(Step.CAPTURE, payment_id),))
        return Plan(
            "hold_for_review",
            (),
            "already authorised with manual capture: held until an analyst decides",
        )
    if status != "requires_confirmation":
        return Plan("none", (), f"nothing to do for a PaymentIntent in {status}")
    if decision is Decision.ALLOW:
        return Plan("confirm", (StripeCall(Step.CONFIRM, payment_id),))
    if decision is Decision.CHALLENGE:
        params = {"payment_method_options": THREE_DS}
        return Plan("confirm_3ds", (StripeCall(Step.CONFIRM_3DS, payment_id, params),))
    return Plan(
        "hold_for_review",
        (
            StripeCall(Step.HOLD_UPDATE, payment_id, {"capture_method": "manual"}),
            StripeCall(Step.HOLD_CONFIRM, payment_id),
        ),
        "authorised and held (manual capture) until an analyst decides",
    )


def _plan_block(payment_id: str, status: str) -> Plan:
    if status in CANCELABLE:
        params = {"cancellation_reason": "fraudulent"}
        return Plan("cancel", (StripeCall(Step.CANCEL, payment_id, params),))
    if status == "succeeded":
        return Plan("refund", (_refund(payment_id),), "captured already: refunded")
    return Plan("none", (), f"nothing to do for a PaymentIntent in {status}")


def _refund(payment_id: str) -> StripeCall:
    params = {"payment_intent": payment_id, "reason": "fraudulent"}
    return StripeCall(Step.REFUND, payment_id, params)


def plan_review(payment_id: str, approve: bool, status: str | None) -> Plan:
    """An analyst's verdict on a held payment: capture it, or cancel as fraud."""
    if status not in (None, "requires_capture"):
        if not approve:
            return _plan_block(payment_id, status)
        return Plan("none", (), f"not held: the PaymentIntent is {status}")
    if approve:
        return Plan("capture", (StripeCall(Step.CAPTURE, payment_id),))
    return _plan_block(payment_id, "requires_capture")


def plan_label(
    payment_id: str,
    is_fraud: bool,
    refundable: bool,
    status: str | None,
    *,
    block_values: Mapping[Step, tuple[str, str]] | None = None,
) -> Plan:
    """Fraud learnt about a payment: cancel a hold, refund a captured payment.

    ``block_values`` maps a block-list step to (value list id, value); those calls
    are marked private so the value is never recorded.
    """
    if not is_fraud:
        return Plan("none", (), "genuine label: nothing to do in Stripe")
    extra = tuple(
        StripeCall(step, payment_id, {"value_list": lst, "value": v}, private=True)
        for step, (lst, v) in (block_values or {}).items()
    )
    if status == "succeeded" and refundable:
        return Plan("refund", (_refund(payment_id), *extra))
    if status in CANCELABLE:
        base = _plan_block(payment_id, status)
        return Plan(base.action, base.calls + extra, base.note)
    return Plan("blocklist" if extra else "none", extra, f"PaymentIntent is {status}")


# -- retries -----------------------------------------------------------------------


def _header(headers: Any, name: str) -> str | None:
    if not headers:
        return None
    try:
        value = headers.get(name)
    except AttributeError:
        return None
    if value is None and isinstance(headers, Mapping):
        lowered = {str(k).lower(): v for k, v in headers.items()}
        value = lowered.get(name.lower())
    return None if value is None else str(value)


def is_retryable(exc: BaseException) -> bool:
    """Only 429, 5xx and network errors (and timeouts) are worth another attempt.

    Stripe's ``Stripe-Should-Retry`` header, when present, decides.
    """
    if isinstance(exc, TimeoutError):
        return True
    if not isinstance(exc, stripe.StripeError):
        return False
    hint = _header(exc.headers, "stripe-should-retry")
    if hint == "true":
        return True
    if hint == "false":
        return False
    if isinstance(exc, stripe.APIConnectionError):
        return True
    status = exc.http_status
    return status is not None and (status == 429 or status >= 500)


def retry_after_s(exc: BaseException) -> float | None:
    """Stripe's ``Retry-After`` hint in seconds, when it sent one."""
    headers = getattr(exc, "headers", None)
    raw = _header(headers, "retry-after")
    try:
        return None if raw is None else max(0.0, float(raw))
    except ValueError:
        return None


def backoff_s(
    attempt: int,
    *,
    base_s: float,
    cap_s: float,
    jitter: float,
    hint_s: float | None = None,
) -> float:
    """Seconds to wait before attempt ``attempt + 1`` (attempt counts from 1).

    Exponential, capped, with jitter in [50 %, 100 %] (``jitter`` in [0, 1]); a
    server hint is honoured but never beyond ``cap_s``.
    """
    if hint_s is not None:
        return min(hint_s, cap_s)
    exp = min(cap_s, base_s * 2 ** (attempt - 1))
    return exp * (0.5 + 0.5 * min(max(jitter, 0.0), 1.0))


def should_stop(
    attempt: int, *, max_attempts: int, elapsed_s: float, wait_s: float, budget_s: float
) -> bool:
    """Stop after ``max_attempts`` or when the next wait overruns the budget."""
    return attempt >= max_attempts or elapsed_s + wait_s > budget_s


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass
class Breaker:
    """Consecutive Stripe failures open the circuit for ``reset_after_s``.

    Not thread-safe; one per replica event loop. After the pause one trial call
    goes through (half open): success closes, failure opens again.
    """

    failure_threshold: int = 5
    reset_after_s: float = 30.0
    state: BreakerState = BreakerState.CLOSED
    failures: int = 0
    opened_at: float = 0.0

    def allow(self, now: float) -> bool:
        if self.state is BreakerState.OPEN:
            if now - self.opened_at < self.reset_after_s:
                return False
            self.state = BreakerState.HALF_OPEN
        return True

    def record_success(self) -> None:
        self.state = BreakerState.CLOSED
        self.failures = 0

    def record_failure(self, now: float) -> None:
        self.failures += 1
        if (
            self.state is BreakerState.HALF_OPEN
            or self.failures >= self.failure_threshold
        ):
            self.state = BreakerState.OPEN
            self.opened_at = now


@dataclass(frozen=True, slots=True)
class ActuationConfig:
    """The Actuation deployment's user_config (orchestration/serve_config.yaml)."""

    timeout_s: float = 10.0
    max_attempts: int = 3
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 8.0
    retry_budget_s: float = 30.0
    breaker_failures: int = 5
    breaker_reset_s: float = 30.0
    safe_decision: str = "review"
    block_list_card: str = ""
    block_list_email: str = ""

    def __post_init__(self) -> None:
        if self.safe_decision not in {d.value for d in Decision}:
            raise ConfigError(
                "Actuation.user_config.safe_decision",
                f"{self.safe_decision!r} is not one of allow, challenge, review, block",
            )
        if self.timeout_s <= 0 or self.max_attempts < 1:
            raise ConfigError(
                "Actuation.user_config",
                f"timeout_s ({self.timeout_s}) must be > 0 and max_attempts "
                f"({self.max_attempts}) >= 1",
            )

    @classmethod
    def from_user_config(cls, user_config: Mapping[str, Any] | None) -> ActuationConfig:
        user_config = dict(user_config or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(user_config) - known)
        if unknown:
            raise ConfigError(
                "Actuation.user_config",
                f"unknown keys {unknown}; known keys are {sorted(known)}",
            )
        return cls(**user_config)


def translate(exc: stripe.StripeError, payment_id: str, step: str) -> ActuationError:
    """A Stripe SDK error as fraudmesh's ActuationError, keeping the request id."""
    message = getattr(exc, "user_message", None) or type(exc).__name__
    code = getattr(exc, "code", None)
    if code:
        message = f"{message} [{code}]"
    return ActuationError(
        message,
        payment_id=payment_id,
        action=step,
        http_status=exc.http_status,
        request_id=exc.request_id,
    )


# -- the actuator --------------------------------------------------------------------


class StripeActuator:
    """Plans and (in live mode) makes the Stripe calls. No Ray: tests use it too."""

    def __init__(
        self,
        settings: Settings | None = None,
        config: ActuationConfig | None = None,
        *,
        http_client: stripe.HTTPClient | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings or get_settings()
        self.mode = self.settings.effective_actuation_mode
        self._sleep = sleep
        self._clock = clock
        self._jitter = jitter
        self._http_client: stripe.HTTPClient | None = None
        self._client: stripe.StripeClient | None = None
        self.configure(config or ActuationConfig())
        key = self.settings.stripe_api_key
        if self.mode is ActuationMode.LIVE and key is None:
            raise ConfigError(
                "FRAUDMESH_ACTUATION_MODE",
                "live needs STRIPE_API_KEY; set it or use dry-run",
            )
        if key is not None and self.mode is not ActuationMode.SHADOW:
            self._http_client = http_client or stripe.HTTPXClient(
                timeout=self.config.timeout_s
            )
            self._client = stripe.StripeClient(
                key.get_secret_value(),
                base_addresses={"api": self.settings.stripe_api_base},
                # Retries are ours (below): one policy, and visible in traces.
                max_network_retries=0,
                http_client=self._http_client,
            )

    def configure(self, config: ActuationConfig) -> None:
        self.config = config
        self.breaker = Breaker(config.breaker_failures, config.breaker_reset_s)

    # -- public operations ---------------------------------------------------------

    async def act(self, payment: Payment, decision: Decision) -> dict[str, Any]:
        """Enforce ``decision`` for ``payment``; a record, never an exception."""
        return await self._run(
            payment.payment_id,
            decision.value,
            lambda status: plan(payment.payment_id, decision, status),
        )

    async def resolve_review(self, payment_id: str, approve: bool) -> dict[str, Any]:
        """An analyst's verdict on a payment held for review."""
        verdict = "allow" if approve else "block"
        return await self._run(
            payment_id, verdict, lambda s: plan_review(payment_id, approve, s)
        )

    async def on_label(
        self, payment_id: str, is_fraud: bool, refundable: bool
    ) -> dict[str, Any]:
        """A fraud label arrived: cancel a hold, refund a captured payment."""
        block = await self._block_values(payment_id) if is_fraud else {}
        return await self._run(
            payment_id,
            "block" if is_fraud else "allow",
            lambda s: plan_label(
                payment_id, is_fraud, refundable, s, block_values=block
            ),
        )

    async def close(self) -> None:
        if self._http_client is not None:
            await self._http_client.close_async()

    # -- internals -----------------------------------------------------------------

    async def _run(
        self,
        payment_id: str,
        decision: str,
        make_plan: Callable[[str | None], Plan],
    ) -> dict[str, Any]:
        record: dict[str, Any] = {
            "mode": self.mode.value,
            "decision": decision,
            "status": "recorded",
        }
        if self.mode is ActuationMode.SHADOW:
            chosen = make_plan(None)
            # The action it stands for, and no call: shadow never talks to Stripe.
            record.update(
                _summary(Plan(chosen.action, (), chosen.note)), status="shadow"
            )
            return record
        if not self.breaker.allow(self._clock()):
            return self._fallback(record, payment_id, make_plan)
        try:
            status = await self._status(payment_id)
            chosen = make_plan(status)
            record.update(_summary(chosen), stripe_status=status)
            if self.mode is ActuationMode.DRY_RUN:
                return record
            for call, call_record in zip(chosen.calls, record["calls"], strict=True):
                result = await self._send(call)
                call_record["request_id"] = _request_id(result)
                status = _status_of(result, status)
            record.update(status="done", stripe_status=status)
        except ActuationError as exc:
            log.warning("actuation failed: %s", exc)
            record.update(status="failed", error=str(exc), request_id=exc.request_id)
            if self.breaker.state is BreakerState.OPEN:
                return self._fallback(record, payment_id, make_plan)
        return record

    def _fallback(
        self,
        record: dict[str, Any],
        payment_id: str,
        make_plan: Callable[[str | None], Plan],
    ) -> dict[str, Any]:
        safe = self.config.safe_decision
        log.warning(
            "Stripe circuit open: payment %s falls back to the safe decision %s",
            hash_id(payment_id),
            safe,
        )
        if "action" not in record:
            record.update(_summary(make_plan(None)))
        record.update(
            status="skipped",
            fallback_decision=safe,
            decision=safe,
            requested_decision=record["decision"],
            note=(
                f"Stripe circuit breaker open after {self.breaker.failures} "
                f"consecutive failures: no call made; fell back to the safe "
                f"decision '{safe}'"
            ),
        )
        return record

    async def _status(self, payment_id: str) -> str | None:
        """The PaymentIntent's status, read from Stripe; None without a client."""
        if self._client is None:
            return None
        intent = await self._attempts(
            "retrieve",
            payment_id,
            lambda: self._client.v1.payment_intents.retrieve_async(payment_id),
        )
        return getattr(intent, "status", None)

    async def _block_values(self, payment_id: str) -> dict[Step, tuple[str, str]]:
        """Card fingerprint and email for the configured Radar value lists."""
        cfg = self.config
        if self._client is None or not (cfg.block_list_card or cfg.block_list_email):
            return {}
        try:
            intent = await self._attempts(
                "retrieve",
                payment_id,
                lambda: self._client.v1.payment_intents.retrieve_async(
                    payment_id, {"expand": ["latest_charge"]}
                ),
            )
        except ActuationError as exc:
            log.warning("block lists skipped: %s", exc)
            return {}
        charge = intent.get("latest_charge")
        details = (charge or {}).get("payment_method_details") or {}
        fingerprint = (details.get("card") or {}).get("fingerprint")
        billing = (charge or {}).get("billing_details") or {}
        email = intent.get("receipt_email") or billing.get("email")
        out: dict[Step, tuple[str, str]] = {}
        if cfg.block_list_card and fingerprint:
            out[Step.BLOCK_CARD] = (cfg.block_list_card, fingerprint)
        if cfg.block_list_email and email:
            out[Step.BLOCK_EMAIL] = (cfg.block_list_email, email)
        return out

    async def _send(self, call: StripeCall) -> Any:
        client = self._client
        assert client is not None  # live mode always has a client
        options = {"idempotency_key": call.idempotency_key}
        pi = client.v1.payment_intents
        pid = call.payment_id
        params = dict(call.params)
        senders: dict[Step, Callable[[], Awaitable[Any]]] = {
            Step.CONFIRM: lambda: pi.confirm_async(pid, params, options),
            Step.CONFIRM_3DS: lambda: pi.confirm_async(pid, params, options),
            Step.HOLD_UPDATE: lambda: pi.update_async(pid, params, options),
            Step.HOLD_CONFIRM: lambda: pi.confirm_async(pid, params, options),
            Step.CAPTURE: lambda: pi.capture_async(pid, params, options),
            Step.CANCEL: lambda: pi.cancel_async(pid, params, options),
            Step.REFUND: lambda: client.v1.refunds.create_async(params, options),
            Step.BLOCK_CARD: lambda: client.v1.radar.value_list_items.create_async(
                params, options
            ),
            Step.BLOCK_EMAIL: lambda: client.v1.radar.value_list_items.create_async(
                params, options
            ),
        }
        return await self._attempts(call.step.value, pid, senders[call.step])

    async def _attempts(
        self, step: str, payment_id: str, send: Callable[[], Awaitable[Any]]
    ) -> Any:
        """One Stripe call with a timeout per attempt, retries and the breaker."""
        cfg = self.config
        started = self._clock()
        attempt = 0
        attributes = {
            "fraudmesh.payment_id_hash": hash_id(payment_id),
            "stripe.step": step,
        }
        with client_span(f"stripe.{step}", attributes) as span:
            while True:
                attempt += 1
                try:
                    async with asyncio.timeout(cfg.timeout_s):
                        result = await send()
                except (stripe.StripeError, TimeoutError) as exc:
                    retry = is_retryable(exc)
                    wait = backoff_s(
                        attempt,
                        base_s=cfg.backoff_base_s,
                        cap_s=cfg.backoff_cap_s,
                        jitter=self._jitter(),
                        hint_s=retry_after_s(exc),
                    )
                    elapsed = self._clock() - started
                    if retry and not should_stop(
                        attempt,
                        max_attempts=cfg.max_attempts,
                        elapsed_s=elapsed,
                        wait_s=wait,
                        budget_s=cfg.retry_budget_s,
                    ):
                        log.info(
                            "Stripe %s attempt %d failed (%s); retrying in %.2f s",
                            step,
                            attempt,
                            type(exc).__name__,
                            wait,
                        )
                        await self._sleep(wait)
                        continue
                    span.set_attribute("stripe.attempts", attempt)
                    if retry:
                        # Stripe is unavailable (not a problem with this payment).
                        self.breaker.record_failure(self._clock())
                    raise self._error(exc, payment_id, step, attempt) from exc
                self.breaker.record_success()
                span.set_attribute("stripe.attempts", attempt)
                return result

    @staticmethod
    def _error(
        exc: BaseException, payment_id: str, step: str, attempts: int
    ) -> ActuationError:
        if isinstance(exc, stripe.StripeError):
            error = translate(exc, payment_id, step)
        else:
            error = ActuationError(
                f"no answer within the timeout ({type(exc).__name__})",
                payment_id=payment_id,
                action=step,
            )
        error.attempts = attempts  # type: ignore[attr-defined]
        return error


def _summary(chosen: Plan) -> dict[str, Any]:
    calls = [c.record() for c in chosen.calls]
    first = calls[0] if calls else {}
    return {
        "action": chosen.action,
        "note": chosen.note,
        "calls": calls,
        # The first call at top level, as the dry-run contract records it.
        "method": first.get("method"),
        "path": first.get("path"),
        "params": first.get("params"),
        "idempotency_key": first.get("idempotency_key"),
    }


def _request_id(result: Any) -> str | None:
    response = getattr(result, "last_response", None)
    return getattr(response, "request_id", None)


def _status_of(result: Any, default: str | None) -> str | None:
    status = getattr(result, "status", None)
    if getattr(result, "object", None) == "refund":
        return "succeeded" if default == "succeeded" else default
    return status if isinstance(status, str) else default


@serve.deployment
class Actuation:
    """The Actuation hop. Records say the mode; failures are records, not errors."""

    def __init__(self) -> None:
        setup_tracing("actuation")
        self._actuator = StripeActuator()
        settle()  # last: what start-up made is frozen (fraudmesh/replica.py)

    def reconfigure(self, user_config: Mapping[str, Any]) -> None:
        self._actuator.configure(ActuationConfig.from_user_config(user_config))

    async def act(
        self,
        payment: Payment,
        decision: Decision,
        score: float,
        carrier: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        with hop("actuation.act", carrier, {"fraudmesh.decision": str(decision)}):
            return await self._actuator.act(payment, Decision(decision))

    async def act_many(
        self,
        payments: list[Payment],
        decisions: list[Decision],
        scores: list[float],
        carrier: Carriers = None,
    ) -> list[dict[str, Any]]:
        """One call for many payments: a record per payment, in order.
        ``carrier``: one, or one per payment (see ``fraudmesh.tracing.hops``)."""
        attributes = {"fraudmesh.batch_size": len(payments)}
        with hops("actuation.act_many", carrier, attributes) as h:
            calls: list[Any] = [None] * len(payments)
            for one, rows in h.groups(len(payments)):
                with one.active():  # each payment's Stripe spans in its own trace
                    for i in rows:
                        calls[i] = asyncio.ensure_future(
                            self._actuator.act(payments[i], Decision(decisions[i])))
            return list(await asyncio.gather(*calls))

    async def resolve_review(
        self, payment_id: str, approve: bool, carrier: dict[str, str] | None = None
    ) -> dict[str, Any]:
        with hop("actuation.resolve_review", carrier):
            return await self._actuator.resolve_review(payment_id, approve)

    async def on_label(
        self,
        payment_id: str,
        is_fraud: bool,
        refundable: bool,
        carrier: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        with hop("actuation.on_label", carrier):
            return await self._actuator.on_label(payment_id, is_fraud, refundable)

    async def mode(self) -> str:
        return self._actuator.mode.value

    def __del__(self) -> None:
        # Serve calls this on a graceful shutdown: export the last spans.
        shutdown_tracing()
