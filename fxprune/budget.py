"""The model's cost under a :class:`~fxprune.cost.CostModel`, and what each group's choice costs.

The real cost of a layer depends on both its input width (one group) and its output width
(the next group), so the total is not a sum of per-group terms. As SMCP does, a group's option
"keep k channels" is priced with every other group held at its current width: a layer is
charged to the groups it *reads* (its output held fixed; a depthwise conv's output moves with
its input), and a layer reading several groups (after a concat) is shared between them so that
the parts add up to its current cost. When widths shrink the prediction overestimates (the
producers of a pruned group get cheaper too); the pruner re-prices around its answer and then
repairs it with exact costs, so the result always fits (see ``fxprune.methods.smcp``).
"""
from __future__ import annotations

import math

import numpy as np

from .cost import CostModel
from .errors import ArgumentError
from .units import CostedLayer, UnitIndex


#: width pairs :class:`Budget` keeps priced before it starts its memo again: a bound on its
#: memory, about 40 MB (review157 F11: 1,000,000 held about 200 MB, which CUCB's random
#: widths on resnet50 reached in some 50 steps)
_PRICED_MAX = 200_000


class Budget:
    def __init__(self, index: UnitIndex, layers: list[CostedLayer], cost_model: CostModel,
                 other_cost: float = 0.0):
        self.index, self.layers, self.model = index, layers, cost_model
        self.other_cost = float(other_cost)  # cost outside conv/linear layers (constant)
        # (layer, c_in, c_out) -> cost: the cost model is fixed for a run and a pure function
        # of the widths, and pricing asks the same widths at every re-solve and step (CUCB's
        # budget mode solves at every step: 56,742 calls, 0.5 of its 1.7 s on resnet50)
        self._memo: dict[tuple[int, int, int], float] = {}
        self.dense = self.total(np.ones(index.n, dtype=bool))
        if not self.dense > 0:
            raise ArgumentError(f"the model's dense cost under {cost_model.name!r} is {self.dense}; "
                                "a cost model must give a positive total")
        # per layer, per prunable group it reads: how many positions each channel occupies;
        # per group, the layers whose input or output width moves with it (for exact local
        # re-pricing). Each flat position's group by one search of the groups' offsets: a
        # range test per (layer, group) pair, and a set intersection per pair of groups for
        # the neighbours, took 3.6-6 s at 400 layers (break145 F6)
        def groups_of(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            flat = flat[flat >= 0]
            return np.searchsorted(index.offsets, flat, side="right") - 1, flat

        self._reads = []
        self.touching: list[list[int]] = [[] for _ in index.groups]
        layer_groups: list[list[int]] = []
        for li, layer in enumerate(layers):
            out_groups = groups_of(layer.out_flat)
            in_groups = None if layer.in_flat is None else groups_of(layer.in_flat)
            group, reads = out_groups if in_groups is None else in_groups  # what it reads
            per_group = {}
            for i in np.unique(group).tolist():
                sl = index.group_slice(i)
                per_group[i] = np.bincount(reads[group == i] - sl.start, minlength=sl.stop - sl.start)
            self._reads.append(per_group)
            touched = np.unique(np.concatenate(
                [out_groups[0]] + ([] if in_groups is None else [in_groups[0]]))).tolist()
            for i in touched:
                self.touching[i].append(li)
            layer_groups.append(touched)
        # groups sharing a touched layer with each group: a step of one changes the other's
        # step costs (allocation.repair keeps the rest)
        self.neighbours: list[list[int]] = [
            sorted({j for li in self.touching[i] for j in layer_groups[li]})
            for i in range(len(index.groups))]

    def layer_cost(self, layer: CostedLayer, c_in: int, c_out: int) -> float:
        given = self.model.layer_cost(layer.spec, c_in, c_out)
        try:  # (break176 F3: None, a formula's missing return, was a bare TypeError)
            value = float(given)
        except (TypeError, ValueError):
            value = given
        # break49 #8: NaN surfaced as "budget is nan"; break164 F8: a negative price was taken,
        # and the knapsack then favoured keeping the layer's channels
        if not (isinstance(value, float) and math.isfinite(value) and value >= 0):
            raise ArgumentError(
                f"the cost model {getattr(self.model, 'name', type(self.model).__name__)!r} "
                f"prices layer {layer.spec.name!r} at {c_in} input and {c_out} output channels "
                f"as {value!r}: layer_cost must return a finite number >= 0")
        return value

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_memo"] = {}  # priced again where needed: not carried in a copy or a pickle
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("_memo", {})  # a pickle from before the memo (break204 F2)

    def _cost(self, li: int, c_in: int, c_out: int) -> float:
        """:meth:`layer_cost` of ``self.layers[li]``, each width pair priced once."""
        key = (li, c_in, c_out)
        value = self._memo.get(key)
        if value is None:
            if len(self._memo) >= _PRICED_MAX:
                self._memo.clear()
            value = self._memo[key] = self.layer_cost(self.layers[li], c_in, c_out)
        return value

    def total(self, kept: np.ndarray) -> float:
        """Real cost when ``kept`` (bool per flat channel) says which channels stay."""
        return self.other_cost + sum(self._cost(li, *layer.widths(kept))
                                     for li, layer in enumerate(self.layers))

    def cost_of(self, kept: np.ndarray, layer_ids: list[int]) -> float:
        """Real cost of some layers only (to price a change of one group exactly)."""
        return sum(self._cost(i, *self.layers[i].widths(kept)) for i in layer_ids)

    def fraction(self, kept: np.ndarray) -> float:
        return self.total(kept) / self.dense

    def option_costs(self, kept: np.ndarray, orders: list[np.ndarray], ks: list[np.ndarray]):
        """Per group, the cost of keeping its top ``ks[i][j]`` channels (``orders[i]`` ranks them),
        other groups as in ``kept``; and the constant the group costs add to."""
        keeps = []
        for i, (order, k) in enumerate(zip(orders, ks)):
            size = self.index.group_slice(i).stop - self.index.group_slice(i).start
            rank = np.empty(size, dtype=np.int64)
            rank[order] = np.arange(size)
            keeps.append(rank[None, :] < np.asarray(k)[:, None])
        return self.subset_costs(kept, keeps)

    def subset_costs(self, kept: np.ndarray, keeps: list[np.ndarray]):
        """Per group, the cost of each option ``keeps[i][j]`` (a bool row over the group's
        channels: which it keeps; options need not be nested), other groups as in ``kept``;
        and the constant the group costs add to. Shapes: ``keeps[i]`` is (options, size)."""
        costs = [np.zeros(len(k), dtype=np.float64) for k in keeps]
        constant = self.other_cost
        as_float: dict[int, np.ndarray] = {}  # a group's options as 0/1, once (a BLAS product)
        for li, (layer, per_group) in enumerate(zip(self.layers, self._reads)):
            c_in, c_out = layer.widths(kept)
            now = self._cost(li, c_in, c_out)
            positions = layer.read_positions(kept)
            positions_now = max(positions, 1)
            shared = 0.0
            for i, counts in per_group.items():
                sl = self.index.group_slice(i)
                mine_now = int(counts[kept[sl]].sum())
                others = positions - mine_now
                if i not in as_float:
                    as_float[i] = np.asarray(keeps[i], dtype=np.float64)
                mine = np.rint(as_float[i] @ counts).astype(np.int64)  # positions per option
                share = mine_now / positions_now
                for j, m in enumerate(mine.tolist()):
                    n = others + int(m)
                    if layer.in_flat is None:  # depthwise: output moves with input
                        c_out_k, c_in_k = n, n // layer.mult
                    else:
                        c_in_k, c_out_k = layer.in_factor * n, c_out
                    costs[i][j] += self._cost(li, c_in_k, c_out_k) - now * (1 - share)
                shared += share
            constant += now * (1 - shared)
        return costs, constant
