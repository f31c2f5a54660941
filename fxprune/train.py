"""``fxprune train CONFIG``: train a YAML recipe dense or with a pruning method, then finalize.

A recipe is a YAML file whose sections are those of :data:`DEFAULTS` (see
``configs/fashion_mnist_resnet.yaml``); ``--set section.key=value`` overrides single values
with YAML-typed values (``--set optim.epochs=2``, ``--set model.widths=[8,16,32]``). The
config is validated whole before any work (:mod:`fxprune.recipe_config`); ``prune`` keys are
the pruning method's constructor arguments plus the recipe's own (``*_epochs`` schedules,
``allow_above_target``).

Each epoch appends to ``OUT/metrics.csv`` (and every ``log.every_steps`` steps to
``OUT/steps.csv``), evaluates on the test split and saves ``OUT/checkpoint.pt`` (the previous
one kept as ``checkpoint.prev.pt``; tensors and plain data only); ``--resume`` continues from
it exactly (model, optimizer, schedule, pruner, RNG states; the data order is a function of
seed and epoch). OUT must be new, empty, or a run's own folder (``.fxprune-run`` marker). At the end the model is saved whole to ``OUT/model_dense.pt``, or,
when pruning, finalized to ``OUT/model_pruned.pt``, with ``fxprune_input_shape`` set for
``fxprune deploy``; ``OUT/results.json`` holds the summary the command prints.

From Python: ``train(load_config("configs/fashion_mnist_resnet.yaml", ["optim.epochs=1"]))``.
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import inspect
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from .data import make_loaders
from .errors import FxPruneError
from .models import build_model
from .recipe_config import (DEFAULTS, PRUNERS, RECIPE_PRUNE_KEYS, RESUMABLE_CHANGES,
                            ConfigError, _flatten, apply_overrides, check_schedule_steps,
                            load_config, parse_value, pruner_class, resolve_config)

# Names this module exported before the config moved to recipe_config stay importable here.
_REEXPORTED = (DEFAULTS, apply_overrides, parse_value)

__all__ = ["DEFAULTS", "ConfigError", "CheckpointError", "TargetNotReachedError", "load_config",
           "resolve_config", "apply_overrides", "check_out_folder", "save_checkpoint", "load_checkpoint",
           "make_pruner", "train", "evaluate", "model_stats", "add_arguments", "run"]

INPUT_SHAPE = (1, 1, 28, 28)  # what the saved models run on: one Fashion-MNIST image


# ----------------------------------------------------------------------------- pieces

def make_pruner(pm: nn.Module, prune_cfg: dict, **context):
    """The pruning method of ``prune_cfg["method"]`` attached to prepared model ``pm``.

    ``None`` for ``"none"``. Every other key of ``prune_cfg`` but the recipe's own
    (:data:`~fxprune.recipe_config.RECIPE_PRUNE_KEYS`) is a keyword argument of the method's
    class (``fxprune.SMCP(pm, target=0.5, cost="flops", ...)``). ``context`` holds facts of the
    training run (``steps_per_epoch``, ``epochs``): each is passed only if the class's
    constructor names it and the recipe does not set it, so schedules written in epochs can be
    converted to steps by the method.
    """
    kwargs = {k: v for k, v in prune_cfg.items()
              if k not in RECIPE_PRUNE_KEYS or k.endswith("_epochs")}
    method = prune_cfg.get("method", "none")
    if method == "none":
        return None
    if method not in PRUNERS:
        raise ConfigError(f"prune.method {method!r} is not one of: none, {', '.join(PRUNERS)}")
    from .methods.base import get_method

    entry = get_method(method)
    cls = entry.cls
    try:
        accepted = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        accepted = {}
    _epochs_to_steps(kwargs, context.get("steps_per_epoch"), context.get("epochs"), accepted)
    for name, value in context.items():
        if name in accepted and name not in kwargs:
            kwargs[name] = value
    try:
        return entry.build(pm, **kwargs)
    except (ValueError, TypeError) as exc:  # the method's own checks: a config error
        raise ConfigError(f"prune ({method}): {exc}") from None


def _epochs_to_steps(kwargs: dict, steps_per_epoch: int | None, epochs: int | None,
                     accepted=()) -> None:
    """Recipes schedule pruning in epochs; methods count optimizer steps.

    ``warmup_epochs`` -> ``warmup``, ``ramp_epochs`` -> ``ramp``, ``cooldown_epochs`` (the last
    epochs, masks frozen) -> ``freeze_after``; any other ``NAME_epochs`` -> ``NAME`` in steps
    when the method takes ``NAME`` (``explore_epochs``, ``prune_at_epochs``, ...). Fractions of
    an epoch are fine. Ends are rounded, not lengths, so a ramp that ends where the cool-down
    starts does so in steps too.
    """
    if steps_per_epoch is None:
        return

    def at(epoch: float) -> int:
        return int(round(epoch * steps_per_epoch))

    has_warmup = "warmup_epochs" in kwargs
    warmup = float(kwargs.pop("warmup_epochs", 0.0))
    if has_warmup:
        kwargs["warmup"] = at(warmup)
    if "ramp_epochs" in kwargs:
        kwargs["ramp"] = at(warmup + float(kwargs.pop("ramp_epochs"))) - at(warmup)
    if "cooldown_epochs" in kwargs:
        cooldown = float(kwargs.pop("cooldown_epochs"))
        if epochs is None:
            raise ConfigError("prune.cooldown_epochs needs the run's optim.epochs")
        kwargs["freeze_after"] = at(epochs - cooldown)
    for key in [k for k in kwargs if k.endswith("_epochs")]:
        name = key[: -len("_epochs")]
        if name in accepted:
            kwargs[name] = at(float(kwargs.pop(key)))


def _takes_loss(step) -> bool:
    """Whether a method's ``step`` accepts the loss (the protocol's ``step(loss=None)``); a
    method written before the loss was passed keeps working with ``step()``."""
    try:
        params = inspect.signature(step).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params)


def lr_factor(step: int, optim: dict, steps_per_epoch: int) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based)."""
    total = optim["epochs"] * steps_per_epoch
    warmup = int(round(optim["warmup_epochs"] * steps_per_epoch))
    if step < warmup:
        return (step + 1) / warmup
    if optim["schedule"] == "cosine":
        progress = (step - warmup) / max(total - warmup, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    if optim["schedule"] == "step":
        epoch = step / steps_per_epoch
        return optim["gamma"] ** sum(epoch >= m for m in optim["milestones"])
    return 1.0


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device,
             channels_last: bool = False) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` over ``loader``, in eval mode."""
    was_training = model.training
    model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    for x, y in loader:
        x, y = _to_device(x, device, channels_last), y.to(device)
        logits = model(x)
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
    model.train(was_training)
    return loss_sum / max(seen, 1), correct / max(seen, 1)


def model_stats(model: nn.Module, input_shape=INPUT_SHAPE) -> dict[str, int]:
    """Parameters and FLOPs (torch's flop counter, 2 per multiply-accumulate) at batch 1."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(input_shape, device=device))
    model.train(was_training)
    return {"params": sum(p.numel() for p in model.parameters()),
            "flops": int(counter.get_total_flops())}


def _to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for but CUDA is not available; "
                          "use --set device=cpu (or auto)")
    return device


def _cost_columns(cost: Any) -> dict[str, Any]:
    """A pruner's ``cost()`` as CSV columns: a number is ``cost``, a mapping ``cost.KEY``."""
    if cost is None:
        return {}
    if isinstance(cost, dict):
        return {f"cost.{k}": _scalar(v) for k, v in cost.items()}
    return {"cost": _scalar(cost)}


def _scalar(v: Any) -> Any:
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return v.item()
    if isinstance(v, (np.generic,)):
        return v.item()
    return v


class CsvLog:
    """Rows appended to a CSV file whose header grows when new columns appear."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: list[dict] = []
        if path.exists():
            with path.open(newline="") as f:
                self.rows = list(csv.DictReader(f))

    def truncate(self, key: str, last: int) -> None:
        """Drop rows written after the checkpoint being resumed (``key`` > ``last``)."""
        kept = [r for r in self.rows if int(float(r[key])) <= last]
        if len(kept) != len(self.rows):
            self.rows = kept
            self._rewrite()

    def append(self, row: dict) -> None:
        header = self._header()
        self.rows.append(row)
        if set(row) - set(header) or not self.path.exists():
            self._rewrite()
        else:
            with self.path.open("a", newline="") as f:
                csv.DictWriter(f, fieldnames=header).writerow(row)

    def _header(self) -> list[str]:
        header: list[str] = []
        for r in self.rows:
            header += [k for k in r if k not in header]
        return header

    def _rewrite(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self._header())
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(tmp, self.path)


def _tensorboard_writer(setting: Any, out: Path | None):
    """A function making the SummaryWriter for folder ``out`` (None: no TensorBoard)."""
    wanted = setting is True or (setting == "auto"
                                 and importlib.util.find_spec("tensorboard") is not None)
    if not wanted:
        return None
    if importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("log.tensorboard is true but tensorboard is not installed: "
                          "pip install tensorboard, or --set log.tensorboard=false")
    from torch.utils.tensorboard import SummaryWriter

    return lambda out: SummaryWriter(log_dir=str(out / "tensorboard"))


def _rng_state() -> dict:
    """Every RNG's state as tensors and plain data (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, words, gauss = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)),
                       "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
             "python": {"version": version, "words": list(words), "gauss": gauss}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["words"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _config_changes(old: dict, new: dict) -> list[str]:
    a, b = _flatten(old), _flatten(new)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def _save_module(module: nn.Module, path: Path) -> None:
    # Standard NCHW CPU weights so the file loads anywhere; the training layout is not its concern.
    module = module.to("cpu", memory_format=torch.contiguous_format).eval()
    module.fxprune_input_shape = INPUT_SHAPE
    torch.save(module, path)


# ----------------------------------------------------------------------------- training

RUN_MARKER = ".fxprune-run"  # in every folder a run writes to: it holds fxprune's files only
# Every file a run writes (under its folder); nothing else there is ever touched.
RUN_FILES = ("config.yaml", "metrics.csv", "steps.csv", "checkpoint.pt", "checkpoint.prev.pt",
             "model_dense.pt", "model_pruned.pt", "results.json")


class CheckpointError(FxPruneError):
    """A checkpoint cannot be read (truncated, empty, not fxprune's) or does not fit the run."""


class TargetNotReachedError(FxPruneError):
    """The run ended with the pruner's cost above its target."""


def check_out_folder(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse a folder the run did not create (one holding files but no run marker), a file
    in the folder's place, and a finished run unless ``resume`` or ``overwrite``. Creates
    nothing: it runs before any work."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a folder; choose another --out")
    ckpt = out / "checkpoint.pt"
    if resume:
        prev = out / "checkpoint.prev.pt"
        if not ckpt.is_file() and prev.is_file():  # interrupted between the two renames
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt} but {prev.name} holds "
                                    f"the epoch before it: move it to {ckpt.name} and --resume "
                                    "again")
        if not ckpt.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt}; run without --resume "
                                    "to start, or point --out at the run to continue")
        if not (out / RUN_MARKER).is_file():
            raise FileExistsError(f"--resume: {out} has no {RUN_MARKER} marker, so fxprune did "
                                  "not write it; point --out at a folder of a fxprune run")
        return
    if out.is_dir() and any(out.iterdir()) and not (out / RUN_MARKER).is_file():
        some = sorted(p.name for p in out.iterdir())[:3]
        raise FileExistsError(f"--out {out} already holds files fxprune did not write "
                              f"({', '.join(some)}, ...); choose a new or empty folder")
    if ckpt.exists() and not overwrite:
        raise FileExistsError(f"{out} already holds a run ({ckpt}); pass --resume to "
                              "continue it, --overwrite to start over, or another --out")


def _claim_out_folder(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    marker = out / RUN_MARKER
    if not marker.exists():
        marker.write_text("This folder holds a fxprune train run; fxprune writes here only "
                          f"these files: {', '.join(RUN_FILES)} and tensorboard/.\n")


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(checkpoint: dict, path: Path) -> None:
    """Write to a temporary file, keep the previous checkpoint as ``*.prev.pt``, then rename:
    a crash mid-write loses at most the epoch being saved."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(checkpoint, tmp)
    if path.exists():
        os.replace(path, path.with_name(path.stem + ".prev.pt"))
    os.replace(tmp, path)


def load_checkpoint(path: Path, device) -> dict:
    """A checkpoint written by :func:`save_checkpoint`, read with ``weights_only=True``
    (tensors and plain data only: loading it runs no code)."""
    prev = path.with_name(path.stem + ".prev.pt")
    way_out = (f"{prev} holds the epoch before it: move it to {path.name} and --resume again, "
               "or start over with --overwrite" if prev.is_file()
               else "start over with --overwrite or use another --out")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read means the file is unusable
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if path.stat().st_size == 0:
            why = "the file is empty"
        raise CheckpointError(f"--resume: checkpoint {path} is damaged or not a fxprune "
                              f"checkpoint ({why[:200]}); {way_out}") from None
    needed = {"format", "epoch", "step", "config", "model", "optimizer", "scheduler", "rng"}
    if not isinstance(ckpt, dict) or not needed <= set(ckpt):
        raise CheckpointError(f"--resume: {path} is not a fxprune train checkpoint (it lacks "
                              f"{sorted(needed - set(ckpt) if isinstance(ckpt, dict) else needed)}"
                              f"); {way_out}")
    return ckpt


def _check_model_fits_data(model: nn.Module, cfg: dict, train_loader, test_loader) -> None:
    """One forward on one image before any work: a model that cannot read the data, or has
    fewer outputs than the data has classes, is a config error, not a traceback mid-run."""
    x, y = next(iter(train_loader))
    model.eval()
    try:
        with torch.no_grad():
            logits = model(x[:1])
    except Exception as exc:  # noqa: BLE001 - whatever fails, the model does not fit the data
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"model.name {cfg['model']['name']!r} does not run on the data's "
                          f"images of shape {tuple(x.shape[1:])}: {first[:200]}") from None
    finally:
        model.train()
    # both splits: a tiny training split may lack the highest label the test split has
    classes = max(int(loader.labels.max()) + 1 for loader in (train_loader, test_loader)
                  if len(loader.labels))
    if not (isinstance(logits, torch.Tensor) and logits.ndim == 2
            and logits.shape[1] >= classes):
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ConfigError(f"model.num_classes: the model gives outputs of shape {got} but the "
                          f"data has {classes} classes; set model.num_classes={classes}")


# ----------------------------------------------------------------------------- training

def train(cfg: dict, *, resume: bool = False, overwrite: bool = False) -> dict:
    """Train the recipe ``cfg`` (resolved against DEFAULTS) and return the results summary.

    Everything is checked before any work (the config, the output folder, the device, the
    model against the data, the pruning schedule against the run's length); the output folder
    is created only then. ``resume`` continues from ``OUT/checkpoint.pt``; without it an
    existing checkpoint is an error unless ``overwrite``, so a finished run is never silently
    replaced. A folder holding files but no ``.fxprune-run`` marker is never written to.
    Raises :class:`TargetNotReachedError` (after saving everything) when a pruning run ends
    above its cost target, unless ``prune.allow_above_target``.
    """
    from tqdm import tqdm

    cfg = resolve_config(cfg)
    out = Path(cfg["out"]).expanduser()
    cfg["out"] = str(out)
    ckpt_path = out / "checkpoint.pt"
    check_out_folder(out, resume=resume, overwrite=overwrite)

    torch.set_num_threads(int(cfg["num_threads"] or os.cpu_count() or 1))
    device = _pick_device(cfg["device"])
    channels_last = bool(cfg["channels_last"])
    seed = int(cfg["seed"])
    optim_cfg, prune_cfg, log_cfg = cfg["optim"], cfg["prune"], cfg["log"]
    method = prune_cfg.get("method", "none")

    ckpt = load_checkpoint(ckpt_path, device) if resume else None
    if ckpt is not None:
        changed = [k for k in _config_changes(ckpt["config"], cfg)
                   if k not in RESUMABLE_CHANGES]
        if changed:
            raise ConfigError(f"--resume: the config differs from the checkpoint's in {changed}; "
                              "pass the same recipe and overrides (only "
                              f"{sorted(RESUMABLE_CHANGES)} may change), or start a new run "
                              "with another --out")

    _seed_everything(seed)
    train_loader, test_loader = make_loaders(cfg["data"], seed=seed)
    model_kwargs = {k: v for k, v in cfg["model"].items() if k != "name" and v is not None}
    model = build_model(cfg["model"]["name"], **model_kwargs)
    train_loader.set_epoch(0)
    rng = torch.get_rng_state()
    _check_model_fits_data(model, cfg, train_loader, test_loader)
    torch.set_rng_state(rng)  # the check must not change what the run draws
    dense_stats = model_stats(model)
    steps_per_epoch = len(train_loader)

    pruner = None
    net: nn.Module = model
    if method != "none":
        import fxprune

        # The first training batch of epoch 0: fixed by the seed, so a resumed run prepares
        # the same graph.
        train_loader.set_epoch(0)
        # One image: cost models and latency tables describe the batch-1 deployment, and
        # finalize's exactness check runs on it.
        example_batch = next(iter(train_loader))[0][:1]
        net = fxprune.prepare(model, (example_batch,))
        pruner = make_pruner(net, prune_cfg, steps_per_epoch=steps_per_epoch,
                             epochs=int(optim_cfg["epochs"]))
        target = getattr(pruner, "target", None)
        if isinstance(target, (int, float)):
            check_schedule_steps(getattr(pruner, "schedule", None), float(target),
                                 int(optim_cfg["epochs"]) * steps_per_epoch)
    net = net.to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)

    optimizer = torch.optim.SGD(net.parameters(), lr=optim_cfg["lr"],
                                momentum=optim_cfg["momentum"],
                                nesterov=bool(optim_cfg["nesterov"]) and optim_cfg["momentum"] > 0,
                                weight_decay=optim_cfg["weight_decay"])
    if pruner is not None and hasattr(pruner, "attach_optimizer"):
        pruner.attach_optimizer(optimizer)  # e.g. CUCB: inactive weights keep their state
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, optim_cfg, steps_per_epoch))
    criterion = nn.CrossEntropyLoss(label_smoothing=optim_cfg["label_smoothing"])

    writer = _tensorboard_writer(log_cfg["tensorboard"], None)  # checks before any write
    _claim_out_folder(out)
    start_epoch, step, elapsed = 0, 0, 0.0
    metrics, steps_log = CsvLog(out / "metrics.csv"), CsvLog(out / "steps.csv")
    if ckpt is not None:
        try:
            net.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            if pruner is not None:
                pruner.load_state_dict(ckpt["pruner"])
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            first = str(exc).strip().splitlines()[0]
            raise CheckpointError(f"--resume: {ckpt_path} does not fit this run ({first[:200]}); "
                                  "start over with --overwrite or use another --out") from None
        # The saved lr came from the saved schedule; when optim.epochs grew, the schedule did too.
        for group, base_lr in zip(optimizer.param_groups, scheduler.base_lrs):
            group["lr"] = base_lr * lr_factor(ckpt["step"], optim_cfg, steps_per_epoch)
        _set_rng_state(ckpt["rng"])
        start_epoch, step, elapsed = ckpt["epoch"], ckpt["step"], ckpt["elapsed_s"]
        metrics.truncate("epoch", start_epoch)
        steps_log.truncate("step", step)
    else:
        for log in (metrics, steps_log):
            log.rows = []
            if log.path.exists():
                log.path.unlink()
    _atomic_write_text(out / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))
    if writer is not None:
        writer = writer(out)

    epochs = int(optim_cfg["epochs"])
    every = max(int(log_cfg["every_steps"]), 1)
    step_takes_loss = pruner is not None and _takes_loss(pruner.step)
    net.train()
    for epoch in range(start_epoch, epochs):
        started = time.perf_counter()
        train_loader.set_epoch(epoch)
        loss_sum, correct, seen = 0.0, 0, 0
        window_loss, window_correct, window_seen = 0.0, 0, 0
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{epochs}", leave=False,
                   disable=not log_cfg["progress"], dynamic_ncols=True)
        for x, y in bar:
            x, y = _to_device(x, device, channels_last), y.to(device)
            # a method may train a sub-network of the same weights (CUCB's active channels)
            forward = getattr(pruner, "train_forward", None) or net
            logits = forward(x)
            loss = criterion(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if pruner is not None:
                # sees this batch's gradients; may update masks and weights
                pruner.step(loss) if step_takes_loss else pruner.step()
            optimizer.step()
            scheduler.step()
            step += 1

            batch_loss = loss.item() * len(y)
            batch_correct = (logits.argmax(1) == y).sum().item()
            loss_sum, correct, seen = loss_sum + batch_loss, correct + batch_correct, seen + len(y)
            window_loss += batch_loss
            window_correct += batch_correct
            window_seen += len(y)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}")
            if step % every == 0:
                row = {"step": step, "epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"],
                       "loss": window_loss / window_seen, "acc": window_correct / window_seen}
                steps_log.append(row)
                if writer is not None:
                    writer.add_scalar("train/loss_step", row["loss"], step)
                window_loss, window_correct, window_seen = 0.0, 0, 0
        bar.close()

        test_loss, test_acc = evaluate(net, test_loader, device, channels_last)
        elapsed += time.perf_counter() - started
        row = {"epoch": epoch + 1, "step": step, "lr": optimizer.param_groups[0]["lr"],
               "train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
               "test_loss": test_loss, "test_acc": test_acc,
               "epoch_s": round(time.perf_counter() - started, 3), "elapsed_s": round(elapsed, 3)}
        cost_columns = _cost_columns(pruner.cost()) if pruner is not None else {}
        row.update(cost_columns)
        metrics.append(row)
        if writer is not None:
            for k, v in row.items():
                if k not in ("epoch", "step") and isinstance(v, (int, float)):
                    writer.add_scalar(f"epoch/{k}", v, epoch + 1)
        print(f"epoch {epoch + 1}/{epochs}: train loss {row['train_loss']:.4f} acc "
              f"{row['train_acc']:.4f} | test loss {test_loss:.4f} acc {test_acc:.4f} | "
              f"{row['epoch_s']:.1f}s"
              + "".join(f" | {k} {v:.4g}" if isinstance(v, float) else f" | {k} {v}"
                        for k, v in cost_columns.items()), flush=True)

        checkpoint = {
            "format": 2, "epoch": epoch + 1, "step": step, "elapsed_s": elapsed, "config": cfg,
            "model": net.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "pruner": pruner.state_dict() if pruner is not None else None,
            "rng": _rng_state(),
        }
        save_checkpoint(checkpoint, ckpt_path)
    if writer is not None:
        writer.close()

    return _finish(cfg, net, pruner, dense_stats, test_loader, device, channels_last, out,
                   epochs, elapsed)


def _finish(cfg, net, pruner, dense_stats, test_loader, device, channels_last, out, epochs,
            elapsed) -> dict:
    """Evaluate, finalize when pruning, save the model and the results; print the table."""
    method = cfg["prune"].get("method", "none")
    test_loss, test_acc = evaluate(net, test_loader, device, channels_last)
    results: dict[str, Any] = {"method": method, "epochs": epochs,
                               "train_time_s": round(elapsed, 1),
                               "test_samples": test_loader.dataset_size, "out": str(out)}
    if pruner is None:
        path = out / "model_dense.pt"
        stats = model_stats(net)
        _save_module(net, path)
        results.update(accuracy=test_acc, test_loss=test_loss, **stats, model=str(path))
    else:
        import fxprune

        finalize_masks = getattr(pruner, "finalize_masks", None)
        # the method's final masks (e.g. CUCB: top channels by mu), if they differ from now's
        if finalize_masks is not None and finalize_masks():
            test_loss, test_acc = evaluate(net, test_loader, device, channels_last)
        cost = _cost_columns(pruner.cost())
        small = fxprune.finalize(net)
        small_loss, small_acc = evaluate(small, test_loader, device, channels_last)
        stats = model_stats(small)
        path = out / "model_pruned.pt"
        _save_module(small, path)
        mismatched = round(abs(small_acc - test_acc) * test_loader.dataset_size)
        results.update(accuracy=small_acc, test_loss=small_loss, accuracy_masked=test_acc,
                       finalize_mismatched_samples=mismatched, **stats, model=str(path),
                       pruner_cost=cost)
    results.update(dense_params=dense_stats["params"], dense_flops=dense_stats["flops"],
                   params_ratio=results["params"] / dense_stats["params"],
                   flops_ratio=results["flops"] / max(dense_stats["flops"], 1))
    target = getattr(pruner, "target", None)
    final_cost = cost.get("cost") if pruner is not None else None
    above = (isinstance(target, (int, float)) and isinstance(final_cost, (int, float))
             and final_cost > float(target) * (1 + 1e-6))
    if pruner is not None and isinstance(target, (int, float)):
        results["target"] = float(target)
        results["target_reached"] = not above
    _atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    print(format_results(results))
    if above and not cfg["prune"].get("allow_above_target", False):
        raise TargetNotReachedError(
            f"the run ended at cost {final_cost:.4f} of dense, above its target {target:.4f}: "
            f"{results['model']} is not pruned as asked (results in {out / 'results.json'}); "
            "lengthen the schedule, or set prune.allow_above_target=true to accept it")
    return results


def format_results(results: dict) -> str:
    lines = [f"{'':22}{'dense':>14}{'final':>14}{'final/dense':>13}"]
    lines.append(f"{'params':22}{results['dense_params']:>14,}{results['params']:>14,}"
                 f"{results['params_ratio']:>13.3f}")
    lines.append(f"{'FLOPs (batch 1)':22}{results['dense_flops']:>14,}{results['flops']:>14,}"
                 f"{results['flops_ratio']:>13.3f}")
    lines.append(f"{'test accuracy':22}{'':>14}{results['accuracy']:>14.4f}")
    if "accuracy_masked" in results:
        lines.append(f"{'  masked (before fin.)':22}{'':>14}{results['accuracy_masked']:>14.4f}"
                     f"   ({results['finalize_mismatched_samples']} samples differ)")
        for k, v in results["pruner_cost"].items():
            lines.append(f"{'  pruner ' + k:22}{'':>14}{v!s:>14}")
    lines.append(f"method {results['method']}, {results['epochs']} epochs, "
                 f"{results['train_time_s']} s training; model: {results['model']}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML recipe, e.g. configs/fashion_mnist_resnet.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="override a config value, YAML-typed (repeatable): "
                             "--set optim.epochs=2 --set prune.method=none")
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUT/checkpoint.pt (read with torch.load("
                             "weights_only=True): tensors and plain data only, no code runs)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over even if OUT already holds a run (fxprune's own files "
                             "only are replaced)")
    parser.add_argument("--out", help="output folder (overrides the recipe's 'out'): a new or "
                                      "empty folder, or one of an earlier run (it holds a "
                                      f"{RUN_MARKER} marker); a folder of other files is refused")
    parser.epilog = ("Every config error is reported before any work, with the valid values. "
                     "A pruning run that ends above its cost target exits with status 2 unless "
                     "prune.allow_above_target=true.")


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    import signal
    import threading

    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"out={json.dumps(args.out)}")
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)  # a clean stop, like Ctrl-C
    cfg = None
    try:
        cfg = load_config(args.config, overrides)
        train(cfg, resume=args.resume, overwrite=args.overwrite)
    except (FxPruneError, ValueError, OSError) as exc:
        # fxprune's own errors, invalid data files, folders: the message alone, no traceback
        print(f"fxprune train: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        where = Path(cfg["out"]).expanduser() / "checkpoint.pt" if cfg else None
        saved = (f"the last finished epoch is in {where}; continue with --resume"
                 if where is not None and where.is_file() else "no epoch had finished")
        print(f"fxprune train: interrupted; {saved}", file=sys.stderr)
        return 130
    return 0
