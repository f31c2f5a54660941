"""solve_mckp against brute force on small instances, plus its input checks."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fxprune.knapsack import solve_mckp


def brute_force_best(values, costs, budget):
    """Best total value over every choice with total cost <= budget (None if none fits)."""
    best = None
    for choice in itertools.product(*(range(len(v)) for v in values)):
        cost = sum(c[j] for c, j in zip(costs, choice))
        if cost <= budget:
            value = sum(v[j] for v, j in zip(values, choice))
            best = value if best is None else max(best, value)
    return best


def totals(values, costs, choice):
    return (sum(v[j] for v, j in zip(values, choice)),
            sum(c[j] for c, j in zip(costs, choice)))


def random_instance(rng, integer_costs):
    n_groups = int(rng.integers(1, 5))
    sizes = rng.integers(1, 6, size=n_groups)
    values = [rng.normal(size=n) for n in sizes]  # negative values and any order allowed
    if integer_costs:
        costs = [rng.integers(0, 12, size=n).astype(float) for n in sizes]
    else:
        costs = [rng.uniform(0, 10, size=n) for n in sizes]
    low = sum(c.min() for c in costs)
    high = sum(c.max() for c in costs)
    budget = float(rng.uniform(low, high))
    if integer_costs:
        budget = float(np.floor(budget)) if np.floor(budget) >= low else budget
    return values, costs, budget


@pytest.mark.parametrize("seed", range(200))
def test_integer_costs_match_brute_force_exactly(seed):
    rng = np.random.default_rng(seed)
    values, costs, budget = random_instance(rng, integer_costs=True)
    choice = solve_mckp(values, costs, budget)
    value, cost = totals(values, costs, choice)
    assert choice.dtype == np.int64 and choice.shape == (len(values),)
    assert cost <= budget
    assert value == pytest.approx(brute_force_best(values, costs, budget), abs=1e-12)


@pytest.mark.parametrize("seed", range(200))
@pytest.mark.parametrize("resolution", [7, 100])
def test_float_costs_within_rounding_bound(seed, resolution):
    rng = np.random.default_rng(1000 + seed)
    values, costs, budget = random_instance(rng, integer_costs=False)
    choice = solve_mckp(values, costs, budget, resolution=resolution)
    value, cost = totals(values, costs, choice)
    assert cost <= budget
    assert value <= brute_force_best(values, costs, budget) + 1e-12
    # The documented guarantee: at least the optimum with n_groups units less budget.
    min_total = sum(c.min() for c in costs)
    unit = (budget - min_total) / resolution
    reduced = brute_force_best(values, costs, budget - len(values) * unit)
    if reduced is not None:
        assert value >= reduced - 1e-12


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_hypothesis_integer_instances(data):
    n_groups = data.draw(st.integers(1, 4))
    sizes = [data.draw(st.integers(1, 5)) for _ in range(n_groups)]
    values = [np.array(data.draw(st.lists(st.integers(-20, 20), min_size=n, max_size=n)),
                       dtype=float) for n in sizes]
    costs = [np.array(data.draw(st.lists(st.integers(0, 15), min_size=n, max_size=n)),
                      dtype=float) for n in sizes]
    low, high = sum(c.min() for c in costs), sum(c.max() for c in costs)
    budget = data.draw(st.integers(int(low), int(high)))
    choice = solve_mckp(values, costs, budget)
    value, cost = totals(values, costs, choice)
    assert cost <= budget
    assert value == brute_force_best(values, costs, budget)


def test_integer_costs_above_resolution_still_feasible():
    # Slack 1000 > resolution 10: costs get quantised; feasibility must survive the rounding.
    rng = np.random.default_rng(3)
    values = [np.sort(rng.uniform(size=6)).cumsum() for _ in range(4)]
    costs = [np.sort(rng.integers(0, 500, size=6)).astype(float) for _ in range(4)]
    budget = sum(c.min() for c in costs) + 1000
    choice = solve_mckp(values, costs, budget, resolution=10)
    assert totals(values, costs, choice)[1] <= budget


def test_non_monotone_costs_pick_cheap_valuable_option():
    # The last option is the most valuable and also the cheapest: index order means nothing.
    values = [np.array([1.0, 2.0, 3.0]), np.array([5.0, 1.0])]
    costs = [np.array([5.0, 9.0, 1.0]), np.array([4.0, 0.0])]
    assert solve_mckp(values, costs, 5.0).tolist() == [2, 0]
    assert solve_mckp(values, costs, 4.0).tolist() == [2, 1]


def test_budget_not_binding_returns_most_valuable_options():
    values = [np.array([1.0, 3.0, 2.0]), np.array([0.0, 4.0])]
    costs = [np.array([1.0, 2.0, 3.0]), np.array([1.0, 1.0])]
    assert solve_mckp(values, costs, 1e9).tolist() == [1, 1]


def test_ties_prefer_the_cheaper_option():
    values = [np.array([2.0, 2.0, 2.0])]
    costs = [np.array([3.0, 1.0, 2.0])]
    assert solve_mckp(values, costs, 10.0).tolist() == [1]
    values = [np.array([1.0, 2.0, 2.0]), np.array([0.0, 1.0])]
    costs = [np.array([0.0, 3.0, 2.0]), np.array([0.0, 7.0])]
    assert solve_mckp(values, costs, 5.0).tolist() == [2, 0]


def test_budget_exactly_at_minimum_cost():
    values = [np.array([1.0, 5.0, 3.0]), np.array([2.0, 9.0])]
    costs = [np.array([1.0, 2.0, 1.0]), np.array([0.5, 3.0])]
    assert solve_mckp(values, costs, 1.5).tolist() == [2, 0]


def test_a_tiny_slack_beside_huge_option_costs_is_solved():
    """An extra cost of 1e6 over a slack of 1e-10 is 1e20 units: cast to int64 it overflowed
    to a negative weight and the solve died with an IndexError (break22 #4; in training: a
    target within 1e-9 of the floor)."""
    assert solve_mckp([[0, 1], [0, 1]], [[0, 1e-10], [0, 1e6]], 2e-10).tolist() == [1, 0]
    rng = np.random.default_rng(0)
    for _ in range(200):  # costs over many orders of magnitude, a slack near zero
        n = int(rng.integers(2, 5))
        costs = [10.0 ** rng.uniform(-12, 12, size=3) * (np.arange(3) > 0) for _ in range(n)]
        values = [rng.uniform(0, 1, size=3) for _ in range(n)]
        budget = float(10.0 ** rng.uniform(-12, 0))
        choice = solve_mckp(values, costs, budget, resolution=100)
        value, cost = totals(values, costs, choice)
        assert cost <= budget
        # the documented guarantee: at least the optimum with n_groups units less budget
        reduced = brute_force_best(values, costs, budget * (1 - n / 100))
        assert reduced is None or value >= reduced - 1e-12


def test_costs_near_the_float_limit_solve_without_an_overflow_warning():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's scalar add warned, though the answer was right
        choice = solve_mckp([[1.0, 2.0], [1.0, 3.0]], [[0.0, 1e308], [0.0, 1e308]], 1.5e308)
        # break86 #4: a subnormal slack made the cost unit subnormal, and e / unit overflowed
        tiny = solve_mckp([[0, 1], [0, 1]], [[0, 1e-320], [0, 1]], 1e-310)
    assert choice.tolist() == [0, 1] and tiny.tolist() == [1, 0]


def test_infeasible_budget_names_minimum_cost():
    values = [np.array([1.0, 2.0]), np.array([1.0])]
    costs = [np.array([3.0, 4.0]), np.array([2.5])]
    with pytest.raises(ValueError, match=r"infeasible.*5\.5.*exceeds the budget 5 by 0\.5"):
        solve_mckp(values, costs, 5.0)


def test_a_zero_dimensional_array_or_tensor_is_a_budget():
    """break28 nit: np.array(5.) or torch.tensor(5.) was "not a number"."""
    import torch

    values, costs = [[1.0, 2.0], [1.0, 3.0]], [[1.0, 2.0], [1.0, 4.0]]
    expected = solve_mckp(values, costs, 5.0).tolist()
    assert solve_mckp(values, costs, np.array(5.0)).tolist() == expected
    assert solve_mckp(values, costs, torch.tensor(5.0)).tolist() == expected
    with pytest.raises(ValueError, match="budget must be a number"):
        solve_mckp(values, costs, np.array([5.0]))


def test_a_budget_summed_from_the_cheapest_options_in_another_order_is_feasible():
    """break28 #4: numpy's sum of the cheapest costs exceeded the caller's plain sum by 4.7e-10,
    and the budget was "infeasible", the advice naming the same number back."""
    costs = [[114932.633, 729015.117, 927423.929], [967926.19, 14706.305, 863640.09],
             [981195.04, 957210.18, 148764.012], [972628.814, 889935.556, 822373.828],
             [479987.924, 232372.92, 801880.579], [923530.16, 266130.272, 538934.408],
             [442752.829, 931017.316, 40510.711], [732006.196, 614373.247, 28365.365],
             [719219.773, 15991.73, 757951.002]]
    cheapest = [int(np.argmin(c)) for c in costs]
    budget = sum(min(c) for c in costs)
    assert solve_mckp([[0, 1, 2]] * len(costs), costs, budget).tolist() == cheapest
    with pytest.raises(ValueError, match="infeasible budget"):  # a real shortfall still is
        solve_mckp([[0, 1, 2]] * len(costs), costs, budget * (1 - 1e-9))


@pytest.mark.parametrize("values, costs, match", [
    ([np.ones(2)], [np.ones(2), np.ones(1)], "costs has 2"),
    ([np.ones(2)], [np.ones(3)], "2 values but 3 costs"),
    ([np.ones(0)], [np.ones(0)], "no options"),
    ([np.array([1.0, np.nan])], [np.ones(2)], "values must be finite"),
    ([np.ones(2)], [np.array([1.0, np.inf])], "costs must be finite"),
    ([np.ones(2)], [np.array([1.0, -1.0])], "costs must be >= 0"),
    ([np.ones((2, 2))], [np.ones((2, 2))], "1-D"),
])
def test_malformed_input_rejected(values, costs, match):
    with pytest.raises(ValueError, match=match):
        solve_mckp(values, costs, 10.0)


@pytest.mark.parametrize("resolution", [0, -5, 2.5, True])
def test_bad_resolution_rejected(resolution):
    with pytest.raises(ValueError, match="resolution"):
        solve_mckp([np.ones(2)], [np.ones(2)], 1.0, resolution=resolution)


def test_nan_budget_rejected():
    with pytest.raises(ValueError, match="budget is nan: give a finite number"):
        solve_mckp([np.ones(2)], [np.ones(2)], float("nan"))
    # -inf made the tolerance inf too, and an over-budget answer came back (break36 #6)
    with pytest.raises(ValueError, match="budget is -inf"):
        solve_mckp([np.ones(2)], [np.ones(2)], -math.inf)
    assert list(solve_mckp([np.array([1.0, 2.0])], [np.array([1.0, 2.0])], math.inf)) == [1]
    with pytest.raises(ValueError, match="budget must be a number, got '5'"):  # was read as 5.0
        solve_mckp([np.ones(2)], [np.ones(2)], "5")


def test_inputs_not_mutated_and_lists_accepted():
    values = [[3.0, 1.0, 2.0], [1.0, 2.0]]
    costs = [[2.0, 0.0, 1.0], [0.0, 3.0]]
    snapshot = [list(v) for v in values], [list(c) for c in costs]
    choice = solve_mckp(values, costs, 3.0)
    assert (values, costs) == snapshot
    assert totals(values, costs, choice) == (4.0, 2.0)


def test_no_groups_gives_empty_choice():
    assert solve_mckp([], [], 0.0).shape == (0,)


def test_resnet50_sized_problem_is_feasible_and_near_budget():
    rng = np.random.default_rng(0)
    values, costs = [], []
    for _ in range(55):
        n = int(rng.choice([64, 256, 512, 2048]))
        k = np.arange(8, n + 1, 8)
        values.append(np.cumsum(np.sort(rng.exponential(size=n))[::-1])[k - 1])
        costs.append(float(rng.uniform(1e3, 1e4)) * k * k)
    budget = 0.5 * sum(c[-1] for c in costs)
    choice = solve_mckp(values, costs, budget)
    _, cost = totals(values, costs, choice)
    assert 0.99 * budget <= cost <= budget


def test_an_option_that_fills_the_budget_exactly_is_chosen():
    """break67 #3: the unit shrunk by a hair put an extra cost equal to the room left one cell
    over, and the option was never chosen, even in a single group."""
    assert solve_mckp([[0, 1, 2]], [[0, 0.3, 0.5]], 0.3).tolist() == [1]
    assert solve_mckp([[0, 1], [0, 1]], [[0, 100000], [0, 150000]], 100000).tolist() == [1, 0]
    assert solve_mckp([[0, 1], [0, 1]], [[1.0, 1.7], [2.0, 2.9]], 3.7).tolist() == [1, 0]


def test_a_budget_that_does_not_bind_is_checked_on_the_exact_sum():
    """break156 F3: the shortcut taking every group's best option summed the costs in floats,
    and returned a choice 1 ulp over the budget (its exact sum 2.0000000000000002e-11)."""
    costs = [[1.2e-11], [1e-12, 7e-12], [1e-12]]
    choice = solve_mckp([[0], [0, 1], [0]], costs, 2e-11)
    assert math.fsum(c[j] for c, j in zip(costs, choice)) <= 2e-11
    assert list(choice) == [0, 0, 0]


def test_no_groups_under_a_negative_budget_is_infeasible():
    """break67 #5: solve_mckp([], [], -1) returned [], though nothing costs less than 0."""
    with pytest.raises(ValueError, match="infeasible budget: with no groups the total cost is 0"):
        solve_mckp([], [], -1.0)
    assert solve_mckp([], [], 0.0).tolist() == []


@pytest.mark.parametrize("args, kwargs, message", [
    (([[1, 2], [1, 2]], [[0, .5], [0, .5]], .7), {"resolution": 10**9},
     r"resolution 1000000000 over 2 groups needs a 14.9 GiB table \(8 bytes x groups x \(cells "
     r"\+ 1\), 1000000000 cells: the resolution\); give a resolution of at most 134217727"),
    # review177 F8: integer costs size the table by their slack, which the message says
    (([[0, 1, 2]] * 10, [[0, 1e8, 3e8]] * 10, 3e8), {"resolution": 10**9},
     r"needs a 22.4 GiB table \(8 bytes x groups x \(cells \+ 1\), 300000000 cells: the "
     r"integer slack\)"),
    ((None, [[0]], 1), {}, r"values is a sequence of 1-D arrays, one per group, got NoneType"),
    (([[0]], (c for c in [[0]]), 1), {}, r"costs is a sequence of 1-D arrays, one per group, got "
                                          r"generator"),
    (([["1", "2"]], [[0, 1]], 1), {}, r"group 0: values must be numbers, got an array of dtype")])
def test_solve_mckp_names_an_argument_it_cannot_use(args, kwargs, message):
    """break111 F15: resolution=10**9 asked numpy for 14.9 GiB (MemoryError), None or a
    generator was 'object of type ... has no len()', strings were read as numbers."""
    with pytest.raises(ValueError, match=message):
        solve_mckp(*args, **kwargs)


def test_costs_whose_sum_overflows_are_infeasible_not_an_overflow_error():
    """break147 F3: math.fsum raised OverflowError on two options of 1e308, and with that
    caught, inf - budget > 1e-12 * inf was false, so [0, 0] (cost inf) came back as fitting."""
    with pytest.raises(ValueError, match=r"^infeasible budget: the cheapest option of every "
                                         r"group together costs more than the largest float"):
        solve_mckp([[0, 1], [0, 1]], [[1e308, 1.7e308], [1e308, 1.7e308]], 1.7e308)
    assert solve_mckp([[0, 1], [0, 1]], [[1e308, 1.7e308]] * 2, math.inf).tolist() == [1, 1]
    choice = solve_mckp([[0, 1], [0, 1]], [[0, 1.7e308]] * 2, 1.7e308)
    assert sorted(choice.tolist()) == [0, 1]  # one of the two fits
