"""The pure functions behind every feature, and the model-input contract.

Offline (``orchestration.training_data``) and online (``services.features``) code
call these same functions, so training and serving cannot drift. Nothing here does
I/O or imports Feast.

Contract:

- ``STATIC_FEATURES``: ordered names of the per-payment vector: the daily snapshot
  views (customer spending, terminal risk with the label delay), the time since
  the terminal's latest fraud known for at least the delay, the request-time
  features and recency features from the behaviour history.
- ``SEQUENCE_FEATURES``: ordered names of the per-event vector of the history.
- ``HISTORY_LENGTH``: N, the number of past events in a sequence.
- ``ModelInput``: one payment's model input. ``sequence`` is [N, E], most recent
  event last, zero rows in front when the history is shorter; ``length`` counts
  the real rows. ``context`` carries values the policy needs.
- ``FEATURE_DESCRIPTIONS``: a phrase per static feature, formatted with
  ``value=``, used to put reasons in words.
- ``FEATURE_SCHEMA_VERSION``: a hash of the lists above; artefacts store it.

Time: all timestamps are UTC unix seconds (int64 or float64); a "day" is a UTC
calendar day, numbered ``unix_s // 86400``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

SECONDS_PER_DAY = 86_400
LABEL_DELAY_DAYS = 7
CUSTOMER_WINDOWS_DAYS = (1, 7, 30)
TERMINAL_WINDOWS_DAYS = (1, 7, 30)
# Longest look-back of a snapshot row, in days before the snapshot day. An entity
# active in this span gets a row (zero counts when its windows just emptied), so a
# stale online row is always overwritten.
CUSTOMER_LOOKBACK_DAYS = max(CUSTOMER_WINDOWS_DAYS) + 1
TERMINAL_LOOKBACK_DAYS = max(TERMINAL_WINDOWS_DAYS) + LABEL_DELAY_DAYS + 1

HISTORY_LENGTH = 48
# Known frauds at a terminal are looked back on this far; the recency feature
# saturates there.
TERMINAL_FRAUD_LOOKBACK_DAYS = 60
NO_TERMINAL_FRAUD_SECONDS = float(TERMINAL_FRAUD_LOOKBACK_DAYS * 86_400)
# Value used for "time since" features when there is no such event: 30 days.
NO_EVENT_SECONDS = 30.0 * SECONDS_PER_DAY
NIGHT_END_HOUR = 6  # 00:00 to 05:59 UTC is night

EVENT_PAYMENT = 0
EVENT_ACCOUNT_CHANGE = 1

CUSTOMER_SNAPSHOT_FEATURES: list[str] = [
    f"customer_{stat}_{w}d"
    for w in CUSTOMER_WINDOWS_DAYS
    for stat in ("count", "mean_amount", "std_amount")
]
TERMINAL_SNAPSHOT_FEATURES: list[str] = [
    f"terminal_{stat}_{w}d"
    for w in TERMINAL_WINDOWS_DAYS
    for stat in ("count", "fraud_ratio")
]
# From the terminal's known frauds, to the second (not per day): a compromised
# terminal's first fraud counts from exactly 7 days after it was paid.
TERMINAL_LABEL_FEATURES: list[str] = ["log_hours_since_terminal_fraud"]
REQUEST_FEATURES: list[str] = [
    "amount_over_usual",
    "amount_zscore_30d",
    "hour_of_day",
    "is_night",
    "is_weekend",
]
RECENCY_FEATURES: list[str] = [
    "log_seconds_since_previous",
    "payments_last_1h",
    "payments_last_24h",
    "log_amount_last_24h",
    "amount_over_history_median",
    "amount_over_history_max",
    "terminal_share_in_history",
    "log_hours_since_account_change",
    "account_change_last_24h",
    "history_length",
]
STATIC_FEATURES: list[str] = (
    ["amount", "log_amount"]
    + CUSTOMER_SNAPSHOT_FEATURES
    + TERMINAL_SNAPSHOT_FEATURES
    + TERMINAL_LABEL_FEATURES
    + REQUEST_FEATURES
    + RECENCY_FEATURES
)
SEQUENCE_FEATURES: list[str] = [
    "log_amount",
    "log_hours_before",
    "log_amount_over_current",
    "same_terminal",
    "hour_sin",
    "hour_cos",
    "is_account_change",
]


def _windows_phrases(prefix: str, stat: str, phrase: str) -> dict[str, str]:
    return {
        f"{prefix}_{stat}_{w}d": phrase.replace("{w}", str(w))
        for w in (CUSTOMER_WINDOWS_DAYS if prefix == "customer" else
                  TERMINAL_WINDOWS_DAYS)
    }


FEATURE_DESCRIPTIONS: dict[str, str] = {
    "amount": "amount is {value:.2f}",
    "log_amount": "the amount is large",
    **_windows_phrases("customer", "count", "{value:.0f} payments by the customer "
                       "in the last {w} days"),
    **_windows_phrases("customer", "mean_amount", "customer's {w}-day average "
                       "amount is {value:.2f}"),
    **_windows_phrases("customer", "std_amount", "customer's amounts over {w} days "
                       "vary by {value:.2f}"),
    **_windows_phrases("terminal", "count", "{value:.0f} payments at the terminal "
                       "in {w} days (before the label delay)"),
    **_windows_phrases("terminal", "fraud_ratio", "{value:.0%} of the terminal's "
                       "payments over {w} days were fraud"),
    "log_hours_since_terminal_fraud": "a fraud was confirmed recently at this "
    "terminal",
    "amount_over_usual": "amount is {value:.1f}x the customer's 30-day average",
    "amount_zscore_30d": "amount is {value:.1f} standard deviations above the "
    "customer's usual",
    "hour_of_day": "paid at hour {value:.0f} UTC",
    "is_night": "paid at night",
    "is_weekend": "paid at the weekend",
    "log_seconds_since_previous": "little time since the customer's previous payment",
    "payments_last_1h": "{value:.0f} payments by the customer in the last hour",
    "payments_last_24h": "{value:.0f} payments by the customer in the last 24 hours",
    "log_amount_last_24h": "the customer spent a lot in the last 24 hours",
    "amount_over_history_median": "amount is {value:.1f}x the customer's median "
    "recent payment",
    "amount_over_history_max": "amount is {value:.1f}x the customer's largest "
    "recent payment",
    "terminal_share_in_history": "{value:.0%} of recent payments at this terminal",
    "log_hours_since_account_change": "the account changed shortly before",
    "account_change_last_24h": "the account changed in the last 24 hours",
    "history_length": "{value:.0f} past events in the customer's history",
}

FEATURE_SCHEMA_VERSION = hashlib.sha256(
    repr((STATIC_FEATURES, SEQUENCE_FEATURES, HISTORY_LENGTH)).encode()
).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class ModelInput:
    """One payment's model input (see the module docstring)."""

    static: np.ndarray  # float32 [len(STATIC_FEATURES)]
    sequence: np.ndarray  # float32 [HISTORY_LENGTH, len(SEQUENCE_FEATURES)]
    length: int
    context: dict[str, float | None] = field(default_factory=dict)


# ---------------------------------------------------------------- snapshot views


def customer_snapshot(
    counts: np.ndarray, sums: np.ndarray, sumsqs: np.ndarray
) -> dict[str, np.ndarray]:
    """Customer spending features from per-day aggregates.

    Inputs are [K, L] arrays of per-day count, sum and sum of squares of amounts
    for K customers over the L >= 30 days before the snapshot day, oldest first
    (column -1 is the day before). Returns each of CUSTOMER_SNAPSHOT_FEATURES as a
    float64 [K] array; mean and std are 0 when the window has no payment.
    """
    out: dict[str, np.ndarray] = {}
    for w in CUSTOMER_WINDOWS_DAYS:
        n = counts[:, -w:].sum(axis=1).astype(np.float64)
        s = sums[:, -w:].sum(axis=1)
        q = sumsqs[:, -w:].sum(axis=1)
        safe_n = np.maximum(n, 1.0)
        mean = np.where(n > 0, s / safe_n, 0.0)
        var = np.where(n > 1, q / safe_n - mean * mean, 0.0)
        out[f"customer_count_{w}d"] = n
        out[f"customer_mean_amount_{w}d"] = mean
        out[f"customer_std_amount_{w}d"] = np.sqrt(np.maximum(var, 0.0))
    return out


def terminal_snapshot(counts: np.ndarray, frauds: np.ndarray) -> dict[str, np.ndarray]:
    """Terminal risk features from per-day aggregates, label delay applied.

    Inputs are [K, L] arrays of per-day payment and fraud counts for K terminals
    over the L >= 37 days before the snapshot day, oldest first (column -1 is the
    day before). The last LABEL_DELAY_DAYS columns are ignored: window w covers
    days [D-7-w, D-7). Returns each of TERMINAL_SNAPSHOT_FEATURES as float64 [K];
    the fraud ratio is 0 when the window has no payment.
    """
    delayed_n = counts[:, :-LABEL_DELAY_DAYS]
    delayed_f = frauds[:, :-LABEL_DELAY_DAYS]
    out: dict[str, np.ndarray] = {}
    for w in TERMINAL_WINDOWS_DAYS:
        n = delayed_n[:, -w:].sum(axis=1).astype(np.float64)
        f = delayed_f[:, -w:].sum(axis=1).astype(np.float64)
        out[f"terminal_count_{w}d"] = n
        out[f"terminal_fraud_ratio_{w}d"] = np.where(n > 0, f / np.maximum(n, 1.0), 0)
    return out


def terminal_fraud_recency(
    fraud_terminal: np.ndarray,
    fraud_unix_s: np.ndarray,
    terminal: np.ndarray,
    unix_s: np.ndarray,
) -> dict[str, np.ndarray]:
    """TERMINAL_LABEL_FEATURES of [B] payments from the known frauds.

    ``fraud_terminal`` and ``fraud_unix_s`` are [M] (any order): the terminal and
    payment time of every payment known to be fraud. For a payment at ``unix_s``
    only frauds paid at least LABEL_DELAY_DAYS before it count, to the second, so
    a label inside the delay never reaches the feature. With none at its terminal,
    or the latest older than TERMINAL_FRAUD_LOOKBACK_DAYS, the time since is
    NO_TERMINAL_FRAUD_SECONDS. Returns float64 [B] columns.
    """
    unix_s = np.asarray(unix_s, dtype=np.int64)
    fraud_unix_s = np.asarray(fraud_unix_s, dtype=np.int64)
    names = np.concatenate([np.asarray(fraud_terminal, dtype=str),
                            np.asarray(terminal, dtype=str)])
    _, codes = np.unique(names, return_inverse=True)
    span = np.int64(1) << 34  # beyond any unix second: one key range per terminal
    base = codes[len(fraud_unix_s):].astype(np.int64) * span
    known = np.sort(codes[: len(fraud_unix_s)].astype(np.int64) * span + fraud_unix_s)
    limit = base + unix_s - LABEL_DELAY_DAYS * SECONDS_PER_DAY
    pos = np.searchsorted(known, limit, side="right")
    latest = known[np.maximum(pos - 1, 0)] if len(known) else limit
    has = (pos > 0) & (latest >= base)
    since = np.where(has, unix_s - (latest - base), NO_TERMINAL_FRAUD_SECONDS)
    since = np.minimum(since.astype(np.float64), NO_TERMINAL_FRAUD_SECONDS)
    return {"log_hours_since_terminal_fraud": np.log1p(since / 3600.0)}


# ------------------------------------------------------------ request features


def request_features(
    amount: np.ndarray,
    unix_s: np.ndarray,
    mean_amount_30d: np.ndarray,
    std_amount_30d: np.ndarray,
) -> dict[str, np.ndarray]:
    """Request-time features of [B] payments (amount major units, UTC seconds).

    ``mean_amount_30d``/``std_amount_30d`` come from the customer snapshot; an
    unknown customer has 0 there, and then ``amount_over_usual`` is 1 and the
    z-score 0. Returns each of REQUEST_FEATURES as float64 [B].
    """
    amount = np.asarray(amount, dtype=np.float64)
    unix_s = np.asarray(unix_s, dtype=np.float64)
    mean = np.nan_to_num(np.asarray(mean_amount_30d, dtype=np.float64))
    std = np.nan_to_num(np.asarray(std_amount_30d, dtype=np.float64))
    known = mean > 0
    over = np.where(known, amount / np.where(known, mean, 1.0), 1.0)
    z = np.where(known, (amount - mean) / np.maximum(std, 0.1 * mean + 1.0), 0.0)
    seconds_of_day = np.mod(unix_s, SECONDS_PER_DAY)
    hour = np.floor(seconds_of_day / 3600.0)
    weekday = np.mod(np.floor(unix_s / SECONDS_PER_DAY) + 3, 7)  # 1970-01-01: Thu
    return {
        "amount_over_usual": np.clip(over, 0.0, 100.0),
        "amount_zscore_30d": np.clip(z, -10.0, 100.0),
        "hour_of_day": hour,
        "is_night": (hour < NIGHT_END_HOUR).astype(np.float64),
        "is_weekend": (weekday >= 5).astype(np.float64),
    }


# ------------------------------------------------------------ behaviour history


@dataclass(frozen=True, slots=True)
class HistoryBlock:
    """The last N events before each of B payments, padded in front.

    Arrays are [B, N], most recent event last; ``mask`` is True on real rows.
    ``kind`` is EVENT_PAYMENT or EVENT_ACCOUNT_CHANGE; an account change has
    amount 0 and ``same_terminal`` False.
    """

    unix_s: np.ndarray  # float64
    amount: np.ndarray  # float64
    same_terminal: np.ndarray  # bool
    kind: np.ndarray  # int8
    mask: np.ndarray  # bool


def empty_block(batch: int, n: int = HISTORY_LENGTH) -> HistoryBlock:
    """A block of ``batch`` empty histories, to fill in place."""
    return HistoryBlock(
        unix_s=np.zeros((batch, n)),
        amount=np.zeros((batch, n)),
        same_terminal=np.zeros((batch, n), dtype=bool),
        kind=np.zeros((batch, n), dtype=np.int8),
        mask=np.zeros((batch, n), dtype=bool),
    )


def sequence_features(
    block: HistoryBlock, unix_s: np.ndarray, amount: np.ndarray
) -> np.ndarray:
    """The [B, N, E] float32 sequence of SEQUENCE_FEATURES; padded rows are 0."""
    now = np.asarray(unix_s, dtype=np.float64)[:, None]
    cur = np.asarray(amount, dtype=np.float64)[:, None]
    is_pay = block.kind == EVENT_PAYMENT
    hours_before = np.maximum(now - block.unix_s, 0.0) / 3600.0
    angle = 2 * np.pi * np.mod(block.unix_s, SECONDS_PER_DAY) / SECONDS_PER_DAY
    columns = (
        lambda: np.where(is_pay, np.log1p(block.amount), 0.0),
        lambda: np.log1p(hours_before),
        lambda: np.where(is_pay, np.log((block.amount + 1.0) / (cur + 1.0)), 0.0),
        lambda: block.same_terminal & is_pay,
        lambda: np.sin(angle),
        lambda: np.cos(angle),
        lambda: ~is_pay,
    )
    # Filled one column at a time: a [B, N, E] float64 temporary would cost
    # gigabytes for a month of payments.
    seq = np.zeros(block.mask.shape + (len(columns),), dtype=np.float32)
    for k, column in enumerate(columns):
        seq[..., k] = np.where(block.mask, column(), 0.0)
    return seq


def _masked_median(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Row medians of ``values`` over ``mask`` (NaN for an empty row)."""
    ordered = np.sort(np.where(mask, values, np.inf), axis=1)
    n = mask.sum(axis=1)
    rows = np.arange(len(n))
    lo = ordered[rows, np.maximum((n - 1) // 2, 0)]
    hi = ordered[rows, np.maximum(n // 2, 0)]
    return np.where(n > 0, (lo + hi) / 2.0, np.nan)


def recency_features(
    block: HistoryBlock, unix_s: np.ndarray, amount: np.ndarray
) -> dict[str, np.ndarray]:
    """RECENCY_FEATURES of [B] payments from their history blocks (float64 [B]).

    A customer with no past payment gets NO_EVENT_SECONDS since the previous one,
    zero counts and ratios of 1; no account change gives NO_EVENT_SECONDS too.
    """
    now = np.asarray(unix_s, dtype=np.float64)[:, None]
    cur = np.asarray(amount, dtype=np.float64)
    age_s = now - block.unix_s
    pay = block.mask & (block.kind == EVENT_PAYMENT)
    change = block.mask & (block.kind == EVENT_ACCOUNT_CHANGE)
    n_pay = pay.sum(axis=1)
    last_24h = pay & (age_s < SECONDS_PER_DAY)

    since_prev = np.where(pay, age_s, np.inf).min(axis=1)
    since_prev = np.minimum(since_prev, NO_EVENT_SECONDS)
    since_change = np.minimum(np.where(change, age_s, np.inf).min(axis=1),
                              NO_EVENT_SECONDS)
    has = n_pay > 0
    median = np.where(has, _masked_median(block.amount, pay), 1.0)
    largest = np.where(has, np.where(pay, block.amount, -np.inf).max(axis=1), 1.0)
    return {
        "log_seconds_since_previous": np.log1p(since_prev),
        "payments_last_1h": (pay & (age_s < 3600)).sum(axis=1).astype(np.float64),
        "payments_last_24h": last_24h.sum(axis=1).astype(np.float64),
        "log_amount_last_24h": np.log1p((block.amount * last_24h).sum(axis=1)),
        "amount_over_history_median": np.where(
            has, np.clip((cur + 1.0) / (median + 1.0), 0.0, 100.0), 1.0
        ),
        "amount_over_history_max": np.where(
            has, np.clip((cur + 1.0) / (largest + 1.0), 0.0, 100.0), 1.0
        ),
        "terminal_share_in_history": np.where(
            has, (pay & block.same_terminal).sum(axis=1) / np.maximum(n_pay, 1), 0.0
        ),
        "log_hours_since_account_change": np.log1p(since_change / 3600.0),
        "account_change_last_24h": (since_change < SECONDS_PER_DAY).astype(
            np.float64
        ),
        "history_length": block.mask.sum(axis=1).astype(np.float64),
    }


def hours_since_account_change(block: HistoryBlock, unix_s: np.ndarray) -> list:
    """Per payment, hours since the latest account change in the block, or None."""
    age_s = np.asarray(unix_s, dtype=np.float64)[:, None] - block.unix_s
    change = block.mask & (block.kind == EVENT_ACCOUNT_CHANGE)
    nearest = np.where(change, age_s, np.inf).min(axis=1)
    return [None if not np.isfinite(v) else float(v) / 3600.0 for v in nearest]


# ------------------------------------------------------------------ assembling


def static_matrix(columns: dict[str, np.ndarray]) -> np.ndarray:
    """Stack the STATIC_FEATURES columns of ``columns`` into float32 [B, F].

    Missing values (NaN, e.g. an entity absent from a snapshot) become 0.
    """
    missing = [name for name in STATIC_FEATURES if name not in columns]
    if missing:
        raise KeyError(f"static feature columns missing: {missing}")
    stacked = np.stack(
        [np.asarray(columns[name], dtype=np.float64) for name in STATIC_FEATURES],
        axis=1,
    )
    return np.nan_to_num(stacked, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)


def model_inputs(
    snapshot: dict[str, np.ndarray],
    block: HistoryBlock,
    unix_s: np.ndarray,
    amount: np.ndarray,
    terminal_label: dict[str, np.ndarray],
    request: dict[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """All model inputs of [B] payments: (static, sequence, lengths, columns).

    ``snapshot`` holds the snapshot-view columns ([B] each, NaN for an unknown
    entity), ``terminal_label`` the TERMINAL_LABEL_FEATURES columns of
    :func:`terminal_fraud_recency`. ``request`` holds REQUEST_FEATURES when they
    were computed elsewhere; else (online and offline alike) they are computed
    here from the snapshot columns.
    """
    amount = np.asarray(amount, dtype=np.float64)
    # One nan_to_num over the stacked columns, not one per column: online this
    # runs per request, and each call has a fixed cost far above the work.
    names = list(snapshot)
    cleaned = np.nan_to_num(np.stack(
        [np.asarray(snapshot[k], dtype=np.float64) for k in names]
    )) if names else np.empty((0, len(amount)))
    snap = dict(zip(names, cleaned, strict=True))
    if request is None:
        request = request_features(
            amount, unix_s, snap["customer_mean_amount_30d"],
            snap["customer_std_amount_30d"]
        )
    columns = {
        "amount": amount,
        "log_amount": np.log1p(amount),
        **snap,
        **terminal_label,
        **request,
        **recency_features(block, unix_s, amount),
    }
    static = static_matrix(columns)
    sequence = sequence_features(block, unix_s, amount)
    lengths = block.mask.sum(axis=1).astype(np.int64)
    return static, sequence, lengths, columns
