"""Does a latency table predict a pruned model's real latency? (ONNX Runtime, CPU)

    python benchmarks/bench_table_calibration.py [--nets concat resnet wide] [--batch 64] [--threads 1]
        [--targets 0.9 0.75 0.6 0.5 0.4] [--choosers table flops table+fixed flops+fixed]
        [--passes 2] [--cache FILE] [--out benchmarks/results/table_calibration]

Per net of the head-to-head benchmark (``bench_vs_torch_pruning.NETS``, untrained: latency does
not depend on the weights): measures an ONNX Runtime latency table of the prepared model at
``--batch`` (step 8, each point its fastest of ``--passes`` passes; a fresh cache in a temporary
folder unless ``--cache`` names a latency cache file, e.g. one timed under load, to see what it
would have done; it is copied, never written, and replays only on the CPU, ONNX Runtime version
and threads it was timed with, and without load flags on an idle CPU: points it lacks or has
flagged are timed afresh). Then
``fxprune.deploy.calibrate_cost`` fits the constant the table misses, and the one FLOPs miss,
from the dense model and one keeping half of every group (timed apart from the models below).
Four cost models: the table, FLOPs, and each with its fitted constant ("+fixed"). For each
target, each of ``--choosers`` lets the knapsack choose widths (channel_step 8, random
importance, ``--configs`` draws per target). Every chosen model is finalized, exported and timed
interleaved with the dense one (medians of ``--iters`` runs). The figures: each model's cost as
a fraction of dense predicted by the four cost models, against the measured fraction; each
predictor's mean absolute error; and where each chooser's models landed against their target.

Writes ``--out``.json and .md with the machine, threads, batch, load average and runtime.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import fxprune  # noqa: E402
from bench_common import apply_smoke_defaults, changed_options, results_stem, run_script  # noqa: E402
from bench_vs_torch_pruning import NETS  # noqa: E402
from fxprune.allocation import InfeasibleBudget, allocate  # noqa: E402
from fxprune.cost import FlopsCost, WithFixedCost, layer_keys  # noqa: E402
from fxprune.deploy import DeployError, LatencyTable, calibrate_cost  # noqa: E402
from fxprune.deploy import onnxruntime_backend as ortb  # noqa: E402
from fxprune.deploy.common import cpu_name  # noqa: E402
from fxprune.deploy.common import cpu_load  # noqa: E402
from fxprune.deploy.latency_table import read_cache_file  # noqa: E402
from fxprune.deploy.onnx_export import export_onnx  # noqa: E402


def widths(method, kept) -> list[int]:
    return [int(kept[method.index.group_slice(i)].sum()) for i in range(len(method.index.groups))]


PREDICTORS = ("table", "flops", "table+fixed", "flops+fixed")


def calibrate(net: str, args, cache: str) -> list[dict]:
    """Rows of (config, cost model that chose it, widths, each predictor's fraction, measured)."""
    torch.manual_seed(0)
    dense = NETS[net](args.smoke).eval()
    pm = fxprune.prepare(dense, (torch.randn(1, 1, 28, 28),))
    table = LatencyTable.measure(pm, step=8, threads=args.threads, batch=args.batch, cache=cache,
                                 passes=args.passes, progress=False, log=lambda s: None)
    # each cost model plus the constant it misses, fitted from dense and a uniform half model
    fits = {}
    for name, base in (("table+fixed", table), ("flops+fixed", FlopsCost())):
        try:
            fits[name] = calibrate_cost(base, pm, keep=0.5, step=8, backend="onnxruntime",
                                        threads=args.threads, batch=args.batch,
                                        iters=args.iters, log=lambda s: None)
        except DeployError as e:  # e.g. a noisy table pricing the half model at dense
            print(f"{net}: {name}: no constant fitted, priced without one: {e}", flush=True)
            keys = layer_keys(fxprune.layer_specs(pm), base)
            fits[name] = WithFixedCost(base, 0.0, keys, {"failed": str(e),
                                                         "fixed_share_of_dense": 0.0})
    # the pruners only price and rank here: ``allocate`` is called with each target below
    pricers = {"table": fxprune.SMCP(pm, target=1.0, cost=table, channel_step=8),
               "flops": fxprune.SMCP(pm, target=1.0, cost="flops", channel_step=8),
               **{name: fxprune.SMCP(pm, target=1.0, cost=fit, channel_step=8)
                  for name, fit in fits.items()}}
    rng = np.random.default_rng(args.seed)
    index = pricers["table"].index
    models, rows, infeasible = {"dense": dense}, [], []
    for chooser in args.choosers:
        method = pricers[chooser]
        for target in args.targets:
            for draw in range(args.configs):
                try:
                    kept = allocate(method._options(rng.random(index.n)), method.budget, target,
                                    np.ones(index.n, dtype=bool)).kept
                except InfeasibleBudget as e:  # below the narrowest model, by this cost model
                    infeasible.append({"chooser": chooser, "target": target, "floor": e.floor})
                    break
                label = f"{chooser}-{target}-{draw}"
                index.set_masks(pm, kept.astype(np.float32))
                models[label] = fxprune.finalize(copy.deepcopy(pm)).eval()
                rows.append({"net": net, "model": label, "chosen_by": chooser, "target": target,
                             "widths": widths(method, kept),
                             **{f"{name}_fraction": pricer.budget.fraction(kept)
                                for name, pricer in pricers.items()}})
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for label, m in models.items():
            paths[label] = os.path.join(tmp, f"{label}.onnx")
            export_onnx(m, (1, 1, 28, 28), paths[label], log=lambda s: None)
        times = ortb.time_onnx_models(paths, (args.batch, 1, 28, 28), threads=args.threads,
                                      iters=args.iters, warmup=max(3, args.iters // 10),
                                      progress=False)
    ms = {k: statistics.median(v) for k, v in times.items()}
    for row in rows:
        row["measured_fraction"] = ms[row["model"]] / ms["dense"]
        row["ms"] = ms[row["model"]]
    rows.insert(0, {"net": net, "model": "dense", "ms": ms["dense"],
                    "table_sum_ms": pricers["table"].budget.dense, "table_points_under_load":
                    table.stats["under_load"], "table_seconds": table.stats["seconds"],
                    "table_points_timed": table.stats["measured"], "infeasible": infeasible,
                    "fits": {name: {"fixed_cost": fit.fixed_cost, **fit.fit}
                             for name, fit in fits.items()}})
    return rows


def summary(rows: list[dict]) -> list[dict]:
    out = []
    for net in dict.fromkeys(r["net"] for r in rows):
        mine = [r for r in rows if r["net"] == net and r["model"] != "dense"]
        dense = next(r for r in rows if r["net"] == net and r["model"] == "dense")
        # None where no target was reachable on this net (break80 F7: a StatisticsError lost
        # every net's results; the markdown lists the infeasible targets)
        err = {k: statistics.mean(abs(r[f"{k}_fraction"] - r["measured_fraction"]) for r in mine)
               if mine else None for k in PREDICTORS}
        # where each chooser's models landed against the target they were chosen for
        landed = {c: [r["measured_fraction"] - r["target"] for r in mine if r["chosen_by"] == c]
                  for c in dict.fromkeys(r["chosen_by"] for r in mine)}
        out.append({"net": net, "dense_ms": dense["ms"],
                    "table_sum_over_real": dense["table_sum_ms"] / dense["ms"],
                    **{f"{k}_mean_abs_error": v for k, v in err.items()},
                    "landed_minus_target": {c: {"mean": statistics.mean(d),
                                                "max_abs": max(map(abs, d))}
                                            for c, d in landed.items()},
                    "fixed_share": {k: f["fixed_share_of_dense"] for k, f in dense["fits"].items()},
                    "points_under_load": dense["table_points_under_load"], "models": len(mine)})
    return out


def markdown(meta: dict, rows: list[dict], summ: list[dict]) -> str:
    m = meta["machine"]
    lines = ["# Latency table vs measured latency", "", f"`{meta['command']}`", "",
             f"{m['cpu']}, {m['cores']} cores, ONNX Runtime {m['onnxruntime']}, {m['threads']} "
             f"thread(s), batch {m['batch']}, tables of the fastest of {meta.get('passes', 2)} "
             f"passes per point, medians of {meta['iters']} interleaved runs; load "
             f"average {m['load_average_start'][0]:.2f} at the start, "
             f"{m['load_average_end'][0]:.2f} at the end; {meta['runtime_s']:.0f} s.", "",
             "Mean absolute error of each predictor's fraction of dense against the measured one, "
             "over every model of the net (\"+fixed\": plus the constant `calibrate_cost` fitted "
             "from dense and a uniform half model; its share of the dense total in brackets).", "",
             "| net | dense ms | table sum / real | table | FLOPs | table+fixed | FLOPs+fixed | "
             "models | table points timed under load |", "|---|---|---|---|---|---|---|---|---|"]
    def error(s, k):
        value = s[f"{k}_mean_abs_error"]
        return "-" if value is None else f"{value:.3f}"

    for s in summ:
        share = s["fixed_share"]
        lines.append(f"| {s['net']} | {s['dense_ms']:.3f} | {s['table_sum_over_real']:.2f} | "
                     f"{error(s, 'table')} | {error(s, 'flops')} | "
                     f"{error(s, 'table+fixed')} ({share['table+fixed']:.2f}) | "
                     f"{error(s, 'flops+fixed')} ({share['flops+fixed']:.2f}) | "
                     f"{s['models']} | {s['points_under_load']} |")
    choosers = list(dict.fromkeys(c for s in summ for c in s["landed_minus_target"]))
    lines += ["", "Where the models each cost model chose landed: measured fraction minus target, "
              "mean (largest miss).", "", "| net | " + " | ".join(choosers) + " |",
              "|---|" + "---|" * len(choosers)]
    for s in summ:
        landed = s["landed_minus_target"]
        cells = [f"{landed[c]['mean']:+.3f} ({landed[c]['max_abs']:.3f})" if c in landed else "-"
                 for c in choosers]
        lines.append(f"| {s['net']} | " + " | ".join(cells) + " |")
    for r in rows:
        for miss in r.get("infeasible", ()):
            lines.append(f"- {r['net']}, {miss['chooser']} at {miss['target']}: no model; the "
                         f"narrowest one the constraints allow costs {miss['floor']:.3f} of "
                         "dense by this cost model")
    lines += ["", "Fractions of the dense model: predicted by each cost model, and measured.",
              "", "| net | chosen by | target | widths | table | FLOPs | table+fixed | "
              "FLOPs+fixed | measured |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["model"] != "dense":
            lines.append(f"| {r['net']} | {r['chosen_by']} | {r['target']} | "
                         f"{' '.join(map(str, r['widths']))} | " + " | ".join(
                             f"{r[f'{k}_fraction']:.3f}" for k in PREDICTORS)
                         + f" | {r['measured_fraction']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nets", nargs="+", default=["concat", "resnet", "wide"], choices=list(NETS))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--targets", type=float, nargs="+", default=[0.9, 0.75, 0.6, 0.5, 0.4])
    p.add_argument("--choosers", nargs="+", default=list(PREDICTORS), choices=PREDICTORS,
                   help="cost models that choose widths (default: all four)")
    p.add_argument("--configs", type=int, default=2, help="random-importance draws per target")
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--passes", type=int, default=2,
                   help="passes over the latency table's grid, each point keeping its fastest "
                        "(LatencyTable.measure's passes; default 2, as there)")
    p.add_argument("--cache", help="a latency cache FILE to use (default: a fresh one per run)")
    p.add_argument("--smoke", action="store_true",
                   help="the nets' smoke widths (resnet 8/16/32; concat and wide at 16/32/64), "
                        "one target (0.9), one draw, 5 runs; options given stay as given")
    p.add_argument("--out", default=None,
                   help="results path without extension (.json and .md are written; default "
                        "benchmarks/results/table_calibration, or table_calibration_smoke)")
    args = p.parse_args(argv)
    if args.smoke:  # smaller defaults; what was given stays
        apply_smoke_defaults(p, argv, args, {"iters": 5, "configs": 1, "targets": [0.9]})
    bad = [t for t in args.targets if not 0 < t <= 1]
    if bad:
        p.error(f"--targets are fractions of the dense cost in (0, 1], got {bad}")
    for name in ("configs", "iters", "batch", "threads", "passes"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    out = results_stem("table_calibration", args.out, args.smoke,  # exits on a folder
                       changed_options(p, args), keys=("meta", "summary", "rows"),
                       meta_keys=("iters", "machine"))
    if args.cache and not os.path.isfile(args.cache):
        p.error(f"--cache {args.cache} is not a file (a latency cache written by "
                "LatencyTable.measure(cache=...))")
    if args.cache:  # read here: the run reads a temporary copy, which its error named
        try:  # (break167 F8)
            read_cache_file(args.cache)
        except DeployError as exc:
            p.error(f"--cache: {exc}")
    torch.set_num_threads(args.threads)
    start, load_start = time.perf_counter(), os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for net in args.nets:
            cache = os.path.join(tmp, f"{net}.json")
            if args.cache:  # points the given cache lacks are timed into the copy only
                shutil.copyfile(args.cache, cache)
            rows += calibrate(net, args, cache)
    summ = summary(rows)
    meta = {"command": "python benchmarks/bench_table_calibration.py " + shlex.join(
                argv if argv is not None else sys.argv[1:]),
            "iters": args.iters, "passes": args.passes, "runtime_s": time.perf_counter() - start,
            "machine": {"cpu": cpu_name(), "cores": cpu_load()[1], "threads": args.threads,
                        "batch": args.batch, "onnxruntime": ortb.version(),
                        "torch": torch.__version__, "load_average_start": list(load_start),
                        "load_average_end": list(os.getloadavg())}}
    out.parent.mkdir(parents=True, exist_ok=True)
    # OUT + suffix, not Path.with_suffix: "--out results.v2" must not write results.json
    Path(f"{out}.json").write_text(json.dumps({"meta": meta, "summary": summ, "rows": rows},
                                              indent=1))
    text = markdown(meta, rows, summ)
    Path(f"{out}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    raise SystemExit(run_script(main))
