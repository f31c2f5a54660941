"""Small pieces shared by the deploy backends: the error type, device names, timing statistics."""
from __future__ import annotations

import errno
import math
import numbers
import operator
import os
import platform
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

from fxprune.errors import (ArgumentError, ArgumentTypeError, FxPruneError,  # noqa: F401
                            first_line, out_of_memory)  # (deploy's modules import these here)

#: a file system that takes no more writes (full, over quota, read-only, or no file this
#: large): no exporter's or model's failure, said with the way out (break206 F7, break209 F7)
NO_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)


class DeployError(FxPruneError, RuntimeError):
    """A deploy step failed for a reason the user can act on (the message says how)."""


class DeployArgumentError(DeployError, ArgumentError):
    """An argument of a deploy function out of its range: a :class:`DeployError` (what
    ``fxprune deploy`` reports, exit 2) and an :class:`~fxprune.errors.ArgumentError` (a
    ValueError), as the same argument of ``fxprune.deploy.latency_cost`` raises (break199 F5)."""


class DeployArgumentTypeError(DeployError, ArgumentTypeError):
    """An argument of a deploy function of the wrong kind: a :class:`DeployError` and an
    :class:`~fxprune.errors.ArgumentTypeError` (a TypeError)."""


def check_tolerance(name: str, value) -> None:
    """DeployError unless ``value`` is None or a finite number >= 0 (an ``atol``/``rtol``)."""
    try:
        bad = value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)
                                     or not math.isfinite(value) or value < 0)
    except OverflowError:  # an int too large for a float
        bad = True
    if bad:
        raise DeployError(f"{name} must be a finite number >= 0, got {value!r}")


def file_in_the_way(path) -> str | None:
    """The nearest existing folder above ``path`` (a file to write) when that is a file, not
    a folder; None when it is a folder (missing folders between are created on write).
    ``path`` itself is not looked at: for a folder to create, pass a file path inside it."""
    here = Path(os.path.abspath(os.fspath(path)))
    for parent in here.parents:
        if parent.exists():
            return None if parent.is_dir() else str(parent)
    return None


def usable_cores() -> int:
    """The CPU cores this process may run on: its affinity (taskset, a container's or Slurm's
    cpuset) where the OS keeps one, else every core."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_load() -> tuple[float | None, int]:
    """(1-minute load average or None where the OS keeps none, usable CPU cores)."""
    cores = usable_cores()
    try:
        return os.getloadavg()[0], cores
    except (AttributeError, OSError):  # Windows
        return None, cores


def load_said(loads) -> str:
    """The readings of :func:`cpu_load` around a timing, as a warning says them (under load,
    so the first and last readings are numbers)."""
    return (f"load average {loads[0][0]:.1f} before, {loads[-1][0]:.1f} after, on "
            f"{loads[0][1]} cores")


def cpu_busy(loads, threads: int) -> bool:
    """More runnable threads than cores (or than the timing's own threads, where it asked for
    more than there are cores), by over half a core, at any reading: time slicing by others
    distorts the timings. The margin spares brief background work a false alarm."""
    return any(load is not None and load > max(cores, threads) + 0.5 for load, cores in loads)


def cpu_name() -> str:
    """The CPU's model name as /proc/cpuinfo reports it, with its widest vector extension
    ("AMD EPYC (AVX2)"): CPUs sold under one name differ in it (EPYC Zen 2/3: AVX2, Zen 4:
    AVX-512), and with it in their kernels, their timings and their float rounding, so latency
    caches and results must not mistake one for the other. Falls back to ``platform``."""
    name, flags = None, set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key = line.split(":", 1)[0].strip().lower()
                if key == "model name" and name is None:
                    name = line.split(":", 1)[1].strip()
                elif key == "flags" and not flags:
                    flags = set(line.split(":", 1)[1].split())
                if name is not None and flags:
                    break
    except OSError:
        pass
    name = name or platform.processor() or platform.machine() or "unknown CPU"
    isa = next((label for flag, label in _VECTOR_ISAS if flag in flags), None)
    return f"{name} ({isa})" if isa else name


# /proc/cpuinfo flag -> label, widest first
_VECTOR_ISAS = (("amx_tile", "AMX"), ("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"),
                ("asimd", "NEON"))


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]) without needing numpy."""
    if not values:
        raise ValueError("percentile of no values")
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def latency_stats(times_ms: Sequence[float]) -> dict:
    """Median, p90, mean and min of per-inference times in ms (the figures reports carry)."""
    return {
        "median": percentile(times_ms, 50),
        "p90": percentile(times_ms, 90),
        "mean": sum(times_ms) / len(times_ms),
        "min": min(times_ms),
        "runs": len(times_ms),
    }


def silent(line: str) -> None:
    """A ``log=`` that says nothing (``log=None`` in deploy's functions)."""
    return None


def parse_shape(text: str | Sequence[int]) -> tuple[int, ...]:
    """``"1,3,224,224"`` (or a sequence) -> ``(1, 3, 224, 224)``, every dim a positive int."""
    if isinstance(text, str):
        # (break179 F8: "1,1,28,28,x" and "1,,1,28,28" were read as 1,1,28,28: every part counts)
        parts = text.replace("x", ",").split(",")
        try:
            if not all(p.strip() for p in parts):
                raise ValueError
            shape = tuple(int(p) for p in parts)
        except ValueError:
            raise DeployError(f"input shape {text!r} is not a comma-separated list of integers "
                              "(expected e.g. 1,3,224,224)") from None
    elif (hasattr(text, "shape") and hasattr(text, "dtype") and len(text.shape) == 1
          and not getattr(text.dtype, "is_floating_point", False)
          and str(text.dtype).rpartition(".")[2].startswith(("int", "uint"))):
        return parse_shape(text.tolist())  # an array of dims (break179 F8: "pass its .shape")
    elif hasattr(text, "shape") and hasattr(text, "dtype"):  # a tensor or array, not its shape
        raise DeployError(f"input shape must be a shape, not a {type(text).__name__} of shape "
                          f"{tuple(text.shape)}: pass its .shape")
    elif not hasattr(text, "__iter__"):  # (break111 F16: "'int' object is not iterable")
        raise DeployError(f"input shape {text!r} is not a shape: give every dim, batch first "
                          "(e.g. (1, 3, 224, 224) or '1,3,224,224')")
    else:
        items = tuple(text)
        try:  # ints, numpy ints, a torch.Size: not 16.7 (it was cut to 16 silently)
            if any(isinstance(d, bool) for d in items):
                raise TypeError
            shape = tuple(operator.index(d) for d in items)
        except TypeError:
            raise DeployError(f"input shape {items} must hold integers (e.g. "
                              "(1, 3, 224, 224))") from None
    if len(shape) < 2 or any(d <= 0 for d in shape):
        raise DeployError(f"input shape {shape} must have a batch dim and at least one more, "
                          "all positive (e.g. 1,3,224,224)")
    return shape


def time_interleaved_wall(runs: Mapping[str, Callable[[], object]], iters: int, warmup: int,
                     progress: bool = True, desc: str = "timing") -> dict[str, list[float]]:
    """Call each function ``warmup`` times, then ``iters`` rounds of A, B, A, B, ...

    Interleaving makes machine noise (other processes, frequency changes) hit every model
    alike, so their medians compare fairly. Returns per-call wall times in ms.
    """
    if iters < 1 or warmup < 0:
        raise DeployError(f"need iters >= 1 and warmup >= 0 (got iters={iters}, warmup={warmup})")
    for _ in range(warmup):
        for fn in runs.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    rounds = range(iters)
    if progress:
        from tqdm import tqdm

        rounds = tqdm(rounds, desc=desc, unit="round", leave=False)
    for _ in rounds:
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def prepared_inside(module) -> str | None:
    """Where ``module`` holds a model :func:`fxprune.prepare` returned: ``"the model"`` (it
    is one), ``"`path`"`` (a submodule, in a wrapper or a Sequential: break124 #8), or None."""
    from fxprune.groups import is_prepared

    for path, m in module.named_modules():
        if is_prepared(m):
            return f"`{path}`" if path else "the model"
    return None
