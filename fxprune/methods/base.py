"""The protocol every pruning method follows (the registry that finds them by name is
:mod:`fxprune.methods.registration`).

    pruner = get_method("cucb").build(prepared, target=0.5, ...)
    if hasattr(pruner, "attach_optimizer"):  # the optional hooks (below): CUCB's sub-network
        pruner.attach_optimizer(optimizer)
    for x, y in loader:
        net = getattr(pruner, "train_forward", prepared)  # the module this step trains
        loss = criterion(net(x), y)
        loss.backward()
        pruner.step(loss)            # after backward, before optimizer.step(); a record or None
        optimizer.step(); optimizer.zero_grad()
    pruner.finalize_masks()          # the method's final 0/1 masks (e.g. CUCB: top channels by mu)
    small = fxprune.finalize(prepared)

A method is any object with ``step(loss=None) -> dict | None``, ``cost(cost_model=None) ->
float`` (the current masks' cost as a fraction of dense), ``history`` (the records ``step``
returned), ``state_dict()``/``load_state_dict()`` (exact resume; tensors and plain Python data
only, which ``torch.load(weights_only=True)`` reads back: ``fxprune train`` and the Lightning
callback refuse a state holding anything else before they save one) and ``finalize_masks()``
(True when it changed the masks).
Two optional hooks let a method train a sub-network of the same weights (CUCB's gathered
execution): ``train_forward`` (the module the training step calls instead of the prepared
model) and ``attach_optimizer(optimizer)`` (called once the trainer has built its optimizer).
A third, ``sync_state()``, is a collective every process calls before rank 0 saves
``state_dict()`` (CCP: statistics collected on each process are summed onto rank 0).
:class:`PruningMethod` gives the shared parts (unit index, cost model, budget, masks).

Optional members ``fxprune train`` and the Lightning callback read where a method has them
(each read with ``getattr``; a method without one loses only what it is for):

- ``step_count`` (int): the steps taken; the callback names it in its messages.
- ``target`` (a fraction of the dense cost): what the end of a run is checked against.
- ``schedule`` (a :class:`fxprune.PruningSchedule`) or ``prune_steps()`` (the steps that
  choose masks): where the masks reach the target (:func:`schedule_end`), so that a run
  too short for it is refused before training.
- ``explore`` and ``warmup``: a final selection made at step ``explore`` (CUCB); the
  callback sets ``explore`` to the fit's last step when it is None and the fit is longer
  than the warm-up (a fit no longer than it is refused, a fast_dev_run warned).
- ``warn_above_target`` (bool): switched off while the trainer itself says a cost above the
  target; ``masks_not_final()``: why ``fxprune.finalize`` should warn.
- ``cost_model``: the cost model its budget prices with (``results.json``'s ``cost_model``).
- ``grad_scale`` (writable float) and ``discard_step()``: under mixed precision, the loss
  scale a step's gradients carry, and a step whose gradients overflowed (CCP's hooks).
- ``reopen()``: the callback restored a state from before the final rule of an earlier fit;
  the masks are trained on.
- class attributes: ``rank_local_statistics`` (hook statistics each process gathers: the
  trainer passes ``reduce_fn``), ``step_args`` (arguments a recipe may give in epochs or as a
  fraction of the run), ``sets_itself`` (arguments a factory fixes: one-shot's schedule).
"""
from __future__ import annotations

import copy
import functools
import inspect
import math
import numbers
import weakref
from collections.abc import Callable, Mapping
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import fx

from ..allocation import uniform_kept
from ..budget import Budget
from ..checks import check_fraction, check_number
from ..cost import LATENCY_COSTS, CostModel, pricing_hypothetical_widths
from ..errors import (ArgumentError, ArgumentTypeError, InfeasibleBudget, MethodProtocolError,
                      NotCopyableError, described, warn)
from ..groups import latest_pruner, register_pruner, state_of
from ..passes.grad_mode import GRAD_ENABLED
from ..importance import close_live_taps
from ..units import UnitIndex, consumer_weights, costed_layers

__all__ = ["Method", "PruningMethod", "check_method_kwargs", "method_parameters",
           "resolve_cost_model", "method_cost", "check_resumed_steps", "pruning_schedule"]


@runtime_checkable
class Method(Protocol):
    """The members every method has (the module docstring lists the optional ones)."""

    history: list

    def step(self, loss=None) -> dict | None: ...

    def cost(self, cost_model: CostModel | None = None) -> float: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    def finalize_masks(self) -> bool: ...


def method_cost(pruner, method: str) -> float | dict[str, float]:
    """``pruner.cost()``, the protocol's fraction of the dense cost, as a float (a 0-d tensor
    or numpy scalar read). A method without a numeric ``target`` may return a mapping of named
    costs instead (logged as ``cost.NAME`` columns); one with a target is held to a number,
    which the target is checked against.

    Raises:
        MethodProtocolError: naming ``method``, for anything else: None, NaN, a negative
            number, a str, or a mapping from a method with a target (break198 F2: those
            counted as a target reached, and NaN went into results.json).
    """
    def number(value):
        if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
            value = value.item()
        if (isinstance(value, bool) or not isinstance(value, numbers.Real)
                or not (math.isfinite(value) and value >= 0)):
            return None
        return float(value)

    cost = pruner.cost()
    target = getattr(pruner, "target", None)
    has_target = isinstance(target, numbers.Real) and not isinstance(target, bool)
    if isinstance(cost, Mapping) and not has_target:
        named = {str(k): number(v) for k, v in cost.items()}
        if named and None not in named.values():
            return named
    elif number(cost) is not None:
        return number(cost)
    raise MethodProtocolError(
        f"{method}'s cost() returned {cost!r}; the protocol (fxprune.methods.base) asks for "
        "the current masks' cost as a finite fraction of the dense model's (a float >= 0"
        + (", which its target is checked against)" if has_target and isinstance(cost, Mapping)
           else "; a method without a target may return a mapping of such numbers)"))


def check_resumed_steps(pruner, method: str, saved_steps) -> None:
    """After ``pruner.load_state_dict``: refuse a method whose ``step_count`` is not the one it
    had when its state was saved (``saved_steps``; None: not recorded, nothing checked). Its
    load did not bring back what its save wrote, so its schedule would start over mid-run
    (break198 F3: the run then ended unpruned, told to lengthen its schedule)."""
    now = getattr(pruner, "step_count", None)
    if (isinstance(saved_steps, int) and isinstance(now, int) and not isinstance(now, bool)
            and now != saved_steps):
        raise MethodProtocolError(
            f"{method}'s load_state_dict left it at step_count {now}, and it was at "
            f"{saved_steps} when its state_dict was saved: its schedule would start over "
            "mid-run; its load_state_dict must bring back what its state_dict saves, the step "
            "count included")


def pruning_schedule(pruner):
    """``pruner.schedule``, the :class:`fxprune.PruningSchedule` the trainer and the callback
    read the ramp from, or None; :class:`~fxprune.errors.MethodProtocolError` for an attribute
    of that name that is something else (break198 F7: a plug-in's ``schedule = "once"`` was an
    AttributeError traceback in the trainer)."""
    from ..schedule import PruningSchedule

    schedule = getattr(pruner, "schedule", None)
    if schedule is None or isinstance(schedule, PruningSchedule):
        return schedule
    raise MethodProtocolError(
        f"{type(pruner).__name__}.schedule is a {type(schedule).__name__}; fxprune train and the "
        "Lightning callback read a method's schedule attribute as a fxprune.PruningSchedule "
        "(where its masks reach the target): give it one, or name the attribute otherwise")


def check_on_trial(build: Callable[[fx.GraphModule], object], prepared: fx.GraphModule,
                   check: Callable[[object, fx.GraphModule], None]) -> None:
    """``check(method, model)`` on ``method = build(model)``, ``model`` a copy of ``prepared``
    that ``build`` prices by FLOPs: the refusals that need no latency table (a schedule longer
    than the run, an explore step past it, gathered execution under DDP, no optimizer over the
    model) come before minutes of timing one (break199 F1). Warnings are silenced (the real
    build and check say them), every random state is left as it was, and the copy is freed
    before this returns (review202 R3: its hooks tie it to the method, a cycle). A target the
    copy refuses (an error with a ``floor``) is not checked: only the real cost model judges
    it."""
    import gc
    import random
    import warnings

    from ..passes.shape_prop import preserving_rng

    python_state, numpy_state = random.getstate(), np.random.get_state()
    model = method = None
    try:
        # (torch's generators on the CPU and the model's own CUDA devices, review202 R10)
        with preserving_rng(prepared, ()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = copy.deepcopy(prepared)
            try:
                method = build(model)
            except ValueError as exc:  # (ArgumentError, ConfigError and InfeasibleBudget are)
                if getattr(exc, "floor", None) is not None or isinstance(exc, InfeasibleBudget):
                    return
                raise
            check(method, model)
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        del model, method
        gc.collect()


def schedule_end(pruner) -> int | None:
    """The optimizer step at which ``pruner``'s masks reach its target: the ramp's end (SMCP
    and its family), the last round (CCP); None where it declares no fixed end (a plug-in
    without a ``schedule`` or ``prune_steps()``), so that a longer run would not help. CUCB
    has none: its active sets fit its target from the first step, and its final selection
    (``explore``, else ``finalize_masks()`` at the run's end) keeps to it (asking for
    ``explore`` would refuse a fit shorter than it as ending above the target)."""
    schedule = pruning_schedule(pruner)
    if schedule is not None and getattr(pruner, "target", None) is not None:
        # the first update at or after the ramp's end (a one-shot's window, update_every,
        # a freeze: review157 F5), else the ramp's end
        end = int(schedule.ramp_end)
        return next((s for s in range(end, end + int(schedule.update_every) + 1)
                     if schedule.updates_at(s)), end)
    steps = pruner.prune_steps() if callable(getattr(pruner, "prune_steps", None)) else []
    return int(max(steps)) if steps else None


def refuse_unloadable_state(pruner, method: str, state=None, *, at_build: bool = False,
                            read_by: str = "--resume") -> None:
    """FxPruneError where ``pruner.state_dict()`` (``state``, else read now) holds what
    ``torch.load(weights_only=True)`` refuses, which reads a run's checkpoint back (``read_by``:
    ``fxprune train --resume``, Lightning's ``ckpt_path``). The protocol's state is tensors and
    plain Python data; a plug-in's numpy state trained and saved checkpoints that resuming then
    called another program's (break176 F1), and the Lightning callback turned it into tensors
    its ``load_state_dict`` had never seen. Checked when the pruner is built (``at_build``: a
    state that needs the run, an optimizer attached, waits for the first checkpoint) and at the
    first checkpoint.

    Raises:
        FxPruneError: naming the refused object and the way out.
    """
    import io
    import pickle

    from ..errors import FxPruneError, first_line

    if state is None:
        try:
            state = pruner.state_dict()
        except Exception:  # noqa: BLE001 - a state that needs the run (an optimizer attached)
            if at_build:  # is checked at the first checkpoint instead (review178 F4)
                return
            raise
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    try:
        torch.load(buffer, weights_only=True)
    except pickle.UnpicklingError as exc:
        import re

        named = re.search(r"GLOBAL ([\w.]+)", str(exc))  # the refused class, not torch's advice
        why = (f"a {named.group(1).rstrip('.')}" if named else
               next((line.strip() for line in str(exc).splitlines() if "Unsupported" in line),
                    first_line(exc)))
        raise FxPruneError(
            f"prune.method {method}: its state_dict() holds objects that "
            f"torch.load(weights_only=True) refuses ({why[:200]}), so {read_by} could not read "
            "the run's checkpoint; a method's state holds tensors and plain Python data "
            "(numbers, strings, lists, dicts: a numpy array as torch.from_numpy(a))") from None


def resolve_cost_model(prepared: fx.GraphModule, cost, channel_step: int) -> tuple[CostModel, float]:
    """A cost model and the constant cost outside conv/linear layers it does not see."""
    from ..cost import FlopsCost, ParamsCost
    if type(cost) in (FlopsCost, ParamsCost):
        # fxprune's own classes mean what their names do (break67 #1: an instance priced the
        # conv/linear layers alone, and a 0.5 target kept 0.62 of a GRU-headed net's FLOPs)
        cost = cost.name
    if isinstance(cost, str):
        if cost == "flops":
            from ..api import layer_specs
            from ..cost import FlopsCost
            from ..summary import dense_flops  # every mask at 1, as summary counts it

            dense = dense_flops(prepared)
            return FlopsCost(), max(dense - sum(s.flops() for s in layer_specs(prepared)), 0)
        if cost == "params":
            from ..api import layer_specs
            from ..cost import ParamsCost
            # parameters outside conv/linear weights (norms, embeddings...) held at their dense
            # count, as FLOPs outside conv/linear are: the model's real fraction stays <= target
            dense = sum(p.numel() for p in prepared.parameters())
            model = ParamsCost()
            priced = sum(model.layer_cost(s, s.in_channels, s.out_channels)
                         for s in layer_specs(prepared))
            return model, max(dense - priced, 0)
        if cost in LATENCY_COSTS:
            # a method takes a cost model; the measuring is the caller's (fxprune train does
            # it for prune.cost), where it can be cached, timed once under DDP and resumed
            cached = ("the table once; the constant is fitted each call" if cost == "latency+fixed"
                      else "it once")
            raise ArgumentError(
                f"cost={cost!r} names a measurement, which a method does not make: measure it "
                f"and pass the cost model, cost=fxprune.deploy.latency_cost(pm, {cost!r}, "
                f"channel_step={channel_step}) (add cache='FILE' to time {cached}; a recipe's "
                f"prune.cost: {cost} and the Lightning callback's cost={cost!r} do this)")
        base, _, batch = cost.partition(":")
        if base in LATENCY_COSTS and batch.strip().isdigit():  # the benchmark's spelling
            raise ArgumentError(
                f"cost {cost!r}: the ':{batch.strip()}' batch form is bench_vs_torch_pruning.py's; "
                f"here, measure the table at that batch and pass it: table = "
                f"fxprune.deploy.LatencyTable.measure(pm, batch={batch.strip()}), then "
                + ("cost=fxprune.deploy.calibrate_cost(table, pm)" if base == "latency+fixed"
                   else "cost=table"))
        import difflib  # (break78 M2: cost="flop" or "FLOPS" got the list, no hint)

        names = ["flops", "params", *LATENCY_COSTS]
        close = difflib.get_close_matches(cost.strip().lower(), names, n=1, cutoff=0.7)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ArgumentError(f"cost must be 'flops', 'params' or a CostModel (a measured latency: "
                            f"fxprune.deploy.latency_cost(pm)), got {cost!r}{hint}")
    if isinstance(cost, type):  # the class passes the protocol check; its layer_cost is unbound
        raise ArgumentTypeError(f"cost is the class {cost.__name__}; pass an instance: {cost.__name__}()")
    if isinstance(cost, CostModel):
        from ..api import layer_specs
        from ..cost import fixed_cost_of
        return cost, fixed_cost_of(cost, layer_specs(prepared))
    raise ArgumentTypeError(f"cost must be 'flops', 'params' or an object with a `name` and "
                            f"`layer_cost(layer, c_in, c_out)` (fxprune.CostModel, e.g. "
                            f"fxprune.deploy.latency_cost(pm)), got {type(cost).__name__}")


#: the fraction of the dense cost a method keeps when its ``target`` is None (CUCB, CCP: None
#: tells a default from a target given beside a fixed per-group fraction, which it would ignore)
DEFAULT_TARGET = 0.5


#: ratio mode under a cost target warns when its common fraction leaves more of the dense
#: cost than this unused
UNIFORM_UNUSED_WARN = 0.05


def warn_unused_target(method: str, target, fixed: str, value, cost_mode: str) -> None:
    """A ``target`` given beside a fixed per-group fraction (CUCB's ``rho``, CCP's ``ratio``)
    in ratio mode does nothing: say so, with both ways to prune to it (break33 #8)."""
    from ..distributed import is_main_process

    if target is None or value is None or not is_main_process():  # said once, not per rank
        return
    warn(f"{method}: target={target:g} is not used in mode='ratio' with {fixed}="
         f"{value:g}: each group keeps {fixed} of its channels and no cost is promised; "
         f"to prune to target, drop {fixed} (the largest common fraction within target; "
         f"a recipe: --set prune.{fixed}=null) or use mode='{cost_mode}'; to keep "
         f"{fixed}, leave target out (a recipe: --set prune.target=null)",
         RuntimeWarning)


def warn_unused_allocator_settings(method: str, allocator_mode: str, resolution: int,
                                   max_resolves: int) -> None:
    """``resolution`` and ``max_resolves`` tune the knapsack allocator, which mode='ratio' never
    calls: said when given other than their defaults (break193 F7: silently unused, where an
    unused ``target`` was said)."""
    from ..allocation import DEFAULT_MAX_RESOLVES
    from ..distributed import is_main_process
    from ..knapsack import DEFAULT_RESOLUTION

    given = [f"{name}={value}" for name, value, default in
             (("resolution", resolution, DEFAULT_RESOLUTION),
              ("max_resolves", max_resolves, DEFAULT_MAX_RESOLVES))
             if value != default]
    if given and is_main_process():
        warn(f"{method}: {' and '.join(given)} tune the knapsack allocator of "
             f"mode='{allocator_mode}', which mode='ratio' does not call: drop "
             f"{'it' if len(given) == 1 else 'them'}, or use mode='{allocator_mode}'",
             RuntimeWarning)


#: steps with gradients and no weight change after which a pruner says the model does not train
UNTRAINED_AFTER_STEPS = 8


def trains_model(optimizer, model) -> bool:
    """Whether ``optimizer`` holds any of ``model``'s parameters (one built over a model before
    ``prepare``, which deep-copies it, holds none of the prepared model's)."""
    mine = {id(p) for p in model.parameters()}
    return any(id(p) in mine for group in optimizer.param_groups for p in group["params"])


def trainable_state(fn):
    """Run a method's ``__init__``/``load_state_dict`` with inference mode off: the state
    tensors made there are updated in place by training, which an inference tensor (made under
    an enclosing ``torch.inference_mode()``, e.g. a decorated set-up function) refuses at the
    first ``step()`` (break50 #1), as ``prepare`` and ``finalize`` do for the model."""
    return torch.inference_mode(False)(fn)


def _keywords_explained(cls: type, init: Callable) -> Callable:
    """``init`` that answers a mistyped keyword with the arguments ``cls`` takes and a "did you
    mean" (break82 F7: ``fxprune.SMCP(pm, traget=0.5)``, the README's style, was Python's bare
    TypeError). Only a failing call is checked; ``functools.wraps`` keeps the signature that
    the recipe's checks read."""
    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        try:
            init(self, *args, **kwargs)
            # the outermost constructor ran (a method may write masks in its own); also for a
            # subclass without an __init__ of its own (review161 F8)
            if type(self).__init__ is __init__:
                self._check_target_once()
                self._record_built_masks()
            return None
        except TypeError as exc:
            if "unexpected keyword argument" not in str(exc):
                raise
            try:
                check_method_kwargs(cls, kwargs, f"{cls.__name__}(...)", refuse_own=False)
            except TypeError as clearer:
                raise clearer from None
            raise
    return __init__


class PruningMethod:
    """Shared state of the methods on prepared-graph masks: the flat channel index, the
    weights that read prunable channels, the cost model and the budget.

    A method of one's own (a plug-in) subclasses it as SMCP, CCP and CUCB do::

        class MyMethod(PruningMethod):
            def __init__(self, prepared, target=0.5, cost="flops", channel_step=8, at_step=100):
                super().__init__(prepared, cost, channel_step)  # index, consumers, budget
                self.target, self.at_step = target, at_step
            def step(self, loss=None):
                self.check_step()         # misuse: two steps per backward, a newer pruner...
                self.step_count += 1
                if self.step_count == self.at_step:
                    self.check_training()  # an optimizer that never trained the prepared model
                    ...                    # choose: self.index.set_masks(self.prepared, kept)
                    return {"step": self.step_count, "cost": self.cost()}
                return None

    Once the outermost constructor returns, a ``target`` in (0, 1] that it did not check
    itself is checked against the narrowest model the constraints allow
    (:meth:`check_reachable`), so a target no choice can reach is refused before training.
    """

    name = "method"
    #: the keys every state of this method holds, checked before anything is loaded
    state_keys: tuple[str, ...] = ()
    #: the registry name that built it (``oneshot`` builds SMCP), set by MethodEntry.build
    registered_as: str | None = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:  # its constructor's keywords, with a "did you mean"
            cls.__init__ = _keywords_explained(cls, cls.__dict__["__init__"])

    def not_copyable(self) -> str | None:
        """Why a deep copy of this method, mid-run, would silently do something else (None: it
        copies fine). Subclasses holding hooks on the model or the optimizer say so."""
        return None

    def __deepcopy__(self, memo):
        why = self.not_copyable()
        if why:
            raise NotCopyableError(f"{type(self).__name__} cannot be deep-copied: {why}; to branch a run, "
                                   "copy the model and optimizer, build a new pruner on the copy and load "
                                   "this one's state_dict() into it")
        was_latest = latest_pruner(self.prepared) is self
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            new.__dict__[key] = copy.deepcopy(value, memo)
        new._copied_as = "deep-copied"
        if was_latest:
            new._register_copy()
        new._after_copy()
        return new

    def __copy__(self):
        # (review118 #4: a shallow copy shares the model, and re-hooking it took the
        # original's hooks off)
        raise NotCopyableError(f"{type(self).__name__} cannot be shallow-copied: the copy would share "
                               "the model and its hooks with this one; copy.deepcopy((model, pruner)) "
                               "copies both, or build a new pruner and load this one's state_dict()")

    def __setstate__(self, state):
        was_latest = state.pop("_was_latest", True)  # (a pickle from before the flag: as it was)
        # a pickle from before 2026-12-05 (4dc5722) lacks what later pruners keep, too much to
        # stand in for: said at its first step, with the way on (break209 F1: an AttributeError
        # at the first mask update); later ones' few new attributes have class defaults
        if state.pop("_pickle_format", None) is None and "_untrained_since" not in state:
            state["_pickled_by_older"] = True
        self.__dict__.update(state)
        self._copied_as = "unpickled"
        if was_latest:
            self._register_copy()
        self._after_copy()

    #: (a class default too: a pruner pickled before min_kept lacks it)
    min_kept = 0.0

    def _register_copy(self) -> None:
        """The copy of its model's latest pruner is its copied model's latest, so that finalize
        asks it whether its final selection was made (break159 F2: a resumed pair said nothing;
        review161 F9: only the latest's copy, not a superseded pruner's copied beside it)."""
        prepared = self.__dict__.get("prepared")
        if prepared is not None and latest_pruner(prepared) is None:
            register_pruner(prepared, self)

    def _after_copy(self) -> None:
        """What a copy (deep or pickled) of this method does once its state is in: put back
        hooks on its model's layers (a copied model holds no-ops in their place)."""

    def _check_copied_alone(self) -> None:
        """At a copy's first ``step()``: say when its model got no gradient, as happens when
        the pruner was copied or pickled without the model being trained, so it holds a hidden
        copy of its own (break113 F3, break117 F4, F6: said at the copy, it was wrong for a
        pruner copied before its model in one call); the only sign was "no gradients seen"."""
        how = self.__dict__.pop("_copied_as", None)
        # any gradient in the model: it trains (its readers may be frozen: review118 #1)
        if how is None or any(p.grad is not None for p in self.prepared.parameters()):
            return
        warn(f"{type(self).__name__}.step(): this pruner was {how} without the model you "
             "train, so it prunes a copy of its own, which got no gradients: copy or pickle "
             "the model and the pruner in one call (copy.deepcopy((model, pruner)), "
             "torch.save({'model': model, 'pruner': pruner}, path)) and use both copies, or "
             "build a new pruner on your model and load this one's state_dict()", RuntimeWarning)

    def __getstate__(self):
        """What pickling keeps (``torch.save({"model": pm, "pruner": pruner})``): all but the
        weak references to the last step's gradients, which do not pickle (break113 F2: it
        failed after the first step) and mean nothing in another process. A method holding
        hooks refuses, as a deep copy does."""
        why = self.not_copyable()
        if why:
            raise NotCopyableError(f"{type(self).__name__} cannot be pickled: {why}; save its "
                                   "state_dict() with the model's and load it into a new pruner built "
                                   "on the loaded model")
        state = self.__dict__.copy()
        state.pop("_last_grads", None)
        state["_was_latest"] = latest_pruner(self.prepared) is self
        # (an attribute added later needs a class default, or this number raised and an older
        # one refused as ``_pickled_by_older`` is)
        state["_pickle_format"] = 1
        return state

    def state_origin(self) -> dict:
        """What a state records of who saved it: the method, the registry name if any, and the
        settings that make it that method (:meth:`defining_settings`)."""
        return {"method": self.name, "registered_as": self.registered_as,
                "settings": self.defining_settings()}

    def defining_settings(self) -> dict:
        """Settings that make another method of one class (``hard`` is SMCP with
        ``masks="hard"``): a state saved under others is refused. Subclasses name theirs."""
        return {}

    def run_settings(self) -> dict:
        """Settings a resumed run may change (pruning further, a longer schedule), but never
        silently: a state records them and :meth:`_warn_changed_settings` names the changes.
        Plain data (loadable with ``weights_only=True``). Subclasses name theirs."""
        return {}

    def _fitting_rho(self, target: float) -> float:
        """The largest fraction whose every-group-alike model costs at most ``target`` x
        dense: ratio mode's widths when only a cost target is given. A bisection, then
        :func:`~fxprune.allocation.allocate_uniform`'s walk, which a cost not monotone in
        width (a measured table) does not mislead (break156 F1): where it finds a wider
        model, a fraction inside that model's range."""
        from ..allocation import InfeasibleBudget, allocate_uniform, ranked_options, uniform_counts

        def fits(rho):
            return self.budget.fraction(uniform_kept(self.index, rho, self.channel_step)) <= target
        if fits(1.0):
            return 1.0
        lo, hi = 0.0, 1.0
        for _ in range(30):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        options = [ranked_options(np.zeros(len(order)), order, counts)  # uniform_kept's options
                   for order, counts in (uniform_counts(self.index, i, self.channel_step)
                                         for i in range(len(self.index.groups)))]
        try:
            low, high = allocate_uniform(options, self.budget, target,
                                         [g.size for g in self.index.groups]).rho
        except InfeasibleBudget:
            return lo
        return (low + high) / 2 if low > lo else lo

    def _warn_uniform_unused(self, method: str, reached: float, other_mode: str) -> None:
        """Ratio mode under a cost target: say when the widest every-group-alike model within
        it, which costs ``reached`` of dense (as the run allocates it), leaves more than
        :data:`UNIFORM_UNUSED_WARN` of the dense cost unused (coarse widths: the next fraction
        up jumps past the target, 0.32 of dense for both 0.4 and 0.5)."""
        from ..distributed import is_main_process

        if self.cost_target - reached > UNIFORM_UNUSED_WARN and is_main_process():  # once, not per rank
            warn(
                f"{method}: with every group at the same fraction of its channels, the widest "
                f"model within target {self.cost_target:g} costs {reached:.3f} of dense; "
                f"{other_mode} lets groups differ and fills the budget, or lower channel_step",
                RuntimeWarning)

    def _warn_frozen_readers(self, scores: str, way_out: str) -> None:
        """Scores read from the readers' weight gradients are 0 where those weights are frozen
        (``requires_grad=False``): channels only they read look useless and go first. Said
        when the pruner is built and again at a decision when more layers were frozen since
        (break90 F1: a backbone frozen by the training loop, after the pruner was built, was
        pruned first without a word); a host read of each weight's flag."""
        self._frozen_scores = (scores, way_out)  # checked again at each decision
        # and layers the forward runs without grad, torch.no_grad() in it (break99 F3)
        no_grad = {str(n.target) for n in self.prepared.graph.find_nodes(op="call_module")
                   if n.meta.get(GRAD_ENABLED) is False}
        frozen = [c.module for c in self.consumers if not c.param.requires_grad]
        unseen = [c.module for c in self.consumers if c.param.requires_grad and c.module in no_grad]
        said = getattr(self, "_frozen_said", frozenset())
        self._frozen_said = said | set(frozen) | set(unseen)
        if (frozen or unseen) and not set(frozen) | set(unseen) <= said:
            why = [f"{what}: {', '.join(names[:4])}{', ...' if len(names) > 4 else ''}"
                   for what, names in (("requires_grad=False", frozen),
                                       ("run under torch.no_grad() in forward", unseen)) if names]
            warn(f"{type(self).__name__}: {len(frozen) + len(unseen)} layer(s) reading prunable "
                 f"channels have frozen weights ({'; '.join(why)}); {scores} sees no gradient "
                 f"there, so channels only they read score 0 and go first. {way_out}",
                 RuntimeWarning)

    def _weight_sums(self) -> torch.Tensor:
        """Each reader's weight summed, in float64 on the model's device."""
        with torch.no_grad():
            device = self.consumers[0].param.device
            return torch.stack([c.param.detach().double().sum().to(device) for c in self.consumers])

    def check_training(self) -> None:
        """At a decision (an update, a pick, a pruning round): say once when the prepared
        model's weights have not changed in the steps since the pruner was built though
        gradients reached them (break90 F2: an optimizer built before ``prepare``, which works
        on a copy, steps the user's original model; the prepared one never trained, its
        gradients piled up, and it was pruned anyway), and say again which layers reading
        prunable channels are frozen when more were frozen since (:meth:`_warn_frozen_readers`).
        Host reads of each weight's version counter and flags; when no counter moved (a fused
        optimizer, or one writing through ``.data``, moves none), one reduction of the weights
        and its host read, once a run."""
        if getattr(self, "_frozen_scores", None) is not None:
            self._warn_frozen_readers(*self._frozen_scores)
        # (a loss scaler skips the optimizer's first steps while it finds its scale)
        steps = self.step_count - self._untrained_since
        if self._versions is None or steps < UNTRAINED_AFTER_STEPS:
            return
        if any(c.param._version != v for c, v in zip(self.consumers, self._versions)):
            self._versions = None  # trained: nothing more to check
        elif any(c.param.grad is not None for c in self.consumers):
            # an optimizer writing through .data leaves the version counters as they were:
            # the weights' values decide (one reduction and host read, once)
            trained = not torch.equal(self._weight_sums(), self._sums_when_built)
            self._versions = self._sums_when_built = None
            if trained:
                return
            warn(f"{type(self).__name__}: the prepared model's weights have not changed in the "
                 f"{steps} steps since the pruner was {self._untrained_from}, though gradients reached "
                 "them: is the optimizer over the prepared model's parameters? prepare() works on "
                 "a copy of the model, so an optimizer built before it steps the original; build "
                 "it over prepared.parameters() (if no optimizer step was meant yet, or a loss scaler "
                 "skipped every step for overflowed gradients, ignore this)",
                 RuntimeWarning)

    def _no_gradient_cause(self) -> str:
        """Where a method saw no gradient and no parameter of the prepared model holds one, the
        likely cause, as a clause to add ("" otherwise): the training ran on another module
        (break133 F3: ``DDP(model)`` then ``prepare(ddp.module)``; prepare works on a copy, so
        the loop trained the original and the advice "call step() after backward" misled)."""
        if any(p.grad is not None for p in self.prepared.parameters()):
            return ""
        if self._versions is None or any(c.param._version != v for c, v in zip(self.consumers, self._versions)):
            return ""  # its weights train: the gradients were cleared before step()
        if self._sums_when_built is not None and not torch.equal(self._weight_sums(), self._sums_when_built):
            return ""  # (a fused optimizer, or one writing through .data, moves no counter:
            # review137 #2; one reduction and host read, in a warning's path only)
        return ("; no parameter of the prepared model has a gradient: does the loop train the "
                "model prepare() returned? prepare() works on a copy, so a forward through the "
                "model given to it (or a DDP wrapping that one) trains the original; train and "
                "wrap the prepared model (DDP(prepared))")

    def check_step(self) -> None:
        """At each ``step()``: this pruner is the model's latest (:meth:`_check_superseded`),
        its prices follow the weights' dtype (:meth:`_check_priced_dtypes`), a copy made alone
        is said (:meth:`_check_copied_alone`), a backward ran since the last step
        (:meth:`_check_backward_since_last_step`), and at the first step, masks pruned before
        it without the pruner's state (a resume that loaded the model's alone)."""
        if self.__dict__.get("_pickled_by_older"):
            raise NotCopyableError(
                f"{type(self).__name__} was pickled by an fxprune older than 2026-12-05, whose "
                "pruners lack what this one keeps: build the method again on the loaded model "
                "(its masks are in the model, and the new pruner goes on from them), or finish "
                "the run with the fxprune that pickled it")
        self._check_superseded()
        self._check_priced_dtypes()
        self._check_copied_alone()
        self._check_backward_since_last_step()
        pruned = getattr(self, "_pruned_at_build", None)
        if pruned is not None:  # (break152 F5: a resume that loaded the model alone started
            # the schedule again on its masks; CCP brought back channels it had pruned for good)
            self._pruned_at_build = None
            self._warn_started_on_pruned_masks(*pruned, f"when this {type(self).__name__} was built")
        built = self.__dict__.pop("_kept_when_built", None)
        versions = self.__dict__.pop("_mask_versions", None)
        written = built is not None and versions is not None and any(
            id(t) == i and t._version != v
            for (i, v), t in zip(versions, self.index.mask_tensors(self.prepared)))
        if written:  # the same, the model's state loaded after the pruner was built
            try:
                now = self._kept_now()  # (one host read, at the first step only)
            except (RuntimeError, NotImplementedError):  # (a model on the meta device)
                now = built
            if (built & ~now).any():
                self._warn_started_on_pruned_masks(
                    int((~now).sum()), self.budget.fraction(now),
                    f"since this {type(self).__name__} was built (a model state_dict loaded after it?)")

    def _check_priced_dtypes(self) -> None:
        """The budget prices each layer at the dtype its weights held when it was made; after a
        cast (``pm.half()`` mid-run) it is priced again, as a pruner built now would be, and a
        latency table not measured at that dtype refuses (``UnmeasuredLayerError``) (break159
        F4: float32 timings priced a bfloat16 model silently). Dtype reads, no device work."""
        priced = getattr(self, "_priced_dtypes", None)
        if priced is not None and all(c.param.dtype == d for c, d in zip(self.consumers, priced)):
            return
        from ..cost import fixed_cost_of

        layers = costed_layers(self.index, self.prepared)
        model = self.budget.model  # a fitted constant is asked again: refused at another dtype
        other = (fixed_cost_of(model, [layer.spec for layer in layers])  # (review161 F5)
                 if hasattr(model, "fixed_cost_for") else self.budget.other_cost)
        self.budget = Budget(self.index, layers, model, other)
        self._priced_dtypes = [c.param.dtype for c in self.consumers]
        self._priced = None  # the run settings' half-width price, at the dtype now
        if getattr(self, "floor_kept", None) is not None and getattr(self, "target", None) is not None:
            self.check_reachable(float(self.target))  # the floor's price moved too
        self._repriced()

    def _repriced(self) -> None:
        """After :meth:`_check_priced_dtypes` priced the model again: refit what was fitted to
        the old prices (CUCB's common fraction ``rho``; review161 F5). Nothing by default."""

    def _check_target_once(self) -> None:
        """After the outermost constructor: a cost ``target`` the constructor did not check
        against the narrowest model is checked now (break198 F1: a plug-in subclass that never
        called :meth:`check_reachable` was refused only at its pruning step, epochs in)."""
        target = getattr(self, "target", None)
        if (self.floor_kept is None and isinstance(target, numbers.Real)
                and not isinstance(target, bool) and 0 < target <= 1):
            self.check_reachable(float(target))

    def _record_built_masks(self) -> None:
        if getattr(self, "_first_on_model", False) and self._pruned_at_build is None:
            try:
                self._kept_when_built = self._kept_now()
            except (RuntimeError, NotImplementedError):  # (a model on the meta device)
                self._kept_when_built = None
            # a load writes the mask buffers in place: the first step reads them back (a host
            # read) only where one of them (the same tensor: not moved since) was written
            self._mask_versions = [(id(t), t._version) for t in self.index.mask_tensors(self.prepared)]

    def _warn_started_on_pruned_masks(self, pruned: int, cost: float, when: str) -> None:
        name = type(self).__name__
        warn(f"{name}.step() at step {self.step_count}: the model's masks already pruned {pruned} "
             f"channels (cost {cost:.4f} of dense) {when}, and it starts its schedule at step 0: "
             "resuming a run? load the saved pruner state with pruner.load_state_dict(state) "
             "before the first step (the model's state_dict holds the masks, not the schedule)",
             RuntimeWarning)

    def _check_superseded(self) -> None:
        """Say once when this pruner steps after a newer one was built on its model (break105
        F9: two SMCPs stepping one model both wrote its masks, and the first then blamed its
        schedule). Said at the step, not when the newer one is built: rebuilding a pruner and
        loading a state into it, the usual resume, leaves the old one unstepped (break109 F3)."""
        latest = latest_pruner(self.prepared)
        if latest is not None and latest is not self and not getattr(self, "_said_superseded", False):
            self._said_superseded = True
            warn(f"{type(self).__name__}.step() at step {self.step_count}: a {type(latest).__name__} "
                 "pruner was built on this model after this one, and both write its masks; step "
                 "only the newer one (call this one's finalize_masks() and stop stepping it, or "
                 "build no second pruner)", RuntimeWarning)

    def _check_backward_since_last_step(self) -> None:
        """Say once when ``step()`` runs again with no backward since the last one (break105
        F8: twice per iteration ran the schedule at double speed and counted one gradient
        twice): every reader's gradient is the same tensor, at the same version counter, as at
        the last step (host reads, no device sync). Weak references: no gradient is kept alive,
        and a freed one never matches a new one. All readers, not the first alone: a frozen
        layer keeps its last gradient while the others train (review108 F4)."""
        marks = [(weakref.ref(c.param.grad), c.param.grad._version)
                 for c in self.consumers if c.param.grad is not None]
        last = getattr(self, "_last_grads", None)
        if (marks and last is not None and len(last) == len(marks)
                and all(a() is not None and a() is b() and va == vb
                        for (a, va), (b, vb) in zip(marks, last))
                and not getattr(self, "_said_no_backward", False)):
            self._said_no_backward = True
            warn(f"{type(self).__name__}.step() at step {self.step_count} ran with no backward "
                 "since the last step(): the gradients are the last step's, so the schedule "
                 "runs ahead of training and one gradient counts twice; call step() once per "
                 "optimizer step, after loss.backward()", RuntimeWarning)
        self._last_grads = marks

    def _restart_training_check(self) -> None:
        """Compare the weights from now on (a loaded state): the steps the state counts were
        trained before it was saved, and a decision at the first step after a resume came
        before any optimizer step of this run (break107 F1: "not changed in the 12 steps")."""
        if self._versions is not None:
            self._versions = [c.param._version for c in self.consumers]
            self._sums_when_built = self._weight_sums()
        self._untrained_since, self._untrained_from = self.step_count, "loaded"

    def _allocation_settings(self) -> dict:
        """The run settings every method's allocation shares: the cost model (by name, and
        by the fraction of dense it prices the half-width model at), the channel step and the
        knapsack's resolution (break38 #3: a resume under others was silent; break40: a cost
        model of the same name, another latency table or fixed cost, was too).

        A fraction, not the costs: another example batch scales every FLOPs count alike and
        leaves each decision as it was (break50 #6); priced at the run's channel_step, the
        widths the run prices (at step 1 a table's grid clamped them, warned: break49 #6)."""
        model = self.budget.model
        if getattr(self, "_priced", None) is None:  # the budget is fixed for the run
            # on the floor-free index: a min_kept change is said as itself, not as another
            # cost model (break209 F2)
            half = self.budget.total(uniform_kept(self.index.with_floor(0.0), 0.5,
                                                  self.channel_step))
            self._priced = {"half_width_fraction": float(f"{half / self.budget.dense:.6g}")}
        return {"cost": str(getattr(model, "name", type(model).__name__)), **self._priced,
                "channel_step": self.channel_step, "min_kept": self.min_kept,
                "resolution": int(getattr(self, "resolution", 0)),
                "max_resolves": int(getattr(self, "max_resolves", 0))}

    def _warn_changed_settings(self, state: dict) -> None:
        # states saved before "run_settings" existed kept SMCP's two at the top level
        saved = state.get("run_settings", state)
        mine = self.run_settings()
        differ = [name for name, value in mine.items() if name in saved and saved[name] != value]
        if {"cost", "channel_step"} & set(differ):  # priced otherwise anyway: said as that
            # (break44 #7: a channel_step change was also reported as a cost model change)
            differ = [name for name in differ if name != "half_width_fraction"]
        # the half-width price fingerprints the cost model: said as what a user changed
        # (break164 F5: "another half_width_fraction 0.75 -> 0.70" named no table)
        changed = [f"cost model pricing (a half-width model at {saved[name]!r} -> {mine[name]!r} "
                   "of dense: another latency table, fixed cost or example input size?)"
                   if name == "half_width_fraction" else f"{name} {saved[name]!r} -> {mine[name]!r}"
                   for name in differ]
        if changed:
            # a state whose final selection is made keeps it (CUCB's pick): new settings change
            # nothing about it, and saying the run continues under them misled (break34 #7)
            how = ("its final selection stands" if state.get("final")
                   else "the run continues under this pruner's settings")
            # the way back to the saved ones (break204 F6: a default that moved since, CCP's
            # and CUCB's channel_step 1 -> 8, went on at the new one, unsaid how to keep 1)
            back = [f"{name}={saved[name]!r}" for name in differ
                    if name in ("channel_step", "min_kept")]
            if back and not state.get("final"):
                how += f" (build it with {', '.join(back)} to go on under the state's)"
            warn(f"{type(self).__name__}: resuming a state saved with another "
                 f"{'; '.join(changed)} at step {int(state['step'])}: {how}",
                 RuntimeWarning)

    def __init__(self, prepared: fx.GraphModule, cost="flops", channel_step: int = 1,
                 min_kept: float = 0.0):
        state_of(prepared)  # NotPreparedError for anything else (break111 F11: None's AttributeError)
        check_number("min_kept", min_kept, 0, 1)
        self.prepared, self.channel_step = prepared, int(channel_step)
        #: the share of every group's channels it keeps at least (Torch-Pruning's
        #: max_pruning_ratio is 1 - min_kept): no layer collapses to a few channels
        self.min_kept = float(min_kept)
        if close_live_taps(prepared):
            warn(f"{type(self).__name__}: the model carries the activation taps of an earlier "
                 "pruner (CCP, or SMCP with importance='activation') that has not finished, "
                 "which collect at every step while it lives: removed, so that pruner prunes no "
                 "more; call its finalize_masks() before building another to end it yourself",
                 RuntimeWarning)
        self.index = UnitIndex(prepared, self.min_kept)
        self._masks_finalized_at: int | None = None  # the step finalize_masks() last ran at
        self._said_after_final = False  # a mask update after it was warned of
        if not self.index.n:
            asked = [g.name for g in self.index.channels.groups if g.kept_on_request]
            if asked:  # (break210 F3: named as if the model could not be pruned)
                raise ArgumentError(f"the prepared model has no prunable channel group: "
                                    f"prepare(keep=...) keeps the {len(asked)} that could be "
                                    f"pruned ({described(asked)}), the others are kept for their "
                                    "structure (fxprune.summary(prepared) says why); keep fewer "
                                    "layers")
            raise ArgumentError("the prepared model has no prunable channel group; see "
                                "fxprune.summary(prepared) for why each group is kept")
        self.consumers = consumer_weights(prepared, self.index)
        #: each reader's weight version when built; None once one has changed (see check_training)
        self._versions: list[int] | None = [c.param._version for c in self.consumers]
        self._sums_when_built = self._weight_sums()  # (on the device: no host read here)
        self._untrained_since, self._untrained_from = 0, "built"  # (see _restart_training_check)
        cost_model, other = resolve_cost_model(prepared, cost, self.channel_step)
        table = getattr(cost_model, "base", cost_model)
        timed_step = getattr(table, "step", None)
        if isinstance(timed_step, int) and timed_step > 1 and self.channel_step % timed_step:
            # widths between a table's grid points are interpolated, which ONNX Runtime's times
            # do not follow off multiples of 8 (review195 R4: a table timed at another step)
            backend = getattr(table, "backend", None)
            how = (f"fxprune.deploy.latency_cost(pm, ..., channel_step={self.channel_step})"
                   if backend == "onnxruntime" else  # (break199 F4: a GPU table, told to
                   # swap itself for a CPU one)
                   f"LatencyTable.measure(pm, backend={backend!r}, step={self.channel_step}, "
                   "...) as this one was timed")
            warn(f"{type(self).__name__}: the latency table was timed at step {timed_step} and "
                 f"this method chooses widths at channel_step={self.channel_step}: widths between "
                 f"its grid points are priced by interpolation; time it at the method's step "
                 f"({how})", RuntimeWarning)
        self.budget = Budget(self.index, costed_layers(self.index, prepared), cost_model, other)
        self._priced_dtypes = [c.param.dtype for c in self.consumers]  # (see _check_priced_dtypes)
        self.step_count = 0
        #: the narrowest model the target check priced (set by check_reachable; None: no target)
        self.floor_kept: np.ndarray | None = None
        self.history: list[dict] = []
        #: (channels, cost) the model's masks prune when no earlier pruner of it lives: a run
        #: resumed without its pruner state? (said at the first step, unless one is loaded)
        self._pruned_at_build = None
        #: the masks when the constructor ended, where no earlier pruner of the model lived: a
        #: model state loaded after the pruner was built, without the pruner's (break159 F6)
        self._kept_when_built = None
        self._first_on_model = latest_pruner(prepared) is None
        if self._first_on_model:
            try:
                kept = self._kept_now()
            except (RuntimeError, NotImplementedError):  # (a model on the meta device)
                kept = None
            if kept is not None and not kept.all():
                self._pruned_at_build = (int((~kept).sum()), self.budget.fraction(kept))
        register_pruner(prepared, self)

    def cost(self, cost_model: CostModel | str | None = None) -> float:
        """Current cost as a fraction of the dense model's, by this method's cost model or by
        ``cost_model`` (e.g. price FLOPs-chosen masks with a latency table): a cost model, or
        ``"flops"``/``"params"`` as the constructor reads them (a measured cost is measured
        once and passed as a table: ``fxprune.LatencyTable.measure``)."""
        from ..cost import FlopsCost, ParamsCost, fixed_cost_of
        self._check_priced_dtypes()
        if cost_model is None or cost_model is self.budget.model:
            return self.budget.fraction(self._kept_now())
        if isinstance(cost_model, str) and cost_model in LATENCY_COSTS:
            raise ArgumentError(f"pruner.cost({cost_model!r}) names a measurement; measure it "
                                f"once, fxprune.deploy.latency_cost(pruner.prepared, "
                                f"{cost_model!r}), and pass that")
        if isinstance(cost_model, type):
            raise ArgumentTypeError(f"cost_model is the class {cost_model.__name__}; pass an instance: "
                                    f"{cost_model.__name__}()")
        if (isinstance(cost_model, str) or type(cost_model) in (FlopsCost, ParamsCost)
                or not isinstance(cost_model, CostModel)):
            # as the constructor reads it, its errors too (break67 #5: cost(3) raised an
            # AttributeError; #1: FlopsCost() left out the cost outside conv/linear layers)
            model, other = resolve_cost_model(self.prepared, cost_model, self.channel_step)
            return Budget(self.index, self.budget.layers, model, other).fraction(self._kept_now())
        fixed = fixed_cost_of(cost_model, [layer.spec for layer in self.budget.layers])
        return Budget(self.index, self.budget.layers, cost_model, fixed).fraction(self._kept_now())

    def _follow_target(self, *, done: str | None = None, fixed: str = "") -> bool:
        """Take up ``pruner.target`` set after the pruner was built, checked as the constructor
        checks it, for the choices still to come; True when it changed (break152 F1: CUCB and
        CCP kept the target they were built with, without a word, and took 1.5 and NaN).
        ``done``: why no choice is left to follow it (refused); ``fixed``: the per-group
        fraction that sets the widths where the pruner was built without a target (refused)."""
        new, old = self.target, getattr(self, "_target_followed", self.target)
        if new is old or (type(new) is float and new == old):
            return False
        name = type(self).__name__
        if old is None:
            raise ArgumentError(f"pruner.target was set to {new!r}, but this {name} keeps {fixed} "
                                f"of each group's channels (mode='ratio'): no cost target applies; "
                                f"build a new {name} with target= to prune to a cost")
        check_fraction("target", new, "the fraction of the dense cost to keep")
        new = float(new)
        if done is not None:
            raise ArgumentError(f"pruner.target was changed to {new:g} at step {self.step_count}, "
                                f"after {done}: no later choice follows it; set it before, or "
                                "prune the finalized model again (README, pruning again)")
        self.check_reachable(new)
        self.target = self.cost_target = self._target_followed = new
        return True

    def _check_some_group_prunes(self) -> None:
        """A fixed per-group fraction (no cost target) at a ``channel_step`` no group can be
        pruned at is refused, as a target is (break196 F1: CUCB's rho and CCP's ratio on a net
        of groups narrower than the default step 8 pruned nothing, without a word)."""
        from ..allocation import InfeasibleBudget, step_too_wide

        coarse = step_too_wide(self.index, self.channel_step, self.min_kept)
        if coarse:
            raise InfeasibleBudget(coarse)

    def check_reachable(self, target: float) -> None:
        """Refuse, before any training, a cost target below the narrowest model the constraints
        allow: every group at its smallest allowed width (``channel_step``, split pieces).
        That model is kept as :attr:`floor_kept`, which the allocator's options always hold,
        so no ranking of channels found later makes the target unreachable."""
        from ..allocation import step_too_wide

        narrowest = uniform_kept(self.index, 0.0, self.channel_step)
        floor = self.budget.fraction(narrowest)
        if floor > 1 and target < floor * (1 - 1e-9):
            # no target can help: the advice "raise the target to 361189" named the wrong cause
            model = self.budget.model
            if getattr(model, "batch", None) is not None and hasattr(model, "backend"):
                # a measured table, flat: an H200 timed a small net at batch 4 (launch-bound)
                raise ArgumentError(
                    f"the latency table ({model.backend} on {model.device}, batch {model.batch}) "
                    f"times the narrowest allowed model at {floor:.5g} of dense: removing "
                    "channels saves no time there (layers this small at this batch are bound by "
                    "launch overhead, and timing noise decides); measure the table at a larger "
                    "batch (the deployment's), or prune by cost='flops'")
            raise ArgumentError(
                f"the cost model {getattr(self.budget.model, 'name', type(self.budget.model).__name__)!r}"
                f" prices the narrowest allowed model at "
                f"{floor:.5g} of dense, above the dense model: a channel cost must not grow as "
                "channels are removed; check the cost model (or the latency table it reads)")
        self.floor_kept = narrowest
        if target < floor * (1 - 1e-9):
            # rounded up: the advice itself must pass (0.01222 printed as 0.012 was refused)
            at_least = math.ceil(floor * 1000) / 1000
            from ..allocation import InfeasibleBudget

            coarse = step_too_wide(self.index, self.channel_step, self.min_kept)
            if coarse:  # (break105 F5: blamed on the cost model)
                message = coarse.replace("stays dense;", f"stays dense, above target {target:.5g};")
            else:
                # the target at the floor's precision: 0.05177 read "target 0.0518 is below
                # ... 0.05177" (break55 #5)
                message = (
                    f"target {target:.5g} of dense is below the narrowest model the constraints "
                    f"allow ({floor:.5f}: every group at its smallest allowed width, "
                    f"{self._widths_said()}); raise the target to at least {at_least:.3f}"
                    + (self._levers(floor) or self._floor_parts(floor) if floor < 1 - 1e-9 else
                       # a cost that no width changes (break67 #5): channel_step cannot help
                       ": the cost model prices it as the dense model, so no pruning lowers "
                       "its cost; check the cost model"))
            # "narrowest", not "cheapest": a cost that does not fall with width (a runtime's
            # kernels) may price a wider model lower, which the allocator does not search for
            # below this floor (break36 #4, break38 #1)
            error = InfeasibleBudget(message)
            error.floor = floor
            raise error

    def _check_ratio_above_floor(self, name: str, ratio: float | None) -> None:
        """A per-group kept ``ratio`` (CCP's ``ratio``, CUCB's ``rho``) given below ``min_kept``
        would be replaced by the floor without a word: refused."""
        if ratio is not None and self.min_kept and ratio < self.min_kept:
            raise ArgumentError(f"{name}={ratio:g} keeps less of every group than min_kept="
                                f"{self.min_kept:g}, the floor every group keeps: raise {name} "
                                "or lower min_kept")

    def _widths(self) -> dict[str, float]:
        """The arguments that bound the widths the method chooses, as its errors name them."""
        return {"channel_step": self.channel_step,
                **({"min_kept": self.min_kept} if self.min_kept else {})}

    def _widths_said(self) -> str:
        return ", ".join(f"{k}={v:g}" for k, v in self._widths().items())

    def _levers(self, floor: float) -> str:
        """" or lower channel_step (...)" for each width argument whose lowering moves the
        floor at the precision it is said at, with the floor it leaves; "" for none (break205
        F7: lowering channel_step was advised where it moved the floor by 0.0005; at step 1
        swin_t's attention was advised it, break193 F6)."""
        lowered = []
        if self.channel_step > 1:
            lowered.append(("channel_step", "at 1", uniform_kept(self.index, 0.0, 1)))
        if self.min_kept > 0:
            lowered.append(("min_kept", "at 0", uniform_kept(self.index.with_floor(0.0), 0.0,
                                                             self.channel_step)))
        # rounded up, as the target advised above (break207 F7: 0.398 for 0.39845 was refused)
        with pricing_hypothetical_widths():  # widths this method never takes: no warnings
            floors = [(name, at, self.budget.fraction(kept)) for name, at, kept in lowered]
        said = [f"{name} ({at} the floor is {math.ceil(low * 1000) / 1000:.3f})"
                for name, at, low in floors if low < floor - 1e-3]
        return f" or lower {' or '.join(said)}" if said else ""

    def _floor_parts(self, floor: float) -> str:
        """What a floor no width argument lowers is made of: cost the cost model holds at its
        dense value, and the layers at their narrowest (channels kept whole among them)."""
        other = self.budget.other_cost / self.budget.dense
        layers = ("layers at their narrowest, channels kept whole among them (fxprune.summary(pm) "
                  "lists those with their reasons)")
        if abs(other) < 5e-6:  # (review197 N2: "0.00000 of dense" said of nothing)
            return f"; that floor is {layers}"
        # (break205 F7: the convs of leaf modules were called "outside conv/linear layers")
        return (f"; of that floor, {other:.5f} of dense is cost no channel choice changes (layers "
                "inside leaf modules or ops called as one, cost outside conv/linear layers such "
                f"as attention products, or a fitted constant), and {floor - other:.5f} is "
                f"{layers}")

    def _with_floor(self, i: int, options, values: np.ndarray | None = None,
                    dead: np.ndarray | None = None, *, value: Callable | None = None):
        """Group ``i``'s ``options`` plus its part of :attr:`floor_kept` (valued by ``values``,
        the group's channel values, summed; or by ``value``, a function of the floor's kept
        mask: CCP's quadratic form), unless that keeps a ``dead`` channel: top-k options alone
        can cost more than the floor where a group's channels cost unequally (a concat's pieces
        in one group), and a target accepted by the constructor then failed mid-run (break36 #1;
        CCP's QP subsets too, review127 F2)."""
        if self.floor_kept is None:
            return options
        floor = self.floor_kept[self.index.group_slice(i)]
        if dead is not None and (floor & dead).any():
            return options
        worth = (value(floor) if value is not None
                 else float(np.asarray(values, dtype=np.float64)[floor].sum()))
        return options.with_option(floor, worth)

    def _kept_now(self) -> np.ndarray:
        return self.index.masks(self.prepared).numpy() != 0

    #: :meth:`finalize_masks` warns when the final masks cost more than ``target`` (a loop
    #: stopped before the schedule's end); a trainer that checks the target itself and says
    #: so (``fxprune train``, the Lightning callback) turns it off
    warn_above_target = True

    def finalize_masks(self) -> bool:
        """Leave the masks ``fxprune.finalize`` should apply (default: the current ones);
        True when this changed them. Warns (RuntimeWarning) when they cost more than the
        method's ``target``."""
        self._warn_if_above_target()
        return False

    def _warn_if_above_target(self) -> None:
        """break49 #3: finalize mid-schedule from one's own loop shipped a model at 0.536 of
        dense for a 0.3 target without a word, where the trainer and the callback refuse.
        Every finalize_masks calls it: it records that the final selection was asked for."""
        self._masks_finalized_at = self.step_count
        self._said_after_final = False
        target = getattr(self, "target", None)
        if not self.warn_above_target or not isinstance(target, (int, float)):
            return
        cost = self.cost()
        if cost > float(target) * (1 + 1e-6):
            warn(f"{type(self).__name__}.finalize_masks at step {self.step_count}: the masks cost "
                 f"{cost:.4f} of dense, above the target {float(target):.4f}: the schedule has "
                 f"not reached it; {self._way_to_target()}", RuntimeWarning)

    def _way_to_target(self) -> str:
        """What to do when :meth:`finalize_masks` finds the masks above ``target``."""
        return ("train on (pruner.step() after each backward) until it has, or finalize this "
                "model knowingly")

    @property
    def cost_model(self) -> CostModel:
        """The cost model the budget prices with (``cost=`` resolved)."""
        return self.budget.model

    def reopen(self) -> None:
        """Forget that :meth:`finalize_masks` ran: the masks are trained on (the Lightning
        callback restored, for a second fit, the state from before the final rule it applied
        at the first one's end), so updates from here are no loop stepping past its own
        final selection."""
        self._masks_finalized_at = None

    def masks_not_final(self) -> str | None:
        """Why the current masks are not what :meth:`finalize_masks` would leave (None when
        they are, or when it ran after the last step): they cost more than ``target``.
        ``fxprune.finalize`` warns with it when the loop skipped ``finalize_masks``."""
        if getattr(self, "_masks_finalized_at", None) == self.step_count or not self.step_count:
            return None
        target = getattr(self, "target", None)
        if isinstance(target, (int, float)) and not isinstance(target, bool):
            cost = self.cost()
            if cost > float(target) * (1 + 1e-6):
                return f"its masks cost {cost:.4f} of dense, above its target {float(target):.4f}"
        return None

    def signature(self) -> list[list]:
        """The prunable groups as ``[key, name, size]``: what a saved state must match."""
        return [[g.key, g.name, int(g.size)] for g in self.index.groups]

    def _check_state(self, state: dict, masks_key: str) -> None:
        """Refuse, before anything is loaded, a state of another method or an incomplete one,
        or one saved for other groups (names or sizes differ), naming both."""
        self._pruned_at_build = self._kept_when_built = None  # a state is loaded: the masks are its run's
        self.__dict__.pop("_mask_versions", None)
        me = type(self).__name__
        if not isinstance(state, dict):
            raise ArgumentTypeError(f"a {me} state is the dict its state_dict() returned, got "
                                    f"{type(state).__name__}")
        saved_by, saved_as = state.get("method"), state.get("registered_as")
        mine = self.registered_as or self.name
        if (saved_by is not None and saved_by != self.name) or (
                saved_as and self.registered_as and saved_as != self.registered_as):
            raise ArgumentError(f"this pruner state was saved by the {saved_as or saved_by!r} "
                                f"method, not {mine!r}: load it into the method that saved it "
                                f"(prune.method: {saved_as or saved_by} in a recipe)")
        theirs, ours = state.get("settings"), self.defining_settings()
        # settings a state records (an older one may record fewer) must be this pruner's
        differ = ", ".join(f"{k}={theirs[k]!r} (here {ours[k]!r})" for k in sorted(ours)
                           if isinstance(theirs, dict) and k in theirs and theirs[k] != ours[k])
        if differ:
            raise ArgumentError(f"this pruner state was saved by a {saved_as or saved_by!r} pruner "
                                f"with {differ}: another method; load it into a pruner built with "
                                "the settings that saved it")
        missing = [k for k in self.state_keys if k not in state]
        if missing:
            raise ArgumentError(f"this pruner state lacks {', '.join(missing)}: it is not a {me} "
                                f"state (another method's, or incomplete); load the state {me}."
                                "state_dict() saved")
        masks = state[masks_key]
        mine, theirs = self.signature(), state.get("groups")
        if theirs is not None and [list(g) for g in theirs] != mine:
            show = lambda gs: ", ".join(f"{name} ({size})" for _, name, size in gs)  # noqa: E731
            raise ArgumentError(f"this pruner state was saved for channel groups {show(theirs)} but "
                                f"the prepared model has {show(mine)}: it belongs to a different "
                                "model; load it into a model prepared like the one that saved it")
        self._check_channels(masks)

    def _check_channels(self, masks) -> None:
        if masks.numel() != self.index.n:
            raise ArgumentError(f"this state holds {masks.numel()} channels but the prepared "
                                f"model has {self.index.n}: it was saved for a different model")


def method_parameters(cls: Callable) -> dict[str, inspect.Parameter]:
    """The constructor parameters of a method's class or factory, by name (the prepared model
    first). A factory that forwards its ``**kwargs`` (``forwards_kwargs_to``: one-shot's go to
    SMCP) has them replaced by its target's, its own first. Raises TypeError or ValueError
    where ``inspect.signature`` finds none."""
    params = dict(inspect.signature(cls).parameters)
    forwards_to = getattr(cls, "forwards_kwargs_to", None)
    if forwards_to is None:
        return params
    own = {n: p for n, p in params.items() if p.kind != p.VAR_KEYWORD}
    theirs = {n: p for n, p in inspect.signature(forwards_to).parameters.items() if n not in own}
    return {**own, **theirs}


#: fxprune.prepare's own keywords, which a method is sometimes given by mistake
PREPARE_ARGUMENTS = ("keep", "leaf_modules", "rules")


def check_method_kwargs(cls: Callable, kwargs: dict, caller: str, *,
                        refuse_own: bool = True) -> None:
    """Refuse a keyword ``cls`` (a method's class or factory) does not take, or (``refuse_own``)
    one it sets itself, with the arguments it takes and a "did you mean".

    Raises TypeError naming ``caller``; nothing where ``cls`` takes ``**kwargs`` of its own or
    has no signature to judge by (the method judges when it is called)."""
    try:
        params = method_parameters(cls)
    except (TypeError, ValueError):
        return
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return
    sets_itself = getattr(cls, "sets_itself", ())  # oneshot: SMCP's schedule (break76 #5)
    valid = [n for n, p in list(params.items())[1:]  # the first is the prepared model
             if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and n not in sets_itself]
    own = [k for k in kwargs if k in sets_itself]
    if own and refuse_own:
        raise ArgumentTypeError(f"{caller}: the method sets {own[0]!r} itself; drop it (it takes "
                                f"{', '.join(valid)})")
    unknown = [k for k in kwargs if k not in valid and k not in own]
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], valid, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        if unknown[0] in PREPARE_ARGUMENTS:  # (break210 F6: a recipe's prune.keep, say)
            hint = (f" ({unknown[0]}= is fxprune.prepare's: prepare the model with it, "
                    f"fxprune.prepare(model, example_inputs, {unknown[0]}=...))")
        raise ArgumentTypeError(f"{caller}: {unknown[0]!r} is not an argument of the method{hint}; it "
                                f"takes {', '.join(valid)}")


_MOVED = ("MethodEntry", "registry", "register_method", "get_method", "method_names",
          "PLUGIN_GROUP", "priced_channel_step", "moved_channel_step")


def __getattr__(name):
    # the registry moved to fxprune.methods.registration; code importing it from here still works
    if name in _MOVED:
        from . import registration

        return getattr(registration, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
