"""One command on one CUDA GPU: SMCP's training overhead, a GPU latency table, and speedups.

    python benchmarks/bench_gpu.py                                   # one CUDA GPU, < 8 minutes
    python benchmarks/bench_gpu.py --device cpu --smoke --out /tmp/gpu_smoke   # ~1 minute, CPU

(a) SMCP training step on resnet50 and convnext_tiny (random data, batch 128, bf16 autocast):
    step time of the plain model, of the prepared model with half of every group masked (no
    pruner work), with SMCP's per-step work inside the importance window (Taylor scores, masked
    decay), and outside it; the variants interleaved step by step, medians of CUDA-event times.
    Then a few steps with mask updates, and ``finalize`` (its exactness check) on the result.
(b) a latency table for resnet50 with the torch backend at batch 256, fp16, CUDA graphs: how long
    it took and how many points were timed (the grid step is the finest that fits --max-points).
(c) for resnet50, mobilenet_v2 and convnext_tiny: masks at 50% of the dense cost chosen by one
    SMCP knapsack update (magnitude importance, random weights) with FLOPs as the cost and with
    the model's GPU table (batch 256); each removed for real and timed against the dense model
    (interleaved, CUDA graphs, fp16, channels_last) at batch 256 and batch 1: predicted speedup
    (dense / pruned cost under the model that chose the masks), measured speedup (ratio of
    medians), measured / predicted. Batch-1 predictions are the FLOPs ratio and the batch-256
    table's ratio (no batch-1 table is measured, to stay in the time budget).

Every section has a time budget; what does not fit is recorded as skipped with the reason.
Writes ``--out``.json and ``--out``.md (default ``benchmarks/results/gpu``, or ``gpu_smoke``
with ``--smoke``) with the device's
name and the torch / CUDA / cuDNN versions, the command and the CPU thread count. A run with
other options than the published protocol (``--amp``, ``--channel-step``, a ``--precision``
other than fp16) needs ``--out`` where ``benchmarks/results/gpu.json`` exists. ``--smoke``
runs tiny models on tiny inputs (the test suite runs it on the CPU so the script is known to
work before GPU time is spent).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

import fxprune
from fxprune.deploy import LatencyTable
from fxprune.deploy import torch_backend as tb
from fxprune.deploy.common import cpu_busy, cpu_load
from fxprune.methods.smcp import SMCP
from fxprune.compare import max_relative_error, run_eval
from fxprune.summary import count_flops
from fxprune.train import default_threads

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (at_least, changed_options, device_problem, half_masks,  # noqa: E402
                          results_stem, run_script, timing_setup_warnings_off)

ROOT = Path(__file__).resolve().parents[1]


class OutOfBudget(RuntimeError):
    """A section's time budget ran out."""


# ------------------------------------------------------------------------------ settings
FULL = {
    "train_models": ["resnet50", "convnext_tiny"], "train_batch": 128, "train_size": 224,
    "train_steps": 20, "update_steps": 6,
    "table_model": "resnet50", "table_batch": 256, "max_points": 1500,
    "speed_models": ["resnet50", "mobilenet_v2", "convnext_tiny"], "speed_batches": [256, 1],
    "speed_size": 224, "speed_max_points": 500, "iters": 30, "warmup": 5, "target": 0.5,
    "budgets_s": {"a": 100, "b": 140, "c": 170},  # with start-up, about 7.3 minutes at most
}
SMOKE = {
    "train_models": ["tiny_resnet", "tiny_convnext"], "train_batch": 4, "train_size": 32,
    "train_steps": 3, "update_steps": 4,
    "table_model": "tiny_resnet", "table_batch": 4, "max_points": 60,
    "speed_models": ["tiny_resnet", "tiny_mobilenet", "tiny_convnext"], "speed_batches": [4, 1],
    # tiny layers' latency hardly moves with channels: a 50% latency target is infeasible there
    "speed_size": 32, "speed_max_points": 40, "iters": 3, "warmup": 1, "target": 0.9,
    "budgets_s": {"a": 60, "b": 30, "c": 60},
}


def build(name: str, num_classes: int = 1000) -> torch.nn.Module:
    """torchvision models with random (seeded) weights, or small ones of the same families."""
    import torchvision
    from torchvision.models import convnext, mobilenetv2, resnet

    torch.manual_seed(0)
    if name == "tiny_resnet":
        return resnet.ResNet(resnet.BasicBlock, [1, 1, 1, 1], num_classes=num_classes)
    if name == "tiny_mobilenet":
        return mobilenetv2.MobileNetV2(num_classes=num_classes, width_mult=0.25)
    if name == "tiny_convnext":
        cfg = [convnext.CNBlockConfig(16, 32, 1), convnext.CNBlockConfig(32, None, 1)]
        return convnext.ConvNeXt(cfg, num_classes=num_classes)
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)


def table_step(pm, max_points: int, min_count: int, steps=(8, 16, 32, 64, 128, 256)) -> tuple[int, int]:
    """The finest grid step whose table has at most ``max_points`` distinct points (each axis
    timed at ``min_count`` too, the pruner's channel_step: narrow widths interpolate)."""
    from fxprune.deploy.latency_table import layer_grid, point_key

    specs = fxprune.layer_specs(pm)
    for step in steps:
        points = set()
        for s in specs:
            cins, couts, diag = layer_grid(s, step, min_count)
            pairs = zip(cins, couts) if diag else ((a, b) for a in cins for b in couts)
            points.update((point_key(s), a, b) for a, b in pairs)
        if len(points) <= max_points or step == steps[-1]:
            return step, len(points)
    raise AssertionError("unreachable")


def measure_table(pm, device, *, batch: int, precision: str, max_points: int, deadline: float,
                  threads: int, min_count: int) -> tuple[LatencyTable, dict]:
    step, n_points = table_step(pm, max_points, min_count)
    timer = tb.LayerTimer(device, threads=threads, warmup=2, min_runs=3, max_runs=10,
                          target_ms=5.0)

    def timed(layer, c_in, c_out):
        if time.perf_counter() > deadline:
            raise OutOfBudget(f"table not finished within its budget ({n_points} points)")
        return timer(layer, c_in, c_out)
    # its name in the table, not one holding the deadline's clock reading (review181 F2)
    timed.fxprune_name = f"bench_gpu LayerTimer {device}"

    started = time.perf_counter()
    table = LatencyTable.measure(pm, backend="torch", step=step, threads=threads, timer=timed,
                                 device=tb.device_name(device), batch=batch, precision=precision,
                                 passes=1, progress=False, min_count=min_count, log=lambda _: None)
    info = {"step": step, "min_count": min_count, "points_timed": table.stats["measured"], "batch": batch,
            "precision": precision, "seconds": round(time.perf_counter() - started, 1),
            "distinct_layers": len(table)}
    return table, info


# ----------------------------------------------------------------------- (a) training
def cuda_sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def half_masked_setup(name: str, batch: int, size: int, device):
    """``(model, prepared, x, y)`` for timing training steps: the 10-class ``name`` on
    ``device`` (channels_last on CUDA), a seeded random batch ``x`` (``batch x 3 x size x size``)
    with labels ``y``, and the model prepared with half of every group masked (the mid-ramp
    worst case). The prepared model is left in the default layout: callers convert it once
    their pruners are built."""
    model = build(name, 10).to(device)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=gen).to(device)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    pm = fxprune.prepare(model, (x[:1].cpu().contiguous(),))
    half_masks(pm)  # before any pruner: its last-known masks are these
    return model, pm, x, y


def train_section(name, s, device, deadline, amp) -> dict:
    batch, size = s["train_batch"], s["train_size"]
    model, pm, x, y = half_masked_setup(name, batch, size, device)
    window = SMCP(pm, target=0.5, warmup=0, ramp=10 ** 6, update_every=10 ** 6, masked_decay=2e-4)
    outside = SMCP(pm, target=0.5, warmup=10 ** 6, ramp=10 ** 6, update_every=10 ** 6,
                   masked_decay=2e-4)
    if device.type == "cuda":
        pm = pm.to(memory_format=torch.channels_last)
    variants = {"plain": (model, None), "masked": (pm, None), "smcp_window": (pm, window),
                "smcp_outside": (pm, outside)}
    optims = {id(m): torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for m, _ in variants.values()}
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    # fp16 needs loss scaling (bf16 does not); pruner.step() goes after unscale_, before step
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")

    def step(model, pruner):
        with torch.autocast(device.type, dtype=dtype, enabled=amp != "off"):
            loss = F.cross_entropy(model(x), y)
        opt = optims[id(model)]
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        if pruner is not None:
            pruner.step()  # importance from unscaled gradients; inf/nan steps are skipped
        scaler.step(opt)
        scaler.update()

    times = {k: [] for k in variants}
    for i in range(s["train_steps"] + 2):
        if time.perf_counter() > deadline:
            raise OutOfBudget(f"{name}: step timing not finished within the section's budget")
        for key, (m, p) in variants.items():
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                step(m, p)
                end.record()
                end.synchronize()
                ms = start.elapsed_time(end)
            else:
                t0 = time.perf_counter()
                step(m, p)
                ms = (time.perf_counter() - t0) * 1e3
            if i >= 2:  # two warm-up rounds (the allocator; cudnn.benchmark stays as it is)
                times[key].append(ms)
    med = {k: statistics.median(v) for k, v in times.items()}
    # masks updated: a fresh pruner re-solves every other step, then finalize checks exactness
    updater = SMCP(pm, target=0.5, warmup=0, ramp=2, update_every=2, masked_decay=2e-4)
    records = []
    for _ in range(s["update_steps"]):
        step(pm, updater)
    records = updater.history
    started = time.perf_counter()
    small = fxprune.finalize(pm)  # raises if the pruned model's output differs
    finalize_s = time.perf_counter() - started
    example = fxprune.groups.state_of(pm).example_inputs
    err = max_relative_error(run_eval(pm, example), run_eval(small, example))
    return {"model": name, "batch": batch, "input": f"3x{size}x{size}", "amp": amp,
            "steps_timed": s["train_steps"],
            **{f"{k}_ms": v for k, v in med.items()},  # unrounded: ratios are checked against them
            "masked_ratio": med["masked"] / med["plain"],
            "smcp_window_ratio": med["smcp_window"] / med["plain"],
            "smcp_outside_ratio": med["smcp_outside"] / med["plain"],
            "updates": len(records), "kept_after": records[-1]["kept"] if records else None,
            "channels": updater.index.n, "cost_after": records[-1]["actual"] if records else None,
            "finalize_s": round(finalize_s, 2), "finalize_max_rel_error": err}


# ---------------------------------------------------------------------- (c) speedups
def prune_once(model, x, cost, channel_step: int, target: float):
    pm = fxprune.prepare(model, (x,))
    pruner = SMCP(pm, target=target, cost=cost, importance="magnitude", warmup=0, ramp=0,
                  update_every=1, channel_step=channel_step)
    pruner.step()
    return pm, pruner


def speed_section(name, s, device, deadline, precision, threads, tables, channel_step,
                  skipped_rows) -> list[dict]:
    model = build(name).eval()
    size = s["speed_size"]
    x = torch.randn(1, 3, size, size)
    big = s["speed_batches"][0]
    if name not in tables:
        dense_pm = fxprune.prepare(model, (x,))
        tables[name] = measure_table(dense_pm, device, batch=big, precision=precision,
                                     max_points=s["speed_max_points"], deadline=deadline,
                                     threads=threads, min_count=channel_step)
    table, table_info = tables[name]
    dense_flops = count_flops(model, (x,))
    variants, rows = {"dense": model}, []
    for cost_name, cost in (("flops", "flops"), ("gpu_table", table)):
        if time.perf_counter() > deadline:
            raise OutOfBudget(f"{name}: not finished within the section's budget")
        try:
            pm, pruner = prune_once(model, x, cost, channel_step, s["target"])
        except ValueError as e:  # the target is below what the cost model allows
            skipped_rows.append({"section": "c", "model": name, "reason": f"{cost_name}: {e}"})
            continue
        small = fxprune.finalize(pm)
        variants[cost_name] = small
        rows.append({"model": name, "masks_by": cost_name, "channel_step": channel_step,
                     "target": s["target"],
                     "flops_ratio": count_flops(small, (x,)) / dense_flops,
                     "table_ratio": pruner.cost(table), "table_step": table_info["step"]})
    for batch in s["speed_batches"]:
        if time.perf_counter() > deadline:
            raise OutOfBudget(f"{name}: timing at batch {batch} not within the section's budget")
        times = tb.time_models(variants, (batch, 3, size, size), device=device,
                               precision=precision, threads=threads, iters=s["iters"],
                               warmup=s["warmup"])
        dense_ms = statistics.median(times["dense"])
        for row in rows:
            ms = statistics.median(times[row["masks_by"]])
            predicted = 1 / (row["flops_ratio"] if row["masks_by"] == "flops" else row["table_ratio"])
            row[f"b{batch}"] = {
                "dense_ms": dense_ms, "pruned_ms": ms,
                "measured_speedup": dense_ms / ms, "predicted_speedup": predicted,
                "measured_over_predicted": dense_ms / ms / predicted,
                "predicted_by": ("flops" if row["masks_by"] == "flops" else
                                 f"gpu_table@b{big}")}
    return rows


# ------------------------------------------------------------------------------- main
def run_section(key, budgets, results, skipped, fn):
    started = time.perf_counter()
    deadline = started + budgets[key]
    try:
        fn(deadline)
    except OutOfBudget as e:
        skipped.append({"section": key, "reason": str(e)})
    results["section_seconds"][key] = round(time.perf_counter() - started, 1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (with --smoke)")
    parser.add_argument("--smoke", action="store_true", help="tiny models and inputs: a few minutes on a CPU")
    parser.add_argument("--out", type=Path, default=None,
                        help="results path prefix (default benchmarks/results/gpu, or gpu_smoke "
                             "with --smoke: a smoke run never replaces real results)")
    # as fxprune train chooses them (break180 F10: a fixed 2 threads under OMP_NUM_THREADS=1,
    # beside other jobs, timed a step 100x too slow)
    parser.add_argument("--threads", type=at_least(1), default=default_threads(),
                        help="CPU threads for --device cpu (default: OMP_NUM_THREADS, else the "
                             "usable cores; %(default)s here)")
    parser.add_argument("--precision", choices=("fp16", "bf16", "fp32"), default=None,
                        help="tables and speedups (default fp16 on CUDA, fp32 on the CPU)")
    parser.add_argument("--amp", choices=("bf16", "fp16", "off"), default="bf16",
                        help="autocast dtype of the training-step section (default bf16)")
    parser.add_argument("--channel-step", type=at_least(1), default=8)
    parser.add_argument("--sections", default="abc",
                        help="which sections to run (default abc; e.g. c alone to redo the "
                             "speedups, which measure their own tables)")
    args = parser.parse_args(argv)
    if not args.sections or set(args.sections) - set("abc"):
        parser.error(f"--sections takes letters of 'abc', got {args.sections!r}")
    # the published protocol is the full run on CUDA: which GPU (--device cuda:1) and the CPU
    # threads (--device cpu, smoke runs only) do not change it, nor an explicit --precision fp16
    out = results_stem("gpu", args.out, args.smoke, changed_options(
        parser, args, ignore=("device", "threads", *(("precision",) if args.precision == "fp16"
                                                     else ()))),
        keys=("meta", "training", "speedups", "section_seconds"), meta_keys=("device_type",))
    try:
        device = tb.resolve_device(args.device)
    except Exception as e:  # noqa: BLE001 - one line and the way out
        print(f"bench_gpu: {device_problem(e)}; this benchmark needs a CUDA GPU, and `--device cpu "
              "--smoke --out PREFIX` checks the script without one", file=sys.stderr)
        return 2
    if device.type == "cpu" and not args.smoke:
        print("bench_gpu: the full run is for a CUDA GPU; on the CPU use --smoke", file=sys.stderr)
        return 2
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    else:  # section (a)'s events record on the current device's stream (review175 F1)
        torch.cuda.set_device(device)
    s = SMOKE if args.smoke else FULL
    precision = args.precision or ("fp16" if device.type == "cuda" else "fp32")
    # the CPU's load around the timings, and whether others' work shared its cores, as the
    # other timing benchmarks record it (break180 F10: a step timed 100x too slow under load
    # was published without a word)
    loads = [cpu_load()]
    started = time.perf_counter()
    results = {
        "meta": {"command": "python " + shlex.join([os.path.relpath(__file__, ROOT),
                                                    *(argv if argv is not None else sys.argv[1:])]),
                 "device": tb.device_name(device), "device_type": device.type, **tb.versions(device),
                 "python": platform.python_version(), "smoke": args.smoke,
                 "threads": args.threads if device.type == "cpu" else None,
                 "torch_threads": torch.get_num_threads(),
                 "precision": precision, "amp": args.amp, "channel_step": args.channel_step,
                 "settings": s},
        "training": [], "table": None, "speedups": [], "skipped": [], "section_seconds": {}}
    skipped = results["skipped"]
    budgets = s["budgets_s"]
    tables: dict = {}

    def section_a(deadline):
        for name in s["train_models"]:
            try:
                with timing_setup_warnings_off():  # (two pruners on one half-masked model)
                    results["training"].append(train_section(name, s, device, deadline, args.amp))
            except OutOfBudget as e:
                skipped.append({"section": "a", "model": name, "reason": str(e)})

    def section_b(deadline):
        name = s["table_model"]
        pm = fxprune.prepare(build(name).eval(), (torch.randn(1, 3, s["speed_size"], s["speed_size"]),))
        tables[name] = measure_table(pm, device, batch=s["table_batch"], precision=precision,
                                     max_points=s["max_points"], deadline=deadline,
                                     threads=args.threads, min_count=args.channel_step)
        results["table"] = {"model": name, **tables[name][1]}

    def section_c(deadline):
        for name in s["speed_models"]:
            try:
                results["speedups"] += speed_section(name, s, device, deadline, precision,
                                                     args.threads, tables, args.channel_step,
                                                     skipped)
            except OutOfBudget as e:
                skipped.append({"section": "c", "model": name, "reason": str(e)})

    def write() -> str:
        results["meta"]["total_seconds"] = round(time.perf_counter() - started, 1)
        loads.append(cpu_load())
        results["meta"].update(
            cores=loads[0][1], load_average_before=loads[0][0], load_average_after=loads[-1][0],
            under_load=cpu_busy(loads, args.threads) if device.type == "cpu" else None)
        out.parent.mkdir(parents=True, exist_ok=True)
        Path(f"{out}.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
        text = markdown(results)
        Path(f"{out}.md").write_text(text)
        return text

    failed = False
    for key, fn in [(k, f) for k, f in (("a", section_a), ("b", section_b), ("c", section_c))
                    if k in args.sections]:
        print(f"bench_gpu: section ({key}) ...", flush=True)
        try:
            run_section(key, budgets, results, skipped, fn)
        except KeyboardInterrupt:
            # (break167 F2: the file was rewritten as an empty run, unmarked, replacing a
            # finished one) nothing measured yet: the file stays as it was (run_script says so)
            if not (results["training"] or results["table"] or results["speedups"]):
                raise
            results["meta"]["interrupted"] = (f"in section ({key}): it did not finish, and the "
                                              "sections after it did not run")
            write()
            print(f"bench_gpu: interrupted in section ({key}); {out}.json holds what was "
                  "measured before, marked interrupted", file=sys.stderr)
            return 130
        except Exception as exc:  # noqa: BLE001 - recorded; a CUDA error ends the run (see below)
            traceback.print_exc()
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            skipped.append({"section": key, "reason": f"failed: {type(exc).__name__}: {first}"})
            failed = True
            # (a CUDA error such as an illegal memory access leaves the context unusable:
            # the later sections would fail on it too, so the run stops here)
            text = write()
            break
        text = write()  # after every section: a later failure keeps what was measured
    print(text)
    return 1 if failed else 0


def markdown(r: dict) -> str:
    m = r["meta"]
    lines = ["# fxprune on a GPU" + (" (smoke run: tiny models, not results)" if m["smoke"] else "")
             + (f" (interrupted {m['interrupted']})" if m.get("interrupted") else ""),
             "", f"`{m.get('command') or 'python benchmarks/bench_gpu.py'}` on {m['device']} "
             f"({m['device_type']}), {m.get('torch_threads', m['threads'])} CPU thread(s), "
             f"torch {m['torch']}, CUDA {m['cuda']}, cuDNN {m['cudnn']}; "
             f"{m['total_seconds']} s in all.", "",
             *([f"Timed under load (load average {m['load_average_before']:.1f} before, "
                f"{m['load_average_after']:.1f} after, on {m['cores']} cores): other processes "
                "shared the CPU, and the times and speedups below are distorted by it.", ""]
               if m.get("under_load") else []),
             f"## (a) training step ({m['amp']} autocast), medians of interleaved steps", "",
             "| model | batch x input | plain (ms) | masked | masked + SMCP in window | outside window "
             "| updates | cost after | finalize max rel. error |", "|---|---|---|---|---|---|---|---|---|"]
    for t in r["training"]:
        lines.append(f"| {t['model']} | {t['batch']} x {t['input']} | {t['plain_ms']:.2f} | "
                     f"{t['masked_ratio']:.3f}x | {t['smcp_window_ratio']:.3f}x | "
                     f"{t['smcp_outside_ratio']:.3f}x | {t['updates']} | "
                     f"{t['cost_after'] if t['cost_after'] is None else round(t['cost_after'], 3)} | "
                     f"{t['finalize_max_rel_error']:.2e} |")
    t = r["table"]
    lines += ["", "## (b) latency table (torch backend)", ""]
    lines.append("not measured (see skipped)" if t is None else
                 f"{t['model']}: batch {t['batch']}, {t['precision']}, grid step {t['step']}, "
                 f"{t['points_timed']} points timed in {t['seconds']} s ({t['distinct_layers']} "
                 "distinct layers)")
    lines += ["", f"## (c) masks at {m['settings']['target']:.0%} of dense cost ({m['precision']}, interleaved"
              f"{', CUDA graphs' if m['device_type'] == 'cuda' else ''})", "",
              "| model | masks by | FLOPs ratio | table ratio | batch | predicted | measured | measured/predicted |",
              "|---|---|---|---|---|---|---|---|"]
    for row in r["speedups"]:
        for key in [k for k in row if k.startswith("b") and isinstance(row[k], dict)]:
            b = row[key]
            lines.append(f"| {row['model']} | {row['masks_by']} | {row['flops_ratio']:.3f} | "
                         f"{row['table_ratio']:.3f} | {key[1:]} | {b['predicted_speedup']:.2f}x "
                         f"({b['predicted_by']}) | {b['measured_speedup']:.2f}x | "
                         f"{b['measured_over_predicted']:.2f} |")
    if r["skipped"]:
        lines += ["", "Skipped: " + "; ".join(f"({s['section']}) {s.get('model', '')} {s['reason']}"
                                                 for s in r["skipped"])]
    lines.append(f"\nSection seconds: {r['section_seconds']}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(run_script(main))
