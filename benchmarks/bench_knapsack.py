"""Time solve_mckp on ResNet-50-sized pruning problems.

The problems mimic what SMCP builds for ResNet-50: one group per set of layers sharing
channels (ResNet-50's 37 groups, and a harder 60-group variant with 256 options each),
options "keep k channels" for k in multiples of 8, values the cumulative sorted importance
(monotone, concave), costs roughly quadratic in k (a layer's FLOPs or latency grows with input
times output width). Prints the median solve time and writes ``benchmarks/results/knapsack.json``.

    python benchmarks/bench_knapsack.py [--repeats 7] [--resolution N] [--ratio 0.5]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from fxprune.deploy.common import cpu_name

from fxprune.knapsack import DEFAULT_RESOLUTION, solve_mckp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import at_least, changed_options, results_stem, run_script  # noqa: E402

# ResNet-50's channel groups: the stem's output, the two block-internal widths of each of the
# 16 bottlenecks, and the four residual streams (37 groups, 8 to 256 options each).
RESNET50_GROUP_WIDTHS = ([64] + [64, 64] * 3 + [128, 128] * 4 + [256, 256] * 6 + [512, 512] * 3
                         + [256, 512, 1024, 2048])
# A harder stand-in for finer groupings of ResNet-50: 60 groups, all with 256 options.
STRESS_GROUP_WIDTHS = [2048] * 60

PROBLEMS = {"resnet50": RESNET50_GROUP_WIDTHS, "stress60x256": STRESS_GROUP_WIDTHS}


def pruning_like_problem(widths: list[int], seed: int = 0):
    """(values, costs) per group for "keep the k most important of ``width`` channels"."""
    rng = np.random.default_rng(seed)
    values, costs = [], []
    for width in widths:
        k = np.arange(8, width + 1, 8)
        importance = np.sort(rng.exponential(size=width))[::-1]
        values.append(np.cumsum(importance)[k - 1])
        # a*k^2 + b*k: the group's layers' cost with their other side held at full width.
        a, b = rng.uniform(0.5, 2.0) * 1e3, rng.uniform(0.5, 2.0) * 1e5
        costs.append(a * k * k + b * k)
    return values, costs


def time_problem(name: str, resolution: int, ratio: float, repeats: int) -> dict:
    values, costs = pruning_like_problem(PROBLEMS[name])
    budget = (1.0 - ratio) * float(sum(c[-1] for c in costs))
    times, choice = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        choice = solve_mckp(values, costs, budget, resolution=resolution)
        times.append(time.perf_counter() - start)
    cost = float(sum(c[j] for c, j in zip(costs, choice)))
    return {
        "problem": name,
        "n_groups": len(values),
        "n_options_total": int(sum(v.size for v in values)),
        "max_options_per_group": int(max(v.size for v in values)),
        "budget_fraction_of_dense": 1.0 - ratio,
        "chosen_cost_fraction_of_budget": cost / budget,
        "chosen_value": float(sum(v[j] for v, j in zip(values, choice))),
        "median_s": statistics.median(times),
        "min_s": min(times),
        "times_s": times,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=at_least(1), default=7)
    parser.add_argument("--resolution", type=at_least(1), default=DEFAULT_RESOLUTION)
    parser.add_argument("--ratio", type=float, default=0.5,
                        help="fraction of the dense cost to remove (budget = (1 - ratio) * dense)")
    parser.add_argument("--out", type=Path, default=None,
                        help="results path (.json is written; default benchmarks/results/knapsack)")
    args = parser.parse_args(argv)
    if not 0 <= args.ratio < 1:  # (break167 F8: --ratio 1 was an "infeasible budget" traceback)
        parser.error(f"--ratio is the fraction of the dense cost removed, in [0, 1); got {args.ratio}")
    stem = results_stem("knapsack", args.out, changed=changed_options(parser, args),
                        keys=("benchmark", "solver", "runs", "machine"), files=(".json",))
    out = Path(f"{stem}.json")

    runs = [time_problem(name, args.resolution, args.ratio, args.repeats) for name in PROBLEMS]
    result = {
        "benchmark": "knapsack",
        "solver": "fxprune.knapsack.solve_mckp",
        "resolution": args.resolution,
        "repeats": args.repeats,
        "runs": runs,
        "machine": {
            "cpu": cpu_name(),
            "logical_cpus": os.cpu_count(),
            # numpy's vector ops here are single-threaded; these only matter for BLAS calls.
            "thread_env": {k: os.environ[k] for k in
                           ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
                           if k in os.environ},
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for run in runs:
        print(f"{run['problem']}: {run['n_groups']} groups, {run['n_options_total']} options "
              f"(max {run['max_options_per_group']}/group), resolution {args.resolution}: "
              f"median {run['median_s'] * 1e3:.1f} ms over {args.repeats} runs "
              f"(min {run['min_s'] * 1e3:.1f} ms); uses "
              f"{run['chosen_cost_fraction_of_budget']:.4%} of the budget")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_script(main))
