"""Deployment: ONNX export, ONNX Runtime / TensorRT / PyTorch timing, reports, latency tables.

The names below load on first use, so ``import fxprune.deploy`` stays cheap and never imports
``tensorrt`` (which may not be installed).

- ``deploy(model, out_dir, backend="auto", precision="fp32", input_shape=None, batch=None,
  compare=None, threads=2, iters=100, warmup=10, trust_model_file=False, ...) -> dict`` (the
  report; pickled .pt files load only with trust_model_file=True, ONNX files always)
- ``LatencyTable.measure(layers_or_prepared_model, backend="onnxruntime", step=8, threads=2,
  cache=None, progress=True, batch=None, precision=None, ...)``: a ``CostModel`` in ms;
  ``backend="torch"`` times with PyTorch (CUDA graphs + cuDNN on a GPU, eager on the CPU)
- ``latency_cost(prepared, kind="latency", channel_step=8, cache=None, progress=True, log=print)``: the
  cost model a latency-priced method takes (``"latency"``: a table; ``"latency+fixed"``: the
  table calibrated), measured once, by rank 0 under torch.distributed; what ``fxprune train``
  does for ``prune.cost: latency``
- ``calibrate_cost(cost_model, prepared, keep=0.5, ...)``: the cost model plus the constant it
  misses on that model (unpriced ops, per-call overhead), fitted from the measured latency of
  the dense model and a uniformly pruned one; a target then aims at the measured fraction
- ``export_onnx``, ``verify_onnx``, ``load_model``, ``resolve_input_shape``, ``DeployError``
- ``choose_backend(backend)`` (what ``"auto"`` resolves to here), ``tensorrt_status()``
  (``(usable, why not)``), ``format_table(report)`` (pruned vs dense as text),
  ``INPUT_SHAPE_ATTR`` (``"fxprune_input_shape"``, the attribute a saved model's input shape is
  read from), ``UnmeasuredLayerError`` (a table asked about a layer it never timed)
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "deploy": "pipeline",
    "choose_backend": "pipeline",
    "LatencyTable": "latency_table",
    "UnmeasuredLayerError": "latency_table",
    "calibrate_cost": "calibrate",
    "latency_cost": "measured_cost",
    "export_onnx": "onnx_export",
    "verify_onnx": "onnx_export",
    "load_model": "model_io",
    "resolve_input_shape": "model_io",
    "INPUT_SHAPE_ATTR": "model_io",
    "DeployError": "common",
    "format_table": "report",
    "tensorrt_status": "tensorrt_backend",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # later look-ups skip this hook
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
