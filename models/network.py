"""The fraud network: a recurrent encoder of the customer's history plus the
payment's static features, giving one fraud logit per payment.

Inputs follow ``feature_repo.transforms``: ``static`` [B, F], ``sequence`` [B, N, E]
with the most recent event last and zero rows *in front* when the history is shorter,
``lengths`` [B] the number of real rows (0 allowed). All inputs are already
normalised (see :mod:`models.training`).

Two encoders are available, chosen by measurement in the backtest (README):
``"gru"`` (a one-layer GRU over the real rows only, via packing) and ``"attention"``
(a per-event MLP pooled by masked mean and max; cheaper, no order).

``FraudEnsemble`` averages the logits of several such networks trained apart, and
``build_network(spec)`` makes either from an artefact's ``network`` metadata.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

ENCODERS = ("gru", "attention", "none")


def left_to_right_padded(sequence: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Move each row's real events to the front (front-padded -> back-padded).

    Row ``b`` has its ``lengths[b]`` real events at positions ``N - L .. N - 1``;
    the result has them at ``0 .. L - 1`` in the same order (padding after them).
    """
    n = sequence.shape[1]
    shift = (n - lengths).unsqueeze(1)
    index = (torch.arange(n, device=sequence.device).unsqueeze(0) + shift) % n
    index = index.unsqueeze(2).expand(-1, -1, sequence.shape[2])
    return torch.gather(sequence, 1, index)


class FraudNet(nn.Module):
    """Sequence encoder + static MLP -> logit. Small enough for CPU serving."""

    def __init__(
        self,
        n_static: int,
        n_sequence: int,
        *,
        encoder: str = "gru",
        hidden: int = 32,
        static_hidden: int = 128,
        dropout: float = 0.1,
        max_events: int | None = None,
    ) -> None:
        super().__init__()
        self.max_events = max_events
        if encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got {encoder!r}")
        self.encoder = encoder
        self.hidden = hidden
        self.event_in = nn.Sequential(nn.Linear(n_sequence, hidden), nn.ReLU())
        if encoder == "gru":
            self.rnn = nn.GRU(hidden, hidden, batch_first=True)
            seq_out = hidden
        elif encoder == "none":
            seq_out = 0
        else:
            self.event_mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU())
            seq_out = 2 * hidden
        self.static_mlp = nn.Sequential(
            nn.Linear(n_static, static_hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(static_hidden, static_hidden),
            nn.ReLU(),
        )
        self.head = nn.Sequential(
            nn.Linear(seq_out + static_hidden + 1, 64),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(64, 1),
        )

    def _encode_sequence(
        self, sequence: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        has = (lengths > 0).unsqueeze(1).to(sequence.dtype)
        if self.encoder == "none":
            return sequence.new_zeros((sequence.shape[0], 0))
        if sequence.shape[1] == 0:
            width = self.hidden if self.encoder == "gru" else 2 * self.hidden
            return sequence.new_zeros((sequence.shape[0], width))
        events = self.event_in(sequence)
        if self.encoder == "gru":
            events = left_to_right_padded(events, lengths)
            packed = pack_padded_sequence(
                events,
                lengths.clamp(min=1).cpu(),
                batch_first=True,
                enforce_sorted=False,
            )
            _, last = self.rnn(packed)
            return last[0] * has
        n = sequence.shape[1]
        positions = torch.arange(n, device=sequence.device).unsqueeze(0)
        real = (positions >= (n - lengths).unsqueeze(1)).unsqueeze(2)
        events = self.event_mlp(events)
        realf = real.to(events.dtype)
        mean = (events * realf).sum(1) / realf.sum(1).clamp(min=1.0)
        peak = events.masked_fill(~real, 0.0).amax(1)
        return torch.cat([mean, peak], dim=1) * has

    def forward(
        self, static: torch.Tensor, sequence: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        """Fraud logits [B] of ``static`` [B, F], ``sequence`` [B, N, E], lengths."""
        lengths = lengths.to(torch.int64)
        if self.max_events is not None and sequence.shape[1] > self.max_events:
            sequence = sequence[:, -self.max_events :]
            lengths = lengths.clamp(max=self.max_events)
        seq = self._encode_sequence(sequence, lengths)
        has = (lengths > 0).unsqueeze(1).to(static.dtype)
        joined = torch.cat([seq, self.static_mlp(static), has], dim=1)
        return self.head(joined).squeeze(1)


class FraudEnsemble(nn.Module):
    """Networks of one architecture trained apart; the logit is their mean."""

    def __init__(self, members: list[FraudNet]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(
        self, static: torch.Tensor, sequence: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        """Mean fraud logit [B] of the members (same inputs as FraudNet)."""
        logits = [member(static, sequence, lengths) for member in self.members]
        return torch.stack(logits).mean(dim=0)


def build_network(spec: dict) -> nn.Module:
    """An untrained network of an artefact's ``network`` metadata.

    ``spec`` holds ``n_static``, ``n_sequence``, ``encoder``, ``hidden``,
    ``static_hidden``, ``dropout``, ``max_events`` and optionally ``members``
    (more than 1 gives a FraudEnsemble). Raises KeyError, TypeError or ValueError
    on a bad spec.
    """

    def one() -> FraudNet:
        return FraudNet(
            int(spec["n_static"]),
            int(spec["n_sequence"]),
            encoder=spec["encoder"],
            hidden=int(spec["hidden"]),
            static_hidden=int(spec["static_hidden"]),
            dropout=float(spec["dropout"]),
            max_events=spec.get("max_events"),
        )

    members = int(spec.get("members", 1))
    if members < 1:
        raise ValueError(f"members must be at least 1, got {members}")
    return one() if members == 1 else FraudEnsemble([one() for _ in range(members)])
