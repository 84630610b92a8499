"""How the behaviour history and per-day aggregates are laid out in Redis.

Pure encoding and decoding only (no I/O), shared by the online client
(``services.features``) and the warm-up job (``orchestration.materialize``):

- ``fm:hist:{customer}``: a list of the customer's last ``HISTORY_KEEP`` events in
  arrival order, each ``"unix_s|amount|terminal|kind|event_id"``.
- ``fm:cday:{day}``: a hash of the customer aggregates of one UTC day, fields
  ``{customer}:n`` (count), ``:s`` (sum of amounts), ``:q`` (sum of squares).
- ``fm:tday:{day}``: a hash of the terminal aggregates of one day, fields
  ``{terminal}:n`` (payments) and ``:f`` (fraud labels folded in so far).
- ``fm:seen:{payment}``: ``"customer|terminal|day|unix_s"``, set once per
  payment id.
- ``fm:label:{payment}``: ``"1"`` or ``"0"``, the label folded in for it.
- ``fm:tfraud:{terminal}``: a sorted set of the terminal's payments labelled
  fraud, member the payment id, score its unix time; entries older than the
  look-back of ``log_hours_since_terminal_fraud`` are trimmed.
- ``fm:snap:latest``: the latest day whose snapshot rows are in the online store;
  ``fm:snap:lock:{day}``: who is building that day's snapshot.

Days are unix day numbers (``unix_s // 86400``, UTC).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from feature_repo import transforms as tf
from feature_repo.snapshots import DayAggregates

PREFIX = "fm:"
# Extra events kept beyond N, so events recorded slightly out of time order
# (concurrent requests) still leave the N events before a payment in the list.
HISTORY_SLACK = 16
HISTORY_KEEP = tf.HISTORY_LENGTH + HISTORY_SLACK
AGGREGATE_TTL_S = (tf.TERMINAL_LOOKBACK_DAYS + 10) * tf.SECONDS_PER_DAY
SEEN_TTL_S = 45 * tf.SECONDS_PER_DAY  # labels can arrive weeks later
# Known frauds older than this (before the payment being scored) change nothing.
TERMINAL_FRAUD_KEEP_S = (
    tf.TERMINAL_FRAUD_LOOKBACK_DAYS + tf.LABEL_DELAY_DAYS + 1
) * tf.SECONDS_PER_DAY
ACCOUNT_CHANGE_ID = "account_change"


def history_key(customer_id: str) -> str:
    return f"{PREFIX}hist:{customer_id}"


def customer_day_key(day: int) -> str:
    return f"{PREFIX}cday:{day}"


def terminal_day_key(day: int) -> str:
    return f"{PREFIX}tday:{day}"


def seen_key(payment_id: str) -> str:
    return f"{PREFIX}seen:{payment_id}"


def label_key(payment_id: str) -> str:
    return f"{PREFIX}label:{payment_id}"


def terminal_frauds_key(terminal_id: str) -> str:
    return f"{PREFIX}tfraud:{terminal_id}"


def seen_value(customer_id: str, terminal_id: str, unix_s: int) -> str:
    return f"{customer_id}|{terminal_id}|{unix_s // tf.SECONDS_PER_DAY}|{unix_s}"


def decode_seen(raw: bytes | str) -> tuple[str, int]:
    """``(terminal, unix_s)`` of a seen value (a day-only one gives its 00:00)."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    _, terminal, day, *exact = text.split("|")
    return terminal, int(exact[0]) if exact else int(day) * tf.SECONDS_PER_DAY


SNAPSHOT_LATEST_KEY = f"{PREFIX}snap:latest"


def snapshot_lock_key(day: int) -> str:
    return f"{PREFIX}snap:lock:{day}"


@dataclass(frozen=True, slots=True)
class Event:
    """One history event; ``terminal`` is "" for an account change."""

    unix_s: int
    amount: float
    terminal: str
    kind: int
    event_id: str


def encode_event(event: Event) -> str:
    return (f"{event.unix_s}|{event.amount!r}|{event.terminal}|{event.kind}|"
            f"{event.event_id}")


def decode_event(raw: bytes | str) -> Event:
    text = raw.decode() if isinstance(raw, bytes) else raw
    unix_s, amount, terminal, kind, event_id = text.split("|", 4)
    return Event(int(unix_s), float(amount), terminal, int(kind), event_id)


@dataclass(frozen=True, slots=True)
class EventColumns:
    """One customer's events as columns, in arrival order (see decode_events)."""

    unix_s: np.ndarray  # int64
    amount: np.ndarray  # float64
    terminal: np.ndarray  # object: str ("" for an account change)
    kind: np.ndarray  # int8
    event_id: np.ndarray  # object: str
    # True when some payment id occurs twice (concurrent records out of order);
    # only then does fill_history drop repeats one by one.
    repeats: bool


def decode_events(raw: Sequence[bytes | str],
                  extra: Sequence[Event] = ()) -> EventColumns:
    """A history list as read from Redis, then ``extra`` events, as columns.

    Decodes the whole list at once: the payments path reads every scored
    customer's full list, so per-event objects would dominate a lookup.
    """
    fields = [(r.decode() if isinstance(r, bytes) else r).split("|", 4) for r in raw]
    fields.extend((str(e.unix_s), repr(e.amount), e.terminal, str(e.kind),
                   e.event_id) for e in extra)
    if not fields:
        return _NO_EVENTS
    unix_s, amount, terminal, kind, event_id = (np.array(c, dtype=object)
                                                for c in zip(*fields, strict=True))
    kind = kind.astype(np.int8)
    payment_ids = event_id[kind == tf.EVENT_PAYMENT]
    return EventColumns(unix_s.astype(np.int64), amount.astype(np.float64),
                        terminal, kind, event_id,
                        repeats=len(set(payment_ids.tolist())) < len(payment_ids))


_NO_EVENTS = EventColumns(np.zeros(0, np.int64), np.zeros(0), np.zeros(0, object),
                          np.zeros(0, np.int8), np.zeros(0, object), repeats=False)


def fill_history(block: tf.HistoryBlock, row: int, events: EventColumns,
                 unix_s: int, exclude_id: str, terminal: str) -> None:
    """Write into ``block`` row ``row`` the last N events strictly before ``unix_s``.

    Drops ``exclude_id`` (the payment itself) and repeated payment ids (the
    first in arrival order stays); ties in time keep arrival order, as the
    offline path keeps file order. Events end oldest first, padded in front.
    """
    n = block.mask.shape[1]
    kept = np.flatnonzero((events.unix_s < unix_s) & (events.event_id != exclude_id))
    if events.repeats:
        kept = _first_of_each_payment(events, kept)
    if not len(kept):
        return
    kept = kept[np.argsort(events.unix_s[kept], kind="stable")][-n:]
    cols = slice(n - len(kept), n)
    block.unix_s[row, cols] = events.unix_s[kept]
    block.amount[row, cols] = events.amount[kept]
    kind = events.kind[kept]
    block.kind[row, cols] = kind
    block.same_terminal[row, cols] = ((kind == tf.EVENT_PAYMENT)
                                      & (events.terminal[kept] == terminal))
    block.mask[row, cols] = True


def _first_of_each_payment(events: EventColumns, kept: np.ndarray) -> np.ndarray:
    seen: set[str] = set()
    out = []
    for i in kept.tolist():
        if events.kind[i] == tf.EVENT_PAYMENT:
            if events.event_id[i] in seen:
                continue
            seen.add(events.event_id[i])
        out.append(i)
    return np.array(out, dtype=np.int64)


def aggregates_from_hashes(
    hashes: Sequence[Mapping[bytes | str, bytes | str]], first_day: int,
    stats: Sequence[str],
) -> DayAggregates:
    """Per-day hashes (oldest first) as a DayAggregates over their entities.

    ``stats`` maps field suffixes to columns: ``("n", "s", "q")`` give
    ``count``/``sum``/``sumsq``; ``("n", "f")`` give ``count``/``fraud``.
    """
    names = {"n": "count", "s": "sum", "q": "sumsq", "f": "fraud"}
    parsed: list[dict[tuple[str, str], float]] = []
    entities: set[str] = set()
    for h in hashes:
        day: dict[tuple[str, str], float] = {}
        for field, value in h.items():
            text = field.decode() if isinstance(field, bytes) else field
            entity, _, stat = text.rpartition(":")
            if stat in stats:
                day[(entity, stat)] = float(value)
                entities.add(entity)
        parsed.append(day)
    keys = np.array(sorted(entities), dtype=object)
    index = {k: i for i, k in enumerate(keys)}
    columns = {names[s]: np.zeros((len(keys), len(hashes))) for s in stats}
    for col, day in enumerate(parsed):
        for (entity, stat), value in day.items():
            columns[names[stat]][index[entity], col] = value
    return DayAggregates(keys=keys, first_day=first_day, columns=columns)
