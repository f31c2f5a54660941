"""How long a torchvision resnet50 latency table takes (ONNX Runtime, batch 1, 224x224, step 32).

    python benchmarks/bench_latency_table.py [--step 32] [--threads 2] [--check-model]

Measures from scratch (a fresh cache in a temporary folder), then runs ``measure`` a second
time on that cache to show it times nothing. Writes benchmarks/results/latency_table.json and
.md and prints the figures. ``--check-model`` also times the whole exported model and compares
it with the sum of the table's per-layer latencies at dense widths (BN/ReLU/add/pooling are
outside the table, so the sum is expected to be somewhat lower).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from fxprune.cost import LayerSpec
from fxprune.deploy import LatencyTable
from fxprune.deploy.common import cpu_name

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import at_least, changed_options, results_stem, run_script  # noqa: E402



def _ints(v) -> tuple[int, ...]:
    if isinstance(v, str):
        raise ValueError(f"string padding {v!r} is not supported by this helper")
    return tuple(int(x) for x in v)


def hooked_layer_specs(model: nn.Module, input_shape) -> list[LayerSpec]:
    """LayerSpecs of every Conv2d/Linear, with shapes recorded by forward hooks (no torch.fx)."""
    specs: list[LayerSpec] = []
    handles = []

    def hook(name):
        def record(m, inputs, output):
            dtype = str(m.weight.dtype).removeprefix("torch.")
            common = dict(name=name, input_shape=tuple(inputs[0].shape),
                          output_shape=tuple(output.shape), bias=m.bias is not None, dtype=dtype)
            if isinstance(m, nn.Conv2d):
                specs.append(LayerSpec(kind="conv", in_channels=m.in_channels,
                                       out_channels=m.out_channels,
                                       kernel_size=_ints(m.kernel_size),
                                       stride=_ints(m.stride), padding=_ints(m.padding),
                                       dilation=_ints(m.dilation), groups=m.groups, **common))
            else:
                specs.append(LayerSpec(kind="linear", in_channels=m.in_features,
                                       out_channels=m.out_features, **common))
        return record

    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            handles.append(m.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(*input_shape))
    finally:
        for h in handles:
            h.remove()
    return specs


def half_width_sum(table: LatencyTable, layers: list[LayerSpec]) -> tuple[float, list[str]]:
    """The table's summed latency with half of every width (except the image's 3 channels and
    the 1000 classes), and the layers whose half width lies below their grid's narrowest point
    on an axis: ``layer_cost`` clamps there, so those layers are priced wider than half (at a
    coarse ``--step``, at their dense width) and the sum is then an upper bound."""
    total, clamped = 0.0, []
    for l in layers:
        c_in = l.in_channels if l.in_channels == 3 else l.in_channels // 2
        c_out = l.out_channels if l.kind == "linear" else l.out_channels // 2
        cins, couts = table.grid(l)
        if c_in < cins[0] or c_out < couts[0]:
            clamped.append(l.name)
        total += table.layer_cost(l, c_in, c_out)
    return total, clamped


def _whole_model_ms(model: nn.Module, shape, threads: int, folder: str) -> float:
    from fxprune.deploy.onnx_export import export_onnx
    from fxprune.deploy.onnxruntime_backend import time_onnx_models

    path = os.path.join(folder, "resnet50.onnx")
    export_onnx(model, shape, path)
    times = time_onnx_models({"m": path}, shape, threads=threads, iters=30, warmup=5,
                             progress=False)["m"]
    return sorted(times)[len(times) // 2]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--step", type=at_least(1), default=32)
    ap.add_argument("--threads", type=at_least(1), default=2)
    ap.add_argument("--batch", type=at_least(1), default=1)
    ap.add_argument("--check-model", action="store_true")
    ap.add_argument("--save-table", default=None, help="also save the table JSON here")
    ap.add_argument("--out", default=None,
                    help="results path without extension (.json and .md are written; default "
                         "benchmarks/results/latency_table)")
    args = ap.parse_args(argv)
    args.out = str(results_stem("latency_table", args.out,
                                changed=changed_options(ap, args, ignore=("save_table",)),
                                keys=("model", "input_shape", "backend", "grid_points_timed",
                                      "table_sum_dense_ms")))

    if args.save_table and os.path.abspath(args.save_table) == os.path.abspath(f"{args.out}.json"):
        ap.error("--save-table is the results file's path; give it another")  # (break57 #11)
    if args.save_table and os.path.exists(args.save_table):
        # replaced only when it is a saved table (break56 #6: a user's JSON was replaced)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # (a table of another machine is still a table)
                LatencyTable.load(args.save_table)
        except Exception:  # noqa: BLE001 - whatever it is, it is not a table this can replace
            ap.error(f"--save-table {args.save_table} exists and is not a saved latency table; "
                     "give another path")

    from torchvision.models import resnet50

    shape = (args.batch, 3, 224, 224)
    model = resnet50()
    layers = hooked_layer_specs(model, shape)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        cache = os.path.join(tmp, "cache.json")
        t0 = time.perf_counter()
        table = LatencyTable.measure(layers, step=args.step, threads=args.threads, cache=cache)
        first_s = time.perf_counter() - t0
        load_after = os.getloadavg()[0]
        t0 = time.perf_counter()
        again = LatencyTable.measure(layers, step=args.step, threads=args.threads, cache=cache,
                                     progress=False)
        second_s = time.perf_counter() - t0
        if args.save_table:
            table.save(args.save_table)
        dense_sum = sum(table.layer_cost(l, l.in_channels, l.out_channels) for l in layers)
        half_sum, clamped = half_width_sum(table, layers)
        whole = _whole_model_ms(model, shape, args.threads, tmp) if args.check_model else None

    result = {
        "model": "torchvision resnet50 (random init)",
        "input_shape": list(shape),
        "backend": table.backend,
        "runtime": table.runtime_version,
        "device": cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "step": args.step,
        "layers": len(layers),
        "distinct_layers": len(table),
        "grid_points_timed": table.stats["measured"],
        # the points to distrust: timed while other processes shared the CPU (break80 F8)
        "grid_points_timed_under_load": table.stats["under_load"],
        "timing_passes_per_point": 2,
        "measure_seconds": round(first_s, 1),
        "ms_per_point": round(1000 * first_s / max(table.stats["measured"], 1), 2),
        "load_average_1min_before_after": [round(load_before, 2), round(load_after, 2)],
        "second_measure_seconds_with_cache": round(second_s, 2),
        "second_measure_points_timed": again.stats["measured"],
        "table_sum_dense_ms": round(dense_sum, 3),
        "table_sum_half_width_ms": round(half_sum, 3),
        "half_width_layers_below_grid": len(clamped),
        "table_sum_half_width_note": (
            "a half-width prediction: every half width is on or inside its layer's grid"
            if not clamped else
            f"NOT a half-width prediction: {len(clamped)} of {len(layers)} layers' half widths "
            f"lie below the --step {args.step} grid and are priced at its narrowest point "
            "(clamped; at a coarse step, the dense width), so the sum is an upper bound; "
            "use a finer --step"),
        "whole_model_median_ms": None if whole is None else round(whole, 3),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    md = ["# resnet50 latency table timing", "", "| figure | value |", "| --- | --- |"]
    md += [f"| {k} | {v} |" for k, v in result.items()]
    with open(args.out + ".md", "w", encoding="utf-8") as f:
        f.write("\n".join(md) + "\n")
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(run_script(main))
