"""The shared engine: option pricing, the allocator, importance strategies' sync, the registry."""
from __future__ import annotations

import copy
import pickle
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxprune
from fxprune.allocation import (GroupOptions, InfeasibleBudget, allocate, allocate_uniform, allowed_counts,
                                kept_from, ranked_options, repair)
from fxprune.budget import Budget
from fxprune.cost import FlopsCost
from fxprune.importance import BanditStats, PairwiseTaylor, WeightTaylor
from fxprune.methods import get_method, registry
from fxprune.units import UnitIndex, consumer_weights, costed_layers

from test_smcp import data, held_output_cost, prepared


def _budget(pm):
    index = UnitIndex(pm)
    return index, Budget(index, costed_layers(index), FlopsCost())


def test_subset_costs_price_non_nested_options_exactly():
    pm = prepared()
    index, budget = _budget(pm)
    rng = np.random.default_rng(1)
    kept = rng.random(index.n) > 0.3
    for i, g in enumerate(index.groups):
        keeps = [kept[index.group_slice(j)][None] for j in range(len(index.groups))]
        rows = rng.random((5, g.size)) > 0.5  # arbitrary subsets, not top-k of one order
        rows[:, 0] = True
        keeps[i] = rows
        costs, constant = budget.subset_costs(kept, keeps)
        for j, row in enumerate(rows):
            trial = kept.copy()
            trial[index.group_slice(i)] = row
            predicted = constant + sum(c[0] for k, c in enumerate(costs) if k != i) + costs[i][j]
            assert predicted == pytest.approx(held_output_cost(budget, trial, kept), rel=1e-9)


def test_budget_prices_each_width_pair_of_a_layer_once(monkeypatch):
    """The cost model is fixed for a run: a width pair asked again (each re-solve, each of
    CUCB's steps) comes from the memo, and a memo at its bound starts again, same answers."""
    pm = prepared()
    index = UnitIndex(pm)
    asked = []

    class Counting(FlopsCost):
        def layer_cost(self, layer, c_in, c_out):
            asked.append((layer.name, c_in, c_out))
            return super().layer_cost(layer, c_in, c_out)

    budget = Budget(index, costed_layers(index), Counting())
    rng = np.random.default_rng(0)
    kept = rng.random(index.n) > 0.4
    keeps = [np.tril(np.ones((g.size, g.size), dtype=bool)) for g in index.groups]
    first = (budget.total(kept), budget.subset_costs(kept, keeps))
    assert len(asked) == len(set(asked))  # nothing priced twice, even within one call
    n = len(asked)
    again = (budget.total(kept), budget.subset_costs(kept, keeps))
    assert len(asked) == n
    assert again[0] == first[0] and again[1][1] == first[1][1]
    assert all(np.array_equal(a, b) for a, b in zip(again[1][0], first[1][0]))

    assert budget._memo and copy.deepcopy(budget)._memo == {}  # not carried (review157 F11)
    monkeypatch.setattr("fxprune.budget._PRICED_MAX", 3)
    fresh = Budget(index, costed_layers(index), FlopsCost())
    assert len(fresh._memo) <= 3
    assert fresh.total(kept) == first[0]
    costs, constant = fresh.subset_costs(kept, keeps)
    assert len(fresh._memo) <= 3 and constant == first[1][1]
    assert all(np.array_equal(a, b) for a, b in zip(costs, first[1][0]))


@pytest.mark.parametrize("target", [0.6, 0.75, 0.9])
def test_allocate_uniform_keeps_the_widest_fitting_model_under_a_cost_not_monotone_in_width(target):
    """break156 F1: a bisection over rho assumed the cost rises with width; under a measured
    table's noise (here +-30%, fixed per width pair) it kept a narrower model than one that
    fitted (0.58 of dense for a 0.75 target, 0.74 for 0.9)."""
    pm = prepared()
    index = UnitIndex(pm)

    class Noisy(FlopsCost):
        name = "noisy"

        def layer_cost(self, layer, c_in, c_out):
            return super().layer_cost(layer, c_in, c_out) * (
                1 + 0.3 * math.sin(c_in * 12.9898 + c_out * 78.233 + 1))

    budget = Budget(index, costed_layers(index), Noisy())
    sizes = [g.size for g in index.groups]
    options = [ranked_options(np.arange(g.size, 0, -1, dtype=float), np.arange(g.size),
                              allowed_counts(g.size, 1, 1, g.size)) for g in index.groups]
    got = allocate_uniform(options, budget, target, sizes)
    assert got.actual <= target * (1 + 1e-9)

    def pick(rho):
        return [int(np.argmin(np.abs(o.counts - rho * s))) for o, s in zip(options, sizes)]

    widest = next(choice for rho in np.linspace(1, 0, 20001)  # every rho, widest first
                  if budget.fraction(kept_from(index.offsets, options, choice := pick(rho)))
                  <= target * (1 + 1e-9))
    assert got.choice == widest
    monotone = Budget(index, costed_layers(index), FlopsCost())  # as the bisection found it
    assert allocate_uniform(options, monotone, target, sizes).choice == next(
        choice for rho in np.linspace(1, 0, 20001)
        if monotone.fraction(kept_from(index.offsets, options, choice := pick(rho))) <= target)


def test_allocate_finds_a_fitting_model_cheaper_than_the_narrowest_and_checks_its_target():
    """break156 F2, F4: under a measured table (+-30% noise), repair raised "below the cheapest
    model" from the narrowest widths although another of the 9 combinations fitted, before
    allocate tried them all; and a NaN, negative or str target got the knapsack's or numpy's
    words. The chain 3 -> g0 (3) -> g1 (3) -> 5 of linear layers, its table as break156 drew it."""
    from types import SimpleNamespace

    from fxprune.cost import LayerSpec
    from fxprune.units import CostedLayer

    table = {('l0', 0, 0): 5.6, ('l0', 0, 1): 10.4, ('l0', 0, 2): 6.4, ('l0', 0, 3): 5.6, ('l0', 1, 0): 6.4, ('l0', 1, 1): 9.0, ('l0', 1, 2): 10.8, ('l0', 1, 3): 16.8, ('l0', 2, 0): 5.6, ('l0', 2, 1): 13.200000000000001, ('l0', 2, 2): 12.8, ('l0', 2, 3): 14.0, ('l0', 3, 0): 9.6, ('l0', 3, 1): 18.2, ('l0', 3, 2): 16.0, ('l0', 3, 3): 33.800000000000004, ('l1', 0, 0): 5.6, ('l1', 0, 1): 9.6, ('l1', 0, 2): 6.4, ('l1', 0, 3): 7.2, ('l1', 1, 0): 6.4, ('l1', 1, 1): 7.0, ('l1', 1, 2): 9.600000000000001, ('l1', 1, 3): 9.799999999999999, ('l1', 2, 0): 7.2, ('l1', 2, 1): 8.399999999999999, ('l1', 2, 2): 14.4, ('l1', 2, 3): 14.0, ('l1', 3, 0): 9.6, ('l1', 3, 1): 18.2, ('l1', 3, 2): 18.0, ('l1', 3, 3): 26.0, ('head', 0, 0): 9.6, ('head', 0, 1): 8.0, ('head', 0, 2): 9.6, ('head', 0, 3): 10.4, ('head', 0, 4): 7.2, ('head', 0, 5): 8.0, ('head', 1, 0): 6.4, ('head', 1, 1): 9.0, ('head', 1, 2): 15.600000000000001, ('head', 1, 3): 18.2, ('head', 1, 4): 17.6, ('head', 1, 5): 18.0, ('head', 2, 0): 5.6, ('head', 2, 1): 15.600000000000001, ('head', 2, 2): 19.2, ('head', 2, 3): 22.0, ('head', 2, 4): 16.799999999999997, ('head', 2, 5): 33.6, ('head', 3, 0): 8.8, ('head', 3, 1): 15.400000000000002, ('head', 3, 2): 26.0, ('head', 3, 3): 18.2, ('head', 3, 4): 22.4, ('head', 3, 5): 45.6}

    class Table:
        name = "table"

        def layer_cost(self, layer, c_in, c_out):
            return table[(layer.name, c_in, c_out)]

    def linear(name, c_in, c_out):
        return LayerSpec(name=name, kind="linear", in_channels=c_in, out_channels=c_out,
                         input_shape=(1, c_in), output_shape=(1, c_out))

    offsets = np.array([0, 3, 6])
    index = SimpleNamespace(groups=[None, None], offsets=offsets, n=6, unit_channels=[1, 1],
                            group_slice=lambda i: slice(int(offsets[i]), int(offsets[i + 1])))
    g0, g1 = np.arange(3), np.arange(3, 6)
    layers = [CostedLayer(linear("l0", 3, 3), g0, np.full(3, -1), 1, 1),
              CostedLayer(linear("l1", 3, 3), g1, g0, 1, 1),
              CostedLayer(linear("head", 3, 5), np.full(5, -1), g1, 1, 1)]
    budget = Budget(index, layers, Table())
    counts = np.array([1, 2, 3])
    options = [GroupOptions(counts, values, np.arange(3)[None, :] < counts[:, None])
               for values in ([2.0, 3.0, 5.0], [2.0, 4.0, 6.0])]
    narrowest = budget.fraction(kept_from(offsets, options, [0, 0]))
    fits = budget.fraction(kept_from(offsets, options, [1, 0]))
    assert fits < 0.4023 < narrowest  # the premise: the narrowest model is not the cheapest
    got = allocate(options, budget, 0.4023, np.ones(6, bool))
    assert got.choice == [1, 0] and got.actual <= 0.4023
    with pytest.raises(InfeasibleBudget, match=r"below the narrowest model the constraints "
                                               r"allow \(\d\.\d+: every group at its smallest "
                                               r"allowed width\); raise the target or relax the "
                                               r"constraints$"):
        allocate(options, budget, 0.3, np.ones(6, bool))
    # the width arguments named, and offered where they can be lowered (review208 R9: read
    # back out of a formatted hint, "lower channel_step" at 1)
    for widths, said in (({"channel_step": 8, "min_kept": 0.25}, r"channel_step=8, min_kept="
                          r"0\.25\); raise the target or lower channel_step or min_kept$"),
                         ({"channel_step": 1, "min_kept": 0.25}, r"channel_step=1, min_kept="
                          r"0\.25\); raise the target or lower min_kept$"),
                         ({"channel_step": 1}, r"channel_step=1\); raise the target$")):
        with pytest.raises(InfeasibleBudget, match=said):
            allocate(options, budget, 0.3, np.ones(6, bool), widths=widths)
    for bad in (float("nan"), -0.5, "0.5"):
        with pytest.raises(ValueError, match=r"target is a fraction of the dense cost, a number "
                                             r"> 0; got"):
            allocate(options, budget, bad, np.ones(6, bool))
        with pytest.raises(ValueError, match=r"target is a fraction of the dense cost"):
            allocate_uniform(options, budget, bad, [3, 3])


@pytest.mark.parametrize("target", [0.35, 0.6])
def test_allocate_fits_and_prefers_valuable_subsets(target):
    pm = prepared()
    index, budget = _budget(pm)
    rng = np.random.default_rng(0)
    options = []
    for i, g in enumerate(index.groups):
        scores = rng.random(g.size)
        order = np.argsort(-scores)
        options.append(ranked_options(scores, order, np.arange(1, g.size + 1)))
    result = allocate(options, budget, target, np.ones(index.n, bool))
    assert result.actual <= target + 1e-9
    assert result.actual >= target - 0.1
    assert np.array_equal(result.kept, kept_from(index.offsets, options, result.choice))
    # each group keeps its top channels by score
    for i, c in enumerate(result.choice):
        assert np.array_equal(result.kept[index.group_slice(i)], options[i].keep[c])


class CoarseNet(torch.nn.Module):
    """A 16-channel residual stream (options {8, 16} at channel_step 8), a stride-2 conv, a
    grouped and a depthwise conv, a 1x1 conv and a head: few, coarse options."""

    def __init__(self, w=16):
        super().__init__()
        nn = torch.nn
        self.stem, self.bn0 = nn.Conv2d(3, w, 3, padding=1, bias=False), nn.BatchNorm2d(w)
        self.c1, self.bn1 = nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w)
        self.c2, self.bn2 = nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w)
        self.c3, self.bn3 = nn.Conv2d(w, 2 * w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * w)
        self.g, self.bng = nn.Conv2d(2 * w, 2 * w, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(2 * w)
        self.dw = nn.Conv2d(2 * w, 2 * w, 3, padding=1, groups=2 * w, bias=False)
        self.bnd = nn.BatchNorm2d(2 * w)
        self.pw, self.fc = nn.Conv2d(2 * w, 3 * w, 1), nn.Linear(3 * w, 10)

    def forward(self, x):
        x = F.relu(self.bn0(self.stem(x)))
        x = F.relu(x + self.bn2(self.c2(F.relu(self.bn1(self.c1(x))))))
        x = F.relu(self.bnd(self.dw(F.relu(self.bng(self.g(F.relu(self.bn3(self.c3(x)))))))))
        return self.fc(F.relu(self.pw(x)).mean((2, 3)))


@pytest.mark.parametrize("search", ["exhaustive", "trade_steps"])
def test_allocate_uses_the_budget_of_a_model_with_coarse_options(search, monkeypatch):
    """Against every combination of options (384): the answer's value is within 1% of the best
    that fits (2% when only local search runs, as on a model of more combinations). It stopped at the first fitting answer and single steps up cannot pay for the
    residual stream's 8 channels, so a 0.9 target gave a model at 0.57 (break22 #3: 16 of 160
    answers more than 1% below the best, up to 3.3%)."""
    import itertools

    from fxprune import allocation

    if search == "trade_steps":  # what a model of more combinations gets
        monkeypatch.setattr(allocation, "EXHAUSTIVE_MAX", 0)
    torch.manual_seed(0)
    pm = fxprune.prepare(CoarseNet(), (torch.randn(1, 3, 16, 16),))
    pruner = fxprune.SMCP(pm, target=0.9, warmup=0, ramp=0, update_every=1)
    budget, offsets = pruner.budget, pruner.index.offsets
    gaps = []
    for seed in range(12):
        options = pruner._options(np.random.default_rng(seed).random(pruner.index.n) ** 3)
        combos = list(itertools.product(*[range(len(o.counts)) for o in options]))
        costs = [budget.fraction(kept_from(offsets, options, c)) for c in combos]
        worth = [sum(o.values[j] for o, j in zip(options, c)) for c in combos]
        for target in (0.5, 0.9):
            best = max(w for w, c in zip(worth, costs) if c <= target)
            result = allocate(options, budget, target, np.ones(pruner.index.n, bool))
            assert result.actual <= target + 1e-9
            gaps.append(1 - sum(o.values[j] for o, j in zip(options, result.choice)) / best)
    if search == "trade_steps":  # repairs and one-for-many trades: close, not exact
        assert max(gaps) < 0.02 and np.mean(gaps) < 0.003, (max(gaps), np.mean(gaps))
        return
    assert max(gaps) < 0.01, max(gaps)  # (within 1% of the budget it does not search further)
    # equal scores (CUCB's unplayed arms): the trade needs two steps down in one group, which
    # single greedy steps never find (break23 #4); 384 combinations are tried whole
    options = pruner._options(np.ones(pruner.index.n))
    result = allocate(options, budget, 0.9, np.ones(pruner.index.n, bool))
    assert sum(o.values[j] for o, j in zip(options, result.choice)) == 92 and result.actual <= 0.9
    with pytest.raises(ValueError, match="max_resolves must be an integer >= 1, got 0"):
        allocate(options, budget, 0.5, np.ones(pruner.index.n, bool), max_resolves=0)


def test_allocate_tries_every_combination_when_there_are_few():
    """break67 #2: on a 3 -> 8 -> 16 -> 4 conv chain (two groups, 128 combinations) repair's
    single steps stopped within 1% of the budget at [2, 16] channels, 13.7% of the value below
    the best combination, [5, 5]; the search beyond was skipped as the budget was nearly used."""
    import itertools

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1),
                          nn.ReLU(), nn.Conv2d(16, 4, 1)).eval()
    pm = fxprune.prepare(model, (torch.randn(1, 3, 8, 8),))
    pruner = fxprune.SMCP(pm, target=0.99, cost="flops", channel_step=1)
    index, budget = pruner.index, pruner.budget
    scores = np.array([1.2963, 0.7592, 0.0189, 3.0464, 1.3208, 0.2093, 3.018, 3.7286, 1.6718,
                       3.9377, 0.9212, 0.003, 0.3075, 0.0004, 0.0135, 0.1874, 0.3059, 0.0026,
                       0.0986, 12.7395, 1.1292, 0.0059, 0.2232, 0.0])
    options = []
    for i, g in enumerate(index.groups):
        s = scores[index.group_slice(i)]
        order, min_k = index.ranking(i, s)
        options.append(ranked_options(s, order, allowed_counts(g.size, 1, min_k, g.size)))
    target = 0.2868965759982709

    def value(choice):
        return sum(o.values[c] for o, c in zip(options, choice))

    combos = list(itertools.product(*(range(len(o.counts)) for o in options)))
    assert len(combos) == 128
    best = max((c for c in combos if budget.fraction(kept_from(index.offsets, options, c)) <= target),
               key=value)
    result = allocate(options, budget, target, np.ones(index.n, bool))
    assert value(result.choice) == pytest.approx(value(best)) and result.actual <= target
    assert [int(options[i].counts[c]) for i, c in enumerate(result.choice)] == [5, 5]


class _BumpCost:
    """FLOPs, plus a bump for any output width strictly between 1 and the full width: a cost
    that does not fall with width, as a noisy latency table's need not."""

    name = "bump"

    def layer_cost(self, layer, c_in, c_out):
        return float(layer.flops(c_in, c_out)) + (1e9 if 1 < c_out < layer.out_channels else 0.0)


def test_repair_leaves_a_local_minimum_of_a_cost_that_does_not_fall_with_width():
    pm = prepared()
    index = UnitIndex(pm)
    budget = Budget(index, costed_layers(index), _BumpCost())
    rng = np.random.default_rng(0)
    options = [ranked_options(s, np.argsort(-s), np.arange(1, g.size + 1))
               for g in index.groups for s in [rng.random(g.size)]]
    full = [len(o.counts) - 1 for o in options]
    smallest = budget.fraction(kept_from(index.offsets, options, [0] * len(options)))
    # from the dense model every single step down costs more (into the bump); one channel per
    # group fits, so that is not "infeasible"
    choice = repair(full, options, budget, 0.5 * budget.dense, 0.5)
    assert budget.fraction(kept_from(index.offsets, options, choice)) <= 0.5 + 1e-9
    assert smallest < 0.5
    with pytest.raises(InfeasibleBudget) as e:  # below even that: the floor is the true one
        repair(full, options, budget, 0.5 * smallest * budget.dense, 0.5 * smallest)
    assert e.value.floor == pytest.approx(smallest)


def test_allocate_keeps_the_optimum_where_values_fall_with_the_count():
    """review127 F1: repair filled the room left by steps that each lost value (CCP's
    predicted loss changes can fall with the count), throwing the knapsack's optimum away."""
    index, budget = _budget(prepared(width=32))
    options = []
    for g in index.groups:
        counts = np.arange(1, g.size + 1)
        options.append(GroupOptions(counts, -counts.astype(float),
                                    np.arange(g.size)[None, :] < counts[:, None]))
    combos = np.prod([len(o.counts) for o in options])
    assert combos > 4096  # past the exhaustive search: the knapsack and repair decide
    result = allocate(options, budget, 0.6, np.ones(index.n, bool))
    assert [int(o.counts[c]) for o, c in zip(options, result.choice)] == [1] * len(options)
    assert result.actual < 0.6


def test_with_option_places_an_option_by_its_count_once():
    opts = GroupOptions([1, 2], [1.0, 3.0], [[True, False, False], [True, True, False]])
    more = opts.with_option(np.array([False, False, True]), 0.5)
    assert more.counts.tolist() == [1, 1, 2] and more.values.tolist() == [0.5, 1.0, 3.0]
    assert more.keep[0].tolist() == [False, False, True]
    assert more.with_option(np.array([True, True, False]), 9.0) is more  # kept already


class _Concat(torch.nn.Module):
    """A cheap 1x1 piece and a costly 3x3 piece of one group (a depthwise conv after the concat)."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a, self.b = nn.Conv2d(8, 16, 1), nn.Conv2d(8, 40, 3, padding=1)
        self.dw = nn.Conv2d(56, 56, 3, padding=1, groups=56)
        self.head = nn.Conv2d(56, 8, 1)

    def forward(self, x):
        x = F.relu(self.stem(x))
        y = torch.cat([F.relu(self.a(x)), F.relu(self.b(x))], 1)
        return self.head(F.relu(self.dw(y))).mean((2, 3))


def test_a_target_the_constructor_accepts_is_reached_whatever_the_ranking():
    """break36 #1: the constructor priced the floor with one ranking (the cheap piece's
    channels); once training ranked the costly piece's first, the knapsack's top-k options
    all cost more, and the update raised InfeasibleBudget mid-run (0.207 against 0.115)."""
    torch.manual_seed(0)
    model = _Concat()
    with torch.no_grad():
        model.head.weight[:, 16:] *= 10  # the costly piece's channels matter more
    pm = fxprune.prepare(model, (torch.randn(1, 3, 16, 16),))
    pruner = fxprune.SMCP(pm, target=0.2, warmup=0, ramp=8, update_every=4, channel_step=8)
    floor = pruner.budget.fraction(pruner.floor_kept)
    assert floor < 0.2
    for _ in range(12):
        pm(torch.randn(4, 3, 16, 16)).pow(2).mean().backward()
        pruner.step()
        pm.zero_grad()
    assert pruner.history[-1]["target"] == pytest.approx(0.2) and pruner.cost() <= 0.2 + 1e-9


def test_a_cost_that_falls_with_width_is_refused_up_front_as_below_the_narrowest_model():
    """break36 #4: with 8-wide kernels 3x slower, a 0.75 target was refused as below "the
    cheapest model (0.929)" while 16 channels each cost 0.714. Accepting it (break38 #1) crashed
    mid-run, where the allocator's fallback tries the narrowest options only: it is refused
    before training, and the message says "narrowest", which is what it checked."""
    class Bumpy:
        name = "bumpy"

        def layer_cost(self, layer, c_in, c_out):
            return FlopsCost().layer_cost(layer, c_in, c_out) * (3.0 if 8 in (c_in, c_out) else 1.0)

    class Plain(torch.nn.Module):  # two prunable groups (16, 24): the third is an output
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.Conv2d(16, 24, 3, padding=1, stride=2)
            self.c3, self.fc = torch.nn.Conv2d(24, 32, 3, padding=1), torch.nn.Linear(32, 10)

        def forward(self, x):
            x = F.relu(self.c3(F.relu(self.c2(F.relu(self.c1(x))))))
            return self.fc(x.mean((2, 3))), x

    pm = fxprune.prepare(Plain(), (torch.randn(1, 3, 16, 16),))
    with pytest.raises(InfeasibleBudget, match=r"target 0\.75 of dense is below the narrowest "
                                               r"model the constraints allow \(0\.92"):
        fxprune.SMCP(pm, target=0.75, cost=Bumpy(), channel_step=8)


def test_set_masks_takes_exactly_one_mask_per_prunable_channel():
    """break28 #8: a longer vector's tail was dropped silently, a shorter one raised torch's
    size mismatch."""
    pm = prepared()
    index = UnitIndex(pm)
    for length in (index.n + 5, index.n - 1):
        with pytest.raises(ValueError, match=f"a vector of length {index.n}; got shape \\({length},\\)"):
            index.set_masks(pm, np.ones(length))
    half = torch.arange(index.n) % 2 == 0
    index.set_masks(pm, half.double())  # a tensor goes in as it is
    assert torch.equal(torch.cat([g.mask for g in fxprune.channel_groups(pm) if g.prunable]),
                       half.float())


def test_group_options_reject_bad_shapes():
    with pytest.raises(ValueError, match="one count and value per option"):
        GroupOptions([1, 2], [0.0], np.ones((2, 3), bool))


def fake_all_reduce(strategies):
    """Run ``sync`` on every strategy as if each were a process of one job: the reduce returns
    the sum of everyone's packed tensor (first gathered from deep copies)."""
    packs = []

    class Gathered(Exception):
        pass

    for s in strategies:
        def grab(t):
            packs.append(t.clone())
            raise Gathered
        with pytest.raises(Gathered):
            copy.deepcopy(s).sync(grab)
    total = sum(packs)
    for s in strategies:
        s.sync(lambda t: total.clone())


def test_weight_taylor_sync_sums_counts_and_totals_in_float64():
    pm = prepared()
    index = UnitIndex(pm)
    consumers = consumer_weights(pm, index)
    a, b = WeightTaylor(consumers, index.n), WeightTaylor(consumers, index.n)
    flat = index.masks(pm)
    for s, seed in ((a, 0), (b, 1)):
        x, y = data(seed=seed)
        pm.zero_grad()
        F.cross_entropy(pm(x), y).backward()
        s.observe(flat)
    a.observe(flat)  # a has seen 2 steps, b 1
    expected = (a.total + b.total) / 3
    single = a.scores().copy()
    a_alone = copy.deepcopy(a)
    a_alone.sync(None)  # one process: nothing changes
    np.testing.assert_array_equal(a_alone.scores(), single)
    fake_all_reduce([a, b])
    assert a.total.dtype == torch.float64 and a.count == b.count == 3
    np.testing.assert_allclose(a.scores(), expected.numpy())
    np.testing.assert_array_equal(a.scores(), b.scores())


def test_bandit_stats_sync_pools_rewards_of_every_process():
    offsets = np.array([0, 3, 5])
    a, b = BanditStats(offsets), BanditStats(offsets)
    a.observe(torch.tensor([1.0, 2.0, 0.0, 4.0, 0.0]), torch.tensor([1, 1, 0, 1, 0], dtype=torch.bool))
    b.observe(torch.tensor([2.0, 0.0, 1.0, 0.0, 3.0]), torch.tensor([1, 0, 1, 0, 1], dtype=torch.bool))
    single = copy.deepcopy(a)
    single.sync(None)  # one process: its own rewards, scaled by its running max per group
    np.testing.assert_allclose(single.mu.numpy(), [0.5, 1.0, 0.0, 1.0, 0.0])
    np.testing.assert_array_equal(single.T.numpy(), [1, 1, 0, 1, 0])
    fake_all_reduce([a, b])
    np.testing.assert_array_equal(a.T.numpy(), [2, 1, 1, 1, 1])
    np.testing.assert_allclose(a.mu.numpy(), [0.75, 1.0, 0.5, 1.0, 1.0])
    np.testing.assert_array_equal(a.mu.numpy(), b.mu.numpy())
    idx = a.index(t=10, c=1.0)
    assert torch.isinf(BanditStats(offsets).index(3)).all()  # never played: infinite
    assert idx[0] < idx[1]  # played twice: smaller bonus than once, same-ish mean


def test_pairwise_sync_and_moments():
    offsets = np.array([0, 2, 5])
    a, b = (PairwiseTaylor.__new__(PairwiseTaylor) for _ in range(2))
    for s in (a, b):  # no hooks needed: feed per-sample terms directly
        s.offsets, s.n, s.samples, s.local_samples = offsets, 5, 0, 0
        s.sum_t = torch.zeros(5, dtype=torch.float64)
        s.sum_tt = [torch.zeros(2, 2, dtype=torch.float64), torch.zeros(3, 3, dtype=torch.float64)]
    ta, tb = torch.randn(4, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    a.add(ta)
    b.add(tb)
    fake_all_reduce([a, b])
    t = torch.cat([ta, tb])
    mean, B = a.moments(1)
    np.testing.assert_allclose(mean, t[:, 2:].mean(0).numpy())
    np.testing.assert_allclose(B, (t[:, 2:].T @ t[:, 2:] / 10).numpy())
    assert a.samples == b.samples == 10


def test_registry_serves_recipe_cli_and_benchmarks():
    for name in ("smcp", "cucb", "ccp", "hard", "uniform", "magnitude", "taylor", "cucb_random"):
        assert name in registry
    assert get_method("smcp").cls is fxprune.SMCP
    # the names the README gives (break45 #2: fxprune.register_method did not exist)
    from fxprune.methods.registration import register_method

    assert fxprune.get_method is get_method and fxprune.register_method is register_method
    # the registry moved out of methods.base (review194 L1); code importing it there still works
    from fxprune.methods import base, registration

    for name in registration.__all__:
        assert getattr(base, name) is getattr(registration, name)
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        base.nope
    with pytest.raises(ValueError, match="unknown pruning method 'nope'"):
        get_method("nope")
    # the entry builds, called or by build(), the target by position too (break128 F5:
    # 'MethodEntry' object is not callable, and build(pm, 0.5) a bare TypeError)
    hard = get_method("hard")(prepared(), 0.5, channel_step=4)
    assert isinstance(hard, fxprune.SMCP) and hard.target == 0.5 and hard.registered_as == "hard"
    assert get_method("smcp").build(prepared(), 0.4, "params").target == 0.4
    with pytest.raises(TypeError, match=r"method 'smcp' takes at most 2 positional argument\(s\) "
                                        r"after the model \(target, cost\), got 3"):
        get_method("smcp")(prepared(), 0.5, "flops", 4)
    with pytest.raises(TypeError, match="got target both by position and by keyword"):
        get_method("smcp")(prepared(), 0.5, target=0.4)
    from fxprune.train import ConfigError, resolve_config
    assert resolve_config({"prune": {"method": "cucb"}})["prune"]["method"] == "cucb"
    with pytest.raises(ConfigError, match="ccp"):
        resolve_config({"prune": {"method": "nope"}})


def test_a_method_registered_after_import_is_a_recipe_method(monkeypatch):
    from fxprune.methods.registration import register_method
    from fxprune.train import ConfigError, make_pruner, resolve_config  # imported before registering

    monkeypatch.setattr("fxprune.methods.registration.registry", dict(registry))  # undone after the test
    register_method("late_smcp", fxprune.SMCP, summary="SMCP under another name")
    cfg = resolve_config({"prune": {"method": "late_smcp", "target": 0.5}})
    assert cfg["prune"]["method"] == "late_smcp"
    pruner = make_pruner(prepared(), cfg["prune"], steps_per_epoch=10, epochs=2)
    assert isinstance(pruner, fxprune.SMCP)

    class NoCost:  # no cost(): refused before training, not after its first epoch
        def __init__(self, prepared):
            self.history = []

        def step(self, loss=None):
            return None

    register_method("no_cost", NoCost)
    with pytest.raises(ConfigError, match=r"'no_cost' builds a NoCost without cost\(\), state_dict\(\), load_state_dict\(\), which"):
        make_pruner(prepared(), {"method": "no_cost"})


class _Every(fxprune.SMCP):
    """A plug-in with a step count of its own, ``every``."""

    def __init__(self, prepared, target=0.5, cost="flops", *, every=4, channel_step=1):
        super().__init__(prepared, target, cost, update_every=every, ramp=every, channel_step=channel_step)


def test_a_methods_own_step_count_in_epochs_is_explained_and_step_args_allows_it(monkeypatch):
    """break105 F10: `prune.every_fraction` for a method's own step count `every` was an
    unknown key, and the way (a step_args class attribute) was in a code comment only."""
    from fxprune.methods.registration import register_method
    from fxprune.train import ConfigError, make_pruner, resolve_config

    monkeypatch.setattr("fxprune.methods.registration.registry", dict(registry))
    register_method("every", _Every)
    recipe = {"optim": {"epochs": 2}, "prune": {"method": "every", "every_fraction": 0.5}}
    with pytest.raises(ConfigError, match=r"unknown key prune.every_fraction .*\(prune.every is the "
                                          r"method's own argument: .* step_args = \('every',\)\)"):
        resolve_config(recipe)
    monkeypatch.setattr(_Every, "step_args", ("every",), raising=False)
    cfg = resolve_config(recipe)
    pruner = make_pruner(prepared(), cfg["prune"], steps_per_epoch=10, epochs=2)
    assert pruner.schedule.update_every == 10  # half of the run's 20 steps


class _Forwarding(fxprune.SMCP):
    def __init__(self, prepared, *args, alpha=1.0, **kwargs):
        super().__init__(prepared, *args, **kwargs)


def test_a_mistyped_keyword_of_a_forwarding_method_gets_no_run_length_advice(monkeypatch):
    """break105 F11: the unknown-keyword error listed warmup and ramp among the arguments the
    method takes, which the "a longer run also gives them room" suffix took for its cause."""
    from fxprune.methods.registration import register_method
    from fxprune.train import ConfigError, make_pruner, resolve_config

    monkeypatch.setattr("fxprune.methods.registration.registry", dict(registry))
    register_method("forwarding", _Forwarding)
    cfg = resolve_config({"optim": {"epochs": 2}, "prune": {
        "method": "forwarding", "warmup_fraction": 0.1, "ramp_fraction": 0.5, "hysterisis": 2}})
    with pytest.raises(ConfigError, match=r"'hysterisis' is not an argument") as info:
        make_pruner(prepared(), cfg["prune"], steps_per_epoch=10, epochs=2)
    assert "gives them room" not in str(info.value)


def installed_plugins(monkeypatch, tmp_path, modules: dict, entry_points: dict):
    """As if a package had installed ``modules`` (name -> source) and declared ``entry_points``
    (method name -> "module:attr") in the 'fxprune.methods' group; the registry is restored
    after the test."""
    import importlib.metadata as md

    from fxprune.methods import registration

    for name, source in modules.items():
        (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    eps = [md.EntryPoint(n, v, registration.PLUGIN_GROUP) for n, v in entry_points.items()]
    monkeypatch.setattr(md, "entry_points", lambda group=None: [e for e in eps if e.group == group])
    monkeypatch.setattr(registration, "registry", dict(registry))
    monkeypatch.setattr(registration, "_plugins_seen", False)
    return registration


def test_an_installed_package_adds_a_method_through_an_entry_point(monkeypatch, tmp_path, capsys):
    from fxprune.train import make_pruner, resolve_config

    factory = ("import fxprune\n"
               "class Methods:\n"
               "    @staticmethod\n"
               "    def greedy(prepared, **kw):\n"
               "        return fxprune.SMCP(prepared, **kw)\n")
    registration = installed_plugins(monkeypatch, tmp_path, {"my_pruning_plugin": factory},
                                     {"greedy": "my_pruning_plugin:Methods.greedy",
                                      "smcp": "my_pruning_plugin:Methods.greedy",
                                      "none": "my_pruning_plugin:Methods.greedy"})
    with pytest.warns(RuntimeWarning) as said:
        names = registration.method_names()
    assert [str(w.message).partition(" is ignored: ")[0] for w in said] == [
        "the 'fxprune.methods' plug-in smcp = 'my_pruning_plugin:Methods.greedy'",
        "the 'fxprune.methods' plug-in none = 'my_pruning_plugin:Methods.greedy'"]
    # break198 F8: recipes read none as no pruning, so no method may take the name
    assert "reserved: prune.method none trains the dense model" in str(said[1].message)
    assert "none" not in names
    with pytest.raises(ValueError, match=r"^register_method: 'none' is reserved"):
        registration.register_method("none", fxprune.SMCP)
    assert "greedy" in names and registration.get_method("smcp").cls is fxprune.SMCP  # shipped kept
    assert "my_pruning_plugin" in registration.get_method("greedy").summary
    from fxprune.cli import main

    assert main(["methods", "greedy"]) == 0
    assert "**kw (other keywords, passed on as they are)" in capsys.readouterr().out
    # a factory forwarding **kwargs still gets the recipe's schedule in steps, not as *_epochs
    cfg = resolve_config({"prune": {"method": "greedy", "target": 0.5,
                                    "update_every_fraction": 0.25, "warmup_fraction": 0.1}})
    pruner = make_pruner(prepared(), cfg["prune"], steps_per_epoch=10, epochs=2)
    assert isinstance(pruner, fxprune.SMCP) and pruner.schedule.update_every == 5
    assert pruner.fxprune_schedule_steps["update_every"] == 5
    with pytest.raises(ValueError, match="entry point in the 'fxprune.methods' group"):
        registration.get_method("nope")


def test_a_misplaced_key_of_a_plug_in_method_is_pointed_at_before_anything_loads_it(
        monkeypatch, tmp_path):
    """review194 L4: the "did you mean prune.KEY?" of a misplaced key read the registry as it
    stood, without the entry-point plug-ins until something else had loaded them."""
    from fxprune.train import ConfigError, resolve_config

    source = ("import fxprune\n"
              "def pruner(prepared, target=0.5, sparsity_knob=3):\n"
              "    return fxprune.SMCP(prepared, target=target)\n")
    installed_plugins(monkeypatch, tmp_path, {"knob_plugin": source},
                      {"knob": "knob_plugin:pruner"})
    with pytest.raises(ConfigError, match=r"did you mean prune.sparsity_knob\?"):
        resolve_config({"model": {"sparsity_knob": 1}})


def test_a_broken_plug_in_is_one_line_naming_it(monkeypatch, tmp_path, capsys):
    from fxprune.cli import main
    from fxprune.train import ConfigError, resolve_config

    modules = {"broken_plugin": "raise RuntimeError('no GPU here')\n", "fine_plugin": "X = 1\n"}
    installed_plugins(monkeypatch, tmp_path, modules,
                      {"broken": "broken_plugin:Method", "a_module": "fine_plugin"})
    assert main(["methods"]) == 0 and "broken" in capsys.readouterr().out  # the list imports none
    assert main(["methods", "broken"]) == 2
    err = capsys.readouterr().err
    assert ("plug-in broken = 'broken_plugin:Method' failed to load: RuntimeError: no GPU here"
            in err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    with pytest.raises(ConfigError, match="names a module, not a method class or factory"):
        resolve_config({"prune": {"method": "a_module"}})


def test_hard_and_magnitude_entries_are_smcp_options():
    pm = prepared()
    hard = get_method("hard").build(pm, target=0.5, channel_step=4)
    assert hard.masks_kind == "hard"
    pm = prepared()
    one = get_method("magnitude").build(pm, target=0.5, prune_at=2, window=1, channel_step=1)
    x, y = data()
    records = []
    for _ in range(4):
        pm.zero_grad()
        F.cross_entropy(pm(x), y).backward()
        records.append(one.step())
    assert [r is not None for r in records] == [False, True, False, False]  # once, at step 2
    assert one.cost() <= 0.5 + 1e-9


def test_a_method_is_not_silently_another():
    # found by a new-user pass: the quick recipe's `masks: soft` turned prune.method=hard into
    # SMCP, and its update_every made every one-shot method fail with a TypeError
    with pytest.raises(ValueError, match=r"method 'hard' runs with masks='hard', but masks='soft' "
                                         r"is set; remove masks \(in a recipe: prune.masks; on the "
                                         r"command line: --set '~prune.masks'\)"):  # break62 #10
        get_method("hard").build(prepared(), target=0.5, masks="soft")
    with pytest.raises(ValueError, match=r"method 'uniform' runs with allocation='uniform'"):
        get_method("uniform").build(prepared(), target=0.5, allocation="knapsack")
    assert get_method("hard").build(prepared(), target=0.5, masks="hard").masks_kind == "hard"
    with pytest.raises(ValueError, match=r"one-shot pruning sets warmup, update_every itself \(the "
                                         r"schedule from prune_at and window, masks='hard', no "
                                         r"hysteresis: one decision\)"):
        get_method("magnitude").build(prepared(), target=0.5, prune_at=2, warmup=1, update_every=3)
    # break85 F4: a hysteresis was accepted and changed nothing (every channel is kept before
    # the one decision)
    with pytest.raises(ValueError, match=r"one-shot pruning sets hysteresis itself"):
        get_method("oneshot").build(prepared(), target=0.5, hysteresis=2)
    # break78 M1: a mistyped keyword was a bare TypeError from the constructor
    with pytest.raises(TypeError, match=r"^method 'ccp': 'taget' is not an argument of the method "
                                        r"\(did you mean target\?\); it takes target, cost, "):
        get_method("ccp").build(prepared(), taget=0.4)
    with pytest.raises(TypeError, match=r"^method 'magnitude': 'tgt' .*\(did you mean target\?\)"):
        get_method("magnitude").build(prepared(), tgt=0.4)  # checked against SMCP's, forwarded


def test_switching_a_recipe_to_one_shot_names_the_keys_it_wrote(tmp_path, capsys):
    """break24 #11: the error named prune.masks_epochs (no such key) and none of the
    *_fraction keys the SMCP recipe wrote."""
    from fxprune.cli import main as cli_main

    smcp = Path(__file__).resolve().parents[1] / "configs" / "fashion_mnist_smcp.yaml"
    rc = cli_main(["train", str(smcp), "--set", "prune.method=oneshot", "--set",
                   "data.name=synthetic", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "prune.method oneshot sets these keys itself: remove prune.warmup_fraction" in err
    assert err.strip().endswith("it sets its arguments warmup, ramp, update_every, freeze_after, "
                                "masks, hysteresis, schedule, ramp_shape")
    assert "--set '~prune.warmup_fraction'" in err and "--set '~prune.cooldown_fraction'" in err
    assert "masks_epochs" not in err and not (tmp_path / "run").exists()


def test_a_method_switch_names_every_key_to_remove_in_one_error(tmp_path, capsys):
    """break73 M2: `--set prune.method=magnitude` on the quick recipe named the schedule keys;
    removing them exactly gave a second error, for prune.importance (magnitude is one-shot
    SMCP with importance="magnitude")."""
    from fxprune.cli import main as cli_main

    quick = Path(__file__).resolve().parents[1] / "configs" / "fashion_mnist_quick.yaml"
    args = ["train", str(quick), "--set", "prune.method=magnitude", "--set",
            "data.name=synthetic", "--out", str(tmp_path / "run")]
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and not (tmp_path / "run").exists()
    assert ("prune.method magnitude runs with importance='magnitude', but the recipe sets "
            "prune.importance='taylor': remove it, or choose the method that has it") in err
    drops = re.findall(r"--set '(~prune\.\w+)'", err)
    assert "~prune.importance" in drops and "~prune.warmup_fraction" in drops
    from fxprune.recipe_config import load_config  # doing what it says is enough
    cfg = load_config(quick, ["prune.method=magnitude", "data.name=synthetic", *drops])
    assert cfg["prune"]["method"] == "magnitude" and "importance" not in cfg["prune"]


def test_recipe_with_another_methods_keys_is_one_config_error(tmp_path, capsys):
    from fxprune.cli import main as cli_main

    quick = Path(__file__).resolve().parents[1] / "configs" / "fashion_mnist_quick.yaml"
    rc = cli_main(["train", str(quick), "--set", "prune.method=hard",
                   "--set", "data.name=synthetic", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "but the recipe sets prune.masks='soft'" in err
    assert not (tmp_path / "run").exists()


def test_activation_taylor_is_the_batch_mean_of_the_per_sample_terms():
    from fxprune.importance import ActivationTaylor

    pm = prepared()
    index = UnitIndex(pm)
    consumers = consumer_weights(pm, index)
    act = ActivationTaylor(pm, consumers, index.n)
    x, y = data()
    F.cross_entropy(pm(x), y).backward()
    act.observe()
    # the same channel sums from the weights: |sum W dL/dW| = |batch sum of t| / N for mask 1
    w = WeightTaylor(consumers, index.n)
    w.observe(index.masks(pm))
    np.testing.assert_allclose(act.scores(), w.scores(), rtol=1e-4, atol=1e-9)
    act.close()
    assert not any(m._forward_pre_hooks for m in pm.modules())


def test_cli_lists_the_registry(capsys):
    from fxprune.cli import main

    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("smcp", "ccp", "cucb", "cucb_random", "magnitude"))
    assert main(["methods", "ccp"]) == 0
    assert "exhaustive_max = 12" in capsys.readouterr().out
    assert main(["methods", "nope"]) == 2
    capsys.readouterr()
    assert main(["methods", "ccp", "cucb", "none"]) == 0  # several at once (break52)
    out = capsys.readouterr().out
    assert "exhaustive_max = 12" in out and "rho = " in out and "no pruning" in out
    # break56 #10: the trainer's own arguments are listed as such, not as recipe keys
    assert ("reduce_fn = None  (Python API only: fxprune train gives it under torchrun, not a "
            "recipe key)") in out
    # break211 F4: the trainer passes no scaler and no loss_reduction; it said it did
    assert "scaler = None  (Python API only, not a recipe key)" in out
    assert "loss_reduction = 'mean'  (Python API only, not a recipe key)" in out
    assert "magnitude" not in out
    # break105 F3: oneshot listed `**kwargs (any other keyword ...)`, not the SMCP arguments it
    # forwards, and offered those it sets itself (warmup) or refuses (any other keyword)
    assert main(["methods", "oneshot"]) == 0
    out = capsys.readouterr().out
    assert "prune_at = 1" in out and "channel_step = 8" in out and "masked_decay = 0.0" in out
    assert "**" not in out and "warmup" not in out and "schedule" not in out


def test_a_reader_that_stops_early_gets_no_traceback():
    """`fxprune methods | head -1`: the pipe closes before the listing is written."""
    import os
    import subprocess
    import sys

    r, w = os.pipe()
    os.close(r)  # every write to w now fails with EPIPE
    try:
        proc = subprocess.run([sys.executable, "-m", "fxprune", "methods"], stdout=w,
                              stderr=subprocess.PIPE, timeout=120)
    finally:
        os.close(w)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_register_method_checks_its_name_and_target_where_they_are_given(monkeypatch):
    """break49 #9: a None or int name was accepted and then broke get_method's own error
    (sorting the names); a target that does not import failed at build as a bare
    ModuleNotFoundError, or 42 as "'int' object is not callable", naming no method."""
    from fxprune.methods.registration import register_method

    monkeypatch.setattr("fxprune.methods.registration.registry", dict(registry))
    for name in (None, 3, ""):
        with pytest.raises(TypeError, match="name must be a non-empty str"):
            register_method(name, fxprune.SMCP)
    with pytest.raises(TypeError, match=r"register_method\('n'\): target must be a method class or "
                                        r"factory, or a 'package.module:attr' string, got a int"):
        register_method("n", 42)
    with pytest.raises(TypeError, match=r"a string target is 'package.module:attr', got 'nopkg'"):
        register_method("n", "nopkg")
    register_method("gone", "nopkg.mod:Cls")
    with pytest.raises(ImportError, match=r"method 'gone' is registered as 'nopkg.mod:Cls', which "
                                          r"does not load \(ModuleNotFoundError"):
        fxprune.get_method("gone").build(prepared())
    register_method("not_callable", "fxprune.methods.base:DEFAULT_TARGET")
    with pytest.raises(ImportError, match=r"a float, not a method class or factory"):
        fxprune.get_method("not_callable").cls
    with pytest.raises(ValueError, match="unknown pruning method 'typo'"):
        fxprune.get_method("typo")  # the registry's names still sort


def test_register_method_checks_its_defaults(monkeypatch):
    """break111 F12: defaults the method does not take were accepted, and failed at build as
    the method's bare TypeError; a list or a string gave a dict-conversion error."""
    from fxprune.methods.registration import register_method

    monkeypatch.setattr("fxprune.methods.registration.registry", dict(registry))
    with pytest.raises(TypeError, match=r"register_method\('mine', defaults=...\): 'targt' is not "
                                        r"an argument of the method \(did you mean target\?\)"):
        register_method("mine", fxprune.SMCP, defaults={"targt": 0.3})
    for wrong in ([1, 2], "ab"):
        with pytest.raises(TypeError, match=r"defaults is a dict of the method's arguments"):
            register_method("mine", fxprune.SMCP, defaults=wrong)
    register_method("later", "fxprune:SMCP", defaults={"bogus": 1})  # imported when built
    with pytest.raises(TypeError, match=r"method 'later' \(its registered defaults\): 'bogus' is "
                                        r"not an argument of the method"):
        fxprune.get_method("later").build(prepared())
    assert register_method("ok", fxprune.SMCP, defaults={"masks": "hard"}).defaults == {"masks": "hard"}


def _repair_unpriced(choice, options, budget, limit):
    """repair's two walks, every step priced again at every round (the oracle for its cache):
    down to the nearest option that saves cost; up a step, or past a dip where the step is free."""
    offsets, choice = budget.index.offsets, list(choice)

    def total_at(ch):
        return budget.total(kept_from(offsets, options, ch))

    total = total_at(choice)
    while total > limit * (1 + 1e-9):
        best = None
        for i, c in enumerate(choice):
            for new in range(c - 1, -1, -1):
                trial = choice[:i] + [new] + choice[i + 1:]
                dc = total_at(trial) - total
                if dc < 0:
                    rate = (options[i].values[c] - options[i].values[new]) / -dc
                    if best is None or rate < best[0]:
                        best = (rate, trial, dc)
                    break
        choice, total = best[1], total + best[2]
    while True:
        best = None
        for i, c in enumerate(choice):
            if c + 1 == len(options[i].counts):
                continue
            up = c + 1
            if options[i].values[up] < options[i].values[c]:  # past a dip where it is free
                free = total_at(choice[:i] + [up] + choice[i + 1:]) <= total
                up = next((n for n in range(c + 1, len(options[i].counts))
                           if options[i].values[n] >= options[i].values[c]), None)
                if not free or up is None:
                    continue
            trial = choice[:i] + [up] + choice[i + 1:]
            dc = total_at(trial) - total
            if total + dc <= limit * (1 + 1e-9):
                rate = (options[i].values[up] - options[i].values[c]) / max(dc, 1e-12)
                if best is None or rate > best[0]:
                    best = (rate, trial, dc)
        if best is None:
            return choice
        choice, total = best[1], total + best[2]


def test_repair_prices_only_the_steps_a_move_changed_and_walks_as_before():
    """nasnetalarge (172 groups) spent 16-20 s in each SMCP update pricing every group's steps
    again after each step taken; a step's cost is kept until a group sharing one of its layers
    moves. The walk is the one every step priced again gives."""
    import torchvision

    pm = fxprune.prepare(torchvision.models.resnet18(num_classes=10).eval(),
                         torch.randn(1, 3, 32, 32))
    pruner = fxprune.SMCP(pm, target=0.9, channel_step=8)
    budget = pruner.budget
    calls = []
    real = budget.cost_of
    budget.cost_of = lambda kept, layers: calls.append(1) or real(kept, layers)
    for seed in range(3):
        options = pruner._options(np.random.default_rng(seed).random(pruner.index.n) ** 3)
        for target in (0.3, 0.7):
            start = [len(o.counts) - 1 for o in options]
            calls.clear()
            got = repair(start, options, budget, target * budget.dense, target)
            steps = sum(s - g for s, g in zip(start, got))
            assert got == _repair_unpriced(start, options, budget, target * budget.dense)
            # every round priced every group's step before: 2 x groups x steps pricings
            assert len(calls) < 0.6 * 2 * len(options) * steps, (len(calls), steps)


def test_an_unknown_method_name_close_to_a_registered_one_is_suggested():
    """break73 M6: "SMCP" or "smpc" got the list of names without a "did you mean"."""
    with pytest.raises(ValueError, match=r"unknown pruning method 'SMCP' \(did you mean 'smcp'\?\)"):
        fxprune.get_method("SMCP")
    with pytest.raises(ValueError, match=r"unknown pruning method 'cucbb' \(did you mean 'cucb'\?\)"):
        fxprune.get_method("cucbb")


@pytest.mark.parametrize("fixed", [float("inf"), float("nan"), None, "3", torch.tensor(float("inf"))])
def test_a_cost_models_fixed_cost_that_is_no_finite_number_is_named(fixed):
    """break111 F13: inf reached the knapsack as "budget is nan", None a bare float() error;
    neither named the cost model."""

    class WithFixed(FlopsCost):
        name = "mine"

        def fixed_cost_for(self, layers):
            return fixed

    with pytest.raises(ValueError, match=r"the cost model 'mine' gives fixed_cost_for\(layers\) = "
                                         r".*; it must return a finite number"):
        fxprune.SMCP(prepared(), cost=WithFixed())


def test_a_cost_models_fixed_cost_may_be_a_zero_dim_tensor():
    """review115 F4: a 0-d tensor worked (float(tensor)) before the finite-number check."""

    class WithFixed(FlopsCost):
        name = "mine"

        def fixed_cost_for(self, layers):
            return torch.tensor(1.5, dtype=torch.float64)

    pruner = fxprune.SMCP(prepared(), cost=WithFixed())
    assert pruner.cost() == 1.0


def test_budget_maps_each_layers_channels_to_groups_as_a_range_test_per_pair_does():
    # break145 F6: the per-(layer, group) range tests and per-pair neighbour intersections
    # are one search of the groups' offsets now; the same reads, touching layers, neighbours
    import torchvision

    from fxprune.budget import Budget

    pm = fxprune.prepare(torchvision.models.densenet121(num_classes=10).eval(), torch.randn(1, 3, 32, 32))
    index = UnitIndex(pm)
    layers = costed_layers(index, pm)
    budget = Budget(index, layers, fxprune.FlopsCost())
    slices = [index.group_slice(i) for i in range(len(index.groups))]
    for layer, per_group in zip(layers, budget._reads):
        reads = layer.out_flat if layer.in_flat is None else layer.in_flat
        expected = {i: np.bincount(reads[(reads >= sl.start) & (reads < sl.stop)] - sl.start,
                                   minlength=sl.stop - sl.start)
                    for i, sl in enumerate(slices) if ((reads >= sl.start) & (reads < sl.stop)).any()}
        assert per_group.keys() == expected.keys()
        assert all(np.array_equal(per_group[i], expected[i]) for i in expected)
    touching = [[li for li, layer in enumerate(layers)
                 if any(((f >= sl.start) & (f < sl.stop)).any()
                        for f in (layer.out_flat, layer.in_flat) if f is not None)]
                for sl in slices]
    assert budget.touching == touching
    assert budget.neighbours == [[j for j, other in enumerate(touching) if set(other) & set(mine)]
                                 for mine in touching]
    assert len(index.groups) > 100


class _BlockCost:
    """FLOPs at the widths rounded up to a multiple of ``block``: flat between, as a table
    timed at every 8th width, or a runtime's kernels in blocks of channels, is."""

    name = "block"

    def __init__(self, block):
        self.block = block

    def layer_cost(self, layer, c_in, c_out):
        up = lambda c: -(-c // self.block) * self.block  # noqa: E731
        return float(layer.flops(up(c_in), up(c_out)))


def test_repair_walks_past_flat_steps_and_value_dips_to_fill_the_budget():
    """break150 F1: under a cost flat over some widths, CCP adaptive landed at 0.32-0.51 of
    dense for targets of 0.5-0.7. repair's single steps stopped there: a step down inside a
    flat stretch saves nothing (so every group was sent to its smallest option), and a step up
    inside one is free but can lose value (CCP's values dip within it), so it was never
    taken. Each walk now goes to the nearest option that saves cost, or past the dip."""
    pm = prepared(width=32)
    index = UnitIndex(pm)
    budget = Budget(index, costed_layers(index), _BlockCost(8))
    options = []
    for g in index.groups:
        counts = np.arange(1, g.size + 1)
        levels = -(-counts // 8)
        # rising by cost level, falling inside one (each level's first option its best)
        values = 10.0 * levels - (counts - 1) % 8
        options.append(GroupOptions(counts, values, np.arange(g.size)[None, :] < counts[:, None]))
    smallest = budget.fraction(kept_from(index.offsets, options, [0] * len(options)))
    full = [len(o.counts) - 1 for o in options]
    for target in (0.4, 0.6, 0.8):
        for start in ([0] * len(options), full):
            choice = repair(start, options, budget, target * budget.dense, target)
            got = budget.fraction(kept_from(index.offsets, options, choice))
            assert target - 0.1 < got <= target * (1 + 1e-9), (target, start[0], got, smallest)
            # every group sits at a level's first option: the walks step past the dips
            # each group at a level's first option (its best) or left at its full width
            assert all((o.counts[c] - 1) % 8 == 0 or c == len(o.counts) - 1
                       for o, c in zip(options, choice))
        result = allocate(options, budget, target, np.ones(index.n, bool))
        assert target - 0.1 < result.actual <= target * (1 + 1e-9)


@pytest.mark.parametrize("method", ["cucb", "ccp"])
def test_a_target_set_mid_run_is_checked_and_followed_or_refused(method):
    """break152 F1: CUCB and CCP kept the target they were built with when pruner.target was
    set mid-run (CUCB ended at 0.49 for 0.3, without a word) and took 1.5 and NaN; SMCP
    follows it. Now checked at the next step, followed by the choices left, and refused with
    the reason where none is left or where a per-group fraction sets the widths."""
    from test_smcp import train

    def build(**kw):
        pm = prepared()
        if method == "cucb":
            return pm, fxprune.CUCB(pm, warmup=1, explore=8, execution="masked", **kw)
        return pm, fxprune.CCP(pm, collect=2, prune_at=8, **kw)

    mode = {"mode": "budget"} if method == "cucb" else {"mode": "adaptive"}
    pm, pruner = build(target=0.5, **mode)
    train(pm, pruner, 3)
    pruner.target = 0.3
    train(pm, pruner, 6, seed=1)
    assert pruner.target == pruner.cost_target == 0.3 and pruner.cost() <= 0.3 + 1e-9
    with pytest.raises(ValueError, match=r"pruner.target was changed to 0.2 at step 10, after "
                                         r"(the final pick|its last round) \(step 8\): no later "
                                         r"choice follows it"):
        pruner.target = 0.2
        train(pm, pruner, 1, seed=2)
    for bad in (1.5, float("nan")):
        pm, pruner = build(target=0.5, **mode)
        pruner.target = bad
        with pytest.raises(ValueError, match=r"^target is the fraction of the dense cost to keep"):
            train(pm, pruner, 1)
    fixed = {"rho": 0.5} if method == "cucb" else {"ratio": 0.5}
    pm, pruner = build(mode="ratio", **fixed)
    pruner.target = 0.3
    with pytest.raises(ValueError, match=rf"pruner.target was set to 0.3, but this "
                                         rf"{method.upper()} keeps {'rho' if method == 'cucb' else 'ratio'}=0.5 "
                                         r"of each group's channels \(mode='ratio'\): no cost target"):
        train(pm, pruner, 1)
    if method == "cucb":  # ratio mode under a target: the common fraction is fitted again
        pm, pruner = build(target=0.5, mode="ratio")
        rho = pruner.rho
        pruner.target = 0.3
        train(pm, pruner, 1)
        assert pruner.rho < rho and pruner.rho == pruner._fitting_rho(0.3)


@pytest.mark.parametrize("method", ["SMCP", "CUCB", "CCP"])
def test_a_pruner_built_on_pruned_masks_without_its_state_says_so_at_its_first_step(method):
    """break152 F5: a resume that restored the model (its masks) but built the pruner afresh,
    without load_state_dict, started the schedule again at step 0 on the pruned masks (CCP
    brought back 9 channels it had pruned for good), without a word."""
    from test_smcp import train

    kwargs = {"SMCP": dict(target=0.5, warmup=1, ramp=4, update_every=1, channel_step=1),
              "CUCB": dict(target=0.5, warmup=1, explore=4, execution="masked"),
              "CCP": dict(target=0.5, collect=2, prune_at=3)}[method]
    pm = prepared()
    pruner = getattr(fxprune, method)(pm, **kwargs)
    train(pm, pruner, 5)
    state, saved = pruner.state_dict(), copy.deepcopy(pm.state_dict())
    resumed = prepared()
    resumed.load_state_dict(saved)
    fresh = getattr(fxprune, method)(resumed, **kwargs)
    with pytest.warns(RuntimeWarning, match=rf"{method}.step\(\) at step 1: the model's masks "
                                            r"already pruned \d+ channels \(cost 0\.\d+ of dense\) "
                                            r"when this .* load the saved pruner state"):
        train(resumed, fresh, 1)
    # break159 F6: the pruner built first, the model's state loaded after it: said too
    resumed = prepared()
    fresh = getattr(fxprune, method)(resumed, **kwargs)
    resumed.load_state_dict(saved)
    with pytest.warns(RuntimeWarning, match=rf"{method}.step\(\) at step 1: the model's masks "
                                            r"already pruned \d+ channels \(cost 0\.\d+ of dense\) "
                                            r"since this .* load the saved pruner state"):
        train(resumed, fresh, 1)
    resumed = prepared()
    resumed.load_state_dict(saved)
    loaded = getattr(fxprune, method)(resumed, **kwargs)
    loaded.load_state_dict(state)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*already pruned")
        train(resumed, loaded, 1)
    with warnings.catch_warnings():  # a model with every channel kept: nothing to say
        warnings.filterwarnings("error", message=".*already pruned")
        pm = prepared()
        train(pm, getattr(fxprune, method)(pm, **kwargs), 1)
        # the usual resume order, every state loaded after the pruner is built
        resumed = prepared()
        loaded = getattr(fxprune, method)(resumed, **kwargs)
        resumed.load_state_dict(saved)
        loaded.load_state_dict(state)
        train(resumed, loaded, 1)


def test_a_subclass_without_its_own_init_says_a_state_loaded_after_it_was_built():
    """review161 F8: the check ran for the class whose constructor ran outermost only, so a
    subclass overriding step() alone never said it."""
    from test_smcp import train

    class MySMCP(fxprune.SMCP):
        def step(self, loss=None):
            return super().step(loss)

    kwargs = dict(target=0.5, warmup=1, ramp=4, update_every=1, channel_step=1)
    pm = prepared()
    train(pm, MySMCP(pm, **kwargs), 5)
    resumed = prepared()
    fresh = MySMCP(resumed, **kwargs)
    resumed.load_state_dict(pm.state_dict())
    with pytest.warns(RuntimeWarning, match=r"MySMCP.step\(\) at step 1: the model's masks already pruned"):
        train(resumed, fresh, 1)


def test_a_superseded_pruner_copied_beside_the_newer_one_does_not_become_the_latest():
    """review161 F9: deep-copying (model, old, new) made the old pruner's copy the copied
    model's latest (the first copy made claimed it), and stepping the newer copy warned that
    it had been superseded."""
    from fxprune.methods.base import latest_pruner

    pm = prepared()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        old, new = fxprune.SMCP(pm, target=0.5), fxprune.SMCP(pm, target=0.5)
    for copied in (copy.deepcopy((pm, old, new)), pickle.loads(pickle.dumps((pm, old, new)))):
        assert latest_pruner(copied[0]) is copied[2]


def test_trade_steps_raises_a_group_past_a_dip_in_a_free_stretch():
    """review153 F6 (break150 F1's trade): a group at a flat stretch's best option, the rest of
    the stretch worth less and the next stretch worth far more but over the room left, was
    never raised: trade_steps looked one option up only, found it worth less, and moved on."""
    from fxprune.allocation import trade_steps

    pm = prepared(width=32)
    index = UnitIndex(pm)
    budget = Budget(index, costed_layers(index), _BlockCost(8))
    options = []
    for i, g in enumerate(index.groups):
        counts = np.arange(1, g.size + 1)
        values = (100.0 * -(-counts // 8) - (counts - 1) % 8 if i == 0  # 100 a stretch
                  else 0.001 * counts)  # the others: worth little
        options.append(GroupOptions(counts, values, np.arange(g.size)[None, :] < counts[:, None]))
    choice = [0] + [len(o.counts) - 1 for o in options[1:]]
    limit = budget.total(kept_from(index.offsets, options, choice))  # no room left
    traded = trade_steps(choice, options, budget, limit)
    assert options[0].counts[traded[0]] > 8  # into a costlier stretch, paid for by the others
    assert budget.total(kept_from(index.offsets, options, traded)) <= limit * (1 + 1e-9)
    assert sum(o.values[c] for o, c in zip(options, traded)) > sum(
        o.values[c] for o, c in zip(options, choice))


class _LaunchFloor:
    """A layer costs its dense FLOPs until its FLOPs fall under ``frac`` of them, then that
    fraction: a cost of both widths at once, flat but for one drop (a kernel's launch time)."""

    name = "launch-floor"

    def __init__(self, frac):
        self.frac = frac

    def layer_cost(self, layer, c_in, c_out):
        dense = float(layer.flops(layer.in_channels, layer.out_channels))
        return dense if float(layer.flops(c_in, c_out)) > self.frac * dense else self.frac * dense


def test_repair_fills_again_after_a_move_inside_an_equal_cost_stretch():
    """review153 F2: the move to a stretch's best option changed its neighbours' widths, and a
    neighbour's step up it had made free was left untaken (13 of 300 random cases)."""
    left = checked = 0
    index = UnitIndex(prepared(width=8))
    for seed in range(100):  # (seeds 39, 45, 50, 88 and 99 left one before)
        rng = np.random.default_rng(seed)
        budget = Budget(index, costed_layers(index), _LaunchFloor(rng.uniform(0.2, 0.7)))
        options = []
        for g in index.groups:
            counts = np.arange(1, g.size + 1)
            values = np.cumsum(rng.random(g.size)) - rng.random(g.size) * 1.5
            options.append(GroupOptions(counts, values,
                                        np.arange(g.size)[None, :] < counts[:, None]))
        target = float(rng.uniform(0.3, 0.9))
        limit = target * budget.dense
        try:
            choice = repair([len(o.counts) - 1 for o in options], options, budget, limit, target)
        except InfeasibleBudget:  # a target below the floor's cost
            continue
        checked += 1
        total = budget.total(kept_from(index.offsets, options, choice))
        assert total <= limit * (1 + 1e-9)
        for i, o in enumerate(options):  # no step up that fits and gains is left
            c = choice[i]
            if c + 1 < len(o.counts) and o.values[c + 1] >= o.values[c]:
                trial = choice[:i] + [c + 1] + choice[i + 1:]
                left += budget.total(kept_from(index.offsets, options, trial)) <= limit
    assert left == 0 and checked > 50
