"""TensorRT engines: build from ONNX, run, and time them on a CUDA GPU (TensorRT 10.x and 11.x).

Importing this module never imports ``tensorrt``: every function that needs it takes the
module from :func:`require_tensorrt`, which says what is missing (the package, a CUDA device)
and that ``--backend onnxruntime`` runs on the CPU.

Buffers are torch CUDA tensors and timing uses ``torch.cuda.Event`` on a torch CUDA stream,
so no pycuda / cuda-python is needed. A latency is the GPU time between events recorded right
before and after ``execute_async_v3`` (what trtexec calls GPU compute time), per inference.

Precision: TensorRT 10 builds fp16 engines from an fp32 ONNX with ``BuilderFlag.FP16``.
TensorRT 11 removed that flag (networks are strongly typed: the ONNX's own dtypes decide), so
there fp16 means building from an fp16 ONNX (:func:`onnx_precision_for` tells the caller which).
"""
from __future__ import annotations

from typing import Mapping, Sequence

from .common import DeployError

BACKEND = "tensorrt"
MIN_MAJOR = 10
DEFAULT_WORKSPACE = 1 << 30
_HOW_TO_INSTALL = "pip install tensorrt --extra-index-url https://pypi.nvidia.com"
_CPU_ALTERNATIVE = "--backend onnxruntime (backend='onnxruntime') runs on the CPU without it"
_TORCH_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT32": "int32",
                 "INT64": "int64", "INT8": "int8", "UINT8": "uint8", "BOOL": "bool"}


# --------------------------------------------------------------------------- availability
def _import_tensorrt():
    try:
        import tensorrt
    except ModuleNotFoundError as exc:
        if exc.name != "tensorrt":  # one of its own imports is missing
            return None, f"the tensorrt package is installed but fails to import ({exc})"
        return None, f"the tensorrt Python package is not installed ({_HOW_TO_INSTALL})"
    except Exception as exc:  # noqa: BLE001 - a broken install (an OSError for a missing
        # libnvinfer, from some wheels) makes TensorRT unusable, not the deploy (break77 F4)
        first = str(exc).splitlines()[0] if str(exc) else ""
        return None, (f"the tensorrt package is installed but fails to import "
                      f"({type(exc).__name__}: {first})")
    version = getattr(tensorrt, "__version__", None)
    if not isinstance(version, str) or not version.split(".")[0].isdigit():
        # another module of that name first on sys.path (a folder ./tensorrt with
        # python -m fxprune): TensorRT unusable, not the deploy (break129 F1)
        where = getattr(tensorrt, "__file__", None) or list(getattr(tensorrt, "__path__", []))
        return None, (f"the module imported as tensorrt ({where or 'no file'}) is not TensorRT "
                      "(it has no version): rename or move it off the Python path")
    return tensorrt, ""


def _cuda_problem() -> str:
    import torch

    if not torch.cuda.is_available():
        return ("TensorRT needs a CUDA device; none here "
                f"(torch.cuda.is_available() is False, torch {torch.__version__})")
    return ""


def tensorrt_status() -> tuple[bool, str]:
    """(usable, why not): usable when ``tensorrt`` imports and a CUDA device exists."""
    trt, missing_pkg = _import_tensorrt()
    problems = [p for p in (missing_pkg, _cuda_problem()) if p]
    if trt is not None and int(trt.__version__.split(".")[0]) < MIN_MAJOR:
        problems.append(f"TensorRT {trt.__version__} is too old: fxprune needs {MIN_MAJOR}.x or "
                        "newer")
    return (not problems), "; ".join(problems)


def require_tensorrt():
    """The ``tensorrt`` module, or a :class:`DeployError` naming what is missing."""
    ok, why = tensorrt_status()
    if not ok:
        raise DeployError(f"the TensorRT backend cannot run: {why}. {_CPU_ALTERNATIVE}.")
    import tensorrt

    return tensorrt


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(torch.cuda.current_device())


def version() -> str | None:
    trt, _ = _import_tensorrt()
    return None if trt is None else trt.__version__


# ---------------------------------------------------------------------------- precision
def has_fp16_builder_flag(trt) -> bool:
    """TensorRT 10 has ``BuilderFlag.FP16``; 11 removed it (strongly typed networks)."""
    return hasattr(trt.BuilderFlag, "FP16")


def onnx_precision_for(trt, precision: str) -> str:
    """The dtype the ONNX must be exported in for an engine of ``precision``."""
    if precision == "fp16" and not has_fp16_builder_flag(trt):
        return "fp16"
    return "fp32"


# ------------------------------------------------------------------------------ building
def profile_shapes(input_shape: Sequence[int], min_batch: int = 1, opt_batch: int | None = None,
                   max_batch: int | None = None) -> tuple[tuple[int, ...], ...]:
    """(min, opt, max) shapes of an optimization profile over the batch dim of ``input_shape``.

    ``opt`` defaults to the shape's own batch (what the engine is tuned for), ``max`` to
    ``max(opt, min)``; the other dims are fixed.
    """
    rest = tuple(int(d) for d in input_shape[1:])
    opt = int(input_shape[0]) if opt_batch is None else int(opt_batch)
    mx = max(opt, min_batch) if max_batch is None else int(max_batch)
    if not 1 <= min_batch <= opt <= mx:
        raise DeployError(f"batch range must satisfy 1 <= min ({min_batch}) <= opt ({opt}) <= "
                          f"max ({mx})")
    return (min_batch, *rest), (opt, *rest), (mx, *rest)


class _Logger:
    """One TensorRT logger per process (TensorRT warns when several are created)."""

    instance = None

    @classmethod
    def get(cls, trt):
        if cls.instance is None:
            cls.instance = trt.Logger(trt.Logger.WARNING)
        return cls.instance


def _parse(trt, network, logger, onnx_bytes: bytes, path: str | None):
    """Fill ``network`` from the ONNX; returns the parser, which owns the weights the network
    points to and so must stay alive until the engine is built."""
    parser = trt.OnnxParser(network, logger)
    # The path lets the parser find weights stored beside the model (external data).
    ok = parser.parse(onnx_bytes, path) if path else parser.parse(onnx_bytes)
    if not ok:
        errors = [_parser_error_text(parser.get_error(i)) for i in range(parser.num_errors)]
        raise DeployError(f"TensorRT's ONNX parser rejected {path or 'the model'}:\n  "
                          + "\n  ".join(errors or ["(no error message)"]))
    return parser


def _parser_error_text(err) -> str:
    # The bindings print a formatted message (node, op, description); older ones only desc().
    text = str(err)
    if "object at 0x" in text and hasattr(err, "desc"):
        text = err.desc()
    return text


def build_serialized(trt, onnx_bytes: bytes, *, precision: str = "fp32",
                     shapes: tuple | None = None, workspace: int = DEFAULT_WORKSPACE,
                     timing_cache=None, source: str | None = None, builder=None):
    """Build an engine; returns TensorRT's serialized engine (IHostMemory, a buffer).

    ``shapes`` = (min, opt, max) for every dynamic input (see :func:`profile_shapes`).
    ``timing_cache`` (from ``config.create_timing_cache``) is shared between builds so that
    repeated single-layer builds skip tactic timings already done; so may one ``builder``.
    """
    logger = _Logger.get(trt)
    builder = builder or trt.Builder(logger)
    # Flags 0: TensorRT 10 networks are always explicit-batch (the flag is deprecated), and
    # TensorRT 11 networks are strongly typed by default.
    network = builder.create_network(0)
    parser = _parse(trt, network, logger, onnx_bytes, source)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace))
    if precision == "fp16" and has_fp16_builder_flag(trt):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        # TensorRT allows TF32 by default on Ampere and newer; fp32 means fp32 here, as in the
        # torch backend (TF32 off), so the two backends' "fp32" reports time the same math
        config.clear_flag(trt.BuilderFlag.TF32)
    if timing_cache is not None:
        config.set_timing_cache(timing_cache, False)
    dynamic = [network.get_input(i) for i in range(network.num_inputs)
               if any(d < 0 for d in network.get_input(i).shape)]
    if dynamic:
        if shapes is None:
            raise DeployError("the ONNX has dynamic input dims; give (min, opt, max) shapes")
        profile = builder.create_optimization_profile()
        for inp in dynamic:
            profile.set_shape(inp.name, *shapes)
        config.add_optimization_profile(profile)
    elif shapes is not None and network.num_inputs:
        # a fixed batch takes no profile: an engine asked for more would run at that batch
        # only, and say nothing (break37 #2)
        fixed = int(network.get_input(0).shape[0])
        if int(shapes[2][0]) > fixed:
            raise DeployError(f"{source or 'the ONNX'} fixes the batch at {fixed} (a static input "
                              f"shape), so its engine cannot take batch {int(shapes[2][0])}: drop "
                              "--max-batch (max_batch), or export the model with a dynamic batch")
    serialized = builder.build_serialized_network(network, config)
    del parser  # only now may the weights it owns go
    if serialized is None:
        raise DeployError(f"TensorRT failed to build an engine from {source or 'the model'} "
                          "(its log above says why)")
    return serialized


def build_engine(onnx_path: str, engine_path: str, input_shape: Sequence[int], *,
                 precision: str = "fp32", max_batch: int | None = None,
                 workspace: int = DEFAULT_WORKSPACE) -> str:
    """Build ``engine_path`` from ``onnx_path`` for a batch range 1..max(batch, max_batch)."""
    trt = require_tensorrt()
    with open(onnx_path, "rb") as f:
        data = f.read()
    shapes = profile_shapes(input_shape, 1, input_shape[0], max_batch)
    serialized = build_serialized(trt, data, precision=precision, shapes=shapes,
                                  workspace=workspace, source=onnx_path)
    with open(engine_path, "wb") as f:
        f.write(serialized)
    return engine_path


# ------------------------------------------------------------------------------- running
class EngineRunner:
    """An engine with its context and torch CUDA buffers bound at one input shape."""

    def __init__(self, trt, engine_bytes, input_shape: Sequence[int]):
        import torch

        self._runtime = trt.Runtime(_Logger.get(trt))  # must outlive the engine
        self.engine = self._runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise DeployError("TensorRT could not deserialize the engine (built by another "
                              "TensorRT version or for another GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.buffers: dict[str, torch.Tensor] = {}
        gen = torch.Generator(device="cuda").manual_seed(0)
        for name in self.inputs:
            if not self.context.set_input_shape(name, tuple(input_shape)):
                raise DeployError(f"the engine does not accept input shape {tuple(input_shape)} "
                                  f"for {name!r} (outside its optimization profile's range?)")
            dtype = self._dtype(name)
            self.buffers[name] = torch.randn(tuple(input_shape), device="cuda",
                                             generator=gen).to(dtype)
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise DeployError(f"output {name!r} has a data-dependent shape {shape}; "
                                  "fxprune's TensorRT runner supports static output shapes")
            self.buffers[name] = torch.empty(shape, device="cuda", dtype=self._dtype(name))
        for name, buf in self.buffers.items():
            self.context.set_tensor_address(name, buf.data_ptr())
        torch.cuda.synchronize()  # the random inputs are written on the default stream

    def _dtype(self, name):
        import torch

        dt = self.engine.get_tensor_dtype(name)
        try:
            return getattr(torch, _TORCH_DTYPES[dt.name])
        except KeyError:
            raise DeployError(f"tensor {name!r} has TensorRT dtype {dt.name}, which fxprune "
                              "cannot allocate") from None

    def enqueue(self, stream) -> None:
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise DeployError("TensorRT's execute_async_v3 failed (see its log above)")

    def infer(self, x):
        """Outputs (fp32, on the CPU) for input tensor ``x`` of the bound shape."""
        import torch

        buf = self.buffers[self.inputs[0]]
        buf.copy_(x.to(device="cuda", dtype=buf.dtype))
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        self.enqueue(stream)
        stream.synchronize()
        return [self.buffers[n].float().cpu() for n in self.outputs]


def time_runners(runners: Mapping[str, EngineRunner], iters: int = 200, warmup: int = 20,
                 progress: bool = True) -> dict[str, list[float]]:
    """GPU ms per inference of each runner, interleaved A, B, A, B, ... on one stream."""
    import torch

    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            for r in runners.values():
                r.enqueue(stream)
        events: dict[str, list] = {name: [] for name in runners}
        rounds = range(iters)
        if progress:
            from tqdm import tqdm

            rounds = tqdm(rounds, desc="tensorrt", unit="round", leave=False)
        for _ in rounds:
            for name, r in runners.items():
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record(stream)
                r.enqueue(stream)
                end.record(stream)
                events[name].append((start, end))
    stream.synchronize()
    return {name: [s.elapsed_time(e) for s, e in evs] for name, evs in events.items()}


class LayerTimer:
    """Times single-layer ONNX models as TensorRT engines (latency tables).

    Every build shares one timing cache, so layers whose tactics were already timed build fast.
    """

    def __init__(self, trt, warmup: int = 10, min_runs: int = 20,
                 workspace: int = DEFAULT_WORKSPACE):
        self.trt, self.warmup, self.runs, self.workspace = trt, warmup, min_runs, workspace
        self._cache = None
        self._builder = trt.Builder(_Logger.get(trt))

    def time(self, onnx_bytes: bytes, input_shape: Sequence[int], precision: str = "fp32") -> float:
        """Median GPU ms of the (static-shape) model; ``precision`` is the model's dtype.

        Under TensorRT 11 the fp16 ONNX alone makes an fp16 engine; under 10 the FP16 flag is
        also set, so the layer's kernels may run in fp16 as the deployed model's would.
        """
        import statistics

        trt = self.trt
        if self._cache is None:
            self._cache = self._builder.create_builder_config().create_timing_cache(b"")
        serialized = build_serialized(trt, onnx_bytes, precision=precision,
                                      workspace=self.workspace, timing_cache=self._cache,
                                      builder=self._builder)
        runner = EngineRunner(trt, serialized, input_shape)
        times = time_runners({"layer": runner}, iters=self.runs, warmup=self.warmup,
                             progress=False)["layer"]
        return statistics.median(times)
