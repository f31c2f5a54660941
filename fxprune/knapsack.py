"""Multiple-choice knapsack: pick one option per group, maximise value under a cost budget.

This is the combinatorial core of cost-constrained channel pruning: a group's options are
"keep k channels" for the allowed k, an option's value is the importance kept and its cost
what the group's layers cost at that width. :func:`solve_mckp` is a pure function over arrays
and knows nothing about networks.

Method
------
Dynamic programming over integer cost cells. Two reductions make it both exact where costs
are integers and cheap where they are not:

* Every group's cheapest option is always affordable once the problem is feasible, so only the
  *extra* cost above each group's cheapest option is spent from the *slack*
  ``budget - sum(min cost per group)``. Quantising the extra costs instead of the raw costs
  puts all cells where choices actually differ.
* Extra costs are rounded UP to whole units of ``unit = slack / resolution``. Any choice that
  fits in the rounded costs therefore fits in the real ones, so the answer never breaks the
  budget. Rounding up can only exclude choices whose real cost is within
  ``n_groups * unit`` of the budget, so the answer's value is at least the true optimum at
  ``budget - n_groups * unit`` (and at most the true optimum at ``budget``). With integer costs
  and ``slack <= resolution`` the unit is 1 and the answer is exactly optimal.

``best[g][c]`` is the best value of the first ``g`` groups whose extra cost is at most ``c``
units; for each option ``(w, v)`` of group ``g`` one vector pass over the cells computes
``best[g-1][c - w] + v`` and keeps the maximum. Cells beyond the heaviest total the groups so
far can reach only repeat the last value, so each pass stops there, and groups are taken in
order of their heaviest option to keep that prefix short. The chosen options are recovered by
walking the stored tables backwards and finding, per group, the option that reproduces the
stored value (the same float additions give bit-identical results, so equality is exact).

Complexity: time O(sum over groups of options_g * (cells)) with ``cells = resolution + 1``
(at most; options whose rounded extra cost collides keep only the most valuable, options that
cannot fit are dropped), memory O(n_groups * cells) float64 (60 groups x 20,001 cells: 10 MB).
Measured with the default 20,000 cells (``benchmarks/bench_knapsack.py``, one core of a
2.8 GHz Xeon): ResNet-50's 37 channel groups (8-256 options each) ~15 ms; 60 groups of 256
options each ~170 ms.

Option costs need not be monotone in the option index, nor values: any option may be chosen.
Among equally valuable answers the one with the cheapest rounded total is returned, and within
a group the lowest option index.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np

from .errors import ArgumentError, InfeasibleBudget

__all__ = ["solve_mckp", "DEFAULT_RESOLUTION"]

# Cells of the DP table. Rounding costs up loses at most n_groups/resolution of the slack: for
# 55 groups and 20,000 cells, 0.28% of the slack in the worst case (typically a fraction of
# that), while a ResNet-50-sized solve stays far below a second on a 2-core CPU.
DEFAULT_RESOLUTION = 20_000
# relative difference between two float sums of the same numbers in another order, at most
_SUM_ULPS = 1e-12


#: the largest dynamic-programming table solve_mckp builds (bytes)
_MAX_TABLE_BYTES = 2 * 2**30


def _as_groups(values: Sequence, costs: Sequence) -> tuple[list[np.ndarray], list[np.ndarray]]:
    for name, given in (("values", values), ("costs", costs)):
        if not hasattr(given, "__len__") or isinstance(given, (str, bytes)):
            # (break111 F15: None or a generator was "object of type ... has no len()")
            raise ArgumentError(f"{name} is a sequence of 1-D arrays, one per group, got "
                                f"{type(given).__name__}")
    if len(values) != len(costs):
        raise ArgumentError(f"values has {len(values)} groups but costs has {len(costs)}; "
                            "pass one array of options per group in both")
    vals, csts = [], []
    for g, (v, c) in enumerate(zip(values, costs)):
        v, c = np.asarray(v), np.asarray(c)
        for name, given in (("values", v), ("costs", c)):
            if given.dtype.kind not in "biuf":  # (strings were read as numbers, silently)
                raise ArgumentError(f"group {g}: {name} must be numbers, got an array of dtype "
                                    f"{given.dtype}")
        v = v.astype(np.float64, copy=False)
        c = c.astype(np.float64, copy=False)
        if v.ndim != 1 or c.ndim != 1:
            raise ArgumentError(f"group {g}: values and costs must be 1-D arrays of options, got "
                                f"shapes {v.shape} and {c.shape}")
        if v.shape != c.shape:
            raise ArgumentError(f"group {g}: {v.size} values but {c.size} costs; each option "
                                "needs exactly one value and one cost")
        if v.size == 0:
            raise ArgumentError(f"group {g} has no options; every group needs at least one "
                                "(e.g. 'keep all channels')")
        if not np.all(np.isfinite(v)):
            raise ArgumentError(f"group {g}: values must be finite, got {v[~np.isfinite(v)][:3]}")
        if not np.all(np.isfinite(c)):
            raise ArgumentError(f"group {g}: costs must be finite, got {c[~np.isfinite(c)][:3]}")
        if np.any(c < 0):
            raise ArgumentError(f"group {g}: costs must be >= 0, got {c[c < 0][:3]}")
        vals.append(v)
        csts.append(c)
    return vals, csts


def _best_per_group(vals: list[np.ndarray], csts: list[np.ndarray]) -> np.ndarray:
    """Highest-value option of each group, the cheapest among equal values."""
    # lexsort sorts by the last key first: value descending, then cost, then index.
    return np.array([np.lexsort((np.arange(v.size), c, -v))[0] for v, c in zip(vals, csts)],
                    dtype=np.int64)


def solve_mckp(values: Sequence, costs: Sequence, budget: float, *,
               resolution: int = DEFAULT_RESOLUTION) -> np.ndarray:
    """Choose one option per group maximising total value with total cost <= ``budget``.

    Args:
        values: one 1-D array per group, the value of each of the group's options.
        costs: one 1-D array per group, same shapes as ``values``, each option's cost (>= 0).
        budget: the largest total cost allowed.
        resolution: number of cost cells the slack above the cheapest choice is divided into;
            more cells, less rounding loss (at most ``n_groups * slack / resolution`` of
            budget left unused compared to the optimum), proportionally more time.

    Returns:
        int64 array with the chosen option index of each group. Its total cost never exceeds
        ``budget`` (a budget short of the cheapest options' sum by a relative 1e-12 or less,
        as another summation order gives, counts as that sum); with integer costs and
        ``budget - min total cost <= resolution`` its value is optimal, otherwise it is at
        least the optimum at ``budget - n_groups * unit`` where
        ``unit = (budget - min total cost) / resolution``.

    Raises:
        ValueError: malformed input (mismatched group counts or shapes, an empty group, NaN or
            infinite entries, negative costs, non-numbers, ``resolution < 1``, a table over
            2 GiB: 8 bytes x groups x (cells + 1), where cells is the integer slack
            ``budget - min total cost`` when every cost's excess over its group's cheapest is
            an integer and the slack is at most ``resolution``, else ``resolution``) or an
            infeasible budget
            (even the cheapest option of every group costs more than ``budget``).
    """
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) \
            or resolution < 1:
        raise ArgumentError(f"resolution must be a positive integer, got {resolution!r}")
    if getattr(budget, "ndim", None) == 0 and hasattr(budget, "item"):  # np.array(5.), a 0-d tensor
        budget = budget.item()
    if isinstance(budget, bool) or not isinstance(budget, numbers.Real):  # "5" read as 5.0
        raise ArgumentError(f"budget must be a number, got {budget!r}")
    budget = float(budget)
    if math.isnan(budget) or budget == -math.inf:  # -inf: the tolerance would be inf too
        raise ArgumentError(f"budget is {budget}: give a finite number or +inf (no limit)")
    vals, csts = _as_groups(values, costs)
    if not vals:
        if budget < 0:  # nothing chosen costs 0 (break67 #5: [] was returned)
            raise InfeasibleBudget(f"infeasible budget: with no groups the total cost is 0, which "
                                   f"exceeds the budget {budget:.12g}; give a budget >= 0")
        return np.zeros(0, dtype=np.int64)

    min_costs = np.array([c.min() for c in csts])
    min_total = _fsum(min_costs.tolist())
    # a budget written as the caller's own sum of the cheapest options may differ from this
    # one in the last bits (another summation order): that is the cheapest choice, not over
    if min_total > budget and (math.isinf(min_total)  # (inf - x > 1e-12 * inf is false)
                               or min_total - budget > _SUM_ULPS * max(abs(budget), min_total)):
        if math.isinf(min_total):
            raise InfeasibleBudget("infeasible budget: the cheapest option of every group together "
                                   "costs more than the largest float (their sum overflows); scale "
                                   "the costs and the budget down")
        over = min_total - budget
        relative = f" ({over / budget:.2%} over)" if budget > 0 else ""
        raise InfeasibleBudget(
            f"infeasible budget: the cheapest option of every group together costs "
            f"{min_total:.12g}, which exceeds the budget {budget:.12g} by {over:.6g}{relative}; "
            f"raise the budget to at least {min_total:.12g} or allow cheaper options")

    # If the most valuable option of every group fits, the budget does not bind.
    greedy = _best_per_group(vals, csts)
    # summed as the final check sums (break156 F3: a plain sum passed a choice 1 ulp over)
    if _fsum(float(c[j]) for c, j in zip(csts, greedy)) <= budget:  # floats: inf, no warning
        return greedy

    slack = max(budget - min_total, 0.0)
    extras = [c - m for c, m in zip(csts, min_costs)]
    integral = all(np.all(e == np.round(e)) for e in extras) and math.floor(slack) <= resolution
    if integral:
        unit, cells = 1.0, int(math.floor(slack))
    else:
        unit, cells = slack / resolution, int(resolution)
    need = 8 * len(vals) * (cells + 1)  # the DP's float64 table, groups x cells
    if need > _MAX_TABLE_BYTES:  # (break111 F15: resolution=10**9 asked numpy for 14.9 GiB)
        most = _MAX_TABLE_BYTES // (8 * len(vals)) - 1
        raise ArgumentError(f"resolution {resolution} over {len(vals)} groups needs a "
                            f"{need / 2**30:.3g} GiB table (8 bytes x groups x (cells + 1), {cells} "
                            f"cells: {'the integer slack' if integral else 'the resolution'}); "
                            f"give a resolution of at most {most}")
    if cells == 0 or unit == 0.0:
        # No room above the cheapest choice: the most valuable of each group's cheapest options.
        return np.array([np.flatnonzero(e == 0)[np.argmax(v[e == 0])]
                         for v, e in zip(vals, extras)], dtype=np.int64)

    if integral:
        return _solve_cells(vals, extras, unit, cells)
    # An extra cost that fills the budget exactly sits on a cell boundary, where float error
    # may put it a hair above (break67 #3: solve_mckp([[0, 1, 2]], [[0, .3, .5]], .3) gave [0]):
    # weights are rounded up from a hair below, and the answer is kept if its real total fits;
    # else the unit is shrunk by a hair, which keeps float error from crossing the budget.
    choice = _solve_cells(vals, extras, unit, cells, below=1e-9)
    if _fsum(float(c[j]) for c, j in zip(csts, choice)) <= budget:
        return choice
    return _solve_cells(vals, extras, unit * (1.0 - 1e-12), cells)


def _fsum(numbers) -> float:
    """math.fsum, +inf where the exact sum is past the largest float (fsum raises
    OverflowError there: break147 F3, two options of 1e308 each)."""
    try:
        return math.fsum(numbers)
    except OverflowError:
        return math.inf


def _solve_cells(vals, extras, unit: float, cells: int, below: float = 0.0) -> np.ndarray:
    """The multiple-choice knapsack over ``cells`` cost cells of ``unit`` (extra costs above
    each group's cheapest option, rounded up to whole cells from ``below`` cells under)."""
    # An extra cost over (cells + 1) units never fits: capped there before the integer cast (a
    # tiny slack made e / unit overflow int64 to a negative weight that passed as fitting)
    # (a subnormal unit overflows e / unit to inf, which the cap handles: no warning to print)
    with np.errstate(over="ignore"):
        weights = [np.maximum(np.ceil(np.minimum(e / unit, cells + 1.0) - below), 0).astype(np.int64)
                   for e in extras]

    # Per group, per distinct weight, only the most valuable option can ever be chosen.
    candidates = []  # (weights, values, original indices) per group, sorted by weight
    for v, w in zip(vals, weights):
        fits = np.flatnonzero(w <= cells)
        order = fits[np.lexsort((fits, -v[fits], w[fits]))]
        first = np.ones(order.size, dtype=bool)
        first[1:] = w[order][1:] != w[order][:-1]
        keep = order[first]
        candidates.append((w[keep], v[keep], keep))

    # Cells above the heaviest reachable total just repeat the last value, so each group only
    # computes up to that total; taking light groups first keeps those prefixes short.
    order_groups = np.argsort([int(w[-1]) for w, _, _ in candidates], kind="stable")
    n_cells = cells + 1
    tables = np.empty((len(vals), n_cells), dtype=np.float64)
    prev = np.zeros(n_cells)
    scratch = np.empty(n_cells)
    reach = 0
    for step, g in enumerate(order_groups):
        w, v, _ = candidates[g]
        reach = min(cells, reach + int(w[-1]))
        n = reach + 1
        cur = tables[step]
        # Weight 0 always exists (each group's cheapest option) and comes first.
        np.add(prev[:n], v[0], out=cur[:n])
        for wj, vj in zip(w[1:].tolist(), v[1:].tolist()):
            span = n - wj
            np.add(prev[:span], vj, out=scratch[:span])
            np.maximum(cur[wj:n], scratch[:span], out=cur[wj:n])
        cur[n:] = cur[reach]
        prev = cur

    # The cheapest total among the best: first cell where the final table reaches its maximum.
    c = int(np.argmax(prev == prev[-1]))
    choice = np.empty(len(vals), dtype=np.int64)
    zeros = np.zeros(n_cells)
    for step in range(len(vals) - 1, -1, -1):
        g = order_groups[step]
        w, v, idx = candidates[g]
        below = tables[step - 1] if step > 0 else zeros
        ok = w <= c
        reached = np.flatnonzero(ok)[below[c - w[ok]] + v[ok] == tables[step][c]]
        # Lowest original option index among the options that reproduce the value.
        j = reached[np.argmin(idx[reached])]
        choice[g] = idx[j]
        c -= int(w[j])
    return choice
