# syntax=docker/dockerfile:1
# The fraudmesh image that k8s/ runs (RayService head and workers, job clusters,
# job submitters): Python 3.11, Ray 2.60 (from the project's pins), the CPU build of
# torch 2.13.0, the project installed as a package (orchestration.graph:app is the
# serve config's import path), a non-root user with uid 1000.
#
#   docker build -t ghcr.io/fraudmesh/fraudmesh:0.1.0 .
#
# Keep the tag equal to the project version and to the tag in k8s/ (a test checks).
# The base is pinned by its exact tag; pin its digest too when you build
# (`docker buildx imagetools inspect python:3.11.14-slim-bookworm` shows it):
#   FROM python:3.11.14-slim-bookworm@sha256:<digest>

# ---- build: compilers and pip caches live only here -------------------------------
FROM python:3.11.14-slim-bookworm AS build

RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv

# torch from the PyTorch CPU index: PyPI's torch 2.13.0 wheel for Linux is the CUDA
# build (several GB of GPU libraries this CPU-only service never uses). Installed
# first, so that `pip install .` finds torch==2.13.0 satisfied (2.13.0+cpu matches).
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY fraudmesh/ fraudmesh/
COPY feature_repo/ feature_repo/
COPY models/ models/
COPY services/ services/
COPY orchestration/ orchestration/
# Not editable: the image holds the package, not a checkout. The postgres extra is
# the driver of Feast's SQL registry (the production registry).
RUN pip install ".[postgres]" \
    && python -c "import torch, ray, orchestration.cli; assert not torch.cuda.is_available()"

# ---- runtime: no compiler, no sources, not root -----------------------------------
FROM python:3.11.14-slim-bookworm AS runtime

# wget: KubeRay's default readiness probes of Ray pods call it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends wget \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 1000 ray \
    && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/ray \
        --shell /bin/bash ray \
    && mkdir -p /var/lib/fraudmesh \
    && chown 1000:1000 /var/lib/fraudmesh

COPY --from=build /opt/venv /opt/venv

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FRAUDMESH_STATE_DIR=/var/lib/fraudmesh

WORKDIR /home/ray
USER 1000:1000

# KubeRay replaces the command (ray start ...); run alone, the image shows the CLI.
CMD ["fraudmesh", "--help"]
