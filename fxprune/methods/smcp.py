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

Baselines on the same engine: ``masks="hard"`` (gradients masked, pruned channels never come
back, as HALP), ``importance="magnitude"`` and ``allocation="uniform"`` (every group keeps the
same fraction instead of the global knapsack).
"""
from __future__ import annotations

import math
import time
import warnings

import numpy as np
import torch
from torch import fx

from fxprune.passes.bn_rescale import insert_bn_rescale

from ..budget import Budget
from ..cost import CostModel, FlopsCost, ParamsCost
from ..knapsack import DEFAULT_RESOLUTION, solve_mckp
from ..importance import ImportanceAccumulator
from ..masks import _InputMasked
from ..schedule import PruningSchedule
from ..units import UnitIndex, consumer_weights, costed_layers


def resolve_cost_model(prepared: fx.GraphModule, cost, channel_step: int) -> tuple[CostModel, float]:
    """A cost model and the constant cost outside conv/linear layers it does not see."""
    if isinstance(cost, str):
        if cost == "flops":
            from ..summary import count_flops
            from ..groups import state_of
            from ..api import layer_specs
            dense = count_flops(prepared, state_of(prepared).example_inputs)
            return FlopsCost(), max(dense - sum(s.flops() for s in layer_specs(prepared)), 0)
        if cost == "params":
            return ParamsCost(), 0.0
        if cost == "latency":
            from fxprune.deploy.latency_table import LatencyTable
            return LatencyTable.measure(prepared, step=channel_step), 0.0
        raise ValueError(f"cost must be 'flops', 'params', 'latency' or a CostModel, got {cost!r}")
    if isinstance(cost, CostModel):
        return cost, 0.0
    raise TypeError(f"cost must be 'flops', 'params', 'latency' or an object with a `name` and "
                    f"`layer_cost(layer, c_in, c_out)` (fxprune.CostModel), got {type(cost).__name__}")


def allowed_counts(size: int, step: int, low: int, high: int, unit_channels: int = 1) -> np.ndarray:
    """How many of a group's ``size`` channels it may keep: counts whose channel total is a
    multiple of ``step`` (runtimes' kernels work on blocks of channels: an odd count can cost
    more than a round one, across layers, where no per-layer cost sees it), plus all of them;
    within ``[low, high]``. ``unit_channels``: channels per unit of the group (a grouped conv's
    tied positions), so a unit count k keeps ``k * unit_channels`` channels."""
    per = max(1, step // math.gcd(step, unit_channels)) if step > 1 else 1
    ks = set(range(per, size + 1, per)) | {size}
    ks = sorted(k for k in ks if low <= k <= high)
    if not ks:  # the constraints leave only counts off the step grid
        ks = [max(low, min(high, size))]
    return np.array(ks, dtype=np.int64)


def _plain(record: dict) -> dict:
    """numpy scalars as Python numbers (the weights-only unpickler refuses numpy objects)."""
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in record.items()}


def _check_args(**args) -> None:
    """One-line ValueErrors for SMCP's numeric and named arguments."""
    def number(name, low=None, high=None, *, integer=False, open_low=False, open_high=False):
        v = args[name]
        kind = (int,) if integer else (int, float)
        if isinstance(v, bool) or not isinstance(v, kind) or (isinstance(v, float)
                                                              and not math.isfinite(v)):
            raise ValueError(f"{name} must be {'an integer' if integer else 'a number'}, "
                             f"got {v!r}")
        if low is not None and (v <= low if open_low else v < low):
            raise ValueError(f"{name} must be {'>' if open_low else '>='} {low}, got {v!r}")
        if high is not None and (v >= high if open_high else v > high):
            raise ValueError(f"{name} must be {'<' if open_high else '<='} {high}, got {v!r}")

    t = args["target"]
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= 1:
        raise ValueError(f"target is the fraction of the dense cost to keep, in (0, 1]; got {t!r}")
    for name in ("warmup", "ramp"):
        number(name, 0, integer=True)
    for name in ("update_every", "channel_step", "resolution", "max_resolves"):
        number(name, 1, integer=True)
    if args["freeze_after"] is not None:
        number("freeze_after", 0, integer=True)
    number("momentum", 0, 1, open_high=True)
    number("masked_decay", 0)
    if args["bn_rescale"] not in ("kept_fraction", "off"):
        raise ValueError(f"bn_rescale must be 'kept_fraction' (SMCP) or 'off', got "
                         f"{args['bn_rescale']!r}")
    freeze, end = args["freeze_after"], args["warmup"] + args["ramp"]
    if args["schedule"] is None and args["target"] < 1 and freeze is not None and freeze < end:
        raise ValueError(f"freeze_after={freeze} stops mask updates before the ramp ends at step "
                         f"{end} (warmup {args['warmup']} + ramp {args['ramp']}), so the target "
                         "would never be reached; freeze later or shorten the ramp")


class SMCP:
    def __init__(self, prepared: fx.GraphModule, target: float = 0.5, cost="flops", *,
                 warmup: int = 0, ramp: int = 1000, update_every: int = 100,
                 freeze_after: int | None = None, ramp_shape: str = "exp",
                 schedule: PruningSchedule | None = None, importance: str = "taylor",
                 accumulate: str = "mean", momentum: float = 0.9, masks: str = "soft",
                 allocation: str = "knapsack", channel_step: int = 8,
                 bn_rescale: str = "kept_fraction", masked_decay: float = 0.0,
                 resolution: int = DEFAULT_RESOLUTION, max_resolves: int = 6):
        _check_args(target=target, warmup=warmup, ramp=ramp, update_every=update_every,
                    freeze_after=freeze_after, momentum=momentum, channel_step=channel_step,
                    masked_decay=masked_decay, resolution=resolution, max_resolves=max_resolves,
                    bn_rescale=bn_rescale, schedule=schedule)
        if masks not in ("soft", "hard"):
            raise ValueError(f"masks must be 'soft' (SMCP) or 'hard' (HALP-style), got {masks!r}")
        if allocation not in ("knapsack", "uniform"):
            raise ValueError(f"allocation must be 'knapsack' or 'uniform', got {allocation!r}")
        self.prepared, self.target = prepared, float(target)
        self.schedule = schedule or PruningSchedule(warmup, ramp, update_every, freeze_after, ramp_shape)
        self.masks_kind, self.allocation, self.channel_step = masks, allocation, int(channel_step)
        self.masked_decay, self.resolution, self.max_resolves = masked_decay, resolution, max_resolves
        self.index = UnitIndex(prepared)
        if not self.index.n:
            raise ValueError("the prepared model has no prunable channel group; see "
                             "fxprune.summary(prepared) for why each group is kept")
        self.consumers = consumer_weights(prepared, self.index)
        self.importance = ImportanceAccumulator(self.consumers, self.index.n, importance, accumulate, momentum)
        cost_model, other = resolve_cost_model(prepared, cost, self.channel_step)
        self.budget = Budget(self.index, costed_layers(self.index), cost_model, other)
        self.bn_rescale = bn_rescale
        self.rescaled_bns = insert_bn_rescale(prepared, bn_rescale)
        for m in prepared.modules():
            if isinstance(m, _InputMasked):
                m.fxprune_straight_through = masks == "soft"
        self.step_count = 0
        self.dead = np.zeros(self.index.n, dtype=bool)  # hard masks: pruned for good
        # Host-side copy of the masks as of construction / the last update / load: step() reads
        # it instead of copying the masks off the device every step.
        self._kept_host = self._kept_now()
        self.history: list[dict] = []
        self.skipped_updates = 0  # updates due with no gradient evidence (see update)
        self._check_reachable()

    # -- the training-loop API ------------------------------------------------------------------
    def step(self) -> dict | None:
        """Call after ``loss.backward()`` and before ``optimizer.step()``. Returns the update's
        record when masks were re-solved at this step, else None."""
        self.step_count += 1
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

    def _observing(self, step: int) -> bool:
        """Importance only matters in the window before an update: skip the pass over every
        weight early in warm-up and once masks are frozen."""
        s = self.schedule
        if s.freeze_after is not None and step > s.freeze_after:
            return False
        return step > s.warmup - s.update_every

    def cost(self, cost_model: CostModel | None = None) -> float:
        """Current cost as a fraction of the dense model's, by this pruner's cost model or by
        ``cost_model`` (e.g. price FLOPs-chosen masks with a latency table)."""
        if cost_model is None or cost_model is self.budget.model:
            return self.budget.fraction(self._kept_now())
        return Budget(self.index, self.budget.layers, cost_model).fraction(self._kept_now())

    def target_now(self) -> float:
        return self.schedule.target(self.step_count, self.target)

    # -- the update ----------------------------------------------------------------------------
    def update(self) -> dict | None:
        """Re-solve the masks for the current target; returns the update's record.

        With Taylor importance and no gradient seen since the last update (``step()`` called
        before ``loss.backward()``, or after ``zero_grad``), there is no evidence to rank
        channels by: the update is skipped with a ``RuntimeWarning`` (counted in
        ``skipped_updates``) and None returned, rather than ranking all-zero scores.
        """
        if self.importance.kind == "taylor" and self.importance.count == 0:
            self.skipped_updates += 1
            warnings.warn(
                f"SMCP: mask update at step {self.step_count} skipped: no gradients were seen "
                "since the last update, so channels cannot be ranked. Call pruner.step() after "
                "loss.backward() and before optimizer.zero_grad()", RuntimeWarning, stacklevel=2)
            return None
        start = time.perf_counter()
        target = self.target_now()
        scores = self.importance.scores()
        before = self._kept_now()
        if self.allocation == "knapsack":
            kept, (predicted, solved), resolves = self._solve_knapsack(target, scores, before)
        else:
            kept, predicted, resolves = self._solve_uniform(target, scores)
            solved = predicted
        self.index.set_masks(self.prepared, kept.astype(np.float32))
        if self.masks_kind == "hard":
            self.dead |= ~kept
        self._kept_host = kept.copy()
        skipped = self.importance.skipped
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
        }
        self.history.append(record)
        return record

    def _rankings(self, scores):
        orders, ks, values = [], [], []
        for i, g in enumerate(self.index.groups):
            sl = self.index.group_slice(i)
            s = scores[sl].astype(np.float64)
            dead = self.dead[sl]
            order, min_k = self.index.ranking(i, np.where(dead, -np.inf, s))
            alive = int((~dead).sum())
            k = allowed_counts(g.size, self.channel_step, min_k, max(alive, min_k),
                               self.index.unit_channels[i])
            cum = np.concatenate([[0.0], np.cumsum(np.where(dead, 0.0, s)[order])])
            orders.append(order)
            ks.append(k)
            values.append(cum[k])
        return orders, ks, values

    def _kept_from(self, orders, ks, choice) -> np.ndarray:
        kept = np.zeros(self.index.n, dtype=bool)
        for i, (order, k, c) in enumerate(zip(orders, ks, choice)):
            start = self.index.group_slice(i).start
            kept[start + order[: k[c]]] = True
        return kept

    def _solve_knapsack(self, target, scores, before):
        """Solve the knapsack priced around the current widths, re-price around the answer and
        solve again (the pricing holds other groups fixed, so it is exact only near the answer),
        then repair with exact costs: drop the least valuable steps while over the budget, add
        the most valuable ones that still fit. The result always fits the budget."""
        budget = target * self.budget.dense
        orders, ks, values = self._rankings(scores)
        current, first, attempt = before, None, 0
        for attempt in range(1, self.max_resolves + 1):
            costs, constant = self.budget.option_costs(current, orders, ks)
            choice, predicted = self._solve_priced(values, costs, constant, budget)
            kept = self._kept_from(orders, ks, choice)
            real = self.budget.total(kept)
            if first is None:  # how good is pricing with the other widths held? (logged)
                first = (predicted / self.budget.dense, real / self.budget.dense)
            if real <= budget and attempt > 1 or np.array_equal(kept, current):
                break
            current = kept
        choice = self._repair(list(choice), orders, ks, values, budget, target)
        return self._kept_from(orders, ks, choice), first, attempt

    def _repair(self, choice, orders, ks, values, budget, target):
        kept = self._kept_from(orders, ks, choice)
        total = self.budget.total(kept)

        def move(i, new):  # exact change of total cost if group i takes option `new`
            sl = self.index.group_slice(i)
            layers = self.budget.touching[i]
            old_cost = self.budget.cost_of(kept, layers)
            trial = kept.copy()
            trial[sl] = False
            trial[sl.start + orders[i][: ks[i][new]]] = True
            return self.budget.cost_of(trial, layers) - old_cost, trial

        while total > budget * (1 + 1e-9):  # over: drop the step that loses least per cost saved
            best = None
            for i, c in enumerate(choice):
                if c > 0:
                    dc, trial = move(i, c - 1)
                    loss = values[i][c] - values[i][c - 1]
                    rate = loss / max(-dc, 1e-12)
                    if dc < 0 and (best is None or rate < best[0]):
                        best = (rate, i, dc, trial)
            if best is None:
                self._raise_infeasible(target, orders, ks)
            _, i, dc, kept = best
            choice[i] -= 1
            total += dc
        while True:  # room left: add the step that gains most per cost
            best = None
            for i, c in enumerate(choice):
                if c + 1 < len(ks[i]):
                    dc, trial = move(i, c + 1)
                    if total + dc <= budget * (1 + 1e-9):
                        gain = values[i][c + 1] - values[i][c]
                        rate = gain / max(dc, 1e-12)
                        if best is None or rate > best[0]:
                            best = (rate, i, dc, trial)
            if best is None:
                return choice
            _, i, dc, kept = best
            choice[i] += 1
            total += dc

    def _solve_priced(self, values, costs, constant, budget):
        floor = [float(c.min()) for c in costs]
        shifted = [c - f for c, f in zip(costs, floor)]
        avail = budget - constant - sum(floor)
        if avail < 0:  # even the cheapest options are predicted over: take them
            choice = np.array([int(np.argmin(c)) for c in costs])
        else:
            choice = solve_mckp(values, shifted, avail, resolution=self.resolution)
        predicted = constant + sum(float(c[j]) for c, j in zip(costs, choice))
        return choice, predicted

    def _solve_uniform(self, target, scores):
        budget = target * self.budget.dense
        orders, ks, _ = self._rankings(scores)

        def pick(rho):
            choice = [int(np.argmin(np.abs(k - rho * g.size))) for k, g in zip(ks, self.index.groups)]
            return self._kept_from(orders, ks, choice)

        lo, hi, best = 0.0, 1.0, None
        if self.budget.total(pick(1.0)) <= budget:
            return pick(1.0), self.budget.fraction(pick(1.0)), 1
        for _ in range(40):
            mid = (lo + hi) / 2
            kept = pick(mid)
            if self.budget.total(kept) <= budget * (1 + 1e-9):
                lo, best = mid, kept
            else:
                hi = mid
        if best is None:
            self._raise_infeasible(target, orders, ks)
        return best, self.budget.fraction(best), 40

    def _check_reachable(self) -> None:
        """The final target must be reachable: every group at its smallest allowed width."""
        orders, ks, _ = self._rankings(np.zeros(self.index.n))
        floor = self.budget.fraction(self._kept_from(orders, ks, [0] * len(ks)))
        if self.target < floor * (1 - 1e-9):
            raise ValueError(
                f"target {self.target:.3f} of dense is below the cheapest model the constraints "
                f"allow ({floor:.3f}: every group at its smallest allowed width, channel_step="
                f"{self.channel_step}); raise the target to at least {floor:.3f} or lower "
                "channel_step")

    def signature(self) -> list[list]:
        """The prunable groups as ``[key, name, size]``: what a saved state must match."""
        return [[g.key, g.name, int(g.size)] for g in self.index.groups]

    def _raise_infeasible(self, target, orders, ks):
        floor = self._kept_from(orders, ks, [0] * len(ks))
        raise ValueError(
            f"cost target {target:.3f} of dense is below the cheapest model the constraints allow "
            f"({self.budget.fraction(floor):.3f}: every group at its smallest allowed width, "
            f"channel_step={self.channel_step}); raise the target or lower channel_step")

    # -- helpers -----------------------------------------------------------------------------------
    def _kept_now(self) -> np.ndarray:
        """The masks as they are now (a device-to-host copy: not for the per-step path)."""
        return self.index.masks(self.prepared).numpy() != 0

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

    # -- resuming ------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Tensors and plain Python data only: loadable with ``torch.load(weights_only=True)``.
        CPU tensors: a checkpoint saved on a GPU resumes on the CPU and the reverse."""
        return {"step": self.step_count, "importance": self.importance.state_dict(),
                "masks": self.index.masks(self.prepared), "dead": torch.from_numpy(self.dead.copy()),
                "history": [_plain(r) for r in self.history], "schedule": self.schedule.state(),
                "target": self.target, "groups": self.signature(),
                "skipped_updates": self.skipped_updates}

    def load_state_dict(self, state: dict) -> None:
        """Refuses a state saved for other groups (names or sizes differ), naming both."""
        mine = self.signature()
        theirs = state.get("groups")
        if theirs is not None and [list(g) for g in theirs] != mine:
            show = lambda gs: ", ".join(f"{name} ({size})" for _, name, size in gs)  # noqa: E731
            raise ValueError(f"this pruner state was saved for channel groups {show(theirs)} but "
                             f"the prepared model has {show(mine)}: it belongs to a different "
                             "model; load it into a model prepared like the one that saved it")
        if state["masks"].numel() != self.index.n:
            raise ValueError(f"this state holds {state['masks'].numel()} channels but the prepared "
                             f"model has {self.index.n}: it was saved for a different model")
        self.skipped_updates = int(state.get("skipped_updates", 0))
        self.step_count = int(state["step"])
        self.importance.load_state_dict(state["importance"])
        # torch.load(map_location=...) may have put these on any device
        self.index.set_masks(self.prepared, state["masks"].detach().cpu())
        self.dead = state["dead"].detach().cpu().numpy().astype(bool).copy()
        self._kept_host = self._kept_now()
        self.history = list(state["history"])
