"""Per-payment CPU inference latency of the Scorer at batch sizes 1, 8, 64, 256.

Prints figures; asserts nothing (the target, at most 1 ms per payment when batched,
is read off the output). Uses the newest artefact under ``--models`` when there is
one, else trains nothing and builds an untrained network of the production shape
(inference cost does not depend on the weights).

    .venv/bin/python benchmarks/bench_model.py [--models DIR] [--threads 1]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from feature_repo import transforms
from models.network import build_network
from models.scorer import Scorer, find_latest
from models.training import Normaliser, TrainConfig, network_spec

BATCH_SIZES = (1, 8, 64, 256)


def untrained_scorer() -> Scorer:
    f, e = len(transforms.STATIC_FEATURES), len(transforms.SEQUENCE_FEATURES)
    net = build_network(network_spec(TrainConfig(), f, e))
    norm = Normaliser(
        [False] * f, [0.0] * f, [1.0] * f, [False] * e, [0.0] * e, [1.0] * e
    )
    return Scorer(net, norm, transforms.STATIC_FEATURES, version="untrained")


def inputs(batch: int, rng: np.random.Generator):
    n, f = transforms.HISTORY_LENGTH, len(transforms.STATIC_FEATURES)
    e = len(transforms.SEQUENCE_FEATURES)
    lengths = rng.integers(0, n + 1, size=batch)
    sequence = rng.normal(size=(batch, n, e)).astype(np.float32)
    sequence[np.arange(n)[None, :] < (n - lengths)[:, None]] = 0.0
    static = rng.gamma(2.0, 10.0, size=(batch, f)).astype(np.float32)
    return static, sequence, lengths


def measure(scorer: Scorer, batch: int, budget_s: float = 2.0) -> tuple[float, float]:
    """(median, p90) milliseconds per payment over repeated calls."""
    rng = np.random.default_rng(batch)
    args = inputs(batch, rng)
    for _ in range(5):
        scorer.predict(*args)
    per_call: list[float] = []
    end = time.perf_counter() + budget_s
    while time.perf_counter() < end or len(per_call) < 20:
        t = time.perf_counter()
        scorer.predict(*args)
        per_call.append((time.perf_counter() - t) * 1000.0 / batch)
    return float(np.median(per_call)), float(np.percentile(per_call, 90))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=Path(".fraudmesh/models"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    latest = find_latest(args.models)
    scorer = Scorer.load(latest) if latest else untrained_scorer()
    print(
        f"model {scorer.version}, torch threads {args.threads}, "
        f"history {transforms.HISTORY_LENGTH} x {len(transforms.SEQUENCE_FEATURES)}"
        f", {len(transforms.STATIC_FEATURES)} static features"
    )
    print(f"{'batch':>6} {'ms/payment p50':>15} {'p90':>8} {'ms/call p50':>12}")
    for batch in BATCH_SIZES:
        p50, p90 = measure(scorer, batch)
        print(f"{batch:>6} {p50:>15.4f} {p90:>8.4f} {p50 * batch:>12.3f}")
    s, q, n = inputs(64, np.random.default_rng(0))
    t = time.perf_counter()
    scorer.explain(s, q, n)
    print(f"explain, batch 64: {(time.perf_counter() - t) * 1000 / 64:.4f} ms/payment")


if __name__ == "__main__":
    main()
