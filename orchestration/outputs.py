"""Where a command will write, checked before it works for minutes.

A command that trains, backtests or replays writes its results at the end; an
output it cannot write must fail at the start, naming the option, not after
the work (which would be lost).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from fraudmesh.errors import ConfigError


def output_dir(path: Path | str, option: str) -> Path:
    """``path`` as a directory that exists (made now) and can be written to."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(option, f"{path} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(option, f"cannot make {path} ({exc.strerror})") from None
    _try_writing(path, option)
    return path


def output_file(path: Path | str, option: str, suffix: str) -> Path:
    """``path`` as a ``suffix`` file that can be written, in a directory that exists."""
    path = Path(path)
    if path.suffix != suffix:
        raise ConfigError(option, f"{path} must be a {suffix} file")
    if path.exists() and not path.is_file():
        raise ConfigError(option, f"{path} exists and is not a file")
    if not path.parent.is_dir():
        raise ConfigError(option, f"{path.parent} is not an existing directory")
    _try_writing(path.parent, option)
    return path


def _try_writing(directory: Path, option: str) -> None:
    """Write and remove a scratch file in ``directory``: permission bits alone
    say nothing for root, or for a directory like /proc."""
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise ConfigError(
            option, f"cannot write in {directory} ({exc.strerror})"
        ) from None
