"""``latency_cost``: the cost model a latency-priced pruning run prices by, measured here.

A method takes a cost model; it does not measure one. This is where the measuring happens for
the two latency cost names a recipe may give (``prune.cost: latency`` or ``latency+fixed``):
``fxprune train`` calls it before it builds the method, and so does a Python user::

    pm = fxprune.prepare(model, (x,))
    cost = fxprune.deploy.latency_cost(pm, "latency+fixed", channel_step=8, cache="lat.json")
    pruner = fxprune.SMCP(pm, target=0.5, cost=cost, channel_step=8)

It also turns a measured cost model into a checkpoint's plain data and back, so that a
resumed run prices with the timings it started with.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable

from torch import fx

from fxprune.allocation import step_too_wide
from fxprune.checks import check_bool
from fxprune.cost import LATENCY_COSTS, CostModel, WithFixedCost
from fxprune.errors import ArgumentError, ArgumentTypeError, InfeasibleBudget, warn
from fxprune.groups import state_of
from fxprune.units import UnitIndex

__all__ = ["latency_cost", "measured_cost_to_dict", "measured_cost_from_dict", "LATENCY_COSTS"]

#: the channel_step suggested when a latency table would be large, and the size that is large
TABLE_STEP, LARGE_GRID = 8, 20_000

#: said of a floor priced with a latency table timed for this run
TIMED_FLOOR = ("that floor comes from latencies timed just now, which move by a few percent "
               "from one timing to the next: leave a margin")


def latency_cost(prepared: fx.GraphModule, kind: str = "latency", *, channel_step: int = 8,
                 cache: str | os.PathLike | None = None, progress: bool = True,
                 log: Callable[[str], None] = print) -> CostModel:
    """Measure the cost model named ``kind`` for ``prepared`` on this machine.

    Args:
        prepared: the model ``fxprune.prepare`` returned.
        kind: ``"latency"``, an ONNX Runtime latency table in ms per layer
            (:meth:`LatencyTable.measure`; HALP's latency lookup table, Shen et al. 2022), or
            ``"latency+fixed"``, that table plus the constant it misses on this model (unpriced
            ops, per-call overhead), fitted from the measured latency of the dense model and a
            uniformly halved one (:func:`calibrate_cost`; timed each call, not cached), so that a
            target is a fraction of the measured latency.
        channel_step: the widths to time, every multiple of it up to each layer's dense width:
            give the ``channel_step`` of the method that will price with it (8 by default for
            SMCP, CCP and CUCB). Between multiples of 8 ONNX Runtime's times jump, so a
            coarser grid does not stand in for a finer one.
        cache: a JSON file of timings, read and extended (written atomically), so that a second
            run prices with the same timings; None: no cache.
        progress: show the timing's progress bar.
        log: where the table's and the calibration's lines go (what is timed, where, how long
            it took); ``lambda line: None`` for none. Warnings are warnings either way.

    Returns:
        A ``CostModel`` (a ``LatencyTable``, or a ``WithFixedCost`` around one) to pass as a
        method's ``cost=``. Under torch.distributed rank 0 measures (or reads ``cache``) and
        every rank receives the same one: call it on every rank.

    Raises:
        ValueError: ``kind`` is not a latency cost name.
        InfeasibleBudget: no group can be pruned at ``channel_step`` (before any timing).
        DeployError: the runtime or ``cache`` cannot be used (from ``LatencyTable.measure``).
    """
    from fxprune import distributed as fxdist

    state_of(prepared)  # a plain model: NotPreparedError, before anything is timed
    if kind not in LATENCY_COSTS:
        raise ArgumentError(f"latency_cost measures {' or '.join(map(repr, LATENCY_COSTS))}, got "
                            f"{kind!r}; 'flops' and 'params' need no measurement: pass the name "
                            "to the method as cost=")
    check_bool("progress", progress)
    if not callable(log):
        raise ArgumentTypeError(f"log is a function taking one line (print, logger.info), got "
                                f"{type(log).__name__}")
    if cache is not None and not isinstance(cache, (str, os.PathLike)):
        raise ArgumentTypeError(f"cache is a file path (str or Path) or None, got "
                                f"{type(cache).__name__}")
    if isinstance(channel_step, bool) or not isinstance(channel_step, int) or channel_step < 1:
        raise ArgumentError(f"channel_step must be an integer >= 1, got {channel_step!r}")
    coarse = step_too_wide(UnitIndex(prepared), channel_step)
    if coarse:  # before minutes of timing a table no choice would read (break151 F2)
        raise InfeasibleBudget(coarse)
    # under DDP timed once, by rank 0, and sent: each rank timing its own table at once timed
    # under the others' load, and each warned (break76 LAT-2)
    return fxdist.compute_on_main(
        lambda: _measure(prepared, kind, channel_step, progress=progress, cache=cache, log=log))


def _measure(prepared: fx.GraphModule, kind: str, channel_step: int, *, progress: bool,
             cache, log: Callable[[str], None]) -> CostModel:
    from .calibrate import calibrate_cost, calibration_kept
    from .latency_table import LatencyTable, grid_points

    if kind == "latency+fixed":
        calibration_kept(prepared, 0.5, channel_step)  # refuse before timing the table
    # timed at every width the method can choose: between multiples of 8 ONNX Runtime's times
    # jump (17 of 24 channels ran at 0.86 of dense where step-8 points interpolated 0.41:
    # break75 #1), so no coarser grid stands in; a grid that large is said before it is timed
    # (break74 F5: CCP's and CUCB's channel_step 1 meant 692,800 points on resnet18, hours)
    points = grid_points(prepared, channel_step)
    if points > LARGE_GRID:
        # a coarser step than the one given (break145 F7: at step 8 it offered step 8); the
        # time it takes is said once timing has set its pace (a point takes 3 to 30 ms on a
        # 2-core CPU host, by the layers' size: break180 F11)
        coarser = TABLE_STEP if channel_step < TABLE_STEP else 2 * channel_step
        warn(f"cost={kind!r} at channel_step={channel_step} times a latency table of "
             f"{points:,} layer shapes, twice (minutes to hours on a CPU; the time left is said "
             f"once its pace is known, if over 5 minutes); channel_step={coarser} times "
             f"{grid_points(prepared, coarser):,}, or measure the table once and keep it "
             "(cache=...; a recipe: prune.channel_step, prune.latency_cache; the Lightning "
             "callback: channel_step=, latency_cache=)")
    table = LatencyTable.measure(prepared, step=channel_step, progress=progress, log=log,
                                 cache=None if cache is None else os.path.expanduser(cache))
    if kind == "latency":
        return table
    return calibrate_cost(table, prepared, step=channel_step, log=log)


def measured_cost_to_dict(cost_model) -> dict | None:
    """Plain data (a checkpoint's) for a measured cost model: a LatencyTable, or one with a
    fitted fixed cost; None for anything else. A resumed run prices with it instead of timing
    again (a new timing would move the budget under the masks already chosen)."""
    from .latency_table import LatencyTable

    if isinstance(cost_model, LatencyTable):
        return {"kind": "latency", "table": cost_model.to_dict()}
    if isinstance(cost_model, WithFixedCost) and isinstance(cost_model.base, LatencyTable):
        return {"kind": "latency+fixed", "table": cost_model.base.to_dict(),
                "fixed_cost": cost_model.fixed_cost, "layers": list(cost_model.layers),
                "fit": dict(cost_model.fit)}
    return None


def measured_cost_from_dict(data: dict, source: str):
    """The cost model :func:`measured_cost_to_dict` wrote (``source`` names it in errors).

    Raises:
        ValueError: naming the entry that does not read (an edited checkpoint: break164 F3,
            a None constant was a TypeError traceback); ``DeployError`` for its table.
    """
    from .latency_table import LatencyTable

    if not (isinstance(data, dict) and data.get("kind") in LATENCY_COSTS
            and isinstance(data.get("table"), dict)):
        raise ArgumentError(f"{source} is not a measured cost (a mapping with kind "
                            f"{' or '.join(map(repr, LATENCY_COSTS))} and its table)")
    table = LatencyTable.from_dict(data["table"], source)
    if data["kind"] == "latency":
        return table
    fixed, layers, fit = data.get("fixed_cost"), data.get("layers"), data.get("fit", {})
    if not (isinstance(fixed, (int, float)) and not isinstance(fixed, bool) and math.isfinite(fixed)):
        raise ArgumentError(f"{source}: fixed_cost is {fixed!r}, not a finite number of milliseconds")
    if not (isinstance(layers, list) and all(isinstance(k, str) for k in layers)):
        raise ArgumentError(f"{source}: layers is not the list of layer keys the constant was fitted on")
    if not isinstance(fit, dict):
        raise ArgumentError(f"{source}: fit is {fit!r}, not the mapping of how the constant was fitted")
    return WithFixedCost(table, float(fixed), tuple(layers), dict(fit))
