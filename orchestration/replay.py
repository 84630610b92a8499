"""Replay real payments, in time order, against a running mesh.

``run_replay`` streams the payments of ``[--from, --to]`` to ``POST /v1/score``
(or ``/v1/score/batch`` with ``batch_size > 1``) concurrently, with bounded
concurrency and an optional open-loop rate, and a progress bar. Labels reach the
mesh as in production: each payment's label is posted to ``POST /v1/labels``
7 days after the payment, including the payments of the 7 days before --from,
whose labels fall due during the replay.

Ordering contract, so online features match the offline ones:

- a customer's next payment is sent only after the previous one is answered
  (a customer does not pay twice at the same instant);
- at each UTC day boundary the replay waits for every payment in flight and for
  the labels due, before the first payment of the new day (whose lookup builds
  that day's snapshot from the aggregates);
- a fraud label is posted, and answered, as soon as it falls due, before the next
  payment is sent: the time since a terminal's latest known fraud counts it from
  that second on. Genuine labels go in chunks (they change no such feature).

The online state must be warm for --from (``fraudmesh materialize --until
FROM`` or ``materialize=True`` here) for online scores to match backtest scores.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pandas as pd

from fraudmesh.currency import to_minor
from fraudmesh.dataset import (
    day_start,
    default_data_path,
    load_transactions,
    parse_day,
)
from fraudmesh.errors import DataError, FraudmeshError
from orchestration.outputs import output_dir

CURRENCY = "eur"
LABEL_DELAY = timedelta(days=7)
LABEL_CHUNK = 500
DEFAULT_CONCURRENCY = 16
REQUEST_TIMEOUT_S = 60.0


class ReplayError(FraudmeshError):
    """The mesh answered the replay with an error it cannot continue past."""


def payment_body(row: dict[str, Any]) -> dict[str, Any]:
    """A data-set row as the ``POST /v1/score`` body (amount in minor units)."""
    return {
        "id": row["payment_key"],
        "amount": to_minor(float(row["tx_amount"]), CURRENCY),
        "currency": CURRENCY,
        "customer": row["customer_key"],
        "created": int(row["tx_datetime"].timestamp()),
        "metadata": {"terminal_id": row["terminal_key"]},
    }


def label_body(row: dict[str, Any]) -> dict[str, Any]:
    created = row["tx_datetime"]
    return {
        "payment_id": row["payment_key"],
        "is_fraud": bool(row["tx_fraud"]),
        "source": "replay",
        "event_time": (created + LABEL_DELAY).isoformat(),
        "customer_id": row["customer_key"],
        "terminal_id": row["terminal_key"],
        "payment_created": created.isoformat(),
    }


@dataclass
class ReplayResult:
    """What the replay saw: one row per payment, in time order."""

    frame: pd.DataFrame  # payment_key, customer_key, tx_datetime, tx_amount,
    # tx_fraud, score, decision, latency_ms, model_version, actuation_mode
    wall_s: float
    start: date
    end: date
    labels_sent: int
    url: str
    batch_size: int
    errors: list[str] = field(default_factory=list)


class _Streamer:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        *,
        concurrency: int,
        rate: float | None,
        batch_size: int,
        progress: Any,
    ) -> None:
        self._session = session
        self._url = url
        self._sem = asyncio.Semaphore(concurrency)
        self._rate = rate
        self._batch_size = batch_size
        self._progress = progress
        self._in_flight: set[asyncio.Task] = set()
        # The first request that failed; nothing more is sent after it.
        self._failure: BaseException | None = None
        self._by_customer: dict[str, asyncio.Task] = {}
        self.answers: dict[str, dict] = {}
        self.latency_ms: dict[str, float] = {}
        self.labels_sent = 0
        self._started = 0.0
        self._sent = 0

    async def run(self, rows: list[dict], labels: list[dict]) -> None:
        labels_due = iter(labels)
        pending_label = next(labels_due, None)
        due: list[dict] = []
        self._started = time.perf_counter()
        day = None
        group: list[dict] = []
        for row in rows:
            now = row["tx_datetime"]
            if day is not None and now.date() != day:
                # Day boundary: everything before it is in, labels due included.
                await self._flush_group(group)
                group = []
                await self._barrier()
                await self._post_labels(due)
                due = []
            day = now.date()
            fraud_due = False
            while pending_label is not None and pending_label["due"] <= now:
                due.append(pending_label["body"])
                fraud_due = fraud_due or pending_label["body"]["is_fraud"]
                pending_label = next(labels_due, None)
            if fraud_due:
                # Payments before `now` that are still in flight are older than
                # the label's due time, so the label cannot change them.
                await self._post_labels(due)
                due = []
            elif len(due) >= LABEL_CHUNK:
                self._track(asyncio.create_task(self._post_labels(due)))
                due = []
            if any(r["customer_key"] == row["customer_key"] for r in group):
                await self._flush_group(group)
                group = []
            group.append(row)
            if len(group) >= self._batch_size:
                await self._flush_group(group)
                group = []
        await self._flush_group(group)
        await self._barrier()
        await self._post_labels(due)

    def _track(self, task: asyncio.Task) -> None:
        self._in_flight.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        # Read every task's outcome here: a failed task may finish and leave the
        # in-flight set before any barrier looks at it.
        self._in_flight.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None and self._failure is None:
            self._failure = error

    @property
    def in_flight(self) -> set[asyncio.Task]:
        return self._in_flight

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    async def _flush_group(self, group: list[dict]) -> None:
        self._raise_failure()
        if not group:
            return
        for row in group:
            previous = self._by_customer.get(row["customer_key"])
            if previous is not None and not previous.done():
                await asyncio.wait({previous})
        await self._pace(len(group))
        await self._sem.acquire()
        task = asyncio.create_task(self._send(list(group)))
        self._track(task)
        for row in group:
            self._by_customer[row["customer_key"]] = task

    async def _pace(self, n: int) -> None:
        if self._rate:
            delay = self._started + self._sent / self._rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        self._sent += n

    async def _send(self, group: list[dict]) -> None:
        try:
            bodies = [payment_body(r) for r in group]
            started = time.perf_counter()
            if len(bodies) == 1 and self._batch_size == 1:
                answers = [await self._post("/v1/score", bodies[0])]
            else:
                answer = await self._post("/v1/score/batch", {"payments": bodies})
                answers = answer["results"]
            latency = (time.perf_counter() - started) * 1000
            for a in answers:
                self.answers[a["payment_id"]] = a
                self.latency_ms[a["payment_id"]] = latency
            self._progress(len(group))
        finally:
            self._sem.release()

    async def _post(self, path: str, payload: Any) -> dict:
        try:
            async with self._session.post(self._url + path, json=payload) as answer:
                body = await answer.json(content_type=None)
                status = answer.status
        except (aiohttp.ClientError, ValueError) as exc:
            raise ReplayError(
                f"POST {self._url}{path} failed ({type(exc).__name__}: {exc})"
            ) from exc
        if status != 200:
            raise ReplayError(f"{path} answered {status}: {str(body)[:300]}")
        return body

    async def check_mesh(self) -> None:
        """ReplayError unless the mesh answers ``GET /healthz`` with 200."""
        try:
            async with self._session.get(self._url + "/healthz") as answer:
                status = answer.status
        except (aiohttp.ClientError, ValueError) as exc:
            raise ReplayError(
                f"no mesh answers at {self._url} ({type(exc).__name__}: {exc}); "
                "start one with `fraudmesh serve` or pass --url"
            ) from exc
        if status != 200:
            raise ReplayError(
                f"the mesh at {self._url} is not ready (GET /healthz answered "
                f"{status}); wait until it answers 200"
            )

    async def _barrier(self) -> None:
        while self._in_flight:
            await asyncio.wait(set(self._in_flight))
        self._raise_failure()  # a failed request stops the replay, loudly

    async def _post_labels(self, labels: list[dict]) -> None:
        if not labels:
            return
        for i in range(0, len(labels), LABEL_CHUNK):
            await self._post("/v1/labels", {"labels": labels[i : i + LABEL_CHUNK]})
        self.labels_sent += len(labels)


def _window(
    data: Path, start_day: date, end_day: date
) -> tuple[pd.DataFrame, pd.DataFrame]:
    start, end = day_start(start_day), day_start(end_day + timedelta(days=1))
    frame = load_transactions(data, start=start - LABEL_DELAY, end=end)
    payments = frame[frame["tx_datetime"] >= pd.Timestamp(start)]
    if payments.empty:
        raise DataError(f"no payments from {start_day} to {end_day}", path=data)
    labelled = frame[frame["tx_datetime"] + LABEL_DELAY < pd.Timestamp(end)]
    return payments.reset_index(drop=True), labelled.reset_index(drop=True)


async def stream(
    payments: pd.DataFrame,
    labelled: pd.DataFrame,
    url: str,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    rate: float | None = None,
    batch_size: int = 1,
    show_progress: bool = True,
) -> tuple[dict[str, dict], dict[str, float], int, float]:
    """Send payments and labels; answers and latencies by payment id."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    rows = payments.to_dict("records")
    labels = [
        {"due": r["tx_datetime"] + LABEL_DELAY, "body": label_body(r)}
        for r in labelled.to_dict("records")
    ]
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=concurrency + 4)
    progress = Progress(
        TextColumn("replay"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:.0f}/s"),
        TimeRemainingColumn(),
        disable=not show_progress,
        transient=False,
    )
    started = time.perf_counter()
    with progress:
        task = progress.add_task("replay", total=len(rows), rate=0.0)

        def advance(n: int) -> None:
            done = progress.tasks[0].completed + n
            elapsed = time.perf_counter() - started
            progress.update(task, advance=n, rate=done / max(elapsed, 1e-9))

        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as s:
            streamer = _Streamer(
                s,
                url.rstrip("/"),
                concurrency=concurrency,
                rate=rate,
                batch_size=max(1, batch_size),
                progress=advance,
            )
            await streamer.check_mesh()
            try:
                await streamer.run(rows, labels)
            except BaseException:
                # Stop what is still in flight before the session closes.
                for pending in list(streamer.in_flight):
                    pending.cancel()
                raise
    wall_s = time.perf_counter() - started
    return streamer.answers, streamer.latency_ms, streamer.labels_sent, wall_s


def replay(
    data: Path,
    start_day: date,
    end_day: date,
    url: str,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    rate: float | None = None,
    batch_size: int = 1,
    show_progress: bool = True,
) -> ReplayResult:
    payments, labelled = _window(data, start_day, end_day)
    answers, latency_ms, labels_sent, wall_s = asyncio.run(
        stream(
            payments,
            labelled,
            url,
            concurrency=concurrency,
            rate=rate,
            batch_size=batch_size,
            show_progress=show_progress,
        )
    )
    frame = payments[
        ["payment_key", "customer_key", "tx_datetime", "tx_amount", "tx_fraud"]
    ].copy()
    keys = frame["payment_key"]
    frame["score"] = [answers[k]["score"] for k in keys]
    frame["decision"] = [answers[k]["decision"] for k in keys]
    frame["duplicate"] = [answers[k].get("duplicate", False) for k in keys]
    frame["model_version"] = [answers[k]["model_version"] for k in keys]
    frame["actuation_mode"] = [answers[k]["actuation_mode"] for k in keys]
    frame["latency_ms"] = [latency_ms[k] for k in keys]
    return ReplayResult(
        frame=frame,
        wall_s=wall_s,
        start=start_day,
        end=end_day,
        labels_sent=labels_sent,
        url=url,
        batch_size=batch_size,
    )


def run_replay(
    data: str | Path | None,
    start: str,
    end: str,
    rate: float | None = None,
    report_dir: Path | None = None,
    url: str = "http://127.0.0.1:8000",
    stripe: bool = False,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    batch_size: int = 1,
    materialize: bool = False,
    redis_url: str | None = None,
    models_dir: Path | None = None,
    agreement: bool = True,
    show_progress: bool = True,
) -> dict[str, Any]:
    """`fraudmesh replay`: stream, then print and write the report; returns it."""
    from orchestration.report import build_report, print_report, write_report

    path = Path(data) if data is not None else default_data_path()
    start_day = parse_day(start, option="--from")
    end_day = parse_day(end, option="--to")
    if end_day < start_day:
        raise DataError(f"--to {end_day} is before --from {start_day}")
    if rate is not None and not (math.isfinite(rate) and rate > 0):
        raise DataError(f"--rate: {rate} must be a positive number of payments/s")
    if report_dir is not None:
        report_dir = output_dir(report_dir, "--report")  # before the replay
    if materialize:
        from orchestration.materialize import run_materialize

        run_materialize(path, start_day, redis_url=redis_url)
    stripe_summary = None
    if stripe:
        # PaymentIntents in Stripe (or localstripe); webhooks and actuation decide.
        from orchestration.stripe_replay import print_stripe_summary, replay_stripe

        result, stripe_summary = replay_stripe(
            path,
            start_day,
            end_day,
            url,
            rate=rate,
            redis_url=redis_url,
            show_progress=show_progress,
        )
    else:
        result = replay(
            path,
            start_day,
            end_day,
            url,
            concurrency=concurrency,
            rate=rate,
            batch_size=batch_size,
            show_progress=show_progress,
        )
    offline = offline_scores(path, result, models_dir) if agreement else None
    report = build_report(result, offline)
    if stripe_summary is not None:
        report["stripe"] = stripe_summary
    print_report(report)
    if stripe_summary is not None:
        print_stripe_summary(stripe_summary)
    if report_dir is not None:
        write_report(report, result, Path(report_dir))
    return report


def offline_scores(
    data: Path, result: ReplayResult, models_dir: Path | None
) -> pd.Series | None:
    """Backtest-style scores of the replayed payments with the same model.

    build_examples over the same file and window, scored by ``Scorer.load`` of
    the model version the mesh answered with. None when that model is not here.
    """
    from fraudmesh.config import get_settings
    from models.scorer import Scorer
    from orchestration.training_data import build_examples

    models_dir = Path(models_dir or get_settings().models_path)
    versions = set(result.frame["model_version"])
    if len(versions) != 1:
        return None
    version = versions.pop()
    version_dir = models_dir / version
    if not version_dir.is_dir():
        version_dir = models_dir  # the newest; checked against the version below
    transactions = load_transactions(
        data, end=day_start(result.end + timedelta(days=1))
    )
    examples = build_examples(
        transactions,
        day_start(result.start),
        day_start(result.end + timedelta(days=1)),
    )
    scorer = Scorer.load(version_dir)
    if scorer.version != version:
        return None
    scores = _predict_chunked(scorer, examples)
    return pd.Series(scores, index=examples.frame["payment_key"].to_numpy())


def _predict_chunked(scorer: Any, examples: Any, chunk: int = 4096) -> np.ndarray:
    out: Sequence[np.ndarray] = []
    for i in range(0, len(examples.lengths), chunk):
        out.append(
            scorer.predict(
                examples.static[i : i + chunk],
                examples.sequence[i : i + chunk],
                examples.lengths[i : i + chunk],
            )
        )
    return np.concatenate(out) if out else np.zeros(0, np.float32)
