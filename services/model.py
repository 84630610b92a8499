"""Model: batched PyTorch inference over the payments' model inputs.

The ``Model`` deployment wraps :class:`models.scorer.Scorer`. Concurrent calls are
gathered by ``@serve.batch`` into one forward pass; a call may itself carry many
payments (the batch endpoint), so a forward pass covers every payment of every
gathered call. ``max_batch_size`` (calls per pass), ``batch_wait_timeout_s`` and
``explain_min_score`` (payments scoring lower are not explained) come from the
deployment's ``user_config``.

Result per payment, in input order: ``{"score", "model_version", "contributions":
[(feature, value, contribution)], "context"}``, handed on to ``Policy``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle

from feature_repo.transforms import HISTORY_LENGTH, STATIC_FEATURES, ModelInput
from fraudmesh.config import get_settings
from fraudmesh.replica import settle
from fraudmesh.schemas import Payment
from fraudmesh.tracing import Carriers, hops, setup_tracing, shutdown_tracing
from models.scorer import Scorer

_FEATURE_INDEX = {name: i for i, name in enumerate(STATIC_FEATURES)}


def stack_inputs(
    inputs: list[ModelInput],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ModelInputs to the scorer's arrays: static [B,F], sequence [B,N,E], lengths."""
    static = np.stack([mi.static for mi in inputs]).astype(np.float32, copy=False)
    sequence = np.stack([mi.sequence for mi in inputs]).astype(np.float32, copy=False)
    lengths = np.fromiter((mi.length for mi in inputs), np.int64, len(inputs))
    return static, sequence, lengths


def score_inputs(
    scorer: Scorer,
    inputs: list[ModelInput],
    top_k: int = 3,
    explain_min_score: float = 0.0,
) -> list[dict[str, Any]]:
    """Scores and explanations for ``inputs``, in input order (no Ray).

    Only payments scoring at least ``explain_min_score`` are explained (a
    gradient pass); the others carry no contributions, and the policy's reason
    for them is the risk band alone.
    """
    if not inputs:
        return []
    static, sequence, lengths = stack_inputs(inputs)
    scores = scorer.predict(static, sequence, lengths)
    rows = np.flatnonzero(scores >= explain_min_score)
    explained: dict[int, list] = {}
    if len(rows):
        chosen = scorer.explain(
            static[rows], sequence[rows], lengths[rows], top_k=top_k
        )
        explained = dict(zip(rows.tolist(), chosen, strict=True))
    out = []
    for i, mi in enumerate(inputs):
        contributions = []
        for feature, contribution in explained.get(i, ()):
            j = _FEATURE_INDEX.get(feature)
            value = float(static[i, j]) if j is not None else None
            contributions.append((feature, value, float(contribution)))
        out.append(
            {
                "score": float(scores[i]),
                "model_version": scorer.version,
                "contributions": contributions,
                "context": dict(getattr(mi, "context", None) or {}),
            }
        )
    return out


@serve.deployment
class Model:
    """The Model hop: score, then hand on to ``Policy``."""

    def __init__(self, policy: DeploymentHandle, models_dir: str | None = None) -> None:
        import torch

        # Two cores shared by every replica: one intra-op thread per replica.
        torch.set_num_threads(int(os.environ.get("FRAUDMESH_TORCH_THREADS", "1")))
        path = Path(models_dir) if models_dir else get_settings().models_path
        self._scorer = Scorer.load(path)
        self._scorer.prepare(HISTORY_LENGTH)
        self._policy = policy
        self._explain_min_score = 0.0
        setup_tracing("model", **{"fraudmesh.model_version": self._scorer.version})
        settle()  # last: what start-up made is frozen (fraudmesh/replica.py)

    def reconfigure(self, user_config: Mapping[str, Any]) -> None:
        config = dict(user_config or {})
        self._explain_min_score = float(config.get("explain_min_score", 0.0))
        self._score_batch.set_max_batch_size(int(config.get("max_batch_size", 64)))
        self._score_batch.set_batch_wait_timeout_s(
            float(config.get("batch_wait_timeout_s", 0.0))
        )

    @property
    def version(self) -> str:
        return self._scorer.version

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.0)
    async def _score_batch(
        self, calls: list[list[ModelInput]]
    ) -> list[list[dict[str, Any]]]:
        # One forward pass for every payment of every gathered call.
        flat = [mi for call in calls for mi in call]
        results = score_inputs(
            self._scorer, flat, explain_min_score=self._explain_min_score
        )
        out, start = [], 0
        for call in calls:
            out.append(results[start : start + len(call)])
            start += len(call)
        return out

    async def score(
        self,
        payments: list[Payment],
        inputs: list[ModelInput],
        carrier: Carriers = None,
    ) -> list[dict[str, Any]]:
        """Scores, then Policy's answers. ``carrier``: one, or one per payment
        (see ``fraudmesh.tracing.hops``)."""
        attributes = {
            "fraudmesh.batch_size": len(payments),
            "fraudmesh.model_version": self._scorer.version,
            "fraudmesh.feature_count": len(STATIC_FEATURES),
        }
        with hops("model.score", carrier, attributes) as h:
            scored = await self._score_batch(inputs)
            return await self._policy.decide.remote(payments, scored, carrier=h.carrier)

    async def model_version(self) -> str:
        return self._scorer.version


    def __del__(self) -> None:
        # Serve calls this on a graceful shutdown: export the last spans.
        shutdown_tracing()
