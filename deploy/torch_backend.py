"""Timing layers and models with PyTorch itself: eager on the CPU, cuDNN + CUDA graphs on a GPU.

The model runs where it will be trained or served with PyTorch, so this backend needs nothing
but torch. On CUDA:

- ``torch.backends.cudnn.benchmark`` is on and every model is run a few times first on a side
  stream, so cuDNN has picked its algorithm for the exact shapes before anything is timed;
- the forward is captured once in a ``torch.cuda.CUDAGraph`` and the graph is replayed: the CPU
  cost of launching kernels (tens of microseconds per layer in eager mode, more than a small
  layer's kernel at batch 1) does not hide the kernels' own time;
- time comes from ``torch.cuda.Event`` pairs around ``inner`` replays (chosen so one sample
  spans about ``sample_ms``), divided by ``inner``: milliseconds per forward;
- ``precision`` is fp32, fp16 or bf16 (weights and input cast), activations of 4-D inputs are
  ``channels_last`` (cuDNN's tensor-core kernels are NHWC) unless asked otherwise; fp32 runs
  with TF32 off so fp32 means fp32.

On the CPU: eager forwards under ``torch.inference_mode`` with a fixed thread count, timed with
``time.perf_counter`` after warm-up. Several models are always timed interleaved (A, B, A, B),
so machine noise hits them alike; compare medians.

SMCP's published latency tables were cuDNN timings at batch 256 (see notes/reference.md):
``LatencyTable.measure(pm, backend="torch", precision="fp16", batch=256)`` measures that
setting on the GPU at hand.
"""
from __future__ import annotations

import contextlib
import math
import statistics
from typing import Callable, Mapping

import torch
from torch import nn

from fxprune.cost import LayerSpec, torch_pad

from .common import DeployError, cpu_name, first_line, time_interleaved_wall
from .layer_onnx import check_groups, check_timed, layer_input_shape

BACKEND = "torch"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_SPEC_DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


# ----------------------------------------------------------------------------- the device
def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/"auto": the current CUDA device when one exists, else the CPU."""
    if device is None or device == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() \
            else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeployError(f"the torch backend was asked for {device} but CUDA is not available "
                              f"(torch {torch.__version__}); use device 'cpu' or "
                              "--backend onnxruntime")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    elif device.type != "cpu":
        raise DeployError(f"the torch backend times on 'cpu' or 'cuda', not {device.type!r}")
    return device


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def runtime_version(device: torch.device, *, cuda_graphs: bool = True,
                    channels_last: bool = True) -> str:
    """What, apart from the device and the layer, decides a timing (a latency-cache key part)."""
    text = f"torch {torch.__version__}"
    if device.type == "cuda":
        text += (f" cuda {torch.version.cuda} cudnn {torch.backends.cudnn.version()}"
                 f"{' graphs' if cuda_graphs else ' eager'}"
                 f"{' channels_last' if channels_last else ''}")
    else:
        text += " cpu eager"
    return text


def versions(device: torch.device) -> dict:
    return {"torch": torch.__version__,
            "cuda": torch.version.cuda if device.type == "cuda" else None,
            "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None}


@contextlib.contextmanager
def timing_settings(device: torch.device, threads: int | None):
    """On CUDA: ``device`` the current device, cuDNN autotuning on and TF32 off (through the TF32
    API the process uses: :func:`fxprune.compare.ieee_float32`); on the CPU a fixed
    thread count; restored after.

    The current device matters: CUDA events record on, and a graph captures from, the current
    device's stream, so timing ``cuda:1`` while ``cuda:0`` was current captured an empty graph
    and timed the host (review175 F1)."""
    from fxprune.compare import ieee_float32

    saved = (torch.backends.cudnn.benchmark, torch.get_num_threads())
    try:
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        elif threads:
            torch.set_num_threads(threads)
        with contextlib.ExitStack() as cuda:
            if device.type == "cuda":
                cuda.enter_context(torch.cuda.device(device))
                cuda.enter_context(ieee_float32())
            yield
    finally:
        torch.backends.cudnn.benchmark = saved[0]
        torch.set_num_threads(saved[1])


# ------------------------------------------------------------------------------- running
def prepare_module(module: nn.Module, input_shape, device: torch.device, precision: str = "fp32",
                   *, channels_last: bool = True, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """An eval copy of ``module`` on ``device`` in ``precision`` and a random input for it
    (the caller's module is not touched)."""
    import copy

    if precision not in DTYPES:
        raise DeployError(f"precision {precision!r} is not one of {tuple(DTYPES)}")
    dtype = DTYPES[precision]
    # drawn on the device: a batch-256 activation drawn on the CPU would take longer than
    # timing the layer
    gen = torch.Generator(device).manual_seed(seed)
    x = torch.randn(*input_shape, generator=gen, device=device, dtype=torch.float32).to(dtype)
    module = copy.deepcopy(module).eval().to(device, dtype)
    if channels_last and x.ndim == 4 and device.type == "cuda":
        module = module.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    return module, x


def make_runner(module: nn.Module, x: torch.Tensor, *, cuda_graphs: bool = True,
                warmup: int = 3) -> Callable[[], object]:
    """A no-argument function running one forward of ``module`` on ``x``.

    On CUDA it is warmed up on a side stream (cuDNN picks its algorithms) and, with
    ``cuda_graphs``, captured into a CUDA graph whose ``replay`` is returned."""
    def forward():
        with torch.inference_mode():
            return module(x)

    if x.device.type != "cuda":
        for _ in range(warmup):
            forward()
        return forward
    with torch.cuda.device(x.device):  # the graph captures from the current device's stream
        return _cuda_runner(module, x, forward, cuda_graphs, warmup)


def _cuda_runner(module, x, forward, cuda_graphs: bool, warmup: int):
    side = torch.cuda.Stream(x.device)
    side.wait_stream(torch.cuda.current_stream(x.device))
    with torch.cuda.stream(side), torch.no_grad():
        for _ in range(max(warmup, 1)):
            module(x)
    torch.cuda.current_stream(x.device).wait_stream(side)
    torch.cuda.synchronize(x.device)
    if not cuda_graphs:
        return forward
    graph = torch.cuda.CUDAGraph()
    try:
        # on a stream of x's device: torch.cuda.graph's default is one stream per process,
        # made on the device current at the first capture (review177 F1: cuda:1's kernels,
        # after a capture on cuda:0, went to a stream that was not capturing)
        with torch.no_grad(), torch.cuda.graph(graph, stream=side):
            module(x)  # the output stays alive in the graph's memory pool
    except RuntimeError as exc:  # a raw traceback after the export and its check (break77 F5)
        raise DeployError(
            f"PyTorch cannot capture {type(module).__name__} into a CUDA graph "
            f"({first_line(exc)}): its forward waits on the host (.item(), a CPU tensor copied "
            "to the GPU, a size read from values); time it with --backend onnxruntime, or from "
            "Python with fxprune.deploy.torch_backend.time_models(..., cuda_graphs=False)"
        ) from exc
    graph.replay()
    torch.cuda.synchronize(x.device)

    def replay(graph=graph, reads=(module, x)):
        # the graph replays kernels on the addresses of the module's weights and of x, which
        # it does not own: ``reads`` keeps them alive as long as the runner (time_models
        # rebound its names to the next model, the first one's memory was freed and reused,
        # and an H200 stopped on an illegal memory access while timing resnet50)
        graph.replay()
    return replay


def _inner_count(fn, device: torch.device, sample_ms: float) -> int:
    """Calls per timed sample so one sample spans about ``sample_ms`` (event resolution is
    about half a microsecond: one replay of a small layer is shorter than that matters)."""
    if device.type != "cuda" or sample_ms <= 0:
        return 1
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(3):
        fn()
    end.record()
    end.synchronize()
    one = max(start.elapsed_time(end) / 3, 1e-4)
    return max(1, min(1000, math.ceil(sample_ms / one)))


def time_interleaved(runs: Mapping[str, Callable[[], object]], device: torch.device, *,
                     iters: int = 50, warmup: int = 5, sample_ms: float = 1.0,
                     progress: bool = False, desc: str = "timing") -> dict[str, list[float]]:
    """Per-forward ms of each runner, ``iters`` rounds of A, B, A, B, ... after ``warmup``."""
    if device.type != "cuda":  # wall clock, one call per sample: ONNX Runtime's loop
        return time_interleaved_wall(runs, iters, warmup, progress, desc)
    if iters < 1 or warmup < 0:
        raise DeployError(f"need iters >= 1 and warmup >= 0 (got iters={iters}, warmup={warmup})")
    with torch.cuda.device(device):  # events record on the current device's stream
        return _time_cuda(runs, device, iters, warmup, sample_ms, progress, desc)


def _time_cuda(runs, device, iters, warmup, sample_ms, progress, desc) -> dict[str, list[float]]:
    for _ in range(warmup):
        for fn in runs.values():
            fn()
    inner = {name: _inner_count(fn, device, sample_ms) for name, fn in runs.items()}
    rounds = range(iters)
    if progress:
        from tqdm import tqdm

        rounds = tqdm(rounds, desc=desc, unit="round", leave=False)
    events: dict[str, list] = {name: [] for name in runs}
    for _ in rounds:
        for name, fn in runs.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner[name]):
                fn()
            end.record()
            events[name].append((start, end))
    torch.cuda.synchronize(device)
    return {name: [s.elapsed_time(e) / inner[name] for s, e in pairs]
            for name, pairs in events.items()}


def time_models(models: Mapping[str, nn.Module], input_shape, *, device=None,
                precision: str = "fp32", threads: int = 2, iters: int = 50, warmup: int = 5,
                cuda_graphs: bool = True, channels_last: bool = True,
                progress: bool = False) -> dict[str, list[float]]:
    """Per-forward ms of each model at ``input_shape`` (batch first), timed interleaved."""
    device = resolve_device(device)
    with timing_settings(device, threads):
        runs = {}
        for name, module in models.items():
            mod, x = prepare_module(module, input_shape, device, precision,
                                    channels_last=channels_last)
            runs[name] = make_runner(mod, x, cuda_graphs=cuda_graphs)
        return time_interleaved(runs, device, iters=iters, warmup=warmup, progress=progress,
                                desc=f"torch on {device}")


# ------------------------------------------------------------------------- single layers
def layer_module(layer: LayerSpec, c_in: int, c_out: int) -> nn.Module:
    """A conv or linear layer shaped like ``layer`` pruned to ``c_in`` -> ``c_out`` channels."""
    check_timed(layer)
    return _MODULE_BUILDERS[layer.kind](layer, c_in, c_out)


def _linear_module(layer: LayerSpec, c_in: int, c_out: int) -> nn.Module:
    return nn.Linear(c_in, c_out, bias=layer.bias)


def _conv_module(layer: LayerSpec, c_in: int, c_out: int) -> nn.Module:
    groups = check_groups(layer, c_in, c_out)
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}.get(len(layer.kernel_size))
    if conv is None:
        raise DeployError(f"layer {layer.name!r}: no torch conv for kernel {layer.kernel_size}")
    nd = len(layer.kernel_size)
    uneven = len(layer.padding) == 2 * nd  # begins, then ends
    if not uneven or all(s == 1 for s in layer.stride or (1,)):
        # begins and ends that differ at stride 1 are padding="same" with an even kernel
        return conv(c_in, c_out, layer.kernel_size, stride=layer.stride or 1,
                    padding="same" if uneven else layer.padding or 0,
                    dilation=layer.dilation or 1, groups=groups, bias=layer.bias,
                    padding_mode=layer.padding_mode)
    # strided with uneven pads: a conv padded in its forward as TensorFlow's "SAME" (timm's
    # Conv2dSame): the pad, then the conv, as that layer runs
    if layer.padding_mode != "zeros":
        raise DeployError(f"layer {layer.name!r}: uneven {layer.padding_mode} padding "
                          f"{layer.padding} at stride {layer.stride} has no torch layer here")
    begin, end = layer.padding[:nd], layer.padding[nd:]
    pad = {1: nn.ConstantPad1d, 2: nn.ConstantPad2d, 3: nn.ConstantPad3d}[nd](
        torch_pad(begin, end), 0.0)
    return nn.Sequential(pad, conv(c_in, c_out, layer.kernel_size, stride=layer.stride or 1,
                                   dilation=layer.dilation or 1, groups=groups, bias=layer.bias))


#: the torch module of each layer kind a latency table times (layer_onnx.TIMED_KINDS)
_MODULE_BUILDERS = {"conv": _conv_module, "linear": _linear_module}


class LayerTimer:
    """``timer(layer, c_in, c_out) -> ms`` for :meth:`LatencyTable.measure` (the torch backend).

    The precision is the layer's own dtype (``LayerSpec.dtype``: float32, float16, bfloat16);
    the table sets it and the deployment batch on the specs before they get here.
    """

    def __init__(self, device=None, *, threads: int = 2, cuda_graphs: bool = True,
                 channels_last: bool = True, warmup: int = 3, min_runs: int = 5,
                 max_runs: int = 25, target_ms: float = 15.0, sample_ms: float = 0.5):
        self.device = resolve_device(device)
        self.threads, self.cuda_graphs, self.channels_last = threads, cuda_graphs, channels_last
        self.warmup, self.min_runs, self.max_runs = warmup, min_runs, max_runs
        self.target_ms, self.sample_ms = target_ms, sample_ms

    def __call__(self, layer: LayerSpec, c_in: int, c_out: int) -> float:
        precision = _SPEC_DTYPES.get(layer.dtype)
        if precision is None:
            raise DeployError(f"layer {layer.name!r} has dtype {layer.dtype!r}; the torch backend "
                              f"times {sorted(_SPEC_DTYPES)}")
        shape = layer_input_shape(layer, c_in)
        with timing_settings(self.device, self.threads):
            torch.manual_seed(0)
            # channels_last is a conv's layout; a Linear's 4-D input (N, H, W, C) already is
            module, x = prepare_module(layer_module(layer, c_in, c_out), shape, self.device,
                                       precision,
                                       channels_last=self.channels_last and layer.layer_kind.spatial)
            fn = make_runner(module, x, cuda_graphs=self.cuda_graphs, warmup=self.warmup)
            # as many samples as fit in target_ms, between min_runs and max_runs
            probe = time_interleaved({"l": fn}, self.device, iters=1, warmup=0,
                                     sample_ms=self.sample_ms)["l"][0]
            runs = int(min(self.max_runs, max(self.min_runs, self.target_ms // max(probe, 1e-6))))
            times = time_interleaved({"l": fn}, self.device, iters=runs, warmup=0,
                                     sample_ms=self.sample_ms)["l"]
        del fn, module, x
        return float(statistics.median(times))


__all__ = ["LayerTimer", "time_models", "time_interleaved", "make_runner", "prepare_module",
           "resolve_device", "device_name", "runtime_version", "versions", "DTYPES"]
