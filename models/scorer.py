"""CONTRACT STUB, to be replaced by the model work (issue 2).

``Scorer`` is what serving and the backtest call:

- ``Scorer.load(models_dir)`` loads the newest artefact (or a given version dir) and
  refuses one whose feature lists differ from ``feature_repo.transforms``.
- ``scorer.version``: the artefact version string.
- ``scorer.predict(static [B, F], sequence [B, N, E], lengths [B]) -> float32 [B]``,
  fraud probabilities in [0, 1], in input order.
- ``scorer.explain(static, sequence, lengths, top_k=3)``: per row, the static
  features that pushed the score up most, as ``[(feature_name, contribution)]``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class Scorer:
    version = "stub-0"

    @classmethod
    def load(cls, models_dir: str | Path) -> Scorer:
        return cls()

    def predict(
        self, static: np.ndarray, sequence: np.ndarray, lengths: np.ndarray
    ) -> np.ndarray:
        return np.clip(static[:, 0] / 500.0, 0.0, 1.0).astype(np.float32)

    def explain(
        self,
        static: np.ndarray,
        sequence: np.ndarray,
        lengths: np.ndarray,
        top_k: int = 3,
    ) -> list[list[tuple[str, float]]]:
        return [[("amount", float(row[0]))] for row in static]
