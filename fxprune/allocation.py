"""The global allocator: which channels each group keeps so the model's real cost fits a budget.

Every pruning method reduces to the same question. Each prunable group offers *options*: "keep
these channels" (a bool row over the group's channels), how many that is, and what the option
is worth. A cost model prices each option, a multiple-choice knapsack picks one option per
group under the budget, and exact repair makes the answer fit the real cost. What differs
between methods is only how the options are generated:

* SMCP / one-shot baselines: the top-k of a ranking (:func:`ranked_options`), value = summed
  importance of the kept channels;
* CCP: per count, the best subset of the group's pairwise quadratic (value = minus its predicted
  loss change), subsets need not be nested;
* CUCB's cost-budget oracle: the top-k by the bandit index, value = summed index.

The functions here are pure over arrays, given a :class:`~fxprune.budget.Budget` (which prices
a bool vector of kept channels with the cost model). The flat channel numbering is that of
:class:`~fxprune.units.UnitIndex`: group ``i`` owns ``offsets[i]:offsets[i+1]``.

Pricing (``Budget.subset_costs``) holds every other group at its current width, which is exact
only near the answer; :func:`allocate` re-prices around its answer and solves again (at most
``max_resolves`` times), then :func:`repair` walks option steps with *exact* costs: drops
the least valuable step per cost saved while over the budget (to the nearest option that saves
cost, past a stretch of equal cost), then adds the most valuable step per cost that still fits
(past a value dip where the step is free), and moves a group inside a stretch of equal cost to
its best option there. With at most :data:`EXHAUSTIVE_ALWAYS` combinations of
options, every one is tried. Where that leaves over 1% of the dense cost unused (coarse
options on a small model), every combination is tried when there are at most
:data:`EXHAUSTIVE_MAX`, else the earlier answers are repaired too and :func:`trade_steps`
trades a step up in one group for steps down in others. The result always fits (or
:class:`InfeasibleBudget` is raised).
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .budget import Budget
from .errors import ArgumentError, InfeasibleBudget
from .knapsack import DEFAULT_RESOLUTION, solve_mckp

__all__ = ["GroupOptions", "Allocation", "InfeasibleBudget", "allowed_counts", "ranked_options",
           "kept_from", "allocate", "allocate_uniform", "repair", "trade_steps", "uniform_kept",
           "uniform_counts", "step_too_wide"]

#: how many times :func:`allocate` re-solves with the layers' widths of its last answer
DEFAULT_MAX_RESOLVES = 6

_SLACK = 1 + 1e-9  # float round-off when comparing a real total with the budget
#: a fraction of the dense cost left unused above which :func:`allocate` searches further
_UNUSED = 0.01


@dataclass
class GroupOptions:
    """One group's choices. ``keep``: (options, size) bool, which channels option j keeps;
    ``counts``: (options,) kept channels; ``values``: (options,) float64, higher is better.
    Options are ordered by count (the repair steps between neighbours)."""

    counts: np.ndarray
    values: np.ndarray
    keep: np.ndarray

    def __post_init__(self):
        self.counts = np.asarray(self.counts, dtype=np.int64)
        self.values = np.asarray(self.values, dtype=np.float64)
        self.keep = np.asarray(self.keep, dtype=bool)
        if self.keep.ndim != 2 or len(self.keep) != len(self.counts) or len(self.values) != len(self.counts):
            raise ArgumentError(f"GroupOptions needs keep (options, size) and one count and value per "
                                f"option; got shapes {self.keep.shape}, {self.counts.shape}, {self.values.shape}")
        if not len(self.counts):
            raise ArgumentError("a group needs at least one option (e.g. keep every channel)")

    def with_option(self, keep: np.ndarray, value: float) -> "GroupOptions":
        """These options and one more keeping ``keep`` ((size,) bool), worth ``value``, placed
        by its count; ``self`` when an option keeps those channels already."""
        keep = np.asarray(keep, dtype=bool)
        if (self.keep == keep).all(axis=1).any():
            return self
        count = int(keep.sum())
        at = int(np.searchsorted(self.counts, count, side="left"))
        return GroupOptions(np.insert(self.counts, at, count), np.insert(self.values, at, value),
                            np.insert(self.keep, at, keep, axis=0))


@dataclass
class Allocation:
    """What :func:`allocate` chose. ``kept``: bool per flat channel; ``choice``: option index
    per group; ``predicted``: the first knapsack answer's priced cost and ``solved_actual`` its
    real cost (both fractions of dense: how good pricing with the other widths held is);
    ``actual``: the final real cost fraction; ``resolves``: knapsack solves made;
    ``rho`` (:func:`allocate_uniform` only): the fractions ``(low, high]`` that give its choice."""

    kept: np.ndarray
    choice: list[int]
    predicted: float
    solved_actual: float
    actual: float
    resolves: int
    rho: tuple[float, float] | None = None


def allowed_counts(size: int, step: int, low: int, high: int, unit_channels: int = 1) -> np.ndarray:
    """How many of a group's ``size`` channels it may keep: counts whose channel total is a
    multiple of ``step`` (runtimes' kernels work on blocks of channels: an odd count can cost
    more than a round one, across layers, where no per-layer cost sees it), plus all of them;
    within ``[low, high]``. ``unit_channels``: channels per unit of the group (a grouped conv's
    tied positions), so a unit count k keeps ``k * unit_channels`` channels. Where no multiple
    of ``step`` lies in ``[low, high]`` (a group that must keep more than its last multiple, for
    the pieces it feeds), the one count ``min(high, size)`` clamped to ``low`` is allowed, off
    the grid.

    Raises ValueError when ``[low, high]`` holds no count from 1 to ``size``."""
    if not 1 <= max(low, 1) <= min(high, size):
        raise ArgumentError(f"allowed_counts: a {size}-channel group has no count in [{low}, {high}]; "
                            f"low must be at most min(high, size)")
    per = max(1, step // math.gcd(step, unit_channels)) if step > 1 else 1
    ks = set(range(per, size + 1, per)) | {size}
    ks = sorted(k for k in ks if low <= k <= high)
    if not ks:  # the constraints leave only counts off the step grid
        ks = [max(low, min(high, size))]
    return np.array(ks, dtype=np.int64)


def uniform_kept(index, keep: float, step: int) -> np.ndarray:
    """Bool per flat channel of ``index`` (a :class:`~fxprune.units.UnitIndex`): every prunable
    group keeps the allowed count (:func:`allowed_counts` at ``step``, at least one channel of
    every piece it feeds) nearest ``keep`` x its size; ``keep=0`` is the cheapest model the
    constraints allow."""
    kept = np.zeros(index.n, dtype=bool)
    for i, group in enumerate(index.groups):
        order, counts = uniform_counts(index, i, step)
        k = int(counts[np.argmin(np.abs(counts - keep * group.size))])
        kept[index.group_slice(i).start + order[:k]] = True
    return kept


def step_too_wide(index, channel_step: int, min_kept: float = 0.0) -> str | None:
    """Why no group of ``index`` (a :class:`~fxprune.units.UnitIndex`) can be pruned at
    ``channel_step`` and ``min_kept`` where a finer step or a lower floor could prune some, or
    None: the narrowest model they allow keeps every channel. (Not groups of pieces of one
    channel each, which keep all at any step; nor a grouped conv's groups of several channels
    a unit, which a step of a unit's width prunes: sizes are compared in channels, not
    units.) The step is named where it alone keeps every group whole, else ``min_kept``
    (review208 R2: a floor keeping them whole was blamed on the step)."""
    bare = index.with_floor(0.0)
    if not index.groups or uniform_kept(bare, 0.0, 1).all():
        return None
    if not uniform_kept(bare, 0.0, channel_step).all():
        if min_kept and uniform_kept(index.with_floor(min_kept), 0.0, channel_step).all():
            return (f"min_kept={min_kept:g} keeps every prunable group whole at channel_step="
                    f"{channel_step}, so none can be pruned and the model stays dense; lower "
                    "min_kept")
        return None
    sizes = ", ".join(str(g.size * u) for g, u in zip(index.groups[:6], index.unit_channels))
    return (f"channel_step={channel_step} is at least as wide as every prunable group ({sizes}"
            f"{', ...' if len(index.groups) > 6 else ''} channels), so none can be pruned and "
            "the model stays dense; lower channel_step")


def uniform_counts(index, i: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Group ``i`` of ``index`` ranked without scores (the first channels of every piece it
    feeds first) and the counts it may keep at ``step``: what :func:`uniform_kept` picks from."""
    group = index.groups[i]
    order, min_k = index.ranking(i, np.zeros(group.size))
    return order, allowed_counts(group.size, step, min_k, group.size, index.unit_channels[i])


def ranked_options(scores: np.ndarray, order: np.ndarray, counts: np.ndarray) -> GroupOptions:
    """Options "keep the top ``k`` of ``order``" for each ``k`` in ``counts``, each worth the
    summed ``scores`` of the channels it keeps. ``scores``/``order``: (size,)."""
    scores = np.asarray(scores, dtype=np.float64)
    order = np.asarray(order, dtype=np.int64)
    counts = np.asarray(counts, dtype=np.int64)
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    cum = np.concatenate([[0.0], np.cumsum(scores[order])])
    return GroupOptions(counts, cum[counts], rank[None, :] < counts[:, None])


def kept_from(offsets: np.ndarray, options: list[GroupOptions], choice) -> np.ndarray:
    """The flat bool vector of kept channels when group ``i`` takes option ``choice[i]``."""
    kept = np.zeros(int(offsets[-1]), dtype=bool)
    for i, (opt, c) in enumerate(zip(options, choice)):
        kept[int(offsets[i]):int(offsets[i + 1])] = opt.keep[int(c)]
    return kept


def _solve_priced(values, costs, constant, budget, resolution):
    floor = [float(c.min()) for c in costs]
    shifted = [c - f for c, f in zip(costs, floor)]
    avail = budget - constant - sum(floor)
    if avail < 0:  # even the cheapest options are predicted over: take them (repair fixes it)
        choice = np.array([int(np.argmin(c)) for c in costs])
    else:
        choice = solve_mckp(values, shifted, avail, resolution=resolution)
    predicted = constant + sum(float(c[j]) for c, j in zip(costs, choice))
    return choice, predicted


def allocate(options: list[GroupOptions], budget: Budget, target: float, current: np.ndarray, *,
             resolution: int = DEFAULT_RESOLUTION, max_resolves: int = DEFAULT_MAX_RESOLVES,
             widths: Mapping[str, float] | None = None) -> Allocation:
    """One option per group with real cost <= ``target`` x dense and a summed value as high as
    the search finds: re-priced knapsack solves, then :func:`repair`; then every combination
    where there are at most :data:`EXHAUSTIVE_ALWAYS` (the optimum), else, where over 1% of the
    budget is left, every combination (at most :data:`EXHAUSTIVE_MAX`) or :func:`trade_steps`.
    Beyond that a heuristic, not always the optimum: on a 7-layer chain, up to 5% of the value
    short of trying every combination; on random 3-4-conv chains of 257-20,000
    combinations, 3 of 100 more than 1% short and up to 16.6% (the last group, read
    by a cheap head alone, priced as almost free with the others held). Trying every
    combination up to :data:`EXHAUSTIVE_MAX` in any case fixed that, but cost seconds per
    update on deep models of few groups and changed CCP's budget filling.

    ``current``: bool per flat channel, the widths the first pricing holds the other groups at.
    Raises :class:`InfeasibleBudget` (naming ``widths``, the arguments that bound the options,
    see :func:`raise_infeasible`) when even the cheapest options are over the target.
    """
    if isinstance(max_resolves, bool) or not isinstance(max_resolves, int) or max_resolves < 1:
        raise ArgumentError(f"max_resolves must be an integer >= 1, got {max_resolves!r}")
    _check_target(target)
    offsets = budget.index.offsets
    limit = target * budget.dense
    values = [o.values for o in options]
    keeps = [o.keep for o in options]
    first, attempt, answers = None, 0, []
    for attempt in range(1, max_resolves + 1):
        costs, constant = budget.subset_costs(current, keeps)
        choice, predicted = _solve_priced(values, costs, constant, limit, resolution)
        answers.append([int(c) for c in choice])
        kept = kept_from(offsets, options, choice)
        real = budget.total(kept)
        if first is None:  # how good is pricing with the other widths held? (logged)
            first = (predicted / budget.dense, real / budget.dense)
        if real <= limit and attempt > 1 or np.array_equal(kept, current):
            break
        current = kept
    combinations = math.prod(len(o.counts) for o in options)
    try:
        choice = repair(answers[-1], options, budget, limit, target, widths)
    except InfeasibleBudget:
        # every group at its smallest width is not the cheapest model under a cost that is not
        # monotone in width: where all can be tried, one that fits is taken (break156 F2)
        if combinations > EXHAUSTIVE_ALWAYS or _exhaustive(options, budget, limit) is None:
            raise
        choice = None
    if combinations <= EXHAUSTIVE_ALWAYS:
        # few enough to try them all whatever room is left: repair's single steps can stop
        # within 1% of the budget far from the best (break67 #2: 13.7% of the value short, on
        # a two-group chain of 128 combinations)
        choice = _exhaustive(options, budget, limit) or choice
    elif limit - budget.total(kept_from(offsets, options, choice)) > _UNUSED * budget.dense:
        # Much of the budget left: single steps stop where one wide group's step costs more
        # than the room left (a 16-channel residual stream with options {8, 16}), and pricing
        # around one answer can send the next solve back to an earlier one. Each answer, made
        # to fit, is a candidate, then trades of one step up for steps down elsewhere (break22
        # #3). Real models' answers land within a hair of the target and skip this.
        if combinations <= EXHAUSTIVE_MAX:
            choice = _exhaustive(options, budget, limit) or choice
        else:
            for other in {tuple(a): a for a in answers if a != answers[-1]}.values():
                other = repair(other, options, budget, limit, target, widths)
                if _value(options, other) > _value(options, choice):
                    choice = other
            choice = trade_steps(choice, options, budget, limit)
    kept = kept_from(offsets, options, choice)
    return Allocation(kept, choice, first[0], first[1], budget.fraction(kept), attempt)


def _check_target(target) -> None:
    """A cost target is a number > 0, a fraction of the dense cost (break156 F4: NaN read as
    "budget is nan", a negative one as below the cheapest model, a str as a TypeError)."""
    if (isinstance(target, bool) or not isinstance(target, (int, float, np.floating))
            or not 0 < target < math.inf):
        raise ArgumentError(f"target is a fraction of the dense cost, a number > 0; got {target!r}")


def _value(options: list[GroupOptions], choice) -> float:
    return sum(float(o.values[c]) for o, c in zip(options, choice))


#: option combinations up to which :func:`allocate`'s further search tries them all
EXHAUSTIVE_MAX = 4096
#: option combinations up to which :func:`allocate` tries them all in any case (each is one
#: exact pricing of the model, at every mask update)
EXHAUSTIVE_ALWAYS = 256


def _exhaustive(options: list[GroupOptions], budget: Budget, limit: float) -> list[int] | None:
    """The most valuable combination whose real cost fits (the costlier of equal ones, as
    :func:`repair` spends room left on steps that gain nothing: channels without evidence, read
    only by frozen layers, say, are kept while the target allows); None when none fits. For a
    few coarse groups, where local search stops short."""
    offsets, best = budget.index.offsets, None
    for combo in itertools.product(*(range(len(o.counts)) for o in options)):
        total = budget.total(kept_from(offsets, options, combo))
        if total <= limit * _SLACK:
            key = (_value(options, combo), total)
            if best is None or key > best[0]:
                best = (key, list(combo))
    return None if best is None else best[1]


def repair(choice: list[int], options: list[GroupOptions], budget: Budget, limit: float,
           target: float = float("nan"), widths: Mapping[str, float] | None = None,
           hold: int | None = None) -> list[int] | None:
    """Make ``choice`` fit ``limit`` (absolute cost) by exact steps down, each to a group's
    nearest option that saves cost (from every group's smallest option when none does, as a
    measured table's noise allows), then spend what is left on the most valuable steps per cost
    that still fit and lose no value (a free step that loses goes on to the nearest option
    that does not), each group moving to the best option of a stretch of equal cost it sits in.
    ``hold``: a group no step down may touch (:func:`trade_steps` raised it); None
    is returned when the others cannot pay for it. Raises :class:`InfeasibleBudget` when not
    even the smallest options fit."""
    offsets = budget.index.offsets
    choice = list(choice)
    kept = kept_from(offsets, options, choice)
    total = budget.total(kept)

    def move(i, new):
        return _move(budget, options, kept, i, new)

    # A step's cost change depends only on the widths of the layers its group touches, so it
    # is kept until a step of a group sharing one of them is taken: each round prices the few
    # groups next to the last step, not all (nasnet's 172 groups: 16-20 s per update, most of
    # it pricing steps no width had changed for).
    near = budget.neighbours
    priced: list[dict[int, float]] = [{} for _ in options]  # group -> {option: cost change}

    def delta(i, new):
        if new not in priced[i]:
            priced[i][new] = move(i, new)[0]
        return priced[i][new]

    def take(i, new):
        nonlocal kept
        dc, kept = move(i, new)
        for j in near[i]:
            priced[j].clear()
        choice[i] = new
        return dc

    def down(i, c):  # the nearest option below c that saves cost, and its cost change
        for new in range(c - 1, -1, -1):  # (a cost flat over some widths, a block-wise
            dc = delta(i, new)  # table, saves nothing a step down: break150 F1)
            if dc < 0:
                return new, dc
        return None, 0.0

    while total > limit * _SLACK:  # over: drop the step that loses least per cost saved
        best = None
        for i, c in enumerate(choice):
            if c > 0 and i != hold:
                new, dc = down(i, c)
                if new is None:
                    continue
                loss = options[i].values[c] - options[i].values[new]
                rate = loss / -dc
                if best is None or rate < best[0]:
                    best = (rate, i, new)
        if best is None:  # no single step down saves cost here
            if hold is not None:  # the held group's step cannot be paid for
                return None
            # A measured table need not fall with width (noise, or a runtime's kernels), so
            # this can be a local minimum while every group at its smallest width still fits.
            if any(choice):
                smallest = kept_from(offsets, options, [0] * len(choice))
                if budget.total(smallest) <= limit * _SLACK:
                    choice, kept = [0] * len(choice), smallest
                    total = budget.total(kept)
                    for cache in priced:
                        cache.clear()
                    continue
            raise_infeasible(options, budget, target, widths)
        total += take(best[1], best[2])
    while True:
        while True:  # room left: add the step that gains most per cost
            best = None
            for i, c in enumerate(choice):
                # a step that loses value is not taken for room alone: where values fall with
                # the count (CCP's predicted loss changes) that threw the optimum away
                # (review127 F1); a step that gains nothing is (see _exhaustive). Where the step
                # is free (a cost flat over some widths) and loses, the nearest option up that
                # loses nothing: values that dip within a flat cost stretch stopped the fill
                # there (break150 F1)
                new = c + 1 if c + 1 < len(options[i].counts) else None
                if new is not None and options[i].values[new] < options[i].values[c]:
                    new = _first_up(options[i].values, c, strict=False) if delta(i, new) <= 0 else None
                if new is not None:
                    dc = delta(i, new)
                    gain = options[i].values[new] - options[i].values[c]
                    if total + dc <= limit * _SLACK:
                        rate = gain / max(dc, 1e-12)
                        if best is None or rate > best[0]:
                            best = (rate, i, new)
            if best is None:
                break
            total += take(best[1], best[2])
        # a group inside a stretch of equal cost takes its most valuable option there (the
        # down walk lands on a stretch's last option, whatever it is worth: break150 F1); such
        # a move changes what its neighbours' steps cost, so the fill runs again after one
        # (review153 F2). Each move gains value, and the fill loses none: it ends.
        moved = False
        for i, c in enumerate(choice):
            top = c
            for new in range(c - 1, -1, -1):
                if delta(i, new) != 0:
                    break
                if options[i].values[new] > options[i].values[top]:
                    top = new
            if top != c:
                take(i, top)
                moved = True
        if not moved:
            return choice


def _move(budget: Budget, options: list[GroupOptions], kept: np.ndarray, i: int,
          new: int) -> tuple[float, np.ndarray]:
    """Group ``i`` taking option ``new`` in ``kept``: the exact change of the total cost (only
    the layers it touches priced) and the kept vector after it."""
    offsets = budget.index.offsets
    layers = budget.touching[i]
    trial = kept.copy()
    trial[int(offsets[i]):int(offsets[i + 1])] = options[i].keep[new]
    return budget.cost_of(trial, layers) - budget.cost_of(kept, layers), trial


def _first_up(values: np.ndarray, c: int, *, strict: bool) -> int | None:
    """The first option above ``c`` worth at least ``values[c]`` (``strict``: more); None."""
    above = values[c + 1:]
    hits = np.flatnonzero(above > values[c] if strict else above >= values[c])
    return c + 1 + int(hits[0]) if len(hits) else None


def trade_steps(choice: list[int], options: list[GroupOptions], budget: Budget, limit: float,
                max_rounds: int = 3) -> list[int]:
    """Local search after :func:`repair`: raise one group a step (past a value dip where that
    step is free) and pay for it by exact steps down elsewhere (repair with that group held);
    keep the trade when the summed value grows.
    Single steps alone stop where one wide group's step costs more than the room left (a
    16-channel residual stream with options {8, 16}): a choice at 0.57 of dense under a 0.9
    target while one at 0.88 is worth more. ``choice`` must fit; the result fits and is worth
    at least as much. At most ``max_rounds`` passes over the groups."""
    choice = list(choice)
    value = _value(options, choice)
    offsets = budget.index.offsets
    for _ in range(max_rounds):
        improved = False
        for i in range(len(choice)):
            c = choice[i]  # (a trade earlier in the pass may have moved it)
            if c + 1 >= len(options[i].counts):
                continue
            new = c + 1
            if options[i].values[new] <= options[i].values[c]:
                # past a dip where the step is free, as repair's fill (break150 F1)
                free = _move(budget, options, kept_from(offsets, options, choice), i, new)[0] <= 0
                new = _first_up(options[i].values, c, strict=True) if free else None
                if new is None:
                    continue
            trial = list(choice)
            trial[i] = new
            trial = repair(trial, options, budget, limit, hold=i)
            if trial is None:
                continue
            v = _value(options, trial)
            if v > value * (1 + 1e-12) + 1e-12:
                choice, value, improved = trial, v, True
        if not improved:
            break
    return choice


def allocate_uniform(options: list[GroupOptions], budget: Budget, target: float, sizes, *,
                     widths: Mapping[str, float] | None = None) -> Allocation:
    """Every group keeps (about) the same fraction ``rho`` of its channels (the option whose
    count is nearest ``rho`` x its size): the largest ``rho`` whose real cost fits ``target`` x
    dense. A baseline to the knapsack.

    ``rho`` walks down from 1 through every point where some group's option changes, each
    step priced on the layers it touches, so a cost that is not monotone in width (a measured
    latency table) gets the widest fitting model too (a bisection kept 0.42 of
    the dense cost where a uniform model at 0.62 fitted a 0.68 target). ``resolves`` counts
    the uniform models priced. Raises :class:`InfeasibleBudget` when none fits."""
    _check_target(target)
    offsets = budget.index.offsets
    limit = target * budget.dense
    choice = [int(np.argmin(np.abs(o.counts - s))) for o, s in zip(options, sizes)]  # rho = 1
    # where a group's option changes as rho falls: the midpoint between two counts (at it,
    # argmin takes the smaller), each group stepping down one option at a time
    events = sorted(((float(o.counts[j] + o.counts[j + 1]) / (2 * s), i, j)
                     for i, (o, s) in enumerate(zip(options, sizes))
                     for j in range(choice[i])), key=lambda e: (-e[0], e[1]))
    kept = kept_from(offsets, options, choice)
    total, priced, at, high = budget.total(kept), 1, 0, 1.0
    while True:
        if total <= limit * _SLACK:
            exact = budget.total(kept)  # (the steps' sum may drift by rounding)
            if exact <= limit * _SLACK:
                a = exact / budget.dense
                low = events[at][0] if at < len(events) else 0.0
                return Allocation(kept, list(choice), a, a, a, priced, rho=(low, high))
            total = exact
        if at == len(events):
            raise_infeasible(options, budget, target, widths)
        rho = high = events[at][0]
        while at < len(events) and events[at][0] == rho:  # every group changing at this rho
            _, i, j = events[at]
            change, kept = _move(budget, options, kept, i, j)
            total += change
            choice[i] = j
            at += 1
        priced += 1


#: the least value of a width argument (others: 0), below which lowering it cannot go
_LEAST_WIDTH_ARGUMENT = {"channel_step": 1}


def raise_infeasible(options: list[GroupOptions], budget: Budget, target: float,
                     widths: Mapping[str, float] | None = None):
    """Raise :class:`InfeasibleBudget`: ``target`` is below the cheapest options' cost.
    ``widths`` (``{"channel_step": 8, "min_kept": 0.25}``): the arguments that bound the
    options, named, and offered as the way out where they can be lowered."""
    floor = budget.fraction(kept_from(budget.index.offsets, options, [0] * len(options)))
    widths = dict(widths or {})
    lower = [k for k, v in widths.items() if v > _LEAST_WIDTH_ARGUMENT.get(k, 0)]
    error = InfeasibleBudget(
        f"cost target {target:.3g} of dense is below the narrowest model the constraints allow "
        f"({floor:.3f}: every group at its smallest allowed width"
        + "".join(f", {k}={v:g}" for k, v in widths.items()) + "); raise the target"
        + (f" or lower {' or '.join(lower)}" if lower else
           " or relax the constraints" if not widths else ""))
    error.floor = floor
    raise error
