"""The deploy report: one dict (written as report.json) and the same as a readable table."""
from __future__ import annotations

import json
import os
from pathlib import Path

from .common import DeployError, latency_stats


def model_entry(*, label: str, params: int, times_ms, batch: int, onnx_info: dict,
                engine: str | None = None, backend_max_abs_diff: float | None = None,
                flops: int | None = None) -> dict:
    """One model's figures: latency stats, throughput, size, export facts; ``flops``: of one
    forward at the timed input shape, batch included (2 per MAC, torch.utils.flop_counter's
    count), where the model is a module (None: an ONNX file, not counted)."""
    stats = latency_stats(times_ms)
    entry = {
        "model": label,
        "params": int(params),
        "latency_ms": stats,
        "throughput_per_s": batch * 1000.0 / stats["median"] if stats["median"] > 0 else None,
        "onnx": onnx_info,
        "onnx_max_abs_diff": onnx_info.get("max_abs_diff"),
    }
    if flops is not None:
        entry["flops"] = int(flops)
    if engine is not None:
        entry["engine"] = engine
    if backend_max_abs_diff is not None:
        entry["tensorrt_max_abs_diff"] = backend_max_abs_diff
    return entry


def build_report(*, backend: str, device: str, precision: str, input_shape, threads, iters: int,
                 warmup: int, versions: dict, pruned: dict, dense: dict | None = None,
                 params_counted: str = "module parameters") -> dict:
    report = {
        "backend": backend,
        "device": device,
        "precision": precision,
        "batch": int(input_shape[0]),
        "input_shape": [int(d) for d in input_shape],
        "threads": threads,
        "iters": iters,
        "warmup": warmup,
        **{f"{k}_version": v for k, v in versions.items()},
        "params_counted": params_counted,
        **pruned,
    }
    if dense is not None:
        report["dense"] = dense
        # Medians of interleaved runs: both models saw the same machine noise.
        report["speedup"] = dense["latency_ms"]["median"] / pruned["latency_ms"]["median"]
        # pruned / dense, as fxprune train's results.json has it (break56 #11: dense / pruned
        # here read as "75% more parameters" beside the run's 0.57)
        report["params_ratio"] = pruned["params"] / dense["params"] if dense["params"] else None
        if pruned.get("flops") and dense.get("flops"):  # (break205 F8: the figure compression
            # users compare first was in fxprune train's results only)
            report["flops_ratio"] = pruned["flops"] / dense["flops"]
    return report


def write_report(report: dict, out_dir: str) -> str:
    """``report`` as ``out_dir/report.json``, through a temporary file renamed over it: an
    interruption or a full disk leaves no cut report (break206 F1)."""
    from fxprune.run_io import atomic_write_text

    path = os.path.join(out_dir, "report.json")
    atomic_write_text(Path(path), json.dumps(report, indent=2) + "\n")
    return path


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_table(report: dict) -> str:
    """Pruned vs dense side by side (just the model when there is no dense one).

    ``report`` is the dict :func:`deploy` returns (or its ``report.json``); another raises
    :class:`DeployError`.
    """
    needed = ("backend", "device", "precision", "input_shape", "iters", "params", "latency_ms")
    missing = ([k for k in needed if k not in report] if isinstance(report, dict) else None)
    if missing is None or missing:
        what = (f"a dict without {', '.join(map(repr, missing))}" if missing
                else type(report).__name__)
        raise DeployError(f"format_table takes the report fxprune.deploy.deploy returns (or its "
                          f"report.json, loaded), got {what}")
    dense = report.get("dense")
    cols = [("pruned", report), ("dense", dense)] if dense else [("model", report)]
    rows = [
        ("params" if report.get("params_counted", "module parameters") == "module parameters"
         else "params (ONNX)", lambda e: f"{e['params']:,}"),
        *([(f"FLOPs (batch {report['input_shape'][0]})", lambda e: _fmt(e.get("flops"), ","))]
          if report.get("flops") is not None else []),
        ("latency median (ms)", lambda e: _fmt(e["latency_ms"]["median"], ".3f")),
        ("latency p90 (ms)", lambda e: _fmt(e["latency_ms"]["p90"], ".3f")),
        ("throughput (/s)", lambda e: _fmt(e["throughput_per_s"], ".1f")),
        ("ONNX max abs diff", lambda e: _fmt(e.get("onnx_max_abs_diff"), ".2e")),
    ]
    if "tensorrt_max_abs_diff" in report:
        rows.append(("TensorRT max abs diff",
                     lambda e: _fmt(e.get("tensorrt_max_abs_diff"), ".2e")))
    threads = f", {report['threads']} threads" if report.get("threads") else ""
    lines = [f"{report['backend']} on {report['device']}: {report['precision']}, "
             f"input {'x'.join(map(str, report['input_shape']))}{threads}, "
             f"{report['iters']} timed runs"]
    width = max(len(r[0]) for r in rows) + 2
    cells = [[fn(e) for _, e in cols] for _, fn in rows]
    colw = max(12, *(len(c) for row in cells for c in row)) + 2
    lines.append(" " * width + "".join(name.rjust(colw) for name, _ in cols))
    for (label, _), row in zip(rows, cells, strict=True):
        lines.append(label.ljust(width) + "".join(c.rjust(colw) for c in row))
    if dense:
        lines.append(f"speedup (dense median / pruned median): {report['speedup']:.2f}x"
                     + (f" (--compare is {report['compare_is_model']} as MODEL: timing noise)"
                        if report.get("compare_is_model") else ""))
    if report.get("timed_under_load"):
        load = report["load_average"]
        lines.append(f"timed under load (load average {load['before']:.1f} -> {load['after']:.1f} "
                     f"on {load['cores']} cores): time again on an idle machine")
    return "\n".join(lines)
