"""Accuracy under a FLOPs budget on Fashion-MNIST: dense vs SMCP vs its baselines.

    python benchmarks/bench_fashion_mnist.py --epochs 10 --jobs 2

Runs ``fxprune train configs/fashion_mnist_smcp.yaml`` once per row (same seed, epochs and
schedule; only the method's switches differ: the dense row too starts from that recipe's
``model.conv_init: torch_default``, 0.11 pt below the dense recipe's init for dense; the
published tables were measured with ``kaiming_fan_out``), each in its own process with one thread, and
writes ``benchmarks/results/fashion_mnist.{json,md}``. A run whose folder already holds a
finished run of the same resolved config is reused, an interrupted one is resumed from its
checkpoint (training resumes exactly); ``--fresh`` retrains everything. Each row trains in
``--runs-dir``/``<method>_<target %>_e<epochs>_s<seed>``, so runs of another length are kept
beside it. Rows:

* dense: ``prune.method=none``
* SMCP: soft masks, Taylor importance, global knapsack
* hard masks (HALP-style: pruned channels never return, gradients masked)
* magnitude importance (L2 norm of the weights reading a channel) instead of Taylor
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from fxprune.deploy.common import cpu_name
from fxprune.recipe_config import resolve_config
from fxprune.run_io import RUN_MARKER
from fxprune.train import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_common import (at_least, changed_options, first_line_of, fraction_kept,  # noqa: E402
                          refuse_unusable_run_folder, results_stem, run_script, usage_error)
CONFIG = ROOT / "configs" / "fashion_mnist_smcp.yaml"
# the dense row drops the recipe's pruning keys (a recipe with prune.* keys and no method is
# refused as a mistake)
_PRUNE_KEYS = [k for k in yaml.safe_load(CONFIG.read_text())["prune"] if k != "method"]
METHODS = {
    "dense": ["prune.method=none", *(f"~prune.{k}" for k in _PRUNE_KEYS)],
    "SMCP": [],
    "hard masks": ["prune.masks=hard"],
    "magnitude": ["prune.importance=magnitude"],
}


def _saved_config(out: Path, name: str) -> dict | None:
    """The config a run in ``out`` saved in ``name`` (its config.yaml or checkpoint),
    resolved as today's planned one is: a key fxprune added since (``model.kwargs``) takes its
    default, so a row trained before an upgrade is reused or resumed, not trained again
    (break192 F2); None for no file or one that no longer resolves."""
    path = out / name
    if not path.is_file():
        return None
    if name == "config.yaml":
        saved = yaml.safe_load(path.read_text())
    else:
        import torch

        saved = torch.load(path, map_location="cpu", weights_only=True).get("config")
    try:
        return resolve_config(saved)
    except ConfigError:
        return None


def planned_config(name: str, target: float | None, seed: int, epochs: int, out: Path):
    """The --set list of a row and the config it gives (refused here, before any training)."""
    # on the CPU the results file names (break56 #3: the recipe's `device: auto` takes CUDA)
    sets = [f"optim.epochs={epochs}", f"seed={seed}", "num_threads=1", "device=cpu",
            "log.progress=false",
            "log.tensorboard=false", *METHODS[name]]
    if target is not None:
        sets.append(f"prune.target={target}")
    return sets, load_config(CONFIG, [*sets, f"out={json.dumps(str(out))}"])


# the first line of every log this benchmark writes: it replaces only such a log (break180 F4:
# a user's file at the log's path was truncated without a word)
LOG_HEADER = "# bench_fashion_mnist.py: fxprune train's output for the run folder beside this log"


def log_path(out: Path) -> Path:
    return Path(f"{out}.log")


def own_log(log: Path, out: Path) -> bool:
    """Whether ``log`` (a file) is one this benchmark wrote for the run folder ``out``: its
    first line is :data:`LOG_HEADER`, or, for a log written before the header, the first line
    ``fxprune train`` prints for that very folder."""
    first = first_line_of(log)
    if first is None:
        return False
    # an older log names its run folder as it was then: a runs folder moved since is still
    # its own (break184 F4)
    said = re.match(r"fxprune train: (.+?) on ", first)
    # one from before fxprune train named its folder (6ec152e) begins with the schedule of the
    # pruned run fxprune train made beside it (break204 F3: refused as a file of the user's)
    # (a dense row's begins with its first epoch: break209 F5)
    older = (re.match(r"prune \(\w+\) schedule in optimizer steps |epoch 1/\d+: ", first)
             is not None and (out / RUN_MARKER).is_file())
    return first == LOG_HEADER or older or (said is not None
                                            and Path(said.group(1)).name == out.name)


def refuse_others_log(out: Path, what: str) -> None:
    """Exit (one line) before any training if the row's log path holds a file this benchmark
    did not write (:func:`own_log`), which its run would replace."""
    log = log_path(out)
    if (log.exists() or log.is_symlink()) and not (
            log.is_file() and not log.is_symlink() and own_log(log, out)):
        usage_error(f"{what}: {log} exists and is not a log this benchmark wrote; its run "
                    "would replace it: move it away, or choose another --runs-dir")


def run_one(name: str, target: float | None, seed: int, epochs: int, out: Path,
            fresh: bool) -> dict:
    sets, planned = planned_config(name, target, seed, epochs, out)
    cmd = [sys.executable, "-m", "fxprune.cli", "train", str(CONFIG), "--out", str(out)]
    for s in sets:
        cmd += ["--set", s]
    log = log_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    finished = (out / "results.json").is_file() and _saved_config(out, "config.yaml") == planned
    if fresh or not finished:
        # An interrupted run of exactly this config continues where its checkpoint left off.
        resume = not fresh and _saved_config(out, "checkpoint.pt") == planned
        with open(log, "a" if resume else "w") as f:
            if not resume:
                print(LOG_HEADER, file=f, flush=True)
            proc = subprocess.run(cmd + ["--resume" if resume else "--overwrite"], stdout=f,
                                  stderr=subprocess.STDOUT, cwd=ROOT)
        if proc.returncode != 0:
            raise RuntimeError(f"{name} @ {target}: exit {proc.returncode}, see {log}")
    result = json.loads((out / "results.json").read_text())
    result.update(row=name, target=target, seed=seed,
                  command=shlex.join(cmd[2:]))
    return result


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# Fashion-MNIST: accuracy at a FLOPs budget",
        "",
        f"Command: `{meta['command']}`",
        f"Machine: {meta['cpu']}, {meta['cores']} cores, device {meta['device']}; "
        f"{meta['jobs']} runs at a time, 1 thread each, batch {meta['batch']}; "
        f"torch {meta['torch']}; {meta['runtime_s']} s in all. Model: ResNetFMNIST widths {meta['widths']}, {meta['epochs']} epochs, "
        f"seeds {meta['seeds']}; schedule from `configs/fashion_mnist_smcp.yaml`.",
        "",
        "| method | FLOPs target | seed | test accuracy | FLOPs (final/dense) | params (final/dense) | train time (s) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:  # (break80 F12: rows of several seeds could not be told apart)
        target = "-" if r["target"] is None else f"{r['target'] * 100:g}%"
        lines.append(f"| {r['row']} | {target} | {r['seed']} | {r['accuracy'] * 100:.2f}% | "
                     f"{r['flops_ratio']:.3f} | {r['params_ratio']:.3f} | {r['train_time_s']:.0f} |")
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["row"], r["target"]), []).append(r["accuracy"])
    if any(len(accs) > 1 for accs in groups.values()):
        lines += ["", "| method | FLOPs target | seeds | test accuracy (mean +- std) |",
                  "| --- | --- | --- | --- |"]
        for (name, target), accs in groups.items():
            spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
            lines.append(f"| {name} | {'-' if target is None else f'{target * 100:g}%'} | "
                         f"{len(accs)} | {statistics.fmean(accs) * 100:.2f} +- "
                         f"{spread * 100:.2f}% |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=at_least(1), default=10)
    parser.add_argument("--targets", type=fraction_kept, nargs="+", default=[0.5, 0.3])
    parser.add_argument("--seeds", type=at_least(0), nargs="+", default=[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--jobs", type=at_least(1), default=2, help="runs at a time (one thread each)")
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "bench_fashion_mnist")
    parser.add_argument("--fresh", action="store_true",
                        help="retrain every run instead of reusing or resuming the saved ones")
    parser.add_argument("--out", type=Path, default=None,
                        help="results path without extension (default benchmarks/results/fashion_mnist)")
    args = parser.parse_args(argv)
    args.out = results_stem("fashion_mnist", args.out, changed=changed_options(
        parser, args, ignore=("jobs", "runs_dir", "fresh")), keys=("meta", "rows"),
        meta_keys=("epochs", "seeds", "widths"))
    # the runs train in ROOT (their cwd): a relative folder is the caller's, made absolute
    args.runs_dir, args.out = args.runs_dir.resolve(), args.out.resolve()

    plan = []
    for seed in args.seeds:
        for name in args.methods:
            for target in ([None] if name == "dense" else args.targets):
                # the target as given, in percent (int() put 0.5 and 0.505 in one folder, both
                # trained into it at once, and 0.29 in "_28": break56 #2); the epochs too (a
                # 1-epoch try replaced the 10-epoch run of its row with --overwrite: break58 #5)
                tag = (f"{name.replace(' ', '_')}_{'dense' if target is None else f'{target * 100:g}'}"
                       f"_e{args.epochs}_s{seed}")
                plan.append((name, target, seed, args.runs_dir / tag))
    folders = [d for *_, d in plan]
    twice = sorted({d.name for d in folders if folders.count(d) > 1})
    if twice:
        parser.error(f"two rows would train in one run folder ({', '.join(twice)}): a target, "
                     "seed or method given twice, or targets closer than 0.00001")
    for name, target, seed, out in plan:  # every row's config checked before any trains
        try:
            planned_config(name, target, seed, args.epochs, out)
        except ConfigError as exc:  # one line, as bench_methods says it (break57 #11)
            parser.error(f"row {name!r} at target {target}: {exc}")
        # a user's file in the row's folder or at its log's path: one line, before any run
        # trains (break180 F4, F6: the log was truncated, then a RuntimeError traceback)
        what = f"row {name!r} at target {target} seed {seed}"
        refuse_unusable_run_folder(out, what)
        refuse_others_log(out, what)
    print(f"{len(plan)} runs, {args.jobs} at a time, {args.epochs} epochs each", flush=True)
    started = time.perf_counter()
    pool, stopping = ThreadPoolExecutor(args.jobs), threading.Event()

    def unless_stopping(*run):  # (review169 F3: a queued run could start before the cancel)
        if stopping.is_set():
            raise KeyboardInterrupt
        return run_one(*run)

    try:
        futures = [pool.submit(unless_stopping, n, t, s, args.epochs, d, args.fresh)
                   for n, t, s, d in plan]
        rows = []
        for f in futures:
            rows.append(f.result())
            r = rows[-1]
            print(f"{r['row']:>12} target={r['target']} acc={r['accuracy']:.4f} "
                  f"flops={r['flops_ratio']:.3f} ({r['train_time_s']:.0f}s training)", flush=True)
    except BaseException:
        # Ctrl-C (or a failed run): the queued runs must not start (break167 F1: leaving the
        # `with` block waited for every queued run, which went on training); the running ones
        # got the terminal's SIGINT too and stop at their next step
        stopping.set()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()

    import torch

    recipe = load_config(CONFIG)
    meta = {
        "command": "python benchmarks/bench_fashion_mnist.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "cpu": cpu_name(), "cores": os.cpu_count(), "jobs": args.jobs, "torch": torch.__version__,
        "epochs": args.epochs, "seeds": args.seeds, "widths": recipe["model"]["widths"],
        "device": "cpu", "threads": 1, "batch": recipe["data"]["batch_size"],
        "runtime_s": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    table = markdown(rows, meta)
    Path(f"{args.out}.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_script(main, 'run the same command again: finished runs are read back, interrupted ones resume from their last epoch'))
