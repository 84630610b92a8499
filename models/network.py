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
``StackedEnsemble.of(ensemble)`` is the same ensemble for inference only, its
members' layers stacked into batched matrix products.
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


def last_events(
    sequence: torch.Tensor, lengths: torch.Tensor, max_events: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``max_events`` most recent rows of ``sequence`` and their lengths
    (int64); all of them when ``max_events`` is None or not smaller."""
    lengths = lengths.to(torch.int64)
    if max_events is not None and sequence.shape[1] > max_events:
        sequence = sequence[:, -max_events:]
        lengths = lengths.clamp(max=max_events)
    return sequence, lengths


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
        sequence, lengths = last_events(sequence, lengths, self.max_events)
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


class StackedEnsemble(nn.Module):
    """A ``FraudEnsemble`` of pooled ("attention") or no sequence encoders, for
    inference: each layer of the members is one batched matrix product over a
    leading member axis, so a forward pass runs each step once rather than once
    per member. At batch 1 a forward is mostly per-operation overhead, which
    this cuts by the member count. The weights are copies (no gradients, no
    training); logits equal the ensemble's up to float rounding.
    """

    def __init__(self, ensemble: FraudEnsemble) -> None:
        super().__init__()
        members = list(ensemble.members)
        first = members[0]
        self.encoder = first.encoder
        self.max_events = first.max_events
        self.hidden = first.hidden
        self.n_members = len(members)

        def stack(name: str, layer) -> None:
            # [M, in, out] weights and [M, 1, out] biases, for torch.baddbmm.
            weight = torch.stack([layer(m).weight.detach().T for m in members])
            bias = torch.stack([layer(m).bias.detach() for m in members])
            self.register_buffer(f"{name}_w", weight.contiguous())
            self.register_buffer(f"{name}_b", bias.unsqueeze(1).contiguous())

        if self.encoder == "attention":
            stack("event_in", lambda m: m.event_in[0])
            stack("event_mlp", lambda m: m.event_mlp[0])
        stack("static_1", lambda m: m.static_mlp[0])
        stack("static_2", lambda m: m.static_mlp[3])
        stack("head_1", lambda m: m.head[0])
        stack("head_2", lambda m: m.head[3])

    @classmethod
    def of(cls, net: nn.Module) -> StackedEnsemble | None:
        """``net`` stacked, or None when it is not an ensemble of one shape
        this class covers (a GRU encoder, a single network)."""
        if not isinstance(net, FraudEnsemble):
            return None
        members = list(net.members)
        shapes = {(m.encoder, m.max_events, m.hidden,
                   tuple(p.shape for p in m.parameters())) for m in members}
        if len(shapes) != 1 or members[0].encoder not in ("attention", "none"):
            return None
        return cls(net).eval()

    def _layer(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(getattr(self, f"{name}_b"), x, getattr(self, f"{name}_w"))

    def forward(
        self, static: torch.Tensor, sequence: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        """Mean fraud logit [B], as ``FraudEnsemble.forward``."""
        sequence, lengths = last_events(sequence, lengths, self.max_events)
        m, (b, n, e) = self.n_members, sequence.shape
        has = (lengths > 0).unsqueeze(1).to(static.dtype)  # [B, 1]
        if self.encoder == "none":
            seq = static.new_zeros((m, b, 0))
        elif n == 0:
            seq = static.new_zeros((m, b, 2 * self.hidden))
        else:
            x = sequence.reshape(1, b * n, e).expand(m, -1, -1)
            events = torch.relu(self._layer("event_in", x))
            events = torch.relu(self._layer("event_mlp", events))
            events = events.reshape(m, b, n, -1)
            positions = torch.arange(n, device=sequence.device).unsqueeze(0)
            real = (positions >= (n - lengths).unsqueeze(1)).unsqueeze(2)  # [B, N, 1]
            realf = real.to(events.dtype)
            mean = (events * realf).sum(2) / realf.sum(1).clamp(min=1.0)
            peak = events.masked_fill(~real, 0.0).amax(2)
            seq = torch.cat([mean, peak], dim=2) * has
        s = static.unsqueeze(0).expand(m, -1, -1)
        s = torch.relu(self._layer("static_1", s))
        s = torch.relu(self._layer("static_2", s))
        joined = torch.cat([seq, s, has.unsqueeze(0).expand(m, -1, -1)], dim=2)
        logits = self._layer("head_2", torch.relu(self._layer("head_1", joined)))
        return logits.squeeze(2).mean(dim=0)


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
