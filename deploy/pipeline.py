"""``fxprune.deploy.deploy``: export, verify, build and time a model (and a dense one to compare).

Files written to ``out_dir``: ``model.onnx`` (and ``dense.onnx``), ``model.engine`` (and
``dense.engine``) with the TensorRT backend, and ``report.json``. The ``torch`` backend times the
PyTorch modules themselves (CUDA graphs + cuDNN on a GPU, eager on the CPU; see
:mod:`fxprune.deploy.torch_backend`); it still exports and checks the ONNX file so every
backend's report has the same fields.
"""
from __future__ import annotations

import os
from typing import Callable

import torch
from torch import nn

from . import onnxruntime_backend as ortb
from . import tensorrt_backend as trtb
from . import torch_backend as tb
from .common import DeployError, cpu_name
from .model_io import count_params, load_model, resolve_input_shape
from .onnx_export import DEFAULT_OPSET, example_input, export_onnx, flat_outputs, verify_onnx
from .report import build_report, format_table, model_entry, write_report

BACKENDS = ("auto", "tensorrt", "torch", "onnxruntime")
PRECISIONS = ("fp32", "fp16", "bf16")


def choose_backend(backend: str, log: Callable[[str], None] = print) -> str:
    """Resolve ``auto``: TensorRT when it imports and a CUDA device exists, else PyTorch on the
    CUDA device, else ONNX Runtime on the CPU; says why."""
    if backend not in BACKENDS:
        raise DeployError(f"backend {backend!r} is not one of {BACKENDS}")
    if backend == "tensorrt":
        trtb.require_tensorrt()
    if backend != "auto":
        return backend
    ok, why = trtb.tensorrt_status()
    if ok:
        log(f"backend auto: using TensorRT {trtb.version()} on {trtb.gpu_name()}")
        return "tensorrt"
    if torch.cuda.is_available():
        log(f"backend auto: using PyTorch (CUDA graphs, cuDNN) on {torch.cuda.get_device_name()} "
            f"(TensorRT not usable: {why})")
        return "torch"
    log(f"backend auto: using ONNX Runtime on the CPU ({why}; no CUDA device for the torch "
        "backend either)")
    return "onnxruntime"


def deploy(model: nn.Module | str | os.PathLike, out_dir: str | os.PathLike, *,
           backend: str = "auto", precision: str = "fp32", input_shape=None,
           batch: int | None = None, compare: nn.Module | str | os.PathLike | None = None,
           threads: int = 2, iters: int = 100, warmup: int = 10, opset: int = DEFAULT_OPSET,
           max_batch: int | None = None, workspace: int = trtb.DEFAULT_WORKSPACE,
           atol: float | None = None, rtol: float | None = None, progress: bool = True,
           device: str | None = None, log: Callable[[str], None] = print) -> dict:
    """Deploy ``model`` (a module or a ``torch.save`` file) and return the report dict.

    ``input_shape`` is batch first ("1,3,224,224" or a tuple); without it the module's
    ``fxprune_input_shape`` attribute is used (see :mod:`fxprune.deploy.model_io`); ``batch``
    replaces its first dim. ``compare`` is the dense model, timed interleaved with ``model``.
    ``max_batch`` widens the TensorRT engine's batch range (default: the batch itself).
    ``atol``/``rtol`` bound the ONNX-vs-PyTorch check. ``device`` is where the torch backend
    times ("cuda", "cpu"; default: CUDA when there is one). ``precision="bf16"`` is for the
    torch backend only (its ONNX file is then exported and checked in fp32). Nothing passed in
    is modified.
    """
    if precision not in PRECISIONS:
        raise DeployError(f"precision {precision!r} is not one of {PRECISIONS}")
    backend = choose_backend(backend, log)
    if precision == "bf16" and backend != "torch":
        raise DeployError(f"precision bf16 is timed by the torch backend only, not {backend}; "
                          "pass --backend torch or --precision fp16")
    module, label = load_model(model)
    shape = resolve_input_shape(module, input_shape, batch)
    models = {"model": (module, label)}
    if compare is not None:
        models["dense"] = load_model(compare)
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)

    trt = trtb.require_tensorrt() if backend == "tensorrt" else None
    onnx_precision = trtb.onnx_precision_for(trt, precision) if trt else precision
    if onnx_precision == "bf16":
        onnx_precision = "fp32"
    onnx_infos = {}
    for name, (mod, lbl) in models.items():
        path = os.path.join(out_dir, f"{name}.onnx")
        log(f"[{name}] exporting {lbl} to {path} ({onnx_precision}, input {tuple(shape)})")
        info = export_onnx(mod, shape, path, precision=onnx_precision, opset=opset, log=log)
        info["max_abs_diff"] = verify_onnx(path, mod, shape, precision=onnx_precision,
                                           atol=atol, rtol=rtol, threads=threads)
        log(f"[{name}] ONNX Runtime matches PyTorch (max abs diff {info['max_abs_diff']:.2e})")
        onnx_infos[name] = info

    engines, trt_diffs = {}, {}
    if backend == "onnxruntime":
        log(f"timing on ONNX Runtime ({threads} threads, {warmup} warm-up + {iters} runs"
            f"{', interleaved' if len(models) > 1 else ''})")
        times = ortb.time_onnx_models({n: i["path"] for n, i in onnx_infos.items()}, shape,
                                      threads=threads, iters=iters, warmup=warmup,
                                      progress=progress)
        device, run_threads = cpu_name(), threads
    elif backend == "torch":
        where = tb.resolve_device(device)
        log(f"timing with PyTorch on {where} ({precision}, {warmup} warm-up + {iters} runs"
            f"{', CUDA graphs' if where.type == 'cuda' else f', {threads} threads'}"
            f"{', interleaved' if len(models) > 1 else ''})")
        times = tb.time_models({n: mod for n, (mod, _) in models.items()}, shape, device=where,
                               precision=precision, threads=threads, iters=iters,
                               warmup=warmup, progress=progress)
        device, run_threads = tb.device_name(where), (threads if where.type == "cpu" else None)
    else:
        runners = {}
        for name, (mod, _) in models.items():
            engines[name] = os.path.join(out_dir, f"{name}.engine")
            log(f"[{name}] building TensorRT engine {engines[name]} ({precision}; can take "
                "minutes)")
            trtb.build_engine(onnx_infos[name]["path"], engines[name], shape, precision=precision,
                              max_batch=max_batch, workspace=workspace)
            with open(engines[name], "rb") as f:
                runners[name] = trtb.EngineRunner(trt, f.read(), shape)
            trt_diffs[name] = _backend_diff(runners[name], mod, shape)
        log(f"timing on TensorRT ({warmup} warm-up + {iters} runs, GPU time per inference)")
        times = trtb.time_runners(runners, iters=iters, warmup=warmup, progress=progress)
        device, run_threads = trtb.gpu_name(), None

    entries = {
        name: model_entry(label=lbl, params=count_params(mod), times_ms=times[name],
                          batch=shape[0], onnx_info=onnx_infos[name], engine=engines.get(name),
                          backend_max_abs_diff=trt_diffs.get(name))
        for name, (mod, lbl) in models.items()
    }
    versions = {"torch": torch.__version__, "onnxruntime": ortb.version(),
                "tensorrt": trt.__version__ if trt else trtb.version(),
                "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None}
    report = build_report(backend=backend, device=device, precision=precision, input_shape=shape,
                          threads=run_threads, iters=iters, warmup=warmup, versions=versions,
                          pruned=entries["model"], dense=entries.get("dense"))
    path = write_report(report, out_dir)
    log(format_table(report))
    log(f"report written to {path}")
    return report


def _backend_diff(runner, module: nn.Module, shape) -> float:
    """max |TensorRT - PyTorch fp32| on one random input (reported, not enforced: TF32 and fp16
    kernels legitimately move results by more than the ONNX check's tolerance)."""
    from .onnx_export import eval_copy

    x = example_input(shape, "fp32", seed=1)
    with torch.no_grad():
        ref = flat_outputs(eval_copy(module, "fp32")(x))
    got = runner.infer(x)
    if len(got) != len(ref):
        raise DeployError(f"the TensorRT engine has {len(got)} outputs, PyTorch gives {len(ref)}")
    return max(float((g - r).abs().max()) for g, r in zip(got, ref, strict=True))
