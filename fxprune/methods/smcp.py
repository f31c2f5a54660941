"""SMCP: Soft Masking for Cost-Constrained Channel Pruning (Humble et al., ECCV 2022).

    pm = fxprune.prepare(model, (x,))
    pruner = fxprune.SMCP(pm, target=0.5, cost="flops", warmup=500, ramp=5000, update_every=200)
    for x, y in loader:
        criterion(pm(x), y).backward()
        pruner.step()              # importance; on schedule, re-solve the knapsack
        optimizer.step(); optimizer.zero_grad()
    pruner.finalize_masks()        # warns if the masks cost more than the target (stopped early)
    small = fxprune.finalize(pm)

Masks prune input channels with a straight-through estimator (masked weights keep learning, so
channels can come back at a later update); importance is the Taylor score of the unmasked
weights; every ``update_every`` steps a multiple-choice knapsack over all groups picks how
many channels each keeps so that the cost stays under a target that ramps down from 1.0.

Devices and mixed precision: the pruner follows the prepared model's device and dtype (build
it before or after ``pm.cuda()``; a ``state_dict`` holds CPU tensors and resumes on any
device). ``step()`` queues its work on the model's device without waiting for it: the only
device-to-host copies happen at mask updates. With ``torch.autocast`` and a
``torch.amp.GradScaler``, call ``pruner.step()`` after ``scaler.unscale_(optimizer)`` (the
importance needs the true, unscaled gradients) and before ``scaler.step(optimizer)``::

    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = criterion(pm(x), y)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    pruner.step()
    scaler.step(optimizer); scaler.update(); optimizer.zero_grad()

A step whose gradients hold inf/nan (the scaler's overflow steps, which ``scaler.step`` also
skips) is left out of the importance average and counted in the update record's
``skipped_steps``.

Two options damp what a mask change costs (see ``benchmarks/results/smcp_ablation.md``):
``hysteresis=h`` (default 3) ranks every currently kept channel's importance as ``(1 + h)``
times its score at an update, so a masked channel must score more than ``1 + h`` times a kept
one to come back (on a short schedule, channel churn cost 5 pt of accuracy: soft masks with
no margin 75.3%, ``h=3`` 80.1%, hard masks 80.9%; ``hysteresis=0`` is SMCP as published);
``bn_recalibrate=n`` replaces the running statistics of every BatchNorm after an update that
changed the masks by their average over the training batches of the next ``n`` steps (``n x
k`` batches under ``k``-fold gradient accumulation; cumulative average,
``momentum=None`` around each training forward, the layer's own otherwise), so evaluation
right after a re-solve does
not use statistics of the old masks; it reuses the training forwards (no extra passes, no
data kept). Default 0: it raised mid-ramp accuracy, and final accuracy by 0.5 pt without a
margin, but not the final accuracy once churn was damped.

``bn_rescale="kept_fraction"`` is SMCP's BatchNorm rescaling: the BN right after a layer with
masked inputs uses ``gamma * sum(m) / C_in``. Default ``"off"``: a BN in training mode already
normalises away the smaller output of a layer that lost inputs, so the factor only shrinks
that BN's output, e.g. the residual branch of a block whose inner width was halved, for the
rest of training (gamma grows back against weight decay). With ``hysteresis=3`` turning it
off gained 1.6 pt on the short schedule (3 of 3 seeds) and 0.14 pt on the 10-epoch recipe (2
of 3; ``benchmarks/results/smcp_bn_rescale.md``); without a margin (heavy churn) it lost 0.4 pt.

Baselines on the same engine: ``masks="hard"`` (gradients masked, pruned channels never come
back, as HALP), ``importance="magnitude"`` and ``allocation="uniform"`` (every group keeps the
same fraction instead of the global knapsack).
"""
from __future__ import annotations

import copy
import inspect
import time

import numpy as np
import torch
from torch import fx

from fxprune.passes.bn_rescale import insert_bn_rescale

from ..errors import ArgumentError, warn
from ..allocation import (DEFAULT_MAX_RESOLVES, allocate, allocate_uniform, allowed_counts,
                          ranked_options)
from ..importance import ImportanceAccumulator
from ..knapsack import DEFAULT_RESOLUTION
from ..masks import MethodHook, set_straight_through, strip_method_hooks
from ..schedule import PruningSchedule
from ..checks import check_fraction, check_number
from .base import PruningMethod, resolve_cost_model, trainable_state

__all__ = ["SMCP", "one_shot", "damp_churn", "allowed_counts", "resolve_cost_model"]


def _plain(record: dict) -> dict:
    """numpy scalars as Python numbers (the weights-only unpickler refuses numpy objects)."""
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in record.items()}


def damp_churn(scores: np.ndarray, kept: np.ndarray, margin: float) -> np.ndarray:
    """Hysteresis for mask updates: the scores of currently kept channels times ``1 + margin``
    (scores are non-negative), so a masked channel replaces a kept one only when its score is
    more than ``1 + margin`` times larger. ``scores``, ``kept``: flat arrays over all
    channels. Returns a new array; ``margin=0`` returns the scores unchanged."""
    if not margin:
        return scores
    return np.where(kept, scores * (1.0 + margin), scores)


def _check_args(**args) -> None:
    """One-line ValueErrors for SMCP's numeric and named arguments."""
    def number(name, low=None, high=None, **kind):
        check_number(name, args[name], low, high, **kind)

    check_fraction("target", args["target"], "the fraction of the dense cost to keep")
    for name in ("warmup", "ramp"):
        number(name, 0, integer=True)
    for name in ("update_every", "channel_step", "resolution", "max_resolves"):
        number(name, 1, integer=True)
    if args["freeze_after"] is not None:
        number("freeze_after", 0, integer=True)
    number("momentum", 0, 1, open_high=True)
    number("masked_decay", 0)
    number("hysteresis", 0)
    number("bn_recalibrate", 0, integer=True)
    if args["bn_rescale"] not in ("kept_fraction", "off"):
        raise ArgumentError(f"bn_rescale must be 'kept_fraction' (SMCP) or 'off', got "
                            f"{args['bn_rescale']!r}")
    schedule = args["schedule"]
    if schedule is not None and not isinstance(schedule, PruningSchedule):
        raise ArgumentError(f"schedule must be a fxprune.PruningSchedule (or None: built from warmup, "
                            f"ramp, update_every, freeze_after), got {type(schedule).__name__}")


def _tracks_statistics(module: torch.nn.Module) -> bool:
    """A BatchNorm whose running statistics ``bn_recalibrate`` re-estimates."""
    return isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.track_running_stats


def _check_reaches_target(schedule: PruningSchedule, target: float) -> None:
    freeze, end = schedule.freeze_after, schedule.ramp_end
    if target < 1 and freeze is not None and freeze < end:
        how = (f"warmup {schedule.warmup} + ramp {schedule.ramp}" if schedule.ramp else
               f"no ramp: the first step after warmup {schedule.warmup}")
        raise ArgumentError(f"freeze_after={freeze} stops mask updates before the ramp ends at step "
                            f"{end} ({how}), so the target would never be reached; freeze later or "
                            "shorten the warm-up or ramp")


class SMCP(PruningMethod):
    """SMCP (Humble et al., ECCV 2022) on a prepared model: soft input-channel masks, Taylor
    importance, a global knapsack under a cost target that ramps down (see the module's
    docstring for the loop, mixed precision and the options' evidence).

    Args:
        prepared: the model :func:`fxprune.prepare` returned.
        target: fraction of the dense cost to keep at the end of the ramp, in (0, 1].
        cost: ``"flops"``, ``"params"``, or a :class:`fxprune.CostModel`: a measured
            latency, ``fxprune.deploy.latency_cost(prepared, "latency")`` (an ONNX Runtime
            table; ``"latency+fixed"``: with its fitted constant), measured by the caller: a
            method does not time anything.
        warmup, ramp, update_every, freeze_after: the schedule, in optimizer steps (calls of
            :meth:`step`): dense for ``warmup``, the target going from 1 to ``target`` over
            ``ramp`` (``ramp_shape`` ``"exp"`` or ``"linear"``), masks re-solved every
            ``update_every``, fixed after ``freeze_after`` (None: never); or ``schedule``, a
            :class:`fxprune.PruningSchedule`.
        importance: ``"taylor"`` (``|sum W dL/dW|`` over a channel's readers) or
            ``"magnitude"`` (the L2 norm of its readers' input columns ``W[:, i]``, not of
            the producing filter as in filter-norm pruning); ``accumulate`` ``"mean"`` over the steps between updates or
            ``"momentum"`` (``momentum``, in [0, 1)).
        masks: ``"soft"`` (straight-through: masked weights keep learning) or ``"hard"``
            (HALP-style; pruned channels never come back).
        allocation: ``"knapsack"`` (global) or ``"uniform"`` (the same fraction per group).
        channel_step: widths offered per group are multiples of it (8 for GPU kernels).
        min_kept: the share it keeps at least, in [0, 1], of every group's channels and of
            each layer's part of a group (a conv writing one piece of a concatenated group),
            each rounded up, counted in the group's positions (0.25: no layer loses more
            than 3/4 of its channels, but where a channel shuffle ties one position to several
            of a layer's input channels, as in shufflenet_v2, that input may; Torch-Pruning's
            ``max_pruning_ratio`` is ``1 - min_kept``): a floor against layer collapse,
            which a global allocation can otherwise drive to ``channel_step`` channels.
        bn_rescale: ``"off"`` or ``"kept_fraction"`` (SMCP's gamma scaling).
        masked_decay: extra weight decay on masked-out weights only (``masked_decay * W``
            added to their gradient at each step).
        resolution, max_resolves: the knapsack's cost grid and its re-solves when the real
            cost overshoots the grid's estimate.
        hysteresis: margin a masked channel must beat kept ones by to come back (0: as
            published).
        bn_recalibrate: steps of batch-norm statistics recalibration after a mask change.

    Raises:
        ValueError: an argument out of range, a schedule that freezes before the ramp ends,
            or a target below what the narrowest allowed widths cost
            (:class:`fxprune.InfeasibleBudget`).
    """

    name = "smcp"
    state_keys = ("step", "importance", "masks", "dead", "history")

    @trainable_state
    def __init__(self, prepared: fx.GraphModule, target: float = 0.5, cost="flops", *,
                 warmup: int = 0, ramp: int = 1000, update_every: int = 100,
                 freeze_after: int | None = None, ramp_shape: str = "exp",
                 schedule: PruningSchedule | None = None, importance: str = "taylor",
                 accumulate: str = "mean", momentum: float = 0.9, masks: str = "soft",
                 allocation: str = "knapsack", channel_step: int = 8,
                 bn_rescale: str = "off", masked_decay: float = 0.0,
                 resolution: int = DEFAULT_RESOLUTION, max_resolves: int = DEFAULT_MAX_RESOLVES,
                 hysteresis: float = 3.0, bn_recalibrate: int = 0, min_kept: float = 0.0):
        _check_args(target=target, warmup=warmup, ramp=ramp, update_every=update_every,
                    freeze_after=freeze_after, momentum=momentum, channel_step=channel_step,
                    masked_decay=masked_decay, resolution=resolution, max_resolves=max_resolves,
                    bn_rescale=bn_rescale, schedule=schedule, hysteresis=hysteresis,
                    bn_recalibrate=bn_recalibrate)
        if masks not in ("soft", "hard"):
            raise ArgumentError(f"masks must be 'soft' (SMCP) or 'hard' (HALP-style), got {masks!r}")
        if allocation not in ("knapsack", "uniform"):
            raise ArgumentError(f"allocation must be 'knapsack' or 'uniform', got {allocation!r}")
        defaults = inspect.signature(SMCP.__init__).parameters  # (not copied by hand: review108 F11)
        given = [f"{k}={v!r}" for k, v in (
            ("warmup", warmup), ("ramp", ramp), ("update_every", update_every),
            ("freeze_after", freeze_after), ("ramp_shape", ramp_shape)) if v != defaults[k].default]
        if schedule is not None and given:  # (break105 F2: they were dropped without a word)
            raise ArgumentError(f"schedule= replaces warmup, ramp, update_every, freeze_after and "
                                f"ramp_shape, but {', '.join(given)} was given too: pass the "
                                "schedule alone, or those arguments alone")
        schedule = schedule or PruningSchedule(warmup, ramp, update_every, freeze_after, ramp_shape)
        _check_reaches_target(schedule, float(target))
        super().__init__(prepared, cost, channel_step, min_kept)
        self.target = float(target)
        # its own copy: an edit of the caller's object after this check skipped it (break111 F5)
        self.schedule = copy.copy(schedule)
        self._schedule_checked = (copy.copy(self.schedule), self.target)
        self.masks_kind, self.allocation = masks, allocation
        self.masked_decay, self.resolution, self.max_resolves = masked_decay, resolution, max_resolves
        self.importance = ImportanceAccumulator(self.consumers, self.index.n, importance, accumulate, momentum)
        if self.importance.kind == "taylor":
            self._warn_frozen_readers("Taylor importance", "Unfreeze them while pruning, or use "
                                      "importance='magnitude'")
        self.bn_rescale = bn_rescale
        self.rescaled_bns = insert_bn_rescale(prepared, bn_rescale)
        set_straight_through(prepared, masks == "soft")
        self.dead = np.zeros(self.index.n, dtype=bool)  # hard masks: pruned for good
        # Host-side copy of the masks as of construction / the last update / load: step() reads
        # it instead of copying the masks off the device every step.
        self._kept_host = self._kept_now()
        self.skipped_updates = 0  # updates due with no gradient evidence (see update)
        self.hysteresis, self.bn_recalibrate = float(hysteresis), int(bn_recalibrate)
        # BatchNorms whose running statistics are re-estimated after a mask change: during the
        # window their training forwards run with momentum=None (hooks set it around each
        # forward, so their own momentum is what a checkpoint, finalize or fine-tuning sees)
        self._bns = {name: m for name, m in prepared.named_modules() if _tracks_statistics(m)}
        self._recalibrating = 0  # training batches left in the current re-estimation window
        self._own_momentum: float | None = None
        self._swapped = False  # a BatchNorm's momentum is the window's now (see below)
        #: batches each BatchNorm averaged in the window (host ints; by id: modules may hash)
        self._batches_averaged: dict[int, int] = {}
        if self.bn_recalibrate:
            self._hook_norms()
        self.check_reachable(self.target)

    def _hook_norms(self) -> None:
        """bn_recalibrate's hooks on every BatchNorm that tracks running statistics."""
        for bn in self._bns.values():
            self._hook_norm(bn)

    def _hook_norm(self, bn: torch.nn.Module) -> None:
        bn.register_forward_pre_hook(MethodHook(self._cumulative_average))
        bn.register_forward_hook(MethodHook(self._momentum_back), always_call=True)

    def _follow_replaced_norms(self) -> None:
        """BatchNorms swapped for others since the pruner was built (break117 F13:
        ``nn.SyncBatchNorm.convert_sync_batchnorm(prepared)`` for DDP builds new modules,
        without the hooks): recalibrate the ones the model now holds, not the old ones."""
        for name, bn in list(self._bns.items()):
            try:
                now = self.prepared.get_submodule(name)
            except AttributeError:  # removed: nothing of the model's to recalibrate there
                del self._bns[name]
                continue
            if now is not bn:
                if _tracks_statistics(now):
                    self._bns[name] = now
                    self._hook_norm(now)
                else:
                    del self._bns[name]

    def _after_copy(self) -> None:
        # a copied model holds no-ops where the hooks were: this copy's own go in their place
        # (break117 F1: a run resumed from a pickle, or branched by a deep copy, silently
        # stopped recalibrating; its BatchNorm statistics drifted from the uninterrupted run's)
        if self.bn_recalibrate:
            for bn in self._bns.values():
                strip_method_hooks(bn, detached_only=True, recurse=False)
            self._hook_norms()
        # the counts are keyed by the norms' ids, which a copy's norms do not share: each
        # reads its counter once (another norm may have an old id in a new process)
        self._batches_averaged = {}

    # -- the training-loop API ------------------------------------------------------------------
    def step(self, loss=None) -> dict | None:
        """Call after ``loss.backward()`` and before ``optimizer.step()``. Returns the update's
        record when masks were re-solved at this step, else None. (``loss`` is not needed: the
        importance comes from the weights' gradients.)"""
        # (getattr: a pickle from before this check has none, and is checked once)
        if getattr(self, "_schedule_checked", None) != (self.schedule, self.target):
            self._recheck_schedule()
        self.step_count += 1
        self.check_step()
        if self._recalibrating:  # this step's forward went into the BN averages
            self._recalibrating -= 1
        observing = self._observing(self.step_count)
        decaying = bool(self.masked_decay) and not self._kept_host.all()
        if observing or decaying:
            flat = self._device_masks()
            if observing:
                self.importance.observe(flat)
            if decaying:
                self._decay_masked(flat)
        if self.schedule.updates_at(self.step_count):
            return self.update()
        return None

    def _recheck_schedule(self) -> None:
        """The constructor's checks again, for ``pruner.schedule`` or ``pruner.target`` edited
        after it ran (break117 F7: a freeze moved before the ramp's end ran unpruned to the end,
        and only finalize_masks said so)."""
        if not isinstance(self.schedule, PruningSchedule):
            raise ArgumentError(f"pruner.schedule was set to a {type(self.schedule).__name__}: give "
                                "a fxprune.PruningSchedule")
        check_fraction("target", self.target, "the fraction of the dense cost to keep")
        self.target = float(self.target)
        before = getattr(self, "_schedule_checked", (None, None))[1]
        freeze = self.schedule.freeze_after
        # (break124 #6: "train on" could never help; review125 F5: one the frozen masks meet
        # already is fine)
        if (before is not None and self.target < before and freeze is not None
                and self.step_count >= freeze and self.cost() > self.target + 1e-9):
            raise ArgumentError(f"pruner.target was lowered to {self.target:g} at step "
                                f"{self.step_count}, below the frozen masks' cost {self.cost():.4g} "
                                f"(freeze_after={freeze}): no update comes to reach it; set it "
                                "before the freeze, or prune the finalized model again (README, "
                                "pruning again)")
        try:
            _check_reaches_target(self.schedule, self.target)
        except ValueError as e:
            raise ArgumentError(f"pruner.schedule or pruner.target was changed after the pruner was "
                                f"built: {e}") from None
        self.check_reachable(self.target)  # (review123 #2: below the floor, said mid-ramp)
        self._schedule_checked = (copy.copy(self.schedule), self.target)

    def _observing(self, step: int) -> bool:
        """Importance only matters in the window before an update: skip the pass over every
        weight early in warm-up and once masks are frozen. The first update's window is the
        last ``update_every`` steps of warm-up as well (2 x ``update_every`` steps, all under
        the all-ones masks: more evidence for the first pick; review127 F4)."""
        s = self.schedule
        if s.freeze_after is not None and step > s.freeze_after:
            return False
        return step > s.warmup - s.update_every

    def target_now(self) -> float:
        """The cost budget at this step, a fraction of dense (the schedule's ramp)."""
        return self.schedule.target(self.step_count, self.target)

    # -- the update ----------------------------------------------------------------------------
    def update(self) -> dict | None:
        """Re-solve the masks for the current target; returns the update's record.

        With Taylor importance and no gradient seen since the last update (``step()`` called
        before ``loss.backward()``, or after ``zero_grad``), or only non-finite ones (every step
        a loss-scaler overflow), there is no evidence to rank channels by: the update is skipped with a ``RuntimeWarning`` (counted in
        ``skipped_updates``) and None returned, rather than ranking all-zero scores.
        """
        # count: steps observed (host); finite: those averaged (one read, once an update)
        finite, skipped = self.importance.step_counts()
        if self.importance.kind == "taylor" and (self.importance.count == 0 or finite == 0):
            self.skipped_updates += 1
            why = ("no gradients were seen since the last update, so channels cannot be ranked. "
                   "Call pruner.step() after loss.backward() and before optimizer.zero_grad()"
                   if self.importance.count == 0 else
                   f"every one of the {self.importance.count} steps since the last update had "
                   "inf/nan gradients (loss-scaler overflows, or a diverged run), so channels "
                   "cannot be ranked; the masks stay as they are")
            if self.importance.count == 0:
                why += self._no_gradient_cause()
            warn(f"SMCP: mask update at step {self.step_count} skipped: {why}",
                 RuntimeWarning)
            return None
        self.check_training()
        start = time.perf_counter()
        target = self.target_now()
        before = self._kept_now()
        scores = self.importance.scores()
        if self.importance.kind == "taylor" and not scores.any():
            # gradients of zeros, not None: zero_grad(set_to_none=False) before step() (break152
            # F4: ranked on all-zero scores, a group cut to 3 of 32 channels by tie-breaks)
            self.skipped_updates += 1
            self.importance.reset()
            warn(f"SMCP: mask update at step {self.step_count} skipped: every Taylor score since "
                 "the last update is 0 (the gradients pruner.step() saw were all zeros: "
                 "optimizer.zero_grad(set_to_none=False) before it?), so channels cannot be "
                 "ranked. Call pruner.step() after loss.backward() and before "
                 "optimizer.zero_grad()", RuntimeWarning)
            return None
        if not np.isfinite(scores).all():  # Taylor drops such steps; weights can hold them too
            broken = [c.module for c in self.consumers if not bool(torch.isfinite(c.param).all())]
            raise FloatingPointError(
                f"SMCP: mask update at step {self.step_count}: {int((~np.isfinite(scores)).sum())}"
                f" channel importance scores ({self.importance.kind}) are inf/nan"
                + (f", from the weights of {', '.join(broken)}" if broken else "")
                + ": the run has diverged; lower the learning rate or resume from a checkpoint "
                "taken before")
        scores = damp_churn(scores, before, self.hysteresis)
        options = self._options(scores)
        widths = self._widths()
        if self.allocation == "knapsack":
            result = allocate(options, self.budget, target, before, resolution=self.resolution,
                              max_resolves=self.max_resolves, widths=widths)
        else:
            result = allocate_uniform(options, self.budget, target, [g.size for g in self.index.groups],
                                      widths=widths)
        kept, predicted, solved, resolves = result.kept, result.predicted, result.solved_actual, result.resolves
        self.index.set_masks(self.prepared, kept.astype(np.float32))
        if self.masks_kind == "hard":
            self.dead |= ~kept
        self._kept_host = kept.copy()
        changed = bool((kept != before).any())
        if changed and self.bn_recalibrate:
            self._start_bn_recalibration()
        self.importance.reset()
        actual = self.budget.fraction(kept)
        record = {
            # predicted: the knapsack's estimate of its first answer, solved_actual: that answer's
            # real cost, error: their relative gap; actual: cost after re-pricing and repair
            "step": self.step_count, "target": target, "predicted": predicted,
            "solved_actual": solved, "error": (predicted - solved) / solved, "actual": actual,
            "kept": int(kept.sum()), "channels": self.index.n,
            "returned": int((kept & ~before).sum()), "pruned": int((~kept & before).sum()),
            "resolves": resolves, "skipped_steps": skipped, "solve_s": time.perf_counter() - start,
            "bn_recalibrated": changed and self.bn_recalibrate > 0,
        }
        self.history.append(record)
        # once re-solved (review130 F5, review131 F5: a skip, or a refusal, re-solves nothing)
        final = self._masks_finalized_at
        if final is not None and self.step_count > final and not getattr(self, "_said_after_final", False):
            self._said_after_final = True  # (break128 F3: 30 entries changed, unsaid)
            warn(f"SMCP: masks re-solved at step {self.step_count}, after finalize_masks() at "
                 f"step {final} left them: fxprune.finalize now removes these; call "
                 "finalize_masks() after the last step (or stop stepping the pruner once it "
                 "has run)", RuntimeWarning)
        return record

    def _options(self, scores):
        """Per group: keep the top-k by importance, for every allowed k (dead channels last);
        for the knapsack, the narrowest model the constructor priced too (uniform widths take
        top-k)."""
        options = []
        for i, g in enumerate(self.index.groups):
            sl = self.index.group_slice(i)
            s = scores[sl].astype(np.float64)
            dead = self.dead[sl]
            order, min_k = self.index.ranking(i, np.where(dead, -np.inf, s))
            alive = int((~dead).sum())
            k = allowed_counts(g.size, self.channel_step, min_k, max(alive, min_k),
                               self.index.unit_channels[i])
            values = np.where(dead, 0.0, s)
            ranked = ranked_options(values, order, k)
            options.append(self._with_floor(i, ranked, values, dead)
                           if self.allocation == "knapsack" else ranked)
        return options

    # -- BatchNorm re-estimation ---------------------------------------------------------------
    @torch.no_grad()
    def _start_bn_recalibration(self) -> None:
        """Forget the statistics gathered under the old masks: the next ``bn_recalibrate``
        training forwards set them as their cumulative average (torch's ``momentum=None``
        with the batch count at 0, so the first batch replaces them). The old statistics are
        not reset: if no training batch follows (training ends at an update), they stay."""
        self._follow_replaced_norms()
        for bn in self._bns.values():
            bn.num_batches_tracked.zero_()
        self._batches_averaged = {id(bn): 0 for bn in self._bns.values()}
        self._recalibrating = self.bn_recalibrate

    def _cumulative_average(self, bn, args) -> None:
        if self._recalibrating and bn.training:
            # torch's momentum=None average, 1 / (batches since the reset), from a count kept
            # on the host: momentum=None reads num_batches_tracked from the device at every
            # forward (break166 F2). A resumed window reads it once, to go on from there.
            seen = self._batches_averaged.get(id(bn))
            if seen is None:
                seen = int(bn.num_batches_tracked)
            self._batches_averaged[id(bn)] = seen + 1
            self._own_momentum, bn.momentum, self._swapped = bn.momentum, 1.0 / (seen + 1), True

    def _momentum_back(self, bn, args, output) -> None:
        if self._swapped:
            bn.momentum, self._own_momentum, self._swapped = self._own_momentum, None, False

    # -- helpers -----------------------------------------------------------------------------------
    def _device_masks(self) -> torch.Tensor:
        """All masks as one flat tensor on the model's device (no host copy)."""
        tensors = self.index.mask_tensors(self.prepared)
        return torch.cat([t.detach() for t in tensors])

    @torch.no_grad()
    def _decay_masked(self, flat: torch.Tensor) -> None:
        """SMCP's extra weight decay, only on masked-out weights (added to their gradient).
        ``step`` skips it while the pruner's last masks keep every channel."""
        self.importance.follow_model()
        for c in self.consumers:
            if c.param.grad is None:
                continue
            ext = torch.cat([flat.to(c.param.device, c.param.dtype), c.param.new_ones(1)])
            shape = [1] * c.param.ndim
            shape[c.dim] = -1
            off = (ext[c.in_flat] == 0).to(c.param.dtype).view(shape)
            c.param.grad.addcmul_(c.param, off, value=self.masked_decay)  # one fused pass

    def defining_settings(self) -> dict:
        settings = {"masks": str(self.masks_kind), "allocation": str(self.allocation),  # plain
                    "importance": str(self.importance.kind)}  # str: weights_only=True loads it
        if self.importance.kind == "taylor":  # a running mean read as an average: wrong scale
            settings["accumulate"] = str(self.importance.accumulate)
        return settings

    def run_settings(self) -> dict:
        # everything else that changes what a step does (break35 #1: hysteresis, channel_step...
        # changed silently on resume, and a default that changed between versions with them)
        settings = {"schedule": self.schedule.state(), "target": self.target,
                    **self._allocation_settings(), "hysteresis": self.hysteresis,
                    "masked_decay": float(self.masked_decay), "bn_recalibrate": self.bn_recalibrate}
        if getattr(self.importance, "accumulate", None) == "momentum":
            settings["momentum"] = float(self.importance.momentum)
        return settings

    # -- resuming ------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Tensors and plain Python data only: loadable with ``torch.load(weights_only=True)``;
        CPU tensors, so a checkpoint saved on a GPU resumes on the CPU and the reverse."""
        return {**self.state_origin(), "step": self.step_count,
                "importance": self.importance.state_dict(), "masks": self.index.masks(self.prepared),
                "dead": torch.from_numpy(self.dead.copy()),
                "history": [_plain(r) for r in self.history], "schedule": self.schedule.state(),
                "target": self.target, "run_settings": self.run_settings(), "groups": self.signature(),
                "skipped_updates": self.skipped_updates, "bn_recalibrating": self._recalibrating,
                "bn_rescale": self.bn_rescale}

    @trainable_state
    def load_state_dict(self, state: dict) -> None:
        """Refuses a state saved for other groups (names or sizes differ), naming both, or with
        another ``bn_rescale`` (its default changed: a run would switch it mid-training)."""
        self._check_state(state, "masks")
        saved = state.get("bn_rescale")  # states saved before it was recorded do not say
        if saved is not None and saved != self.bn_rescale:
            raise ArgumentError(f"this SMCP state was saved with bn_rescale={saved!r}, the pruner has "
                                f"bn_rescale={self.bn_rescale!r}; build it with "
                                f"bn_rescale={saved!r} to resume that run")
        self._warn_changed_settings(state)  # allowed (e.g. pruning further), never silently
        self.skipped_updates = int(state.get("skipped_updates", 0))
        self.step_count = int(state["step"])
        self.importance.load_state_dict(state["importance"])
        # torch.load(map_location=...) may have put these on any device
        self.index.set_masks(self.prepared, state["masks"].detach().cpu())
        self.dead = state["dead"].detach().cpu().numpy().astype(bool).copy()
        self._kept_host = self._kept_now()
        self.history = list(state["history"])
        self._recalibrating = int(state.get("bn_recalibrating", 0))
        self._restart_training_check()

def one_shot(prepared: fx.GraphModule, target: float = 0.5, cost="flops", *, prune_at: int = 1,
             window: int = 1, importance: str = "magnitude", **kwargs) -> SMCP:
    """One-shot pruning baseline on SMCP's engine: at step ``prune_at`` (importance gathered
    over the ``window`` steps before it) the global allocator picks the channels under
    ``target`` and they are removed for good (hard masks); the remaining steps fine-tune."""
    clash = [k for k in one_shot.sets_itself if k in kwargs]
    if clash:
        raise ArgumentError(f"one-shot pruning sets {', '.join(clash)} itself (the schedule from "
                            f"prune_at and window, masks='hard', no hysteresis: one decision); "
                            f"remove {', '.join(clash)}")
    check_number("prune_at (the optimizer step, from 1, of the pruning)", prune_at, 1, integer=True)
    check_number("window", window, 1, integer=True)
    window = min(int(window), int(prune_at))
    # hysteresis favours the channels kept before an update: at the one update all are
    return SMCP(prepared, target, cost, warmup=int(prune_at) - window, ramp=0, update_every=window,
                freeze_after=int(prune_at), masks="hard", hysteresis=0.0, importance=importance,
                **kwargs)


#: SMCP's arguments one_shot sets; a recipe is told which of its keys to drop (break85 F4:
#: a hysteresis given was accepted and changed nothing)
one_shot.sets_itself = ("warmup", "ramp", "update_every", "freeze_after", "masks", "hysteresis",
                        # (break105 F2: a schedule made the one-shot decision a ramp)
                        "schedule", "ramp_shape")
#: where one_shot's other keywords go: a recipe's prune keys are checked against SMCP's
one_shot.forwards_kwargs_to = SMCP
