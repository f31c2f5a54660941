"""PyTorch Lightning: prune while ``Trainer.fit`` trains (``pip install fxprune[lightning]``).

The LightningModule owns the prepared model; the callback finds it and drives a pruning method::

    class Classifier(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = fxprune.prepare(resnet18(), (torch.randn(1, 3, 224, 224),))
        def training_step(self, batch, _):
            x, y = batch
            return F.cross_entropy(self.model(x), y)
        ...

    callback = PruningCallback("smcp", target=0.5, warmup=500, ramp=5000, update_every=200,
                               save_path="model_pruned.pt")
    lightning.Trainer(callbacks=[callback], ...).fit(Classifier(), ckpt_path=...)

- **When.** The method's ``step()`` runs in ``on_before_optimizer_step``: once per optimizer
  step (after the last micro-batch under ``accumulate_grad_batches``), after the gradients are
  unscaled under 16-bit AMP and, under DDP, after they are averaged (the rule of
  :mod:`fxprune.distributed`). Not ``on_after_backward``: that fires per micro-batch with scaled
  gradients. An AMP step whose gradients overflowed (the scaler skips it) is not counted.
- **Where.** The method is built in ``on_fit_start``, when the model is on its device (and
  wrapped by the strategy), on every rank; after each mask update rank 0's masks are broadcast.
- **Resuming.** The method's state (step count, accumulated importance, masks, history) is the
  callback's ``state_dict``, so ``Trainer.fit(ckpt_path=...)`` resumes with identical masks.
  Counts and means of averaged gradients: a checkpoint resumes on any number of devices.
- **The end.** ``on_train_end`` applies the method's final rule (``finalize_masks()``, every
  rank), finalizes on rank 0 (``self.finalized``) and, with ``save_path``, ``torch.save``-s
  a copy of the pruned model (a plain module in eval mode with CPU weights, loadable without
  fxprune but where its forward sets modes or applies a custom autograd Function) through a
  temporary file.
- **Methods.** Statistics a method gathers in hooks (``rank_local_statistics``, e.g. CCP) are
  summed over the DDP processes; the training step is the LightningModule's own, at full
  width, so CUCB runs ``execution="masked"`` (its gathered sub-network is refused here).

Use ``strategy="ddp"`` (Lightning's launcher runs the script once per device; or ``torchrun``),
not ``"ddp_spawn"``: that pickles the LightningModule and the callback into each process, a
path this callback is not tested on (each process must step a method bound to the model it
trains). Strategies that shard parameters (FSDP, DeepSpeed)
are not supported: the method reads whole weights and their gradients.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import math
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import fx, nn

try:
    import lightning.pytorch as pl
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("fxprune.integrations.lightning needs PyTorch Lightning: "
                      "pip install 'fxprune[lightning]' (or pip install lightning)") from exc

import fxprune

from .. import distributed as fxdist
from ..checks import check_bool
from ..cost import LATENCY_COSTS
from ..deploy.measured_cost import latency_cost, measured_cost_from_dict, measured_cost_to_dict
from ..errors import ArgumentError, ArgumentTypeError, warn
from ..groups import is_finalized, is_prepared, mask_bank
from ..methods.base import (check_method_kwargs, check_resumed_steps, method_cost,
                            refuse_unloadable_state, schedule_end, trains_model, check_on_trial)
from ..importance import close_live_taps
from ..methods.registration import built_argument, moved_channel_step, priced_channel_step
from ..recipe_config import step_keys
from ..run_io import save_module, unwritable_folder


def _unwritable(path: Path) -> str | None:
    """Why the finalized model could not be saved to ``path`` at the end of the fit, and the
    way out (None when it can): a folder there, a symbolic link (the save would replace the
    link, not write the file it points to: break206 F3, refused only after the fit), or a
    folder on its way that cannot hold a new file."""
    if path.is_symlink():
        return (f"is a symbolic link (to {os.readlink(path)}), which the save would replace, "
                "not write through; pass the file's own path, or remove the link")
    why = "is a folder" if path.is_dir() else unwritable_folder(path.parent)
    return None if why is None else f"{why}; pass a save_path in a folder you can write"


def _method_entry(name: str):
    """The pruning method registered under ``name`` (:mod:`fxprune.methods.registration`); an
    unknown name raises ValueError naming the registered ones."""
    from fxprune.methods.registration import get_method

    return get_method(name)


#: who reads a checkpoint's method state back with torch.load(weights_only=True)
_READ_BY = "Lightning's ckpt_path resume (torch.load's default weights_only=True)"


@contextlib.contextmanager
def _shown_on_rank_zero(trainer):
    """Warnings raised in the block shown by rank 0 alone, as ``fxprune train`` does (break155
    F7: a method's warnings came once per process); filtered as on rank 0, so ``-W error``
    stops every rank alike."""
    if getattr(trainer, "is_global_zero", True):
        yield
        return
    # showwarning swapped by hand: catch_warnings() resets the registries of warnings already
    # shown, and a once-only warning came again at every step (review157 F6)
    shown = warnings.showwarning
    warnings.showwarning = _not_shown
    try:
        yield
    finally:
        warnings.showwarning = shown


def _not_shown(*args, **kwargs) -> None:
    return None


def _file_id(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)


def find_prepared(pl_module: nn.Module, attribute: str | None = None) -> fx.GraphModule:
    """The model ``fxprune.prepare`` returned, held by ``pl_module`` (at ``attribute``, or the
    only one among its submodules)."""
    if attribute is not None:
        model = pl_module.get_submodule(attribute)
        if not is_prepared(model):
            raise ArgumentTypeError(f"{type(pl_module).__name__}.{attribute} is a {type(model).__name__}, "
                                    f"not a model prepared by fxprune; set it to fxprune.prepare(model, inputs)")
        return model
    found = [(name, m) for name, m in pl_module.named_modules()
             if is_prepared(m)]
    if not found:
        done = next((name for name, m in pl_module.named_modules() if is_finalized(m)), None)
        if done is not None:  # (break155 F8: told to prepare, which restarts from a dense model)
            raise ArgumentError(f"{type(pl_module).__name__}.{done or 'self'} is a model fxprune "
                                "already finalized (pruned): fine-tune it with a Trainer without "
                                "PruningCallback")
        raise ArgumentError(f"{type(pl_module).__name__} holds no model prepared by fxprune; in its "
                            f"__init__, set e.g. self.model = fxprune.prepare(model, example_inputs)")
    if len(found) > 1:
        raise ArgumentError(f"{type(pl_module).__name__} holds several prepared models "
                            f"({', '.join(n for n, _ in found)}); pass PruningCallback(attribute=NAME)")
    return found[0][1]


class PruningCallback(pl.Callback):
    """Prune the LightningModule's prepared model with a registered method while it trains.

    Args:
        method: the method's registered name (``"smcp"``).
        attribute: the LightningModule attribute holding ``fxprune.prepare``'s model; None finds
            the only one.
        save_path: where rank 0 saves the finalized model at the end of training (``torch.save``
            of the module); None keeps it in memory only (``callback.finalized``). A path
            that cannot be written (a folder, a file as its parent, a folder refusing new
            files) is a ``ValueError`` at fit start.
        overwrite: replace an existing ``save_path`` (by default an existing file is an error,
            raised before training starts).
        check_masks: debug mode under DDP: after each update every rank checks that its masks
            equal rank 0's and raises naming the first differing group.
        allow_above_target: a fit that ends with the model's cost above the method's target
            (it stopped before the schedule did: ``max_epochs`` too small for the steps given)
            raises :class:`fxprune.train.TargetNotReachedError` and saves nothing, as
            ``fxprune train`` does; True keeps and saves such a model.
        latency_cache: with ``cost="latency"`` or ``"latency+fixed"``: a latency cache file
            the table's timings are read from and added to (``LatencyTable.measure``'s
            ``cache=``), so a second fit prices with the same timings; None: none.
        **method_kwargs: the method's own arguments (SMCP: ``target``, ``cost``, ``warmup``, ...;
            step counts are optimizer steps; the method steps once per batch, at the first
            step of an optimizer holding the pruned model's parameters, even when several
            optimizers step on one backward). CUCB without ``explore`` makes its final pick at
            the fit's last step (``trainer.estimated_stepping_batches``), so the checkpoints
            written at the end hold the final masks; a fit that stops before that step (early
            stopping, ``max_time``, manual optimization stepping less than once per batch) picks
            at its end, after the last checkpoint, and says so.
    """

    def __init__(self, method: str = "smcp", *, attribute: str | None = None,
                 save_path: str | os.PathLike | None = None, overwrite: bool = False,
                 check_masks: bool = False, allow_above_target: bool = False,
                 latency_cache: str | os.PathLike | None = None, **method_kwargs):
        self.method = method
        for name, flag in (("overwrite", overwrite), ("check_masks", check_masks),
                           ("allow_above_target", allow_above_target)):
            check_bool(name, flag)  # ("no" read as True: review197 N5)
        if latency_cache is not None and method_kwargs.get("cost") not in LATENCY_COSTS:
            cost = (repr(method_kwargs["cost"]) if "cost" in method_kwargs
                    else "the method's default, 'flops'")
            raise ArgumentError(f"PruningCallback({method!r}): latency_cache= keeps the timings "
                                f"of a latency cost, and cost is {cost}; drop it, or pass "
                                "cost='latency'")
        self.latency_cache = latency_cache
        self.method_entry = _method_entry(method)  # an unknown name fails here, not mid-fit
        if method_kwargs.get("execution", "masked") != "masked":
            raise ArgumentError(f"PruningCallback({method!r}): execution={method_kwargs['execution']!r} "
                                "runs a sub-network through the method's train_forward, but Lightning "
                                "trains through the LightningModule's own forward; use "
                                "execution='masked' (the callback's default)")
        # (break73 M5: a typo such as traget=0.5 passed, and fit() failed inside Lightning)
        check_method_kwargs(self.method_entry.cls, method_kwargs, f"PruningCallback({method!r})")
        self.method_kwargs = method_kwargs
        self.attribute, self.check_masks = attribute, check_masks
        self.save_path = None if save_path is None else Path(save_path).expanduser()
        self.overwrite, self.allow_above_target = overwrite, allow_above_target
        self.pruner = None
        self.prepared: fx.GraphModule | None = None
        self.finalized: nn.Module | None = None
        self._pending_state: dict | None = None
        #: a latency cost timed for this callback's method (plain data, as checkpoints hold it)
        self._measured_cost: dict | None = None
        #: the method's state as training left it, before the end's final rule: what a
        #: checkpoint saved after fit() holds, so a longer fit resumed from it goes on training
        #: (CUCB's final pick had ended its exploration: break24 #7)
        self._trained_state: dict | None = None
        self._state_checked = False
        self._batch = 0  # training batches started; the method steps once per batch
        self._stepped_batch = -1
        self._param_ids: set[int] | None = None  # the pruned model's parameters
        #: (path, inode, size, mtime) of the file this callback saved: a refit may replace it
        #: (break155 F9: the second fit refused the first's own file)
        self._saved: tuple | None = None
        #: global step -> the method's cost when a checkpoint was saved there (this process)
        self._checkpoint_costs: dict[int, float] = {}

    def __getstate__(self) -> dict:
        """Picklable (a spawning launcher, ``strategy="ddp_spawn"``, pickles the callbacks:
        break155 F5): the method's registry entry holds a closure, so it is found again by
        name when unpickled."""
        state = self.__dict__.copy()
        state.pop("method_entry", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.method_entry = _method_entry(self.method)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(method=self.method, attribute=self.attribute)

    # -- hooks ------------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # a path that cannot be written failed after the whole fit (break62 #2); checked
        # first: a folder exists too, and overwrite=True cannot help it (break98 F2).
        # Rank 0 writes the file, so its view decides; every rank raises (none waits for it)
        unwritable = fxdist.broadcast_object(
            _unwritable(self.save_path) if self.save_path is not None else None)
        if unwritable:
            raise ArgumentError(f"save_path {self.save_path}: {unwritable} (checked before "
                                "training)")
        averaging = next((cb for cb in trainer.callbacks if getattr(cb, "_use_buffers", False)
                          and type(cb).__name__.endswith("WeightAveraging")), None)
        if averaging is not None:  # (break119 #1: silently soft masks, or a false "above target")
            raise ArgumentError(
                f"{type(averaging).__name__}(use_buffers=True) averages every buffer, fxprune's "
                "0/1 channel masks among them: the averaged model's pruned channels read about "
                f"0.98 and the pruned cost reads dense; pass {type(averaging).__name__}("
                "use_buffers=False) and list it before PruningCallback, so that the averaged "
                "weights are the ones finalized")
        taken = fxdist.broadcast_object(self.save_path is not None and self.save_path.exists()
                                        and not self.overwrite and not self._wrote_it())
        if taken:
            raise FileExistsError(f"{self.save_path} exists; pass another save_path or "
                                  f"PruningCallback(overwrite=True)")
        if self.pruner is not None and find_prepared(pl_module, self.attribute) is not self.prepared:
            # it would go on stepping the first model, and save that one again
            raise ArgumentError("this PruningCallback prunes the model of the module it was first "
                                f"fitted with, not {type(pl_module).__name__}'s; make a new "
                                "PruningCallback for each model (e.g. each fold of a sweep)")
        with _shown_on_rank_zero(trainer):
            self._start(trainer, pl_module)
        self._train_ended = False  # set by on_train_end, which Lightning skips on a done fit

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # a fit resumed from the checkpoint of one that had reached its end: Lightning runs no
        # training loop and no on_train_end, so nothing was finalized or saved (break188 F8:
        # callback.finalized None, save_path not written, without a word)
        if (self.pruner is None or getattr(self, "_train_ended", True)
                or getattr(trainer, "fast_dev_run", False) or not trainer.is_global_zero):
            return
        resumed = getattr(trainer, "ckpt_path", None)
        why, way = ((f"resumed from {resumed} at its end: max_epochs/max_steps already reached",
                     "the model that fit pruned is the one it saved then, or fit on with a "
                     "larger max_epochs") if resumed else
                    # (review189 R4: a fresh fit of no step was said to be a resume)
                    ("no training step: limit_train_batches=0 or max_steps=0?",
                     "fit with training steps"))
        warnings.warn(f"PruningCallback: Lightning ran no training in this fit ({why}), so "
                      f"{self.method} applied no final rule, finalized nothing and saved "
                      "nothing: callback.finalized is None"
                      + (f" and {self.save_path} was not written" if self.save_path else "")
                      + f"; {way}", RuntimeWarning, stacklevel=2)

    def _start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """on_fit_start's method part: build (or restore) it and check the fit runs it."""
        if self.pruner is None:
            prepared = find_prepared(pl_module, self.attribute)
            pruner = self.method_entry.build(prepared, **self._build_kwargs(trainer, prepared))
            # before a step is spent, as fxprune train does (a state refused by
            # weights_only=True was turned into tensors its load_state_dict never saw); kept
            # only once checked, so a refit checks again (review181 F3)
            refuse_unloadable_state(pruner, self.method, at_build=True, read_by=_READ_BY)
            self.prepared, self.pruner = prepared, pruner
            resumed_from = getattr(trainer, "ckpt_path", None)
            if resumed_from and self._pending_state is None and trainer.is_global_zero:
                # Lightning restores callbacks by state_key: one written with other arguments
                # got nothing, and the method restarted its schedule mid-run (break41 #2)
                warnings.warn(
                    f"PruningCallback: the checkpoint {resumed_from} holds no state of this "
                    f"callback ({self.state_key}), so {self.method} starts at its step 0, its "
                    "schedule from the start; if it was written with a PruningCallback, pass "
                    "the same method and attribute= as then (Lightning matches them by those)",
                    RuntimeWarning, stacklevel=2)
        elif self._trained_state is not None and self._pending_state is None:
            # fitted again in this session: on from where training left the method, not from
            # the end's final rule (CUCB's pick would end its exploration: break26 #3)
            self.pruner.load_state_dict(self._trained_state)
            # that state is from before the final rule this callback applied at the last fit's
            # end, which it applies again at this one's: updates in between are training, not
            # a loop stepping past its own finalize_masks() (break133 F2: SMCP warned so)
            if callable(getattr(self.pruner, "reopen", None)):
                self.pruner.reopen()
        self._trained_state = None
        if hasattr(self.pruner, "attach_optimizer"):
            # e.g. CUCB: inactive weights keep their optimizer state (this fit's optimizers that
            # train the pruned model: the first is a GAN's discriminator's, whose protection
            # kept nothing of the model's, as attach_optimizer's new check showed)
            for optimizer in trainer.optimizers:
                if trains_model(optimizer, self.prepared):
                    self.pruner.attach_optimizer(optimizer)
        if self._pending_state is not None:
            self._load(self._pending_state)
        self._check_fit_runs_the_method(trainer)  # with the steps a resumed method has taken

    def _wrote_it(self) -> bool:
        """Whether ``save_path`` is the file this callback saved, unchanged since."""
        return self._saved is not None and self._saved == _file_id(self.save_path)

    def _check_fit_runs_the_method(self, trainer: pl.Trainer, pruner=None, prepared=None) -> None:
        """Before training (break155 F1, F2): no optimizer of the fit holds the prepared
        model's parameters (the method would never step), or the fit is shorter than the
        method's schedule (it would end above its target, said after the whole fit).
        ``pruner``/``prepared``: a trial of the method and its model, before a latency table is
        timed (default: the callback's own)."""
        pruner = self.pruner if pruner is None else pruner
        prepared = self.prepared if prepared is None else prepared
        optimizers = list(getattr(trainer, "optimizers", None) or [])
        if optimizers and not any(trains_model(o, prepared) for o in optimizers):
            raise ArgumentError(
                f"PruningCallback: none of the fit's {len(optimizers)} optimizer(s) holds the "
                "parameters of the model fxprune.prepare returned, so the method would never "
                "step; return an optimizer over self.model.parameters() (the prepared model's) "
                "from configure_optimizers")
        if (getattr(trainer, "fast_dev_run", False)  # a smoke test: no target checked at its end
                or not isinstance(getattr(pruner, "target", None), (int, float))):
            return  # (a ratio, not a cost target: nothing is checked at the end either)
        total = getattr(trainer, "estimated_stepping_batches", None)
        end = schedule_end(pruner)
        if end is None or not isinstance(total, (int, float)) or not math.isfinite(total) or total <= 0:
            return
        # steps still needed against steps this fit has left: a refit of this callback goes on
        # from the method's step (review157 F4: refused after its target was reached), a
        # resume from the checkpoint's
        steps = self._method_steps(trainer, pruner)
        needed = end - steps
        left = total - int(getattr(trainer, "global_step", 0) or 0)
        if needed <= 0 or needed <= left:
            return
        accumulate = getattr(trainer, "accumulate_grad_batches", 1)
        why = (f" (accumulate_grad_batches={accumulate}: one optimizer step per {accumulate} "
               "batches)" if isinstance(accumulate, int) and accumulate > 1 else "")
        now = f"; {needed} more from its step {steps}" if steps else ""
        keys = step_keys(pruner, "warmup=, ramp=; CCP: collect=, prune_at=", recipe=False)
        message = (f"PruningCallback: {self.method} reaches its target at optimizer step {end} "
                   f"(its schedule's end{now}), but this fit has at most {int(left)} optimizer "
                   f"steps{why}; pass a shorter schedule to the callback ({keys}) "
                   "or fit longer (max_epochs, max_steps)")
        if not self.allow_above_target:
            raise ArgumentError(message + ", or pass allow_above_target=True to keep the model as "
                                "the fit leaves it")
        # every rank (shown by rank 0: _shown_on_rank_zero), so that -W error stops them
        # alike (review157 F8: rank 1 went on into the fit alone)
        warn(message + "; the model is kept as the fit leaves it (allow_above_target=True)",
             RuntimeWarning)

    def _method_steps(self, trainer: pl.Trainer, pruner=None) -> int:
        """The steps the method has taken: its ``step_count``, or, for a method without one
        (optional in the protocol: break198 F6, an AttributeError at fit start), the fit's
        optimizer steps, one method step each."""
        count = getattr(self.pruner if pruner is None else pruner, "step_count", None)
        if isinstance(count, int) and not isinstance(count, bool):
            return count
        return int(getattr(trainer, "global_step", 0) or 0)

    def _why_above(self, trainer: pl.Trainer) -> str:
        """Why the fit ended above the target, for its error (break155 F2: "the schedule had
        not ended" was said where the method never stepped, or a callback stopped the fit)."""
        steps, end = self._method_steps(trainer), schedule_end(self.pruner)
        if steps == 0:
            return ("the method never stepped: no optimizer step of the fit reached it (manual "
                    "optimization must step the optimizers self.optimizers() returns, not their "
                    ".optimizer)")
        if end is not None and steps >= end:
            return (f"its schedule ended at step {end}, but its updates did not prune: did "
                    "training_step run the prepared model, its parameters trainable? (the "
                    "method's warnings during the fit say more)")
        if getattr(trainer, "should_stop", False):
            return (f"the fit was stopped at step {steps} by a callback (EarlyStopping, whose "
                    "monitored metric dips while channels go, or another), before the schedule's "
                    f"end{f' at step {end}' if end is not None else ''}; let the fit run past it "
                    "(e.g. EarlyStopping only after it)")
        if end is None:  # (break176 F5: a method without one was told to train longer)
            return (f"{type(self.pruner).__name__} declares no schedule a longer fit would "
                    "lengthen (a `schedule` or prune_steps()): its final masks are what its own "
                    "settings chose; change them")
        return "the schedule had not ended. Train longer (max_epochs/max_steps) or shorten the schedule"

    def _build_kwargs(self, trainer: pl.Trainer | None = None, prepared=None) -> dict:
        """The method's arguments as the callback must run it: statistics gathered in hooks
        summed over the processes (as ``fxprune train`` does), the training step through
        the LightningModule's own forward, so at full width (CUCB ``execution="masked"``),
        CUCB's final pick at the fit's last step when ``explore`` is not given, so that the
        checkpoints Lightning writes at the end hold the final masks (break33 #1), and a
        latency ``cost`` named as a recipe names it measured for ``prepared`` (a method takes
        a cost model; the callback, like ``fxprune train``, does the measuring: rank 0 times,
        every rank receives it)."""
        kwargs = dict(self.method_kwargs)
        cls = self.method_entry.cls
        self._check_resumed_cost(built_argument(self.method_entry, kwargs, "cost"))
        moved = moved_channel_step(self.method_entry, (self._pending_state or {}).get("state"),
                                   kwargs)
        if moved is not None:
            # a fit resumed from a checkpoint begun at a default that moved since goes on at
            # its own step, as fxprune train's --resume does (review197 L1)
            recorded, default = moved
            kwargs["channel_step"] = recorded
            if trainer is None or trainer.is_global_zero:
                warnings.warn(f"PruningCallback: the checkpoint's {self.method} began at "
                              f"channel_step {recorded}, its default then (now {default}), and "
                              f"goes on at it; pass channel_step={recorded} to say so",
                              RuntimeWarning, stacklevel=2)
        if fxdist.is_distributed() and getattr(cls, "rank_local_statistics", False):
            kwargs.setdefault("reduce_fn", fxdist.all_reduce_sum)  # e.g. CCP's activation terms
        try:
            takes = inspect.signature(cls).parameters
        except (TypeError, ValueError):  # a builtin or C callable: nothing to read
            takes = {}
        if "execution" in takes:  # __init__ refused any other value
            kwargs["execution"] = "masked"
        total = getattr(trainer, "estimated_stepping_batches", None)
        warmup = kwargs.get("warmup", getattr(takes.get("warmup"), "default", 1))
        if ("explore" in takes and kwargs.get("explore") is None and isinstance(total, (int, float))
                and math.isfinite(total) and isinstance(warmup, int)):
            if total > warmup:
                kwargs["explore"] = int(total)
            elif total > 0 and trainer is not None:  # (-1: unknown, a loader of no length:
                # review108 F3; break107 F3: said at the end as "before its explore step None")
                said = (f"the fit's {int(total)} estimated optimizer steps are "
                        + ("fewer than" if total < warmup else "no more than")
                        + f" {self.method}'s warmup ({warmup}): it never leaves its random "
                        "warm-up, and its final pick rests on random draws alone; pass a smaller "
                        "warmup= to the callback, or fit longer")
                if not getattr(trainer, "fast_dev_run", False):
                    # refused on every rank alike, as the method refuses explore <= warmup
                    # (break196 F9: a warning, then a final pick inside the warm-up)
                    raise ArgumentError(f"PruningCallback({self.method!r}): {said}")
                if trainer.is_global_zero:  # a smoke run: said, not refused
                    warnings.warn(said, RuntimeWarning, stacklevel=2)
        # the latency cost last: every refusal above comes before minutes of timing (review197
        # L3, review195 R2 for the callback's own checks)
        if prepared is not None and isinstance(kwargs.get("cost"), str) \
                and kwargs["cost"] in LATENCY_COSTS and self._measured_cost is not None:
            # the fit's own timings, from the checkpoint it resumes (a new timing would move
            # the budget under the masks already chosen: review195 R6), or the last fit's
            if self._measured_cost.get("kind") != kwargs["cost"]:  # (review197 L2)
                raise self._cost_kept(kwargs["cost"], self._measured_cost.get("kind"))
            kwargs["cost"] = measured_cost_from_dict(self._measured_cost, "the checkpoint's "
                                                     "measured cost")
        elif prepared is not None and isinstance(kwargs.get("cost"), str) \
                and kwargs["cost"] in LATENCY_COSTS:
            step = priced_channel_step(self.method_entry, kwargs)
            if step is None:  # (review195 R4: guessed as 8)
                raise ArgumentError(f"PruningCallback({self.method!r}, cost={kwargs['cost']!r}): "
                                    "the table is timed at the widths the method chooses, and "
                                    "its channel_step cannot be read from its signature; pass "
                                    "channel_step=")
            if trainer is not None and getattr(trainer, "fast_dev_run", False):
                # a smoke test of a batch or a few: no table is timed for it (break199 F2:
                # minutes to an hour before the one batch); the method is dropped at its end
                if trainer.is_global_zero:
                    warnings.warn(f"PruningCallback: fast_dev_run prices {self.method} by FLOPs "
                                  "(its target is not checked against latency here); "
                                  f"cost={kwargs['cost']!r} times a latency table in a real fit",
                                  RuntimeWarning, stacklevel=2)
                kwargs["cost"] = "flops"
                # its masks, put back when the smoke test's method is dropped (break203 F1: the
                # next fit's method was told of a resume that never happened)
                bank = mask_bank(prepared)
                self._masks_before_smoke = {n: b.detach().clone() for n, b in bank.named_buffers()}
                return kwargs
            if trainer is not None:
                # what needs no timings is refused before them (break199 F1: a fit too short
                # for the schedule, or no optimizer over the model, after the whole table);
                # the optimizers hold the parameters of the model itself, not of the copy
                check_on_trial(lambda copy: self.method_entry.build(
                    copy, **{**kwargs, "cost": "flops"}), prepared,
                    lambda trial, copy: self._check_fit_runs_the_method(trainer, trial, prepared))
            kwargs["cost"] = latency_cost(
                prepared, kwargs["cost"], channel_step=int(step), cache=self.latency_cache,
                progress=trainer is None or getattr(trainer, "progress_bar_callback", None) is not None)
            self._measured_cost = measured_cost_to_dict(kwargs["cost"])
        return kwargs

    def _check_resumed_cost(self, given) -> None:
        """A fit resumed from a checkpoint keeps the cost kind its method priced by, as
        ``fxprune train --resume`` keeps ``prune.cost`` (break199 F7: latency -> latency+fixed
        was refused, but flops <-> latency only warned, one of them after timing a table)."""
        state = (self._pending_state or {}).get("state")
        settings = state.get("run_settings", state) if isinstance(state, dict) else None
        saved = settings.get("cost") if isinstance(settings, dict) else None
        kinds = ("flops", "params", *LATENCY_COSTS)  # a recipe's names, which states record
        # a cost model object by its name, as states record it (break207 F2: FlopsCost() on a
        # latency checkpoint only warned)
        given = given if isinstance(given, str) else getattr(given, "name", None)
        if given in kinds and saved in kinds and given != saved:
            raise self._cost_kept(given, saved)

    def _cost_kept(self, given: str, saved) -> ArgumentError:
        return ArgumentError(f"PruningCallback({self.method!r}, cost={given!r}): the checkpoint "
                             f"priced by cost={saved!r}, which a resumed fit keeps (another cost "
                             "would move the budget under the masks chosen); pass that cost, or "
                             "start a new fit")

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        if self.pruner is None:
            return
        # once per training batch, at the first step of an optimizer of the pruned model: a
        # second optimizer stepping on the same backward (a body and a head) would step the
        # method twice, and CUCB would reward the channels it had just drawn with gradients
        # they took no part in (break33 #2); a GAN's discriminator step, first in its batch,
        # holds none of the pruned model's gradients (break34 #2)
        if self._stepped_batch == self._batch or not self._steps_the_model(optimizer):
            return
        if getattr(getattr(trainer, "fit_loop", None), "_skip_backward", False):
            # StochasticWeightAveraging's batch-norm epoch steps with no backward (break119 #2:
            # the method stepped on stale gradients, and said "no backward" to a user who had
            # no way to act on it)
            return
        self._stepped_batch = self._batch
        if self._overflowed(trainer, optimizer):
            discard = getattr(self.pruner, "discard_step", None)
            if discard is not None:  # e.g. CCP: its hooks saw this step's inf/NaN terms
                discard()
            return
        if hasattr(self.pruner, "grad_scale"):  # what Lightning multiplied each micro-batch's loss by
            scaler = getattr(trainer.precision_plugin, "scaler", None)
            if getattr(pl_module, "automatic_optimization", True):
                scale = float(scaler.get_scale()) if scaler is not None else 1.0  # fp16 AMP only
                self.pruner.grad_scale = scale / trainer.accumulate_grad_batches
            else:
                # manual optimization: Lightning's accumulate_grad_batches stays 1 whatever the
                # loop accumulates, and 1.0 mis-scaled the terms (break41 #1); the method's
                # default is the usual loop (Lightning's docs too): each of k micro-batches'
                # loss divided by k, over the AMP scaler's scale where there is one
                self.pruner.grad_scale = None
                if scaler is not None and hasattr(self.pruner, "scaler"):
                    self.pruner.scaler = scaler
        with _shown_on_rank_zero(trainer):
            record = self.pruner.step()
        if record is not None:
            fxdist.broadcast_masks(self.prepared, check=self.check_masks)
            logged = {f"pruning/{k}": float(record[k]) for k in ("target", "actual", "kept")
                      if record.get(k) is not None}  # CCP's ratio mode records no target
            if logged:
                pl_module.log_dict(logged, on_step=True, on_epoch=False)

    def _steps_the_model(self, optimizer: torch.optim.Optimizer) -> bool:
        mine = self._param_ids
        if mine is None:
            mine = self._param_ids = {id(p) for p in self.prepared.parameters()}
        return any(id(p) in mine for group in optimizer.param_groups for p in group["params"])

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        self._batch += 1

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._train_ended = True
        if self.prepared is None:
            return
        if getattr(self.pruner, "sync_state", None) is not None:
            self.pruner.sync_state()  # every rank: a checkpoint after fit() holds all statistics
        # a copy: finalize_masks() below may change what the state's tensors and lists hold.
        # Checked only when a checkpoint saves it (review181 F1: a fit without checkpoints
        # trained to its end, refused, and saved no model)
        self._trained_state = copy.deepcopy(self.pruner.state_dict())
        if getattr(trainer, "fast_dev_run", False):
            # Lightning's smoke test (a batch or a few): no schedule runs to its end, and
            # Lightning saves nothing; the target's error ("train longer") could not be acted on
            # and allow_above_target saved a dense model (break133 F5). No final rule either,
            # and no earlier fit's model left as this one's (review137 #6)
            self.finalized = None
            before = self.__dict__.pop("_masks_before_smoke", None)
            if before is not None:
                # priced by FLOPs for the smoke test only: a later fit builds it again, priced
                # by the latency it was given (review202 R2: it went on by FLOPs, unsaid), on
                # the masks the model had before
                close_live_taps(self.prepared)
                bank = mask_bank(self.prepared)
                with torch.no_grad():
                    for name, mask in bank.named_buffers():
                        mask.copy_(before[name])
                self.pruner, self._trained_state, self._param_ids = None, None, None
            if trainer.is_global_zero:
                warnings.warn(f"PruningCallback: fast_dev_run ran {self._method_steps(trainer)} "
                              f"step(s) of {self.method}; as Lightning does in this mode, the "
                              "callback applies no final rule, checks no target, finalizes "
                              "nothing and saves nothing", RuntimeWarning, stacklevel=2)
            return
        # every rank: the method's final masks (CUCB: top channels by mean reward; CCP: its
        # statistics hooks removed), if they differ from the last step's
        finalize_masks = getattr(self.pruner, "finalize_masks", None)
        warns = getattr(self.pruner, "warn_above_target", None)
        if warns is not None:  # this callback says it below (raises, or is allowed to keep it)
            self.pruner.warn_above_target = False
        try:
            with _shown_on_rank_zero(trainer):
                changed = finalize_masks is not None and finalize_masks()
        finally:
            if warns is not None:
                self.pruner.warn_above_target = warns
        # rank 0's own warnings are said inside its try below: one made an error there
        # (-W error) before the barrier left the other ranks waiting (review108 F9)
        said: list[Callable[[], None]] = []
        if changed:
            fxdist.broadcast_masks(self.prepared, check=self.check_masks)
            saved = [path for cb in trainer.checkpoint_callbacks
                     for path in (getattr(cb, "last_model_path", ""), getattr(cb, "best_model_path", ""))
                     if path]
            if saved and trainer.is_global_zero:  # break34 #3: early stopping, max_time
                said.append(functools.partial(
                    warnings.warn,
                    f"{type(self.pruner).__name__}'s final selection came at the end of the fit "
                    f"(step {self._method_steps(trainer)}, {self._why_pick_at_end()}), "
                    f"after the last checkpoint ({saved[0]}), which holds an exploring active set; "
                    "the saved and in-memory models are final: trainer.save_checkpoint(PATH) "
                    "now saves one that is", RuntimeWarning, stacklevel=2))
        target, cost = getattr(self.pruner, "target", None), method_cost(self.pruner, self.method)
        above = isinstance(target, (int, float)) and cost > float(target) * (1 + 1e-6)
        if above and self.allow_above_target and trainer.is_global_zero:
            # kept as allowed, but said (break54 #10: the method's own warning is off here)
            said.append(functools.partial(
                warn, f"the fit ended at step {self._method_steps(trainer)} with the model at cost "
                f"{cost:.4f} of dense, above the target {float(target):.4f}; kept "
                "(allow_above_target=True)", RuntimeWarning))
        if above and not self.allow_above_target:  # every rank: the masks are rank 0's
            from fxprune.errors import TargetNotReachedError

            raise TargetNotReachedError(
                f"the fit ended at step {self._method_steps(trainer)} with the model at cost "
                f"{cost:.4f} of dense, above the target {float(target):.4f}: "
                f"{self._why_above(trainer)}"
                f"{'; nothing was saved to ' + str(self.save_path) if self.save_path else ''}; "
                "or pass PruningCallback(allow_above_target=True) to keep it")
        # the other ranks wait while rank 0 saves: under DDP every rank runs the code after
        # fit(), and rank 1's load of save_path found no file (break107 F2); rank 0 reaches the
        # barrier whatever happens, so a failed save leaves no rank waiting
        if not trainer.is_global_zero:
            trainer.strategy.barrier("fxprune_finalized")
            failed = fxdist.broadcast_object(None)
            if failed:  # (break155 F6: this rank went on to code after fit() that finds no file)
                raise RuntimeError(f"PruningCallback: rank 0 failed to finalize or save the "
                                   f"pruned model ({failed}); see rank 0's error")
            return
        failed = "stopped"
        try:
            for say in said:
                say()
            if isinstance(target, (int, float)):
                self._warn_best_above_target(trainer, float(target))
            self.finalized = fxprune.finalize(self.prepared)
            if self.save_path is not None:
                self.save_path.parent.mkdir(parents=True, exist_ok=True)
                # the file fxprune train writes: a copy in eval mode, on the CPU (break155 F4:
                # train-mode BatchNorm after torch.load used batch statistics, and each
                # inference call moved its running statistics)
                save_module(self.finalized, self.save_path,
                            getattr(self.finalized, "fxprune_input_shape", None)
                            or getattr(self.prepared, "fxprune_input_shape", None))
                self._saved = _file_id(self.save_path)
            failed = None
        except Exception as exc:
            failed = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            trainer.strategy.barrier("fxprune_finalized")
            fxdist.broadcast_object(failed)

    def _why_pick_at_end(self) -> str:
        """Why the method's final pick came at the end of the fit, not at its explore step."""
        explore = getattr(self.pruner, "explore", None)
        if explore is not None:
            return (f"before its explore step {explore}: early stopping, max_time, fewer "
                    "optimizer steps than Lightning estimated, or an explore past the fit, as a "
                    "resume on another number of devices sets it (from the whole fit at the new "
                    "rate: break133 F1); pass explore= to the callback to fix the step")
        if getattr(self.pruner, "step_count", 0) <= getattr(self.pruner, "warmup", 0):
            return "in its warm-up: the fit was shorter than its warmup"
        # (review108 F3: a fit of unknown length has no explore step either)
        return "with no explore step: Lightning did not know the fit's length"

    # -- checkpointing -------------------------------------------------------------------------
    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        if self.pruner is not None:
            # the cost each checkpoint holds, for the end's check of the best one (break155 F3),
            # in the file too: a resumed fit's best may be an earlier process's (review157 F7)
            cost = method_cost(self.pruner, self.method)
            checkpoint.setdefault("fxprune_cost", {})[self.state_key] = cost
            if isinstance(checkpoint.get("global_step"), int):
                self._checkpoint_costs[checkpoint["global_step"]] = cost

    def _warn_best_above_target(self, trainer: pl.Trainer, target: float) -> None:
        """Say when a ModelCheckpoint's best checkpoint (by its monitored metric) holds a
        model above the target (break155 F3: accuracy dips while channels go, so the best
        by val_acc was the dense model from before pruning, and trainer.test(ckpt_path=
        "best") reported it silently)."""
        for cb in trainer.checkpoint_callbacks:
            best = getattr(cb, "best_model_path", "")
            if not best or getattr(cb, "monitor", None) is None or not os.path.isfile(best):
                continue
            try:
                saved = torch.load(best, map_location="cpu", weights_only=True, mmap=True)
            except Exception:  # noqa: BLE001 - not a checkpoint this process can read
                continue
            step = saved.get("global_step")
            cost = (saved.get("fxprune_cost") or {}).get(self.state_key,
                                                         self._checkpoint_costs.get(step))
            if isinstance(cost, (int, float)) and cost > target * (1 + 1e-6):
                warn(
                    f"PruningCallback: the best checkpoint by {cb.monitor} ({best}, step {step}) "
                    f"holds the model at cost {cost:.4f} of dense, above the target "
                    f"{target:.4f}: it was saved before {self.method} reached its target (the "
                    "metric dips while channels go); evaluate callback.finalized or the "
                    "save_path file, or have ModelCheckpoint monitor only after the schedule's "
                    "end (e.g. a metric logged from then on)", RuntimeWarning)

    def state_dict(self) -> dict[str, Any]:
        if self.pruner is None:
            return dict(self._pending_state or {})
        if self._trained_state is not None:  # saved after the fit ended
            state = self._trained_state
        else:
            if getattr(self.pruner, "sync_state", None) is not None:
                # every rank calls this (Lightning's save_checkpoint): statistics summed onto
                # rank 0
                self.pruner.sync_state()
            state = self.pruner.state_dict()
        if not self._state_checked:  # the first one saved loads with weights_only=True
            refuse_unloadable_state(self.pruner, self.method, state, read_by=_READ_BY)
            self._state_checked = True
        # its step count: a load_state_dict that does not bring it back is refused (break198 F3)
        return {"method": self.method, "state": state,
                "step_count": getattr(self.pruner, "step_count", None),
                **({"measured_cost": self._measured_cost} if self._measured_cost else {})}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if state_dict.get("method") != self.method:
            raise ArgumentError(f"this checkpoint holds the state of pruning method "
                                f"{state_dict.get('method')!r}, not {self.method!r}")
        # a checkpoint's state wins over where an earlier fit of this callback left the method
        # (a refit from an earlier checkpoint went on from the end of the first fit: break33 #3)
        self._trained_state = None
        if state_dict.get("measured_cost") is not None:
            self._measured_cost = state_dict["measured_cost"]
        if self.pruner is None:  # Lightning restores callbacks before on_fit_start builds it
            self._pending_state = state_dict
        else:
            self._load(state_dict)

    def _load(self, state_dict: dict) -> None:
        self.pruner.load_state_dict(state_dict["state"])
        check_resumed_steps(self.pruner, self.method, state_dict.get("step_count"))
        self._pending_state = None

    @staticmethod
    def _overflowed(trainer: pl.Trainer, optimizer) -> bool:
        """True on a 16-bit AMP step the grad scaler skips (inf/NaN gradients): no importance
        from it. The scaler reads the same flag on the host right after this hook anyway."""
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        found = getattr(scaler, "_found_inf_per_device", None)
        if found is None:
            return False
        per_device = found(optimizer)
        return bool(sum(v.item() for v in per_device.values())) if per_device else False


__all__ = ["PruningCallback", "find_prepared"]
