"""``fraudmesh replay --stripe``: real payments through the Stripe path.

Each payment of the window becomes a PaymentIntent in the configured Stripe API
(``STRIPE_API_BASE``: localstripe in tests and demos, Stripe's test mode
otherwise), with the data set's customer, terminal and time in its metadata, and
Stripe's test payment method ``pm_card_visa``. From there the webhooks and the
actuation do the rest: the mesh scores ``payment_intent.created``, Actuation
confirms, challenges, holds or cancels the PaymentIntent, and the events that
follow (``payment_intent.succeeded``, ...) flow back through the webhook.

Against localstripe, which emits no ``payment_intent.created`` (nor charge or
Radar events), the replay builds that event from localstripe's own PaymentIntent
object, signs it with ``STRIPE_WEBHOOK_SECRET`` exactly as Stripe does, and posts
it to ``POST /v1/webhooks/stripe``; localstripe is also told (its
``/_config/webhooks`` API) to deliver the events it does emit to the same
endpoint. Fraud labels reach the mesh 7 days (of data time) after each payment as
signed ``radar.early_fraud_warning.created`` events, which also makes Actuation
refund captured frauds; genuine labels go to ``POST /v1/labels`` as in the plain
replay.

Decisions are read back from the webhook state in Redis (the asynchronous path
answers Stripe before deciding); the latency reported is from posting the event
to the decision being stored. The report adds the PaymentIntents' final Stripe
statuses and the actuation mode.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

import aiohttp
import pandas as pd
import redis.asyncio as aioredis
import stripe

from fraudmesh.config import Settings, get_settings
from fraudmesh.currency import to_minor
from fraudmesh.errors import ConfigError, FraudmeshError
from fraudmesh.stripe_events import META_CREATED, META_CUSTOMER, META_TERMINAL
from orchestration.replay import (
    CURRENCY,
    LABEL_DELAY,
    ReplayResult,
    _window,
    label_body,
)
from services.webhooks import payment_key

LOCALSTRIPE_EVENTS = [
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
    "payment_intent.canceled",
    "customer.updated",
]
WEBHOOK_PATH = "/v1/webhooks/stripe"
META_PAYMENT_KEY = "payment_key"
DECISION_TIMEOUT_S = 60.0
# The API version localstripe's own events name; its objects have that shape.
LOCALSTRIPE_API_VERSION = "2017-08-15"
POLL_S = 0.02


class StripeReplayError(FraudmeshError):
    """The Stripe path of the replay cannot go on."""


def signature_header(body: bytes, secret: str, timestamp: int | None = None) -> str:
    """``Stripe-Signature`` for ``body``, computed as Stripe does (v1 scheme)."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256)
    return f"t={t},v1={mac.hexdigest()}"


def event_from_object(
    event_type: str,
    obj: dict[str, Any],
    *,
    event_id: str,
    api_version: str = LOCALSTRIPE_API_VERSION,
    created: int | None = None,
) -> bytes:
    """A Stripe event wrapping ``obj`` (a localstripe object), as JSON bytes.

    ``created`` defaults to now; a label's event carries the data set's time.
    """
    event = {
        "id": event_id,
        "object": "event",
        "api_version": api_version,
        "created": int(time.time()) if created is None else created,
        "livemode": False,
        "type": event_type,
        "data": {"object": obj},
    }
    return json.dumps(event, sort_keys=True).encode()


def intent_params(row: dict[str, Any]) -> dict[str, Any]:
    """The PaymentIntent a data-set row stands for (no card data: a test PM)."""
    return {
        "amount": to_minor(float(row["tx_amount"]), CURRENCY),
        "currency": CURRENCY,
        "payment_method": "pm_card_visa",
        "capture_method": "automatic",
        "metadata": {
            META_CUSTOMER: row["customer_key"],
            META_TERMINAL: row["terminal_key"],
            META_CREATED: str(int(row["tx_datetime"].timestamp())),
            META_PAYMENT_KEY: row["payment_key"],
        },
    }


class _StripeStreamer:
    def __init__(
        self,
        client: stripe.StripeClient,
        session: aiohttp.ClientSession,
        redis: aioredis.Redis,
        url: str,
        secret: str,
        *,
        emulated: bool,
        concurrency: int,
        rate: float | None,
        progress: Any,
    ) -> None:
        self._client = client
        self._session = session
        self._redis = redis
        self._url = url
        self._secret = secret
        self._emulated = emulated
        self._sem = asyncio.Semaphore(concurrency)
        self._rate = rate
        self._progress = progress
        self._by_customer: dict[str, asyncio.Task] = {}
        self._tasks: set[asyncio.Task] = set()
        self.intents: dict[str, str] = {}  # data-set payment key -> PaymentIntent
        self.answers: dict[str, dict[str, str]] = {}
        self.latency_ms: dict[str, float] = {}
        self.labels_sent = 0
        self._sent = 0
        self._started = time.perf_counter()

    async def run(self, rows: list[dict], labels: list[dict]) -> None:
        day = None
        pending = sorted(labels, key=lambda item: item["due"])
        for row in rows:
            if row["tx_datetime"].date() != day:
                day = row["tx_datetime"].date()
                await self._barrier()
                due = [x for x in pending if x["due"] <= row["tx_datetime"]]
                pending = pending[len(due) :]
                await self._send_labels(due)
            await self._pace()
            previous = self._by_customer.get(row["customer_key"])
            task = asyncio.ensure_future(self._one(row, previous))
            self._by_customer[row["customer_key"]] = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await self._barrier()

    async def _barrier(self) -> None:
        if self._tasks:
            await asyncio.gather(*list(self._tasks))

    async def _pace(self) -> None:
        self._sent += 1
        if self._rate:
            ahead_s = self._sent / self._rate - (time.perf_counter() - self._started)
            if ahead_s > 0:
                await asyncio.sleep(ahead_s)

    async def _one(self, row: dict, previous: asyncio.Task | None) -> None:
        if previous is not None:
            await previous  # a customer's payments one after another
        async with self._sem:
            key = row["payment_key"]
            intent = await self._client.v1.payment_intents.create_async(
                intent_params(row), {"idempotency_key": f"fraudmesh-replay-{key}"}
            )
            self.intents[key] = intent.id
            started = time.perf_counter()
            if self._emulated:
                await self._post_event(
                    "payment_intent.created",
                    intent.to_dict(),
                    f"evt_replay_created_{intent.id}",
                )
            self.answers[key] = await self._decision(intent.id)
            self.latency_ms[key] = (time.perf_counter() - started) * 1000
        self._progress(1)

    async def _post_event(
        self, etype: str, obj: dict, event_id: str, created: int | None = None
    ) -> None:
        body = event_from_object(etype, obj, event_id=event_id, created=created)
        headers = {
            "Stripe-Signature": signature_header(body, self._secret),
            "Content-Type": "application/json",
        }
        async with self._session.post(
            self._url + WEBHOOK_PATH, data=body, headers=headers
        ) as resp:
            if resp.status != 200:
                text = await resp.text()
                raise StripeReplayError(
                    f"the webhook endpoint answered {resp.status} to {etype}: "
                    f"{text[:300]}"
                )

    async def _decision(self, intent_id: str) -> dict[str, str]:
        deadline = time.monotonic() + DECISION_TIMEOUT_S
        while time.monotonic() < deadline:
            state = await self._redis.hgetall(payment_key(intent_id))
            if b"decision" in state:
                return {k.decode(): v.decode() for k, v in state.items()}
            await asyncio.sleep(POLL_S)
        raise StripeReplayError(
            f"no decision for {intent_id} within {DECISION_TIMEOUT_S:.0f} s: is the "
            "mesh running with STRIPE_WEBHOOK_SECRET and the same Redis?"
        )

    async def _send_labels(self, due: list[dict]) -> None:
        genuine = []
        for item in due:
            body = item["body"]
            intent_id = self.intents.get(body["payment_id"])
            if intent_id is None:
                continue  # paid before the window: not in Stripe
            if body["is_fraud"]:
                await self._fraud_warning(intent_id, item["due"])
            else:
                genuine.append({**body, "payment_id": intent_id})
        if genuine:
            async with self._session.post(
                self._url + "/v1/labels", json={"labels": genuine}
            ) as resp:
                if resp.status != 200:
                    raise StripeReplayError(
                        f"POST /v1/labels answered {resp.status}: "
                        f"{(await resp.text())[:300]}"
                    )
        self.labels_sent += len(due)

    async def _fraud_warning(self, intent_id: str, due: pd.Timestamp) -> None:
        intent = await self._client.v1.payment_intents.retrieve_async(intent_id)
        charge = intent.get("latest_charge")
        charge_id = charge.get("id") if isinstance(charge, dict) else charge
        warning = {
            "id": f"issfr_replay_{intent_id}",
            "object": "radar.early_fraud_warning",
            "actionable": True,
            "charge": charge_id,
            "payment_intent": intent_id,
            "created": int(due.timestamp()),
            "fraud_type": "unauthorized_use_of_card",
            "livemode": False,
        }
        await self._post_event(
            "radar.early_fraud_warning.created",
            warning,
            f"evt_replay_efw_{intent_id}",
            created=int(due.timestamp()),
        )


async def configure_localstripe(
    session: aiohttp.ClientSession, api_base: str, url: str, secret: str
) -> bool:
    """Ask localstripe to deliver its events to the mesh; False if not localstripe."""
    form = [("url", url + WEBHOOK_PATH), ("secret", secret)]
    form += [("events[]", e) for e in LOCALSTRIPE_EVENTS]
    try:
        async with session.post(
            api_base.rstrip("/") + "/_config/webhooks/fraudmesh", data=form
        ) as resp:
            return resp.status == 200
    except aiohttp.ClientError:
        return False


async def _final_statuses(
    client: stripe.StripeClient, intents: dict[str, str]
) -> Counter:
    counts: Counter = Counter()
    for intent_id in intents.values():
        intent = await client.v1.payment_intents.retrieve_async(intent_id)
        counts[intent.status] += 1
    return counts


async def stream_stripe(
    payments: pd.DataFrame,
    labelled: pd.DataFrame,
    url: str,
    settings: Settings,
    redis_url: str,
    *,
    concurrency: int,
    rate: float | None,
    show_progress: bool,
) -> tuple[_StripeStreamer, dict[str, Any], float]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    secret = settings.webhook_secrets[0]
    key = settings.stripe_api_key.get_secret_value()  # checked by the caller
    http = stripe.HTTPXClient(timeout=30)
    client = stripe.StripeClient(
        key,
        base_addresses={"api": settings.stripe_api_base},
        http_client=http,
        max_network_retries=2,
    )
    redis = aioredis.Redis.from_url(redis_url)
    rows = payments.to_dict("records")
    labels = [
        {"due": r["tx_datetime"] + LABEL_DELAY, "body": label_body(r)}
        for r in labelled.to_dict("records")
    ]
    progress = Progress(
        TextColumn("replay --stripe"),
        BarColumn(),
        MofNCompleteColumn(),
        disable=not show_progress,
    )
    started = time.perf_counter()
    try:
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=60)
        ) as session:
            emulated = await configure_localstripe(
                session, settings.stripe_api_base, url, secret
            )
            with progress:
                task = progress.add_task("replay", total=len(rows))
                streamer = _StripeStreamer(
                    client,
                    session,
                    redis,
                    url,
                    secret,
                    emulated=emulated,
                    concurrency=concurrency,
                    rate=rate,
                    progress=lambda n: progress.update(task, advance=n),
                )
                await streamer.run(rows, labels)
            wall_s = time.perf_counter() - started
            statuses = await _final_statuses(client, streamer.intents)
    finally:
        await redis.aclose()
        await http.close_async()
    summary = {
        "api_base": settings.stripe_api_base,
        "emulator": emulated,
        "events_built_by_replay": (
            ["payment_intent.created", "radar.early_fraud_warning.created"]
            if emulated
            else ["radar.early_fraud_warning.created"]
        ),
        "actuation_mode": settings.effective_actuation_mode.value,
        "payment_intent_statuses": dict(sorted(statuses.items())),
        "radar_redecisions": sum(
            1 for a in streamer.answers.values() if a.get("radar_redecided")
        ),
    }
    return streamer, summary, wall_s


def replay_stripe(
    data: Path,
    start_day: date,
    end_day: date,
    url: str,
    *,
    rate: float | None = None,
    concurrency: int = 8,
    limit: int | None = None,
    redis_url: str | None = None,
    settings: Settings | None = None,
    show_progress: bool = True,
) -> tuple[ReplayResult, dict[str, Any]]:
    """Replay ``[start_day, end_day]`` through Stripe; the result and a summary."""
    settings = settings or get_settings()
    _check(settings)
    redis_url = redis_url or settings.redis_url
    if not redis_url:
        raise ConfigError(
            "REDIS_URL",
            "the Stripe replay reads decisions from "
            "the mesh's Redis; set REDIS_URL to it",
        )
    payments, labelled = _window(data, start_day, end_day)
    if limit is not None:
        payments = payments.head(limit)
        labelled = labelled[labelled["payment_key"].isin(payments["payment_key"])]
    streamer, summary, wall_s = asyncio.run(
        stream_stripe(
            payments,
            labelled,
            url.rstrip("/"),
            settings,
            redis_url,
            concurrency=concurrency,
            rate=rate,
            show_progress=show_progress,
        )
    )
    frame = payments[
        ["payment_key", "customer_key", "tx_datetime", "tx_amount", "tx_fraud"]
    ].copy()
    answers = [streamer.answers[k] for k in frame["payment_key"]]
    frame["stripe_id"] = [streamer.intents[k] for k in frame["payment_key"]]
    frame["score"] = [float(a["score"]) for a in answers]
    frame["decision"] = [a["decision"] for a in answers]
    frame["duplicate"] = False
    frame["model_version"] = [a.get("model_version", "") for a in answers]
    frame["actuation_mode"] = [a.get("actuation_mode", "") for a in answers]
    frame["latency_ms"] = [streamer.latency_ms[k] for k in frame["payment_key"]]
    result = ReplayResult(
        frame=frame,
        wall_s=wall_s,
        start=start_day,
        end=end_day,
        labels_sent=streamer.labels_sent,
        url=url,
        batch_size=1,
    )
    return result, summary


def _check(settings: Settings) -> None:
    if not settings.webhook_secrets:
        raise ConfigError(
            "STRIPE_WEBHOOK_SECRET",
            "--stripe signs the events it builds; set the same secret as the mesh's",
        )
    key = settings.stripe_api_key
    if key is None:
        raise ConfigError(
            "STRIPE_API_KEY",
            "--stripe creates PaymentIntents; set a test key (sk_test_...)",
        )
    if key.get_secret_value().startswith(("sk_live_", "rk_live_")):
        raise ConfigError(
            "STRIPE_API_KEY",
            "--stripe refuses a live key: replayed "
            "payments must never reach real cards",
        )


def print_stripe_summary(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Stripe path", show_header=False)
    table.add_row("API base", summary["api_base"])
    table.add_row("emulator (localstripe)", "yes" if summary["emulator"] else "no")
    table.add_row(
        "events built and signed by the replay",
        ", ".join(summary["events_built_by_replay"]),
    )
    table.add_row("actuation mode", summary["actuation_mode"])
    for status, n in summary["payment_intent_statuses"].items():
        table.add_row(f"PaymentIntents {status}", str(n))
    table.add_row("Radar re-decisions", str(summary["radar_redecisions"]))
    Console().print(table)
