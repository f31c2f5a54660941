"""The PyTorch latency backend (``backend="torch"``): tables and ``fxprune deploy``.

The CPU path is timed for real; the CUDA path (CUDA events, cuDNN autotuning, CUDA graphs,
fp16/bf16, channels_last) runs in the tests marked ``cuda``.
"""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxprune
from fxprune.cli import main
from fxprune.deploy import DeployError, LatencyTable, choose_backend, deploy
from fxprune.deploy import pipeline
from fxprune.deploy import torch_backend as tb
from helpers import small_deploy_net

HAVE_CUDA = torch.cuda.is_available()
needs_cuda = [pytest.mark.cuda, pytest.mark.skipif(not HAVE_CUDA, reason="no CUDA device")]
SHAPE = (2, 3, 16, 16)
QUICK = ["--iters", "5", "--warmup", "1", "--no-progress", "--input-shape", "2,3,16,16"]


small_net = small_deploy_net


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    torch.save(small_net(16), d / "dense.pt")
    torch.save(small_net(8), d / "pruned.pt")
    return d


def measure(pm, cache, device, **kw):
    return LatencyTable.measure(pm, backend="torch", step=8, cache=cache, progress=False,
                                torch_device=device, passes=1, min_runs=3, max_runs=5,
                                log=lambda _: None, **kw)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
def test_table_is_measured_at_the_deployment_batch_cached_and_prices_the_knapsack(device, tmp_path):
    # wide enough at 32x32 that conv time, not per-call overhead, dominates: the knapsack below
    # then has room under its target even when a loaded machine makes timings noisy
    pm = fxprune.prepare(small_net(32), (torch.randn(1, 3, 32, 32),))
    precision = "fp16" if device == "cuda" else None
    # (an H200 at batch 4 is launch-bound: the narrowest model timed at 1.014 of dense)
    batch = 256 if device == "cuda" else 4
    table = measure(pm, tmp_path / "cache.json", device, batch=batch, precision=precision)
    assert table.backend == "torch" and table.batch == batch
    assert table.stats["measured"] > 0 and table.stats["cached"] == 0
    for spec in fxprune.layer_specs(pm):  # batch-1 specs are looked up at the table's batch
        assert spec.batch == 1 and spec in table
        full = table.layer_cost(spec, spec.in_channels, spec.out_channels)
        assert full > 0
        assert table.layer_cost(spec, min(8, spec.in_channels), spec.out_channels) > 0
    assert all(k.startswith(f"b{batch}|") for k in table._points)
    cache = json.loads((tmp_path / "cache.json").read_text())
    (context,) = cache["contexts"]
    assert context.startswith("torch|torch " + torch.__version__) and tb.device_name(
        tb.resolve_device(device)) in context
    if device == "cuda":
        assert "cudnn" in context and "graphs" in context
        assert all(":float16" in k for k in table._points)
    again = measure(pm, tmp_path / "cache.json", device, batch=batch, precision=precision)
    assert again.stats["measured"] == 0 and again.stats["cached"] == table.stats["measured"]
    other_batch = measure(pm, tmp_path / "cache.json", device, batch=2, precision=precision)
    assert other_batch.stats["cached"] == 0  # the batch is part of the key
    table.save(tmp_path / "table.json")
    loaded = LatencyTable.load(tmp_path / "table.json")
    spec = fxprune.layer_specs(pm)[1]
    assert loaded.layer_cost(spec, 8, 16) == table.layer_cost(spec, 8, 16) > 0
    pm = pm.to(device)
    if device == "cpu":
        # the CPU's timings of layers this small are at the mercy of the machine's load (ci74,
        # under load: the narrowest model timed at 22.6x dense, and SMCP rightly refused the
        # table): the knapsack is priced by a table of the same kind with known timings
        table = measure(pm, tmp_path / "known.json", device, batch=batch,
                        timer=lambda layer, c_in, c_out: 1e-3 * c_in * c_out)
    # (tiny layers: latency is far from proportional to channels, so a mild target)
    pruner = fxprune.SMCP(pm, target=0.9, cost=table, warmup=0, ramp=1, update_every=1,
                          channel_step=8)
    for step in range(2):
        x = torch.randn(4, 3, 32, 32, device=device)
        F.cross_entropy(pm(x), torch.randint(0, 10, (4,), device=device)).backward()
        pruner.step()
        pm.zero_grad()
    assert pruner.history[-1]["actual"] <= 0.9 + 1e-9


def test_deploy_report_has_the_onnxruntime_backends_fields(saved, tmp_path):
    reports = {}
    for backend in ("onnxruntime", "torch"):
        out = tmp_path / backend
        extra = ["--device", "cpu"] if backend == "torch" else []
        assert main(["deploy", str(saved / "pruned.pt"), "--out", str(out), "--backend", backend,
                     "--compare", str(saved / "dense.pt"), "--trust-model-file", *QUICK,
                     *extra]) == 0
        reports[backend] = json.loads((out / "report.json").read_text())
    ort_report, torch_report = reports["onnxruntime"], reports["torch"]
    assert set(torch_report) == set(ort_report)
    assert set(torch_report["dense"]) == set(ort_report["dense"])
    assert torch_report["backend"] == "torch" and torch_report["threads"] == 2
    assert torch_report["latency_ms"]["median"] > 0 and torch_report["latency_ms"]["runs"] == 5
    assert torch_report["dense"]["latency_ms"]["median"] > 0 and torch_report["speedup"] > 0
    assert torch_report["onnx_max_abs_diff"] < 1e-3  # the ONNX file is still checked


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("graphs", [True, False])
@pytest.mark.cuda
@pytest.mark.skipif(not HAVE_CUDA, reason="no CUDA device")
def test_cuda_models_timed_with_events_and_graphs(precision, graphs):
    times = tb.time_models({"a": small_net(16), "b": small_net(8)}, (8, 3, 32, 32),
                           device="cuda", precision=precision, iters=5, warmup=2,
                           cuda_graphs=graphs)
    assert all(len(t) == 5 and min(t) > 0 for t in times.values())


@pytest.mark.cuda
@pytest.mark.skipif(not HAVE_CUDA, reason="no CUDA device")
def test_a_cuda_graph_runner_keeps_what_the_graph_reads_alive():
    """On an H200, time_models stopped on an illegal memory access: the graph replayed on the
    first model's weights and input after its names were rebound to the second model's and
    the caching allocator had reused the memory."""
    import gc
    import weakref

    module, x = tb.prepare_module(small_net(16), (8, 3, 32, 32), torch.device("cuda"), "fp16")
    run = tb.make_runner(module, x)
    alive = weakref.ref(module)
    del module, x
    gc.collect()
    assert alive() is not None
    run()
    torch.cuda.synchronize()


class ReadsAScalar(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.register_buffer("scale", torch.tensor(2.0))

    def forward(self, x):
        return self.conv(x) * self.scale.item()  # a host read: not capturable


@pytest.mark.cuda
@pytest.mark.skipif(not HAVE_CUDA, reason="no CUDA device")
def test_a_model_that_waits_on_the_host_is_refused_for_cuda_graphs_in_one_line():
    """break77 F5 (read, not run on a CPU host): capture raised a raw RuntimeError after the
    export and its check had passed."""
    with pytest.raises(DeployError, match=r"^PyTorch cannot capture ReadsAScalar into a CUDA "
                                          r"graph .*cuda_graphs=False\)$"):
        tb.time_models({"m": ReadsAScalar()}, (2, 3, 16, 16), device="cuda", iters=2, warmup=1)
    times = tb.time_models({"m": ReadsAScalar()}, (2, 3, 16, 16), device="cuda", iters=2,
                           warmup=1, cuda_graphs=False)
    assert len(times["m"]) == 2


@pytest.mark.cuda
@pytest.mark.skipif(not HAVE_CUDA, reason="no CUDA device")
def test_cuda_deploy_with_the_torch_backend(saved, tmp_path):
    assert main(["deploy", str(saved / "pruned.pt"), "--out", str(tmp_path), "--backend", "torch",
                 "--device", "cuda", "--precision", "bf16", "--trust-model-file", *QUICK]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["device"] == torch.cuda.get_device_name() and report["threads"] is None
    assert report["cudnn_version"] == torch.backends.cudnn.version()


def test_auto_prefers_tensorrt_then_torch_on_cuda_then_onnxruntime(monkeypatch):
    lines = []
    monkeypatch.setattr(pipeline.trtb, "tensorrt_status", lambda: (False, "no tensorrt here"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Some GPU")
    assert choose_backend("auto", lines.append) == "torch"
    assert "PyTorch" in lines[-1] and "Some GPU" in lines[-1] and "no tensorrt here" in lines[-1]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_backend("auto", lines.append) == "onnxruntime"
    assert "no CUDA device" in lines[-1]
    monkeypatch.setattr(pipeline.trtb, "tensorrt_status", lambda: (True, ""))
    monkeypatch.setattr(pipeline.trtb, "version", lambda: "10.0")
    monkeypatch.setattr(pipeline.trtb, "gpu_name", lambda: "Some GPU")
    assert choose_backend("auto", lines.append) == "tensorrt"


def test_clear_errors(saved, tmp_path):
    with pytest.raises(DeployError, match="bf16 is timed by the torch backend only"):
        deploy(saved / "pruned.pt", tmp_path, backend="onnxruntime", precision="bf16",
               input_shape=SHAPE, log=lambda _: None)
    if not HAVE_CUDA:
        with pytest.raises(DeployError, match="CUDA is not available"):
            tb.resolve_device("cuda")
    with pytest.raises(DeployError, match="precision"):
        LatencyTable.measure([], backend="torch", precision="int8", log=lambda _: None)
    onnx_file = tmp_path / "given.onnx"
    onnx_file.write_bytes(b"not read: refused before loading")
    with pytest.raises(DeployError, match="ONNX file and the torch backend times PyTorch modules"):
        deploy(onnx_file, tmp_path / "o", backend="torch", input_shape=SHAPE, log=lambda _: None)
