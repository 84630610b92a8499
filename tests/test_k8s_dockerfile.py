"""Static checks of the Dockerfile the k8s/ manifests run.

No Docker engine runs on the build machines, so the image is never built here: these
tests read the Dockerfile and check what a build would rely on (multi-stage, pinned
base, non-root user, no build tools in the final stage, torch's CPU build at the
project's pin, the project installed as a package).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
BUILD_TOOLS = re.compile(r"\b(build-essential|gcc|g\+\+|make|clang|cmake|git)\b")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def lines(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse(path: Path = DOCKERFILE) -> list[Stage]:
    """Stages of a Dockerfile: instructions with continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    stages: list[Stage] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", args.strip(), re.I)
            assert match, f"unreadable FROM line: {line}"
            stages.append(Stage(base=match[1], name=match[2]))
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append((keyword, args.strip()))
    return stages


def test_multi_stage_with_the_final_stage_copying_from_the_build() -> None:
    stages = parse()
    assert len(stages) >= 2
    build, final = stages[0], stages[-1]
    assert build.name and final.name
    assert any(f"--from={build.name}" in c for c in final.lines("COPY"))


def test_every_base_image_is_pinned_python_3_11_slim() -> None:
    for stage in parse():
        assert "$" not in stage.base, "FROM must not depend on a build argument"
        name, _, digest = stage.base.partition("@")
        _, _, tag = name.partition(":")
        assert tag != "latest"
        assert re.fullmatch(r"3\.11\.\d+-slim(-\w+)?", tag), (
            f"{stage.base}: pin python:3.11.<patch>-slim[-<debian>]"
        )
        assert not digest or re.fullmatch(r"sha256:[0-9a-f]{64}", digest)


def test_final_stage_runs_as_a_non_root_user() -> None:
    final = parse()[-1]
    users = final.lines("USER")
    assert users, "the final stage sets no USER: it would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    # The manifests' pod securityContext runs as this uid.
    manifest = (ROOT / "k8s" / "base" / "rayservice.yaml").read_text()
    assert f"runAsUser: {user}" in manifest


def test_no_build_tools_in_the_final_stage() -> None:
    final = parse()[-1]
    for command in final.lines("RUN"):
        if "apt-get install" in command or "apk add" in command:
            assert not BUILD_TOOLS.search(command), command
    # The build stage is where they belong (and stay).
    assert any(BUILD_TOOLS.search(c) for c in parse()[0].lines("RUN"))


def test_torch_is_the_cpu_build_at_the_project_pin() -> None:
    with (ROOT / "pyproject.toml").open("rb") as handle:
        deps = tomllib.load(handle)["project"]["dependencies"]
    (pin,) = [d for d in deps if d.startswith("torch")]
    runs = " ".join(parse()[0].lines("RUN"))
    match = re.search(r"pip install --index-url (\S+) (torch==\S+)", runs)
    assert match, "torch must come from an explicit index"
    assert match[1] == "https://download.pytorch.org/whl/cpu"
    assert match[2] == pin.replace(" ", "")


def test_the_project_is_installed_as_a_package_with_its_sources() -> None:
    build = parse()[0]
    runs = build.lines("RUN")
    assert any(re.search(r"pip install \"?\.(\[[a-z,]+\])?\"?", r) for r in runs)
    assert not any("pip install -e" in r for r in runs)
    copied = " ".join(build.lines("COPY"))
    with (ROOT / "pyproject.toml").open("rb") as handle:
        packages = tomllib.load(handle)["tool"]["setuptools"]["packages"]["find"]
    for package in packages["include"]:
        assert f"{package.rstrip('*')}/" in copied, f"{package} not copied"
    assert "pyproject.toml" in copied and "README.md" in copied


def test_dockerignore_keeps_the_context_small_and_secret_free() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", ".fraudmesh", "data", "tests"):
        assert entry in ignored
