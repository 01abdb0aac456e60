"""Estimate pi by throwing random points at a unit square, N calls of M samples each.

    python examples/montecarlo_pi.py                          # 32 calls x 200,000 samples, locally
    python examples/montecarlo_pi.py --calls 1000 --samples 10000000 --backend aws_lambda

Each call draws its points from its own seeded generator (``seed + call index``), so
the estimate depends only on ``--calls``, ``--samples`` and ``--seed``, never on the
backend or on how calls are batched. A point (x, y) in [0, 1)^2 lands inside the
quarter circle when x^2 + y^2 < 1, which happens with probability pi/4.
"""
from __future__ import annotations

import argparse
import math
import random
import sys
import time
from typing import Optional, Sequence

from cloudpool import CloudPoolExecutor


def hits_in_quarter_circle(seed: int, samples: int) -> int:
    """Runs on a worker: how many of ``samples`` random points fall inside the circle."""
    rng = random.Random(seed)
    draw = rng.random
    hits = 0
    for _ in range(samples):
        x = draw()
        y = draw()
        if x * x + y * y < 1.0:
            hits += 1
    return hits


def estimate(hits: int, samples: int) -> float:
    return 4.0 * hits / samples


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=32, help="number of calls (N)")
    parser.add_argument("--samples", type=int, default=200_000, help="samples per call (M)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the first call")
    parser.add_argument("--backend", default=None, help="compute backend (default: config, else local)")
    parser.add_argument("--storage", default=None, help="storage URL for job data (default: config, else local)")
    parser.add_argument("--workers", type=int, default=None, help="max_workers")
    args = parser.parse_args(argv)
    if args.calls < 1 or args.samples < 1:
        parser.error("--calls and --samples must be at least 1")

    start = time.perf_counter()
    with CloudPoolExecutor(args.workers, backend=args.backend, storage=args.storage) as ex:
        seeds = range(args.seed, args.seed + args.calls)
        hits = sum(ex.map(hits_in_quarter_circle, seeds, [args.samples] * args.calls))
        backend, workers = ex.config["backend"], ex.max_workers
    elapsed = time.perf_counter() - start

    total = args.calls * args.samples
    pi = estimate(hits, total)
    # One standard error of the estimate: 4 * sqrt(p (1 - p) / n) with p = pi / 4.
    stderr = 4.0 * math.sqrt((math.pi / 4) * (1 - math.pi / 4) / total)
    print(f"pi ~= {pi:.6f} from {total:,} samples ({args.calls} calls x {args.samples:,}) "
          f"on backend {backend!r} with {workers} workers")
    print(f"error: {pi - math.pi:+.6f} ({abs(pi - math.pi) / stderr:.2f} standard errors of {stderr:.6f})")
    print(f"time: {elapsed:.2f} s, {total / elapsed:,.0f} samples/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
