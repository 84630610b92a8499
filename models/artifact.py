"""Versioned model artefacts on disk.

Layout: ``<models_dir>/<version>/`` holding ``model.pt`` (the network's state dict)
and ``metadata.json``: feature lists, ``FEATURE_SCHEMA_VERSION``, normalisation,
network and training configuration, training window, data fingerprint, metrics and
library versions. A version name sorts by creation time
(``vYYYYMMDDTHHMMSSZ-<hash>``), and a version directory appears only once complete
(written under a temporary name, then renamed), so a reader never sees half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import platform
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fraudmesh.errors import ArtifactError

FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
WEIGHTS_FILE = "model.pt"


def feature_contract() -> dict[str, Any]:
    """The model-input contract of ``feature_repo.transforms`` as it is now."""
    from feature_repo import transforms

    static = list(transforms.STATIC_FEATURES)
    sequence = list(transforms.SEQUENCE_FEATURES)
    schema = getattr(transforms, "FEATURE_SCHEMA_VERSION", None)
    if schema is None:
        text = json.dumps([static, sequence, transforms.HISTORY_LENGTH])
        schema = hashlib.sha256(text.encode()).hexdigest()[:16]
    return {
        "static_features": static,
        "sequence_features": sequence,
        "history_length": int(transforms.HISTORY_LENGTH),
        "feature_schema_version": str(schema),
    }


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape an artefact."""
    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
    }
    try:
        from importlib.metadata import PackageNotFoundError, version

        versions["feast"] = version("feast")
    except PackageNotFoundError:  # pragma: no cover - feast is a dependency
        versions["feast"] = "absent"
    return versions


def file_fingerprint(path: str | Path) -> str:
    """SHA-256 of a file's bytes, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Artifact:
    """A loaded artefact: where it is, its metadata and its weights."""

    path: Path
    metadata: dict[str, Any]
    state_dict: dict[str, torch.Tensor]

    @property
    def version(self) -> str:
        return str(self.metadata["version"])


def save_artifact(
    models_dir: str | Path,
    state_dict: dict[str, torch.Tensor],
    metadata: dict[str, Any],
    *,
    now: datetime | None = None,
) -> Path:
    """Write a new version under ``models_dir``; returns its directory.

    ``metadata`` is completed with the version, creation time, format version,
    feature contract (unless given) and library versions.
    """
    now = now or datetime.now(UTC)
    models_dir = Path(models_dir)
    meta = dict(metadata)
    for key, value in feature_contract().items():
        meta.setdefault(key, value)
    blob = json.dumps(meta, sort_keys=True, default=str).encode()
    version = f"v{now:%Y%m%dT%H%M%S}Z-{hashlib.sha256(blob).hexdigest()[:8]}"
    meta.update(
        format_version=FORMAT_VERSION,
        version=version,
        created_at=now.isoformat(),
        libraries=library_versions(),
    )
    final = models_dir / version
    tmp = models_dir / f".{version}.tmp-{os.getpid()}"
    try:
        tmp.mkdir(parents=True, exist_ok=False)
        torch.save(state_dict, tmp / WEIGHTS_FILE)
        (tmp / METADATA_FILE).write_text(
            json.dumps(meta, indent=2, sort_keys=True, default=str)
        )
        tmp.rename(final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ArtifactError(
            f"could not write the artefact ({exc})", path=final
        ) from exc
    return final


def find_latest(models_dir: str | Path) -> Path | None:
    """The newest complete version directory under ``models_dir``, or None."""
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        return None
    versions = sorted(
        p
        for p in models_dir.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / METADATA_FILE).exists()
    )
    return versions[-1] if versions else None


def resolve(path: str | Path) -> Path:
    """A version directory from either itself or a models directory."""
    path = Path(path)
    if (path / METADATA_FILE).exists():
        return path
    latest = find_latest(path)
    if latest is None:
        raise ArtifactError(
            "no model artefact here; train one with `fraudmesh train --until DATE`",
            path=path,
        )
    return latest


def contract_mismatch(metadata: dict[str, Any]) -> list[str]:
    """Differences between an artefact's feature lists and the feature repo's."""
    current = feature_contract()
    problems: list[str] = []
    for key in ("static_features", "sequence_features"):
        theirs, ours = list(metadata.get(key, [])), current[key]
        if theirs == ours:
            continue
        missing = [f for f in ours if f not in theirs]
        extra = [f for f in theirs if f not in ours]
        detail = []
        if missing:
            detail.append(f"not in the artefact: {', '.join(missing)}")
        if extra:
            detail.append(f"no longer in feature_repo: {', '.join(extra)}")
        if not detail:
            detail.append("same names in another order")
        problems.append(f"{key} differ ({'; '.join(detail)})")
    if metadata.get("history_length") != current["history_length"]:
        problems.append(
            f"history_length {metadata.get('history_length')} != "
            f"{current['history_length']}"
        )
    if metadata.get("feature_schema_version") != current["feature_schema_version"]:
        problems.append(
            f"FEATURE_SCHEMA_VERSION {metadata.get('feature_schema_version')!r} != "
            f"{current['feature_schema_version']!r}"
        )
    return problems


def load_artifact(path: str | Path, *, check_features: bool = True) -> Artifact:
    """Load a version (or the newest under a models directory).

    Raises :class:`ArtifactError` naming the directory when it is missing, corrupt,
    of another format, or (``check_features``) built for other feature lists.
    """
    version_dir = resolve(path)
    try:
        metadata = json.loads((version_dir / METADATA_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(
            f"unreadable {METADATA_FILE} ({exc})", path=version_dir
        ) from exc
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"artefact format {metadata.get('format_version')!r}, this code reads "
            f"{FORMAT_VERSION}; retrain with `fraudmesh train`",
            path=version_dir,
        )
    if check_features:
        problems = contract_mismatch(metadata)
        if problems:
            raise ArtifactError(
                "built for other features than feature_repo.transforms: "
                + "; ".join(problems)
                + ". Retrain with `fraudmesh train`",
                path=version_dir,
            )
    try:
        state_dict = torch.load(
            version_dir / WEIGHTS_FILE, map_location="cpu", weights_only=True
        )
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise ArtifactError(
            f"unreadable {WEIGHTS_FILE} ({exc})", path=version_dir
        ) from exc
    return Artifact(path=version_dir, metadata=metadata, state_dict=state_dict)
