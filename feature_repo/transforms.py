"""CONTRACT STUB, to be replaced by the features work (issue 2).

The model input contract between features, model and serving:

- ``STATIC_FEATURES``: ordered names of the per-payment feature vector (Feast
  snapshot views, on-demand views, recency features from the history).
- ``SEQUENCE_FEATURES``: ordered names of the per-event vector of the history.
- ``HISTORY_LENGTH``: N, the number of past events in a sequence.
- ``ModelInput``: one payment's model input. ``sequence`` is [N, E] with the most
  recent event last and zero rows in front when the history is shorter; ``length``
  counts the real rows.
- ``FEATURE_DESCRIPTIONS``: a phrase per static feature, formatted with
  ``value=``, used to put reasons in words.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HISTORY_LENGTH = 32
STATIC_FEATURES: list[str] = ["amount", "amount_over_mean_30d"]
SEQUENCE_FEATURES: list[str] = ["log_amount", "log_hours_before"]
FEATURE_DESCRIPTIONS: dict[str, str] = {
    "amount": "amount is {value:.2f}",
    "amount_over_mean_30d": "amount is {value:.1f}x the customer's 30-day average",
}


@dataclass(frozen=True, slots=True)
class ModelInput:
    static: np.ndarray  # float32 [len(STATIC_FEATURES)]
    sequence: np.ndarray  # float32 [HISTORY_LENGTH, len(SEQUENCE_FEATURES)]
    length: int
