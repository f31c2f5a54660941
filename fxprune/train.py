"""``fxprune train CONFIG``: train a YAML recipe dense or with a pruning method, then finalize.

A recipe is a YAML file whose sections are those of :data:`DEFAULTS` (see
``configs/fashion_mnist_resnet.yaml``); ``--set section.key=value`` overrides single values
with YAML-typed values (``--set optim.epochs=2``, ``--set model.widths=[8,16,32]``). The
config is validated whole before any work (:mod:`fxprune.recipe_config`); ``prune`` keys are
the pruning method's constructor arguments plus the recipe's own (``*_epochs`` schedules,
``allow_above_target``).

Each epoch appends to ``OUT/metrics.csv`` (and every ``log.every_steps`` steps, and at the
epoch's end, to ``OUT/steps.csv``), evaluates on the test split and saves ``OUT/checkpoint.pt`` (the previous
one kept as ``checkpoint.prev.pt``; tensors and plain data only); ``--resume`` continues from
it exactly (model, optimizer, schedule, pruner, RNG states; the data order is a function of
seed and epoch). OUT must be new, empty, or a run's own folder (``.fxprune-run`` marker). At the end the model is saved whole to ``OUT/model_dense.pt``, or,
when pruning, finalized to ``OUT/model_pruned.pt``, with ``fxprune_input_shape`` set for
``fxprune deploy``; ``OUT/results.json`` holds the summary the command prints.

From Python: ``train(load_config("configs/fashion_mnist_resnet.yaml", ["optim.epochs=1"]))``.

This module is the training loop; the config is :mod:`fxprune.recipe_config`, everything
written to the run folder :mod:`fxprune.run_io`, and what each process does under ``torchrun
--nproc-per-node N -m fxprune train CONFIG`` (DDP, one slice of every batch per process, rank 0
writing) follows :mod:`fxprune.distributed` (see :func:`_train`).
"""
from __future__ import annotations

import argparse
import copy
import inspect
import json
import math
import os
import pickle
import random
import re
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from . import distributed as fxdist
from .allocation import InfeasibleBudget, step_too_wide
from .cpu_kernels import nhwc_weight_grad_fault
from .data import make_loaders
from .passes.insert_masks import MASK_OWNER
from .deploy.measured_cost import (LATENCY_COSTS, TIMED_FLOOR, latency_cost,
                                   measured_cost_from_dict, measured_cost_to_dict)
from .groups import state_of
from .errors import (ArgumentError, DivergedError, FxPruneError, MethodProtocolError,
                     TargetNotReachedError, TraceError, described, first_line, out_of_memory)
from .methods.base import (check_resumed_steps, method_cost, method_parameters,
                           refuse_unloadable_state, schedule_end, check_on_trial)
from .models import build_model, timm_name
from .recipe_config import (DEFAULTS, NO_PRUNING, PRUNERS, RECIPE_PRUNE_KEYS, RESUMABLE_CHANGES,
                            STEP_ARGS, ConfigError, apply_overrides, check_run_fits,
                            fractions_to_epochs, load_config, parse_value, pruner_class,
                            resolve_config)
from .run_io import (CHECKPOINT_FORMAT, INPUT_SHAPE, RUN_MARKER, CheckpointError, RunLogs,
                     check_out_folder, config_changes, cost_columns, file_sha256, format_results,
                     load_checkpoint, lock_out_folder, move_tensors, release_out_folder, rng_state,
                     save_checkpoint, save_module, set_rng_state, start_over, tensorboard_writer,
                     unwritable_folder, unwritable_run_file, write_results)
from .units import UnitIndex

# Names this module exported before the config and the run I/O moved out stay importable here.
_REEXPORTED = (DEFAULTS, apply_overrides, parse_value, format_results)

__all__ = ["DEFAULTS", "ConfigError", "CheckpointError", "TargetNotReachedError", "load_config",
           "resolve_config", "apply_overrides", "check_out_folder", "save_checkpoint", "load_checkpoint",
           "make_pruner", "train", "evaluate", "model_stats", "add_arguments", "run"]






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
              if k not in RECIPE_PRUNE_KEYS or k.endswith(("_epochs", "_fraction"))}
    if "target" in kwargs and kwargs["target"] is None:  # null: the method's own default
        del kwargs["target"]
    method = prune_cfg.get("method", NO_PRUNING)
    if method == NO_PRUNING:
        return None
    if any(k.endswith("_fraction") for k in kwargs):
        if context.get("epochs") is None:
            raise ConfigError("prune.*_fraction schedules need the run's optim.epochs")
        kwargs = fractions_to_epochs(kwargs, context["epochs"])
    if method not in PRUNERS:
        raise ConfigError(f"prune.method {method!r} is not one of: none, {', '.join(PRUNERS)}")
    from .methods.registration import get_method

    entry = get_method(method)
    cls = entry.cls
    try:
        accepted = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        accepted = {}
    steps = STEP_ARGS | set(getattr(cls, "step_args", ()))
    # a method taking **kwargs (an SMCP subclass or factory forwarding them) still counts the
    # recipe's schedule keys in steps
    takes_any = any(p.kind == p.VAR_KEYWORD for p in accepted.values())
    convertible = set(accepted) | (steps if takes_any else set())
    _epochs_to_steps(kwargs, context.get("steps_per_epoch"), context.get("epochs"), convertible)
    defined = dict(getattr(entry, "defaults", None) or {})  # settings that define the method
    for name, value in context.items():
        # (review189 R11: the run's seed replaced a seed the method's registration fixes)
        if name in accepted and name not in kwargs and name not in defined:
            kwargs[name] = value
    fractions = [k for k in prune_cfg if k.endswith("_fraction")]
    try:
        pruner = entry.build(pm, **kwargs)
    except (ValueError, TypeError) as exc:  # the method's own checks: a config error
        # steps counted from fractions of the run: a short run is the cause as often as they,
        # except for a target below the cheapest model, which no run length changes
        total = (context.get("steps_per_epoch") or 0) * (context.get("epochs") or 0)
        # ... and only for an error about those steps (break52 #5: `c must be >= 0` got it)
        # (not a keyword refused with the list of those the method takes: break105 F11)
        about_steps = (not (isinstance(exc, TypeError) and "is not an argument" in str(exc))
                       and any(re.search(rf"\b{re.escape(k)}\b", str(exc)) for k in steps))
        scaled = (f" (prune.{', prune.'.join(fractions)} of this run's {total:g} optimizer steps: "
                  "a longer run, with more data or optim.epochs, also gives them room)"
                  if fractions and total and about_steps and not isinstance(exc, InfeasibleBudget)
                  else "")
        error = ConfigError(f"prune ({method}): {exc}{scaled}")
        error.floor = getattr(exc, "floor", None)  # (a target below the narrowest model)
        raise error from None
    # the trainer calls these (fxprune.methods.base.Method): a method without one would fail
    # only after an epoch of training
    missing = [m for m in ("step", "cost", "state_dict", "load_state_dict")
               if not callable(getattr(pruner, m, None))]
    if missing:
        raise ConfigError(f"prune.method {method!r} builds a {type(pruner).__name__} without "
                          f"{', '.join(f'{m}()' for m in missing)}, which the trainer calls; "
                          "see fxprune.methods.base.Method for the protocol")
    try:  # what epochs and fractions became, for the log and results.json
        pruner.fxprune_schedule_steps = {k: kwargs[k] for k in sorted(convertible)  # (a set:
                                         if k in steps and k in kwargs}  # same order each run)
        # every argument the method ran with, its defaults included: config.yaml holds only
        # the recipe's keys, and a default changed in a later version changes the run
        # unsaid (break188 F6)
        pruner.fxprune_arguments = _arguments_used(method, kwargs)
    except AttributeError:  # a method object that takes no attributes
        pass
    return pruner


def _seed_drawn_from(ckpt: dict) -> int | None:
    """The seed a resumed method's generator began from: its state's own, or for a state from
    before the state kept it (a generator state alone), the checkpoint's ``prune.seed``, else
    that key's default then, 0 (break192 F1: the resume's ``prune.seed`` was recorded, or 0,
    whatever the run had drawn from); None for a method that draws nothing."""
    state = ckpt.get("pruner")
    if not isinstance(state, dict):
        return None
    if state.get("seed") is not None:
        return int(state["seed"])
    if "rng" in state:
        return int((ckpt.get("config") or {}).get("prune", {}).get("seed", 0))
    return None


def _arguments_used(method: str, kwargs: dict) -> dict:
    """The keyword arguments ``method``'s class was built with, each of its others at its
    default, as plain data (an object as ``<ClassName>``), sorted; the trainer's own (the
    model, the run's length, hooks) left out."""
    from .recipe_config import CONTEXT_ARGS

    used = {k.removeprefix("prune."): v for k, v in _argument_defaults(method).items()}
    used.update(kwargs)
    used = {k: v for k, v in used.items() if k not in CONTEXT_ARGS}

    def plain(value):  # an object (a measured latency table) by its class: its repr is long
        try:
            json.dumps(value, allow_nan=False)
            return value
        except (TypeError, ValueError):
            return f"<{type(value).__name__}>"

    return {k: plain(used[k]) for k in sorted(used)}


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
            epochs_value = float(kwargs.pop(key))
            # a positive interval never rounds to 0 steps (update_every_fraction in a tiny run)
            kwargs[name] = max(at(epochs_value), 1 if epochs_value > 0 else 0)


def _takes_loss(step) -> bool:
    """Whether a method's ``step`` accepts the loss (the protocol's ``step(loss=None)``); a
    method written before the loss was passed keeps working with ``step()``."""
    try:
        params = inspect.signature(step).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params)


def check_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """ValueError naming the first parameter whose optimizer state (a momentum buffer, Adam's
    moments) has another shape than the parameter: ``Optimizer.load_state_dict`` checks the
    group sizes only, and another model's state of the same parameter count raised at the
    first step, deep in torch (break103 F1)."""
    for gi, group in enumerate(optimizer.param_groups):
        for pi, p in enumerate(group["params"]):
            for key, value in optimizer.state.get(p, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() and value.shape != p.shape:
                    raise ValueError(f"the optimizer's {key} of parameter {pi} in group {gi} is "
                                     f"{tuple(value.shape)}, and the parameter {tuple(p.shape)}")


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
    """Mean cross-entropy and accuracy of ``model`` over ``loader``, in eval mode.

    Under ``torch.distributed`` each process evaluates its slice of the loader (see
    :meth:`~fxprune.data.BatchLoader.shard`) and the sums and counts are added over processes:
    every process returns the numbers of the whole split."""
    was_training = model.training
    model.eval()
    # the sums stay on the device, read once at the end: two reads per batch were two syncs
    # (review140 F2); float64, as the host sum of each batch's float32 loss was
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    for x, y in loader:
        if not len(y):  # a process's share of a last batch smaller than the number of processes
            continue
        x, y = _to_device(x, device, channels_last), y.to(device, non_blocking=True)
        logits = model(x)
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
    model.train(was_training)
    loss_sum, correct = float(loss_sum), int(correct)
    loss_sum, correct, seen = _summed(loss_sum, correct, seen)
    return loss_sum / max(seen, 1), correct / max(seen, 1)


def prediction_differences(a: nn.Module, b: nn.Module, loader, device: torch.device,
                           channels_last: bool = False) -> int:
    """Samples of ``loader`` on which ``a`` and ``b`` (in eval mode) predict different classes,
    over every process: the masked and the finalized model (break73 F1: the difference of
    their correct counts let flips that cancel, and wrong-to-other-wrong ones, pass as 0).

    In IEEE float32, as finalize's own check (:func:`fxprune.compare.ieee_float32`):
    with TF32 a near-tie sample could flip between two exact models (review175 F4). The count
    stays on the device until the end (one read, not one a batch)."""
    from fxprune.compare import ieee_float32

    modes = a.training, b.training
    a.eval(), b.eval()
    differ = torch.zeros((), dtype=torch.int64, device=device)
    with torch.no_grad(), ieee_float32():
        for x, _ in loader:
            if not len(x):
                continue
            x = _to_device(x, device, channels_last)
            differ += (a(x).argmax(1) != b(x).argmax(1)).sum()
    a.train(modes[0]), b.train(modes[1])
    return _summed(0.0, int(differ), 0)[1]


def model_stats(model: nn.Module, input_shape=INPUT_SHAPE) -> dict[str, int]:
    """Parameters and FLOPs (torch's flop counter, 2 per multiply-accumulate) at batch 1."""
    from .summary import count_flops

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return {"params": sum(p.numel() for p in model.parameters()),
            "flops": count_flops(model, (torch.zeros(input_shape, device=device),))}


def _to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _pick_device(name: str, distributed: bool = False) -> torch.device:
    """The device of ``device``; with several processes on CUDA, this process's GPU
    (``cuda:LOCAL_RANK``)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for but CUDA is not available; "
                          "use --set device=cpu (or auto)")
    if distributed and device.type == "cuda":
        if device.index is not None:
            raise ConfigError(f"device {name!r}: under torchrun each process uses the GPU of its "
                              "local rank; set device=cuda (or auto), and choose GPUs with "
                              "CUDA_VISIBLE_DEVICES")
        device = torch.device("cuda", fxdist.local_rank())
    return device


def default_threads(local_processes: int = 1) -> int:
    """CPU threads per process for ``num_threads: null``: ``OMP_NUM_THREADS`` where it is set
    (torchrun sets 1 when it is not), else the cores this process may run on (its CPU
    affinity: taskset, a container's or Slurm's cpuset) divided by the processes on this node.
    (break170 F1: the host's every core, 32 threads pinned to one core trained 5x slower.)"""
    from fxprune.deploy.common import usable_cores

    return _omp_threads() or max(usable_cores() // max(local_processes, 1), 1)


def _omp_threads() -> int | None:
    """``OMP_NUM_THREADS`` where it is a count >= 1, else None."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(env) if env.isdigit() and int(env) >= 1 else None


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


# ----------------------------------------------------------------------------- training

def _keep_recorded_channel_step(prune_cfg: dict, method: str, state: dict) -> None:
    """A resumed run goes on at the channel_step its state recorded where the recipe leaves it
    to the method's default and that default moved since (review195 R1: CCP's and CUCB's went
    from 1 to 8, and a run begun at 1 went on at 8, its arms and rounds at another granularity,
    with a warning only); config.yaml then records it, and one line says so."""
    from .methods.registration import get_method, moved_channel_step

    moved = moved_channel_step(get_method(method), state, prune_cfg) if state else None
    if moved is None:
        return
    recorded, default = moved
    prune_cfg["channel_step"] = recorded
    warnings.warn(f"--resume: the run began at channel_step {recorded}, {method}'s default then "
                  f"(now {default}), and goes on at it; config.yaml records prune.channel_step: "
                  f"{recorded} (a new run takes the new default)", RuntimeWarning, stacklevel=2)


def _registered_defaults(method: str) -> dict[str, Any]:
    """The arguments ``method``'s registration fixes (``hard``: ``masks="hard"``)."""
    from .methods.registration import get_method

    try:
        return dict(get_method(method).defaults or {})
    except (ValueError, AttributeError, ImportError):
        return {}


def _argument_defaults(method: str) -> dict[str, Any]:
    """``{"prune.NAME": default}`` of the method's constructor arguments ({} for none)."""
    if method == NO_PRUNING:
        return {}
    try:  # (a one-shot factory's are SMCP's: break76 #4, its SMCP defaults were refused)
        params = method_parameters(pruner_class(method))
    except (TypeError, ValueError, ImportError, ConfigError):
        return {}
    return {f"prune.{name}": p.default for name, p in params.items()
            if p.default is not inspect.Parameter.empty}


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
        timm = timm_name(cfg["model"]["name"]) is not None  # its stem is at data.channels
        hint = ("; models that expect RGB read the gray images with --set data.channels=3"
                if x.shape[1] == 1 and not timm else
                # (review181 F8: timm's vit at 28x28 was told to use 3 channels)
                f"; a timm model built for a fixed input size, or one that shrinks "
                f"{x.shape[-2]}x{x.shape[-1]} images below its kernels, does not take them (the "
                "recipe resizes nothing): give a ViT-like model the size (--set "
                f"model.kwargs.img_size={x.shape[-1]}), or choose one that does, e.g. "
                "timm:resnet10t or timm:mobilenetv3_small_050" if timm else "")
        if "too small" in first.lower() and not timm:  # (break102 F1: vgg11 on 28x28)
            hint += (f"; the model shrinks {x.shape[-2]}x{x.shape[-1]} images below one pixel "
                     "(the recipe resizes nothing): choose a model that keeps a spatial size "
                     "there, e.g. resnet_fmnist or mobilenet_v2")
        raise ConfigError(f"model.name {cfg['model']['name']!r} does not run on the data's "
                          f"images of shape {tuple(x.shape[1:])}: {first[:200]}{hint}") from None
    finally:
        model.train()
    # in training too (on a copy: its BatchNorm statistics stay), where some models return
    # more than logits: torchvision's googlenet passed, then failed at step 1 (break73 F4)
    try:
        with torch.no_grad():
            trained = copy.deepcopy(model).train()(x[:2])
    except Exception:  # noqa: BLE001 - e.g. a BatchNorm on one value: the step's batch decides
        trained = None
    if trained is not None and not isinstance(trained, torch.Tensor):
        raise ConfigError(f"model.name {cfg['model']['name']!r} returns "
                          f"{type(trained).__name__} in training, not a logits tensor (auxiliary "
                          "outputs); fxprune train needs a model whose forward returns the "
                          "logits in both modes: use another model")
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

    Under ``torchrun`` with several processes (``WORLD_SIZE > 1``) the function joins the job
    (:func:`fxprune.distributed.init_from_env`) and trains data-parallel: see
    :func:`_train`'s notes and the README's "Distributed training".
    """
    if resume and overwrite:
        raise ConfigError("--resume continues the run in OUT and --overwrite starts it over: "
                          "pass one of them")
    cfg = resolve_config(cfg)
    device = _pick_device(cfg["device"], distributed=fxdist.launched_with_several_processes())
    created = fxdist.init_from_env(device)
    threads = torch.get_num_threads()  # _train sets the run's (review126 #6: the caller kept it)
    try:
        return _train(cfg, device, resume=resume, overwrite=overwrite)
    except RuntimeError as exc:
        # whether the process group was up when it failed: destroyed below, before the
        # command line reads it (review138 F1: the one-line 'peer lost' never fired)
        exc.fxprune_in_process_group = dist.is_available() and dist.is_initialized()
        raise
    finally:
        torch.set_num_threads(threads)
        release_out_folder(Path(cfg["out"]).expanduser())  # taken by rank 0 in _train
        if created:
            dist.destroy_process_group()


def _refuse_other_data(saved: dict | None, current: dict, cfg: dict) -> None:
    """Refuse a resume on data other than the run's: ``data.root`` may change for the same
    data moved, not for another split (break65 #3: other data trained the next epochs, said as
    a process-count change). ``saved`` is None for checkpoints written before fingerprints."""
    if saved is None:
        return
    # what the checkpoint records (one written before the images' hash has the labels' only)
    changed = sorted({key for split in ("train", "test") for key, value in saved[split].items()
                      if current[split].get(key) != value})
    if not changed:
        return
    root = cfg["data"].get("root")
    before_images_hash = "images_sha256" not in saved["test"]
    only_test = all(current["train"].get(k) == v for k, v in saved["train"].items())
    if (before_images_hash and only_test and cfg["data"].get("subset_test") is not None
            and int(cfg["seed"]) != 0):
        # (break204 F1: "point data.root at the data", which could not help) the draw of the
        # test subset stopped following the seed (f32d14a, 2026-12-04); checkpoints written
        # before it record the labels' hash only, and the same data gives other test images
        raise ConfigError(
            f"--resume: this run's test subset (data.subset_test {cfg['data']['subset_test']}, "
            f"seed {cfg['seed']}) was drawn by an fxprune older than 2026-12-04, which drew it "
            "anew for every seed; this one draws the same test images at every seed, so it "
            "cannot score the run on the images it began with: finish the run with the fxprune "
            "it began with, or start a new run with another --out")

    def sizes(fp):
        return f"{fp['train']['samples']} training / {fp['test']['samples']} test images"

    saw, sees = sizes(saved), sizes(current)
    other = " and ".join(k.split("_")[0] for k in changed if k != "samples")
    differ = f"{sees} against {saw}" if saw != sees else f"{sees}, as the run's, other {other}"
    raise ConfigError(
        f"--resume: the data at data.root ({root or 'the default root'}) is not the run's "
        f"({differ}); point data.root at the data the run trained on, or start a new run "
        "with another --out")


#: recipe keys each machine of a job may set for itself: where its copy of the data lives, its
#: threads and loader workers, its device, what it shows, where it would write (rank 0 writes)
_PER_MACHINE = (("data", "root"), ("data", "num_workers"), ("num_threads",), ("device",),
                ("log", "progress"), ("log", "tensorboard"), ("out",))


def _shared_recipe(cfg: dict) -> dict:
    """``cfg`` without the keys each machine may set for itself (``_PER_MACHINE``)."""
    shared = copy.deepcopy(cfg)
    for path in _PER_MACHINE:
        parent = shared
        for key in path[:-1]:
            parent = parent.get(key, {}) if isinstance(parent, dict) else {}
        if isinstance(parent, dict):
            parent.pop(path[-1], None)
    return shared


def _refuse_processes_that_differ(what: str, value, way: str, detail: str = "") -> None:
    """Every process of a job trains one recipe on one dataset: one all-gather of a hash of
    ``value`` (and each process's ``detail``), and a difference from process 0's is the same
    ConfigError on every process (said once, by rank 0). Run twice: the recipe and the
    command's flags first thing (review161 F1: compared after --resume's work had split the
    processes, a flag given to one hung the job), the data once loaded. break160 F1: one
    machine's copy of Fashion-MNIST with fewer images hung the job in a collective until
    gloo's 30-minute timeout; F2: other labels, or another optim.lr, trained on silently."""
    import hashlib

    mine = hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
    everyone: list = [None] * fxdist.world_size()
    dist.all_gather_object(everyone, (mine, detail))
    odd = [r for r, (theirs, _) in enumerate(everyone) if theirs != everyone[0][0]]
    if odd:
        details = "; ".join(f"process {r}: {everyone[r][1]}" for r in [0, *odd[:3]]) if detail else ""
        raise ConfigError(f"process{'es' if len(odd) > 1 else ''} {', '.join(map(str, odd[:8]))} of "
                          f"the job read{'' if len(odd) > 1 else 's'} other {what} than process 0"
                          f"{f' ({details})' if details else ''}; {way}")


def _refuse_unwritable_resume(out: Path) -> None:
    """Refuse a resume that would train on in a folder it cannot write (break65 #5)."""
    unwritable = unwritable_folder(out) or unwritable_run_file(out)
    if unwritable:
        raise PermissionError(f"--out {out}: {unwritable}; copy the run to a folder you can "
                              "write and --resume there")


def _on_main(fn):
    """``fn()`` run on rank 0, its result (or its exception, raised again) on every rank:
    folder checks and checkpoint reads happen once, where the files are written, so several
    machines need no shared file system."""
    if not fxdist.is_distributed():
        return fn()
    if fxdist.is_main_process():
        try:
            result = (True, fn())
        except Exception as exc:  # noqa: BLE001 - every rank must stop with the same error
            fxdist.broadcast_object((False, exc))
            raise
        return fxdist.broadcast_object(result)[1]
    ok, payload = fxdist.broadcast_object(None)
    if not ok:
        payload.fxprune_from_rank0 = True  # rank 0 reports it; printed again it looked like this rank's
        raise payload
    return payload


def _train(cfg: dict, device: torch.device, *, resume: bool, overwrite: bool) -> dict:
    """The run on this process; under DDP (notes where one process differs):

    * ``data.batch_size`` is the global batch: each process gets its slice of every batch
      (:meth:`~fxprune.data.BatchLoader.shard`), so steps per epoch, the learning-rate
      schedule, the pruning schedule and the checkpoint's step count do not depend on the number
      of processes, and a run resumes on any number of them (but for a last batch of fewer
      images than processes, which is dropped: a resume at another count then says so).
    * The model is prepared and the pruner built on every process, before the DDP wrap;
      ``pruner.step()`` runs after ``backward()`` returned (gradients averaged) and rank 0's
      masks are broadcast after each step that updates them (it returns a record:
      :func:`fxprune.distributed.broadcast_masks`), as the README's own loop does.
    * The test split is sharded too; losses and counts are summed over the processes.
    * Rank 0 checks the folder, reads the checkpoint and writes every file.
    """
    from tqdm import tqdm

    distributed = fxdist.is_distributed()
    main = fxdist.is_main_process()
    world = fxdist.world_size()
    if distributed:  # before any work that differs between the processes (review161 F1)
        _refuse_processes_that_differ(
            "recipe (config, --set, --resume and --overwrite)",
            {"recipe": _shared_recipe(cfg), "resume": resume, "overwrite": overwrite},
            "launch every process with the same command (only "
            f"{', '.join('.'.join(p) for p in _PER_MACHINE)} may differ)")
    if world > int(cfg["data"]["batch_size"]):  # a recipe value: refused before any work, and
        # said once, by rank 0 (break73 M4: the loader's ValueError, from every rank)
        raise ConfigError(f"data.batch_size {cfg['data']['batch_size']} is smaller than the "
                          f"{world} processes: each needs at least one sample per step; raise "
                          "data.batch_size (it is the global batch) or use fewer processes")
    if not str(cfg["out"]).strip():  # Path("") is the current folder (break62 #12)
        raise ConfigError("out is empty: give the run's folder (--out DIR, or out: in the "
                          "recipe)")
    out = Path(cfg["out"]).expanduser()
    cfg["out"] = str(out)
    ckpt_path = out / "checkpoint.pt"
    # the lock first: a second train in the same folder is refused as such, not by what the
    # first one has written so far (break58 #3); a new folder is locked when it is claimed
    tensorboard = tensorboard_writer(cfg["log"]["tensorboard"], None) is not None
    _on_main(lambda: (lock_out_folder(out), check_out_folder(
        out, resume=resume, overwrite=overwrite, tensorboard=tensorboard)))

    threads = cfg["num_threads"] or default_threads(fxdist.local_world_size())
    torch.set_num_threads(int(threads))
    channels_last = bool(cfg["channels_last"])
    seed = int(cfg["seed"])
    optim_cfg, prune_cfg, log_cfg = cfg["optim"], cfg["prune"], cfg["log"]
    method = prune_cfg.get("method", NO_PRUNING)
    sync_bn = bool(cfg["train"]["sync_bn"]) and distributed
    check_masks = bool(cfg["train"]["check_masks"])
    if sync_bn and device.type != "cuda":
        raise ConfigError("train.sync_bn: nn.SyncBatchNorm runs on CUDA only; set "
                          "train.sync_bn=false on the CPU (each process then normalises with "
                          "its own slice's batch statistics)")

    ckpt = None
    if resume and not distributed:
        ckpt = load_checkpoint(ckpt_path, device)
    elif resume:  # read by rank 0, sent to all; the RNG states stay CPU tensors
        ckpt = _on_main(lambda: load_checkpoint(ckpt_path, "cpu"))
        ckpt = {k: v if k == "rng" else move_tensors(v, device) for k, v in ckpt.items()}
    if ckpt is not None:
        done = _check_resume(cfg, ckpt, out, method, seed, main)
        if done is not None:
            return done

    if ckpt is not None:  # a run that will train on writes its folder (rank 0 checks)
        _on_main(lambda: _refuse_unwritable_resume(out))
    if main:  # results.json says it only at the end; under torchrun null is 1 (review172 F9)
        where = (f"{world} processes, {torch.get_num_threads()} CPU thread(s) each" if world > 1
                 else f"{torch.get_num_threads()} CPU thread(s)")
        why = ("" if cfg["num_threads"] is not None else " (num_threads null: OMP_NUM_THREADS)"
               if _omp_threads() else " (num_threads null: the usable cores)")
        print(f"fxprune train: {out} on {device}, {where}{why}", flush=True)
    _seed_everything(seed)  # the same seed on every process: same model, same pruner choices
    train_loader, test_loader = make_loaders(cfg["data"], seed=seed,
                                             pin_memory=device.type == "cuda", processes=world)
    data_fingerprint = {"train": train_loader.fingerprint(), "test": test_loader.fingerprint()}
    if distributed:
        _refuse_processes_that_differ(
            "data", data_fingerprint, "give every machine the same copy at its data.root",
            detail=f"{data_fingerprint['train']['samples']} training / "
                   f"{data_fingerprint['test']['samples']} test images")
    if ckpt is not None:
        _refuse_other_data(ckpt.get("data"), data_fingerprint, cfg)
    model = _recipe_model(cfg)
    # trained weights to prune, then fine-tune; a resumed run's are its checkpoint's
    model_init = (ckpt.get("model_init") if ckpt is not None
                  else _load_model_init(model, cfg["model"].get("init"), cfg["model"]["name"]))
    train_loader.set_epoch(0)
    rng = torch.get_rng_state()
    _check_model_fits_data(model, cfg, train_loader, test_loader)
    torch.set_rng_state(rng)  # the check must not change what the run draws
    input_shape = (1, *train_loader.sample_shape)  # one image: what the saved models run on
    dense_stats = model_stats(model, input_shape)
    # The first training batch of epoch 0 (fixed by the seed, so a resumed run prepares the same
    # graph; taken before sharding, so the same on every process). One image: cost models and
    # latency tables describe the batch-1 deployment, and finalize's exactness check runs on it.
    train_loader.set_epoch(0)
    example_batch = next(iter(train_loader))[0][:1]
    if distributed:
        train_loader.shard(fxdist.rank(), world)
        test_loader.shard(fxdist.rank(), world, drop_small_last=False)
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:  # (break173 F2: a dense run saved an untrained model, exit 0)
        raise ConfigError(f"the {train_loader.dataset_size} training image(s) give no training "
                          f"step on {world} processes (a batch with fewer samples than "
                          "processes is dropped: each process needs one); use more training "
                          "data (data.subset_train) or fewer processes")

    # the model that trains, its method, the latency table timed for it (every checkpoint
    # holds it) and what puts the BatchNorms back before finalize
    net, pruner, measured_cost_state, undo_sync_bn = model, None, None, None
    if method != NO_PRUNING:
        net, pruner, measured_cost_state, undo_sync_bn = _prepared_pruner(
            cfg, model, example_batch, out=out, ckpt=ckpt, ckpt_path=ckpt_path,
            steps_per_epoch=steps_per_epoch, sync_bn=sync_bn)
    net = net.to(device)
    if channels_last and device.type == "cpu":
        faulty = [(name, m) for name, m in net.named_modules() if nhwc_weight_grad_fault(m)]
        if faulty:  # a crash or wrong gradients would cost more than NHWC saves
            channels_last = False
            if main:
                name, conv = faulty[0]
                print(f"channels_last off: {name} (strided 1x1 conv, "
                      f"{conv.in_channels} input channels) would meet "
                      "oneDNN's NHWC weight-gradient fault on the CPU (see fxprune.cpu_kernels)",
                      flush=True)
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

    logs = RunLogs(out, log_cfg["tensorboard"], main=main)  # checks before any write
    # the threads, versions and device: one entry, unless a resume changed them (break190 F5:
    # results.json said the last part's only)
    here = {"threads": torch.get_num_threads(),
            **{k: v for k, v in run_environment(device, seed).items() if k != "seed"}}
    if ckpt is None:
        history = _RunHistory.fresh(int(optim_cfg["epochs"]), world, here)
    else:
        history = _resumed(ckpt, ckpt_path, net, optimizer, scheduler, pruner, cfg=cfg,
                           steps_per_epoch=steps_per_epoch, here=here, device=device)
    start_epoch, step, elapsed = history.start_epoch, history.step, history.elapsed
    images, loop_s = history.images, history.loop_s
    lr_schedules, process_counts = history.lr_schedules, history.process_counts
    environments = history.environments
    logs.open(cfg, (start_epoch, step) if ckpt is not None else None, overwrite=overwrite)

    forward = net
    if distributed:
        if sync_bn and undo_sync_bn is None:  # no method: converted here
            undo_sync_bn = fxdist.use_sync_batchnorm(net)  # undone before finalize
        forward = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None)

    epochs = int(optim_cfg["epochs"])
    every = max(int(log_cfg["every_steps"]), 1)
    step_takes_loss = pruner is not None and _takes_loss(pruner.step)
    net.train()
    try:
        for epoch in range(start_epoch, epochs):
            started = time.perf_counter()
            train_loader.set_epoch(epoch)
            loss_sum, correct, seen = 0.0, 0, 0  # host numbers, from the windows below
            # The window's sums stay on the device: reading them is a host sync, done once per
            # logged window (log.every_steps), not once per step.
            window_loss = torch.zeros((), dtype=torch.float64, device=device)
            window_correct = torch.zeros((), dtype=torch.int64, device=device)
            window_seen = 0
            step_lr = optimizer.param_groups[0]["lr"]  # (a loader with no batch: its row's)
            epoch_end = step + len(train_loader)  # the step the epoch's last row is logged at
            bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{epochs}", leave=False,
                       disable=not (log_cfg["progress"] and main), dynamic_ncols=True)
            for x, y in bar:
                # (labels too without a wait: a blocking copy is a stream sync, review140 F2;
                # the loader pins batches on CUDA, so the copies overlap: review175 F3)
                x, y = _to_device(x, device, channels_last), y.to(device, non_blocking=True)
                # a method may train a sub-network of the same weights (CUCB's active channels)
                run = forward if distributed else (getattr(pruner, "train_forward", None) or net)
                logits = run(x)
                loss = criterion(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()  # under DDP: gradients averaged over the processes on return
                if pruner is not None:
                    # sees this batch's gradients; may update masks and weights
                    record = pruner.step(loss) if step_takes_loss else pruner.step()
                    # after an update (a record: the same step on every rank), one small
                    # tensor; equal masks by construction (see fxprune.distributed). Not at
                    # every step: the copy bumps each mask's version, and masked norms then
                    # read their mask from the device at every forward (break166 F1); the
                    # debug mode train.check_masks checks at every step
                    if record is not None or check_masks:
                        fxdist.broadcast_masks(net, check=check_masks)
                step_lr = optimizer.param_groups[0]["lr"]  # the rate this step trains with
                optimizer.step()
                scheduler.step()
                step += 1

                window_loss += loss.detach().double() * len(y)
                window_correct += (logits.argmax(1) == y).sum()
                window_seen += len(y)
                # every log.every_steps steps, and the epoch's last ones (break81 #1: they were
                # in no row, and a run shorter than the window wrote no steps.csv)
                if step % every == 0 or step == epoch_end:
                    w_loss, w_correct = float(window_loss), int(window_correct)
                    loss_sum, correct, seen = loss_sum + w_loss, correct + w_correct, seen + window_seen
                    bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}")
                    w_loss, w_correct, w_seen = _summed(w_loss, w_correct, window_seen)
                    if not math.isfinite(w_loss):  # (summed: every process stops alike)
                        raise TrainingDivergedError(_diverged(step, epoch, step_lr, ckpt_path))
                    logs.step_row({"step": step, "epoch": epoch + 1, "lr": step_lr,
                                   "loss": w_loss / w_seen, "acc": w_correct / w_seen})
                    window_loss.zero_(), window_correct.zero_()
                    window_seen = 0
            bar.close()
            if window_seen:  # (a loader shorter than its len(): steps the rows above missed)
                loss_sum += float(window_loss)
                correct += int(window_correct)
                seen += window_seen
            loss_sum, correct, seen = _summed(loss_sum, correct, seen)
            epoch_loop_s = time.perf_counter() - started
            images, loop_s = images + seen, loop_s + epoch_loop_s
            fxdist.broadcast_buffers(net)  # rank 0's BatchNorm statistics everywhere

            test_loss, test_acc = evaluate(net, test_loader, device, channels_last)
            elapsed += time.perf_counter() - started
            # the rate the epoch's last step trained with, as steps.csv's (review126 #4: the
            # next one's, 0.0 on a cosine run's last epoch)
            row = {"epoch": epoch + 1, "step": step, "lr": step_lr,
                   "train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
                   "test_loss": test_loss, "test_acc": test_acc,
                   "epoch_s": round(time.perf_counter() - started, 3),
                   "elapsed_s": round(elapsed, 3),
                   "images_per_s": round(seen / max(epoch_loop_s, 1e-9), 1)}
            epoch_cost = cost_columns(method_cost(pruner, method)) if pruner is not None else {}
            row.update(epoch_cost)
            logs.epoch_row(row)
            if getattr(pruner, "sync_state", None) is not None:
                pruner.sync_state()  # every rank: rank 0's checkpoint then holds all statistics
            if main:
                checkpoint = {
                    "format": CHECKPOINT_FORMAT, "epoch": epoch + 1, "step": step,
                    "elapsed_s": elapsed,
                    "config": cfg, "model": net.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "pruner": pruner.state_dict() if pruner is not None else None,
                    # its step count: a load_state_dict that does not bring it back is refused
                    "pruner_step_count": getattr(pruner, "step_count", None),
                    "measured_cost": measured_cost_state,
                    "rng": rng_state(device), "train_images": images, "train_loop_s": loop_s,
                    "world_size": world, "steps_per_epoch": steps_per_epoch,
                    "threads": torch.get_num_threads(),
                    "lr_schedules": lr_schedules, "data": data_fingerprint,
                    "process_counts": process_counts, "environments": environments,
                    "model_init": model_init,
                }
                if epoch == start_epoch and checkpoint["pruner"] is not None:
                    refuse_unloadable_state(pruner, method, checkpoint["pruner"])
                save_checkpoint(checkpoint, ckpt_path)
                # said once saved: the line means the epoch is safe (break158 F1)
                print(f"epoch {epoch + 1}/{epochs}: train loss {row['train_loss']:.4f} acc "
                      f"{row['train_acc']:.4f} | test loss {test_loss:.4f} acc {test_acc:.4f} | "
                      f"{row['epoch_s']:.1f}s | {row['images_per_s']:.0f} img/s"
                      + "".join(f" | {k} {v:.4g}" if isinstance(v, float) else f" | {k} {v}"
                                for k, v in epoch_cost.items()), flush=True)
    finally:
        logs.close()
        if undo_sync_bn is not None:
            undo_sync_bn()

    # the memory layout that trained (break158 F6: config.yaml keeps the recipe's
    # channels_last even where the run turned it off)
    run_facts = {"images_per_s": round(images / loop_s, 1) if loop_s > 0 else None,
                 "world_size": world, "threads": torch.get_num_threads(),
                 "channels_last": channels_last,
                 # what it trained on, as test_data says what it was scored on (break188 F2)
                 "train_data": {"name": cfg["data"]["name"], **data_fingerprint["train"]}}
    if model_init is not None:  # the trained weights it began from, by content
        run_facts["model_init"] = model_init
    if len(lr_schedules) > 1:  # trained on past an earlier optim.epochs: said in the results
        run_facts["lr_schedules"] = lr_schedules
    if len(process_counts) > 1:  # world_size is the last part's; the throughput spans all
        run_facts["process_counts"] = process_counts
    # as it was when this part started: the code that ran (a commit read at the end could be
    # one checked out while it trained: review189 R14)
    run_facts["environment"] = {"seed": seed, **{k: v for k, v in here.items() if k != "threads"}}
    if len(environments) > 1:  # threads and environment are the last part's
        run_facts["environments"] = environments
    results = _finish(cfg, net, pruner, dense_stats, test_loader, device, channels_last, out,
                      epochs, elapsed, run_facts, check=check_masks)
    fxdist.barrier_if_distributed()  # the others end once rank 0 has written everything
    return results


def _check_resume(cfg: dict, ckpt: dict, out: Path, method: str, seed: int,
                  main: bool) -> dict | None:
    """Refuse a resume whose recipe differs from the checkpoint's where the run cannot follow,
    and set ``cfg["prune"]``'s ``channel_step`` and ``seed`` back to those the run began with.
    Returns a finished run's results (said, and checked against its target), else None."""
    prune_cfg = cfg["prune"]
    # a method argument the recipe left to its default: the value the run used, which the
    # method's state records, so a default that moved since can be set back (break35 #1)
    state = ckpt.get("pruner") if isinstance(ckpt.get("pruner"), dict) else {}
    used = {f"prune.{k}": v for part in ("settings", "run_settings")  # both kinds (break38 #4)
            if isinstance(state.get(part), dict) for k, v in state[part].items()}
    # one the state does not record: the method's default (break73 M1: ramp_shape=exp and
    # momentum=0.9, SMCP's defaults written out, were refused as changes)
    used = {**_argument_defaults(ckpt["config"]["prune"].get("method", NO_PRUNING)), **used}
    # before the comparison: the step written to config.yaml by the first resume is the
    # recipe's own at the next (review197 M1: the second --resume was refused)
    _keep_recorded_channel_step(prune_cfg, method, state)
    changed = [k for k in config_changes(ckpt["config"], cfg, DEFAULTS, used,
                                         _argument_defaults(method))
               if k not in RESUMABLE_CHANGES]
    # a cool-down in epochs counts from the run's end, so it moves as a fraction does
    # (review126 #5)
    moving = sorted(k for k in prune_cfg if k.endswith("_fraction") or k == "cooldown_epochs")
    if (not changed and moving and method != NO_PRUNING
            and ckpt["config"]["optim"]["epochs"] != cfg["optim"]["epochs"]):
        raise ConfigError(
            f"--resume with optim.epochs {ckpt['config']['optim']['epochs']} -> "
            f"{cfg['optim']['epochs']}: prune.{moving[0]} "
            f"{'counts from the end' if moving[0] == 'cooldown_epochs' else 'is a fraction'}"
            f" of the run, so the "
            f"pruning schedule would move under a run already on it; keep optim.epochs, or "
            f"start a new run with another --out")
    if changed:
        raise ConfigError(f"--resume: the config differs from the checkpoint's in {changed}; "
                          "pass the same recipe and overrides (only "
                          f"{sorted(RESUMABLE_CHANGES)} may change), or start a new run "
                          "with another --out")
    drawn = _seed_drawn_from(ckpt)
    if (drawn is not None and prune_cfg.get("seed", seed) != drawn
            and "seed" not in _registered_defaults(method)
            and "prune.seed" in _argument_defaults(method)):
        # the generator goes on from the checkpoint: config.yaml, results.json and the next
        # checkpoint name the seed it began from (break192 F3: a --set prune.seed on
        # --resume was written there, without effect or a word)
        if "seed" in prune_cfg:
            warnings.warn(f"--resume: prune.seed {prune_cfg['seed']} has no effect; "
                          f"{method}'s generator goes on from the checkpoint, begun at seed "
                          f"{drawn}, which config.yaml and results.json record; to draw "
                          f"from seed {prune_cfg['seed']}, start a new run (another --out)",
                          RuntimeWarning, stacklevel=2)
        prune_cfg["seed"] = drawn
    if int(cfg["optim"]["epochs"]) < int(ckpt["epoch"]):  # it trained nothing (break35 #3)
        raise ConfigError(f"--resume: the checkpoint is at epoch {ckpt['epoch']}, past "
                          f"optim.epochs {cfg['optim']['epochs']}; give optim.epochs >= "
                          f"{ckpt['epoch']}, or start a new run with another --out")
    if int(cfg["optim"]["epochs"]) == int(ckpt["epoch"]):
        # a finished run (a re-queued job): nothing to train, and its files stay as they
        # are, as Lightning's fit at max_epochs does; finalizing again rewrote the model
        # file and made its deploy report read as stale (break52)
        done = _on_main(lambda: _finished_results(out, int(ckpt["epoch"])))
        if done is not None:
            # a schedule in fractions refuses more epochs on resume (break57 #5)
            more = ("start a new run with more optim.epochs to train longer" if moving
                    and method != NO_PRUNING else "raise optim.epochs to train on")
            missed = not done.get("target_reached", True) and not prune_cfg.get(
                "allow_above_target", False)  # the error below says what would help
            if main:
                print(f"fxprune train: the run in {out} finished its {ckpt['epoch']} epochs; "
                      f"nothing to resume, its files are kept as they are"
                      f"{'' if missed else f' ({more})'}", flush=True)
                print(format_results(done))
            # resuming cannot lengthen a finished run's schedule (review178 F9), and a
            # method without one is told what its first error said (review181 F7)
            settings = f"change prune.method {method}'s settings"
            _check_target(done, cfg, out, "the run is finished and resuming prunes it no "
                          "further: in a new run (another --out), " + (
                              # results of a version before schedule_end do not say
                              # whether the method has one (review183 R5)
                              f"lengthen the schedule or {settings}"
                              if "schedule_end" not in done
                              else "lengthen the schedule" if done["schedule_end"] is not None
                              else f"{settings} (it declares no schedule a longer run "
                                   "would lengthen)"))
            return done
    return None


def _load_model_init(model: nn.Module, init, name: str) -> dict | None:
    """Load ``model.init`` (a state_dict file: ``torch.save(model.state_dict(), PATH)``, or a
    checkpoint holding one as ``state_dict`` or ``model``, as a dense ``fxprune train`` run's
    checkpoint.pt) into the recipe's ``model``, read with ``weights_only=True`` (no code runs
    from it). Returns ``{"file", "sha256"}`` for the results, None without one; ConfigError
    naming the file and what does not fit (break205 F3: no recipe could start from trained
    weights)."""
    if init is None:
        return None
    path = Path(os.path.expanduser(str(init)))
    if not path.is_file():
        raise ConfigError(f"model.init {path} is not a file: give the state_dict file of the "
                          "trained weights (torch.save(model.state_dict(), PATH))")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is said as one
        if isinstance(exc, pickle.UnpicklingError):
            # (break210 F4: a run's own model_dense.pt was called a script's arguments)
            found = re.search(r"GLOBAL ([\w.]+)", str(exc))
            why = ("it holds Python objects beyond tensors and plain data"
                   + (f", `{found.group(1)}` first" if found else "") +
                   ": a whole model saved with torch.save(model), as a run's model_dense.pt, or "
                   "a training script's arguments, which weights_only=True does not load: no "
                   "code runs from it")
        else:
            why = re.sub(r"\x1b\[[0-9;]*m", "", f"{type(exc).__name__}: {first_line(exc)}")
        beside = path.parent / "checkpoint.pt"
        way = (f"give {beside}, the run's checkpoint, which holds its weights, or save"
               if path.name == "model_dense.pt" and beside.is_file() else "save")
        raise ConfigError(f"model.init {path} is not a file torch.load reads with "
                          f"weights_only=True ({why}); {way} the weights alone as "
                          "torch.save(model.state_dict(), PATH)") from None
    for key in ("state_dict", "model"):  # a checkpoint holding the state_dict
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
            break
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor)
                                               for v in loaded.values()):
        raise ConfigError(f"model.init {path} holds a {type(loaded).__name__}, not a state_dict "
                          "(names to tensors); save the weights as "
                          "torch.save(model.state_dict(), PATH)")
    if any(f"{MASK_OWNER}." in k for k in loaded):
        raise ConfigError(f"model.init {path} holds a prepared model's masks (a pruning run's "
                          "checkpoint): give the dense weights, a dense run's checkpoint.pt or "
                          "torch.save(model.state_dict(), PATH) of the model before prepare")
    own = model.state_dict()
    loaded = _own_keys(loaded, own)
    missing = [k for k in own if k not in loaded]
    unexpected = [k for k in loaded if k not in own]
    shapes = [k for k in own if k in loaded and loaded[k].shape != own[k].shape]
    head = next(reversed(own)).rpartition(".")[0]  # the classifier: the last layer
    if (missing or shapes) and not unexpected and all(
            k.rpartition(".")[0] == head for k in missing + shapes):
        raise ConfigError(f"model.init {path}: its `{head}` (the classifier) is not the one "
                          f"model {name} builds here ({'missing' if missing else 'other shapes'})"
                          "; give weights trained for model.num_classes classes, or set "
                          "model.num_classes to theirs")
    if shapes and not (missing or unexpected) and all(
            loaded[k].dim() == own[k].dim() and all(a <= b for a, b in zip(loaded[k].shape,
                                                                           own[k].shape))
            for k in shapes):  # (break210 F5: a finalized model's weights, said as widths)
        # (review212 R3: resnet_fmnist builds a pruned model's widths, inner ones too)
        raise ConfigError(f"model.init {path} holds narrower layers than model {name} as the "
                          f"recipe builds it (at {described(shapes)}): a pruned (finalized) "
                          "model's weights, which fit only a model built at the widths they "
                          "were pruned to (resnet_fmnist: model.widths and model.inner_widths; "
                          "else prune the finalized model again from Python: README, 'pruning "
                          "again'), or this model built narrower (model.widths as when it was "
                          "trained)")
    if missing or unexpected or shapes:
        said = "; ".join(f"{what} {described(keys)}" for what, keys in (
            ("missing", missing), ("unexpected", unexpected), ("other shapes at", shapes)) if keys)
        raise ConfigError(f"model.init {path} does not fit model {name} as the recipe builds "
                          f"it ({said}); give the weights of this model (model.widths, "
                          "model.blocks and data.channels as when it was trained)")
    broken = next((k for k, v in loaded.items() if v.is_floating_point()
                   and not bool(torch.isfinite(v).all())), None)
    if broken is not None:  # (break207 F4: said as "training diverged ... lower optim.lr")
        raise ConfigError(f"model.init {path} holds NaN or inf in {broken}: those weights "
                          "cannot be trained on; give a finite state_dict")
    model.load_state_dict(loaded)
    return {"file": str(path), "sha256": file_sha256(path)}


def _own_keys(loaded: dict, own: dict) -> dict:
    """``loaded``'s entries for the model's own keys where they sit under one prefix (DDP's
    ``module.``, torch.compile's ``_orig_mod.``, a LightningModule's ``model.``, stacked), the
    rest of the file other modules' (a loss's weights); ``loaded`` itself otherwise (review208
    R7, break209 F4: refused with advice about the model's widths)."""
    if not own or own.keys() <= loaded.keys():  # (no prefix: an extra key is refused below)
        return loaded
    first = next(iter(own))
    for prefix in sorted({k[: -len(first)] for k in loaded if k.endswith("." + first)},
                         key=len):
        if all(prefix + k in loaded for k in own):
            return {k: loaded[prefix + k] for k in own}
    return loaded


def _recipe_model(cfg: dict) -> nn.Module:
    """The recipe's model (``model.name`` with its widths and ``model.kwargs``), its input
    channels the data's; ConfigError where it does not fit in memory or its builder refuses
    ``model.kwargs``."""
    model_kwargs = {k: v for k, v in cfg["model"].items()
                    if k not in ("name", "kwargs", "init") and v is not None}
    if cfg["model"]["name"] == "resnet_fmnist":  # its stem follows the data's channels
        model_kwargs["in_channels"] = int(cfg["data"].get("channels", 1))
    elif timm_name(cfg["model"]["name"]) is not None:  # so does timm's (in_chans)
        model_kwargs["in_chans"] = int(cfg["data"].get("channels", 1))
    extra = dict(cfg["model"].get("kwargs") or {})  # the builder's other arguments (break182
    # F4: a ViT's img_size had no key, and a fixed-size timm model could not run from a recipe)
    taken = sorted(set(extra) & set(model_kwargs))
    if taken:
        said = {"in_channels": "data.channels", "in_chans": "data.channels"}.get(
            taken[0], f"model.{taken[0]}")
        raise ConfigError(f"model.kwargs.{taken[0]} is set by {said}; set it there, once "
                          f"(--set '~model.kwargs.{taken[0]}')")
    model_kwargs.update(extra)
    try:
        model = build_model(cfg["model"]["name"], **model_kwargs)
    except Exception as exc:  # noqa: BLE001 - sorted below; anything else is raised as it is
        said = out_of_memory(exc)  # torch's own words, not cut mid-word (review165 F8)
        if said is not None:  # (break158 F7: a 38-line traceback for model.widths=[100000])
            sizes = ", ".join(f"model.{k}={v}" for k, v in model_kwargs.items()
                              if k in ("widths", "blocks", "inner_widths"))
            raise ConfigError(f"model {cfg['model']['name']}"
                              f"{' (' + sizes + ')' if sizes else ''} does not fit in memory "
                              f"({said}); choose a smaller model") from None
        if not extra:
            raise
        # the builder's own refusal of model.kwargs: an argument it does not take, or a value
        # it cannot build with (break191 F1: a ZeroDivisionError for patch_size=0, an
        # AssertionError, a traceback each)
        raise ConfigError(f"model {cfg['model']['name']} with model.kwargs "
                          f"{', '.join(sorted(extra))}: {type(exc).__name__}"
                          f"{': ' + first_line(exc) if first_line(exc) else ''}; model.kwargs "
                          "holds keyword arguments of the model's builder (timm.create_model, "
                          "torchvision.models.get_model, fxprune's ResNetFMNIST) with values it "
                          "takes") from None
    return model


def _prepared_pruner(cfg: dict, model: nn.Module, example_batch: torch.Tensor, *, out: Path,
                     ckpt: dict | None, ckpt_path: Path, steps_per_epoch: int, sync_bn: bool):
    """``(net, pruner, measured_cost_state, undo_sync_bn)``: the prepared model, the recipe's
    method on it (priced by a latency table timed here, or the checkpoint's, where
    ``prune.cost`` is one), the table for the checkpoints, and what puts the BatchNorms back
    where ``sync_bn`` converted them."""
    import fxprune

    optim_cfg, prune_cfg, log_cfg = cfg["optim"], cfg["prune"], cfg["log"]
    method = prune_cfg["method"]
    distributed, main = fxdist.is_distributed(), fxdist.is_main_process()
    seed = int(cfg["seed"])
    measured_cost_state = None  # a latency table (and fitted constant) timed for this run
    undo_sync_bn = None  # puts the BatchNorms back (before finalize)
    try:
        net = fxprune.prepare(model, (example_batch,), keep=prune_cfg.get("keep", ()))
    except ArgumentError as exc:  # a path that is no module, or holds no prunable channels
        if not str(exc).startswith("prepare: keep="):  # (another refusal is said as it is)
            raise
        raise ConfigError(f"prune.keep: {exc}") from None
    except TraceError as exc:  # its way out is prepare's leaf_modules= (break182 F8)
        raise TraceError(f"model.name {cfg['model']['name']!r}: {str(exc).rstrip('.')}; "
                         "a recipe passes no "
                         "leaf_modules: choose another model, or prune this one from "
                         "Python (fxprune.prepare(model, example_inputs, leaf_modules=[...]), "
                         "README's 'The pipeline')") from None
    asked = ([g.name for g in state_of(net).channels.groups if g.kept_on_request]
             if prune_cfg.get("keep") else [])
    if asked and not UnitIndex(net).n:  # (break210 F3: "see fxprune.summary(prepared)")
        raise ConfigError(f"prune.keep keeps every channel group that could be pruned "
                          f"({described(asked)}), the others are kept for their structure: "
                          "nothing is left to prune; keep fewer layers")
    build_cfg = prune_cfg
    context = {}
    if distributed and getattr(pruner_class(method), "rank_local_statistics", False):
        context["reduce_fn"] = fxdist.all_reduce_sum  # e.g. CCP's activation statistics
    total_steps = int(optim_cfg["epochs"]) * steps_per_epoch

    def build(model, cfg):
        # seed: a method drawing random numbers (CUCB's warm-up and ties) follows the
        # run's seed unless prune.seed is set (break188 F5: every seed drew alike)
        return make_pruner(model, cfg, steps_per_epoch=steps_per_epoch,
                           epochs=int(optim_cfg["epochs"]), seed=seed, **context)

    if prune_cfg.get("cost") in LATENCY_COSTS:
        # the widths the method chooses among: its own default where the recipe sets none
        # (review126 #2: timed at step 1, 60x the shapes of SMCP's default 8)
        from .methods.registration import built_argument, get_method, priced_channel_step

        channel_step = priced_channel_step(get_method(method), prune_cfg)
        if channel_step is None:  # (review195 R4: guessed as 1, the table 64x too large)
            raise ConfigError(f"prune.cost {prune_cfg['cost']}: the table is timed at the "
                              f"widths {method} chooses, and its channel_step cannot be read "
                              "from its signature; set prune.channel_step")
        channel_step = int(channel_step)
        # (and min_kept's floor: review208 R2, a floor keeping every group whole was refused
        # after the table)
        min_kept = built_argument(get_method(method), prune_cfg, "min_kept")
        coarse = step_too_wide(UnitIndex(net), channel_step,
                               min_kept if isinstance(min_kept, (int, float)) else 0.0)
        if coarse:  # before the table's timing, which no choice would read (break151 F2)
            raise ConfigError(f"prune ({method}): {coarse}")
        if ckpt is not None:  # the run's own timings: a new measurement would move the budget
            measured_cost = _saved_measured_cost(ckpt, ckpt_path, prune_cfg["cost"])
            cache = prune_cfg.get("latency_cache")
            if main and cache is not None and \
                    cache != ckpt["config"]["prune"].get("latency_cache"):
                # (break204 F4: a cache named on resume was neither read nor written, unsaid)
                warnings.warn(f"prune.latency_cache {cache} is neither read nor written by a "
                              "resumed run: it prices with the table in its checkpoint, timed "
                              "when the run began", RuntimeWarning, stacklevel=2)
        else:  # under DDP measured once, by rank 0 (or read from its cache), then sent
            # what needs no timings is refused before them (break199 F1: a CUCB explore past
            # the run, or gathered execution under torchrun, an hour of timing later)
            check_on_trial(lambda copy: build(copy, {**prune_cfg, "cost": "flops"}), net,
                           lambda trial, copy: _check_fits_run(trial, method, total_steps,
                                                               steps_per_epoch, cfg, copy))
            # (log.progress=false turns off the table's bar as the training one, break52)
            # its cache judged before any timing, by rank 0 (the one that reads and
            # writes it), every rank refusing alike (break190 F1, F3; review189 R5)
            cache_problem = _latency_cache_problem(prune_cfg.get("latency_cache"), out) \
                if main else None
            if distributed:
                cache_problem = fxdist.broadcast_object(cache_problem)
            if cache_problem:
                raise ConfigError(cache_problem)
            measured_cost = latency_cost(net, prune_cfg["cost"], channel_step=channel_step,
                                         progress=bool(log_cfg["progress"]),
                                         cache=prune_cfg.get("latency_cache"))
        build_cfg = {**prune_cfg, "cost": measured_cost}
        measured_cost_state = measured_cost_to_dict(measured_cost)  # every checkpoint's
    if sync_bn:  # before the method: it keeps the norms it hooks (CCP's collect_bn, SMCP's
        # re-estimation), which must be the ones that run (break31 #4)
        undo_sync_bn = fxdist.use_sync_batchnorm(net)
    try:
        pruner = build(net, build_cfg)
    except ConfigError as exc:
        cached = getattr(build_cfg.get("cost"), "stats", {}).get("measured") == 0
        if (getattr(exc, "floor", None) is None or exc.floor >= 1 - 1e-9
                or build_cfg is prune_cfg or ckpt is not None  # (a resume: its own)
                or cached):  # every point from prune.latency_cache (break191 F4)
            raise
        # the floor came from this run's timings (break151 F1: 0.581, 0.608, 0.599 in three
        # runs, so the advised target failed again)
        raise ConfigError(f"{exc} ({TIMED_FLOOR})") from None
    if main and getattr(pruner, "fxprune_schedule_steps", None):
        print(f"prune ({method}) schedule in optimizer steps ({steps_per_epoch} per epoch): "
              + ", ".join(f"{k} {v}" for k, v in pruner.fxprune_schedule_steps.items()), flush=True)
    if ckpt is None:  # before an epoch is spent; every rank stops alike (review178 F4)
        _on_main(lambda: refuse_unloadable_state(pruner, method, at_build=True))
    _check_fits_run(pruner, method, total_steps, steps_per_epoch, cfg, net)
    return net, pruner, measured_cost_state, undo_sync_bn


def _check_fits_run(pruner, method: str, total_steps: int, steps_per_epoch: int, cfg: dict,
                    net: nn.Module) -> None:
    """The method's pruning runs within the run (:func:`check_run_fits`), and under DDP its
    training step is the wrapped model's (``net``, the model it was built on)."""
    check_run_fits(pruner, method, total_steps,
                   f"the run has {total_steps} ({cfg['optim']['epochs']} epochs x {steps_per_epoch})")
    own_forward = getattr(pruner, "train_forward", None)
    if fxdist.is_distributed() and own_forward is not None and own_forward is not net:
        raise ConfigError(f"prune.method {method}: its training step runs a sub-network "
                          "outside the DDP wrapper, whose gradients would not be averaged; "
                          "under torchrun set prune.execution=masked")


@dataclass
class _RunHistory:
    """Where a run stands, and what its parts ran on: fresh, or read from a checkpoint."""

    start_epoch: int
    step: int
    elapsed: float  # seconds of the epochs run, evaluation included
    images: int  # training images and seconds in the training loop (the throughput)
    loop_s: float
    #: the learning-rate schedules the run trained on: one, unless a resume changed optim.epochs
    lr_schedules: list[dict]
    #: the process counts it trained with: one, unless a resume changed it (break70 #2)
    process_counts: list[dict]
    #: the threads, versions and device: one, unless a resume changed them
    environments: list[dict]

    @classmethod
    def fresh(cls, epochs: int, world: int, here: dict) -> "_RunHistory":
        return cls(0, 0, 0.0, 0, 0.0, [{"from_epoch": 0, "epochs": epochs}],
                   [{"from_epoch": 0, "world_size": world}], [{"from_epoch": 0, **here}])


def _resumed(ckpt: dict, ckpt_path: Path, net: nn.Module, optimizer, scheduler, pruner, *,
             cfg: dict, steps_per_epoch: int, here: dict, device: torch.device) -> _RunHistory:
    """Load the checkpoint's model, optimizer, scheduler, method and RNG states into this run
    and return its history, each part this resume changes appended (said where it changes
    the numbers: another schedule length, step count or thread count)."""
    optim_cfg = cfg["optim"]
    world, main = fxdist.world_size(), fxdist.is_main_process()
    method = cfg["prune"]["method"]
    try:
        for part in ("model", "optimizer", "scheduler"):  # (break206 F5: a str's AttributeError
            # was a traceback; caught here by name, not as any AttributeError: review208 R6)
            if not isinstance(ckpt[part], dict):
                raise ValueError(f"its {part} state is a {type(ckpt[part]).__name__}, not a dict")
        net.load_state_dict(ckpt["model"])
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
        except AttributeError as exc:  # a part of it that is no dict (break209 F6)
            raise ValueError(f"its optimizer state does not load ({exc})") from None
        check_optimizer_state(optimizer)
        scheduler.load_state_dict(ckpt["scheduler"])
        if pruner is not None:
            try:
                pruner.load_state_dict(ckpt["pruner"])
            except (FxPruneError, RuntimeError, ValueError):
                raise  # a refusal, or tensors of other shapes: a state that does not fit (below)
            except Exception as exc:  # noqa: BLE001 - the method's code: whatever it raises
                # (break198 F4: a plug-in whose load reads a key its save left out was told
                # the checkpoint did not fit, and to start over with --overwrite)
                raise MethodProtocolError(
                    f"--resume: {method}'s load_state_dict failed on the state its own "
                    f"state_dict saved in {ckpt_path} ({type(exc).__name__}: "
                    f"{first_line(exc)}): its save and load disagree; fix the method, the "
                    "checkpoint is as it saved it") from exc
            check_resumed_steps(pruner, method, ckpt.get("pruner_step_count"))
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        if isinstance(exc, MethodProtocolError):
            raise
        # torch's load_state_dict says what differs on the lines after "Error(s) in loading
        # state_dict for X:" (break206 F5: that line alone named no key or shape)
        said = " ".join(line.strip() for line in str(exc).strip().splitlines())
        said = said if len(said) <= 300 else said[:297] + "..."
        raise _unusable_checkpoint(f"{ckpt_path} does not fit this run ({said})",
                                   ckpt_path) from None
    # The saved lr came from the saved schedule; when optim.epochs grew, the schedule did too.
    saved_lr = optimizer.param_groups[0]["lr"]
    for group, base_lr in zip(optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = base_lr * lr_factor(ckpt["step"], optim_cfg, steps_per_epoch)
    lr_schedules = [dict(s) for s in ckpt.get("lr_schedules") or [
        {"from_epoch": 0, "epochs": int(ckpt["config"]["optim"]["epochs"])}]]
    process_counts = [dict(c) for c in ckpt.get("process_counts") or [
        {"from_epoch": 0, "world_size": int(ckpt.get("world_size", 1))}]]
    if process_counts[-1]["world_size"] != world:
        process_counts.append({"from_epoch": int(ckpt["epoch"]), "world_size": world})
    # (checkpoints before it: their thread count only, the rest not recorded, so null: a
    # resumed old run showed one environment, as if this code had run all of it, break192 F4)
    environments = [dict(e) for e in ckpt.get("environments") or [
        {**{k: None for k in here}, "from_epoch": 0, "threads": ckpt.get("threads")}]]
    if any(environments[-1].get(k, v) != v for k, v in here.items()):
        environments.append({"from_epoch": int(ckpt["epoch"]), **here})
    if lr_schedules[-1]["epochs"] != int(optim_cfg["epochs"]):
        # a run trained on (break62 #4: a finished cosine run's lr went from 0 back up,
        # silently, and its results read like one run of the new length)
        lr_schedules.append({"from_epoch": int(ckpt["epoch"]), "epochs": int(optim_cfg["epochs"])})
        new_lr = optimizer.param_groups[0]["lr"]
        if main and not math.isclose(new_lr, saved_lr, rel_tol=1e-9, abs_tol=1e-12):
            print(f"fxprune train: --resume with optim.epochs {lr_schedules[-2]['epochs']} -> "
                  f"{optim_cfg['epochs']}: from epoch {ckpt['epoch'] + 1} the learning rate "
                  f"follows the {optim_cfg['epochs']}-epoch schedule (lr {saved_lr:.4g} -> "
                  f"{new_lr:.4g}); the epochs before ran on the "
                  f"{lr_schedules[-2]['epochs']}-epoch one (results.json: lr_schedules)",
                  flush=True)
    set_rng_state(ckpt["rng"], device)
    # the count the checkpoint's last epoch ran (an average over a history that mixed
    # process counts warned at every later resume, with fractions: break54 #7)
    saved_per_epoch = ckpt.get("steps_per_epoch", ckpt["step"] / max(ckpt["epoch"], 1))
    if ckpt["epoch"] and saved_per_epoch != steps_per_epoch and main:  # break52 #7
        warnings.warn(
            f"--resume: the checkpoint ran {saved_per_epoch:g} optimizer steps per epoch "
            f"({ckpt.get('world_size', 1)} process(es)) and this run runs {steps_per_epoch} "
            f"({world}): the learning-rate schedule and the method's step-counted schedule "
            "go on at this count, so they end at other steps than the first run's; resume "
            "with the same number of processes to keep them", RuntimeWarning, stacklevel=2)
    saved_threads = ckpt.get("threads")  # (checkpoints before it: not recorded)
    if (saved_threads is not None and saved_threads != torch.get_num_threads() and main
            and device.type == "cpu"):  # (on a GPU the CPU threads do not do the math)
        # CPU kernels sum in another order at another thread count, so the resumed run is
        # not bit-identical to an uninterrupted one (break148 F8: nothing said so; the
        # recipes' num_threads null is the machine's cores)
        warnings.warn(
            f"--resume: the checkpoint's epochs ran on {saved_threads} CPU threads per "
            f"process and this run uses {torch.get_num_threads()}: the numbers go on "
            f"close to, not equal to, an uninterrupted run's; set num_threads: "
            f"{saved_threads} (--set num_threads={saved_threads}) to resume exactly",
            RuntimeWarning, stacklevel=2)
    return _RunHistory(ckpt["epoch"], ckpt["step"], ckpt["elapsed_s"],
                       int(ckpt.get("train_images", 0)), float(ckpt.get("train_loop_s", 0.0)),
                       lr_schedules, process_counts, environments)


def _saved_measured_cost(ckpt: dict, ckpt_path: Path, cost: str):
    """The latency cost a run priced with, from its checkpoint; CheckpointError for one missing
    or edited out of shape (break164 F3: a None constant was a traceback, a missing one timed
    a new table and moved the budget under the masks already chosen)."""
    saved = ckpt.get("measured_cost")
    source = f"{ckpt_path}'s measured cost"
    try:
        if saved is None:
            raise ValueError(f"{ckpt_path} holds no measured cost, though the run prices by "
                             f"prune.cost={cost}: timing a new table would move the budget under "
                             "the masks already chosen")
        if isinstance(saved, dict) and saved.get("kind") != cost:
            raise ValueError(f"{source} is of kind {saved.get('kind')!r}, and the run prices by "
                             f"prune.cost={cost}")
        return measured_cost_from_dict(saved, source)
    except (ValueError, FxPruneError) as exc:
        raise _unusable_checkpoint(str(exc), ckpt_path) from None


def _unusable_checkpoint(why: str, ckpt_path: Path) -> CheckpointError:
    """The one-line error for a checkpoint --resume cannot use, with the way to start over."""
    return CheckpointError(f"--resume: {why}; {start_over(ckpt_path)}, or use another --out")


class TrainingDivergedError(DivergedError):
    """The training loss became non-finite: nothing after it is worth saving."""


def _diverged(step: int, epoch: int, lr: float, ckpt_path: Path) -> str:
    """The line for a run whose loss became NaN or infinite (break158 F10: a dense run exited
    0 with an accuracy of chance and "NaN" in results.json, which strict JSON refuses; a
    pruning run failed at finalize, advising an argument only the Python API takes)."""
    saved = (f"the last finished epoch, in {ckpt_path}, is the last one before it"
             if ckpt_path.is_file() else "no epoch was saved")
    return (f"training diverged: the loss is not finite in the steps up to {step} (epoch "
            f"{epoch + 1}, learning rate {lr:.4g}); {saved}; lower optim.lr (or raise "
            "optim.warmup_epochs) and start over with --overwrite")


def _summed(loss: float, correct: int, seen: int) -> tuple[float, int, int]:
    """Sums over every process (one all-reduce; the numbers as they are with one process)."""
    if not fxdist.is_distributed():
        return loss, correct, seen
    total, n = fxdist.all_reduce_sum_count(torch.tensor([loss, float(correct)]), seen)
    return float(total[0]), int(round(float(total[1]))), n


def _finish(cfg, net, pruner, dense_stats, test_loader, device, channels_last, out, epochs,
            elapsed, run_facts, check: bool = False) -> dict:
    """Evaluate, finalize when pruning, save the model and the results; print the table.

    Under DDP every process finalizes the unwrapped model (equal masks and weights: the same
    small model) and evaluates its test slice; rank 0 saves."""
    main = fxdist.is_main_process()
    input_shape = (1, *test_loader.sample_shape)
    method = cfg["prune"].get("method", NO_PRUNING)
    test_loss, test_acc = evaluate(net, test_loader, device, channels_last)
    results: dict[str, Any] = {"method": method, "epochs": epochs,
                               "train_time_s": round(elapsed, 1), **run_facts,
                               "test_samples": test_loader.dataset_size,
                               # what the accuracy was scored on, which fxprune plot compares
                               # across runs (break158 F2)
                               "test_data": {"name": cfg["data"]["name"],
                                             **test_loader.fingerprint()},
                               "out": str(out)}
    if getattr(pruner, "fxprune_schedule_steps", None):
        results["schedule_steps"] = dict(pruner.fxprune_schedule_steps)
    if isinstance(getattr(pruner, "fxprune_arguments", None), dict):
        results["method_arguments"] = dict(pruner.fxprune_arguments)
    end = schedule_end(pruner) if pruner is not None else None
    if pruner is not None:  # the step its masks reach the target; null: no schedule declared
        results["schedule_end"] = end
    if pruner is None:
        path = out / "model_dense.pt"
        stats = model_stats(net, input_shape)
        if main:
            save_module(net, path, input_shape)
        results.update(accuracy=test_acc, test_loss=test_loss, **stats, model=str(path))
    else:
        import fxprune

        finalize_masks = getattr(pruner, "finalize_masks", None)
        if hasattr(pruner, "warn_above_target"):  # said below, with the results' path
            pruner.warn_above_target = False
        # the method's final masks (e.g. CUCB: top channels by mu), if they differ from now's
        if finalize_masks is not None and finalize_masks():
            fxdist.broadcast_masks(net)
            test_loss, test_acc = evaluate(net, test_loader, device, channels_last)
        cost = cost_columns(method_cost(pruner, cfg["prune"]["method"]))
        small = fxprune.finalize(net)
        if check:
            fxdist.check_models_equal(small, "finalized model")
        small_loss, small_acc = evaluate(small, test_loader, device, channels_last)
        stats = model_stats(small, input_shape)
        path = out / "model_pruned.pt"
        if main:
            save_module(small, path, input_shape)
        mismatched = prediction_differences(net, small, test_loader, device, channels_last)
        results.update(accuracy=small_acc, test_loss=small_loss, accuracy_masked=test_acc,
                       finalize_mismatched_samples=mismatched, **stats, model=str(path),
                       pruner_cost=cost)
        priced_by = getattr(pruner, "cost_model", None)
        if isinstance(getattr(priced_by, "name", None), str):
            # what pruner_cost and target are fractions of (break176 F7: a method's own cost
            # model was named nowhere)
            results["cost_model"] = priced_by.name
        if getattr(priced_by, "fit", None):  # "latency+fixed": how its constant was fitted
            results["cost_fit"] = {"fixed_cost": priced_by.fixed_cost, **priced_by.fit}
        table = getattr(priced_by, "base", priced_by)
        if getattr(table, "backend", None) is not None and hasattr(table, "runtime_version"):
            # how the latency table that priced the run was timed (break164 F9: kept in the
            # checkpoint only; a latency+fixed run said it in cost_fit alone)
            batch, dtype = _priced_at(table, pruner)
            results["cost_table"] = {
                "backend": table.backend, "device": table.device, "timed_on": table.timed_on,
                "runtime": table.runtime_version, "threads": table.threads,
                "batch": batch, "dtype": dtype}
        under_load = (getattr(table, "stats", None) or {}).get("under_load", 0)
        if under_load:  # said once when timed; kept with the run too (break70 #3)
            results["cost_timed_under_load"] = int(under_load)
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
    if main:
        write_results(out, results)
        print(format_results(results))
    _check_target(results, cfg, out, "lengthen the schedule" if end is not None
                  else f"prune.method {method} declares no schedule a longer run would lengthen "
                       "(a `schedule` or prune_steps()): its final masks are what its own "
                       "settings chose; change them")
    return results


def _priced_at(table, pruner) -> tuple[int | None, str | None]:
    """The batch and dtype ``table`` priced the run's layers at: its own, else the layers'
    (a table's None means "the layers' own", which results.json printed as null: break180 F8);
    None where the layers differ or the method has no unit index."""
    batch, dtype = table.batch, table.dtype
    index = getattr(pruner, "index", None)
    layers = getattr(getattr(index, "channels", None), "layers", None)
    if (batch is None or dtype is None) and layers:
        specs = [table.as_priced(layer.spec) for layer in layers]
        batches, dtypes = {spec.batch for spec in specs}, {spec.dtype for spec in specs}
        batch = batch if batch is not None else (batches.pop() if len(batches) == 1 else None)
        dtype = dtype if dtype is not None else (dtypes.pop() if len(dtypes) == 1 else None)
    return batch, dtype


def _check_target(results: dict, cfg: dict, out: Path, way_out: str) -> None:
    """TargetNotReachedError for a run that ended above its target, unless it was allowed;
    ``way_out``: what would reach the target (a method without a schedule: break176 F5; a
    finished run resumed: review178 F9), said before allow_above_target."""
    if results.get("target_reached", True) or cfg["prune"].get("allow_above_target", False):
        return
    raise TargetNotReachedError(
        f"the run ended at cost {results['pruner_cost']['cost']:.4f} of dense, above its target "
        f"{results['target']:.4f}: {results['model']} is not pruned as asked (results in "
        f"{out / 'results.json'}); {way_out}, "
        "or set prune.allow_above_target=true to accept it")


def _finished_results(out: Path, epochs: int) -> dict | None:
    """The results of a run that finished ``epochs`` in ``out`` (its results.json of that
    length, and its model file), or None when the run stopped before writing them."""
    try:
        results = json.loads((out / "results.json").read_text())
    except (OSError, ValueError):
        return None
    finished = (isinstance(results, dict) and results.get("epochs") == epochs
                and isinstance(results.get("model"), str)
                and (out / Path(results["model"]).name).is_file())
    if not finished:
        return None
    # where the run is now (a run moved since named the old folder's model: break57 #8)
    return {**results, "out": str(out), "model": str(out / Path(results["model"]).name)}


# ----------------------------------------------------------------------------- command line

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML recipe, e.g. configs/fashion_mnist_resnet.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="override a config value, YAML-typed (repeatable): "
                             "--set optim.epochs=2 --set optim.lr=0.05; --set ~KEY removes a "
                             "key (e.g. a method's own keys when --set prune.method=... "
                             "switches it)")
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
                     "A method's step counts (prune.warmup, update_every, prune_at, ...) may be "
                     "written in steps (NAME), epochs (NAME_epochs) or as a fraction of "
                     "optim.epochs (NAME_fraction, keeps its shape when the run is shortened). "
                     "Exit status: 0 done; 2 an error (nothing trained, or a run that failed); 3 "
                     "a pruning run that ended above its cost target (its files written; 0 with "
                     "prune.allow_above_target=true); 130 interrupted. A reader of the output "
                     "that goes away (`| head`) does not stop the run. Data-parallel: torchrun "
                     "--nproc-per-node N "
                     "-m fxprune train CONFIG (data.batch_size is the global batch; rank 0 "
                     "writes every file).")


def _refuse_edited_own_recipe(recipe: Path, out: Path) -> None:
    """ConfigError when ``--resume`` is given the run's own ``config.yaml``, edited since the
    run wrote it: resuming writes that file again, so the edit is refused as a user's file,
    and the generic message did not say the file was the recipe passed in, nor how to keep
    the edit (break103 F2)."""
    from .run_io import foreign_run_files

    own = out / "config.yaml"
    try:
        same = own.is_file() and recipe.resolve() == own.resolve()
    except OSError:
        return
    if same and "config.yaml" in foreign_run_files(out):
        raise ConfigError(
            f"--resume: the recipe {recipe} is the run's own config.yaml, edited since the run "
            f"wrote it, and resuming writes the run's config.yaml again; move the edited file "
            f"out of {out} and pass it from there (e.g. `mv {own} {out.parent / (out.name + '-edited.yaml')}`), "
            f"or pass the run's recipe with --set KEY=VALUE for the keys that may change")


def _lost_a_peer(exc: BaseException) -> bool:
    """Whether ``exc`` is gloo's report of a peer process gone mid-collective, raised while the
    process group was up (:func:`train` marks that; review137 #3: not a rendezvous that failed,
    nor a data loader's broken pipe)."""
    return (getattr(exc, "fxprune_in_process_group", False)
            and any(s in str(exc) for s in ("Connection closed by peer", "Connection reset by peer")))


def _full_disk(exc: BaseException, cfg: dict | None, *, overwrite: bool,
               started_ns: int) -> str | None:
    """The line for a write that found no room (a full disk or a quota), naming the folder
    and the way on; None for any other error (break148 F4: "[Errno 28] No space left on
    device" alone). The way on is --resume where this run saved an epoch, else the command
    again (review149 F8: under --overwrite the checkpoint there may be the replaced run's)."""
    import errno

    if not isinstance(exc, OSError) or exc.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    where = exc.filename or (cfg or {}).get("out")
    ckpt = Path(cfg["out"]).expanduser() / "checkpoint.pt" if cfg and cfg.get("out") else None
    saved = (ckpt is not None and ckpt.is_file()
             and not (overwrite and _older_than(ckpt, started_ns)))
    way_on = (f"the last finished epoch is in {ckpt}; free space there, then run the same "
              "command with --resume" if saved
              else "no epoch of this run had finished; free space there, then run the same "
                   "command again")
    return (f"writing {where}: {exc.strerror.lower() if exc.strerror else 'no space left'} "
            f"(a full disk or quota); {way_on}")


def _older_than(path: Path, started_ns: int) -> bool:
    """``path`` (a file) was written before ``started_ns`` (``time.time_ns()``): under
    --overwrite, the replaced run's, not this one's."""
    # (a file's time comes from a coarser clock than time_ns: a margin of 50 ms)
    return path.stat().st_mtime_ns < started_ns - 50_000_000


def run(args: argparse.Namespace) -> int:
    from .run_io import outlive_reader, stop_on_sigterm

    from . import cli

    handlers = _signal_handlers()
    try:
        with stop_on_sigterm(), outlive_reader():
            return _run(args)
    finally:  # (_reported ignored them: a Python caller gets its own back; the fxprune
        # command keeps them ignored to its exit, as it would once main returned)
        if cli.AS_PROGRAM:
            cli.done_with_signals()
        else:
            for signum, handler in handlers.items():
                signal.signal(signum, handler)


def _signal_handlers() -> dict:
    """SIGINT's and SIGTERM's handlers, where this thread may set them (the main thread's)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: h for s in (signal.SIGINT, signal.SIGTERM)
            if (h := signal.getsignal(s)) is not None}


def _reported() -> None:
    """The command has said how it ends (its error line and status): a signal from now on
    does not add "interrupted" and 130 to it. Under torchrun the survivors of a process that
    died get SIGTERM just as their collective fails (break173 F1: "stopped: ..." and then
    "interrupted", exit 130). What the command does once it has finished."""
    from .cli import done_with_signals

    done_with_signals()


def _source_commit() -> str | None:
    """The git commit of the fxprune source that runs (``git describe --always --dirty``),
    where it runs from a checkout; None otherwise (an installed copy, no git): the version
    alone is the same for every commit (review189 R10)."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        done = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty",
                               "--abbrev=12"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def _latency_cache_problem(value, out: Path | None = None) -> str | None:
    """Why ``prune.latency_cache`` cannot be the table's cache (empty, a folder, not a cache,
    a folder that takes no new file), in the recipe's words, or None: said before the table
    is timed, which its write followed (break190 F1: minutes of timing, then an OSError
    naming a temporary file)."""
    from .deploy.common import DeployError
    from .deploy.latency_table import read_cache_file
    from .run_io import unwritable_folder

    if value is None:
        return None
    if not str(value).strip():
        return ("prune.latency_cache is empty: give a file path (e.g. latency_cache.json), or "
                "remove it (--set '~prune.latency_cache')")
    path = Path(os.path.expanduser(str(value)))
    if path.is_dir():
        return (f"prune.latency_cache {path} is a folder: give a file path, e.g. "
                f"{path / 'latency_cache.json'}")
    if out is not None and path.resolve().is_relative_to(Path(out).expanduser().resolve()):
        # a file of its own in the run's folder is no run file: the run would refuse its own
        # folder, or replace it with --overwrite (break190 F9: timed, then refused)
        return (f"prune.latency_cache {path} is inside the run's folder {out}, which holds the "
                f"run's own files only: keep the cache beside it, e.g. "
                f"{Path(out).expanduser().parent / 'latency_cache.json'}")
    try:
        read_cache_file(path)  # (a file of the user's: refused, untouched)
    except DeployError as exc:
        return f"prune.latency_cache: {exc}"
    why = unwritable_folder(path.parent, probe_existing=True)
    if why is not None:
        return (f"prune.latency_cache {path}: {why}, and the table's timings are written there; "
                "choose a folder you can write")
    return None


def run_environment(device: torch.device, seed: int) -> dict:
    """What a run's numbers depend on beyond its recipe (break188 F2: a published results.json
    named neither): the seed, the versions of fxprune, torch and Python, and the device (the
    CPU's name with its vector extension, or the GPU's), whose kernels round differently."""
    import platform

    from . import __version__
    from .deploy.common import cpu_name

    env = {"seed": seed, "fxprune": __version__, "fxprune_commit": _source_commit(),
           "torch": str(torch.__version__), "python": platform.python_version(),
           "cpu": cpu_name()}  # (a plain str: a TorchVersion is no data a checkpoint may hold)
    if device.type == "cuda":
        env.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version())
    return env


def _out_of_memory_message(exc: BaseException, said: str, cfg: dict | None) -> str:
    """The one line for a run that ran out of memory (``said``: the allocator's words): in
    the evaluation, at data.test_batch_size, else in training, at data.batch_size, with the
    way out and, where an epoch was saved, --resume."""
    import traceback

    data = (cfg or {}).get("data") or {}
    # this module's innermost frame: the evaluation, or the training loop's step
    ours = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == __file__]
    inner = ours[-1] if ours else None
    out = Path(str((cfg or {}).get("out", ""))).expanduser()
    resume = (" (--resume continues from the last saved epoch)"
              if cfg and (out / "checkpoint.pt").is_file() else "")
    name = inner.name if inner is not None else ""
    line = (inner.line or "") if inner is not None else ""
    if name == "_to_device":  # a training batch's copy to the device (review189 R12)
        name, line = "_train", "_to_device"
    if name in ("evaluate", "prediction_differences"):
        where, key = "evaluating", "test_batch_size"
    elif name == "_train" and "pruner.step" in line:
        # the method's own memory (its statistics, its solves) grows with the model, not the
        # batch (review189 R2: it was blamed on data.batch_size)
        method = ((cfg or {}).get("prune") or {}).get("method", "the method")
        return (f"ran out of memory in prune.method {method}'s step ({said}); choose a smaller "
                f"model or a coarser prune.channel_step, or free memory{resume}")
    elif name == "_train" and any(call in line for call in ("run(x)", "backward", "_to_device")):
        where, key = "training", "batch_size"
    else:  # building, preparing or saving: no batch to lower
        return f"ran out of memory ({said}); choose a smaller model or free memory{resume}"
    at = f" at data.{key} {data[key]}" if data.get(key) is not None else ""
    if key == "batch_size":  # the training batch is the run's: a resume keeps it (break190 F12)
        return (f"ran out of memory {where}{at} ({said}); lower data.batch_size in a new run "
                f"(--set data.batch_size=N, another --out), or choose a smaller model"
                + (", or free memory and --resume" if resume else ""))
    return (f"ran out of memory {where}{at} ({said}); lower data.{key} (--set data.{key}=N"
            f"{', with --resume' if resume else ''}), or choose a smaller model")


def _run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.out is not None:  # an empty --out is refused, not the recipe's folder
        overrides.append(f"out={json.dumps(args.out)}")
    cfg = None
    started_ns = time.time_ns()
    rank = int(os.environ.get("RANK", "0") or 0)
    try:
        with warnings.catch_warnings():
            if rank != 0:  # under torchrun rank 0 alone prints, as the README says (break133
                # F4: each warning came once per process, a per-step one 13 times each); not
                # shown, but filtered as on rank 0: -W error stops every rank alike (review137 #4)
                warnings.showwarning = lambda *args, **kwargs: None
            cfg = load_config(args.config, overrides)
            if args.resume:
                _refuse_edited_own_recipe(Path(args.config), Path(cfg["out"]).expanduser())
            train(cfg, resume=args.resume, overwrite=args.overwrite)
    except TargetNotReachedError as exc:
        _reported()
        # trained, and every file written: a status of its own, not a config error's 2
        # (break85 F3: a job script could not tell a typo from a run that missed its target)
        if rank == 0:
            print(f"fxprune train: error: {exc}", file=sys.stderr)
        return 3
    except (FxPruneError, ValueError, OSError) as exc:
        _reported()
        # fxprune's own errors, invalid data files, folders: the message alone, no traceback.
        # Under torchrun every process reads the same config: rank 0 alone reports a config
        # error; anything else is reported by the process it happened in, named.
        message = _full_disk(exc, cfg, overwrite=args.overwrite, started_ns=started_ns) or exc
        if rank == 0:
            print(f"fxprune train: error: {message}", file=sys.stderr)
        elif not isinstance(exc, ConfigError) and not getattr(exc, "fxprune_from_rank0", False):
            print(f"fxprune train (rank {rank}): error: {message}", file=sys.stderr)
        return 2
    except (RuntimeError, MemoryError) as exc:
        said = out_of_memory(exc)
        if said is not None:  # (break186 F3: a batch too large was a 57-line traceback, exit 1)
            _reported()
            who = "fxprune train" if rank == 0 else f"fxprune train (rank {rank})"
            print(f"{who}: error: {_out_of_memory_message(exc, said, cfg)}", file=sys.stderr)
            return 2
        if isinstance(exc, MemoryError) or not _lost_a_peer(exc):
            raise
        _reported()
        # another process failed and left this one's collective (break133 F6: a 30-line gloo
        # traceback under rank 0's one-line error; break160 F4: rank 0's own was 28 lines, and
        # a process stopped by a signal of its own prints nothing)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        who = "fxprune train" if rank == 0 else f"fxprune train (rank {rank})"
        print(f"{who}: stopped: another process of the job failed or was stopped and left a "
              f"collective ({first}); its error, if it had one, is printed by that process",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _reported()  # (review177 F4: a second signal, torchrun's after the terminal's Ctrl-C)
        out = Path(cfg["out"]).expanduser() if cfg else None
        results = out / "results.json" if out is not None else None
        if results is not None and results.is_file() and not _older_than(results, started_ns):
            # every file written, the table perhaps not printed (break170 F4: told to
            # --resume a finished run): the run's own status
            if rank == 0:
                print(f"fxprune train: interrupted after the run finished; its results are in "
                      f"{results}", file=sys.stderr)
            try:
                reached = json.loads(results.read_text()).get("target_reached", True)
            except (OSError, ValueError, AttributeError):
                reached = True
            # as _check_target exits (review172 F1: allow_above_target's run exited 3)
            allowed = bool((cfg.get("prune") or {}).get("allow_above_target", False))
            return 3 if reached is False and not allowed else 0
        ckpt = out / "checkpoint.pt" if out is not None else None
        prev = out / "checkpoint.prev.pt" if out is not None else None
        replaced = [p for p in (ckpt, prev) if args.overwrite and p is not None and p.is_file()
                    and _older_than(p, started_ns)]
        if replaced and not (ckpt.is_file() and ckpt not in replaced):
            # break85 F2, break88 F3: that checkpoint is the run --overwrite was replacing,
            # whose config --resume would compare with this command's and refuse
            saved = (f"no epoch of this run had finished; {replaced[0]} is still the run it was "
                     "to replace: run the same command again to start over")
        elif ckpt is not None and ckpt.is_file():
            saved = f"the last finished epoch is in {ckpt}; continue with --resume"
        elif prev is not None and prev.is_file():
            # interrupted between a save's two renames: the epoch before is there
            saved = (f"an epoch is in {prev}; move it to checkpoint.pt "
                     "and continue with --resume")
        else:
            saved = "no epoch had been saved yet; run the same command again to start over"
        if rank == 0:  # under torchrun every process gets it
            print(f"fxprune train: interrupted; {saved}", file=sys.stderr)
        return 130
    return 0
