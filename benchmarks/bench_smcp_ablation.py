"""Where SMCP loses accuracy on a short schedule: an ablation of its mask-update options.

    python benchmarks/bench_smcp_ablation.py                            # the short schedule, 3 seeds
    python benchmarks/bench_smcp_ablation.py --smoke                    # ~2 minutes: synthetic data

The short schedule of issue 12: a small residual CNN with a concat branch, 10,000 Fashion-MNIST
training images (no augmentation), 2 epochs, SGD (momentum 0.9, Nesterov, weight decay 5e-4) with
a one-cycle learning rate (peak 0.1), batch 128; SMCP to 50% of the dense FLOPs with warm-up 10%
of the steps, the cost target ramping until 60%, masks frozen from 75%, a knapsack every 20
steps, channel_step 8 (SMCP's recipe otherwise: Taylor importance, soft masks, BN rescale
``"kept_fraction"`` although fxprune's default is ``"off"`` since this benchmark, masked decay
2e-4). Rows differ only in SMCP's options (rows without ``hysteresis`` in their options use the
default, 3 since this benchmark; ``--extra`` adds rows, e.g. ``'h3 off={"hysteresis": 3,
"bn_rescale": "off"}'``):

* dense: no pruning
* SMCP: both options off (SMCP as published; ``hysteresis=0``, the default before this benchmark)
* +bn_recal: ``bn_recalibrate=N`` (BN statistics re-estimated over N batches after a mask change)
* +hysteresis: ``hysteresis=H`` (a masked channel must beat a kept one by H to come back)
* both: the first value of each

Per row: final test accuracy (full 10,000-image test split, masked model; ``finalize`` is exact
and checked by the test suite), the mean test accuracy measured on 1,000 test images a few
steps after each mid-ramp update (the dips after re-solves), the channel flips (returned +
pruned) after the first update, the channels that came back (returned), and the final FLOPs
fraction. Mean +- std over the seeds go
to ``benchmarks/results/smcp_ablation.{json,md}`` with machine, threads, batch and command.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import fxprune  # noqa: E402
from fxprune.deploy.common import cpu_name  # noqa: E402
from bench_common import (apply_smoke_defaults, at_least, changed_options, fraction_kept,  # noqa: E402
                          non_negative, positive, results_stem, run_script, usage_error)
from fxprune.data import make_loaders  # noqa: E402
from fmnist_nets import ConcatResNet  # noqa: E402


def variants(bn_recal: list[int], hysteresis: list[float]) -> dict[str, dict | None]:
    """Rows: dense, SMCP as it was, each option alone at each value, both at the first values."""
    rows: dict[str, dict | None] = {"dense": None, "SMCP": {"hysteresis": 0.0}}
    rows.update({f"+bn_recal {n}": {"bn_recalibrate": n, "hysteresis": 0.0} for n in bn_recal})
    rows.update({f"+hysteresis {h}": {"hysteresis": h} for h in hysteresis})
    rows[f"+bn_recal {bn_recal[0]} +hysteresis {hysteresis[0]}"] = {
        "bn_recalibrate": bn_recal[0], "hysteresis": hysteresis[0]}
    return rows


@torch.no_grad()
def accuracy(model, loader, limit=None) -> float:
    was = model.training
    model.eval()
    correct = seen = 0
    for x, y in loader:
        correct += (model(x).argmax(1) == y).sum().item()
        seen += len(y)
        if limit is not None and seen >= limit:
            break
    model.train(was)
    return correct / seen


def base_options(args, total: int) -> dict:
    """SMCP's arguments on the short schedule of ``total`` steps (a row's options go over them)."""
    return dict(target=args.target, cost="flops", warmup=round(0.1 * total),
                ramp=round(0.6 * total) - round(0.1 * total), freeze_after=round(0.75 * total),
                update_every=args.update_every, channel_step=8, masked_decay=2e-4,
                bn_rescale="kept_fraction")  # SMCP's; off by default since (a row sets it)


def data_config(args) -> dict:
    return {"name": "synthetic" if args.smoke else "fashion_mnist", "batch_size": args.batch,
            "subset_train": None if args.smoke else args.train_images, "augment": False,
            "test_batch_size": 1000}


def net_widths(args) -> tuple[int, ...]:
    return (8, 16, 32) if args.smoke else (16, 32, 64)


def smcp_problem(options: dict, args, total: int) -> str | None:
    """Why SMCP refuses ``options`` over the schedule of ``total`` steps the rows train on, on
    the net they train (break83 F1: a fixed 100-step schedule passed rows that failed on the
    run's 32 steps, and refused rows its 158 allow), or None."""
    pm = fxprune.prepare(ConcatResNet(net_widths(args)), (torch.zeros(1, 1, 28, 28),))
    try:
        fxprune.SMCP(pm, **{**base_options(args, total), **options})
    except Exception as exc:  # noqa: BLE001 - any refusal, said in one line
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


def run_one(options: dict | None, seed: int, args) -> dict:
    train, test = make_loaders(data_config(args), seed=seed)
    torch.manual_seed(seed)
    model = ConcatResNet(net_widths(args))
    x0 = next(iter(test))[0][:1]
    pm = fxprune.prepare(model, (x0,)) if options is not None else model
    steps_per_epoch = len(train)
    total = args.epochs * steps_per_epoch
    pruner = None
    if options is not None:
        pruner = fxprune.SMCP(pm, **{**base_options(args, total), **options})
    opt = torch.optim.SGD(pm.parameters(), lr=args.lr, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=total)
    mid_ramp, probe_at = [], None
    start = time.perf_counter()
    for epoch in range(args.epochs):
        train.set_epoch(epoch)
        for x, y in train:
            F.cross_entropy(pm(x), y).backward()
            if pruner is not None:
                record = pruner.step()
                if record is not None and record["step"] < pruner.schedule.warmup + pruner.schedule.ramp:
                    probe_at = pruner.step_count + args.probe_after
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            if pruner is not None and pruner.step_count == probe_at:
                mid_ramp.append(accuracy(pm, test, limit=1000))
    train_s = time.perf_counter() - start
    row = {"accuracy": accuracy(pm, test), "train_s": round(train_s, 1), "seed": seed}
    if pruner is not None:
        row.update(cost=pruner.cost(), mid_ramp_accuracy=statistics.fmean(mid_ramp) if mid_ramp else None,
                   flips=sum(r["returned"] + r["pruned"] for r in pruner.history[1:]),
                   returned=sum(r["returned"] for r in pruner.history),
                   updates=len(pruner.history))
    return row


def summarize(rows: list[dict]) -> dict:
    out = {}
    for key in ("accuracy", "mid_ramp_accuracy", "flips", "returned", "cost", "train_s"):
        vals = [r[key] for r in rows if r.get(key) is not None]
        if vals:
            out[key] = {"mean": statistics.fmean(vals),
                        "std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "n": len(vals)}
    return out


def fmt(s: dict | None, scale=1.0, digits=2) -> str:
    if s is None:
        return "-"
    return f"{s['mean'] * scale:.{digits}f} +- {s['std'] * scale:.{digits}f}"


# What --append requires of the file's earlier runs besides the schedule: (where in meta, key,
# the option that sets it, its default for a file that does not record it). The markdown header
# prints one batch and thread count for every row, and "vs dense" compares rows across runs.
SAME_RUN = [("machine", "batch", "--batch", None), ("machine", "threads", "--threads", None),
            (None, "probe_after", "--probe-after", 10)]


def check_append(stem: Path, old_meta: dict, meta: dict) -> None:
    """Exit (one line) if the rows of ``old_meta``'s file were trained otherwise than this run's
    (``meta``): another schedule, seeds, batch, thread count or mid-ramp probe."""
    if old_meta.get("schedule") != meta["schedule"]:
        usage_error(f"--append: {stem}.json was measured on another schedule; drop --append "
                    "or write to another --out")
    # "vs dense" compares rows across runs: on other seeds it compared other draws (break80 F2)
    for run in [old_meta, *old_meta.get("runs", [])]:
        theirs = run.get("seeds")
        if theirs is not None and sorted(theirs) != sorted(meta["seeds"]):
            usage_error(f"--append: {stem}.json has rows trained on seeds {theirs}, this run "
                        f"on {meta['seeds']}; pass --seeds {' '.join(map(str, theirs))}, or "
                        "write to another --out")
    for run in [old_meta, *old_meta.get("runs", [])]:
        for section, key, flag, default in SAME_RUN:
            where = run.get(section) if section else run
            theirs = where.get(key) if isinstance(where, dict) else None
            theirs = default if theirs is None else theirs  # None: not recorded (older file)
            ours = (meta[section] if section else meta)[key]
            if theirs is not None and theirs != ours:
                usage_error(f"--append: {stem}.json has rows trained at {flag} {theirs}, "
                            f"this run at {ours}; pass {flag} {theirs}, or write to another "
                            "--out")


def write_results(stem: Path, meta: dict, results: dict, append: bool = False) -> list[str]:
    """Write ``stem.json`` and ``stem.md``; with ``append``, rows are added to (or replace
    same-named rows of) the file already there, and each run's command and machine are kept.
    An append refuses a file trained on another schedule, batch or thread count
    (:func:`check_append`): one header describes every row."""
    runs = [meta]  # each run's command and machine
    if append and Path(f"{stem}.json").is_file():
        old = json.loads(Path(f"{stem}.json").read_text())
        check_append(stem, old["meta"], meta)
        runs = old["meta"].get("runs", [old["meta"]]) + runs
        results = {**old["rows"], **results}
    meta = {**meta, "runs": [{k: r.get(k) for k in ("command", "machine", "seeds")}
                             | ({"probe_after": r["probe_after"]} if "probe_after" in r else {})
                             for r in runs]}
    Path(f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": results}, indent=2) + "\n")
    dense = results.get("dense", {}).get("summary", {}).get("accuracy")
    m = meta["machine"]
    lines = [f"# SMCP ablation on the short schedule{' (smoke)' if meta['smoke'] else ''}", "",
             *[f"`{r['command']}`  " for r in meta["runs"]], "",
             f"{m['cpu']}, {m['cores']} cores, {m['threads']} thread(s), batch {m['batch']}, "
             f"torch {m['torch']}, CPU; mean +- std over the seeds of each run.", "",
             "| row | seeds | test acc. (%) | vs dense (pt) | mid-ramp acc. (%) | flips | returned | FLOPs frac. |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        s = r["summary"]
        gap = f"{100 * (s['accuracy']['mean'] - dense['mean']):+.2f}" if dense and name != "dense" else "-"
        seeds = ",".join(str(x["seed"]) for x in r["runs"])
        lines.append(f"| {name} | {seeds} | {fmt(s['accuracy'], 100)} | {gap} "
                     f"| {fmt(s.get('mid_ramp_accuracy'), 100)} | {fmt(s.get('flips'), 1, 0)} "
                     f"| {fmt(s.get('returned'), 1, 0)} | {fmt(s.get('cost'), 1, 3)} |")
    Path(f"{stem}.md").write_text("\n".join(lines) + "\n")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=at_least(0), nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=at_least(1), default=2)
    p.add_argument("--train-images", type=at_least(1), default=10000)
    p.add_argument("--batch", type=at_least(1), default=128)
    p.add_argument("--lr", type=positive, default=0.1)
    p.add_argument("--target", type=fraction_kept, default=0.5)
    p.add_argument("--update-every", type=at_least(1), default=20)
    p.add_argument("--bn-recal", type=at_least(1), nargs="+", default=[5, 20])
    p.add_argument("--hysteresis", type=non_negative, nargs="+", default=[0.25, 1.0])
    p.add_argument("--probe-after", type=at_least(1), default=10,
                   help="steps after a mid-ramp update at which the dip is measured")
    p.add_argument("--rows", nargs="+", default=None, help="only these rows (names as printed)")
    p.add_argument("--extra", nargs="+", default=[], metavar="NAME=JSON",
                   help='more rows: SMCP arguments over the base schedule, e.g. '
                        '\'update40={"update_every": 40}\'')
    p.add_argument("--threads", type=at_least(1), default=1)
    p.add_argument("--smoke", action="store_true", help="synthetic data, narrow net, every row and seed: ~2 minutes on 2 cores")
    p.add_argument("--out", default=None, help="results stem (default benchmarks/results/smcp_ablation)")
    p.add_argument("--append", action="store_true",
                   help="add these rows to the results file already at --out (same schedule, "
                        "batch, threads and --probe-after; refused otherwise)")
    args = p.parse_args(argv)
    if args.smoke:  # its ~10 steps: a few updates inside the ramp, and a probe after one, so
        # the rows differ and the probe and flip counting run (break80 F11: one update, none
        # in the ramp, and the hysteresis rows identical to SMCP's); what was given stays
        # (break167 F7: --update-every=3 was read as not given)
        apply_smoke_defaults(p, argv, args, {"update_every": 1, "probe_after": 1})
    torch.set_num_threads(args.threads)
    # --append keeps the file's rows (and checks its schedule, batch and threads): adding or
    # replacing rows is not another protocol, but fewer seeds (or another probe) still is, so
    # the published file is guarded against those as against a plain run
    stem = results_stem("smcp_ablation", args.out, args.smoke, changed_options(
        p, args, ignore=("append", "rows", "extra", "bn_recal", "hysteresis") if args.append else ()),
        keys=("meta", "rows"), meta_keys=("schedule", "machine"))
    stem.parent.mkdir(parents=True, exist_ok=True)
    table = variants(args.bn_recal, args.hysteresis)
    steps = None  # the run's steps, for checking extra rows on the schedule they train on
    for spec in args.extra:
        name, _, options = spec.partition("=")
        if name in table:  # break80 F1: 'dense={...}' made the dense row a pruned one
            p.error(f"--extra {spec!r}: {name!r} is a row already; give the extra row another "
                    "name")
        try:
            table[name] = json.loads(options)
        except json.JSONDecodeError as exc:
            p.error(f"--extra {spec!r}: not NAME=JSON ({exc})")
        if not isinstance(table[name], dict):
            p.error(f"--extra {spec!r}: the JSON is SMCP's arguments, an object ({{...}})")
        if steps is None:
            steps = args.epochs * len(make_loaders(data_config(args), seed=args.seeds[0])[0])
        problem = smcp_problem(table[name], args, steps)
        if problem:  # before anything trains (break80 F5: a traceback after every other row)
            p.error(f"--extra {spec!r}: {problem}")
    if args.rows:
        unknown = [r for r in args.rows if r not in table]
        if unknown:
            p.error(f"unknown rows {unknown}; rows: {list(table)}")
        table = {k: v for k, v in table.items() if k in args.rows}
    meta = {"command": "python " + shlex.join([os.path.relpath(__file__, ROOT), *(argv or sys.argv[1:])]),
            "machine": {"cpu": cpu_name(), "cores": os.cpu_count(),
                        "threads": args.threads, "batch": args.batch, "device": "cpu",
                        "torch": torch.__version__, "load_average_end": None},
            "schedule": {"epochs": args.epochs, "train_images": None if args.smoke else args.train_images,
                         "lr": args.lr, "one_cycle": True, "target": args.target,
                         "warmup": 0.1, "ramp_until": 0.6, "freeze_from": 0.75,
                         "update_every": args.update_every, "channel_step": 8, "masked_decay": 2e-4},
            "probe_after": args.probe_after, "seeds": args.seeds, "smoke": args.smoke}
    if args.append and Path(f"{stem}.json").is_file():  # before anything trains
        check_append(stem, json.loads(Path(f"{stem}.json").read_text())["meta"], meta)
    results = {}
    for name, options in table.items():
        rows = []
        for seed in args.seeds:
            row = run_one(options, seed, args)
            print(f"{name:18} seed {seed}: {json.dumps(row)}", flush=True)
            rows.append(row)
        results[name] = {"options": options, "runs": rows, "summary": summarize(rows)}
    meta["machine"]["load_average_end"] = list(os.getloadavg())
    lines = write_results(stem, meta, results, append=args.append)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_script(main))
