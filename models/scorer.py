"""``Scorer``: what serving and the backtest call to score payments.

- ``Scorer.load(models_dir | version_dir)`` loads the newest artefact under a models
  directory (or the given version directory) and refuses, with an
  :class:`~fraudmesh.errors.ArtifactError` naming the directory and the differing
  features, one whose feature lists differ from ``feature_repo.transforms``.
- ``scorer.version``: the artefact version string.
- ``scorer.predict(static [B, F], sequence [B, N, E], lengths [B]) -> float32 [B]``:
  fraud probabilities in [0, 1], in input order. Raw (unnormalised) features.
- ``scorer.explain(static, sequence, lengths, top_k=3)``: per row, up to ``top_k``
  static features that pushed the score *up*, as ``[(feature_name, contribution)]``
  with contributions in logit units (gradient x normalised input, one backward pass
  per batch), largest first; an empty list when nothing pushed it up.
- ``find_latest(models_dir) -> Path | None``: the newest version directory.

Inference runs a TorchScript trace of the network, frozen (weights folded in),
made on the first ``predict`` for each history length and kept only when it
gives the eager network's scores on probe inputs (of several batch sizes and
history lengths); otherwise, or when tracing fails, the eager network is used.
An ensemble of pooled encoders is traced as :class:`~models.network.StackedEnsemble`
(each layer one batched product over the members), checked against the eager
ensemble the same way. At batch 1, where per-operation dispatch dominates, the
trace is several times faster. ``explain`` needs gradients and always runs
eagerly.

Thread safety: a Scorer holds no per-call state besides that cache, but torch
modules are not meant for concurrent calls from several threads; serve one call
at a time per replica.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fraudmesh.errors import ArtifactError
from models.artifact import find_latest, load_artifact
from models.network import StackedEnsemble, build_network
from models.training import Normaliser

__all__ = ["Scorer", "find_latest"]

log = logging.getLogger(__name__)
# A trace is kept when its probabilities differ from the eager network's by less.
TRACE_TOLERANCE = 1e-5


class Scorer:
    """A loaded fraud model; see the module docstring for the contract."""

    def __init__(
        self,
        net: torch.nn.Module,
        normaliser: Normaliser,
        static_features: list[str],
        *,
        version: str,
        path: Path | None = None,
        history_length: int | None = None,
    ) -> None:
        self.net = net.eval()
        self.normaliser = normaliser
        self.static_features = list(static_features)
        self.version = version
        self.path = path
        self.history_length = history_length
        self._traced: dict[int, Any] = {}  # history length -> module for inference

    @classmethod
    def load(cls, models_dir: str | Path, *, num_threads: int | None = None) -> Scorer:
        """Load an artefact; ``num_threads`` sets torch's (process-wide) threads."""
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        artifact = load_artifact(models_dir)
        meta = artifact.metadata
        try:
            net = build_network(meta["network"])
            net.load_state_dict(artifact.state_dict)
            normaliser = Normaliser.from_dict(meta["normalisation"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ArtifactError(
                f"metadata and weights do not fit together ({exc})",
                path=artifact.path,
            ) from exc
        return cls(
            net,
            normaliser,
            meta["static_features"],
            version=artifact.version,
            path=artifact.path,
            history_length=meta.get("history_length"),
        )

    def _inputs(
        self, static: np.ndarray, sequence: np.ndarray, lengths: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        static = np.asarray(static, dtype=np.float32)
        sequence = np.asarray(sequence, dtype=np.float32)
        lengths = np.asarray(lengths, dtype=np.int64)
        b = static.shape[0] if static.ndim == 2 else -1
        if (
            static.ndim != 2
            or static.shape[1] != len(self.static_features)
            or sequence.ndim != 3
            or sequence.shape[0] != b
            or sequence.shape[2] != len(self.normaliser.sequence_mean)
            or lengths.shape != (b,)
        ):
            raise ArtifactError(
                f"inputs of shapes static {static.shape}, sequence {sequence.shape}, "
                f"lengths {lengths.shape} do not fit model {self.version} "
                f"(expects [B, {len(self.static_features)}], "
                f"[B, N, {len(self.normaliser.sequence_mean)}], [B])",
                path=self.path,
            )
        lengths = np.clip(lengths, 0, sequence.shape[1])
        static_n, seq_n = self.normaliser.apply(static, sequence, lengths)
        return (
            torch.from_numpy(static_n),
            torch.from_numpy(seq_n),
            torch.from_numpy(lengths),
        )

    def predict(
        self, static: np.ndarray, sequence: np.ndarray, lengths: np.ndarray
    ) -> np.ndarray:
        """Fraud probabilities float32 [B], in input order."""
        if len(static) == 0:
            return np.zeros(0, dtype=np.float32)
        s, q, n = self._inputs(static, sequence, lengths)
        net = self._inference(q.shape[1])
        with torch.inference_mode():
            return torch.sigmoid(net(s, q, n)).numpy().astype(np.float32)

    def prepare(self, n_events: int) -> None:
        """Make ``predict``'s module for ``n_events``-event sequences now (a
        trace takes a fraction of a second), so the first payment does not wait."""
        self._inference(n_events)

    def _inference(self, n_events: int) -> Any:
        """The module ``predict`` runs for sequences of ``n_events`` events: a
        trace of the stacked ensemble, else of the network, else the network."""
        if n_events not in self._traced:
            n_static = len(self.static_features)
            stacked = StackedEnsemble.of(self.net)
            traced = None
            if stacked is not None:
                traced = _trace(stacked, self.net, n_static, n_events, self.normaliser)
            if traced is None:
                traced = _trace(self.net, self.net, n_static, n_events,
                                self.normaliser)
            self._traced[n_events] = traced or self.net
        return self._traced[n_events]

    def explain(
        self,
        static: np.ndarray,
        sequence: np.ndarray,
        lengths: np.ndarray,
        top_k: int = 3,
    ) -> list[list[tuple[str, float]]]:
        """Per row, the static features that raised the logit most (grad x input)."""
        if len(static) == 0:
            return []
        s, q, n = self._inputs(static, sequence, lengths)
        s = s.clone().requires_grad_(True)
        with torch.enable_grad():
            logits = self.net(s, q, n)
            (grad,) = torch.autograd.grad(logits.sum(), s)
        contrib = (grad * s.detach()).numpy()
        result: list[list[tuple[str, float]]] = []
        for row in contrib:
            order = np.argsort(-row, kind="stable")[:top_k]
            result.append(
                [(self.static_features[j], float(row[j])) for j in order if row[j] > 0]
            )
        return result


def _trace(module: torch.nn.Module, net: torch.nn.Module, n_static: int,
           n_events: int, normaliser: Normaliser) -> Any | None:
    """A frozen TorchScript trace of ``module`` (``net`` or a faster equivalent)
    for ``n_events``-event sequences, or None when tracing fails or the trace
    does not reproduce ``net`` on probes."""
    n_seq = len(normaliser.sequence_mean)
    gen = torch.Generator().manual_seed(0)

    def probe(batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lengths = torch.randint(0, n_events + 1, (batch,), generator=gen)
        lengths[0] = n_events  # one full and, below, one empty history
        if batch > 1:
            lengths[1] = 0
        return (torch.randn(batch, n_static, generator=gen),
                torch.randn(batch, n_events, n_seq, generator=gen), lengths)

    try:
        with torch.inference_mode(), warnings.catch_warnings():
            # Shape checks in forward() become constants of the trace, which is
            # why it is made per history length and checked below.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            # torch 2.13 marks torch.jit deprecated; should a release drop it,
            # the exception below makes this the eager network, not a failure.
            warnings.filterwarnings("ignore", category=DeprecationWarning,
                                    module=r"torch\.jit")
            traced = torch.jit.freeze(
                torch.jit.trace(module, probe(2), check_trace=False))
            for batch in (1, 3, 17):
                inputs = probe(batch)
                gap = (torch.sigmoid(traced(*inputs))
                       - torch.sigmoid(net(*inputs))).abs().max().item()
                if not gap < TRACE_TOLERANCE:
                    log.info("traced network differs by %.3g at batch %d; "
                             "serving the eager network", gap, batch)
                    return None
    except Exception as exc:  # tracing is an optimisation; never fatal
        log.info("tracing the network failed (%s: %s); serving the eager network",
                 type(exc).__name__, exc)
        return None
    return traced
