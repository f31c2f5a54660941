"""Does a latency table keep its promise? FLOPs-driven vs latency-driven SMCP masks on ONNX Runtime.

    python benchmarks/bench_latency_pruning.py --models resnet50 mobilenet_v2 --step 16 \
        --channel-step 16 8 --iters 300 --threads 2 \
        --cache benchmarks/results/cache/latency_cache.json --out benchmarks/results/latency_pruning

For each torchvision model (random weights, seeded; batch 1 by default) and each channel step, one SMCP
knapsack update with magnitude importance picks masks at ``--target`` of the dense cost, once
with FLOPs as the cost and once with a latency table measured on ONNX Runtime (CPU, ``--threads``
threads, grid step ``--step``). Each mask set is removed for real (``fxprune.finalize``),
exported to ONNX and timed against the dense model, all of a model's variants interleaved in one
run (dense, a, b, ..., dense, a, b, ...) so that background load hits them alike.

Per row: FLOPs/params ratios, the speedup the FLOPs count predicts (dense/pruned FLOPs), the
speedup the latency table predicts (dense/pruned table cost, for both kinds of masks), the
measured speedup (ratio of median latencies) and measured/predicted.
Writes ``--out``.json and ``--out``.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

import fxprune
from fxprune.deploy import LatencyTable
from fxprune.deploy import onnxruntime_backend as ortb
from fxprune.deploy.common import DeployError, cpu_name, latency_stats
from fxprune.deploy.onnx_export import example_input, export_onnx, verify_onnx
from fxprune.methods.smcp import SMCP
from fxprune.summary import count_flops, count_params

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (at_least, changed_options, fraction_kept, results_stem,  # noqa: E402
                          run_script, usage_error)

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
COSTS = ("flops", "latency")


def torchvision_model(name: str, seed: int = 0) -> torch.nn.Module:
    import torchvision

    torch.manual_seed(seed)  # random weights: timing does not need trained ones, only fixed ones
    return getattr(torchvision.models, name)(weights=None).eval()


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def prune_once(model, x, cost, *, target: float, channel_step: int):
    """A prepared copy of ``model`` with masks from one SMCP knapsack update (no training)."""
    pm = fxprune.prepare(model, (x,))
    pruner = SMCP(pm, target=target, cost=cost, importance="magnitude", warmup=0, ramp=0,
                  update_every=1, channel_step=channel_step)
    # Magnitude importance needs no gradients; the schedule (warmup 0, ramp 0) makes this first
    # step an update straight at the final target.
    record = pruner.step()
    assert record is not None, "the schedule should update at step 1"
    return pm, pruner


def off_grid_groups(pruner, channel_step: int) -> list[str]:
    """Groups whose kept count is neither a multiple of ``channel_step`` nor all channels
    (SMCP keeps every group on the step grid; this checks that it did)."""
    kept = pruner.index.masks(pruner.prepared).numpy() != 0
    out = []
    for i, g in enumerate(pruner.index.groups):
        k = int(kept[pruner.index.group_slice(i)].sum())
        if k % channel_step and k != g.size:
            out.append(f"{k}/{g.size}")
    return out


def time_models(paths: dict, input_shape, *, threads: int, iters: int, warmup: int,
                spinning: bool, progress: bool) -> dict[str, list[float]]:
    """Per-run ms of each ONNX file, interleaved round by round (``ortb.time_interleaved``)."""
    runs = {}
    for label, path in paths.items():
        sess = ortb.make_session(path, threads, spinning=spinning)
        feed = ortb.random_feed(sess, input_shape)
        runs[label] = (lambda s=sess, f=feed: s.run(None, f))
    return ortb.time_interleaved(runs, iters, warmup, progress, desc=f"onnxruntime ({threads} threads)")


def bench_model(name: str, model: torch.nn.Module, input_shape, *, table_step: int,
                channel_steps=(16, 8), target: float = 0.5, iters: int = 300, warmup: int = 20,
                threads: int = 2, spinning: bool = False, cache=None, workdir: str,
                progress: bool = True, log=print) -> dict:
    """Measure ``model``'s latency table, prune it under each cost and channel step, time all
    variants interleaved with the dense model on ONNX Runtime. Returns the model's results."""
    x = example_input(input_shape)
    dense_pm = fxprune.prepare(model, (x,))
    load_table = load_average()
    t0 = time.perf_counter()
    table = LatencyTable.measure(dense_pm, backend="onnxruntime", step=table_step,
                                 threads=threads, cache=cache, progress=progress, log=log)
    table_info = {
        "step": table_step, "wall_s": round(time.perf_counter() - t0, 1),
        "measure_s": round(table.stats["seconds"], 1), "points_timed": table.stats["measured"],
        "points_cached": table.stats["cached"],
        # the points to distrust: timed while other processes shared the CPU (break80 F8)
        "points_under_load": table.stats["under_load"],
        "distinct_layers": len(table), "load_average_before": load_table,
        "load_average_after": load_average(),
        # The table prices conv/linear layers only (each timed alone): compare with the whole
        # model's measured median below to see what it leaves out.
        "dense_sum_ms": round(sum(table.layer_cost(s, s.in_channels, s.out_channels)
                                  for s in fxprune.layer_specs(dense_pm)), 3),
    }
    del dense_pm
    dense_flops, dense_params = count_flops(model, (x,)), count_params(model)

    variants = {"dense": model}
    rows = []
    for cs in channel_steps:
        for cost_name in COSTS:
            label = f"{cost_name}@{cs}"
            row = {"model": name, "cost": cost_name, "channel_step": cs, "target": target,
                   "label": label}
            try:
                pm, pruner = prune_once(model, x, "flops" if cost_name == "flops" else table,
                                        target=target, channel_step=cs)
            except ValueError as e:  # the target is below what these options can reach
                log(f"[{name} {label}] not pruned: {e}")
                rows.append({**row, "error": str(e)})
                continue
            small = fxprune.finalize(pm)
            flops, params = count_flops(small, (x,)), count_params(small)
            rec = pruner.history[-1]
            variants[label] = small
            rows.append({
                **row, "cost_fraction_own": pruner.cost(),
                "flops_ratio": flops / dense_flops, "params_ratio": params / dense_params,
                "pred_speedup_flops": dense_flops / flops,
                "pred_speedup_table": 1.0 / pruner.cost(table),
                "kept_channels": rec["kept"], "channels": rec["channels"],
                "knapsack_solve_s": round(rec["solve_s"], 3),
                "off_grid_groups": off_grid_groups(pruner, cs),
            })
            del pm, pruner

    paths = {}
    for label, module in variants.items():
        path = os.path.join(workdir, f"{name}_{label.replace('@', '_')}.onnx")
        export_onnx(module, input_shape, path, log=log)
        verify_onnx(path, module, input_shape, threads=threads)  # the ONNX is the model we pruned
        paths[label] = path
    load_timing = load_average()
    times = time_models(paths, input_shape, threads=threads, iters=iters, warmup=warmup,
                        spinning=spinning, progress=progress)
    timing_info = {"iters": iters, "warmup": warmup, "order": list(paths), "ort_spinning": spinning,
                   "load_average_before": load_timing, "load_average_after": load_average()}
    stats = {label: latency_stats(t) for label, t in times.items()}
    dense = stats["dense"]
    for row in rows:
        if "error" in row:
            continue
        s = stats[row["label"]]
        measured = dense["median"] / s["median"]
        own = row["pred_speedup_flops" if row["cost"] == "flops" else "pred_speedup_table"]
        row.update({
            "dense_median_ms": dense["median"], "dense_p90_ms": dense["p90"],
            "pruned_median_ms": s["median"], "pruned_p90_ms": s["p90"],
            "measured_speedup": measured,
            "measured_over_pred_flops": measured / row["pred_speedup_flops"],
            "measured_over_pred_table": measured / row["pred_speedup_table"],
            # Against what the row's own cost model promised (the criterion).
            "measured_over_pred_own": measured / own,
        })
        if row["cost"] == "latency":
            row["goal_met"] = bool(row["measured_over_pred_table"] >= 0.9 and measured >= 1.0)
    return {"model": name, "input_shape": list(input_shape), "table": table_info,
            "timing": timing_info, "dense_flops": dense_flops, "dense_params": dense_params,
            "dense_latency_ms": dense, "rows": rows}


# ----------------------------------------------------------------------------- reporting
HEADER = ("model", "cost", "step", "FLOPs", "params", "pred FLOPs", "pred table",
          "dense ms med/p90", "pruned ms med/p90", "measured", "meas/pred own", "goal")


def row_cells(r: dict) -> tuple[str, ...]:
    if "error" in r:
        return (r["model"], r["cost"], str(r["channel_step"]), "not pruned (error in JSON)",
                *[""] * (len(HEADER) - 4))
    goal = "-" if "goal_met" not in r else ("yes" if r["goal_met"] else "NO")
    return (r["model"], r["cost"], str(r["channel_step"]), f"{r['flops_ratio']:.3f}",
            f"{r['params_ratio']:.3f}", f"{r['pred_speedup_flops']:.2f}x",
            f"{r['pred_speedup_table']:.2f}x",
            f"{r['dense_median_ms']:.2f} / {r['dense_p90_ms']:.2f}",
            f"{r['pruned_median_ms']:.2f} / {r['pruned_p90_ms']:.2f}",
            f"{r['measured_speedup']:.2f}x", f"{r['measured_over_pred_own']:.2f}", goal)


def text_table(rows: list[dict]) -> str:
    cells = [HEADER] + [row_cells(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


CHOICES = """\
## How to read this

- **FLOPs / params**: pruned / dense (whole model, `count_flops` from `fxprune.summary`).
- **pred FLOPs**: dense FLOPs / pruned FLOPs, the speedup a FLOPs-driven tool promises.
  **pred table**: dense / pruned cost by the latency table (sum of per-layer conv/linear times),
  computed for both kinds of masks. **measured**: dense median / pruned median latency.
  **meas/pred own**: measured / the prediction of the cost the row pruned by (FLOPs rows: pred
  FLOPs; latency rows: pred table). **goal** (latency rows, from the issue): measured >= 0.9 x
  pred table and not slower than dense. The JSON has measured/predicted for both predictions.
- Masks come from one SMCP knapsack update at the target with `importance="magnitude"` on
  random (seeded) weights: accuracy is not the point here, the channel counts are.

## Choices

- **Table step {step}**: the knapsack's options are multiples of `channel_step`; the table is
  measured at multiples of its step (plus the dense counts) and interpolates bilinearly in
  between. With a `channel_step` that is a multiple of the table step, every option the
  knapsack prices is a measured grid point, so its prediction has no interpolation error; a
  finer one falls between grid points, where the table interpolates. ONNX Runtime's CPU conv
  time moves in steps of the channel block of MLAS's NCHWc kernels (8 with AVX2, 16 with
  AVX-512; the machine table above names the CPU), so a grid finer than that block mostly
  re-measures flat stretches, at ~4x the table time per halving of the step (resnet50: 8046
  points at step 32, 32052 at 16, 127944 at 8).
- **channel_step {channel_steps}** (run's `--channel-step`; SMCP's default is 8): the FLOPs
  rows show what multiples of it do on this runtime.
- SMCP keeps every group's channel total on the `channel_step` grid (plus the dense count);
  `off_grid_groups` in the JSON lists any group that still ended off it.
- Timing: all variants of one model interleaved in one process (dense, then each pruned
  model, repeated), {warmup} warm-up rounds then {iters} timed rounds, medians and p90.
  ORT spin-waiting: {spinning} (`fxprune.deploy`'s default is off). With spinning on (ORT's own
  default) an idle session's worker thread spins while the next session runs, so interleaved
  sessions slow each other down, unevenly across models; off, every model pays ORT's thread
  wake-up per op instead, alike for dense and pruned.
  Load averages (1, 5, 15 min) are recorded around the table measurement and the timing.
- Load and the table: interleaving protects the end-to-end timing; the table is protected by
  timing its grid in two passes, each in a fresh random order, keeping each point's fastest.
  Compare "table dense sum" with "dense measured": the table leaves out only non-conv ops (BN
  and activations are fused into the convs by ORT; pooling and adds are cheap), so far apart
  means a disturbed table or timing run.
"""


def markdown(result: dict) -> str:
    m = result["machine"]
    md = ["# Latency-table pruning vs FLOPs pruning on ONNX Runtime (CPU)", "",
          f"Command: `{result['command']}`", "",
          "## Machine", "", "| fact | value |", "| --- | --- |"]
    md += [f"| {k} | {v} |" for k, v in m.items()]
    md += ["", "## Results", "", "| " + " | ".join(HEADER) + " |",
           "|" + " --- |" * len(HEADER)]
    md += ["| " + " | ".join(row_cells(r)) + " |" for mod in result["models"] for r in mod["rows"]]
    md += ["", "## Latency tables and timing runs", "",
           "| model | table step | points timed / cached | points timed under load | table wall "
           "s | load before -> after (table) | table dense sum ms | dense measured ms | timing "
           "load before -> after |",
           "|" + " --- |" * 9]
    for mod in result["models"]:
        t, tm = mod["table"], mod["timing"]
        md.append(f"| {mod['model']} | {t['step']} | {t['points_timed']} / {t['points_cached']} "
                  f"| {t.get('points_under_load', '-')} | {t['wall_s']} | {t['load_average_before']} -> {t['load_average_after']} "
                  f"| {t['dense_sum_ms']} | {mod['dense_latency_ms']['median']:.2f} "
                  f"| {tm['load_average_before']} -> {tm['load_average_after']} |")
    off = [(r["label"], r["model"], r["off_grid_groups"]) for mod in result["models"]
           for r in mod["rows"] if r.get("off_grid_groups")]
    if off:
        md += ["", "Groups kept at counts off the step grid (kept/size): "
               + "; ".join(f"{mdl} {lbl}: {', '.join(g)}" for lbl, mdl, g in off)]
    a = result["args"]
    md += ["", CHOICES.format(step=a["step"], channel_steps=" and ".join(map(str, a["channel_step"])),
                              warmup=a["warmup"], iters=a["iters"],
                              spinning="on" if a.get("spinning") else "off")]
    return "\n".join(md)


def git_commit() -> str:
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True, cwd=os.path.dirname(RESULTS)).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, cwd=os.path.dirname(RESULTS)).stdout
        return head + ("+uncommitted changes" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine_facts(args) -> dict:
    return {"git": git_commit(), "cpu": cpu_name(), "cpu_count": os.cpu_count(), "threads": args.threads,
            "batch": args.batch, "input": f"{args.batch}x3x{args.size}x{args.size}",
            "onnxruntime": ortb.version(), "torch": torch.__version__,
            "python": platform.python_version(), "load_average_start": load_average()}


def render(json_path: str) -> str:
    """Markdown from a results JSON (to refresh the text without re-measuring)."""
    with open(json_path, encoding="utf-8") as f:
        return markdown(json.load(f))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet50", "mobilenet_v2"])
    ap.add_argument("--step", type=at_least(1), default=16, help="latency table grid step")
    ap.add_argument("--channel-step", type=at_least(1), nargs="+", default=[16, 8],
                    help="SMCP option step(s); each gets a FLOPs row and a latency row")
    ap.add_argument("--target", type=fraction_kept, default=0.5, help="cost to keep, fraction of dense")
    ap.add_argument("--iters", type=at_least(1), default=300, help="timed rounds per model")
    ap.add_argument("--warmup", type=at_least(0), default=20)
    ap.add_argument("--threads", type=at_least(1), default=2)
    ap.add_argument("--batch", type=at_least(1), default=1)
    ap.add_argument("--size", type=at_least(1), default=224)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--spinning", action="store_true",
                    help="leave ORT's spin-waiting on while timing (its default; distorts "
                         "interleaved timing, see ort_session)")
    ap.add_argument("--cache", default=None,
                    help="latency cache (default: benchmarks/results/cache/latency_cache.json "
                         "for the published results, OUT_latency_cache.json beside another --out)")
    ap.add_argument("--out", default=None,
                    help="results path without extension (.json and .md are written; default "
                         "benchmarks/results/latency_pruning)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)  # classification ones
    unknown = [m for m in args.models if m not in known]
    if unknown:  # (break167 F8: an AttributeError traceback)
        ap.error(f"--models: {', '.join(unknown)} not among torchvision's classification models "
                 "(torchvision.models.list_models(module=torchvision.models))")
    given_out = args.out
    args.out = str(results_stem("latency_pruning", args.out,
                                changed=changed_options(ap, args, ignore=("cache", "no_progress")),
                                keys=("command", "args", "machine", "models")))
    if args.cache is None:  # a trial run elsewhere filled the repository's cache (break80 D4)
        args.cache = (os.path.join(RESULTS, "cache", "latency_cache.json") if given_out is None
                      else f"{args.out}_latency_cache.json")

    result = {"command": shlex.join(["python", "benchmarks/bench_latency_pruning.py",
                                   *(argv if argv is not None else sys.argv[1:])]),
              "args": vars(args), "machine": machine_facts(args), "models": []}
    shape = (args.batch, 3, args.size, args.size)
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.models:
            print(f"== {name}", flush=True)
            try:
                result["models"].append(bench_model(
                    name, torchvision_model(name, args.seed), shape, table_step=args.step,
                    channel_steps=args.channel_step, target=args.target, iters=args.iters,
                    warmup=args.warmup, threads=args.threads, spinning=args.spinning,
                    cache=args.cache, workdir=workdir,
                    progress=not args.no_progress))
            except DeployError as exc:  # e.g. a --cache file of another machine: its message says how
                usage_error(f"{name}: {exc}")
    result["machine"]["load_average_end"] = load_average()

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    with open(args.out + ".md", "w", encoding="utf-8") as f:
        f.write(markdown(result) + "\n")
    print(text_table([r for mod in result["models"] for r in mod["rows"]]))
    print(f"written: {args.out}.json, {args.out}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_script(main))
