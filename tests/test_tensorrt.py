"""The TensorRT backend: what can be checked without it here, and the real thing where it runs.

Tests that need TensorRT and a CUDA GPU skip with the reason; nothing fakes a TensorRT result.
"""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from fxprune.cost import LayerSpec
from fxprune.deploy import DeployError, LatencyTable, deploy, export_onnx, verify_onnx
from fxprune.deploy import tensorrt_backend as trtb

SHAPE = (2, 3, 16, 16)
TRT_OK, TRT_WHY = trtb.tensorrt_status()
needs_trt = pytest.mark.skipif(not TRT_OK, reason=f"needs TensorRT and a CUDA GPU: {TRT_WHY}")


def small_net(width=8):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 5))


# ------------------------------------------------------------- parts testable anywhere
def test_profile_shapes_over_a_batch_range():
    assert trtb.profile_shapes((4, 3, 224, 224)) == ((1, 3, 224, 224), (4, 3, 224, 224),
                                                     (4, 3, 224, 224))
    assert trtb.profile_shapes((4, 3, 32, 32), min_batch=2, max_batch=16) == (
        (2, 3, 32, 32), (4, 3, 32, 32), (16, 3, 32, 32))
    with pytest.raises(DeployError, match="batch range"):
        trtb.profile_shapes((8, 3, 32, 32), max_batch=4)


def test_fp16_strategy_follows_the_tensorrt_version():
    trt10 = SimpleNamespace(BuilderFlag=SimpleNamespace(FP16=object(), TF32=object()))
    trt11 = SimpleNamespace(BuilderFlag=SimpleNamespace(TF32=object()))  # FP16 flag removed
    assert trtb.onnx_precision_for(trt10, "fp16") == "fp32"  # flag on an fp32 network
    assert trtb.onnx_precision_for(trt11, "fp16") == "fp16"  # strongly typed: fp16 ONNX
    assert trtb.onnx_precision_for(trt11, "fp32") == "fp32"


def test_fp16_onnx_export_for_strongly_typed_engines(tmp_path):
    model = small_net()
    path = tmp_path / "m16.onnx"
    info = export_onnx(model, SHAPE, path, precision="fp16", log=lambda s: None)
    assert info["precision"] == "fp16"
    m = onnx.load(path)
    f16 = onnx.TensorProto.FLOAT16
    assert m.graph.input[0].type.tensor_type.elem_type == f16
    assert m.graph.output[0].type.tensor_type.elem_type == f16
    float_inits = [t for t in m.graph.initializer
                   if t.data_type in (onnx.TensorProto.FLOAT, f16) and len(t.dims) > 1]
    assert float_inits and all(t.data_type == f16 for t in float_inits)
    dims = m.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == list(SHAPE[1:])
    # ONNX Runtime runs it and stays within fp16 tolerance of the fp32 PyTorch model.
    assert verify_onnx(str(path), model, SHAPE, precision="fp16") < 1e-1
    assert next(model.parameters()).dtype == torch.float32  # the user's module stays fp32


class _RecordingTensorRT:
    """The calls build_serialized makes, recorded: no engine is built and none is faked."""

    def __init__(self, input_shape):
        calls = self.calls = []
        flags = SimpleNamespace(FP16="FP16", TF32="TF32")
        self.BuilderFlag, self.MemoryPoolType = flags, SimpleNamespace(WORKSPACE="WORKSPACE")
        network = SimpleNamespace(num_inputs=1, get_input=lambda i: SimpleNamespace(
            name="x", shape=tuple(input_shape)))
        config = SimpleNamespace(set_memory_pool_limit=lambda *a: None,
                                 set_flag=lambda f: calls.append(("set", f)),
                                 clear_flag=lambda f: calls.append(("clear", f)),
                                 add_optimization_profile=lambda p: calls.append(("profile",)))
        profile = SimpleNamespace(set_shape=lambda *a: calls.append(("shape", a)))
        self.builder = SimpleNamespace(
            create_network=lambda flags: network, create_builder_config=lambda: config,
            create_optimization_profile=lambda: profile,
            build_serialized_network=lambda n, c: calls.append(("build",)) or b"engine")
        self.OnnxParser = lambda network, logger: SimpleNamespace(parse=lambda *a: True)


def test_engine_build_settings_without_tensorrt(monkeypatch):
    """break37: a static-batch ONNX took no profile, so --max-batch was dropped without a word
    (#2); an fp32 engine left TensorRT's default TF32 on, unlike the torch backend's fp32 (#4)."""
    monkeypatch.setattr(trtb._Logger, "instance", object())
    trt = _RecordingTensorRT((2, 3, 16, 16))  # a fixed batch of 2
    shapes = trtb.profile_shapes((2, 3, 16, 16))
    assert trtb.build_serialized(trt, b"", shapes=shapes, builder=trt.builder) == b"engine"
    assert ("clear", "TF32") in trt.calls and ("profile",) not in trt.calls
    with pytest.raises(DeployError, match=r"m.onnx fixes the batch at 2 .*cannot take batch 32: "
                                          r"drop --max-batch"):
        trtb.build_serialized(trt, b"", shapes=trtb.profile_shapes((2, 3, 16, 16), max_batch=32),
                              builder=trt.builder, source="m.onnx")
    dynamic = _RecordingTensorRT((-1, 3, 16, 16))
    trtb.build_serialized(dynamic, b"", precision="fp16", builder=dynamic.builder,
                          shapes=trtb.profile_shapes((2, 3, 16, 16), max_batch=32))
    assert ("set", "FP16") in dynamic.calls and ("clear", "TF32") not in dynamic.calls
    assert ("shape", ("x", (1, 3, 16, 16), (2, 3, 16, 16), (32, 3, 16, 16))) in dynamic.calls


def test_a_given_fp16_onnx_is_taken_where_the_engine_builds_fp16(tmp_path):
    """break37 #1: on TensorRT 10 (fp16 by a builder flag on an fp32 export) a given fp16 ONNX
    was refused for --precision fp16, told to pass --precision fp16."""
    from fxprune.deploy.pipeline import _given_onnx, _given_precision

    path = tmp_path / "m16.onnx"
    export_onnx(small_net(), SHAPE, path, precision="fp16", log=lambda s: None)
    info = _given_onnx(str(path), str(tmp_path / "model.onnx"), lambda s: None,
                       *_given_precision(str(path), "fp32", ("fp32", "fp16")))
    assert info["precision"] == "fp16"
    with pytest.raises(DeployError, match="precision fp16 .* precision fp32 was asked for"):
        _given_precision(str(path), "fp32")


def test_missing_tensorrt_or_gpu_is_a_clear_error(tmp_path):
    if TRT_OK:
        pytest.skip("TensorRT and a CUDA GPU are both present: there is no error to check")
    with pytest.raises(DeployError) as err:
        deploy(small_net(), tmp_path, backend="tensorrt", input_shape=SHAPE)
    msg = str(err.value)
    assert "--backend onnxruntime" in msg
    try:
        import tensorrt  # noqa: F401
        assert "CUDA device" in msg
    except ImportError:
        assert "tensorrt Python package is not installed" in msg
    if not torch.cuda.is_available():
        assert "CUDA device" in msg
    assert not list(tmp_path.iterdir())  # failed before writing anything


def test_a_broken_tensorrt_install_falls_back_to_another_backend(tmp_path, monkeypatch):
    """break77 F4: a tensorrt package whose import raises OSError (a missing libnvinfer) made
    the default backend fail with that bare error, instead of using another backend."""
    from fxprune.deploy import pipeline

    fake = tmp_path / "tensorrt"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        "raise OSError('libnvinfer.so.10: cannot open shared object file')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, "tensorrt", raising=False)
    ok, why = trtb.tensorrt_status()
    assert not ok and ("the tensorrt package is installed but fails to import (OSError: "
                       "libnvinfer.so.10: cannot open shared object file)") in why
    said = []
    chosen = pipeline.choose_backend("auto", log=said.append)
    assert chosen in ("torch", "onnxruntime") and "fails to import" in said[0]
    with pytest.raises(DeployError, match="fails to import"):
        pipeline.choose_backend("tensorrt")


def test_a_module_named_tensorrt_that_is_not_tensorrt_is_said_and_set_aside(tmp_path, monkeypatch):
    """break129 F1: a plain folder ./tensorrt (no __version__) on the path crashed every
    deploy, --backend onnxruntime included, with an AttributeError traceback."""
    from fxprune.deploy import pipeline

    (tmp_path / "tensorrt").mkdir()  # a namespace package: imports, holds nothing
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, "tensorrt", raising=False)
    ok, why = trtb.tensorrt_status()
    assert not ok and "the module imported as tensorrt" in why and "is not TensorRT" in why
    assert trtb.version() is None
    said = []
    assert pipeline.choose_backend("auto", log=said.append) in ("torch", "onnxruntime")
    assert "is not TensorRT" in said[0]


def test_tensorrt_latency_table_without_tensorrt_is_a_clear_error():
    if TRT_OK:
        pytest.skip("TensorRT and a CUDA GPU are both present: there is no error to check")
    layer = LayerSpec("c", "conv", 4, 4, (1, 4, 8, 8), (1, 4, 8, 8), (3, 3), (1, 1), (1, 1),
                      (1, 1))
    with pytest.raises(DeployError, match="onnxruntime"):
        LatencyTable.measure([layer], backend="tensorrt", progress=False, log=lambda s: None)


# ------------------------------------------------------- the real thing (TensorRT + GPU)
@needs_trt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_deploy_end_to_end(tmp_path, precision):
    report = deploy(small_net(8), tmp_path, backend="tensorrt", precision=precision,
                    input_shape=SHAPE, compare=small_net(16), iters=20, warmup=5,
                    max_batch=4, progress=False)
    assert (tmp_path / "model.engine").stat().st_size > 0
    assert (tmp_path / "dense.engine").stat().st_size > 0
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["backend"] == "tensorrt" and saved["tensorrt_version"]
    assert saved["device"] == torch.cuda.get_device_name()
    assert 0 < saved["latency_ms"]["median"] <= saved["latency_ms"]["p90"]
    assert saved["speedup"] == pytest.approx(report["speedup"])
    tol = 1e-2 if precision == "fp32" else 5e-2
    assert saved["tensorrt_max_abs_diff"] < tol


@needs_trt
def test_tensorrt_engine_accepts_the_whole_batch_range(tmp_path):
    trt = trtb.require_tensorrt()
    model = small_net(8).eval()
    onnx_path = export_onnx(model, SHAPE, tmp_path / "m.onnx", log=lambda s: None)["path"]
    engine = trtb.build_engine(onnx_path, str(tmp_path / "m.engine"), SHAPE, max_batch=4)
    data = open(engine, "rb").read()
    for batch in (1, 4):
        x = torch.randn(batch, *SHAPE[1:])
        got = trtb.EngineRunner(trt, data, x.shape).infer(x)[0]
        np.testing.assert_allclose(got.numpy(), model(x).detach().numpy(), atol=1e-2, rtol=1e-2)


@needs_trt
def test_tensorrt_latency_table():
    layer = LayerSpec("c", "conv", 16, 16, (1, 16, 16, 16), (1, 16, 16, 16), (3, 3), (1, 1),
                      (1, 1), (1, 1))
    table = LatencyTable.measure([layer], backend="tensorrt", step=8, progress=False)
    assert table.backend == "tensorrt" and table.device == torch.cuda.get_device_name()
    assert table.layer_cost(layer, 16, 16) > 0
