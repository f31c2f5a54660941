"""``fxprune train CONFIG``: train a YAML recipe dense or with a pruning method, then finalize.

A recipe is a YAML file whose sections are those of :data:`DEFAULTS` (see
``configs/fashion_mnist_resnet.yaml``); ``--set section.key=value`` overrides single values
with YAML-typed values (``--set optim.epochs=2``, ``--set model.widths=[8,16,32]``). Unknown
keys are errors, except inside ``prune``, whose keys belong to the pruning method and are
passed to it as they are.

Each epoch appends to ``OUT/metrics.csv`` (and every ``log.every_steps`` steps to
``OUT/steps.csv``), evaluates on the test split and saves ``OUT/checkpoint.pt``; ``--resume``
continues from it exactly (model, optimizer, schedule, pruner, RNG states; the data order is a
function of seed and epoch). At the end the model is saved whole to ``OUT/model_dense.pt``, or,
when pruning, finalized to ``OUT/model_pruned.pt``, with ``fxprune_input_shape`` set for
``fxprune deploy``; ``OUT/results.json`` holds the summary the command prints.

From Python: ``train(load_config("configs/fashion_mnist_resnet.yaml", ["optim.epochs=1"]))``.
"""
from __future__ import annotations

import argparse
import copy
import csv
import importlib.util
import inspect
import json
import math
import os
import random
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from .data import DATA_DEFAULTS, make_loaders
from .errors import FxPruneError
from .models import DEFAULT_BLOCKS, DEFAULT_WIDTHS, build_model

__all__ = ["DEFAULTS", "ConfigError", "load_config", "resolve_config", "apply_overrides",
           "make_pruner", "train", "evaluate", "model_stats", "add_arguments", "run"]

INPUT_SHAPE = (1, 1, 28, 28)  # what the saved models run on: one Fashion-MNIST image

DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "device": "auto",        # "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...
    "num_threads": None,     # torch CPU threads; None: every core
    "channels_last": True,   # NHWC activations: ~1.4x faster convs on CPU for this model
    "out": "runs/fashion_mnist_resnet",
    "data": dict(DATA_DEFAULTS),
    "model": {
        "name": "resnet_fmnist",
        "widths": list(DEFAULT_WIDTHS),
        "blocks": list(DEFAULT_BLOCKS),
        "num_classes": 10,
    },
    "optim": {
        "epochs": 10,
        "lr": 0.1,
        "momentum": 0.9,
        "nesterov": True,
        "weight_decay": 5e-4,
        "schedule": "cosine",      # cosine | step | constant, stepped every batch
        "warmup_epochs": 0.0,      # linear warm-up from 0, may be fractional
        "milestones": [],          # step schedule: epochs where lr *= gamma
        "gamma": 0.1,
        "label_smoothing": 0.0,
    },
    # Owned by the pruning method: everything but "method" goes to its constructor.
    "prune": {"method": "none"},
    "log": {
        "every_steps": 50,         # rows of steps.csv
        "tensorboard": "auto",     # true | false | auto (if tensorboard is installed)
        "progress": True,          # tqdm bars
    },
}
FREE_SECTIONS = {"prune"}
# Where null is meaningful although the default is not (torchvision models take no widths).
NULLABLE = {"model.widths", "model.blocks"}
# Keys whose value is one of a few choices of mixed kinds.
CHOICES = {"log.tensorboard": (True, False, "auto")}
# What may change between a run and its --resume without breaking exact continuation.
RESUMABLE_CHANGES = {"optim.epochs", "num_threads", "device", "out", "data.num_workers",
                     "log.every_steps", "log.tensorboard", "log.progress"}



def _method_names() -> list[str]:
    """The pruning methods ``prune.method`` may name (fxprune.methods.registry)."""
    from .methods.base import method_names

    return method_names()


class ConfigError(FxPruneError, ValueError):
    """A recipe or an override names an unknown key or has a value of the wrong kind."""


# ----------------------------------------------------------------------------- config

class _YamlLoader(yaml.SafeLoader):
    """YAML with 1.2 floats: PyYAML alone reads ``1e-3`` (no dot) as a string."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def parse_value(text: str) -> Any:
    return yaml.load(text, Loader=_YamlLoader)


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _valid_keys(defaults: dict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in defaults.items():
        if isinstance(v, dict) and k not in FREE_SECTIONS:
            keys += _valid_keys(v, f"{prefix}{k}.")
        else:
            keys.append(f"{prefix}{k}" + (".*" if k in FREE_SECTIONS else ""))
    return keys


def _check_type(key: str, value: Any, default: Any) -> None:
    if key in CHOICES:
        if not any(value is c or (isinstance(c, str) and value == c) for c in CHOICES[key]):
            raise ConfigError(f"{key} must be one of {CHOICES[key]}, got {value!r}")
        return
    if value is None:
        if default is None or key in NULLABLE:
            return
        raise ConfigError(f"{key} cannot be null (default {default!r})")
    if default is None:
        return
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
        list: lambda v: isinstance(v, list),
    }.get(type(default), lambda v: True)
    if not ok(value):
        raise ConfigError(f"{key} expects a {type(default).__name__} like {default!r}, got "
                          f"{value!r} ({type(value).__name__})")


def _merge(base: dict, update: dict, defaults: dict, prefix: str = "") -> None:
    """Merge ``update`` into ``base`` in place, checking keys and kinds against ``defaults``."""
    for key, value in update.items():
        path = f"{prefix}{key}"
        if key not in defaults:
            raise ConfigError(f"unknown config key {path!r}; valid keys: "
                              f"{', '.join(_valid_keys(DEFAULTS))}")
        default = defaults[key]
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{path} is a section (a mapping of keys), got {value!r}")
            if prefix == "" and key in FREE_SECTIONS:
                base[key].update(copy.deepcopy(value))
            else:
                _merge(base[key], value, default, path + ".")
        else:
            _check_type(path, value, default)
            base[key] = copy.deepcopy(value)


def apply_overrides(cfg: dict, overrides: list[str]) -> dict:
    """A copy of ``cfg`` with ``section.key=value`` overrides applied (values parsed as YAML)."""
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not KEY=VALUE (e.g. optim.epochs=2)")
        try:
            value = parse_value(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({exc})") from exc
        update: dict = {}
        node = update
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
        _merge(cfg, update, DEFAULTS)
    return cfg


def resolve_config(cfg: dict | None = None, overrides: list[str] | None = None) -> dict:
    """DEFAULTS updated with ``cfg`` then ``overrides``; validated, never mutating ``cfg``."""
    resolved = copy.deepcopy(DEFAULTS)
    if cfg:
        if not isinstance(cfg, dict):
            raise ConfigError(f"a config is a mapping of sections, got {type(cfg).__name__}")
        _merge(resolved, cfg, DEFAULTS)
    resolved = apply_overrides(resolved, overrides or [])
    optim = resolved["optim"]
    if optim["schedule"] not in ("cosine", "step", "constant"):
        raise ConfigError(f"optim.schedule must be cosine, step or constant, got "
                          f"{optim['schedule']!r}")
    if optim["epochs"] < 1:
        raise ConfigError(f"optim.epochs must be >= 1, got {optim['epochs']}")
    method = resolved["prune"].get("method", "none")
    if method != "none" and method not in _method_names():
        raise ConfigError(f"prune.method {method!r} is not one of: none, {', '.join(_method_names())}")
    return resolved


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> dict:
    """Read a YAML recipe, apply ``section.key=value`` overrides, validate."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; the shipped recipes are "
                          "configs/fashion_mnist_smcp.yaml (SMCP), configs/fashion_mnist_quick.yaml "
                          "(a few minutes) and configs/fashion_mnist_resnet.yaml (dense)")
    with path.open() as f:
        try:
            raw = yaml.load(f, Loader=_YamlLoader) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    try:
        return resolve_config(raw, overrides)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


# ----------------------------------------------------------------------------- pieces

def make_pruner(pm: nn.Module, prune_cfg: dict, **context):
    """The pruning method of ``prune_cfg["method"]`` attached to prepared model ``pm``.

    ``None`` for ``"none"``. Every other key of ``prune_cfg`` is a keyword argument of the
    method's class (``fxprune.SMCP(pm, target=0.5, cost="flops", ...)``). ``context`` holds
    facts of the training run (``steps_per_epoch``, ``epochs``): each is passed only if the
    class's constructor names it and the recipe does not set it, so schedules written in
    epochs can be converted to steps by the method.
    """
    kwargs = dict(prune_cfg)
    method = kwargs.pop("method", "none")
    if method == "none":
        return None
    if method not in _method_names():
        raise ConfigError(f"prune.method {method!r} is not one of: none, {', '.join(_method_names())}")
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
    return entry.build(pm, **kwargs)


def _epochs_to_steps(kwargs: dict, steps_per_epoch: int | None, epochs: int | None,
                     accepted=()) -> None:
    """Recipes schedule pruning in epochs; methods count optimizer steps.

    ``warmup_epochs`` -> ``warmup``, ``ramp_epochs`` -> ``ramp``, ``cooldown_epochs`` (the last
    epochs, masks frozen) -> ``freeze_after``; any other ``NAME_epochs`` -> ``NAME`` in steps
    when the method takes ``NAME`` (``explore_epochs``, ``prune_at_epochs``, ...). Fractions of
    an epoch are fine.
    """
    if steps_per_epoch is None:
        return
    for key, name in (("warmup_epochs", "warmup"), ("ramp_epochs", "ramp")):
        if key in kwargs:
            kwargs[name] = int(round(float(kwargs.pop(key)) * steps_per_epoch))
    if "cooldown_epochs" in kwargs:
        cooldown = float(kwargs.pop("cooldown_epochs"))
        if epochs is None:
            raise ConfigError("prune.cooldown_epochs needs the run's optim.epochs")
        kwargs["freeze_after"] = int(round((epochs - cooldown) * steps_per_epoch))
    for key in [k for k in kwargs if k.endswith("_epochs")]:
        name = key[: -len("_epochs")]
        if name in accepted:
            kwargs[name] = int(round(float(kwargs.pop(key)) * steps_per_epoch))


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


def _tensorboard_writer(setting: Any, out: Path):
    wanted = setting is True or (setting == "auto"
                                 and importlib.util.find_spec("tensorboard") is not None)
    if not wanted:
        return None
    if importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("log.tensorboard is true but tensorboard is not installed: "
                          "pip install tensorboard, or --set log.tensorboard=false")
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(out / "tensorboard"))


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
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

def train(cfg: dict, *, resume: bool = False, overwrite: bool = False) -> dict:
    """Train the recipe ``cfg`` (resolved against DEFAULTS) and return the results summary.

    ``resume`` continues from ``OUT/checkpoint.pt``; without it an existing checkpoint is an
    error unless ``overwrite``, so a finished run is never silently replaced.
    """
    from tqdm import tqdm

    cfg = resolve_config(cfg)
    out = Path(cfg["out"])
    ckpt_path = out / "checkpoint.pt"
    if resume and not ckpt_path.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}; run without --resume "
                                "to start, or point --out at the run to continue")
    if not resume and ckpt_path.exists() and not overwrite:
        raise FileExistsError(f"{out} already holds a run ({ckpt_path}); pass --resume to "
                              "continue it, --overwrite to start over, or another --out")
    out.mkdir(parents=True, exist_ok=True)

    torch.set_num_threads(int(cfg["num_threads"] or os.cpu_count() or 1))
    device = _pick_device(cfg["device"])
    channels_last = bool(cfg["channels_last"])
    seed = int(cfg["seed"])
    optim_cfg, prune_cfg, log_cfg = cfg["optim"], cfg["prune"], cfg["log"]
    method = prune_cfg.get("method", "none")

    _seed_everything(seed)
    train_loader, test_loader = make_loaders(cfg["data"], seed=seed)
    model_kwargs = {k: v for k, v in cfg["model"].items() if k != "name" and v is not None}
    model = build_model(cfg["model"]["name"], **model_kwargs)
    dense_stats = model_stats(model)

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
        pruner = make_pruner(net, prune_cfg, steps_per_epoch=len(train_loader),
                             epochs=int(optim_cfg["epochs"]))
    net = net.to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)

    optimizer = torch.optim.SGD(net.parameters(), lr=optim_cfg["lr"],
                                momentum=optim_cfg["momentum"],
                                nesterov=bool(optim_cfg["nesterov"]) and optim_cfg["momentum"] > 0,
                                weight_decay=optim_cfg["weight_decay"])
    if pruner is not None and hasattr(pruner, "attach_optimizer"):
        pruner.attach_optimizer(optimizer)  # e.g. CUCB: inactive weights keep their state
    steps_per_epoch = len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, optim_cfg, steps_per_epoch))
    criterion = nn.CrossEntropyLoss(label_smoothing=optim_cfg["label_smoothing"])

    start_epoch, step, elapsed = 0, 0, 0.0
    metrics, steps_log = CsvLog(out / "metrics.csv"), CsvLog(out / "steps.csv")
    if resume:
        # Our own file with numpy RNG state in it: the weights-only unpickler would refuse it.
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        changed = [k for k in _config_changes(ckpt["config"], cfg)
                   if k not in RESUMABLE_CHANGES]
        if changed:
            raise ConfigError(f"--resume: the config differs from the checkpoint's in {changed}; "
                              "pass the same recipe and overrides (only "
                              f"{sorted(RESUMABLE_CHANGES)} may change), or start a new run "
                              "with another --out")
        net.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        # The saved lr came from the saved schedule; when optim.epochs grew, the schedule did too.
        for group, base_lr in zip(optimizer.param_groups, scheduler.base_lrs):
            group["lr"] = base_lr * lr_factor(ckpt["step"], optim_cfg, steps_per_epoch)
        if pruner is not None:
            pruner.load_state_dict(ckpt["pruner"])
        _set_rng_state(ckpt["rng"])
        start_epoch, step, elapsed = ckpt["epoch"], ckpt["step"], ckpt["elapsed_s"]
        metrics.truncate("epoch", start_epoch)
        steps_log.truncate("step", step)
    else:
        for log in (metrics, steps_log):
            log.rows = []
            if log.path.exists():
                log.path.unlink()
    (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    writer = _tensorboard_writer(log_cfg["tensorboard"], out)

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
            "format": 1, "epoch": epoch + 1, "step": step, "elapsed_s": elapsed, "config": cfg,
            "model": net.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "pruner": pruner.state_dict() if pruner is not None else None,
            "rng": _rng_state(),
        }
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save(checkpoint, tmp)
        os.replace(tmp, ckpt_path)  # a crash mid-save leaves the previous checkpoint intact
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
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(format_results(results))
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
                        help="continue from OUT/checkpoint.pt")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over even if OUT already holds a run")
    parser.add_argument("--out", help="output folder (overrides the recipe's 'out')")


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"out={json.dumps(args.out)}")
    try:
        cfg = load_config(args.config, overrides)
        train(cfg, resume=args.resume, overwrite=args.overwrite)
    except (ConfigError, FileNotFoundError, FileExistsError) as exc:
        print(f"fxprune train: error: {exc}", file=sys.stderr)
        return 2
    return 0
