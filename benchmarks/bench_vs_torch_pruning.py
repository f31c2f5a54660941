"""fxprune SMCP against Torch-Pruning (DepGraph) at the same FLOPs budget, on Fashion-MNIST.

    pip install -e ".[bench]"                                   # torch-pruning
    python benchmarks/bench_vs_torch_pruning.py                  # full: 6 epochs, 20k images, seeds 0-2
    python benchmarks/bench_vs_torch_pruning.py --smoke          # minutes: synthetic, 2 epochs

Every row trains the same network for the same total epochs E with the same optimizer (SGD,
momentum 0.9, Nesterov, weight decay 5e-4, batch 128) and one cosine learning-rate schedule
over all E epochs:

* dense: E epochs, no pruning.
* Torch-Pruning (``tp-taylor``, ``tp-magnitude``; ``round_to`` none and 8): E/2 dense epochs,
  then one global pruning step (``global_pruning=True``, the classifier ignored; Taylor
  importance from the gradients of 8 training batches) whose channel ratio is found by
  bisection so that the pruned model's FLOPs are at most the target fraction of dense; the
  optimizer is rebuilt for the new parameters and the schedule continues for E/2 fine-tune
  epochs.
* SMCP rows (``--smcp NAME=JSON``; default below), each with channel_step 8 and
  ``fxprune.finalize``: ``smcp-flops`` (the FLOPs cost, warm-up 0.1 E, ramp until 0.6 E,
  frozen from 0.7 E, a knapsack every 0.02 E, soft masks: the recipe's schedule when these
  rows were first measured),
  ``smcp-flops-late-hard`` (the same budget pruned later, 0.3-0.5 E, frozen from 0.6 E, with
  hard masks), ``smcp-lat-b1`` / ``smcp-lat-b64`` (that schedule with an ONNX Runtime
  latency table measured at batch 1 / 64 as the cost, target 85% of the dense latency) and
  ``smcp-lat-b64-t95`` / ``-t75`` (the batch-64 table at 95% / 75% of it), all with SMCP's BN
  rescaling (``bn_rescale="kept_fraction"``, pinned: fxprune's default until it was measured
  to cost accuracy), and ``smcp-flops-late-hard-ro``, ``smcp-lat-b64-t75-ro``,
  ``smcp-lat-b64-t95-ro`` and ``smcp-lat-b64-t85-ro`` (``smcp-lat-b64`` renamed by its target):
  those with it off (fxprune's default now). A row's ``"cost"`` may also be
  ``"latency+fixed:B"``: the batch-B table plus the constant ``calibrate_cost`` fits for the
  net (once per process; its log line is printed), so the target is a fraction of the
  measured latency. A row refused before training (e.g. a target below the narrowest model its
  cost model allows) is skipped with its reason printed and recorded (``meta["skipped"]``, a
  line under the table); the rows trained so far are kept. A ``latency+fixed`` row records its
  fit (``cost_fit``).

The results compare at equal measured latency both ways: each SMCP row against the most
accurate Torch-Pruning row that is no faster, and each Torch-Pruning row against the most
accurate SMCP row that is at least as fast.

Per row: test accuracy (full test split), FLOPs and parameters (torch's flop counter, batch 1),
and ONNX Runtime CPU latency at batch 1 and 64 (``--threads`` intra-op threads, every model
of a network and seed interleaved with its dense model; medians). Writes
``benchmarks/results/vs_torch_pruning.{json,md}`` (``_smoke`` with ``--smoke``) with machine,
threads, batches and command. The rows' ``latency_ms`` are ``{batch: ms}``, so
``fxprune plot benchmarks/results/vs_torch_pruning.json --out pareto.png --batch 64`` draws them
(``--x speedup``: by their ``speedup`` over the dense model timed with them, comparable across
processes and sessions).
"""
from __future__ import annotations

import argparse
import copy
import inspect
import json
import math
import os
import re
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import fxprune  # noqa: E402
from bench_common import (RESULTS, apply_smoke_defaults, at_least, changed_options,  # noqa: E402
                          fraction_kept, positive, results_stem, run_script, usage_error)
from fxprune.data import make_loaders  # noqa: E402
from fxprune.deploy import onnxruntime_backend as ortb  # noqa: E402
from fxprune.deploy.common import DeployError, cpu_name  # noqa: E402
from fxprune.deploy.onnx_export import export_onnx  # noqa: E402
from fxprune.models import ResNetFMNIST  # noqa: E402
from fxprune.train import model_stats  # noqa: E402
from fmnist_nets import ConcatResNet  # noqa: E402


def require_torch_pruning():
    try:
        import torch_pruning
    except ImportError:
        raise SystemExit("bench_vs_torch_pruning needs torch-pruning: pip install -e '.[bench]'") from None
    return torch_pruning


def _tp_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:  # torch_pruning 1.6 has no __version__ attribute
        return version("torch-pruning")
    except PackageNotFoundError:
        return None


NETS = {
    "concat": lambda smoke: ConcatResNet((16, 32, 64)),
    "resnet": lambda smoke: ResNetFMNIST(widths=(8, 16, 32) if smoke else (16, 32, 64)),
    "wide": lambda smoke: ConcatResNet((16, 32, 64) if smoke else (32, 64, 128)),
}


class Trainer:
    """One cosine schedule over ``total`` steps across optimizer rebuilds (pruning)."""

    def __init__(self, args, total: int):
        self.args, self.total, self.step = args, total, 0

    def optimizer(self, model):
        return torch.optim.SGD(model.parameters(), lr=self.lr(), momentum=0.9, nesterov=True,
                               weight_decay=5e-4)

    def lr(self) -> float:
        return self.args.lr * 0.5 * (1 + math.cos(math.pi * min(self.step / self.total, 1.0)))

    def epochs(self, model, opt, loader, epochs: range, pruner=None):
        model.train()
        for epoch in epochs:
            loader.set_epoch(epoch)
            for x, y in loader:
                for group in opt.param_groups:
                    group["lr"] = self.lr()
                F.cross_entropy(model(x), y).backward()
                if pruner is not None:
                    pruner.step()
                opt.step()
                opt.zero_grad(set_to_none=True)
                self.step += 1


@torch.no_grad()
def accuracy(model, loader) -> float:
    model.eval()
    correct = seen = 0
    for x, y in loader:
        correct += (model(x).argmax(1) == y).sum().item()
        seen += len(y)
    model.train()
    return correct / seen


def tp_prune(tp, model, kind: str, round_to, target: float, loader, example, dense_flops: int,
             bisections: int = 10):
    """A copy of ``model`` globally pruned by Torch-Pruning to at most ``target`` of the dense
    FLOPs, with the smallest channel ratio found that gets there. Returns (model, ratio)."""

    def pruned_at(ratio):
        m = copy.deepcopy(model)
        imp = tp.importance.TaylorImportance() if kind == "taylor" else tp.importance.MagnitudeImportance(p=2)
        pruner = tp.pruner.MetaPruner(m, example, importance=imp, global_pruning=True,
                                      pruning_ratio=ratio, round_to=round_to,
                                      ignored_layers=[m.fc])
        if kind == "taylor":
            m.zero_grad()
            for i, (x, y) in enumerate(loader):
                F.cross_entropy(m(x), y).backward()
                if i == 7:
                    break
        pruner.step()
        m.zero_grad(set_to_none=True)
        return m

    # Torch-Pruning's FLOPs are not monotone in the ratio (with round_to, a high global ratio
    # may prune nothing), so bisection alone can miss: a coarse grid finds the smallest ratio
    # under the target, bisection then refines between it and the grid point before.
    def fits(ratio):
        m = pruned_at(ratio)
        return m, model_stats(m)["flops"] <= target * dense_flops

    grid = [round(0.05 * i, 2) for i in range(1, 20)]
    lo, best = 0.0, None
    for ratio in grid:
        m, ok = fits(ratio)
        if ok:
            best = (m, ratio)
            break
        lo = ratio
    if best is None:
        raise RuntimeError(f"Torch-Pruning ({kind}, round_to={round_to}) reached no model under "
                           f"{target:.0%} of the dense FLOPs at any ratio in {grid[0]}..{grid[-1]}")
    hi = best[1]
    for _ in range(bisections):
        mid = (lo + hi) / 2
        m, ok = fits(mid)
        if ok:
            best, hi = (m, mid), mid
        else:
            lo = mid
    return best


def train_rows(net: str, seed: int, args, tp) -> list[dict]:
    data = {"name": "synthetic" if args.smoke else "fashion_mnist", "batch_size": args.batch,
            "subset_train": None if args.smoke else args.train_images, "augment": False}
    train, test = make_loaders(data, seed=seed)
    example = next(iter(test))[0][:1]
    E = args.epochs
    total = E * len(train)
    rows, models = [], {}

    torch.manual_seed(seed)
    base = NETS[net](args.smoke)
    dense_stats = model_stats(base)

    # dense
    model = copy.deepcopy(base)
    t = Trainer(args, total)
    t.epochs(model, t.optimizer(model), train, range(E))
    models["dense"] = model
    rows.append({"label": "dense", "accuracy": accuracy(model, test), **model_stats(model)})

    # Torch-Pruning: train dense E/2, prune once, fine-tune E/2 (the same schedule continues)
    half = E // 2
    model = copy.deepcopy(base)
    t = Trainer(args, total)
    if args.tp:
        t.epochs(model, t.optimizer(model), train, range(half))
    for kind in args.tp_importance if args.tp else ():
        for round_to in args.round_to:
            label = f"tp-{kind}" + (f"-r{round_to}" if round_to else "")
            tt = copy.copy(t)
            pruned, ratio = tp_prune(tp, model, kind, round_to, args.target, train, example,
                                     dense_stats["flops"], 3 if args.smoke else 5)
            tt.epochs(pruned, tt.optimizer(pruned), train, range(half, E))
            models[label] = pruned
            rows.append({"label": label, "accuracy": accuracy(pruned, test), "tp_ratio": ratio,
                         **model_stats(pruned)})

    # SMCP rows: the recipe's schedule scaled to E unless a row says otherwise
    spe = len(train)
    fixed = {**PINNED, **args.smcp_options}  # every SMCP row's options under its own
    for label, spec in smcp_rows(args).items():
        opts = dict(spec)
        at = {k: round(opts.pop(k, v) * E * spe) for k, v in SCHEDULE.items()}
        cost = opts.pop("cost", "flops")
        target = opts.pop("target", args.target)
        torch.manual_seed(seed)
        model = copy.deepcopy(base)
        pm = fxprune.prepare(model, (example,))
        try:
            if cost.startswith("latency"):  # "latency:B" or "latency+fixed:B" (B: the batch)
                name, batch = cost.split(":")
                cost = latency_table(pm, net, int(batch), args, fixed=name == "latency+fixed")
            pruner = fxprune.SMCP(pm, target=target, cost=cost, channel_step=8,
                                  warmup=at["warmup"], ramp=at["ramp_until"] - at["warmup"],
                                  freeze_after=at["freeze_from"],
                                  update_every=max(1, at["update_every"]), masked_decay=2e-4,
                                  **{**fixed, **opts})
        except (ValueError, DeployError) as e:  # e.g. a target below what the cost model allows
            # refused before training: the rows trained so far are kept, the run goes on, and
            # the results file names the row and why
            print(f"{net} seed {seed}: row {label} skipped: {e}", flush=True)
            args.skipped.append({"net": net, "seed": seed, "label": label, "reason": str(e)})
            continue
        t = Trainer(args, total)
        t.epochs(pm, t.optimizer(pm), train, range(E), pruner)
        masked_acc = accuracy(pm, test)
        small = fxprune.finalize(pm)
        x = next(iter(test))[0]
        with torch.no_grad():
            pm.eval(), small.eval()
            finalize_diff = (pm(x) - small(x)).abs().max().item()
        models[label] = small
        rows.append({"label": label, "accuracy": accuracy(small, test),
                     "options": {**fixed, **spec},
                     "accuracy_masked": masked_acc, "finalize_max_abs_diff": finalize_diff,
                     "cost_target": target, **model_stats(small),
                     # latency+fixed: the fit behind the budget (dense and half-model ms, the
                     # measured and priced fractions, the constant's share, the floor)
                     **({"cost_fit": cost.fit} if getattr(cost, "fit", None) else {})})

    # ONNX Runtime latency, every model interleaved with the dense one
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for label, m in models.items():
            paths[label] = os.path.join(tmp, f"{label}.onnx")
            export_onnx(m, (1, 1, 28, 28), paths[label], log=lambda s: None)
        latency = {}
        for batch in args.latency_batches:
            times = ortb.time_onnx_models(paths, (batch, 1, 28, 28), threads=args.threads,
                                          iters=args.iters, warmup=max(3, args.iters // 10),
                                          progress=False)
            latency[batch] = {k: statistics.median(v) for k, v in times.items()}
    for row in rows:
        row["latency_ms"] = {str(b): latency[b][row["label"]] for b in args.latency_batches}
        row["speedup"] = {str(b): latency[b]["dense"] / latency[b][row["label"]]
                          for b in args.latency_batches}
        row.update(net=net, seed=seed, flops_ratio=row["flops"] / dense_stats["flops"],
                   params_ratio=row["params"] / dense_stats["params"])
        reached = target_reached(row, args.target)
        if reached is not None:  # a row above the budget is reported as such, never hidden
            row["target_reached"] = reached
    return rows


# SMCP's schedule as fractions of the E epochs (warm-up 0.1 E, ramp until 0.6 E, masks frozen
# from 0.7 E, a knapsack every 0.02 E: the recipe's until its 10-epoch runs favoured freezing
# at 0.5 E; kept here so the published rows stay reproducible); a row's JSON may override any.
SCHEDULE = {"warmup": 0.1, "ramp_until": 0.6, "freeze_from": 0.7, "update_every": 0.02}
# The rows the issue asks for. smcp-flops is SMCP with that schedule; on this short schedule
# (~940 steps) pruning later with hard masks was more accurate (3 seeds of the concat net, see
# benchmarks/RESULTS.md), so the latency rows run that way, each timed at its deployment batch. Their
# target is 85% of the dense latency: at 75% (an earlier, interrupted run, 2 seeds) the models
# came out 1.37-1.49x faster than dense, more than the tables predicted (1.33x) and past every
# Torch-Pruning row (0.93-1.29x), so no Torch-Pruning row was at equal latency to compare with.
LATE_HARD = {"warmup": 0.3, "ramp_until": 0.5, "freeze_from": 0.6, "masks": "hard"}
# Two more batch-64 latency targets put SMCP rows on both sides of Torch-Pruning's speeds
# (0.95: about as fast as its rows without round_to; 0.75: past its round_to 8 rows), so each
# Torch-Pruning row has an SMCP row at least as fast to be compared with.
# The rows above were measured with SMCP's BN rescaling, fxprune's default until it was found
# to cost accuracy (benchmarks/results/smcp_bn_rescale.md): pinned so they stay reproducible;
# the "-ro" rows turn it off, as fxprune does by default now.
PINNED = {"bn_rescale": "kept_fraction"}
RESCALE_OFF = {"bn_rescale": "off"}
_WITH_RESCALE = {"smcp-flops": {}, "smcp-flops-late-hard": dict(LATE_HARD),
                 "smcp-lat-b1": {"cost": "latency:1", "target": 0.85, **LATE_HARD},
                 "smcp-lat-b64": {"cost": "latency:64", "target": 0.85, **LATE_HARD},
                 "smcp-lat-b64-t95": {"cost": "latency:64", "target": 0.95, **LATE_HARD},
                 "smcp-lat-b64-t75": {"cost": "latency:64", "target": 0.75, **LATE_HARD}}
# "-ro" row: the row it reruns with rescaling off (smcp-lat-b64's named by its target, t85)
_RERUN_OFF = {"smcp-flops-late-hard-ro": "smcp-flops-late-hard",
              "smcp-lat-b64-t75-ro": "smcp-lat-b64-t75", "smcp-lat-b64-t95-ro": "smcp-lat-b64-t95",
              "smcp-lat-b64-t85-ro": "smcp-lat-b64"}
DEFAULT_SMCP = {**_WITH_RESCALE,
                **{ro: {**_WITH_RESCALE[row], **RESCALE_OFF} for ro, row in _RERUN_OFF.items()}}


# what train_rows sets itself from SCHEDULE and the row's cost and target: not a row option
_SET_BY_THE_BENCH = {"prepared", "target", "cost", "channel_step", "warmup", "ramp",
                     "freeze_after", "update_every", "masked_decay", "schedule"}
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def target_reached(row: dict, flops_target: float) -> bool | None:
    """Whether a pruned row (``flops_ratio``, ``params_ratio``, its ``options`` and
    ``cost_target``) is within its own target in its own cost: Torch-Pruning's rows and SMCP's
    FLOPs rows in FLOPs (``flops_target``: ``--target``, for rows that set none), params rows
    in parameters (break80 F3: both were judged by --target in FLOPs). None for the dense row
    and latency rows, whose budget is a timing this file does not re-measure."""
    cost = str(row.get("options", {}).get("cost", "flops"))
    if row["label"] == "dense" or "latency" in cost:
        return None
    ratio = row["params_ratio"] if cost == "params" else row["flops_ratio"]
    return ratio <= row.get("cost_target", flops_target) + 1e-9


def smcp_rows(args) -> dict[str, dict]:
    """``--smcp NAME=JSON`` rows (default: ``DEFAULT_SMCP``, described in the module docstring;
    none with ``--no-smcp``). Raises ``ValueError`` for a row that would fail or mislead only
    after training: a label that is not a file name or that the tables read as another kind
    (``dense``, ``tp-...``), JSON that is not an object, an option ``fxprune.SMCP`` does not
    take, or a cost that is not ``flops``, ``params``, ``latency:B`` or ``latency+fixed:B``."""
    if not args.with_smcp:
        return {}
    takes = {*inspect.signature(fxprune.SMCP.__init__).parameters} - {"self"} - _SET_BY_THE_BENCH
    # --smcp-options go to every row's SMCP as they are (break80 F6: a typo failed after the
    # dense and Torch-Pruning rows had trained, with a traceback)
    if not isinstance(args.smcp_options, dict):
        raise ValueError(f"--smcp-options must be a JSON object, got {args.smcp_options!r}")
    unknown = sorted(set(args.smcp_options) - takes)
    if unknown:
        raise ValueError(f"--smcp-options: unknown option(s) {', '.join(unknown)}; it takes "
                         f"{', '.join(sorted(takes))} (a row's cost, target and schedule: "
                         "--smcp NAME=JSON)")
    allowed = takes | {*SCHEDULE, "cost", "target"}
    rows = {}
    for item in args.smcp or ():
        name, _, spec = item.partition("=")
        if not _LABEL.fullmatch(name) or name == "dense" or name.startswith("tp-"):
            raise ValueError(f"--smcp row label {name!r}: use letters, digits and . _ + - (it "
                             "names a file), not 'dense' or a 'tp-' prefix (the tables read "
                             "those as the baseline and Torch-Pruning rows)")
        try:
            options = json.loads(spec or "{}")
        except json.JSONDecodeError as e:
            raise ValueError(f"--smcp {name}: its options are not JSON ({e}); e.g. "
                             f"{name}='{{\"target\": 0.5}}'") from None
        if not isinstance(options, dict):
            raise ValueError(f"--smcp {name}: its options must be a JSON object, got {spec}")
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise ValueError(f"--smcp {name}: unknown option(s) {', '.join(unknown)}; a row takes "
                             f"{', '.join(sorted(allowed))}")
        cost = str(options.get("cost", "flops"))
        kind, _, batch = cost.partition(":")
        if not (cost in ("flops", "params") or (kind in ("latency", "latency+fixed")
                                                 and batch.isdigit() and int(batch) > 0)):
            raise ValueError(f"--smcp {name}: cost {cost!r} is not flops, params, latency:B or "
                             "latency+fixed:B (B: the batch the table is timed at)")
        rows[name] = options
    return rows or dict(DEFAULT_SMCP)


_TABLES: dict = {}  # (net, batch, smoke) -> the LatencyTable measured (or read from the cache)
_FITTED: dict = {}  # (net, batch, smoke) -> that table plus its fitted constant (WithFixedCost)


def latency_table(pm, net: str, batch: int, args, fixed: bool = False):
    """An ONNX Runtime latency table of ``pm``'s layers at ``batch`` (``--threads`` threads),
    measured once per net and batch and cached in ``--table-cache`` (seeds and reruns reuse it);
    ``fixed``: plus the constant it misses on this net (``calibrate_cost``, fitted once per
    process, printed)."""
    from fxprune.deploy.latency_table import LatencyTable

    key = (net, batch, args.smoke)
    if key not in _TABLES:
        cache = Path(args.table_cache) / f"{net}{'_smoke' if args.smoke else ''}_b{batch}_t{args.threads}.json"
        cache.parent.mkdir(parents=True, exist_ok=True)
        _TABLES[key] = LatencyTable.measure(pm, step=8, threads=args.threads, batch=batch,
                                            cache=cache, progress=False, log=lambda s: None)
    if fixed and key not in _FITTED:
        from fxprune.deploy.calibrate import calibrate_cost

        _FITTED[key] = calibrate_cost(_TABLES[key], pm, step=8, iters=args.iters,
                                      log=lambda s: print(f"{net}: {s}", flush=True))
    return _FITTED[key] if fixed else _TABLES[key]


def aggregate(rows: list[dict], batches) -> list[dict]:
    """Mean +- std over seeds per (net, label); latency and speedup as medians' means."""
    out = []
    keys = list(dict.fromkeys((r["net"], r["label"]) for r in rows))
    # nets in NETS' order; per net dense, then Torch-Pruning rows, then SMCP rows (the default
    # ones in DEFAULT_SMCP's order first): files merged in any order give one table layout
    nets = [*NETS, *dict.fromkeys(net for net, _ in keys if net not in NETS)]
    smcp = list(DEFAULT_SMCP)

    def place(key):
        net, label = key
        kind = 0 if label == "dense" else 1 if label.startswith("tp-") else 2
        return nets.index(net), kind, smcp.index(label) if label in smcp else len(smcp)

    keys.sort(key=place)  # stable: rows that tie keep the order they were met in
    for net, label in keys:
        mine = [r for r in rows if r["net"] == net and r["label"] == label]
        acc = [r["accuracy"] for r in mine]
        out.append({
            "net": net, "label": f"{net}:{label}", "method": label, "seeds": [r["seed"] for r in mine],
            "accuracy": statistics.fmean(acc), "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
            "flops": statistics.fmean(r["flops"] for r in mine),
            "params": statistics.fmean(r["params"] for r in mine),
            "flops_ratio": statistics.fmean(r["flops_ratio"] for r in mine),
            "latency_ms": {str(b): statistics.fmean(r["latency_ms"][str(b)] for r in mine) for b in batches},
            "speedup": {str(b): statistics.fmean(r["speedup"][str(b)] for r in mine) for b in batches},
            "target_reached": all(r.get("target_reached", True) for r in mine),
        })
    return out


def round_to(text: str):
    """``--round-to``'s type: 'none' or a whole number >= 1, its error saying what it takes
    (break180 F13: a lambda, "invalid <lambda> value: 'x'")."""
    if text == "none":
        return None
    try:
        return at_least(1)(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 1 or 'none'") from None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nets", nargs="+", default=["concat", "resnet", "wide"], choices=list(NETS))
    p.add_argument("--seeds", type=at_least(0), nargs="*", default=[0, 1, 2],
                   help="seeds to train (none, with --merge: only combine the merged files)")
    p.add_argument("--epochs", type=at_least(1), default=6)
    p.add_argument("--train-images", type=at_least(1), default=20000)
    p.add_argument("--batch", type=at_least(1), default=128)
    p.add_argument("--lr", type=positive, default=DEFAULTS["lr"])
    p.add_argument("--target", type=fraction_kept, default=0.5, help="fraction of the dense FLOPs kept")
    p.add_argument("--tp-importance", nargs="+", default=["taylor", "magnitude"])
    p.add_argument("--round-to", type=round_to, nargs="+",
                   default=[None, 8], help="Torch-Pruning round_to values ('none' or an int)")
    p.add_argument("--smcp-options", type=json.loads, default={},
                   help='extra SMCP arguments as JSON, e.g. \'{"hysteresis": 0}\'')
    p.add_argument("--smcp", nargs="+", default=None, metavar="NAME=JSON",
                   help='SMCP rows, e.g. smcp-flops=\'{}\' \'smcp-lat-b64={"cost": "latency:64", '
                        '"target": 0.6}\'; schedule keys warmup, ramp_until, freeze_from, update_every '
                        'are fractions of the epochs (default 0.1, 0.6, 0.7, 0.02); cost "flops", '
                        '"params", "latency:BATCH" (an ONNX Runtime table at that batch) or '
                        '"latency+fixed:BATCH" (that table plus the constant it misses, fitted); other '
                        'keys go to SMCP')
    p.add_argument("--table-cache", default=str(ROOT / "runs" / "latency_tables"),
                   help="folder of the latency tables' cache files")
    p.add_argument("--merge", nargs="+", default=None, metavar="RESULTS.json",
                   help="add this run's rows to earlier results files' runs (a row of the same "
                        "net, seed and label is replaced by a later file's or this run's) and write "
                        "the union to --out; with --seeds and no value, nothing is trained (runs "
                        "made in parallel processes combined)")
    p.add_argument("--no-tp", dest="tp", action="store_false",
                   help="dense and SMCP rows only (e.g. to re-measure SMCP with other options)")
    p.add_argument("--no-smcp", dest="with_smcp", action="store_false",
                   help="dense and Torch-Pruning rows only (e.g. to retrain the baseline)")
    p.add_argument("--latency-batches", type=at_least(1), nargs="+", default=[1, 64])
    p.add_argument("--iters", type=at_least(1), default=DEFAULTS["iters"],
                   help="ONNX Runtime timing runs per model and batch (--smoke: %d)" % SMOKE_ITERS)
    p.add_argument("--threads", type=at_least(1), default=1, help="ONNX Runtime and torch threads")
    p.add_argument("--smoke", action="store_true",
                   help="a few minutes: synthetic data, 2 epochs, 1 seed, the concat net, "
                        "%d timing runs (options given stay as given; --nets resnet is narrowed "
                        "to widths 8/16/32)" % SMOKE_ITERS)
    p.add_argument("--out", default=None, help="results stem (default benchmarks/results/vs_torch_pruning)")
    args = p.parse_args(argv)
    if args.smoke:  # smaller defaults; what was given stays (break56 #14: --nets resnet trained concat)
        apply_smoke_defaults(p, argv, args, {"nets": ["concat"], "seeds": args.seeds[:1],
                                             "epochs": 2, "iters": SMOKE_ITERS})
    if not args.with_smcp and args.smcp:
        p.error("--no-smcp trains no SMCP row; drop it or the --smcp rows")
    try:  # before anything trains: a bad row would otherwise fail after the dense row
        smcp_rows(args)
    except ValueError as e:
        p.error(str(e))
    if not args.seeds and not args.merge:
        p.error("--seeds needs at least one seed (no seed trains nothing: that is for --merge)")
    tp = require_torch_pruning() if args.tp and args.seeds else None
    torch.set_num_threads(args.threads)
    # a merge that reads the published file keeps its rows: not a replacement
    keeps = any(Path(m).resolve() == RESULTS / "vs_torch_pruning.json" for m in args.merge or [])
    stem = results_stem("vs_torch_pruning", args.out, args.smoke, () if keeps else
                        changed_options(p, args, ignore=("table_cache", "merge")),
                        keys=("meta", "rows", "runs"), meta_keys=("protocol", "machine"))
    stem.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    earlier, args.earlier_commands, args.earlier_tp, args.skipped = merge_files(
        args.merge or [], args)
    # what the file will hold: this run's rows replace the merged ones of the same net, seed
    # and label (a row retrained with new options is a replacement, not a second method)
    planned = [{"net": net, "seed": seed, "label": label,
                "options": {**PINNED, **args.smcp_options, **spec}}
               for net in args.nets for seed in args.seeds
               for label, spec in smcp_rows(args).items()]
    replaced = {run_key(r) for r in planned}
    _same_options_per_label([*(r for r in earlier if run_key(r) not in replaced), *planned],
                            "this run's rows with the merged ones")
    rows = []
    for net in args.nets:
        for seed in args.seeds:
            for row in train_rows(net, seed, args, tp):
                print(json.dumps(row), flush=True)
                rows.append(row)
            key = {run_key(r) for r in rows}
            kept = [r for r in earlier if run_key(r) not in key]
            write_results(stem, kept + rows, args, tp, start, argv)
    if not args.seeds:
        write_results(stem, earlier, args, tp, start, argv)
    return 0


# What must agree for rows to be compared in one table: (section, key in meta, argument).
# (--tp-importance and --round-to choose Torch-Pruning rows, each labelled by them; --smcp and
# --smcp-options SMCP rows, each with its options recorded; --nets and --seeds what is trained:
# those may differ between merged files.)
SAME_PROTOCOL = [("protocol", "epochs", "epochs"), ("protocol", "train_images", "train_images"),
                 ("protocol", "target", "target"), ("protocol", "smoke", "smoke"),
                 ("protocol", "lr", "lr"), ("protocol", "iters", "iters"),
                 ("machine", "threads", "threads"), ("machine", "train_batch", "batch"),
                 ("machine", "latency_batches", "latency_batches")]
# The defaults of the options recorded only since: a file without the key ran at these (its
# --smoke runs timed SMOKE_ITERS runs).
DEFAULTS = {"lr": 0.1, "iters": 200}
SMOKE_ITERS = 20


def run_key(run: dict) -> tuple:
    """What identifies a run (or a refused row) across results files: a later one with the same
    net, seed and label replaces an earlier one."""
    return run["net"], run["seed"], run["label"]


def _same_options_per_label(runs, where) -> None:
    """Exit (one line) if one net's row label holds runs trained with different options: the
    table averages a label's seeds as one method (break83 F2: --smcp-options changes a default
    row's options, not its label)."""
    seen: dict = {}
    for r in runs:
        key = (r["net"], r["label"])
        options = r.get("options")
        if options is not None:  # rows recorded before PINNED ran at it: SMCP's default then
            options = {**PINNED, **options}
        if key in seen and seen[key] != options:
            usage_error(f"cannot merge {where}: row {r['label']} on {r['net']} was trained "
                        f"with options {seen[key]} and {options}; the table would average "
                        "them as one method: give one of them another label (--smcp NAME=JSON)")
        seen.setdefault(key, options)


def merge_files(paths, args) -> tuple[list[dict], list[str], str | None, list[dict]]:
    """The union of the results files' runs (a later file's row replaces an earlier one of the
    same net, seed and label), the commands that made them, in order, the Torch-Pruning
    version they name (None if none) and the rows they record as refused before training.
    Raises SystemExit when a file ran another protocol than ``args`` (epochs, images, target,
    learning rate, timing iterations, threads, batches; :data:`SAME_PROTOCOL`), reading a key
    an older file does not record as its default (:data:`DEFAULTS`)."""
    runs: dict = {}
    commands: list[str] = []
    skipped: list[dict] = []
    tp_version = None
    for path in paths:
        try:  # (break167 F8: a missing or foreign file was a traceback)
            merged = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            usage_error(f"cannot merge {path}: {getattr(exc, 'strerror', None) or exc}; pass "
                        "results files this script wrote (the .json of its --out)")
        if not (isinstance(merged, dict) and isinstance(merged.get("meta"), dict)
                and all(isinstance(merged["meta"].get(s), dict) for s in ("protocol", "machine"))
                and isinstance(merged.get("runs"), list)):
            usage_error(f"cannot merge {path}: not a results file of bench_vs_torch_pruning.py; "
                        "pass results files this script wrote (the .json of its --out)")
        for section, key, arg in SAME_PROTOCOL:
            theirs, ours = merged["meta"][section].get(key), getattr(args, arg)
            if key in DEFAULTS and key not in merged["meta"][section]:  # an older file
                smoke = merged["meta"]["protocol"].get("smoke")
                theirs = SMOKE_ITERS if key == "iters" and smoke else DEFAULTS[key]
            if key == "train_images" and args.smoke:
                ours = None
            if theirs != ours:
                if key == "smoke" or (key == "train_images" and None in (theirs, ours)):
                    way = "add --smoke" if merged["meta"]["protocol"].get("smoke") else "drop --smoke"
                else:
                    way = f"pass --{arg.replace('_', '-')} {theirs}"
                usage_error(f"cannot merge {path}: it ran {key} {theirs}, this run {ours}; "
                            f"{way} to combine it")
        for r in merged["runs"]:
            runs[run_key(r)] = r
        _same_options_per_label(runs.values(), path)
        tp_version = merged["meta"]["machine"].get("torch_pruning") or tp_version
        skipped += merged["meta"].get("skipped", [])
        commands += merged["meta"].get("commands") or (
            [merged["meta"]["command"]] if merged["meta"].get("command") else [])
    return list(runs.values()), list(dict.fromkeys(commands)), tp_version, skipped


def _pairs(summary: list[dict], batch: int, rows: str, against: str, *, counterpart_faster: bool):
    """Per net, for each row whose method starts with ``rows``: (row, counterpart, others), the
    counterpart being the most accurate row starting with ``against`` whose speedup at ``batch``
    is at least the row's (``counterpart_faster``) or at most it (None if there is none), and
    ``others`` the methods on the other side of the row's speed."""
    key = str(batch)
    for net in dict.fromkeys(r["net"] for r in summary):
        mine = [r for r in summary if r["net"] == net]
        candidates = [r for r in mine if r["method"].startswith(against)]
        for row in (r for r in mine if r["method"].startswith(rows)):
            speed = row["speedup"][key]
            fits = [c for c in candidates
                    if (c["speedup"][key] >= speed if counterpart_faster else c["speedup"][key] <= speed)]
            others = [c["method"] for c in candidates if c not in fits]
            yield row, max(fits, key=lambda c: c["accuracy"]) if fits else None, others


def _at_equal_speed(summary: list[dict], batch: int, rows: str, against: str, *,
                    counterpart_faster: bool, none: str, name_others: str = "") -> list[str]:
    """One table line per pair of :func:`_pairs`, with SMCP's accuracy minus Torch-Pruning's.
    ``none`` fills a line without a counterpart; ``name_others`` (a caption) names the
    counterparts on the other side of the row's speed."""
    key = str(batch)
    lines = []
    for row, best, others in _pairs(summary, batch, rows, against, counterpart_faster=counterpart_faster):
        head = (f"| {row['net']} | {batch} | {row['method']} | {100 * row['accuracy']:.2f} | "
                f"{row['speedup'][key]:.2f}x | ")
        if best is None:
            lines.append(head + f"({none}) | - | - | - |")
            continue
        smcp, tp = (row, best) if rows == "smcp" else (best, row)
        note = f" ({name_others}: {', '.join(others)})" if name_others and others else ""
        lines.append(head + f"{best['method']} | {100 * best['accuracy']:.2f} | "
                     f"{best['speedup'][key]:.2f}x | "
                     f"{100 * (smcp['accuracy'] - tp['accuracy']):+.2f}{note} |")
    return lines


def head_to_head(summary: list[dict], batch: int) -> list[str]:
    """Per net: each SMCP row against the most accurate Torch-Pruning row that is no faster
    than it at ``batch``, so the comparison is at equal or lower latency for SMCP; Torch-Pruning
    rows faster than the SMCP row are named, not hidden. Speed is the speedup over the dense
    model timed interleaved with each row (runs merged from several sessions stay comparable)."""
    return _at_equal_speed(summary, batch, "smcp", "tp-", counterpart_faster=False,
                           none="every Torch-Pruning row is faster", name_others="faster TP rows")


def smcp_at_tp_speed(summary: list[dict], batch: int) -> list[str]:
    """Per net: each Torch-Pruning row against the most accurate SMCP row that is at least as
    fast at ``batch`` -- the issue's goal read from Torch-Pruning's side (what accuracy SMCP
    keeps at the speed a Torch-Pruning user got). A row with no SMCP row as fast says so."""
    return _at_equal_speed(summary, batch, "tp-", "smcp", counterpart_faster=True,
                           none="no SMCP row is as fast")


GOAL_MARGIN = 0.005  # the goal: SMCP >= the best Torch-Pruning row + 0.5 pt at equal latency


def goal_check(summary: list[dict], batches) -> list[str]:
    """The goal read from Torch-Pruning's side, counted: in how many (net, TP row, batch) cells
    the most accurate SMCP row at least as fast is ahead by ``GOAL_MARGIN`` or more, and which
    unmet cells ask for more than the net's dense accuracy (TP + 0.5 pt above dense: only a
    pruned model more accurate than the unpruned one could meet them)."""
    dense = {r["net"]: r["accuracy"] for r in summary if r["method"] == "dense"}
    met = unmet = 0
    above = []
    for batch in batches:
        for tp, smcp, _ in _pairs(summary, batch, "tp-", "smcp", counterpart_faster=True):
            need = tp["accuracy"] + GOAL_MARGIN
            if smcp is not None and smcp["accuracy"] >= need - 1e-12:
                met += 1
                continue
            unmet += 1
            if tp["net"] in dense and need > dense[tp["net"]]:
                above.append(f"{tp['net']}:{tp['method']} b{batch} (needs {100 * need:.2f}, "
                             f"dense {100 * dense[tp['net']]:.2f})")
    return [f"Goal (SMCP >= the Torch-Pruning row + {100 * GOAL_MARGIN:.1f} pt, from its side): met in "
            f"{met} of {met + unmet} cells. Unmet cells whose goal lies above the net's dense accuracy: "
            f"{len(above)}" + (f": {', '.join(above)}." if above else ".")]


def write_results(stem: Path, rows: list[dict], args, tp, start: float, argv) -> None:
    """The JSON and Markdown results of the rows so far (rewritten after every net and seed,
    so an interrupted run keeps what it measured)."""
    summary = aggregate(rows, args.latency_batches)
    meta = {"command": "python " + shlex.join([os.path.relpath(__file__, ROOT), *(argv or sys.argv[1:])]),
            "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": args.threads,
                        "device": "cpu", "train_batch": args.batch,
                        "latency_batches": args.latency_batches, "onnxruntime": ortb.version(),
                        "torch": torch.__version__, "torch_pruning": (_tp_version() if tp else None) or getattr(args, "earlier_tp", None),
                        "load_average_end": list(os.getloadavg())},
            "protocol": {"epochs": args.epochs, "train_images": None if args.smoke else args.train_images,
                         "target": args.target, "seeds": sorted({r["seed"] for r in rows}), "smoke": args.smoke,
                         "lr": args.lr, "iters": args.iters,
                         # the rows this file holds, each with its options (break80 F4: a
                         # merge recorded the merging command's default rows, trained nowhere)
                         "smcp_options": args.smcp_options if args.seeds else None,
                         "smcp_rows": {r["label"]: r["options"] for r in rows if "options" in r},
                         "torch_pruning_rows": any(r["label"].startswith("tp-") for r in rows)},
            "runtime_s": round(time.perf_counter() - start, 1)}
    meta["commands"] = [*getattr(args, "earlier_commands", []), meta["command"]]
    # rows refused before training, the latest reason per row, unless a later run trained it
    trained = {run_key(r) for r in rows}
    refused = {run_key(s): s for s in getattr(args, "skipped", [])}
    meta["skipped"] = [s for key, s in refused.items() if key not in trained]
    Path(f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": summary, "runs": rows},
                                               indent=2) + "\n")
    b = args.latency_batches
    lines = [f"# fxprune SMCP vs Torch-Pruning{' (smoke)' if args.smoke else ''}", "",
             *[f"`{c}`  " for c in meta["commands"]], "",
             f"{meta['machine']['cpu']}, {os.cpu_count()} cores, {args.threads} threads (torch and "
             f"ONNX Runtime), training batch {args.batch}, latency at batch {', '.join(map(str, b))}; "
             f"{args.epochs} epochs for every row; mean +- std over the seeds listed per row.", "",
             "| net | method | seeds | acc. (%) | FLOPs frac. | params | " +
             " | ".join(f"ms b{x} | speedup b{x}" for x in b) + " |",
             "|---|---|---|---|---|---|" + "---|---|" * len(b)]
    for r in summary:
        lat = " | ".join(f"{r['latency_ms'][str(x)]:.3f} | {r['speedup'][str(x)]:.2f}x" for x in b)
        over = "" if r["target_reached"] else " (above its target)"
        lines.append(f"| {r['net']} | {r['method']}{over} | {','.join(map(str, r['seeds']))} | "
                     f"{100 * r['accuracy']:.2f} +- "
                     f"{100 * r['accuracy_std']:.2f} | {r['flops_ratio']:.3f} | {r['params']:,.0f} | {lat} |")
    slower = [f"{r['net']}:{r['method']} (b{x}: {r['speedup'][str(x)]:.2f}x)" for r in summary
              for x in b if r["method"] != "dense" and r["speedup"][str(x)] < 1.0]
    lines += ["", "Pruned rows slower than their dense model: " + (", ".join(slower) or "none") + "."]
    if meta["skipped"]:
        lines += ["", "Rows refused before training (not in the table): " + "; ".join(
            f"{s['net']} seed {s['seed']} {s['label']}: {s['reason']}" for s in meta["skipped"]) + "."]
    if any(r["method"].startswith("tp-") for r in summary):  # this run's or merged ones
        lines += ["", "At equal measured latency: each SMCP row against the most accurate Torch-Pruning row "
                  "that is no faster (mean speedup over dense across the seeds, ONNX Runtime):", "",
                  "| net | batch | SMCP row | acc. (%) | speedup | Torch-Pruning row | acc. (%) | speedup | SMCP - TP (pt) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for x in b:
            lines += head_to_head(summary, x)
        lines += ["", "The same from Torch-Pruning's side: each Torch-Pruning row against the most "
                  "accurate SMCP row that is at least as fast:", "",
                  "| net | batch | Torch-Pruning row | acc. (%) | speedup | SMCP row | acc. (%) | speedup | SMCP - TP (pt) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for x in b:
            lines += smcp_at_tp_speed(summary, x)
        lines += ["", *goal_check(summary, b)]
    Path(f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    raise SystemExit(run_script(main, left="the results file holds the nets and seeds finished "
                                           "before (it is written after each)"))
