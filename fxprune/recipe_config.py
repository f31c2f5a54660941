"""Recipe configs: the defaults, one schema for every key, loading and validation.

A recipe is a YAML file whose sections are those of :data:`DEFAULTS`. :func:`load_config` /
:func:`resolve_config` merge it over the defaults, apply ``section.key=value`` overrides and
validate the whole result once, before any work: every key against :data:`SCHEMA` (declared
kind, range, choices), the ``prune`` section's keys against the pruning method's constructor
(``inspect.signature``), and the pruning schedule against the run's length. Every problem is a
:class:`ConfigError` whose one-line message names the key and the values it takes.
"""
from __future__ import annotations

import copy
import difflib
import importlib.util
import inspect
import math
import os
import re
import reprlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .data import DATA_DEFAULTS
from .errors import FxPruneError
from .methods.registration import NO_PRUNING
from .models import CONV_INITS, DEFAULT_BLOCKS, DEFAULT_WIDTHS, RESNET_FMNIST_ONLY

__all__ = ["DEFAULTS", "SCHEMA", "ConfigError", "Rule", "load_config", "resolve_config",
           "apply_overrides", "validate", "parse_value", "prune_keys", "RECIPE_PRUNE_KEYS",
           "fractions_to_epochs"]

DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "device": "auto",        # "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...
    "num_threads": None,     # torch CPU threads; None: OMP_NUM_THREADS, else the usable cores
    "channels_last": True,   # NHWC activations: ~1.4x faster convs on CPU for this model
    "out": "runs/fashion_mnist_resnet",
    "data": dict(DATA_DEFAULTS),
    "model": {
        "name": "resnet_fmnist",
        "widths": list(DEFAULT_WIDTHS),
        "blocks": list(DEFAULT_BLOCKS),
        "inner_widths": None,  # resnet_fmnist: width inside each block (null: the stage's)
        "conv_init": None,     # resnet_fmnist: kaiming_fan_out | torch_default (null: the first)
        "num_classes": 10,
        "kwargs": {},          # more keyword arguments of the model's builder (timm: img_size)
        "init": None,          # a state_dict file of trained weights, loaded before pruning
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
    # Owned by the pruning method: everything but "method" (and the recipe's own keys,
    # RECIPE_PRUNE_KEYS) goes to its constructor.
    "prune": {"method": NO_PRUNING},
    # Data-parallel training under torchrun (README, "Distributed training").
    "train": {
        "sync_bn": False,          # nn.SyncBatchNorm over the processes: CUDA only (an error
                                   # on the CPU); nothing to do with one process
        "check_masks": False,      # debug: every step, every process compares its masks with
    },                             # rank 0's (and the finalized model at the end); raises
    "log": {
        "every_steps": 50,         # rows of steps.csv
        "tensorboard": "auto",     # true | false | auto (if tensorboard is installed)
        "progress": True,          # tqdm bars
    },
}
FREE_SECTIONS = {"prune"}
# mappings inside a section whose keys are another program's (the model builder's arguments)
FREE_MAPPINGS = {"model.kwargs"}
# What may change between a run and its --resume without breaking exact continuation.
# data.root is where the data is, not which data (a run started with it null reads
# FXPRUNE_DATA, wherever that points): the same data moved may resume (break62 #1).
RESUMABLE_CHANGES = {"optim.epochs", "num_threads", "device", "out", "data.num_workers",
                     "data.root",
                     "log.every_steps", "log.tensorboard", "log.progress",
                     "prune.allow_above_target", "train.sync_bn",
                     "train.check_masks",
                     # a resume prices with the checkpoint's table, reading no cache (break190 F2)
                     "prune.latency_cache",
                     # a method's generator state comes from the checkpoint, whatever seed it
                     # is built with (review189 R15: the run's seed, now its default, was
                     # refused as a change from 0)
                     "prune.seed",
                     # sizes the evaluation's batches only (break190 F12: a run whose evaluation
                     # ran out of memory could not go on)
                     "data.test_batch_size"}



class _Registered(Sequence):
    """``prune.method`` names, read from the method registry (:mod:`fxprune.methods.registration`) at
    each use: a method registered after this module was imported is a valid name too.
    ``with_none`` puts ``"none"`` (no pruning) first."""

    def __init__(self, with_none: bool = False):
        self.with_none = with_none

    def _names(self) -> list[str]:
        from .methods.registration import method_names

        return [NO_PRUNING, *method_names()] if self.with_none else method_names()

    def __getitem__(self, i):
        return self._names()[i]

    def __len__(self) -> int:
        return len(self._names())

    def __contains__(self, name) -> bool:
        return name in self._names()

    def __iter__(self):
        return iter(self._names())


# pruning method names (live: the registry as it is when a config is checked)
PRUNERS = _Registered()


class ConfigError(FxPruneError, ValueError):
    """A recipe or an override names an unknown key or has a value of the wrong kind."""


# ----------------------------------------------------------------------------- the schema

@dataclass(frozen=True)
class Rule:
    """What one config key takes: ``kind`` ("int", "float", "bool", "str", "ints",
    "numbers", "strs"), whether null is allowed, a closed range ``[low, high]`` (``open_low``: low
    excluded), or a fixed tuple of ``choices``."""

    kind: str
    nullable: bool = False
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    choices: tuple | None = None

    def describe(self) -> str:
        if self.choices is not None:
            text = " | ".join(_show(c) for c in self.choices)
        else:
            text = {"int": "an integer", "float": "a number", "bool": "true or false",
                    "str": "a string", "ints": "a list of integers",
                    "numbers": "a list of numbers", "strs": "a list of strings"}[self.kind]
            if self.low is not None or self.high is not None:
                lo = "" if self.low is None else f"{'>' if self.open_low else '>='} {_show(self.low)}"
                hi = "" if self.high is None else f"{'<' if self.open_high else '<='} {_show(self.high)}"
                each = " each" if self.kind in ("ints", "numbers") else ""
                text += f"{each} {' and '.join(p for p in (lo, hi) if p)}"
        return text + (" (or null)" if self.nullable else "")

    def check(self, key: str, value: Any) -> None:
        if value is None:
            if self.nullable:
                return
            raise ConfigError(f"{key} cannot be null; it takes {self.describe()}")
        if self.choices is not None:
            if not any(_same(value, c) for c in self.choices):
                words = [c for c in self.choices if isinstance(c, str)]
                close = (difflib.get_close_matches(value.lower(), words, n=1, cutoff=0.6)
                         if isinstance(value, str) else [])  # break73 M6: SMCP, smpc
                hint = f" (did you mean {_show(close[0])}?)" if close else ""
                raise ConfigError(f"{key} must be one of {self.describe()}; got "
                                  f"{_show(value)}{hint}{_yaml_bool_hint(key, value, self.kind)}")
            return
        listed = self.kind in ("ints", "numbers", "strs")
        items = value if listed else [value]
        if listed and not isinstance(value, list):
            raise ConfigError(f"{key} takes {self.describe()}; got {_show(value)}")
        item_kind = {"ints": "int", "numbers": "float", "strs": "str"}.get(self.kind, self.kind)
        for v in items:
            if not _is_kind(v, item_kind):
                raise ConfigError(f"{key} takes {self.describe()}; got {_show(value)} "
                                  f"({type(value).__name__}){_yaml_bool_hint(key, value, self.kind)}")
            if item_kind in ("int", "float"):
                if isinstance(v, float) and not math.isfinite(v):
                    raise ConfigError(f"{key} takes {self.describe()}; got {_show(value)}")
                too_low = self.low is not None and (v <= self.low if self.open_low else v < self.low)
                too_high = self.high is not None and (v >= self.high if self.open_high
                                                      else v > self.high)
                if too_low or too_high:
                    raise ConfigError(f"{key} takes {self.describe()}; got {_show(value)}")


def _yaml_bool_hint(key: str, value: Any, kind: str) -> str:
    """YAML 1.1 reads an unquoted off/no/on/yes as a boolean: where a word was meant, say how
    to write it (in a file and on the command line, where the shell eats one level of quotes)."""
    if not (isinstance(value, bool) and kind == "str"):
        return ""
    word = "on" if value else "off"  # or yes / no: the same booleans
    return (f" (YAML reads unquoted off/no/on/yes as booleans: write {key.rsplit('.', 1)[-1]}: "
            f"\"{word}\" in a recipe, --set '{key}=\"{word}\"' on the command line)")


def _is_kind(v: Any, kind: str) -> bool:
    if kind == "bool":
        return isinstance(v, bool)
    if kind == "int":
        return isinstance(v, int) and not isinstance(v, bool)
    if kind == "float":
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if kind == "str":
        return isinstance(v, str)
    raise AssertionError(kind)


def _same(value: Any, choice: Any) -> bool:
    if isinstance(choice, bool) or isinstance(value, bool):
        return value is choice
    return type(value) is type(choice) and value == choice


#: a value in a message, bounded: a 338-byte recipe of nested YAML aliases (a "billion
#: laughs") expanded to a 3.5 MB message, and two levels more to 2 GB (break148 F7)
_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxstring, _SHOWN.maxother = 2, 200, 200
_SHOWN.maxlist = _SHOWN.maxtuple = _SHOWN.maxdict = _SHOWN.maxset = 10


def _show(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple, dict, set)):
        return _SHOWN.repr(v)
    return repr(v) if isinstance(v, str) else str(v)


POSITIVE_INT = Rule("int", low=1)
SCHEMA: dict[str, Rule] = {
    "seed": Rule("int", low=0, high=2**64 - 1),  # torch.manual_seed's range (break170 F3)
    "device": Rule("str"),             # also parsed by torch.device (see _check_device)
    "num_threads": Rule("int", nullable=True, low=1),
    "channels_last": Rule("bool"),
    "out": Rule("str"),
    "data.name": Rule("str", choices=("fashion_mnist", "synthetic")),
    "data.root": Rule("str", nullable=True),
    "data.batch_size": POSITIVE_INT,
    "data.test_batch_size": POSITIVE_INT,
    "data.subset_train": Rule("int", nullable=True, low=1),
    "data.subset_test": Rule("int", nullable=True, low=1),
    "data.augment": Rule("bool"),
    "data.num_workers": Rule("int", low=0),
    "data.channels": Rule("int", choices=(1, 3)),
    "data.synthetic_train": POSITIVE_INT,
    "data.synthetic_test": POSITIVE_INT,
    "model.name": Rule("str"),         # fxprune's own, torchvision's or timm:NAME (_check_model)
    "model.widths": Rule("ints", nullable=True, low=1),
    "model.blocks": Rule("ints", nullable=True, low=1),
    "model.inner_widths": Rule("ints", nullable=True, low=1),
    "model.conv_init": Rule("str", nullable=True, choices=CONV_INITS),
    "model.init": Rule("str", nullable=True),
    "model.num_classes": Rule("int", low=2),
    "optim.epochs": POSITIVE_INT,
    "optim.lr": Rule("float", low=0, open_low=True),
    "optim.momentum": Rule("float", low=0, high=1, open_high=True),
    "optim.nesterov": Rule("bool"),
    "optim.weight_decay": Rule("float", low=0),
    "optim.schedule": Rule("str", choices=("cosine", "step", "constant")),
    "optim.warmup_epochs": Rule("float", low=0),
    "optim.milestones": Rule("numbers", low=0),
    "optim.gamma": Rule("float", low=0, open_low=True),
    "optim.label_smoothing": Rule("float", low=0, high=1, open_high=True),
    "train.sync_bn": Rule("bool"),
    "train.check_masks": Rule("bool"),
    "log.every_steps": POSITIVE_INT,
    "log.tensorboard": Rule("bool", choices=(True, False, "auto")),
    "log.progress": Rule("bool"),
}

# Keys of the prune section the recipe itself reads (the method never sees them).
RECIPE_PRUNE_KEYS: dict[str, Rule] = {
    "method": Rule("str", choices=_Registered(with_none=True)),
    # Schedules in epochs, converted to the method's step counts.
    "warmup_epochs": Rule("float", low=0),
    "ramp_epochs": Rule("float", low=0),
    "cooldown_epochs": Rule("float", low=0),
    # A run ending above its cost target is an error unless this is true.
    "allow_above_target": Rule("bool"),
    # cost latency / latency+fixed: a latency cache file (LatencyTable.measure's cache=), read
    # and extended, so the same recipe prices with the same timings run to run (break188 F3)
    "latency_cache": Rule("str", nullable=True),
    # module paths whose output channels are never pruned (prepare's keep=: the stem, a head)
    "keep": Rule("strs"),
}
# Ranges and choices of method arguments; kinds of the others come from their defaults.
PRUNE_RULES: dict[str, Rule] = {
    # null: the method's default (CUCB/CCP list target = None; break38 #6)
    "target": Rule("float", nullable=True, low=0, high=1, open_low=True),
    "seed": Rule("int", low=0),  # (break190 F13: -1 was the constructor's, unattributed)
    "cost": Rule("str", choices=("flops", "params", "latency", "latency+fixed")),
    "warmup": Rule("int", low=0),
    "ramp": Rule("int", low=0),
    "update_every": POSITIVE_INT,
    "round_every": POSITIVE_INT,
    "collect": POSITIVE_INT,
    "window": POSITIVE_INT,
    "freeze_after": Rule("int", nullable=True, low=0),
    "ramp_shape": Rule("str", choices=("exp", "linear")),
    "importance": Rule("str", choices=("taylor", "magnitude")),
    "accumulate": Rule("str", choices=("mean", "momentum")),
    "momentum": Rule("float", low=0, high=1, open_high=True),
    "masks": Rule("str", choices=("soft", "hard")),
    "allocation": Rule("str", choices=("knapsack", "uniform")),
    "channel_step": POSITIVE_INT,
    "min_kept": Rule("float", low=0, high=1),
    "bn_rescale": Rule("str", choices=("kept_fraction", "off")),
    "masked_decay": Rule("float", low=0),
    "resolution": POSITIVE_INT,
    "max_resolves": POSITIVE_INT,
    "hysteresis": Rule("float", low=0),
    "bn_recalibrate": Rule("int", low=0),
}
# Method arguments counted in optimizer steps: the recipe also takes them as NAME_epochs and
# NAME_fraction (of optim.epochs). A method adds its own with a ``step_args`` attribute.
STEP_ARGS = {"warmup", "ramp", "update_every", "freeze_after", "prune_at", "window", "collect",
             "round_every", "explore"}
# Arguments the recipe provides itself (the prepared model, facts of the run).
# (a GradScaler object and the loss's reduction are the trainer's: its loss is a mean and it
# runs no scaler; given in a recipe, `sum` picked other CCP channels and `scaler` crashed at
# the first step: break52 #3, #4)
CONTEXT_ARGS = {"prepared", "steps_per_epoch", "epochs", "schedule", "reduce_fn", "scaler",
                 "loss_reduction"}
#: those of them ``fxprune train`` passes, and when (the recipe has no loss scaler and a mean
#: loss; reduce_fn: under torchrun, to a method whose statistics are each process's own)
TRAINER_GIVES = {"prepared": "", "steps_per_epoch": "", "epochs": "", "reduce_fn": " under torchrun"}
_EPOCH_KEYS = {"warmup_epochs": "warmup", "ramp_epochs": "ramp", "cooldown_epochs": "freeze_after"}


def pruner_class(method: str):
    """The class (or factory) registered as ``method`` (looked up at each call)."""
    from .methods.registration import get_method

    try:
        return get_method(method).cls
    except (ValueError, AttributeError, ImportError) as exc:
        raise ConfigError(f"prune.method {method!r}: {exc}") from None


def _method_defaults(method: str) -> dict:
    """The settings that define a registered method (``MethodEntry.defaults``); {} for none."""
    if method == NO_PRUNING:
        return {}
    from .methods.registration import get_method

    try:
        return dict(get_method(method).defaults)
    except (ValueError, AttributeError, ImportError):
        return {}


def prune_keys(method: str) -> dict[str, Rule | None]:
    """The keys ``prune`` may hold for ``method``: the recipe's own and every constructor
    argument of the method's class (a Rule, or None where only the default's kind is known)."""
    keys: dict[str, Rule | None] = dict(RECIPE_PRUNE_KEYS)
    if method == NO_PRUNING:
        return {"method": RECIPE_PRUNE_KEYS["method"]}
    from .methods.base import method_parameters

    cls = pruner_class(method)
    try:
        # a one-shot factory's keywords are SMCP's: checked by name (break62 #9: a typo reached
        # SMCP as "SMCP.__init__() got an unexpected keyword", with no valid keys and no "did
        # you mean"); the ones it sets itself stay keys, refused below: "sets itself"
        params = method_parameters(cls)
    except (TypeError, ValueError):
        return keys
    for name, p in params.items():
        if p.kind == p.VAR_KEYWORD:  # takes any keyword: let it judge unknown ones
            keys["*"] = None
        if name in CONTEXT_ARGS or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        rule = PRUNE_RULES.get(name)
        if rule is None and p.default is not inspect.Parameter.empty:
            kind = {bool: "bool", int: "int", float: "float", str: "str"}.get(type(p.default))
            rule = Rule(kind) if kind else None
        keys[name] = rule
    for epochs_key, steps_key in _EPOCH_KEYS.items():
        if steps_key not in keys:  # the method has no such schedule: no epoch form of it
            keys.pop(epochs_key, None)
    steps = STEP_ARGS | set(getattr(cls, "step_args", ()))
    for name in params:  # a step count the method takes may be written in epochs ...
        if name in steps and name not in CONTEXT_ARGS:
            keys.setdefault(f"{name}_epochs", _epochs_rule(name))
    for key in [k for k in keys if k.endswith("_epochs")]:  # ... or as a fraction of the run
        name = key[: -len("_epochs")]
        keys[f"{name}_fraction"] = Rule("float", low=0, high=1, open_low=_epochs_rule(name).open_low)
    return keys


def _epochs_rule(name: str) -> Rule:
    """An interval (``update_every``) must be positive; a point in the run may be 0."""
    steps_rule = PRUNE_RULES.get(name)
    positive = steps_rule is not None and steps_rule.low is not None and steps_rule.low >= 1
    return Rule("float", low=0, open_low=positive)


def _schedule_forms(key: str) -> set[str]:
    """The keys that set the same step count as prune ``key``: NAME (steps), NAME_epochs and
    NAME_fraction; the cool-down is freeze_after written from the end of the run."""
    base = key
    for suffix in ("_epochs", "_fraction"):
        if key.endswith(suffix):
            base = key[: -len(suffix)]
    names = {"cooldown", "freeze_after"} if base in ("cooldown", "freeze_after") else {base}
    return {f"{n}{s}" for n in names for s in ("", "_epochs", "_fraction")} - {"cooldown"}


def _check_one_form(prune: dict) -> None:
    """A step count written twice (``update_every`` and ``update_every_fraction``) is refused:
    which one wins would be a guess."""
    for key in prune:
        if key == "method":
            continue
        clash = sorted(k for k in _schedule_forms(key) & set(prune) if k != key)
        if clash:
            raise ConfigError(f"prune.{key} and prune.{clash[0]} set the same thing; keep one "
                              f"(NAME: steps, NAME_epochs: epochs, NAME_fraction: of optim.epochs)")


def fractions_to_epochs(prune: dict, epochs: float) -> dict:
    """A copy of ``prune`` with every ``NAME_fraction`` (a fraction of the run's
    ``optim.epochs``) written as ``NAME_epochs``: a recipe whose schedule is in fractions
    keeps its shape when the run is made shorter or longer (``--set optim.epochs=2``).
    Raises ConfigError when both forms of one key are given."""
    out = {}
    for key, value in prune.items():
        if not key.endswith("_fraction"):
            out.setdefault(key, value)
            continue
        name = key[: -len("_fraction")]
        if f"{name}_epochs" in prune:
            raise ConfigError(f"prune.{key} and prune.{name}_epochs both set {name}; keep one "
                              f"(_fraction: of optim.epochs, scales with the run; _epochs: fixed)")
        out[f"{name}_epochs"] = value * epochs
    return out


# ----------------------------------------------------------------------------- YAML

class _YamlLoader(yaml.SafeLoader):
    """YAML with 1.2 floats (PyYAML alone reads ``1e-3``, no dot, as a string) and no key given
    twice in one mapping (PyYAML keeps the last: a second ``prune:`` would replace the first
    block whole, silently). Merge keys (``<<: *base``) still merge, an explicit key overriding
    a merged one."""

    def construct_mapping(self, node, deep=False):
        seen, merges = set(), 0
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                merges += 1  # '<<: *base': the explicit keys beside it may override it
                if merges > 1:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"'<<' is given twice in one mapping, at line "
                        f"{key_node.start_mark.line + 1}; merge several with <<: [*a, *b]",
                        key_node.start_mark)
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                twice = key in seen
            except TypeError:  # an unhashable key: PyYAML's own error below names it
                break
            if twice:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice in one mapping, at line "
                    f"{key_node.start_mark.line + 1}; keep one", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)

    def construct_yaml_int(self, node):
        # YAML 1.1's octal (017 is 15) and base 60 (1:30 is 90) changed a seed or a size
        # without a word (break170 F6); YAML 1.2 reads neither so
        text = str(node.value).replace("_", "")
        if ":" in text or re.fullmatch(r"[-+]?0[0-7]+", text):
            raise yaml.constructor.ConstructorError(
                None, None, f"{node.value} is read by YAML 1.1 "
                f"as {super().construct_yaml_int(node)} (a leading 0 is octal, a colon base 60); "
                f"write the number plainly, or quote it as a string", node.start_mark)
        return super().construct_yaml_int(node)


_YamlLoader.add_constructor("tag:yaml.org,2002:int", _YamlLoader.construct_yaml_int)


class _YamlDumper(yaml.SafeDumper):
    """SafeDumper that quotes what :class:`_YamlLoader` reads as a number: a string ``1e3``
    (an --out folder) was written bare and read back as 1000.0 (break170 F2)."""


for _resolving in (_YamlLoader, _YamlDumper):  # YAML 1.2's floats: 1e-3 without a dot
    _resolving.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"))


def parse_value(text: str) -> Any:
    return yaml.load(text, Loader=_YamlLoader)


def dump_yaml(data: Any) -> str:
    """``data`` as YAML that :func:`parse_value` (and a recipe's loading) reads back equal."""
    return yaml.dump(data, Dumper=_YamlDumper, sort_keys=False)


def dotted_keys(d: dict, prefix: str = "") -> dict[str, Any]:
    """A nested recipe as one level, its keys dotted as ``--set`` writes them:
    ``{"prune": {"target": 0.5}}`` -> ``{"prune.target": 0.5}`` (an empty section is a value)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(dotted_keys(v, key + "."))
        else:
            out[key] = v
    return out


def _valid_keys(defaults: dict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in defaults.items():
        free = f"{prefix}{k}" in FREE_SECTIONS | FREE_MAPPINGS
        if isinstance(v, dict) and not free:
            keys += _valid_keys(v, f"{prefix}{k}.")
        else:
            keys.append(f"{prefix}{k}" + (".*" if free else ""))
    return keys


def _methods_prune_keys() -> list[str]:
    """``prune.KEY`` for every key a registered method takes: where a misplaced key may
    belong (break187: ``model.target`` was "did you mean model.name?", not prune.target)."""
    from .methods.registration import method_names

    keys: dict[str, None] = {}
    for method in method_names():  # the plug-ins too (the registry holds them once loaded)
        try:
            keys.update(dict.fromkeys(f"prune.{k}" for k in prune_keys(method) if k != "*"))
        except Exception:  # noqa: BLE001 - a plug-in that cannot be inspected adds none
            continue
    return list(keys)


def _where_it_belongs(key: str, *, prune: bool = True) -> list[str]:
    """Where a key given in the wrong section belongs: the top-level key of its name
    (optim.seed: the run's seed, review189 R6), else the keys of its name in other sections,
    a method's ``prune.*`` keys among them with ``prune`` (lr: optim.lr; model.target:
    prune.target, break187; prune.lr: optim.lr, break190 F8)."""
    if key in DEFAULTS and not isinstance(DEFAULTS[key], dict):
        return [key]
    everywhere = _valid_keys(DEFAULTS) + (_methods_prune_keys() if prune else [])
    return [k for k in everywhere if k.endswith("." + key)]


def _merge(base: dict, update: dict, defaults: dict, prefix: str = "") -> None:
    """Merge ``update`` into ``base`` in place, checking keys (kinds: :func:`validate`)."""
    for key, value in update.items():
        path = f"{prefix}{key}"
        if not isinstance(key, str) or key not in defaults:
            # the keys of this section first: a long list of every key got cut off (break37 #8)
            here = [f"{prefix}{k}" for k in defaults]
            everywhere = _valid_keys(DEFAULTS) + _methods_prune_keys()
            # this section's key in another unit (optim.warmup for optim.warmup_epochs), a
            # key given bare or misplaced, or a near miss
            close = ([k for k in here if k.startswith(path + "_")]
                     or (_where_it_belongs(key) if isinstance(key, str) else [])
                     or difflib.get_close_matches(path, here + everywhere, n=1))
            hint = f" (did you mean {close[0]}?)" if isinstance(key, str) and close else ""
            # in the words of a method's unknown prune key (break187 F7: two formats)
            named = path if re.fullmatch(r"[\w.]+", path) else repr(path)
            raise ConfigError(f"unknown key {named}{hint}; valid keys"
                              f"{' in ' + prefix.rstrip('.') if prefix else ''}: {', '.join(here)}")
        default = defaults[key]
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{path} is a section (a mapping of keys), got {_show(value)}")
            if path in FREE_SECTIONS | FREE_MAPPINGS:
                # (break158 F3: an int or YAML-boolean key was a 30-line traceback further on)
                odd = [k for k in value if not isinstance(k, str)]
                if odd:
                    names = ("the method's argument names (fxprune methods METHOD lists them)"
                             if path == "prune" else "keyword argument names of the model's builder")
                    raise ConfigError(
                        f"{path} has the key {odd[0]!r} ({type(odd[0]).__name__}), not a name: "
                        "YAML reads an unquoted number, null or off/no/on/yes key as such; the "
                        f"keys of {path} are {names}, quoted where YAML would read them otherwise")
                base[key].update(copy.deepcopy(value))
            else:
                _merge(base[key], value, default, path + ".")
        else:
            SCHEMA[path].check(path, value)  # early, so the error names the override
            base[key] = copy.deepcopy(value)


def apply_overrides(cfg: dict, overrides: list[str]) -> dict:
    """A copy of ``cfg`` with ``section.key=value`` overrides applied (values parsed as YAML);
    ``~section.key`` removes a key (its default back, if it has one), as Hydra writes it."""
    cfg = copy.deepcopy(cfg)
    replaced: set[str] = set()  # keys an earlier override removed by naming their other form
    #: a schedule setting's forms -> (the form an override gave, that override)
    forms_given: dict[frozenset, tuple[str, str]] = {}
    for item in overrides:
        if item.startswith("~"):
            if item[1:].strip() not in replaced:  # (already gone: break98 F1 was told the
                _remove_key(cfg, item)            # recipe did not set it, and another key)
            # an override removed is no longer in effect (review195 R5: a later form of its
            # setting was refused, naming it)
            forms_given = {f: (name, by) for f, (name, by) in forms_given.items()
                           if item[1:].strip() not in (f"prune.{name}", "prune")}
            continue
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not KEY=VALUE (e.g. optim.epochs=2)")
        try:
            value = parse_value(text)
        except yaml.constructor.ConstructorError as exc:  # valid YAML, refused (review172 F11)
            raise ConfigError(f"override {item!r}: {exc.problem}") from None
        except yaml.YAMLError as exc:
            first = str(exc).splitlines()[0]
            raise ConfigError(f"override {item!r}: value is not valid YAML ({first})") from None
        update: dict = {}
        node = update
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
        # the schedule keys it gives, dotted (prune.warmup=2) or as a mapping (prune={...}),
        # alike (break196 F4: the mapping form was checked against the recipe's own form)
        given = update.get("prune") if isinstance(update.get("prune"), dict) else {}
        for name in [k for k in given if isinstance(k, str)]:
            forms = frozenset(_schedule_forms(name))
            if len(forms) < 2:
                continue
            earlier = forms_given.get(forms)
            if earlier is not None and earlier[0] != name and earlier[1] != item:
                # two overrides of one setting in two units: which one meant it? (break193 F8:
                # the last one won without a word, where a recipe giving both is refused)
                raise ConfigError(f"prune.{name} gives the setting that --set {earlier[1]} gave, "
                                  "in another unit; keep one of them")
            forms_given[forms] = (name, item)
            if isinstance(cfg.get("prune"), dict):
                # --set prune.update_every=10 replaces the recipe's update_every_fraction: the
                # override names the same setting in another unit (two forms in one mapping
                # stay, and are refused below as a recipe's would be)
                for other in forms - {name} - set(given):
                    if cfg["prune"].pop(other, None) is not None:
                        replaced.add(f"prune.{other}")
        _merge(cfg, update, DEFAULTS)
    return cfg


def _remove_key(cfg: dict, item: str) -> None:
    """``~prune.warmup_fraction``: switching a recipe's method on the command line leaves keys
    the new method does not take."""
    parts = item[1:].strip().split(".")
    node, default = cfg, DEFAULTS
    for part in parts[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
        default = default.get(part, {}) if isinstance(default, dict) else {}
    if "=" in item:
        raise ConfigError(f"override {item!r} removes a key, so it takes no value; write "
                          "~section.key (e.g. ~prune.warmup_fraction)")
    if not isinstance(node, dict) or parts[-1] not in node:
        # the key, not the form, is what is wrong (break52: ~optim.lrx was told to drop a value)
        here = sorted(k for k in node if isinstance(k, str)) if isinstance(node, dict) else []
        close = difflib.get_close_matches(parts[-1], here, n=1, cutoff=0.75)
        hint = f" (did you mean ~{'.'.join([*parts[:-1], close[0]])}?)" if close else ""
        raise ConfigError(f"override {item!r}: the recipe does not set {item[1:].strip()!r}, so "
                          f"there is nothing to remove{hint}")
    del node[parts[-1]]
    if isinstance(default, dict) and parts[-1] in default:
        node[parts[-1]] = copy.deepcopy(default[parts[-1]])


# ----------------------------------------------------------------------------- validation

def validate(cfg: dict) -> None:
    """Check every key of a resolved config; raise a one-line :class:`ConfigError` if wrong."""
    for key, value in dotted_keys({k: v for k, v in cfg.items() if k not in FREE_SECTIONS}).items():
        if key in SCHEMA:
            SCHEMA[key].check(key, value)
    _check_device(cfg["device"])
    if cfg["log"]["tensorboard"] is True and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("log.tensorboard is true but tensorboard is not installed: "
                          "pip install tensorboard, or --set log.tensorboard=false")
    _check_model(cfg["model"])
    _check_prune(cfg["prune"], cfg["optim"])
    optim = cfg["optim"]
    if optim["milestones"] and optim["schedule"] != "step":
        raise ConfigError(f"optim.milestones {optim['milestones']} are read by the step schedule only "
                          f"(optim.schedule is {optim['schedule']!r}): --set optim.schedule=step, or "
                          "--set optim.milestones=[]")
    late = [m for m in optim["milestones"] if m >= optim["epochs"]]
    if late:  # a shortened run (--set optim.epochs=...) would silently never decay
        raise ConfigError(f"optim.milestones {late} lie at or past optim.epochs ({optim['epochs']}), "
                          "where they never apply: lower them (epochs where lr *= optim.gamma), "
                          "or --set optim.milestones=[]")
    if optim["warmup_epochs"] >= optim["epochs"] and optim["warmup_epochs"] > 0:
        raise ConfigError(f"optim.warmup_epochs ({optim['warmup_epochs']}) must be below "
                          f"optim.epochs ({optim['epochs']})")


def _check_device(name: str) -> None:
    import torch

    if name == "auto":
        return
    try:
        kind = torch.device(name).type
    except (RuntimeError, ValueError):
        raise ConfigError(f"device {name!r} is not a device: use auto, cpu, cuda or cuda:N"
                          ) from None
    if kind not in ("cpu", "cuda"):  # meta holds no data; mps/xpu/... untested, and often absent
        raise ConfigError(f"device {name!r}: fxprune train runs on cpu or cuda[:N] (or auto)")


def _check_model(model: dict) -> None:
    from .models import available_models, check_timm_model, timm_name

    name = model["name"]
    if name != "resnet_fmnist":
        if timm_name(name) is not None:
            try:
                check_timm_model(name)
            except ValueError as exc:
                raise ConfigError(f"model.name: {exc}") from None
        elif name not in available_models():
            # (break180 F12: a timm model or one's own module was refused with no way on)
            raise ConfigError(f"model.name {name!r} is not a model: use resnet_fmnist, a "
                              f"torchvision classification model (resnet18, mobilenet_v2, ...; "
                              f"see fxprune.models.available_models()) or timm:NAME (a timm "
                              f"model); a model of your own is pruned from Python "
                              f"(fxprune.prepare, a method, fxprune.finalize: README, 'The "
                              f"pipeline')")
        stray = [k for k in RESNET_FMNIST_ONLY if model.get(k) is not None]
        if stray:  # all at once: the shipped recipes set several
            keys = ", ".join(f"model.{k}" for k in stray)
            sets = " ".join(f"--set model.{k}=null" for k in stray)
            kind = "timm" if timm_name(name) is not None else "torchvision"
            raise ConfigError(f"{keys} only appl{'ies' if len(stray) == 1 else 'y'} to "
                              f"resnet_fmnist; set {'it' if len(stray) == 1 else 'them'} to null "
                              f"for the {kind} model {name!r} ({sets})")
        return
    widths, blocks = model.get("widths"), model.get("blocks")
    widths = list(DEFAULT_WIDTHS) if widths is None else widths
    blocks = list(DEFAULT_BLOCKS) if blocks is None else blocks
    if len(widths) != len(blocks) or not widths:
        raise ConfigError(f"model.widths and model.blocks need one entry per stage (the same "
                          f"length, at least 1); got {widths} and {blocks}")
    inner = model.get("inner_widths")
    if inner is not None and len(inner) != len(widths):
        raise ConfigError(f"model.inner_widths needs one entry per stage like model.widths "
                          f"({len(widths)}); got {inner}: give {len(widths)} entries, or null "
                          "for the stage widths")


def _argument_of(key: str) -> str:
    """The method argument a recipe key sets: ``ramp_fraction`` -> ``ramp``, the cool-down's
    forms -> ``freeze_after``."""
    base = key.removesuffix("_epochs").removesuffix("_fraction")
    return "freeze_after" if base == "cooldown" else base


def _check_prune(prune: dict, optim: dict) -> None:
    method = prune.get("method", NO_PRUNING)
    RECIPE_PRUNE_KEYS["method"].check("prune.method", method)
    keys = prune_keys(method)
    # the trainer's own arguments, refused by name: a method taking **kwargs (an SMCP subclass
    # forwarding them) let them through, and a method's own `scaler` was an "unknown key"
    # (break54 #5)
    theirs = sorted(k for k in prune if k in CONTEXT_ARGS and method != NO_PRUNING)
    if "schedule" in theirs:
        # (break57 #9: the trainer gives no schedule; the method builds it from these keys)
        raise ConfigError("prune.schedule is the method's schedule object, which it builds from "
                          "the recipe's prune.warmup / ramp / update_every / freeze_after keys "
                          "(or their _epochs / _fraction forms): set those, and remove "
                          "prune.schedule (on the command line: --set '~prune.schedule')")
    if theirs:
        raise ConfigError(f"prune.{theirs[0]} is an argument fxprune train gives the method "
                          "itself (the prepared model, the run's length, a mean loss, no loss "
                          "scaler, statistics averaged across processes), not a recipe key: "
                          f"remove it (on the command line: --set '~prune.{theirs[0]}'); for "
                          "another, train from your own loop with the Python API")
    # under method none a key left null asks for nothing (break40 #7: `prune.target: null`)
    extra = [k for k in prune if k not in keys and (method == NO_PRUNING or "*" not in keys)
             and not (method == NO_PRUNING and prune[k] is None)]
    drop = " ".join(f"--set '~prune.{k}'" for k in extra)
    if extra and method == NO_PRUNING:
        raise ConfigError(f"prune.{extra[0]} is set but prune.method is none (no pruning); set "
                          f"prune.method to one of {', '.join(PRUNERS)}, or remove the prune.* "
                          f"keys (on the command line: {drop})")
    # the method's arguments it sets itself (oneshot: SMCP's schedule), refused below by name
    sets_itself = getattr(pruner_class(method), "sets_itself", ()) if method != NO_PRUNING else ()
    # settings that define the method (magnitude is SMCP with importance="magnitude"), another
    # value refused with the unknown keys, in one error (break73 M2: a second round followed)
    defines = _method_defaults(method)
    fixed = [k for k in prune if k in defines and prune[k] != defines[k]]
    clash = [k for k in prune if method != NO_PRUNING and _argument_of(k) in sets_itself]
    if extra or clash or fixed:  # every key to remove in one error (break73 M2: two rounds)
        parts = []
        if extra:
            valid = [k for k in keys if k != "*" and _argument_of(k) not in sets_itself]
            # a key of another section put here, else a near miss among the method's
            close = (_where_it_belongs(extra[0], prune=False)
                     or [f"prune.{k}" for k in difflib.get_close_matches(extra[0], valid, n=1)])
            hint = f" (did you mean {close[0]}?)" if close else ""
            base = re.sub(r"_(epochs|fraction)$", "", extra[0])
            if base != extra[0] and base in keys:  # (break105 F10: the way was in a comment)
                hint += (f" (prune.{base} is the method's own argument: written in epochs or as "
                         f"a fraction once its class lists it as a step count, "
                         f"step_args = ({base!r},))")
            parts.append(f"unknown key prune.{extra[0]} for prune.method {method}{hint}; valid: "
                         f"{', '.join(sorted(valid))}; remove {'it' if len(extra) == 1 else 'them'}"
                         " from the recipe or the --set that gave it")
        if clash:  # e.g. oneshot sets SMCP's schedule: name the recipe's own forms
            parts.append(f"prune.method {method} sets these keys itself: remove "
                         f"prune.{', prune.'.join(clash)} from the recipe")
        if fixed:  # settings that define the method: magnitude is SMCP with importance=magnitude
            it = "it" if len(fixed) == 1 else "them"
            parts.append(f"prune.method {method} runs with "
                         + ", ".join(f"{k}={defines[k]!r}" for k in fixed) + ", but the recipe "
                         "sets " + ", ".join(f"prune.{k}={_show(prune[k])}" for k in fixed)
                         + f": remove {it}, or choose the method that has {it}")
        drop = " ".join(f"--set '~prune.{k}'" for k in dict.fromkeys(extra + clash + fixed))
        # (break102 F4: for a key a --set gave, the way out is to drop that --set, said above)
        raise ConfigError("; ".join(parts) + f" (a recipe's keys are removed on the command line: {drop})"
                          + (f"; it sets its arguments {', '.join(sets_itself)}" if clash else ""))
    for key, value in prune.items():
        rule = keys.get(key)
        if rule is not None:
            rule.check(f"prune.{key}", value)
    if method == NO_PRUNING:
        return
    from .cost import LATENCY_COSTS

    if prune.get("latency_cache") is not None and prune.get("cost") not in LATENCY_COSTS:
        raise ConfigError(f"prune.latency_cache is the latency table's cache, read when "
                          f"prune.cost is {' or '.join(LATENCY_COSTS)}, not "
                          f"{_show(prune['cost']) if 'cost' in prune else 'the method default'}: "
                          "set prune.cost=latency, "
                          "or remove it (--set '~prune.latency_cache')")
    _check_one_form(prune)
    if prune.get("target") is None:  # the method's own default target is the one the run will use
        cls = pruner_class(method)
        try:
            target = inspect.signature(cls).parameters.get("target")
        except (TypeError, ValueError):
            target = None
        default = None if target is None else target.default
        if default is None:  # CUCB, CCP: None stands for the class's default_target
            default = getattr(cls, "default_target", None)
        if isinstance(default, (int, float)):
            prune = {**prune, "target": default}
    _check_schedule_epochs(prune, optim)


def _check_schedule_epochs(written: dict, optim: dict) -> None:
    """A schedule written in epochs or fractions of the run must reach its target within the
    run. Messages name the keys as the recipe wrote them."""
    epochs = optim["epochs"]
    prune = fractions_to_epochs(written, epochs)
    if prune.get("target") is None or prune["target"] >= 1.0:
        return

    def key(name: str) -> str:
        if f"{name}_fraction" in written:
            return f"prune.{name}_fraction ({written[f'{name}_fraction']:g} of the run)"
        return f"prune.{name}_epochs ({prune[f'{name}_epochs']:g})"

    def way_out(*names: str) -> str:
        if any(f"{n}_fraction" in written for n in names):  # raising optim.epochs scales them too
            return f"lower {' or '.join(k.split(' ')[0] for k in map(key, names))}"
        return f"lower {names[0]}_epochs or raise optim.epochs"

    cooldown = prune.get("cooldown_epochs")
    if cooldown is not None and cooldown >= epochs:
        raise ConfigError(f"{key('cooldown')} >= optim.epochs ({epochs}) leaves no epoch to prune "
                          f"in, so the target would never be reached; {way_out('cooldown')}")
    prune_until = epochs - (cooldown or 0)
    warmup, ramp = prune.get("warmup_epochs"), prune.get("ramp_epochs")
    if warmup is not None and warmup >= prune_until:
        raise ConfigError(f"{key('warmup')} leaves no epoch to prune in before "
                          f"{'the cool-down' if cooldown else 'the end'} (epoch {prune_until:g}); "
                          f"{way_out('warmup', 'cooldown') if cooldown else way_out('warmup')}")
    if warmup is not None and ramp is not None and warmup + ramp > prune_until + 1e-9:
        ends = [key("warmup"), key("ramp")]
        raise ConfigError(
            f"the pruning ramp ends at epoch {warmup + ramp:g} ({' + '.join(ends)}) but masks stop "
            f"changing at epoch {prune_until:g} (optim.epochs {epochs}"
            f"{' - ' + key('cooldown') if cooldown else ''}), so the target would not be "
            f"reached; {way_out('ramp', 'warmup') if any(k.endswith('run)') for k in ends) else 'shorten the ramp or raise optim.epochs'}")
    prune_at = prune.get("prune_at_epochs")
    if prune_at is not None and prune_at >= epochs:
        raise ConfigError(f"{key('prune_at')} is at or after the end of the run (optim.epochs "
                          f"{epochs}), so nothing would be pruned; {way_out('prune_at')}")


def check_schedule_steps(schedule, target: float, total_steps: int, set_steps: dict | None = None,
                         run: str | None = None) -> None:
    """The same check in optimizer steps, once the run's length is known: the ramp (and
    with it the last update, at its end) must fit before masks freeze and end before the
    run's last step; a one-shot method's decision (``prune_at`` in ``set_steps``, the step
    counts the recipe's method runs with) must come before it too, with steps left to
    fine-tune (review138 F4, review142 F10). The error names the keys that move it
    (break132 #1: "shorten prune.ramp" was said to a method that refuses ramp); ``run`` says
    the run's length in words (default: "the run has N")."""
    if schedule is None or target >= 1.0:
        return
    run = run or f"the run has {total_steps}"
    last = total_steps if schedule.freeze_after is None else min(schedule.freeze_after,
                                                                  total_steps)
    prune_at = (set_steps or {}).get("prune_at")
    if prune_at is not None:
        if prune_at >= total_steps:  # at the last step: nothing fine-tuned after (review138 F4,
            # as CUCB's explore)
            when = (" but" if prune_at > total_steps else
                    ", the last of the run's, with nothing fine-tuned after;")
            raise ConfigError(
                f"the pruning comes at step {prune_at} (prune.prune_at){when} {run}; lower "
                "prune.prune_at (or the _epochs/_fraction form set) or raise optim.epochs")
        return
    ramp_end = schedule.ramp_end
    if ramp_end > last:
        frozen = schedule.freeze_after is not None and schedule.freeze_after < total_steps
        keys = "prune.warmup or prune.ramp" + (" (or the cool-down, prune.cooldown_*)" if frozen else "")
        raise ConfigError(
            f"the pruning schedule reaches its target at step {ramp_end} (warmup {schedule.warmup} "
            f"+ ramp {schedule.ramp}) but masks stop changing at step {last} of {total_steps}; "
            f"shorten {keys}, in whichever form the recipe sets them, or raise optim.epochs")
    if ramp_end >= total_steps:  # unfrozen to the end: its last update at the last step
        raise ConfigError(
            f"the pruning schedule reaches its target at step {ramp_end} (warmup {schedule.warmup} "
            f"+ ramp {schedule.ramp}), the last of the run's, with nothing fine-tuned after; "
            f"{run}; shorten prune.warmup or prune.ramp, in whichever form the recipe sets "
            "them, or raise optim.epochs")


def check_run_fits(pruner, method: str, total_steps: int, run: str) -> None:
    """Refuse, before training, a pruning that would not run within ``total_steps`` optimizer
    steps or would come at the last one, with nothing fine-tuned after: CCP's rounds
    (``prune_steps()``), CUCB's final selection (``explore``), the ramp and a one-shot
    ``prune_at`` (:func:`check_schedule_steps`). ``method`` and ``run`` (the run's length in
    words) go into the message, which names the keys that move the step.

    Raises:
        ConfigError: naming the step, the run's length and the keys to change.
    """
    from .methods.base import pruning_schedule

    schedule = pruning_schedule(pruner)  # (a plug-in's schedule of another kind: refused)
    prune_steps = pruner.prune_steps() if callable(getattr(pruner, "prune_steps", None)) else []
    late = [s for s in prune_steps if s > total_steps]
    # the keys that move them (break198 F5: a plug-in was told CCP's collect and prune_at)
    keys = step_keys(pruner, "prune.collect / prune.prune_at (or rounds, round_every)")
    if late:
        listed = (", ".join(map(str, late)) if len(late) <= 5 else
                  f"{', '.join(map(str, late[:3]))}, ..., {late[-1]}")  # (break132 #3: all 50)
        what = ("so it would end unpruned" if len(late) == len(prune_steps) else
                f"so {len(late)} of its {len(prune_steps)} rounds would not run")
        raise ConfigError(
            f"{method} prunes at optimizer step{'s' if len(late) > 1 else ''} {listed}, but "
            f"{run}, {what}; lower {keys} or raise optim.epochs")
    if prune_steps and max(prune_steps) == total_steps:  # (review138 F4, as explore below)
        raise ConfigError(
            f"{method}'s last pruning round comes at optimizer step {total_steps}, and {run}: "
            f"it would prune at the last step, with nothing fine-tuned after; lower {keys} or "
            "raise optim.epochs")
    explore = getattr(pruner, "explore", None)
    if hasattr(pruner, "explore") and explore is None:
        # (break158 F5: accepted without a word; the pick came after the last step, its
        # channels never trained together, while explore at the last step was refused)
        raise ConfigError(
            f"{method} has no prune.explore, so its final selection would come after the last "
            f"step, and {run}: nothing would be fine-tuned after it; set prune.explore (or its "
            "_epochs/_fraction form) below the run's length, e.g. --set "
            "prune.explore_fraction=0.7")
    if isinstance(explore, int) and explore >= total_steps:
        # (break132 #2: accepted, and the pick came at the last step, nothing fine-tuned)
        raise ConfigError(
            f"{method} makes its final selection at optimizer step {explore} (prune.explore), "
            f"and {run}: it would pick at the last step, with nothing fine-tuned after; lower "
            "prune.explore (or its _epochs/_fraction form) or raise optim.epochs")
    target = getattr(pruner, "target", None)
    if isinstance(target, (int, float)):
        check_schedule_steps(schedule, float(target), total_steps,
                             getattr(pruner, "fxprune_schedule_steps", None), run)


def step_keys(pruner, fxprune_keys: str, *, recipe: bool = True) -> str:
    """The settings that move a method's pruning steps, for a refusal (break198 F5: a plug-in
    was told CCP's): a method's own ``step_args`` (``prune.KEY`` in a recipe, ``KEY=`` for
    the Lightning callback), else ``fxprune_keys`` for fxprune's methods, else words."""
    own = getattr(type(pruner), "step_args", ())
    if own:
        return (" / ".join(f"prune.{k}" for k in own) + " (or the _epochs/_fraction form set)"
                if recipe else ", ".join(f"{k}=" for k in own))
    if type(pruner).__module__.startswith("fxprune."):
        return fxprune_keys
    what = "settings" if recipe else "arguments"
    return f"the {what} of {type(pruner).__name__} that set when it prunes"


def resolve_config(cfg: dict | None = None, overrides: list[str] | None = None) -> dict:
    """DEFAULTS updated with ``cfg`` then ``overrides``; validated, never mutating ``cfg``."""
    resolved = copy.deepcopy(DEFAULTS)
    if cfg:
        if not isinstance(cfg, dict):
            raise ConfigError(f"a config is a mapping of sections, got {type(cfg).__name__}")
        _merge(resolved, cfg, DEFAULTS)
    resolved = apply_overrides(resolved, overrides or [])
    model = resolved.get("model")
    if isinstance(model, dict) and model.get("name") != "resnet_fmnist":
        # the recipe's own ResNet's defaults are no setting of another model: a recipe naming
        # only timm:NAME was refused for model.widths and model.blocks it never wrote (break182
        # F5), and the shipped recipes write them out. Compared by value, so the default
        # written by the user is dropped too (harmless: it sets nothing of this model); any
        # other value is refused as stray (review183 R9)
        for key in RESNET_FMNIST_ONLY:
            if key in model and model[key] == DEFAULTS["model"].get(key):
                model[key] = None
    validate(resolved)
    return resolved


def _is_inherited_pipe(path: Path) -> bool:
    """``/dev/fd/N`` or ``/proc/self/fd/N``: a ``<(...)`` pipe, open only in the shell's child."""
    return re.fullmatch(r"/(dev|proc/self)/fd/\d+", str(path)) is not None


def _tab_indent(exc: Exception, text: str) -> bool:
    """Whether PyYAML stopped at a tab that indents its line (break132 #7: its message gave no
    way out; review137 #7: not a tab elsewhere in a line)."""
    mark = getattr(exc, "problem_mark", None)
    if mark is None or "'\\t'" not in str(exc):
        return False
    lines = text.splitlines()
    line = lines[mark.line] if mark.line < len(lines) else ""
    return not line[:mark.column].strip(" \t") and line[mark.column:mark.column + 1] == "\t"


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> dict:
    """Read a YAML recipe, apply ``section.key=value`` overrides, validate."""
    path = Path(path).expanduser()
    if not path.exists() or path.is_dir():  # a pipe is read (break73 M3: `<(sed ...)` was
        # "not found")
        what = "is a folder, not a YAML recipe" if path.is_dir() else "not found"
        if _is_inherited_pipe(path):  # break76 PIPE-1: `torchrun ... <(sed ...)`
            raise ConfigError(
                f"config file {path} is a shell pipe this process cannot open"
                + (" (torchrun's processes do not inherit it)"
                   if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "")
                + "; write the recipe to a file and pass that file")
        # named from here when the source tree is here, else as the source tree's
        # (break37 #9: paths relative to it meant nothing from another folder)
        if path.is_dir() and (path / "config.yaml").is_file() and (path / ".fxprune-run").is_file():
            # (break170 F7: a run's folder given for its recipe got the shipped ones listed)
            raise ConfigError(f"config file {path} is a run's folder, not a YAML recipe; its "
                              f"recipe is {path / 'config.yaml'} (fxprune train "
                              f"{path / 'config.yaml'} --resume continues the run)")
        if str(path) == "-":
            raise ConfigError("config file - is not read as standard input; pass /dev/stdin "
                              "(cat recipe.yaml | fxprune train /dev/stdin)")
        shipped = Path(__file__).resolve().parents[1] / "configs"
        where = os.path.relpath(shipped) if shipped.is_dir() else "configs"
        where = (str(shipped) if where.startswith("..") else where) + os.sep
        raise ConfigError(f"config file {path} {what}; the shipped recipes are "
                          f"{where}fashion_mnist_smcp.yaml (SMCP), {where}fashion_mnist_quick.yaml "
                          f"(a few minutes), {where}fashion_mnist_resnet.yaml (dense), "
                          f"{where}fashion_mnist_cucb.yaml and {where}fashion_mnist_ccp.yaml"
                          + ("" if shipped.is_dir() else " in fxprune's source tree"))
    text = ""
    try:
        text = path.read_text()
        raw = yaml.load(text, Loader=_YamlLoader)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        mark = getattr(exc, "problem_mark", None)
        if mark is not None and "line" not in first:  # where, and what PyYAML found there
            first = (f"line {mark.line + 1}, column {mark.column + 1}: "
                     f"{getattr(exc, 'problem', None) or first}")
        raise ConfigError(f"{path}: not a valid YAML recipe ({first})"
                          + ("; indent with spaces, not tabs" if _tab_indent(exc, text) else "")) from None
    if raw is None:
        raise ConfigError(f"{path} is empty; a recipe needs at least its sections (see "
                          "configs/fashion_mnist_quick.yaml), or pass {} to use every default")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a recipe is a mapping of sections (data:, model:, ...), "
                          f"got a {type(raw).__name__}")
    try:
        return resolve_config(raw, overrides)
    except ConfigError as exc:
        raise ConfigError(f"{_blamed(raw, overrides or [], str(exc), path)}: {exc}") from None


def _blamed(raw: dict, overrides: list[str], message: str, path: Path) -> str:
    """Where a config error comes from: the recipe file, or the first override after which
    it appears (break187: a bad --set value was called the file's, which held a good one),
    its numbers aside (break190 F7: a later --set of optim.epochs changed the epochs the
    message quoted, and took the blame for the --set that caused it). Neither alone: the
    file with the overrides."""
    def kind(text: str) -> str:
        return re.sub(r"\d+(\.\d+)?(e-?\d+)?", "#", text)

    for k in range(len(overrides) + 1):
        try:
            resolve_config(raw, overrides[:k])
        except ConfigError as exc:
            if kind(str(exc)) == kind(message):
                return str(path) if k == 0 else f"--set {overrides[k - 1]}"
    return f"{path} with --set {' '.join(overrides)}" if overrides else str(path)
