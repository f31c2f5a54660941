"""Measured per-layer latency lookup tables: a :class:`fxprune.cost.CostModel` in milliseconds.

``LatencyTable.measure(layers, ...)`` times every conv/linear layer alone, at its real input
spatial size, batch and dtype, on a grid of (kept input channels, kept output channels) on the
runtime the model will ship on; ``layer_cost(layer, c_in, c_out)`` interpolates bilinearly
between grid points (clamped at the grid's edges: a width below a grid's smallest count, from
a table measured at a coarser ``step`` than the pruner's ``channel_step``, is priced as that
count, with a RuntimeWarning once per table, naming its first such layer).

Grids: counts ``step, 2*step, ...`` below the dense count, plus the dense count itself. A
depthwise conv keeps ``c_in == groups`` and ``c_out == m * c_in`` (its channel multiplier
``m``, usually 1), so its grid is one axis (the diagonal of points ``(k, m * k)``); any
other grouped conv keeps its ``groups`` and its counts are rounded up to multiples of it.

Layers with the same :meth:`LayerSpec.signature` share their measurements (a ResNet's repeated
blocks are timed once), and so do runs: points are cached in a JSON file keyed by backend,
runtime version, device name and threads, then by the layer signature (which holds the batch,
spatial size, kernel, stride, groups and dtype) and the channel counts. A second ``measure`` with
the same cache times nothing, except points flagged as timed under load when the CPU is idle now.

Backends: ``onnxruntime`` (CPU), ``tensorrt`` (CUDA GPU) and ``torch`` (PyTorch itself: cuDNN
with CUDA graphs on a GPU, eager on the CPU; see :mod:`fxprune.deploy.torch_backend`). A table
may be measured at another batch and precision than the prepared model's example inputs (the
deployment batch, fp16): ``measure(..., batch=256, precision="fp16")``; the table then looks
every layer up at that batch and dtype.
"""
from __future__ import annotations

import bisect
import dataclasses
import functools
import json
import math
import numbers
import os
import random
import re
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

from fxprune.cost import LayerSpec, pricing_hypothetically
from fxprune.errors import ArgumentTypeError, FxPruneError
from fxprune.run_io import atomic_write, check_replaceable

from .common import (DeployArgumentError, DeployArgumentTypeError, DeployError, cpu_busy,
                     cpu_load, file_in_the_way)
from .layer_onnx import check_timed

Timer = Callable[[LayerSpec, int, int], float]
_TABLE_FORMAT = "fxprune-latency-table"
_CACHE_FORMAT = "fxprune-latency-cache"
_BACKENDS = ("onnxruntime", "tensorrt", "torch")
_PRECISION_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
_CACHE_SAVE_EVERY_S = 30.0  # an interrupted measurement keeps what it had timed


class UnmeasuredLayerError(FxPruneError, LookupError):
    """``layer_cost`` was asked about a layer whose grid was never measured."""


def grid_counts(dense: int, step: int, multiple_of: int = 1, min_count: int | None = None) -> list[int]:
    """``step, 2*step, ... < dense`` rounded up to ``multiple_of``, plus ``dense`` itself, and
    ``min_count`` (rounded up alike) where it is below ``step``."""
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    unit = multiple_of
    counts = {dense}
    if min_count is not None and min_count < step:
        first = -(-min_count // unit) * unit
        if first < dense:
            counts.add(first)
    for c in range(step, dense, step):
        c = -(-c // unit) * unit
        if c < dense:
            counts.add(c)
    return sorted(counts)


def layer_grid(layer: LayerSpec, step: int, min_count: int | None = None) -> tuple[list[int], list[int], bool]:
    """(c_in axis, c_out axis, diagonal) for ``layer``; diagonal: the points pair the axes
    (depthwise: ``c_out`` is the channel multiplier times ``c_in``).

    A layer from a prepared model carries the widths it can take (``meta["widths"]``,
    :func:`fxprune.units.reachable_widths`): a width no pruning changes is one point, and a
    linear after a flatten steps by whole channels (``H * W`` inputs each)."""
    w_in, w_out = layer.meta.get("widths", (None, None))
    if layer.depthwise:
        fixed = w_out is not None and w_out[2] == 0
        ks = [layer.in_channels] if fixed else grid_counts(layer.in_channels, step,
                                                            min_count=min_count)
        mult = layer.out_channels // layer.in_channels
        return ks, [k * mult for k in ks], True
    g = layer.groups if layer.layer_kind.spatial else 1
    # a linear's unit is a flattened channel's H * W features; another layer's is the channels
    # a grouped conv ties into one unit, which the method's channel_step counts as channels
    channels = layer.layer_kind.channel_dim == 1
    return (_axis(layer.in_channels, step, g, w_in, min_count, channels),
            _axis(layer.out_channels, step, g, w_out, min_count, channels), False)


def _axis(dense: int, step: int, multiple_of: int, widths, min_count=None,
          units_of_channels: bool = True) -> list[int]:
    if widths is not None:
        fixed, unit, n = widths
        if n == 0:
            return [dense]
        # every kept count whose channels are a multiple of step, as the methods keep them
        # (allowed_counts): step units were 4x too coarse for units of 4 channels, and SMCP's
        # 8, 16, 24 were all priced as 32 (break128 F1)
        units = step // math.gcd(step, unit) if units_of_channels else step
        axis = [fixed + unit * k for k in grid_counts(n, units, min_count=min_count)]
        if axis[-1] == dense and multiple_of == 1:
            return axis
    return grid_counts(dense, step, multiple_of, min_count)


def grid_key(layer: LayerSpec) -> str:
    return f"b{layer.batch}|{layer.signature()}|{layer.in_channels}x{layer.out_channels}"


def point_key(layer: LayerSpec) -> str:
    return f"b{layer.batch}|{layer.signature()}"


def grid_points(layers, step: int, min_count: int | None = None) -> int:
    """How many points :meth:`LatencyTable.measure` times for ``layers`` (LayerSpecs or a
    prepared model) at ``step``, before any cache: distinct (layer shape, c_in, c_out)."""
    grids: dict[str, tuple] = {}
    for layer in _as_layer_specs(layers):  # layers alike share a grid: the union, as measure
        cins, couts, diag = layer_grid(layer, step, min_count)
        key = grid_key(layer)
        if key in grids:
            cins, couts = _union_of_widths(*grids[key][:2], cins, couts, diag)
        grids[key] = (cins, couts, diag)
    return len({(key.rpartition("|")[0], ci, co) for key, (cins, couts, diag) in grids.items()
                for ci, co in _points_of(cins, couts, diag)})


def _union_of_widths(old_in, old_out, cins, couts, diagonal) -> tuple[list[int], list[int]]:
    """One grid for layers alike but pruned differently: the union of their axes, or of their
    (c_in, c_out) pairs where the points pair the axes (depthwise)."""
    if diagonal:
        pairs = sorted(set(zip(old_in, old_out)) | set(zip(cins, couts)))
        return [a for a, _ in pairs], [b for _, b in pairs]
    return sorted({*old_in, *cins}), sorted({*old_out, *couts})


def _points_of(cins, couts, diagonal):
    if diagonal:
        return list(zip(cins, couts, strict=True))
    return [(ci, co) for ci in cins for co in couts]


#: a table's estimate of its time left is said once this many seconds of timing have set its
#: pace, where that estimate is longer than PACE_SAID_ABOVE_S (break171 F7: hours begun without
#: a word). A point's time varies tenfold with the layers' size (break180 F11: a fixed 30 ms a
#: point said 0.7 h for a run of 4 minutes), so the pace is measured, not assumed.
PACE_AFTER_S, PACE_SAID_ABOVE_S = 10.0, 300.0
_pace_clock = time.perf_counter  # (a test's fake clock replaces this one alone)


def _interp(axis: Sequence[int], x: float) -> tuple[int, int, float]:
    """Indices (lo, hi) around x on ``axis`` and x's weight toward hi; clamped to the ends."""
    if x <= axis[0]:
        return 0, 0, 0.0
    if x >= axis[-1]:
        n = len(axis) - 1
        return n, n, 0.0
    hi = bisect.bisect_left(axis, x)
    lo = hi - 1
    return lo, hi, (x - axis[lo]) / (axis[hi] - axis[lo])


class LatencyTable:
    """Per-layer latency (ms) on one backend, device and thread count; a ``CostModel``.

    A lookup table of each conv/linear layer's time alone at a grid of kept input and output
    channel counts (HALP's latency lookup table, Shen et al. 2022), interpolated between grid
    points: ``layer_cost(layer, c_in, c_out)`` in ms. Build one with :meth:`measure` (or
    :func:`fxprune.deploy.latency_cost`, which a recipe's ``prune.cost: latency`` calls), or
    read a saved one with :meth:`load`; the constructor makes an empty table (``backend``,
    ``device``, ``threads``, ``runtime_version``, ``batch``, ``dtype`` describe where its
    points were timed, and a cache keeps points of one such context apart from another's).
    """

    name = "latency"

    def __init__(self, backend: str = "onnxruntime", device: str = "", threads: int = 2,
                 runtime_version: str = "", batch: int | None = None, dtype: str | None = None):
        # break111 F6: settings save() wrote and load() refused, far from the code that set them
        bad = _header_problem({"backend": backend, "device": device, "threads": threads,
                               "runtime_version": runtime_version, "batch": batch, "dtype": dtype})
        if bad is not None:
            raise DeployError(f"LatencyTable({bad[0]}={locals()[bad[0]]!r}): not "
                              f"{bad[1].replace('null', 'None')}")
        self.backend = backend
        self.device = device
        self.threads = int(threads)  # plain ints: a numpy one (break117 F9) would not save as JSON
        self.runtime_version = runtime_version
        #: batch and dtype the table was measured at, when they override the layers' own
        self.batch, self.dtype = None if batch is None else int(batch), dtype
        #: the machine a backend measured on (``device`` may be a label given to measure)
        self.timed_on: str | None = None
        #: the torch backend's settings (torch_device, cuda_graphs, channels_last); None for
        #: other backends and tables saved before they were recorded
        self.torch_settings: dict | None = None
        #: the grid step ``measure`` was given (channels between timed counts); None for a
        #: table built by hand or saved before it was recorded
        self.step: int | None = None
        # point_key -> {(c_in, c_out): ms}; shared by every layer with that signature.
        self._points: dict[str, dict[tuple[int, int], float]] = {}
        # grid_key -> (c_in axis, c_out axis, diagonal, layer names)
        self._grids: dict[str, tuple[list[int], list[int], bool, list[str]]] = {}
        self.stats = {"measured": 0, "cached": 0, "seconds": 0.0, "under_load": 0}
        # (point_key, c_in, c_out) of points timed while the CPU was oversubscribed
        self._under_load: set[tuple[str, int, int]] = set()
        # point keys of layers already warned of a width below their grid (once each)
        self._clamp_warned = False

    # ----------------------------------------------------------------- measuring
    @classmethod
    def measure(cls, layers, backend: str = "onnxruntime", step: int = 8, threads: int = 2,
                cache: str | os.PathLike | None = None, progress: bool = True, *,
                timer: Timer | None = None, device: str | None = None, warmup: int = 2,
                min_runs: int = 5, max_runs: int = 25, target_ms: float = 15.0,
                passes: int = 2, seed: int = 0, batch: int | None = None,
                precision: str | None = None, torch_device: str | None = None,
                cuda_graphs: bool = True, channels_last: bool = True,
                min_count: int | None = None,
                log: Callable[[str], None] = print) -> "LatencyTable":
        """Time every layer's (c_in, c_out) grid and return the table.

        ``layers``: a list of :class:`LayerSpec` (every width on the grid timed), or a prepared
        model (anything else), whose layers come with the widths pruning can give them
        (:func:`fxprune.units.reachable_widths`; :func:`layer_grid`). ``timer(layer, c_in, c_out) -> ms`` replaces
        the backend's timing (tests, custom runtimes); its results are cached like real ones,
        under its name (its ``fxprune_name`` attribute, else its function's or class's
        ``__qualname__`` with the numbers and strings a ``functools.partial`` binds, a closure
        captures or its defaults hold; recorded as the runtime ``custom-timer NAME``): two
        instances of one class that time differently, or a timer that captures a clock
        reading, need an ``fxprune_name`` of their own. ``min_count``: a count timed on every axis below ``step``
        (the pruner's ``channel_step``): a coarse grid (``step=128``, to fit a time budget) then
        interpolates narrow widths instead of pricing them as ``step`` channels (on an H200,
        resnet50's narrowest model was priced at 0.55 of dense, a 50% target unreachable). ``warmup``/``min_runs``/``max_runs``/``target_ms`` set
        how long each point is timed: up to ``max_runs`` runs, stopping after ``min_runs`` once
        ``target_ms`` of runs have been spent (slow layers get fewer repeats).

        Machine load only ever adds time, and a knapsack steered by a table picks exactly the
        points that load made look expensive or happened to spare. So the grid is timed in
        ``passes`` passes, each in a fresh random order (``seed``), and every point keeps its
        fastest pass: a burst of load hits scattered points in one pass, not a layer's whole
        grid, and is then outvoted. Sustained load is not outvoted: it slows long layers more
        than short ones (the scheduler preempts them more often), every pass alike. So on the CPU
        (not under a custom ``timer``, whose device is unknown) the 1-minute load average is read
        before and after timing; above the usable cores (or ``threads``, if more) by over half a
        core, the points timed are flagged as timed under load (counted in
        ``stats["under_load"]``, kept in the cache and a saved table), with a ``RuntimeWarning``.
        A cache's flagged points are timed again by the next ``measure`` on an idle CPU; while
        it is still busy, they are used as they are and warned about again.

        ``batch`` and ``precision`` ("fp32", "fp16", "bf16") time every layer at the deployment
        batch and dtype instead of the prepared model's (SMCP's tables: batch 256, fp16).
        Without ``precision``, a prepared model is timed at the dtype its weights hold now
        (cast since ``prepare``: ``pm.half()``), as the pruners price it.
        ``torch_device`` ("cuda", "cuda:1", "cpu"; default: CUDA when there is one),
        ``cuda_graphs`` and ``channels_last`` are the torch backend's settings.

        ``device`` labels the table and its cache context (default: the CPU's or GPU's name). A
        torch device name there ("cpu", "cuda:1") is where the torch backend times, as in
        ``deploy`` and ``calibrate_cost``; for ONNX Runtime (CPU) and TensorRT (CUDA) it must
        name their device.

        ``step``: the grid's spacing in channels (every multiple of it up to each layer's width;
        the pruner's ``channel_step``). ``threads``: the runtime's intra-op threads (ONNX
        Runtime, the torch backend on the CPU). ``cache``: a JSON file of points, read first
        (only the points of this context: backend, device, runtime, threads, batch, dtype,
        timer) and written back atomically with the new ones, so a second call times only what
        is missing; it must be a cache this method wrote (a saved table or another file is
        refused, never overwritten). ``progress``: a progress bar on standard error; ``log``:
        where the one-line summary (points cached, timed, under load) goes.

        Raises:
            DeployError: an unknown backend or precision, a bad count (``step``, ``threads``,
                ``batch``, runs), a device the backend cannot time on, a ``cache`` that is not
                a latency cache of this format, or a timing that fails.
        """
        if timer is not None and not callable(timer):  # (break196 F5: failed mid-timing)
            raise DeployArgumentTypeError(f"timer is called as timer(layer, c_in, c_out) -> ms (or None: the "
                              f"backend times), got {type(timer).__name__}")
        if isinstance(progress, str) or progress not in (True, False):  # ("no" was True: review197 N5)
            raise DeployArgumentTypeError(f"progress is True or False, got {progress!r}")
        if not callable(log):
            raise DeployArgumentTypeError(f"log is called with each line (print, or lambda line: None to "
                              f"keep quiet), got {type(log).__name__}")
        if backend not in _BACKENDS:
            raise DeployArgumentError(f"backend {backend!r} is not one of {_BACKENDS}")
        if precision is not None and precision not in _PRECISION_DTYPES:
            raise DeployArgumentError(f"precision {precision!r} is not one of {tuple(_PRECISION_DTYPES)}")
        if batch is not None and not _is_count(batch):
            raise DeployArgumentError(f"batch must be an integer >= 1, got {batch!r}")
        if min_count is not None and not _is_count(min_count):
            raise DeployArgumentError(f"min_count must be an integer >= 1, got {min_count!r}")
        if not (isinstance(target_ms, numbers.Real) and not isinstance(target_ms, bool)
                and math.isfinite(target_ms) and target_ms > 0):  # break74: -1 and nan passed
            raise DeployArgumentError(f"target_ms must be a number of milliseconds > 0, got {target_ms!r}")
        if cache is not None and not os.fspath(cache).strip():  # (break74: "" meant no cache)
            raise DeployError("cache is an empty path: give a file, or cache=None for no cache")
        if cache is not None and (blocked := file_in_the_way(cache)):  # before any timing
            # (break129 F7: the whole grid was timed, then a bare FileExistsError lost it)
            raise DeployError(f"cache {os.fspath(cache)!r}: {blocked} is a file, not a folder; "
                              "give a cache path in a folder")
        for name, value, low in (("step", step, 1), ("threads", threads, 1),
                                 ("passes", passes, 1), ("warmup", warmup, 0),
                                 ("min_runs", min_runs, 1), ("max_runs", max_runs, min_runs)):
            if not _is_count(value, low):
                raise DeployArgumentError(f"{name} must be an integer >= {low}"
                                  + (" (min_runs)" if name == "max_runs" else "")
                                  + f", got {value!r}")
        # plain ints from here on: a numpy one reached the saved JSON (review118 #8)
        step, threads, passes, warmup, min_runs, max_runs = map(
            int, (step, threads, passes, warmup, min_runs, max_runs))
        batch = None if batch is None else int(batch)
        min_count = None if min_count is None else int(min_count)
        dtype = _PRECISION_DTYPES.get(precision)
        given = layers
        layers = _as_layer_specs(layers)
        if batch is not None:
            _check_batch_first(layers, _example_batch(given), batch)
        on_cpu = False  # a custom timer's device is unknown: no load check
        if timer is None:  # before any timing, not when the shuffle reaches it
            for layer in layers:
                check_timed(layer)
        if timer is None and device is not None:
            device, torch_device = _device_label(backend, device, torch_device)
        if timer is None:
            timer, runtime_version, default_device = _backend_timer(
                backend, threads, warmup=warmup, min_runs=min_runs, max_runs=max_runs,
                target_ms=target_ms, torch_device=torch_device, cuda_graphs=cuda_graphs,
                channels_last=channels_last)
            on_cpu = backend == "onnxruntime" or (
                backend == "torch" and getattr(timer.device, "type", "") == "cpu")
            timed_on = default_device  # the machine itself: `device` may be a label of the user's
        else:  # named: two timers sharing a cache file do not read each other's points, and a
            # table or report does not pass it off as the backend's (break176 F6)
            runtime_version, default_device, timed_on = (f"custom-timer {_timer_name(timer)}",
                                                         "custom-timer", None)
        table = cls(backend, device or default_device, threads, runtime_version, batch, dtype)
        table.timed_on, table.step = timed_on, step
        if backend == "torch" and timed_on is not None:  # what calibrate_cost must time alike
            table.torch_settings = {"torch_device": str(timer.device), "cuda_graphs": cuda_graphs,
                                    "channels_last": channels_last}
        layers = [table.as_priced(layer) for layer in layers]

        todo: dict[tuple[str, int, int], LayerSpec] = {}
        for layer in layers:
            cins, couts, diag = layer_grid(layer, step, min_count)
            key = grid_key(layer)
            if key in table._grids:  # layers alike but pruned differently: the union of widths
                old_in, old_out, _, names = table._grids[key]
                cins, couts = _union_of_widths(old_in, old_out, cins, couts, diag)
            else:
                names = []
            table._grids[key] = (cins, couts, diag, names + [layer.name])
            for ci, co in _points_of(cins, couts, diag):
                todo.setdefault((point_key(layer), ci, co), layer)

        contexts, marks, _ = read_cache_file(cache)
        cached = contexts.get(table._context(), {})
        cached_busy = marks.get(table._context(), {})
        if not cached and timed_on is None and contexts:
            _say_older_timer_name(table, timer, contexts, cache, log)
        flagged = []  # cached points the cache says were timed under load
        for pk, ci, co in list(todo):
            hit = cached.get(pk, {}).get(f"{ci},{co}")
            if hit is not None:
                table._points.setdefault(pk, {})[(ci, co)] = float(hit)
                if f"{ci},{co}" in cached_busy.get(pk, ()):
                    flagged.append((pk, ci, co))
                else:
                    del todo[(pk, ci, co)]
        loads = [cpu_load()] if on_cpu and todo else []
        # a flagged point is timed again when the CPU is idle now; while it is busy (or under a
        # custom timer, whose device is unknown) the cached value is used, and still flagged
        if flagged and (not on_cpu or cpu_busy(loads, threads)):
            for key in flagged:
                del todo[key]
            table._under_load.update(flagged)
        # _points holds every cache hit so far, flagged ones being timed again among them: they
        # stay flagged until timed (break74 F2: a save of a run stopped midway, or a periodic
        # one, cleared the flags of points still holding the busy timings)
        retimed = sum(key in todo for key in flagged)
        table._under_load.update(key for key in flagged if key in todo)
        table.stats["cached"] = sum(len(v) for v in table._points.values()) - retimed
        # the progress bar counts every pass (break171 F7: 96,200 points here, 192,400 there)
        timed_by = (backend if not runtime_version.startswith("custom-timer")
                    else f"{runtime_version.replace('custom-timer', 'custom timer', 1)}")
        # (break190 F14: a cache's points timed under load, timed again, read as "0 cached")
        again = f", {retimed} of them cached but timed under load" if retimed else ""
        log(f"latency table ({timed_by}, {threads} threads, step {step}): {len(layers)} "
            f"layers, {len(table._grids)} distinct, {table.stats['cached'] + len(todo)} grid points "
            f"({table.stats['cached']} cached, {len(todo)} to time{again}, in {passes} "
            f"pass{'es' if passes != 1 else ''})")

        if cache and todo:  # written after timing: refused before it (break164 F1), and
            # only where something is timed (review165 F2: a read-only cache holding every
            # point is read, not written)
            try:
                check_replaceable(cache)
            except OSError as exc:
                raise DeployError(f"cache {exc}") from None

        from tqdm import tqdm

        busy_before = cpu_busy(loads, threads)
        if busy_before:  # known before timing: the periodic cache saves mark them too
            table._under_load.update(todo)
        t_start = last_save = time.perf_counter()
        order = list(todo)
        rng = random.Random(seed)
        total, done, paced, pace_start = len(todo) * passes, 0, False, _pace_clock()
        bar = tqdm(total=total, desc=f"latency table ({backend})", unit="pt",
                   disable=not progress or not todo)
        # a line printed under a drawn bar lands on it (review181 F10)
        say = bar.write if log is print and not bar.disable else log
        try:
            for p in range(passes):
                rng.shuffle(order)
                for pk, ci, co in order:
                    ms = _timed(timer, todo[(pk, ci, co)], ci, co)
                    pts = table._points.setdefault(pk, {})
                    pts[(ci, co)] = ms if p == 0 else min(pts[(ci, co)], ms)
                    if p == 0 and not busy_before:  # timed again, on an idle CPU so far
                        table._under_load.discard((pk, ci, co))
                    bar.update()
                    done += 1
                    if not paced and (spent := _pace_clock() - pace_start) >= PACE_AFTER_S:
                        paced = True  # (the points come in random order: a fair sample)
                        left = spent / done * (total - done)
                        if left > PACE_SAID_ABOVE_S:
                            say(f"latency table: {done:,} of {total:,} points timed in "
                                f"{spent:.0f} s; about {_duration(left)} more at this pace: a "
                                "coarser step times fewer, and a cache= file keeps what was "
                                "timed")
                    if cache and time.perf_counter() - last_save > _CACHE_SAVE_EVERY_S:
                        table._write_cache(cache)
                        last_save = time.perf_counter()
            table.stats["measured"] = len(todo)
            if loads and todo:
                loads.append(cpu_load())
                if cpu_busy(loads, threads):
                    table._under_load.update(todo)
        finally:
            bar.close()
            if cache and todo:
                table._write_cache(cache)
        table.stats["seconds"] = time.perf_counter() - t_start
        table.stats["load_average"] = [load for load, _ in loads if load is not None]
        table.stats["under_load"] = len(table._under_load)
        if table._under_load:
            why = []
            if todo and cpu_busy(loads, threads):
                now = " and ".join(f"{load:.1f} {when}" for (load, _), when
                                   in zip(loads, ("before timing", "after")) if load is not None)
                why.append(f"load average {now} on {loads[0][1]} cores"
                           + (f" timing with {threads} threads" if threads > loads[0][1] else ""))
            if flagged and not todo.keys() & set(flagged):
                busy_now = (f", and the CPU is still busy (load average {loads[0][0]:.1f})"
                            if cpu_busy(loads, threads) else "")
                why.append(f"{len(flagged)} as the cache {os.fspath(cache)!r} records{busy_now}")
            table._warn_under_load("; ".join(why), "measure again on an idle machine" + (
                ", which times the flagged points again" if cache else ""), stacklevel=3)
        return table

    def _warn_under_load(self, why: str, advice: str, stacklevel: int) -> None:
        total = sum(len(v) for v in self._points.values())
        warnings.warn(
            f"latency table: {len(self._under_load)} of {total} points were timed while other "
            f"processes shared the CPU ({why}); load slows long layers more than short ones, so "
            f"these timings would steer the knapsack wrong: {advice}", RuntimeWarning,
            stacklevel=stacklevel)

    def as_priced(self, layer: LayerSpec) -> LayerSpec:
        """``layer`` at the batch and dtype this table was measured at (what it prices)."""
        if self.batch is None and self.dtype is None:
            return layer
        changes = {}
        if self.dtype is not None and layer.dtype != self.dtype:
            changes["dtype"] = self.dtype
        if self.batch is not None and layer.input_shape and layer.batch != self.batch:
            changes["input_shape"] = (self.batch, *layer.input_shape[1:])
            changes["output_shape"] = (self.batch, *layer.output_shape[1:])
        return dataclasses.replace(layer, **changes) if changes else layer

    def _context(self, runtime_version: str | None = None) -> str:
        """The cache's key for this table's points (``runtime_version``: another's, the same
        backend, device and threads)."""
        return (f"{self.backend}|{runtime_version or self.runtime_version}|{self.device}|"
                f"threads={self.threads}")

    def _write_cache(self, path) -> None:
        data, busy, extra = read_cache_file(path)
        ctx = data.setdefault(self._context(), {})
        ctx_busy = busy.setdefault(self._context(), {})
        for pk, pts in self._points.items():
            ctx.setdefault(pk, {}).update({f"{ci},{co}": ms for (ci, co), ms in pts.items()})
            # a point timed again on an idle machine leaves the list; one timed under load joins it
            marked = set(ctx_busy.get(pk, ())) - {f"{ci},{co}" for ci, co in pts}
            marked |= {f"{ci},{co}" for ci, co in pts if (pk, ci, co) in self._under_load}
            if marked:
                ctx_busy[pk] = sorted(marked)
            else:
                ctx_busy.pop(pk, None)
        busy = {c: v for c, v in busy.items() if v}
        _atomic_write_json(path, {**extra, "format": _CACHE_FORMAT, "version": 1,
                                  "contexts": data, **({"under_load": busy} if busy else {})})

    # ------------------------------------------------------------------ querying
    def __contains__(self, layer: LayerSpec) -> bool:
        return grid_key(self.as_priced(layer)) in self._grids

    def __len__(self) -> int:
        return len(self._grids)

    def grid(self, layer: LayerSpec) -> tuple[list[int], list[int]]:
        """The (c_in, c_out) axes measured for ``layer``."""
        cins, couts, _, _ = self._grid_for(self.as_priced(layer))
        return list(cins), list(couts)

    def layer_cost(self, layer: LayerSpec, c_in: int, c_out: int) -> float:
        """Interpolated ms of ``layer`` keeping ``c_in``/``c_out`` channels (0 if either is 0).

        Depthwise layers are looked up at ``c_in`` (their kept outputs are the channel
        multiplier times it).
        """
        layer = self.as_priced(layer)
        for side, count in (("c_in", c_in), ("c_out", c_out)):
            if (isinstance(count, bool) or not isinstance(count, numbers.Real)
                    or not count >= 0):  # (NaN too: it priced as nan, a negative count as 0)
                raise ValueError(f"latency table: layer {layer.name!r} asked at {side}={count!r}: "
                                 "a channel count must be a number >= 0")
        cins, couts, diag, _ = self._grid_for(layer)
        if c_in <= 0 or c_out <= 0:
            return 0.0  # a layer with no channels left is removed from the network
        if c_in > cins[-1] or (not diag and c_out > couts[-1]):
            # (break86 #4: priced silently as the dense width; pruning never asks above it)
            raise ValueError(
                f"latency table: layer {layer.name!r} ({point_key(layer)}) asked at {c_in}x{c_out} "
                f"channels, above the widths its grid was measured up to "
                f"({cins[-1]}x{couts[-1] if not diag else c_in}): a table prices a layer at its "
                "dense width or narrower; measure a table for the wider layer")
        pts = self._points.get(point_key(layer), {})
        if (c_in < cins[0] or (not diag and c_out < couts[0])) and not self._clamp_warned \
                and not pricing_hypothetically():
            self._warn_below_grid(layer, c_in, c_out, cins, couts)
        try:
            if diag:
                lo, hi, w = _interp(cins, c_in)
                a, b = pts[(cins[lo], couts[lo])], pts[(cins[hi], couts[hi])]
                return a + (b - a) * w
            i0, i1, wi = _interp(cins, c_in)
            o0, o1, wo = _interp(couts, c_out)
            f00, f01 = pts[(cins[i0], couts[o0])], pts[(cins[i0], couts[o1])]
            f10, f11 = pts[(cins[i1], couts[o0])], pts[(cins[i1], couts[o1])]
        except KeyError as e:
            raise UnmeasuredLayerError(
                f"the latency table lacks grid point {e.args[0]} of layer {layer.name!r} "
                f"({point_key(layer)}); measure it again for this model (LatencyTable.measure, or "
                f"fxprune.deploy.latency_cost)") from None
        return ((1 - wi) * ((1 - wo) * f00 + wo * f01) + wi * ((1 - wo) * f10 + wo * f11))

    def _warn_below_grid(self, layer: LayerSpec, c_in: int, c_out: int, cins, couts) -> None:
        """Once per table (the first layer named; one warning per layer flooded a model's
        set-up: 14 on mobilenet_v3_small, break50 #3): a width below the grid's smallest count
        is priced as that count (clamped), so the knapsack sees no saving from narrowing
        further."""
        self._clamp_warned = True
        side, asked, smallest = (("input", c_in, cins[0]) if c_in < cins[0]
                                 else ("output", c_out, couts[0]))
        step = getattr(self, "step", None)  # (a table pickled before it was recorded)
        if len(cins if side == "input" else couts) == 1 and (step is None or smallest > step):
            # one count on that axis: timed where these channels could not be pruned (break164
            # F2: the advice, a finer step, could not help a table of another model); not
            # where the step is as wide as the layer (break171 F5: a table at step 32 of this
            # very model was said to come from another)
            warnings.warn(
                f"latency table: layer {layer.name!r} ({point_key(layer)}) was priced at {asked} "
                f"{side} channels, but its grid holds only {smallest}: the table was measured on "
                "a model where these channels were kept whole, so it prices every narrower width "
                f"as {smallest} and the method will not prune them; measure a table of this "
                "model (said once per table, for its first such layer)", RuntimeWarning,
                stacklevel=3)
            return
        warnings.warn(
            f"latency table: layer {layer.name!r} ({point_key(layer)}) was priced at {asked} "
            f"{side} channels, below the smallest count its grid was measured at ({smallest}): "
            f"it is priced as {smallest} (the table clamps at its grid's edges), so narrower "
            "widths look no cheaper; measure the table with a finer step (LatencyTable.measure"
            "(..., step=N), N at most the method's channel_step) so that its grid starts at or "
            "below the narrowest width pruning gives, or with min_count=1 where a concat's "
            "pieces share a group, which any piece's width can take (said once per table, for "
            "its first such layer)", RuntimeWarning, stacklevel=3)

    def _grid_for(self, layer: LayerSpec):
        try:
            return self._grids[grid_key(layer)]
        except KeyError:
            measured_as = [d for d in ("float32", "float16", "bfloat16", "float64")
                           if d != layer.dtype
                           and grid_key(dataclasses.replace(layer, dtype=d)) in self._grids]
            if measured_as:  # break50 #5: "measure it first" to a user who had, before a cast
                raise UnmeasuredLayerError(
                    f"layer {layer.name!r} was measured at {measured_as[0]}, and its weights are "
                    f"{layer.dtype} now (the model was cast since the table was measured): "
                    f"measure a table of the cast model, or cast it back to {measured_as[0]}"
                ) from None
            def at(b):
                return dataclasses.replace(layer, input_shape=(b, *layer.input_shape[1:]),
                                           output_shape=(b, *layer.output_shape[1:]))

            tried = {int(k.split("|", 1)[0][1:]) for k in self._grids} - {layer.batch}
            batches = sorted(b for b in tried if layer.input_shape and grid_key(at(b)) in self._grids)
            if batches:  # break66 #4: the message did not say the table is of another batch
                raise UnmeasuredLayerError(
                    f"layer {layer.name!r} was measured at batch "
                    f"{', '.join(map(str, batches))}, and the model's example inputs are batch "
                    f"{layer.batch}: measure a table at batch {layer.batch}, or prepare the model "
                    f"with example inputs of batch {batches[0]}") from None
            # a layer of this name measured in another shape: said (break164 F6: another
            # input size or width read as "nothing measured")
            held = next((f"; the table holds {layer.name!r} as "
                         f"{k.rpartition('|')[2].replace('x', '->')} channels, "
                         f"{k.rpartition('|')[0]}" for k, g in self._grids.items()
                         if layer.name in g[3]), "")
            raise UnmeasuredLayerError(
                f"no latency was measured for layer {layer.name!r} ({layer.kind} "
                f"{layer.in_channels}->{layer.out_channels}, {point_key(layer)}) on "
                f"{self.backend} / {self.device or 'unknown device'}{held}: call "
                "LatencyTable.measure(...) with this layer (or the model it belongs to) "
                "first") from None

    def torch_timing(self) -> dict:
        """A torch table's ``torch_device`` ("cpu", "cuda:0"), ``cuda_graphs`` and
        ``channels_last``: as recorded, or for a table saved before they were, read from its
        runtime version text (``... cuda ... graphs channels_last``)."""
        recorded, version = self.torch_settings or {}, self.runtime_version
        return {"torch_device": recorded.get("torch_device", "cuda" if "cuda" in version else "cpu"),
                "cuda_graphs": recorded.get("cuda_graphs", " graphs" in version),
                "channels_last": recorded.get("channels_last", "channels_last" in version)}

    # ------------------------------------------------------------- persistence
    def to_dict(self) -> dict:
        return {
            "format": _TABLE_FORMAT, "version": 1, "name": self.name, "backend": self.backend,
            "device": self.device, "threads": self.threads,
            "runtime_version": self.runtime_version, "batch": self.batch, "dtype": self.dtype,
            **({"timed_on": self.timed_on} if self.timed_on else {}),
            **({"torch_settings": self.torch_settings} if self.torch_settings else {}),
            **({"step": self.step} if getattr(self, "step", None) is not None else {}),
            "grids": {k: {"c_in": ci, "c_out": co, "diagonal": d, "layers": names}
                      for k, (ci, co, d, names) in self._grids.items()},
            "points": {pk: {f"{ci},{co}": ms for (ci, co), ms in pts.items()}
                       for pk, pts in self._points.items()},
            **({"under_load": sorted([pk, f"{ci},{co}"] for pk, ci, co in self._under_load)}
               if self._under_load else {}),
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write the table as JSON to ``path`` (atomically). An existing file is replaced only
        when it is a saved table: a latency cache (every context's timings) or any other file
        raises :class:`DeployError` (saving onto a cache would lose every context's timings)."""
        path = os.fspath(path)  # as given, as measure's cache= (the CLI expands ~)
        if blocked := file_in_the_way(path):
            raise DeployError(f"{path!r}: {blocked} is a file, not a folder; save the table "
                              "to a path in a folder")
        try:
            check_replaceable(path)
        except OSError as exc:
            raise DeployError(str(exc)) from None
        if os.path.isfile(path) and (found := _format_of(path)) != _TABLE_FORMAT:
            what = ("a latency cache (measure's cache= file, every context's timings)"
                    if found == _CACHE_FORMAT else "not a saved latency table")
            raise DeployError(f"{path!r} exists and is {what}: save replaces only a table it "
                              "wrote; give another path")
        _atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LatencyTable":
        """The table :meth:`save` wrote. An ONNX Runtime or torch table timed on another CPU or
        GPU, or another runtime version, is warned of (a cache replays only where it was timed; a table is used as it
        is, e.g. by a resumed run, whose budget must not move)."""
        table = cls.from_dict(_read_json(path, "a saved LatencyTable", _TABLE_FORMAT),
                              f"the saved table {os.fspath(path)!r}")
        here = _this_machine(table)
        if here is not None:
            machine = table.timed_on or table.device  # older tables: the device field
            if (machine, table.runtime_version) != here:
                warnings.warn(f"the saved table {os.fspath(path)!r} was timed on {machine} "
                              f"with {table.runtime_version}, this machine is {here[0]} with "
                              f"{here[1]}: its latencies are another machine's; measure one here "
                              "to prune for this one", RuntimeWarning, stacklevel=2)
        return table

    @classmethod
    def from_dict(cls, data: dict, source: str = "a table's dict") -> "LatencyTable":
        """The table :meth:`to_dict` wrote (``source`` names it in errors and warnings)."""
        _check_header(data, source)
        try:
            table = cls(data["backend"], data["device"], data["threads"],
                        data["runtime_version"], data.get("batch"), data.get("dtype"))
            for k, g in data["grids"].items():
                if not (isinstance(g["layers"], list) and all(isinstance(n, str) for n in g["layers"])):
                    # (break111 F16: "c1" loaded as the layers ['c', '1'])
                    raise TypeError(f"grid {k!r}: layers is {g['layers']!r}, not a list of names")
                table._grids[k] = (list(g["c_in"]), list(g["c_out"]), bool(g["diagonal"]),
                                   list(g["layers"]))
                dense_in, dense_out = map(int, k.rpartition("|")[2].split("x"))
                _check_diagonal(source, k, g)
                if g["diagonal"] and list(g["c_out"]) != [c * (dense_out // dense_in)
                                                          for c in g["c_in"]]:
                    raise DeployError(
                        f"{source} timed the depthwise layer(s) {', '.join(g['layers'])} "
                        f"({dense_in}->{dense_out} channels) without their channel multiplier, "
                        "as fxprune did before 2026-12-03; measure the table again")
                _check_axes(source, k, g, dense_in, dense_out)
            for pk, pts in data["points"].items():
                table._points[pk] = {_parse_point(p): _milliseconds(ms) for p, ms in pts.items()}
            _check_header_matches_timings(table, source)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DeployError(f"{source} is malformed ({type(exc).__name__}: {exc}); measure "
                              "the table again") from None
        marks = data.get("under_load", [])
        # (break164 F4: a pair whose point did not parse was a bare ValueError)
        if not isinstance(marks, list) or any(not isinstance(m, list) or len(m) != 2
                                              or not isinstance(m[0], str) or not _is_point(m[1])
                                              for m in marks):
            raise DeployError(f"{source} has a malformed 'under_load' entry (a list of "
                              "[point key, 'c_in,c_out'] pairs); delete that key to use the table")
        table.timed_on = data.get("timed_on") if isinstance(data.get("timed_on"), str) else None
        settings = data.get("torch_settings")
        table.torch_settings = dict(settings) if isinstance(settings, dict) else None
        table.step = data["step"] if _is_count(data.get("step")) else None
        missing = [(ci, co, names) for k, (cins, couts, diag, names) in table._grids.items()
                   for ci, co in _points_of(cins, couts, diag)
                   if (ci, co) not in table._points.get(k.rpartition("|")[0], {})]
        if missing:  # found now, not at the first mask update hours into training
            ci, co, names = missing[0]
            raise DeployError(f"{source} lacks {len(missing)} grid point(s), the first "
                              f"({ci}, {co}) of layer(s) {', '.join(names)}; measure the table "
                              "again (with its cache, only the missing points are timed)")
        table._under_load = {(pk, *_parse_point(pt)) for pk, pt in marks}
        table.stats["under_load"] = len(table._under_load)
        if table._under_load:
            table._warn_under_load(f"as {source} records", "measure it again on an idle machine",
                                   stacklevel=4)
        return table

    def __repr__(self) -> str:
        n = sum(len(v) for v in self._points.values())
        return (f"LatencyTable(backend={self.backend!r}, device={self.device!r}, "
                f"threads={self.threads}, batch={self.batch}, dtype={self.dtype}, "
                f"layers={len(self._grids)}, points={n})")


def _check_header_matches_timings(table: "LatencyTable", source: str) -> None:
    """DeployError when the batch or dtype a table's header records is not the one its layers
    were timed at (every grid key names both): an edited or mixed file priced a float32
    batch-1 model as "cast since" or "batch 8" (break106 #4)."""
    for key in table._grids:
        batch, _, rest = key.partition("|")
        dtype = rest.rpartition("|")[0].rpartition(":")[2]
        for what, recorded, timed in (("batch", table.batch, int(batch[1:])),
                                      ("dtype", table.dtype, dtype)):
            if recorded is not None and recorded != timed:
                raise DeployError(f"{source} records {what} {recorded}, but its layers were timed "
                                  f"at {what} {timed} (the file was edited or mixed); measure the "
                                  f"table again, or set its {what} back to {timed}")


def _is_count(value, low: int = 1) -> bool:
    """An integer (not a bool; a numpy one too) of at least ``low``: measure's settings, and a
    saved table's."""
    return not isinstance(value, bool) and isinstance(value, numbers.Integral) and value >= low


def _check_header(data: dict, source: str) -> None:
    """A saved table's settings are of the types ``measure`` gives them (an edited or
    corrupted file may hold anything)."""
    if not isinstance(data, dict):
        return  # refused as malformed by from_dict
    bad = _header_problem(data)
    if bad is not None:
        raise DeployError(f"{source} has {bad[0]!r}: {data[bad[0]]!r}, not {bad[1]}; measure "
                          "the table again")


def _header_problem(data: dict) -> tuple[str, str] | None:
    """The first setting of ``data`` (a table's header) of a type ``measure`` never gives, and
    what it should be; None when all are fine."""
    bad = None
    for name in ("backend", "device", "runtime_version"):
        if name in data and not isinstance(data[name], str):
            bad = (name, "a string")
    if "threads" in data and not _is_count(data["threads"]):
        bad = ("threads", "an integer >= 1")
    if data.get("batch") is not None and not _is_count(data["batch"]):
        bad = ("batch", "an integer >= 1 or null")
    # break74: an edited dtype (int8) loaded, and pricing said the model was cast; a backend
    # fxprune has none of loaded too
    dtypes = (*_PRECISION_DTYPES.values(), "float64")
    if data.get("dtype") is not None and data["dtype"] not in dtypes:
        bad = ("dtype", f"one of {', '.join(dtypes)} or null")
    if isinstance(data.get("backend"), str) and data["backend"] not in _BACKENDS:
        bad = ("backend", f"one of {', '.join(_BACKENDS)}")
    if data.get("version", 1) != 1:  # a later format: read as this one, silently
        bad = ("version", "1 (this fxprune's format: a later fxprune wrote it, or it was "
               "edited)")
    return bad


def _check_diagonal(source: str, key: str, grid: dict) -> None:
    """``diagonal`` (points pairing the axes) is what ``layer_grid`` gives: exactly a depthwise
    layer's (its grid key's signature says ``dw``)."""
    signature = key.split("|")[1] if key.count("|") == 2 else ""
    depthwise = re.search(r"dwb?:[^:]*$", signature) is not None
    if grid["diagonal"] is not depthwise:
        raise DeployError(
            f"{source} has grids[{key!r}]['diagonal'] = {grid['diagonal']!r}, but the layer is "
            f"{'' if depthwise else 'not '}depthwise (diagonal must be {depthwise}); measure "
            "the table again")


def _check_axes(source: str, key: str, grid: dict, dense_in: int, dense_out: int) -> None:
    """A grid's axes are what ``layer_grid`` measures: strictly increasing channel counts in
    ``[1, dense]`` ending at the dense count (lookups bisect them and clamp at their ends)."""
    for name, dense in (("c_in", dense_in), ("c_out", dense_out)):
        axis = grid[name]
        if not (isinstance(axis, list) and axis and all(_is_count(c) for c in axis)
                and all(a < b for a, b in zip(axis, axis[1:])) and axis[-1] == dense):
            raise DeployError(
                f"{source} has grids[{key!r}][{name!r}] = {axis!r}, not strictly increasing "
                f"channel counts from 1 up to the layer's {dense} (its dense count, which "
                "must be the last); measure the table again")


def _timed(timer: Timer, layer: LayerSpec, c_in: int, c_out: int) -> float:
    given = timer(layer, c_in, c_out)
    try:  # (break176 F3: a timer returning None was a bare TypeError)
        ms = float(given)
    except (TypeError, ValueError):
        ms = given
    if not isinstance(ms, float) or not math.isfinite(ms) or ms < 0:
        raise DeployError(f"timing {layer.name!r} at {c_in}->{c_out} channels gave {ms!r} ms; "
                          "a timer returns the layer's time as a finite number of ms >= 0")
    return ms


def _parse_point(text: str) -> tuple[int, int]:
    if not re.fullmatch(r"-?\d+,-?\d+", text):  # (break164 F7: " 8, 24" read as "8,24", and won)
        raise ValueError(f"point {text!r} is not 'c_in,c_out' (two counts, no spaces)")
    ci, co = text.split(",")
    ci, co = int(ci), int(co)
    if ci < 1 or co < 1:  # (break74: "-16,16" was read as a width)
        raise ValueError(f"point {text!r} is not two channel counts >= 1")
    return ci, co


def _is_point(text) -> bool:
    """``text`` is a grid point's key, ``"c_in,c_out"``."""
    try:
        _parse_point(text)
    except (AttributeError, TypeError, ValueError):
        return False
    return True


def _say_older_timer_name(table: "LatencyTable", timer, contexts: dict, cache, log) -> None:
    """Say where ``cache`` holds points of this custom timer under the name an fxprune before
    this one gave it (its bare ``__qualname__``): the name now includes its arguments, so they
    are not read, and ``fxprune_name`` reuses them (break184 F1: a cache re-timed in full,
    without a word)."""
    if isinstance(timer, functools.partial):
        return
    older = _bare_name(timer)
    if f"custom-timer {older}" == table.runtime_version:
        return
    points = sum(len(v) for v in
                 contexts.get(table._context(f"custom-timer {older}"), {}).values())
    if points:
        log(f"latency table: the cache {os.fspath(cache)!r} holds {points} points of this timer "
            f"under the name an earlier fxprune gave it ({older!r}; now "
            f"{table.runtime_version.removeprefix('custom-timer ')!r}, with its arguments): set "
            f"timer.fxprune_name = {older!r} to reuse them if it times as it did then")


def _duration(seconds: float) -> str:
    """``seconds`` as a person says it: "12 min", "1.4 h"."""
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _bare_name(timer) -> str:
    """A timer's function's or class's ``__qualname__``: all an fxprune named it by before its
    arguments were part of the name."""
    return getattr(timer, "__qualname__", None) or type(timer).__qualname__


def _timer_name(timer) -> str:
    """The name a custom timer's points are cached under: its ``fxprune_name`` attribute where
    it has one (the way to name a timer that captures a clock reading, or instances of one
    class that time differently); else its function's or class's ``__qualname__``, with what
    a ``functools.partial`` binds, a closure captures and its default arguments hold
    (``lambda layer, ci, co, s=s: ...`` in a loop) (review178 F5, review181 F2: timers of one
    function read each other's points). Numbers, strings and their tuples are named by value,
    anything else by its type, so a timer that captures a runtime session keeps its cache
    across processes; a bound method is named by its class, as an instance is (and takes no
    attribute: wrap it, ``functools.partial(obj.time)``, and name the partial)."""
    def plain(v) -> bool:
        return v is None or isinstance(v, (bool, numbers.Number, str))

    def value(v) -> str:
        named = plain(v) or (isinstance(v, tuple) and all(map(plain, v)))
        return repr(v) if named else type(v).__qualname__

    own = getattr(timer, "fxprune_name", None)
    if isinstance(own, str) and own:
        return own
    if isinstance(timer, functools.partial):
        bound = ([value(a) for a in timer.args]
                 + [f"{k}={value(v)}" for k, v in sorted(timer.keywords.items())])
        return f"{_timer_name(timer.func)}({', '.join(bound)})"
    name = _bare_name(timer)
    captured = []
    for cell in getattr(timer, "__closure__", None) or ():
        try:
            captured.append(value(cell.cell_contents))
        except ValueError:  # a cell not yet filled
            captured.append("<empty>")
    defaults = [value(v) for v in getattr(timer, "__defaults__", None) or ()]
    defaults += [f"{k}={value(v)}" for k, v in
                 sorted((getattr(timer, "__kwdefaults__", None) or {}).items())]
    return (name + (f"[{', '.join(captured)}]" if captured else "")
            + (f"({', '.join(defaults)})" if defaults else ""))


def _milliseconds(value) -> float:
    """A saved time: a finite number >= 0 (an edited file may hold anything)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and value >= 0):
        raise ValueError(f"a time of {value!r} ms")
    return float(value)


def _this_machine(table: "LatencyTable") -> tuple[str, str] | None:
    """(device name, runtime version) a table of ``table``'s backend would record here; None
    where that is unknown (TensorRT without tensorrt, a custom timer)."""
    if table.runtime_version.startswith("custom-timer"):
        return None
    if table.backend == "onnxruntime":
        from . import onnxruntime_backend as ortb
        from .common import cpu_name

        return cpu_name(), f"onnxruntime {ortb.version()}"
    if table.backend == "torch":
        import torch

        from . import torch_backend as tb

        timing = table.torch_timing()
        on_cuda = timing["torch_device"].startswith("cuda")
        if on_cuda and not torch.cuda.is_available():
            return "a machine without CUDA", f"torch {torch.__version__}"
        device = torch.device("cpu")
        if on_cuda:  # the GPU it was timed on, where this machine has that index (review175 F7)
            index = torch.device(timing["torch_device"]).index
            device = torch.device("cuda", index if index is not None and index
                                  < torch.cuda.device_count() else torch.cuda.current_device())
        return tb.device_name(device), tb.runtime_version(
            device, cuda_graphs=timing["cuda_graphs"], channels_last=timing["channels_last"])
    return None


def _device_label(backend: str, device: str, torch_device):
    """(label, torch_device) for ``measure``'s ``device``: a free label of the machine, or a
    torch device name ("cpu", "cuda:1"), which for the torch backend is where it times (as
    ``deploy``'s and ``calibrate_cost``'s ``device``) and for the others must be theirs."""
    import torch

    try:
        named = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        return device, torch_device  # a label ("A100 node 3")
    if named.type not in ("cpu", "cuda"):
        return device, torch_device
    if backend == "torch":
        from . import torch_backend as tb

        if torch_device is not None and tb.resolve_device(torch_device) != tb.resolve_device(named):
            raise DeployError(f"device={device!r} and torch_device={torch_device!r} name two "
                              "devices; the torch backend times on one: pass one of them")
        return None, named
    runs_on = "cpu" if backend == "onnxruntime" else "cuda"
    if named.type != runs_on:
        raise DeployError(f"the {backend} backend times on the {runs_on.upper()}, not on "
                          f"device={device!r}; use backend='torch' with that device, or leave "
                          "device out")
    return None, torch_device


def _as_layer_specs(layers) -> list[LayerSpec]:
    if not isinstance(layers, (list, tuple)):
        # the prepared-model path, imported late (fxprune core): each layer with the widths
        # pruning can give it, so that the grid times no other, at the dtype its weight holds
        # now (a model cast since prepare: break42 #3)
        from fxprune.units import UnitIndex, costed_layers, reachable_widths

        layers = [dataclasses.replace(cl.spec, meta={**cl.spec.meta,
                                                     "widths": reachable_widths(cl)})
                  for cl in costed_layers(UnitIndex(layers), layers)]
    layers = list(layers)
    bad = [type(x).__name__ for x in layers if not isinstance(x, LayerSpec)]
    if bad:
        raise ArgumentTypeError(f"LatencyTable.measure needs LayerSpec objects, got {sorted(set(bad))}")
    return layers


def _example_batch(layers) -> int | None:
    """A prepared model's example batch (its first tensor input's dim 0); None for specs."""
    if isinstance(layers, (list, tuple)):
        return None
    import torch

    from fxprune.groups import state_of

    first = next((t for t in state_of(layers).example_inputs if isinstance(t, torch.Tensor)
                  and t.ndim), None)
    return None if first is None else int(first.shape[0])


def _check_batch_first(layers: list[LayerSpec], example_batch: int | None, batch: int) -> None:
    """``batch=`` times every layer at a leading dim of ``batch``: right only where that dim is
    the model's batch, dim 0 of its input (fxprune's convention, as deploy's). A layer whose
    leading dim is another (frames folded into the batch, ``B*T``; a head after a
    sequence-first body) would be timed at a shape the model never runs (break74 F1: a video
    model's convs priced 4x too cheap against its head, silently), so it is refused. A model
    sequence-first throughout (``T, B, C`` input) is read as batch ``T``: it cannot be told."""
    timed = [layer for layer in layers if layer.input_shape]
    if example_batch is None and timed:  # specs alone: batch-first layers share their dim 0
        example_batch = max({l.batch for l in timed}, key=[l.batch for l in timed].count)
    odd = next((layer for layer in timed if layer.batch != example_batch), None)
    if odd is not None:
        raise DeployError(
            f"batch={batch}: layer {odd.name!r} runs on a leading dim of {odd.batch}, not the "
            f"example batch {example_batch} (frames folded into the batch, or a layer after a "
            f"sequence-first one), and batch= times every layer at a leading dim of {batch}; "
            f"prepare the model with example inputs of batch {batch} and measure without batch=")


def _backend_timer(backend: str, threads: int, *, torch_device=None, cuda_graphs: bool = True,
                   channels_last: bool = True, **timing) -> tuple[Timer, str, str]:
    """(timer, runtime version, device name) for a real backend."""
    from .layer_onnx import layer_input_shape, layer_model_bytes

    if backend == "torch":
        from . import torch_backend as tb

        timer = tb.LayerTimer(torch_device, threads=threads, cuda_graphs=cuda_graphs,
                              channels_last=channels_last, **timing)
        version = tb.runtime_version(timer.device, cuda_graphs=cuda_graphs,
                                     channels_last=channels_last)
        return timer, version, tb.device_name(timer.device)

    if backend == "onnxruntime":
        from . import onnxruntime_backend as ortb
        from .common import cpu_name

        def timer(layer: LayerSpec, c_in: int, c_out: int) -> float:
            return ortb.time_single(layer_model_bytes(layer, c_in, c_out),
                                    layer_input_shape(layer, c_in), threads=threads, **timing)

        return timer, f"onnxruntime {ortb.version()}", cpu_name()

    from . import tensorrt_backend as trtb

    trt = trtb.require_tensorrt()
    layer_timer = trtb.LayerTimer(trt, warmup=max(timing["warmup"], 10),
                                  min_runs=max(timing["min_runs"], 20))

    def timer(layer: LayerSpec, c_in: int, c_out: int) -> float:
        return layer_timer.time(layer_model_bytes(layer, c_in, c_out),
                                layer_input_shape(layer, c_in),
                                precision="fp16" if layer.dtype == "float16" else "fp32")

    return timer, f"tensorrt {trt.__version__}", trtb.gpu_name()


class _DuplicateKey(Exception):
    pass


def _no_duplicate_keys(pairs: list) -> dict:
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


def _read_json(path, what: str, fmt: str) -> dict:
    """A JSON object of format ``fmt`` (a table or a cache), or a DeployError naming ``path``."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise DeployError(f"{path!r} is a folder, not {what}; pass a file path")
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:  # (break151 F6: a missing file was a bare FileNotFoundError)
        raise DeployError(f"{path!r}: cannot read {what} ({e.strerror or e}); check the path") from None
    with f:
        try:
            data = json.load(f, object_pairs_hook=_no_duplicate_keys)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DeployError(f"{path!r} is not {what} (not valid JSON: {e}); pass another "
                              "path") from None  # (break187 F4: "delete it" of a user's file)
        except _DuplicateKey as e:  # (break164 F7: the last of two edited values was read)
            raise DeployError(f"{path!r} has the key {e.args[0]!r} twice (a hand edit?); keep "
                              "one") from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        found = (f"format {data.get('format')!r}" if isinstance(data, dict)
                 else f"a JSON {type(data).__name__}")
        raise DeployError(f"{path!r} is not {what} ({found}, expected format {fmt!r}); pass "
                          "another path")
    return data


def _format_of(path) -> str | None:
    """The ``format`` a JSON file of fxprune's declares (None: a folder, unreadable, not one)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):  # (UnicodeDecodeError and JSONDecodeError are ValueErrors)
        return None
    return data.get("format") if isinstance(data, dict) else None


def read_cache_file(path) -> tuple[dict, dict, dict]:
    """A cache's points (context -> point_key -> {"c_in,c_out": ms}), its points timed under
    load (context -> point_key -> ["c_in,c_out", ...]) and any other top-level keys (a later
    version's, kept when the file is rewritten); all empty when there is no file."""
    if path is None or not os.path.exists(path):
        return {}, {}, {}
    doc = _read_json(path, "a latency cache", _CACHE_FORMAT)
    if doc.get("version", 1) != 1:  # (break74: version 99 was read, and rewritten, as 1)
        raise DeployError(f"{os.fspath(path)!r} is a latency cache of version "
                          f"{doc.get('version')!r}, not this fxprune's 1 (a later fxprune wrote "
                          "it, or it was edited); pass another cache path")
    marks = doc.get("under_load", {})
    if not (isinstance(marks, dict) and all(
            isinstance(ctx, dict) and all(isinstance(v, list) and all(_is_point(p) for p in v)
                                          for v in ctx.values())
            for ctx in marks.values())):  # (break74 F4: [16, 32] failed the write after timing)
        raise DeployError(f"{os.fspath(path)!r} has a malformed 'under_load' entry (context -> "
                          "point key -> ['c_in,c_out', ...]); delete that key to use the cache")
    known = ("format", "version", "contexts", "under_load")
    extra = {k: v for k, v in doc.items() if k not in known}
    contexts = doc.get("contexts")
    try:
        for points in contexts.values():
            for grid in points.values():
                for pt, ms in grid.items():
                    _parse_point(pt), _milliseconds(ms)
    except (AttributeError, TypeError, ValueError) as exc:
        raise DeployError(f"{os.fspath(path)!r} has malformed 'contexts' ({type(exc).__name__}: "
                          f"{exc}); delete the cache file to time the layers again") from None
    return contexts, marks, extra


def _atomic_write_json(path, data) -> None:
    """Write through a temporary file and a rename, so a crash never leaves half a file."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=1, sort_keys=True),
                                                        encoding="utf-8"))


__all__ = ["LatencyTable", "UnmeasuredLayerError", "grid_counts", "grid_points", "layer_grid"]
