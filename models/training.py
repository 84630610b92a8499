"""Training the fraud network on CPU.

Contract of :func:`train_model`:

- Inputs are the arrays of :class:`orchestration.training_data.Examples` plus each
  example's UTC day number; rows may be in any order (they are sorted by day here).
- Normalisation (log for heavy-tailed non-negative features, then standardisation,
  NaN to the mean, clipping) is fitted on the *training* rows only.
- Early stopping watches average precision on a time-ordered validation slice: the
  last ``val_days`` days of the window, separated from the training rows by
  ``gap_days`` (the label delay), as the test days are separated from training in
  the backtest. When the window is too short for that, the gap shrinks to 0 and the
  slice to a quarter of the window.
- Class imbalance: each epoch keeps every fraud and a fresh random share of the
  genuine payments, and weighs frauds by ``(genuine / fraud) ** pos_weight_power``
  in the loss (0.5 by default).
- ``members`` networks are trained apart on the same normalised rows, member
  ``i`` seeded ``seed + i`` (its own initialisation and negative samples), each
  early-stopped on its own; more than one makes a ``FraudEnsemble`` (mean logit).
- Deterministic for a given seed; at most ``num_threads`` torch threads (the box
  is shared), at most ``max_epochs`` epochs a member and about ``max_train_s``
  seconds in all.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from models.metrics import auc_roc, average_precision
from models.network import FraudEnsemble, FraudNet, build_network

logger = logging.getLogger(__name__)

CLIP_Z = 8.0


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters; stored in the artefact's metadata."""

    encoder: str = "attention"
    hidden: int = 32
    static_hidden: int = 128
    dropout: float = 0.1
    max_events: int | None = 16
    # Three members on every genuine payment: measured on the handbook folds
    # (README, "Training and the backtest").
    members: int = 3
    batch_size: int = 512
    lr: float = 5e-3
    weight_decay: float = 1e-5
    max_epochs: int = 20
    patience: int = 4
    max_train_s: float = 300.0
    negative_fraction: float = 1.0
    pos_weight_power: float = 0.5
    val_days: int = 7
    gap_days: int = 7
    seed: int = 0
    num_threads: int = 2

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Normaliser:
    """Per-feature ``log1p`` flag, mean and std for static and sequence inputs."""

    static_log: list[bool]
    static_mean: list[float]
    static_std: list[float]
    sequence_log: list[bool]
    sequence_mean: list[float]
    sequence_std: list[float]

    @classmethod
    def fit(
        cls, static: np.ndarray, sequence: np.ndarray, lengths: np.ndarray
    ) -> Normaliser:
        """Fit on training rows; sequence statistics use real (unpadded) rows only."""
        n = sequence.shape[1]
        real = np.arange(n)[None, :] >= (n - lengths)[:, None]
        events = sequence[real] if sequence.size else sequence.reshape(0, 0)
        if events.shape[0] == 0:
            events = np.zeros((1, sequence.shape[2]), dtype=np.float32)
        s_log, s_mean, s_std = _fit_columns(static)
        q_log, q_mean, q_std = _fit_columns(events)
        return cls(s_log, s_mean, s_std, q_log, q_mean, q_std)

    def apply(
        self,
        static: np.ndarray,
        sequence: np.ndarray,
        lengths: np.ndarray,
        *,
        inplace: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Normalised float32 arrays; padded sequence rows stay exactly zero.

        Copies unless ``inplace`` (then float32 C-contiguous inputs are overwritten).
        """
        static_n = _apply_columns(
            static, self.static_log, self.static_mean, self.static_std, inplace
        )
        b, n, e = sequence.shape
        seq_n = _apply_columns(
            sequence.reshape(b * n, e),
            self.sequence_log,
            self.sequence_mean,
            self.sequence_std,
            inplace,
        ).reshape(b, n, e)
        real = np.arange(n)[None, :] >= (n - np.asarray(lengths))[:, None]
        seq_n *= real[:, :, None]
        return static_n, seq_n

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Normaliser:
        return cls(**{k: list(data[k]) for k in cls.__dataclass_fields__})


def _fit_columns(values: np.ndarray) -> tuple[list[bool], list[float], list[float]]:
    logs, means, stds = [], [], []
    for j in range(values.shape[1]):
        col = values[:, j].astype(np.float64)
        col = col[np.isfinite(col)]
        if col.size == 0:
            logs.append(False)
            means.append(0.0)
            stds.append(1.0)
            continue
        use_log = bool(col.min() >= 0 and col.max() > 20 * max(np.median(col), 1.0))
        if use_log:
            col = np.log1p(col)
        std = float(col.std())
        logs.append(use_log)
        means.append(float(col.mean()))
        stds.append(std if std > 1e-6 else 1.0)
    return logs, means, stds


def _apply_columns(
    values: np.ndarray,
    logs: list[bool],
    means: list[float],
    stds: list[float],
    inplace: bool = False,
) -> np.ndarray:
    if inplace and values.dtype == np.float32 and values.flags.c_contiguous:
        out = values
    else:
        out = np.array(values, dtype=np.float32, copy=True)
    log_cols = np.flatnonzero(logs)
    if log_cols.size:
        out[:, log_cols] = np.log1p(np.maximum(out[:, log_cols], 0.0))
    out -= np.asarray(means, dtype=np.float32)
    out /= np.asarray(stds, dtype=np.float32)
    np.nan_to_num(out, copy=False, nan=0.0, posinf=CLIP_Z, neginf=-CLIP_Z)
    np.clip(out, -CLIP_Z, CLIP_Z, out=out)
    return out


@dataclass
class TrainResult:
    """The trained network and what the training saw."""

    net: nn.Module  # a FraudNet, or a FraudEnsemble when config.members > 1
    normaliser: Normaliser
    config: TrainConfig
    best_epoch: int
    epochs_run: int
    train_s: float
    n_train: int
    n_val: int
    val_metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)

    def network_spec(self) -> dict:
        """The artefact's ``network`` metadata (see models.network.build_network)."""
        return network_spec(
            self.config,
            len(self.normaliser.static_mean),
            len(self.normaliser.sequence_mean),
        )


def network_spec(config: TrainConfig, n_static: int, n_sequence: int) -> dict:
    """The ``network`` metadata of a network trained with ``config``."""
    return {
        "n_static": n_static,
        "n_sequence": n_sequence,
        "encoder": config.encoder,
        "hidden": config.hidden,
        "static_hidden": config.static_hidden,
        "dropout": config.dropout,
        "max_events": config.max_events,
        "members": config.members,
    }


def split_by_day(
    days: np.ndarray, val_days: int, gap_days: int
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks ``(train, val)``: val the last days, a gap before it.

    Shrinks the gap to 0 and the slice to a quarter of the window (at least one
    day) when fewer than ``val_days`` training days would remain.
    """
    first, last = int(days.min()), int(days.max())
    span = last - first + 1
    if span - val_days - gap_days < val_days:
        gap_days = 0
        val_days = max(1, span // 4)
    if span < 2:
        return np.ones(len(days), dtype=bool), np.zeros(len(days), dtype=bool)
    val_start = last + 1 - val_days
    return days < val_start - gap_days, days >= val_start


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def predict_logits(
    net: FraudNet,
    static: np.ndarray,
    sequence: np.ndarray,
    lengths: np.ndarray,
    batch_size: int = 4096,
) -> np.ndarray:
    """Logits of normalised inputs, in input order, without gradients."""
    net.eval()
    out = np.empty(len(static), dtype=np.float32)
    with torch.inference_mode():
        for lo in range(0, len(static), batch_size):
            hi = lo + batch_size
            out[lo:hi] = net(
                torch.from_numpy(static[lo:hi]),
                torch.from_numpy(sequence[lo:hi]),
                torch.from_numpy(np.asarray(lengths[lo:hi], dtype=np.int64)),
            ).numpy()
    return out


def train_model(
    static: np.ndarray,
    sequence: np.ndarray,
    lengths: np.ndarray,
    labels: np.ndarray,
    days: np.ndarray,
    config: TrainConfig | None = None,
    *,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    inplace: bool = False,
) -> TrainResult:
    """Train a :class:`FraudNet` (or a :class:`FraudEnsemble` of ``members``);
    see the module docstring for the contract.

    With ``inplace`` the float32 ``static`` and ``sequence`` arrays are overwritten
    by their normalised values (saves a copy of the largest arrays).
    """
    config = config or TrainConfig()
    torch.set_num_threads(max(1, min(config.num_threads, 2)))
    started = time.perf_counter()

    labels = np.asarray(labels, dtype=np.float32)
    lengths = np.asarray(lengths, dtype=np.int64)
    train_mask, val_mask = split_by_day(
        np.asarray(days), config.val_days, config.gap_days
    )
    normaliser = Normaliser.fit(
        static[train_mask], sequence[train_mask], lengths[train_mask]
    )
    static_n, seq_n = normaliser.apply(static, sequence, lengths, inplace=inplace)
    data = _Prepared(
        static_n, seq_n, lengths, labels,
        np.flatnonzero(train_mask), np.flatnonzero(val_mask),
    )
    fits = [
        _fit_member(data, config, member, on_epoch, started)
        for member in range(config.members)
    ]
    net: nn.Module = (
        fits[0].net if len(fits) == 1
        else FraudEnsemble([fit.net for fit in fits]).eval()
    )
    return TrainResult(
        net=net,
        normaliser=normaliser,
        config=config,
        best_epoch=max(fit.best_epoch for fit in fits),
        epochs_run=sum(fit.epochs_run for fit in fits),
        train_s=time.perf_counter() - started,
        n_train=len(data.train_idx),
        n_val=len(data.val_idx),
        val_metrics=_validation_metrics(net, data),
        history=[record for fit in fits for record in fit.history],
    )


@dataclass
class _Prepared:
    """Normalised arrays and the row split, shared by every member."""

    static_n: np.ndarray
    seq_n: np.ndarray
    lengths: np.ndarray
    labels: np.ndarray
    train_idx: np.ndarray
    val_idx: np.ndarray


@dataclass
class _MemberFit:
    net: FraudNet
    best_epoch: int
    epochs_run: int
    history: list[dict[str, float]]


def _validation_metrics(net: nn.Module, data: _Prepared) -> dict[str, float]:
    """AP and AUC ROC on the validation rows; empty without frauds there."""
    val = data.val_idx
    if not len(val) or not data.labels[val].any():
        return {}
    logits = predict_logits(net, data.static_n[val], data.seq_n[val],
                            data.lengths[val])
    return {
        "val_ap": average_precision(data.labels[val], logits),
        "val_auc": auc_roc(data.labels[val], logits),
    }


def _fit_member(
    data: _Prepared,
    config: TrainConfig,
    member: int,
    on_epoch: Callable[[dict[str, float]], None] | None,
    started: float,
) -> _MemberFit:
    """One network, seeded ``config.seed + member``, early-stopped on val AP.

    Each member gets an equal share of ``max_train_s``.
    """
    seed = config.seed + member
    _seed_everything(seed)
    rng = np.random.default_rng(seed)
    budget_s = config.max_train_s / config.members
    member_started = time.perf_counter()
    spec = network_spec(config, data.static_n.shape[1], data.seq_n.shape[2])
    net = build_network({**spec, "members": 1})
    train_idx, labels = data.train_idx, data.labels
    n_pos = max(1.0, float(labels[train_idx].sum()))
    n_neg = max(1.0, float(len(train_idx) - n_pos) * config.negative_fraction)
    pos_weight = (n_neg / n_pos) ** config.pos_weight_power
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight))
    optimiser = torch.optim.AdamW(
        net.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )

    best_ap, best_epoch, best_state = -1.0, 0, None
    history: list[dict[str, float]] = []
    epoch = 0
    for epoch in range(1, config.max_epochs + 1):
        batch_idx = _epoch_rows(train_idx, labels, config.negative_fraction, rng)
        loss = _run_epoch(
            net,
            optimiser,
            loss_fn,
            data.static_n,
            data.seq_n,
            data.lengths,
            labels,
            batch_idx,
            config.batch_size,
        )
        record = {"member": float(member), "epoch": float(epoch), "loss": loss}
        metrics = _validation_metrics(net, data)
        record.update(metrics)
        # Without validation frauds, keep the last epoch.
        score = metrics.get("val_ap", float(epoch))
        record["elapsed_s"] = time.perf_counter() - started
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        logger.info("member %d epoch %d: %s", member, epoch, record)
        if score > best_ap:
            best_ap, best_epoch = score, epoch
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        if epoch - best_epoch >= config.patience:
            break
        spent_s = time.perf_counter() - member_started
        if spent_s > budget_s:
            logger.warning(
                "member %d stopped after %d epochs: %.0f s exceeds its %.0f s "
                "share of the training budget",
                member,
                epoch,
                spent_s,
                budget_s,
            )
            break

    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    return _MemberFit(
        net=net, best_epoch=best_epoch, epochs_run=epoch, history=history
    )


def _epoch_rows(
    train_idx: np.ndarray,
    labels: np.ndarray,
    negative_fraction: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """This epoch's rows, shuffled: every fraud, a random share of the genuine."""
    pos = train_idx[labels[train_idx] == 1]
    neg = train_idx[labels[train_idx] != 1]
    if negative_fraction < 1.0:
        keep = max(1, int(round(len(neg) * negative_fraction)))
        neg = rng.choice(neg, size=min(keep, len(neg)), replace=False)
    rows = np.concatenate([pos, neg])
    rng.shuffle(rows)
    return rows


def _run_epoch(
    net: FraudNet,
    optimiser: torch.optim.Optimizer,
    loss_fn: nn.Module,
    static_n: np.ndarray,
    seq_n: np.ndarray,
    lengths: np.ndarray,
    labels: np.ndarray,
    rows: np.ndarray,
    batch_size: int,
) -> float:
    net.train()
    total, count = 0.0, 0
    for lo in range(0, len(rows), batch_size):
        idx = np.sort(rows[lo : lo + batch_size])
        optimiser.zero_grad(set_to_none=True)
        logits = net(
            torch.from_numpy(static_n[idx]),
            torch.from_numpy(seq_n[idx]),
            torch.from_numpy(lengths[idx]),
        )
        loss = loss_fn(logits, torch.from_numpy(labels[idx]))
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        optimiser.step()
        total += float(loss.detach()) * len(idx)
        count += len(idx)
    return total / max(count, 1)
