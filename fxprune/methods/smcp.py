"""SMCP: Soft Masking for Cost-Constrained Channel Pruning (Humble et al., ECCV 2022).

    pm = fxprune.prepare(model, (x,))
    pruner = fxprune.SMCP(pm, target=0.5, cost="flops", warmup=500, ramp=5000, update_every=200)
    for x, y in loader:
        criterion(pm(x), y).backward()
        pruner.step()              # importance; on schedule, re-solve the knapsack
        optimizer.step(); optimizer.zero_grad()
    small = fxprune.finalize(pm)

Masks prune input channels with a straight-through estimator (masked weights keep learning, so
channels can come back at a later update); importance is the Taylor score of the unmasked
weights; the BN after a masked layer is rescaled by the kept fraction; every ``update_every``
steps a multiple-choice knapsack over all groups picks how many channels each keeps so that
the cost stays under a target that ramps down from 1.0.

Baselines on the same engine: ``masks="hard"`` (gradients masked, pruned channels never come
back, as HALP), ``importance="magnitude"`` and ``allocation="uniform"`` (every group keeps the
same fraction instead of the global knapsack).
"""
from __future__ import annotations

import time

import numpy as np
import torch
from torch import fx

from fxprune.passes.bn_rescale import insert_bn_rescale

from ..allocation import allocate, allocate_uniform, allowed_counts, ranked_options
from ..importance import ImportanceAccumulator
from ..knapsack import DEFAULT_RESOLUTION
from ..masks import _InputMasked
from ..schedule import PruningSchedule
from .base import PruningMethod, resolve_cost_model

__all__ = ["SMCP", "one_shot", "allowed_counts", "resolve_cost_model"]


class SMCP(PruningMethod):
    name = "smcp"

    def __init__(self, prepared: fx.GraphModule, target: float = 0.5, cost="flops", *,
                 warmup: int = 0, ramp: int = 1000, update_every: int = 100,
                 freeze_after: int | None = None, ramp_shape: str = "exp",
                 schedule: PruningSchedule | None = None, importance: str = "taylor",
                 accumulate: str = "mean", momentum: float = 0.9, masks: str = "soft",
                 allocation: str = "knapsack", channel_step: int = 8,
                 bn_rescale: str = "kept_fraction", masked_decay: float = 0.0,
                 resolution: int = DEFAULT_RESOLUTION, max_resolves: int = 6):
        if not 0 < target <= 1:
            raise ValueError(f"target is the fraction of the dense cost to keep, in (0, 1]; got {target}")
        if masks not in ("soft", "hard"):
            raise ValueError(f"masks must be 'soft' (SMCP) or 'hard' (HALP-style), got {masks!r}")
        if allocation not in ("knapsack", "uniform"):
            raise ValueError(f"allocation must be 'knapsack' or 'uniform', got {allocation!r}")
        super().__init__(prepared, cost, channel_step)
        self.target = float(target)
        self.schedule = schedule or PruningSchedule(warmup, ramp, update_every, freeze_after, ramp_shape)
        self.masks_kind, self.allocation = masks, allocation
        self.masked_decay, self.resolution, self.max_resolves = masked_decay, resolution, max_resolves
        self.importance = ImportanceAccumulator(self.consumers, self.index.n, importance, accumulate, momentum)
        self.bn_rescale = bn_rescale
        self.rescaled_bns = insert_bn_rescale(prepared, bn_rescale)
        for m in prepared.modules():
            if isinstance(m, _InputMasked):
                m.fxprune_straight_through = masks == "soft"
        self.dead = np.zeros(self.index.n, dtype=bool)  # hard masks: pruned for good

    # -- the training-loop API ------------------------------------------------------------------
    def step(self, loss=None) -> dict | None:
        """Call after ``loss.backward()`` and before ``optimizer.step()``. Returns the update's
        record when masks were re-solved at this step, else None. (``loss`` is not needed: the
        importance comes from the weights' gradients.)"""
        self.step_count += 1
        flat = self.index.masks(self.prepared)
        if self._observing(self.step_count):
            self.importance.observe(flat)
        if self.masked_decay:
            self._decay_masked(flat)
        if self.schedule.updates_at(self.step_count):
            return self.update()
        return None

    def _observing(self, step: int) -> bool:
        """Importance only matters in the window before an update: skip the pass over every
        weight early in warm-up and once masks are frozen."""
        s = self.schedule
        if s.freeze_after is not None and step > s.freeze_after:
            return False
        return step > s.warmup - s.update_every

    def target_now(self) -> float:
        return self.schedule.target(self.step_count, self.target)

    # -- the update ----------------------------------------------------------------------------
    def update(self) -> dict:
        start = time.perf_counter()
        target = self.target_now()
        scores = self.importance.scores()
        before = self._kept_now()
        options = self._options(scores)
        hint = f", channel_step={self.channel_step}"
        if self.allocation == "knapsack":
            result = allocate(options, self.budget, target, before, resolution=self.resolution,
                              max_resolves=self.max_resolves, hint=hint)
        else:
            result = allocate_uniform(options, self.budget, target, [g.size for g in self.index.groups],
                                      hint=hint)
        kept, predicted, solved, resolves = result.kept, result.predicted, result.solved_actual, result.resolves
        self.index.set_masks(self.prepared, kept.astype(np.float32))
        if self.masks_kind == "hard":
            self.dead |= ~kept
        self.importance.reset()
        actual = self.budget.fraction(kept)
        record = {
            # predicted: the knapsack's estimate of its first answer, solved_actual: that answer's
            # real cost, error: their relative gap; actual: cost after re-pricing and repair
            "step": self.step_count, "target": target, "predicted": predicted,
            "solved_actual": solved, "error": (predicted - solved) / solved, "actual": actual,
            "kept": int(kept.sum()), "channels": self.index.n,
            "returned": int((kept & ~before).sum()), "pruned": int((~kept & before).sum()),
            "resolves": resolves, "solve_s": time.perf_counter() - start,
        }
        self.history.append(record)
        return record

    def _options(self, scores):
        """Per group: keep the top-k by importance, for every allowed k (dead channels last)."""
        options = []
        for i, g in enumerate(self.index.groups):
            sl = self.index.group_slice(i)
            s = scores[sl].astype(np.float64)
            dead = self.dead[sl]
            order, min_k = self.index.ranking(i, np.where(dead, -np.inf, s))
            alive = int((~dead).sum())
            k = allowed_counts(g.size, self.channel_step, min_k, max(alive, min_k),
                               self.index.unit_channels[i])
            options.append(ranked_options(np.where(dead, 0.0, s), order, k))
        return options

    # -- helpers -----------------------------------------------------------------------------------
    @torch.no_grad()
    def _decay_masked(self, flat: torch.Tensor) -> None:
        """SMCP's extra weight decay, only on masked-out weights (added to their gradient)."""
        if bool((flat != 0).all()):
            return  # nothing masked yet: skip a pass over every weight
        for c in self.consumers:
            if c.param.grad is None:
                continue
            ext = torch.cat([flat.to(c.param.device, c.param.dtype), c.param.new_ones(1)])
            shape = [1] * c.param.ndim
            shape[c.dim] = -1
            off = (ext[c.in_flat] == 0).to(c.param.dtype).view(shape)
            c.param.grad.addcmul_(c.param, off, value=self.masked_decay)  # one fused pass

    # -- resuming ------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"step": self.step_count, "importance": self.importance.state_dict(),
                "masks": self.index.masks(self.prepared), "dead": torch.from_numpy(self.dead.copy()),
                "history": list(self.history), "schedule": self.schedule.state(), "target": self.target}

    def load_state_dict(self, state: dict) -> None:
        self._check_channels(state["masks"])
        self.step_count = int(state["step"])
        self.importance.load_state_dict(state["importance"])
        self.index.set_masks(self.prepared, state["masks"])
        self.dead = state["dead"].numpy().astype(bool).copy()
        self.history = list(state["history"])


def one_shot(prepared: fx.GraphModule, target: float = 0.5, cost="flops", *, prune_at: int = 1,
             window: int = 1, importance: str = "magnitude", **kwargs) -> SMCP:
    """One-shot pruning baseline on SMCP's engine: at step ``prune_at`` (importance gathered
    over the ``window`` steps before it) the global allocator picks the channels under
    ``target`` and they are removed for good (hard masks); the remaining steps fine-tune."""
    window = max(1, min(int(window), int(prune_at)))
    return SMCP(prepared, target, cost, warmup=int(prune_at) - window, ramp=0, update_every=window,
                freeze_after=int(prune_at), masks="hard", importance=importance, **kwargs)
