"""Methods side by side on the Fashion-MNIST recipe at 50% of the dense FLOPs.

    python benchmarks/bench_methods.py                     # the issue's protocol: 10 epochs, 3 seeds
    python benchmarks/bench_methods.py --smoke             # minutes: synthetic images, tiny net, 1 seed

Every row trains the same model for the same total epochs with the same optimizer and schedule
(``configs/fashion_mnist_smcp.yaml``'s non-prune sections, so every row, dense included, starts
from its ``model.conv_init: torch_default``, 0.11 pt below the dense recipe's init for dense;
tables published before it were measured with ``kaiming_fan_out``); only ``prune`` differs, and every
pruning schedule is scaled to the epoch count (fractions below are of the total epochs E):

* dense: no pruning
* SMCP: warm-up 0.1 E, ramp 0.5 E, cool-down 0.3 E, a knapsack every 0.02 E (its recipe)
* CUCB: budget mode (active sets under 50% FLOPs; gathered execution), random warm-up 0.05 E, bandit until 0.7 E,
  then the top channels by mu fine-tune; CUCB random: the same with random active sets
* CCP ratio (one kept fraction for every group, the largest under 50% FLOPs) and CCP adaptive
  (counts per group by the allocator under 50% FLOPs): dense training to 0.3 E, statistics over the 0.025 E before, fine-tune
* one-shot magnitude and one-shot Taylor (importance over 0.025 E) at 0.3 E, fine-tune

Also: CCP's greedy + local search solver against exhaustive search on random instances (hit rate),
and CUCB's measured training step time at rho 0.3 / 0.5 / 0.7 vs full width (batch and model of
the recipe), and its whole training time vs dense (from the rows). Results (mean +- std over the
seeds) go to ``benchmarks/results/methods.{json,md}`` (``methods_smoke`` with ``--smoke``),
stating machine, threads, batch and torch version. Runs go one after another in this process
with ``--threads`` threads each.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_common import (apply_smoke_defaults, at_least, changed_options,  # noqa: E402
                          refuse_unusable_run_folder, refuse_unwritable, results_stem,
                          run_script)
from fxprune.train import ConfigError, load_config, resolve_config, train  # noqa: E402

BASE = ROOT / "configs" / "fashion_mnist_smcp.yaml"


def rows_for(epochs: float) -> dict[str, dict]:
    """Each row's ``prune`` section, its schedule scaled to ``epochs``."""
    E = float(epochs)
    short = max(0.025 * E, 0.1)  # statistics windows: at least a tenth of an epoch
    common = {"target": 0.5, "cost": "flops", "channel_step": 4}
    return {
        "dense": {"method": "none"},
        "SMCP": dict(load_config(BASE)["prune"]),  # its schedule is in fractions of the run
        "CUCB": {"method": "cucb", **common, "mode": "budget", "c": 0.25, "warmup_epochs": 0.05 * E,
                 "explore_epochs": 0.7 * E},
        "CUCB random": {"method": "cucb_random", **common, "mode": "budget", "warmup_epochs": 0.05 * E,
                        "explore_epochs": 0.7 * E},
        "CCP ratio": {"method": "ccp", **common, "mode": "ratio", "ratio": None,
                      "collect_epochs": short, "prune_at_epochs": 0.3 * E},
        "CCP adaptive": {"method": "ccp", **common, "mode": "adaptive", "collect_epochs": short,
                         "prune_at_epochs": 0.3 * E},
        "one-shot magnitude": {"method": "magnitude", **common, "prune_at_epochs": 0.3 * E},
        "one-shot Taylor": {"method": "taylor", **common, "prune_at_epochs": 0.3 * E,
                            "window_epochs": short},
    }


SMOKE = {"data": {"name": "synthetic", "synthetic_train": 640, "synthetic_test": 128, "batch_size": 32,
                  "test_batch_size": 128},
         "model": {"widths": [8, 16, 16]}}


def folder_name(row: str) -> str:
    """A row's run-folder name: letters, digits, '.', '-' and '_' (a space or a path separator
    becomes '_', so "../x" stays inside --runs-dir)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", row).lstrip(".") or "_"


def row_config(name: str, prune: dict, seed: int, epochs: float, runs: Path, threads: int,
               smoke: bool) -> dict:
    """The resolved recipe of one row and seed (ConfigError when a row's keys are wrong). Its
    run folder names the protocol (smoke runs in their own folder, the epochs in the name), so
    a smoke or shorter run never replaces the published protocol's runs (break56 #1); the
    device is the CPU the results file states (break56 #3: `device: auto` trained on CUDA).
    Smoke runs go to ``runs/smoke``: inside the folder given (a sibling ``<runs>_smoke`` was
    ``../<cwd>_smoke`` for ``--runs-dir .`` and failed for ``/``: break58)."""
    cfg = copy.deepcopy(load_config(BASE))
    cfg["prune"] = prune
    runs = runs.expanduser().resolve()
    folder = runs / "smoke" if smoke else runs
    cfg.update(seed=seed, num_threads=threads, device="cpu",
               out=str(folder / f"{folder_name(name)}_e{int(epochs)}_s{seed}"))
    cfg["optim"]["epochs"] = int(epochs)
    cfg["log"].update(progress=False, tensorboard=False)
    if smoke:
        for section, values in SMOKE.items():
            cfg[section].update(values)
    return resolve_config(cfg)


def run_row(name: str, prune: dict, seed: int, epochs: float, runs: Path, threads: int,
            smoke: bool, reuse: bool = False) -> dict:
    resolved = row_config(name, prune, seed, epochs, runs, threads, smoke)
    done = Path(resolved["out"]) / "results.json"
    if reuse and done.is_file() and load_config(Path(resolved["out"]) / "config.yaml") == resolved:
        result = json.loads(done.read_text())  # this very row ran to the end before
        # ... unless a CUCB row ran before its draws followed the run's seed (results without
        # method_arguments): every seed drew alike then (review189 R3)
        if not (str(prune.get("method", "")).startswith("cucb") and "method_arguments" not in result):
            result.update(row=name, seed=seed, reused=True)
            return result
        # (break204 F5: its files were replaced without a word)
        print(f"row {name!r} seed {seed}: trained again, not reused: its CUCB run predates "
              "draws that follow the run's seed (its results lack method_arguments)", flush=True)
    result = train(resolved, overwrite=True)
    result.update(row=name, seed=seed)
    return result


def solver_hit_rate(n: int = 12, trials: int = 60) -> dict:
    from fxprune.methods.ccp import best_subsets, keep_form, solve_exhaustive

    hits = greedy = 0
    gaps = []
    for seed in range(trials):
        rng = np.random.default_rng(seed)
        t = rng.normal(size=(3 * n, n)) + rng.normal(size=n) * 0.5
        S = keep_form(t.mean(0), t.T @ t / len(t))
        p = 3 + seed % 7
        _, exact = solve_exhaustive(S, p)
        _, val = best_subsets(S, [p])[p]
        _, val_g = best_subsets(S, [p], swaps=False)[p]
        tol = 1e-9 * max(1.0, abs(exact))
        hits += val <= exact + tol
        greedy += val_g <= exact + tol
        gaps.append(val - exact)
    return {"n": n, "instances": trials, "greedy_hit_rate": greedy / trials,
            "greedy_swap_hit_rate": hits / trials, "mean_gap": float(np.mean(gaps))}


def cucb_step_times(widths, batch: int, rhos, steps: int, threads: int) -> dict:
    """ms per training step (forward, backward, pruner.step, optimizer.step) of the recipe's
    model at full width (prepared, masks all 1) and under CUCB at each rho (ratio mode: rho of
    every group active; gathered execution, optimizer protection included)."""
    import fxprune
    from fxprune.methods.cucb import CUCB
    from fxprune.models import build_model

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, 28, 28, generator=g).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), generator=g)
    out = {}
    for rho in [None, *rhos]:
        torch.manual_seed(0)
        model = build_model("resnet_fmnist", widths=list(widths))
        pm = fxprune.prepare(model, (x[:1].contiguous(),)).to(memory_format=torch.channels_last)
        pruner = None if rho is None else CUCB(pm, rho=rho, warmup=0, channel_step=1, cost="flops")
        opt = torch.optim.SGD(pm.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        if pruner is not None:
            pruner.attach_optimizer(opt)
        times = []
        for _ in range(steps + 2):
            start = time.perf_counter()
            forward = pm if pruner is None else pruner.train_forward
            loss = torch.nn.functional.cross_entropy(forward(x), y)
            loss.backward()
            if pruner is not None:
                pruner.step(loss)
            opt.step()
            opt.zero_grad()
            times.append(time.perf_counter() - start)
        key = "full width" if rho is None else f"rho {rho}"
        out[key] = {"ms_per_step": 1000 * statistics.median(times[2:]),
                    "active_flops": 1.0 if pruner is None else pruner.active_cost()}
    return out


def summarize(rows: list[dict]) -> list[dict]:
    out = []
    for name in dict.fromkeys(r["row"] for r in rows):
        rs = [r for r in rows if r["row"] == name]

        def ms(key):
            v = [float(r[key]) for r in rs]
            return statistics.mean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)

        out.append({"row": name, "seeds": [r["seed"] for r in rs], "accuracy": ms("accuracy"),
                    "flops_ratio": ms("flops_ratio"), "params_ratio": ms("params_ratio"),
                    "train_time_s": ms("train_time_s"),
                    "finalize_mismatched_samples": max(r.get("finalize_mismatched_samples", 0) for r in rs)})
    return out


def plot_rows(summary: list[dict], runs: list[dict]) -> list[dict]:
    """One point per row for ``fxprune plot`` (its ``rows`` format): the seeds' mean accuracy
    (fraction) with its standard deviation, mean FLOPs and params per image, and the cost
    target the row pruned to (None for dense)."""
    out = []
    for s in summary:
        rs = [r for r in runs if r["row"] == s["row"]]
        out.append({"row": s["row"], "method": rs[0]["method"], "seeds": s["seeds"],
                    "target": rs[0].get("target"),  # (break60 #5: plot's label names it)
                    "accuracy": s["accuracy"][0], "accuracy_std": s["accuracy"][1],
                    "flops": statistics.mean(float(r["flops"]) for r in rs),
                    "params": statistics.mean(float(r["params"]) for r in rs),
                    "flops_ratio": s["flops_ratio"][0]})
    return out


def markdown(summary, solver, timing, meta) -> str:
    lines = ["# Methods at 50% of the dense FLOPs" + (" (SMOKE: synthetic data, not a result)" if meta["smoke"] else ""),
             "", f"Command: `{meta['command']}`",
             f"Machine: {meta['cpu']}, {meta['cores']} cores, device cpu, {meta['threads']} thread(s) per run, "
             f"torch {meta['torch']}; batch {meta['batch']}; {meta['epochs']} epochs per row; seeds {meta['seeds']}.",
             "", "| method | test accuracy | FLOPs (final/dense) | params (final/dense) | train time (s) |",
             "| --- | --- | --- | --- | --- |"]
    for r in summary:
        (a, sa), (f, sf), (p, sp), (t, st) = r["accuracy"], r["flops_ratio"], r["params_ratio"], r["train_time_s"]
        lines.append(f"| {r['row']} | {100 * a:.2f} +- {100 * sa:.2f}% | {f:.3f} +- {sf:.3f} | "
                     f"{p:.3f} +- {sp:.3f} | {t:.0f} +- {st:.0f} |")
    lines += ["", f"CCP solver, n = {solver['n']}, {solver['instances']} random instances: greedy elimination hits "
              f"the exhaustive optimum {solver['greedy_hit_rate']:.0%}, greedy + local search "
              f"{solver['greedy_swap_hit_rate']:.0%} (mean gap {solver['mean_gap']:.3g}).",
              "", "CUCB training step (gathered execution: the active sub-network runs):", "",
              "| active | active FLOPs | ms / step |", "| --- | --- | --- |"]
    for k, v in timing.items():
        lines.append(f"| {k} | {v['active_flops']:.3f} | {v['ms_per_step']:.1f} |")
    if meta.get("cucb_vs_dense_time") is not None:
        lines += ["", f"CUCB whole training time / dense: {meta['cucb_vs_dense_time']:.2f}"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true",
                        help="synthetic images, tiny net, 1 epoch, 1 seed, 3 timing steps "
                             "(options given stay as given)")
    parser.add_argument("--epochs", type=at_least(1), default=10)
    parser.add_argument("--seeds", type=at_least(0), nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", default=None, help="a subset of the rows, by name")
    parser.add_argument("--extra", nargs="+", default=[], metavar="NAME=JSON",
                        help="more rows: the SMCP row with these prune keys changed, e.g. "
                             "'late={\"warmup_fraction\": 0.15}'")
    parser.add_argument("--reuse", action="store_true",
                        help="a row whose run folder holds a finished run of the same config is "
                             "read, not trained again (an interrupted benchmark resumes)")
    parser.add_argument("--threads", type=at_least(1), default=1)
    parser.add_argument("--timing-steps", type=at_least(1), default=20,
                        help="timed CUCB steps per width (after 2 untimed ones)")
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "bench_methods")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.smoke:  # smaller defaults; what was given stays (break180 F5: --epochs 2,
        # --seeds 0 1 and --timing-steps were replaced without a word)
        apply_smoke_defaults(parser, argv, args, {"epochs": 1, "seeds": args.seeds[:1],
                                                  "timing_steps": 3})
    out = results_stem("methods", args.out, args.smoke, changed_options(
        parser, args, ignore=("reuse", "runs_dir")), keys=("meta", "summary", "solver", "runs"))
    refuse_unwritable(args.runs_dir / "row", (), option="--runs-dir")  # (break167 F3)
    threads_before = torch.get_num_threads()
    plan = rows_for(args.epochs)
    for item in args.extra:
        name, _, spec = item.partition("=")
        if name in plan:  # break56 #4: an SMCP row labelled "dense" replaced the dense row
            parser.error(f"--extra {item!r}: {name!r} is a row already; give the extra row "
                         "another name")
        try:
            keys = json.loads(spec)
        except json.JSONDecodeError as exc:
            parser.error(f"--extra {item!r}: not NAME=JSON ({exc})")
        if not isinstance(keys, dict):
            parser.error(f"--extra {item!r}: the JSON is prune keys, an object ({{...}})")
        plan[name] = {**plan["SMCP"], **keys}
    names = args.rows or list(plan)
    unknown = [n for n in names if n not in plan]
    if unknown:
        parser.error(f"unknown rows {unknown}; rows: {list(plan)}")
    folders = [folder_name(n) for n in names]
    shared = sorted({f for f in folders if folders.count(f) > 1})
    if shared:  # break57 #10: "CUCB random" and "CUCB_random" trained into one folder
        parser.error(f"rows {[n for n in names if folder_name(n) in shared]} would share the run "
                     f"folder {shared[0]}; rename one")
    for name in names:  # every row's keys checked before the first trains (break56 #5)
        try:
            row_config(name, plan[name], args.seeds[0], args.epochs, args.runs_dir, args.threads,
                       args.smoke)
        except ConfigError as exc:
            parser.error(f"row {name!r}: {exc}")
    for seed in args.seeds:  # a user's file in a row's folder: one line, before any training
        for name in names:
            refuse_unusable_run_folder(row_config(name, plan[name], seed, args.epochs,
                                                  args.runs_dir, args.threads, args.smoke)["out"],
                                       f"row {name!r} seed {seed}")
    rows = []
    started = time.perf_counter()
    try:
        for seed in args.seeds:
            for name in names:
                r = run_row(name, plan[name], seed, args.epochs, args.runs_dir, args.threads, args.smoke,
                            args.reuse)
                rows.append(r)
                print(f"{name:>20} seed {seed}: acc {r['accuracy']:.4f} flops {r['flops_ratio']:.3f} "
                      f"({r['train_time_s']:.0f}s)", flush=True)
        solver = solver_hit_rate()
        cfg = load_config(BASE)
        widths = SMOKE["model"]["widths"] if args.smoke else cfg["model"]["widths"]
        batch = SMOKE["data"]["batch_size"] if args.smoke else cfg["data"]["batch_size"]
        timing = cucb_step_times(widths, batch, (0.3, 0.5, 0.7), args.timing_steps, args.threads)
    finally:
        torch.set_num_threads(threads_before)
    summary = summarize(rows)
    by = {s["row"]: s for s in summary}
    from fxprune.deploy.common import cpu_name

    meta = {"command": "python benchmarks/bench_methods.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
            "smoke": args.smoke, "cpu": cpu_name(), "cores": os.cpu_count(), "threads": args.threads,
            "torch": torch.__version__, "device": "cpu", "epochs": args.epochs, "seeds": args.seeds,
            "batch": batch, "runtime_s": round(time.perf_counter() - started, 1),
            "cucb_vs_dense_time": (by["CUCB"]["train_time_s"][0] / by["dense"]["train_time_s"][0]
                                   if "CUCB" in by and "dense" in by and by["dense"]["train_time_s"][0] else None)}
    out.parent.mkdir(parents=True, exist_ok=True)
    # "rows": what `fxprune plot` draws (break56 #15: the file had none and was refused)
    Path(f"{out}.json").write_text(json.dumps({"meta": meta, "summary": summary, "solver": solver,
                                               "cucb_step_time": timing, "runs": rows,
                                               "rows": plot_rows(summary, rows)}, indent=2) + "\n")
    table = markdown(summary, solver, timing, meta)
    Path(f"{out}.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_script(main, 'add --reuse to the same command to read the finished rows back'))
