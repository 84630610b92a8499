"""The demo's choice of model: train when there is none or it can't serve."""

from __future__ import annotations

import torch

from feature_repo import transforms
from models.artifact import save_artifact
from orchestration.demo import _unusable_model


def _artifact(models_dir, **contract):
    return save_artifact(models_dir, {"w": torch.zeros(1)}, dict(contract))


def test_no_model_is_unusable(tmp_path):
    assert "no model under" in _unusable_model(tmp_path / "models")


def test_a_model_built_for_other_features_is_unusable(tmp_path):
    old = transforms.STATIC_FEATURES[:-1]
    _artifact(tmp_path, static_features=old, feature_schema_version="0" * 16)
    reason = _unusable_model(tmp_path)
    assert "can't be used" in reason
    assert transforms.STATIC_FEATURES[-1] in reason  # names the difference


def test_a_current_model_is_used(tmp_path):
    _artifact(tmp_path)
    assert _unusable_model(tmp_path) is None
