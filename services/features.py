"""CONTRACT STUB, to be replaced by the features work (issue 2).

``FeatureClient`` holds the online feature logic without Ray, so tests and jobs use
it directly; the ``Features`` deployment wraps it.

- ``await client.lookup(payments) -> list[ModelInput]``: Feast online features and
  the behaviour history *before* each payment, in input order. Reads only.
- ``await client.record(payments)``: append each payment to its customer's history
  and to the per-day aggregates; a payment id already recorded is skipped.
- ``await client.record_labels(labels)``: fold labels into the terminal aggregates.
- Day boundaries: on the first payment of a new UTC day the snapshot views for that
  day are computed from the Redis aggregates and pushed to the Feast online store
  in one batch, before that payment is scored.
"""

from __future__ import annotations

import numpy as np
from ray import serve

from feature_repo.transforms import (
    HISTORY_LENGTH,
    SEQUENCE_FEATURES,
    ModelInput,
)
from fraudmesh.schemas import Label, Payment


class FeatureClient:
    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url

    async def lookup(self, payments: list[Payment]) -> list[ModelInput]:
        return [
            ModelInput(
                static=np.array([p.amount, 1.0], dtype=np.float32),
                sequence=np.zeros(
                    (HISTORY_LENGTH, len(SEQUENCE_FEATURES)), dtype=np.float32
                ),
                length=0,
            )
            for p in payments
        ]

    async def record(self, payments: list[Payment]) -> None:
        return None

    async def record_labels(self, labels: list[Label]) -> None:
        return None


@serve.deployment
class Features:
    def __init__(self, redis_url: str) -> None:
        self._client = FeatureClient(redis_url)

    async def lookup(
        self, payments: list[Payment], carrier: dict[str, str] | None = None
    ) -> list[ModelInput]:
        return await self._client.lookup(payments)

    async def record(
        self, payments: list[Payment], carrier: dict[str, str] | None = None
    ) -> None:
        await self._client.record(payments)

    async def record_labels(
        self, labels: list[Label], carrier: dict[str, str] | None = None
    ) -> None:
        await self._client.record_labels(labels)
