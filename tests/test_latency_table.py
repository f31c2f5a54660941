"""LatencyTable: grids, interpolation, caching, errors, persistence (tiny layers, seconds)."""
from __future__ import annotations

import dataclasses
import json
import math
import re
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxprune
from fxprune.cost import CostModel, LayerSpec
from fxprune.deploy import DeployError, LatencyTable, UnmeasuredLayerError
from fxprune.deploy import onnxruntime_backend as ortb
from fxprune.deploy.latency_table import grid_counts, grid_points, layer_grid
from fxprune.deploy.layer_onnx import layer_input_shape, layer_model_bytes

FAST = dict(warmup=1, min_runs=2, max_runs=3, target_ms=0.5, passes=1, progress=False, log=lambda s: None)


def conv(name="c", cin=16, cout=24, hw=8, k=3, stride=1, groups=1, bias=True, dtype="float32"):
    out_hw = (hw + 2 * (k // 2) - k) // stride + 1
    return LayerSpec(name, "conv", cin, cout, (1, cin, hw, hw), (1, cout, out_hw, out_hw),
                     (k, k), (stride, stride), (k // 2, k // 2), (1, 1), groups, bias, dtype)


def linear(name="fc", cin=16, cout=10, rows=(2,), bias=True):
    return LayerSpec(name, "linear", cin, cout, (*rows, cin), (*rows, cout), bias=bias)


def bilinear_fn(ci, co):
    # Bilinear in (ci, co), so bilinear interpolation between grid points must reproduce it.
    return 0.5 + 0.01 * ci + 0.02 * co + 0.001 * ci * co


class CountingTimer:
    def __init__(self, fn=bilinear_fn):
        self.fn, self.calls = fn, []

    def __call__(self, layer, ci, co):
        self.calls.append((layer.name, ci, co))
        return self.fn(ci, co)


# ------------------------------------------------------------------------------- grids
def test_grid_counts_include_dense_and_respect_step():
    assert grid_counts(64, 32) == [32, 64]
    assert grid_counts(70, 32) == [32, 64, 70]
    assert grid_counts(3, 32) == [3]
    assert grid_counts(24, 8) == [8, 16, 24]
    # Grouped convs: counts rounded up to multiples of the group count.
    assert grid_counts(48, 32, multiple_of=12) == [36, 48]


def test_layer_grid_depthwise_is_diagonal_and_grouped_keeps_groups():
    cins, couts, diag = layer_grid(conv(cin=32, cout=32, groups=32), step=8)
    assert diag and cins == couts == [8, 16, 24, 32]
    cins, couts, diag = layer_grid(conv(cin=24, cout=48, groups=6), step=8)
    assert not diag
    assert all(c % 6 == 0 for c in cins + couts) and cins[-1] == 24 and couts[-1] == 48


# ---------------------------------------------------------------------- interpolation
def test_bilinear_interpolation_is_exact_on_a_bilinear_cost_and_clamps():
    layer = conv(cin=32, cout=48)
    table = LatencyTable.measure([layer], step=16, timer=CountingTimer(), **FAST)
    assert table.grid(layer) == ([16, 32], [16, 32, 48])
    for ci, co in [(16, 16), (20, 40), (31, 17), (32, 48), (25, 33)]:
        assert table.layer_cost(layer, ci, co) == pytest.approx(bilinear_fn(ci, co))
    # Below the grid the value is clamped to its edge, warned of.
    with pytest.warns(RuntimeWarning, match="below the smallest count"):
        assert table.layer_cost(layer, 4, 48) == pytest.approx(bilinear_fn(16, 48))
    assert table.layer_cost(layer, 0, 10) == 0.0  # a layer with no channels left costs nothing
    # above the dense width (the grid's top) there is nothing to interpolate: it was priced as
    # the dense width, silently; NaN priced as nan and a negative count as 0 (break86 #4)
    for ci, co, match in [(40, 48, "above the widths its grid was measured up to"),
                          (32, 64, "above the widths"), (float("nan"), 16, "c_in=nan"),
                          (16, -3, "c_out=-3: a channel count must be a number >= 0"),
                          (None, 16, "c_in=None: a channel count"),  # break111 F16: raw TypeError
                          (16, "8", "c_out='8': a channel count")]:
        with pytest.raises(ValueError, match=match):
            table.layer_cost(layer, ci, co)


def test_depthwise_interpolates_along_the_diagonal():
    layer = conv(cin=32, cout=32, groups=32)
    timer = CountingTimer(lambda ci, co: float(ci * co))
    table = LatencyTable.measure([layer], step=8, timer=timer, **FAST)
    assert all(ci == co for _, ci, co in timer.calls)  # only k = c_in = c_out is timed
    assert table.layer_cost(layer, 12, 12) == pytest.approx((64 + 256) / 2)


def test_a_depthwise_channel_multiplier_is_timed_and_priced(tmp_path):
    """break25 #1: Conv2d(16, 32, groups=16) was timed as a 16 -> 16 conv, priced at half its
    MACs. A table whose timer returns MACs must price a model exactly as its MACs."""
    from fxprune.budget import Budget
    from fxprune.units import UnitIndex, costed_layers

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(16, 32, 3, padding=1, groups=16), torch.nn.ReLU(),
                                torch.nn.Conv2d(32, 8, 1))
    pm = fxprune.prepare(model, torch.randn(1, 3, 8, 8))
    timer = CountingTimer(lambda ci, co: None)
    table = LatencyTable.measure(pm, step=4, timer=lambda layer, ci, co: (
        timer.calls.append((layer.name, ci, co)), layer.macs(ci, co) / 1e6)[1], **FAST)
    assert ("2", 16, 32) in timer.calls and ("2", 16, 16) not in timer.calls
    index = UnitIndex(pm)
    layers = costed_layers(index)
    by_table, by_macs = Budget(index, layers, table), Budget(index, layers, fxprune.cost.FlopsCost())
    rng = np.random.default_rng(0)
    for _ in range(5):
        kept = rng.random(index.n) < 0.6
        assert by_table.total(kept) == pytest.approx(by_macs.total(kept) / 2e6)
    # a table saved before the multiplier was timed is refused, not read as the wrong layer
    data = table.to_dict()
    (key,) = [k for k, g in data["grids"].items() if g["diagonal"]]
    data["grids"][key]["c_out"] = data["grids"][key]["c_in"]
    with pytest.raises(DeployError, match=r"timed the depthwise layer\(s\) 2 \(16->32 channels\) "
                                          "without their channel multiplier"):
        LatencyTable.from_dict(data)


def test_is_a_cost_model():
    table = LatencyTable.measure([conv()], step=8, timer=CountingTimer(), **FAST)
    assert isinstance(table, CostModel) and table.name == "latency"


# -------------------------------------------------------------------- real measurement
def test_onnxruntime_measurement_of_tiny_layers():
    layers = [conv(), conv("dw", 16, 16, groups=16), linear(), linear("fc3", rows=(2, 3))]
    table = LatencyTable.measure(layers, step=8, threads=1, **FAST)
    assert table.backend == "onnxruntime" and table.runtime_version.startswith("onnxruntime")
    for layer in layers:
        ms = table.layer_cost(layer, layer.in_channels, layer.out_channels)
        assert math.isfinite(ms) and 0 < ms < 1000


@pytest.mark.parametrize("layer", [
    conv(cin=8, cout=12, hw=9, k=3, stride=2, groups=4, bias=True),
    conv(cin=8, cout=8, hw=6, k=3, groups=8, bias=False),
    linear(cin=8, cout=5, rows=(3,)),
    linear(cin=8, cout=5, rows=(2, 4), bias=False),
])
def test_single_layer_onnx_computes_the_layer(layer):
    """The hand-built ONNX is the layer torch would run: same output shape and values."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(layer_model_bytes(layer, layer.in_channels, layer.out_channels))
    w = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in model.graph.initializer}
    x = torch.randn(layer_input_shape(layer, layer.in_channels))
    sess = ortb.make_session(model.SerializeToString(), threads=1)
    got = torch.from_numpy(sess.run(None, {"x": x.numpy()})[0])
    if layer.kind == "conv":
        ref = F.conv2d(x, w["W"], w.get("B"), layer.stride, layer.padding, layer.dilation,
                       layer.groups)
    else:
        weight = w["W"] if w["W"].shape == (layer.out_channels, layer.in_channels) else w["W"].T
        ref = F.linear(x, weight, w.get("B"))
    assert tuple(got.shape) == tuple(layer.output_shape)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # torch's, on the CPU
def test_padding_same_with_even_kernels_and_padding_modes_are_timed_as_the_model_runs():
    """break22: "same" with an even kernel was recorded as symmetric (torch pads the extra at
    the end) and ``padding_mode`` not at all, so a table timed another layer."""
    import onnx
    from onnx import numpy_helper

    from fxprune.deploy.torch_backend import layer_module

    convs = torch.nn.ModuleList([
        torch.nn.Conv2d(3, 4, 2, padding="same"),
        torch.nn.Conv2d(4, 4, (4, 3), padding="same", dilation=(1, 2), padding_mode="reflect"),
        torch.nn.Conv2d(4, 4, 3, padding=(1, 2), padding_mode="circular", bias=False),
        torch.nn.Conv2d(4, 4, 2, padding="same", padding_mode="replicate"),
    ])
    model = torch.nn.Sequential(*convs)
    specs = fxprune.layer_specs(fxprune.prepare(model, torch.randn(2, 3, 9, 9)))
    assert [s.padding for s in specs] == [(0, 0, 1, 1), (1, 2, 2, 2), (1, 2), (0, 0, 1, 1)]
    assert [s.padding_mode for s in specs] == ["zeros", "reflect", "circular", "replicate"]
    assert len({s.signature() for s in specs}) == 4
    x = torch.randn(2, 3, 9, 9)
    for spec, conv in zip(specs, convs):
        onnx_model = onnx.load_from_string(layer_model_bytes(spec, spec.in_channels, spec.out_channels))
        w = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy())
             for t in onnx_model.graph.initializer}
        got = torch.from_numpy(ortb.make_session(onnx_model.SerializeToString(), threads=1)
                               .run(None, {"x": x.numpy()})[0])
        for ref_layer in (conv, layer_module(spec, spec.in_channels, spec.out_channels)):
            with torch.no_grad():
                ref_layer.weight.copy_(w["W"])
                if ref_layer.bias is not None:
                    ref_layer.bias.copy_(w["B"])
                ref = ref_layer(x)
            assert tuple(got.shape) == tuple(spec.output_shape)
            torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
        with torch.no_grad():
            x = conv(x)


def test_fp16_layer_is_timed_in_fp16():
    import onnx

    layer = conv(cin=8, cout=8, dtype="float16")
    model = onnx.load_from_string(layer_model_bytes(layer, 8, 8))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    table = LatencyTable.measure([layer], step=8, threads=1, **FAST)
    assert table.layer_cost(layer, 8, 8) > 0


def test_a_layer_the_tables_cannot_time_names_the_way_out():
    """A float64 layer and a transposed conv were refused without saying what to do (break22)."""
    with pytest.raises(DeployError, match=r"dtype 'float64'.*precision='fp32' or 'fp16'"):
        layer_model_bytes(conv(dtype="float64"), 16, 24)
    tconv = LayerSpec("t", "conv_transpose", 8, 8, (1, 8, 4, 4), (1, 8, 8, 8), (2, 2), (2, 2))
    with pytest.raises(DeployError, match=r"'conv' and 'linear' layers only: price this model by "
                                          r"cost='flops'"):
        layer_model_bytes(tconv, 8, 8)
    # break25 #6: measure found it only when its shuffled timing reached the layer
    with pytest.raises(DeployError, match=r"layer 't' has kind 'conv_transpose'"):
        LatencyTable.measure([conv(), tconv], step=8, threads=1,
                             **{**FAST, "log": lambda s: pytest.fail(f"started: {s}")})
    table = LatencyTable.measure([conv(dtype="float64")], step=8, threads=1, precision="fp32",
                                 timer=CountingTimer(), **FAST)
    assert table.layer_cost(conv(dtype="float64"), 16, 24) > 0


def test_a_layer_kind_is_one_entry_priced_by_its_formulas_and_timed_only_with_builders(
        monkeypatch):
    """review194 L7: a kind's formulas lived in four files; a new kind is now one LayerKind
    (its MACs, params and signature), and a latency table refuses it in one place, before
    any timing, until the deploy backends have builders for it."""
    from fxprune.cost import LAYER_KINDS, LayerKind, layer_key
    from fxprune.deploy.layer_onnx import TIMED_KINDS
    from fxprune.deploy.torch_backend import _MODULE_BUILDERS, layer_module

    # every kind a table times has an ONNX and a torch builder
    assert set(TIMED_KINDS) == set(_MODULE_BUILDERS) and set(TIMED_KINDS) <= set(LAYER_KINDS)
    scale = LayerKind("scale", 1, False, macs=lambda spec, c_in, c_out: 7 * c_in * c_out,
                      params=lambda spec, c_in, c_out: c_in + c_out,
                      signature=lambda spec: f"scale:{spec.dtype}")
    monkeypatch.setitem(LAYER_KINDS, "scale", scale)
    spec = LayerSpec("s", "scale", 4, 6, (2, 4), (2, 6))
    assert fxprune.FlopsCost().layer_cost(spec, 2, 3) == 2 * 7 * 2 * 3
    assert fxprune.ParamsCost().layer_cost(spec, 2, 3) == 5
    assert layer_key(spec) == "s:4x6:scale:float32" and not spec.depthwise
    with pytest.raises(DeployError, match=r"^layer 's' has kind 'scale'; latency tables time "
                                          r"'conv' and 'linear' layers only"):
        LatencyTable.measure([conv(), spec], step=8, threads=1,
                             **{**FAST, "log": lambda s: pytest.fail(f"started: {s}")})
    for build in (layer_model_bytes, layer_module):
        with pytest.raises(DeployError, match=r"has kind 'scale'"):
            build(spec, 4, 6)


# ---------------------------------------------------------------------------- caching
def test_identical_layers_are_measured_once():
    timer = CountingTimer()
    a, b = conv("block1.conv"), conv("block2.conv")  # same signature and counts
    table = LatencyTable.measure([a, b], step=8, timer=timer, **FAST)
    cins, couts = table.grid(a)
    assert len(timer.calls) == len(cins) * len(couts)
    assert table.layer_cost(b, 8, 8) == table.layer_cost(a, 8, 8)


def test_second_measure_with_cache_times_nothing(tmp_path):
    cache = tmp_path / "cache.json"
    layers = [conv(), linear()]
    first = CountingTimer()
    t1 = LatencyTable.measure(layers, step=8, cache=cache, timer=first, **FAST)
    assert first.calls and t1.stats["measured"] == len(first.calls)
    second = CountingTimer(lambda ci, co: -1.0)  # would be rejected if it were ever called
    t2 = LatencyTable.measure(layers, step=8, cache=cache, timer=second, **FAST)
    assert second.calls == [] and t2.stats["measured"] == 0
    for layer in layers:
        assert t2.layer_cost(layer, 12, 9) == t1.layer_cost(layer, 12, 9)
    # Another thread count is another cache key: it is measured again.
    third = CountingTimer()
    LatencyTable.measure(layers, step=8, cache=cache, threads=1, timer=third, **FAST)
    assert len(third.calls) == len(first.calls)


def test_cache_with_the_real_backend(tmp_path, monkeypatch):
    calls = []
    real = ortb.time_single
    monkeypatch.setattr(ortb, "time_single", lambda *a, **k: calls.append(1) or real(*a, **k))
    cache = tmp_path / "ort.json"
    layers = [conv(cin=8, cout=8)]
    LatencyTable.measure(layers, step=8, threads=1, cache=cache, **FAST)
    n = len(calls)
    assert n == 1
    again = LatencyTable.measure(layers, step=8, threads=1, cache=cache, **FAST)
    assert len(calls) == n and again.stats["measured"] == 0 and again.stats["cached"] == 1


def test_a_load_spike_is_outvoted_by_the_other_pass():
    spiked = {(16, 8)}

    def spiky(ci, co):  # one timing of (16, 8) ran during a burst of machine load
        if (ci, co) in spiked:
            spiked.discard((ci, co))
            return 100.0
        return bilinear_fn(ci, co)

    timer = CountingTimer(spiky)
    layer = conv(cin=32, cout=24)
    table = LatencyTable.measure([layer], step=8, timer=timer, **{**FAST, "passes": 2})
    assert timer.calls.count(("c", 16, 8)) == 2  # two passes
    assert table.layer_cost(layer, 16, 8) == pytest.approx(bilinear_fn(16, 8))


def test_passes_visit_points_in_different_orders():
    timer = CountingTimer()
    LatencyTable.measure([conv(cin=32, cout=24)], step=8, timer=timer, **{**FAST, "passes": 2})
    half = len(timer.calls) // 2
    first, second = timer.calls[:half], timer.calls[half:]
    assert sorted(first) == sorted(second) and first != second


def test_bad_cache_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "c.json"
    bad.write_text("{not json")
    with pytest.raises(DeployError, match="not valid JSON"):
        LatencyTable.measure([conv()], step=8, cache=bad, timer=CountingTimer(), **FAST)


def test_an_edited_cache_or_table_is_a_clear_error_and_negative_times_are_refused(tmp_path):
    """Missing keys, a list for a dict, a bad point key or a negative time: a DeployError
    naming the file (bare KeyError/AttributeError before; a cached -5 ms was used as a cost)."""
    cache, saved = tmp_path / "c.json", tmp_path / "t.json"
    LatencyTable.measure([conv()], step=8, cache=cache, timer=CountingTimer(), **FAST).save(saved)
    good_cache, good_table = json.loads(cache.read_text()), json.loads(saved.read_text())
    ctx = next(iter(good_cache["contexts"]))
    pk = next(iter(good_cache["contexts"][ctx]))
    point = next(iter(good_cache["contexts"][ctx][pk]))
    for edit in (lambda d: d.pop("contexts"), lambda d: d.update(contexts=[]),
                 lambda d: d["contexts"][ctx][pk].update({point: -5.0}),
                 lambda d: d["contexts"][ctx][pk].update({"a,b": 1.0})):
        doc = json.loads(json.dumps(good_cache))
        edit(doc)
        cache.write_text(json.dumps(doc))
        with pytest.raises(DeployError, match="malformed 'contexts'.*delete the cache file"):
            LatencyTable.measure([conv()], step=8, cache=cache, timer=CountingTimer(), **FAST)
    tpk = next(iter(good_table["points"]))
    tpoint = next(iter(good_table["points"][tpk]))
    for edit in (lambda d: d.pop("grids"), lambda d: d["points"][tpk].update({"a,b": 1.0}),
                 lambda d: d["points"][tpk].update({tpoint: float("nan")})):
        doc = json.loads(json.dumps(good_table))
        edit(doc)
        saved.write_text(json.dumps(doc))
        with pytest.raises(DeployError, match="is malformed .*measure the table again"):
            LatencyTable.load(saved)


# ------------------------------------------------------------------ errors, save/load
def test_unknown_layer_error_names_the_layer_and_the_fix():
    table = LatencyTable.measure([conv()], step=8, timer=CountingTimer(), **FAST)
    other = conv("layer4.2.conv3", cin=16, cout=24, hw=4)
    with pytest.raises(UnmeasuredLayerError, match=r"layer4\.2\.conv3.*measure"):
        table.layer_cost(other, 8, 8)


def test_save_load_round_trip(tmp_path):
    layers = [conv(), conv("dw", 16, 16, groups=16), linear()]
    table = LatencyTable.measure(layers, step=8, timer=CountingTimer(), **FAST)
    path = tmp_path / "t.json"
    table.save(path)
    loaded = LatencyTable.load(path)
    assert (loaded.backend, loaded.device, loaded.threads) == (table.backend, table.device,
                                                               table.threads)
    for layer in layers:
        assert loaded.grid(layer) == table.grid(layer)
        for ci, co in [(8, 8), (11, 9), (16, 10)]:
            assert loaded.layer_cost(layer, ci, co) == table.layer_cost(layer, ci, co)
    (tmp_path / "other.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(DeployError, match="not a saved LatencyTable"):
        LatencyTable.load(tmp_path / "other.json")



def test_a_saved_table_from_another_machine_is_warned_of(tmp_path):
    """break25 #10: a table edited to another CPU and ONNX Runtime loaded without a word."""
    from fxprune.deploy.common import cpu_name

    data = LatencyTable.measure([conv()], step=8, timer=CountingTimer(), **FAST).to_dict()
    here = {**data, "device": cpu_name(), "runtime_version": f"onnxruntime {ortb.version()}"}
    (tmp_path / "here.json").write_text(json.dumps(here))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LatencyTable.load(tmp_path / "here.json")
    there = {**here, "device": "Some Other CPU (AVX2)", "runtime_version": "onnxruntime 1.10.0"}
    (tmp_path / "there.json").write_text(json.dumps(there))
    with pytest.warns(RuntimeWarning, match=r"timed on Some Other CPU \(AVX2\) with onnxruntime "
                                            r"1\.10\.0, this machine is .*measure one here"):
        LatencyTable.load(tmp_path / "there.json")


def test_a_prepared_models_grid_times_only_the_widths_pruning_can_give():
    """break32 #5: a classifier's outputs never shrink, and a linear after a flatten reads
    whole channels of H x W inputs; its grid timed every multiple of the step (42% of
    resnet18's points were its fc's). Every width the knapsack can ask for is still priced."""
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 32, 3, padding=1)
            self.fc = torch.nn.Linear(32 * 5 * 5, 100)

        def forward(self, x):
            return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))

    prepared = fxprune.prepare(Net(), (torch.randn(1, 3, 5, 5),))
    timer = CountingTimer()
    table = LatencyTable.measure(prepared, step=8, timer=timer, **FAST)
    fc_points = {(ci, co) for name, ci, co in timer.calls if name == "fc"}
    assert fc_points == {(25 * k, 100) for k in (8, 16, 24, 32)}  # was 100 x 13 points
    conv_points = {(ci, co) for name, ci, co in timer.calls if name == "conv"}
    assert conv_points == {(3, k) for k in (8, 16, 24, 32)}
    # what a pruner asks for is on the grid: each group's kept counts on its steps
    from fxprune.budget import Budget
    from fxprune.units import UnitIndex, costed_layers
    index = UnitIndex(prepared)
    budget = Budget(index, costed_layers(index), table)
    for k in (8, 16, 24, 32):
        kept = np.arange(index.n) < k
        assert budget.total(kept) == pytest.approx(bilinear_fn(3, k) + bilinear_fn(25 * k, 100))


def test_measure_a_really_prepared_model():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=1, groups=16), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 10))
    prepared = fxprune.prepare(model, (torch.randn(1, 3, 16, 16),))
    table = LatencyTable.measure(prepared, step=8, timer=CountingTimer(), **FAST)
    specs = fxprune.layer_specs(prepared)
    assert len(specs) == 3 and all(s in table for s in specs)


def test_non_layer_specs_are_rejected():
    with pytest.raises(TypeError, match="LayerSpec"):
        LatencyTable.measure([np.zeros(3)], step=8, timer=CountingTimer(), **FAST)


@pytest.mark.parametrize("content, phrase", [("[1, 2]", "a JSON list"), ('"x"', "a JSON str"),
                                             ('{"format": "other"}', "format 'other'")])
def test_a_cache_or_table_of_another_kind_is_a_clear_error(tmp_path, content, phrase):
    bad = tmp_path / "c.json"
    bad.write_text(content)
    with pytest.raises(DeployError, match=f"not a latency cache \\({phrase}"):
        LatencyTable.measure([conv()], step=8, cache=bad, timer=CountingTimer(), **FAST)
    with pytest.raises(DeployError, match=f"not a saved LatencyTable \\({phrase}"):
        LatencyTable.load(bad)
    with pytest.raises(DeployError, match="is a folder"):
        LatencyTable.measure([conv()], step=8, cache=tmp_path, timer=CountingTimer(), **FAST)
    # break151 F6: a bare FileNotFoundError
    with pytest.raises(DeployError, match=r"none.json'?: cannot read a saved LatencyTable "
                                          r"\(No such file or directory\); check the path"):
        LatencyTable.load(tmp_path / "none.json")


def test_two_timers_sharing_a_cache_do_not_read_each_others_points(tmp_path):
    """break176 F6: a second timer= with the same cache file replayed the first one's numbers
    (and logs and tables said ONNX Runtime)."""
    def timer_a(layer, ci, co):
        return 1.0

    def timer_b(layer, ci, co):
        return 2.0

    said = []
    cache = tmp_path / "cache.json"
    first = LatencyTable.measure([conv()], **{**FAST, "log": said.append}, timer=timer_a, cache=cache)
    second = LatencyTable.measure([conv()], **FAST, timer=timer_b, cache=cache)
    layer = conv()
    assert first.layer_cost(layer, 8, 8) == 1.0 and second.layer_cost(layer, 8, 8) == 2.0
    assert second.runtime_version.endswith("timer_b") and "custom timer" in said[0]
    again = LatencyTable.measure([conv()], **FAST, timer=CountingTimer(lambda ci, co: 9.0),
                                 cache=cache)
    assert again.stats["cached"] == 0  # a third timer (a class instance): its own points too


def test_a_cache_of_a_timer_named_by_an_earlier_fxprune_is_said_with_the_way_to_reuse_it(
        tmp_path):
    """break184 F1: a cache written when a closure (or a def with defaults) was named by its
    bare __qualname__ was timed again in full, without a word."""
    def factory(scale):
        def timer(layer, ci, co):
            return scale * 1.0
        return timer

    cache = tmp_path / "cache.json"
    old = factory(2.0)
    old.fxprune_name = old.__qualname__  # as fxprune named it before
    LatencyTable.measure([conv()], **FAST, timer=old, cache=cache)
    said = []
    LatencyTable.measure([conv()], **{**FAST, "log": said.append}, timer=factory(2.0), cache=cache)
    assert any("holds 6 points of this timer under the name an earlier fxprune gave it "
               "('test_a_cache_of_a_timer_named_by_an_earlier_fxprune_is_said_with_the_way_to_"
               "reuse_it.<locals>.factory.<locals>.timer'" in line and
               "set timer.fxprune_name = " in line for line in said), said
    again = factory(2.0)
    again.fxprune_name = old.fxprune_name  # the way out it gives: every point read back
    assert LatencyTable.measure([conv()], **FAST, timer=again, cache=cache).stats["measured"] == 0


def test_partials_and_closures_of_one_timer_keep_their_own_points(tmp_path):
    """review178 F5: two functools.partials of one function (or two closures of one factory)
    were one name in the cache, so the second read the first one's points."""
    import functools

    def scaled(layer, ci, co, *, scale):
        return scale * 1.0

    def factory(scale, session):
        def timer(layer, ci, co):
            return session[0] * scale
        return timer

    cache, layer = tmp_path / "cache.json", conv()
    for make in (lambda s: functools.partial(scaled, scale=s), lambda s: factory(s, [1.0])):
        costs = [LatencyTable.measure([conv()], **FAST, timer=make(s), cache=cache)
                 .layer_cost(layer, 8, 8) for s in (2.0, 3.0)]
        assert costs == [2.0, 3.0]
        # the same arguments read the cache back (a captured list is named by its type)
        again = LatencyTable.measure([conv()], **FAST, timer=make(3.0), cache=cache)
        assert again.stats["cached"] > 0 and again.layer_cost(layer, 8, 8) == 3.0
    table = LatencyTable.measure([conv()], **FAST, timer=factory(2.0, [1.0]), cache=cache)
    assert table.runtime_version == ("custom-timer test_partials_and_closures_of_one_timer_keep_"
                                     "their_own_points.<locals>.factory.<locals>.timer[2.0, list]")
    # review181 F2: a loop's lambdas bind by default argument; a name of one's own wins
    loop = [lambda layer, ci, co, s=s: s for s in (4.0, 5.0)]
    assert [LatencyTable.measure([conv()], **FAST, timer=t, cache=cache).layer_cost(layer, 8, 8)
            for t in loop] == [4.0, 5.0]

    class Timer:
        def __init__(self, ms):
            self.ms = ms

        def __call__(self, layer, ci, co):
            return self.ms
    named = [Timer(6.0), Timer(7.0)]
    named[0].fxprune_name, named[1].fxprune_name = "six", "seven"
    tables = [LatencyTable.measure([conv()], **FAST, timer=t, cache=cache) for t in named]
    assert [t.layer_cost(layer, 8, 8) for t in tables] == [6.0, 7.0]
    assert tables[1].runtime_version == "custom-timer seven"


@pytest.mark.parametrize("bad", [None, float("nan"), -1.0, "fast"])
def test_a_timer_that_returns_no_time_is_named_with_the_layer(bad):
    """break176 F3: a custom timer returning None was a bare TypeError naming nothing."""
    with pytest.raises(DeployError, match=rf"timing '\S+' at \d+->\d+ channels gave "
                                          rf"{re.escape(repr(bad))} ms; a timer returns the "
                                          r"layer's time as a finite number of ms >= 0"):
        LatencyTable.measure([conv()], **FAST, timer=CountingTimer(lambda ci, co: bad))


@pytest.mark.parametrize("option", [{"passes": 0}, {"step": 0}, {"threads": 0}, {"warmup": -1},
                                    {"min_runs": 0}, {"min_runs": 5, "max_runs": 4}])
def test_counts_that_would_time_nothing_are_refused(option):
    name = [k for k in option if k != "min_runs"][-1] if len(option) > 1 else next(iter(option))
    with pytest.raises(DeployError, match=f"{name} must be an integer >= ") as refused:
        LatencyTable.measure([conv()], **{**FAST, **option}, timer=CountingTimer())
    # break199 F5: latency_cost's channel_step=0 was a ValueError, measure's step=0 not
    assert isinstance(refused.value, ValueError) and isinstance(refused.value, fxprune.ArgumentError)
    with pytest.raises(TypeError, match="progress is True or False") as refused:
        LatencyTable.measure([conv()], **{**FAST, "progress": "no"}, timer=CountingTimer())
    assert isinstance(refused.value, DeployError)


def test_a_tilde_path_is_read_where_it_is_written(tmp_path, monkeypatch):
    """Paths are used as given (the CLI expands ~): a cache written at "~/c.json" is found
    there again, and a table saved at "~/t.json" loads."""
    monkeypatch.chdir(tmp_path)
    first = LatencyTable.measure([conv()], step=8, cache="~/c.json", timer=CountingTimer(), **FAST)
    timer = CountingTimer()
    LatencyTable.measure([conv()], step=8, cache="~/c.json", timer=timer, **FAST)
    assert timer.calls == []  # every point came from the cache
    first.save("~/t.json")
    assert LatencyTable.load("~/t.json").grid(conv()) == first.grid(conv())
    with pytest.raises(IsADirectoryError, match="is a folder"):
        first.save(tmp_path)


# ---------------------------------------------------------------- timing under sustained load
@pytest.fixture
def fake_ort(monkeypatch):
    """The real ONNX Runtime path (so the CPU load is checked), with instant timings."""
    calls = []
    monkeypatch.setattr(ortb, "time_single", lambda *a, **k: calls.append(1) or 1.0)
    return calls


def _load(monkeypatch, value, cores=2):
    import fxprune.deploy.latency_table as lt

    readings = []
    monkeypatch.setattr(lt, "cpu_load", lambda: readings.append(value) or (value, cores))
    return readings


def test_points_timed_on_a_busy_cpu_are_flagged_until_timed_again_on_an_idle_one(
        tmp_path, monkeypatch, fake_ort):
    cache = tmp_path / "c.json"
    layers = [conv(cin=16, cout=16)]
    _load(monkeypatch, 4.0)
    expected = r"4 of 4 points .*load average 4\.0 before timing and 4\.0 after on 2 cores"
    with pytest.warns(RuntimeWarning, match=expected):
        busy = LatencyTable.measure(layers, step=8, threads=1, cache=cache, **FAST)
    assert busy.stats["under_load"] == 4 and busy.stats["load_average"] == [4.0, 4.0]
    assert busy.stats["measured"] == 4 and busy.stats["cached"] == 0
    marked = json.loads(cache.read_text())["under_load"]
    assert [len(pts) for ctx in marked.values() for pts in ctx.values()] == [4]
    # still busy: the cached points are used, and said to be what they are
    calls = len(fake_ort)
    with pytest.warns(RuntimeWarning, match="as the cache .* records"):
        again = LatencyTable.measure(layers, step=8, threads=1, cache=cache, **FAST)
    assert len(fake_ort) == calls and again.stats["under_load"] == 4 and again.stats["cached"] == 4
    # idle now: the flagged points are timed again and leave the cache's list
    _load(monkeypatch, 0.1)
    said = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        idle = LatencyTable.measure(layers, step=8, threads=1, cache=cache,
                                    **{**FAST, "log": said.append})
    assert len(fake_ort) == calls + 4 and idle.stats["measured"] == 4 and idle.stats["cached"] == 0
    # the table's line says why a cache's points are timed again (break190 F14: "0 cached")
    assert "(0 cached, 4 to time, 4 of them cached but timed under load, in" in said[0], said
    assert idle.stats["under_load"] == 0 and "under_load" not in json.loads(cache.read_text())


def test_a_saved_table_keeps_its_flags(tmp_path, monkeypatch, fake_ort):
    _load(monkeypatch, 4.0)
    with pytest.warns(RuntimeWarning):
        table = LatencyTable.measure([conv(cin=8, cout=8)], step=8, threads=1, **FAST)
    table.save(tmp_path / "t.json")
    with pytest.warns(RuntimeWarning, match="as the saved table .* records"):
        loaded = LatencyTable.load(tmp_path / "t.json")
    assert loaded.stats["under_load"] == 1
    data = json.loads((tmp_path / "t.json").read_text())
    # (break164 F4: a pair whose point does not parse was a bare ValueError)
    for bad in ("yes", [["x", "abc"]], [[3, "8,8"]], [["x", "-8,8"]]):
        data["under_load"] = bad
        (tmp_path / "bad.json").write_text(json.dumps(data))
        with pytest.raises(DeployError, match="malformed 'under_load'"):
            LatencyTable.load(tmp_path / "bad.json")


def test_a_malformed_cache_flag_list_is_a_clear_error_and_other_keys_survive(
        tmp_path, monkeypatch, fake_ort):
    cache = tmp_path / "c.json"
    _load(monkeypatch, 0.1)
    LatencyTable.measure([conv(cin=8, cout=8)], step=8, threads=1, cache=cache, **FAST)
    data = json.loads(cache.read_text())
    data["note"] = "kept"
    cache.write_text(json.dumps(data))
    LatencyTable.measure([conv(cin=8, cout=16)], step=8, threads=1, cache=cache, **FAST)
    assert json.loads(cache.read_text())["note"] == "kept"
    data["under_load"] = ["x"]
    cache.write_text(json.dumps(data))
    with pytest.raises(DeployError, match="malformed 'under_load'"):
        LatencyTable.measure([conv(cin=8, cout=8)], step=8, threads=1, cache=cache, **FAST)


def test_an_idle_cpu_flags_nothing(tmp_path, monkeypatch, fake_ort):
    cache = tmp_path / "c.json"
    readings = _load(monkeypatch, 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = LatencyTable.measure([conv(cin=16, cout=16)], step=8, threads=1, cache=cache,
                                     **FAST)
    assert readings == [1.0, 1.0] and table.stats["under_load"] == 0
    assert "under_load" not in json.loads(cache.read_text())


def test_load_from_the_timings_own_threads_is_not_flagged(monkeypatch, fake_ort):
    # 4 intra-op threads asked for on 2 cores: a load of 4 is the timing itself
    _load(monkeypatch, 4.4)
    table = LatencyTable.measure([conv(cin=8, cout=8)], step=8, threads=4, **FAST)
    assert table.stats["under_load"] == 0
    _load(monkeypatch, 4.6)
    with pytest.warns(RuntimeWarning, match="on 2 cores timing with 4 threads"):
        LatencyTable.measure([conv(cin=8, cout=8)], step=8, threads=4, **FAST)


def test_a_load_seen_only_after_timing_flags_the_points(tmp_path, monkeypatch, fake_ort):
    import fxprune.deploy.latency_table as lt

    values = iter([0.5, 3.0])  # 2 cores: 2.5 would still pass as brief background work
    monkeypatch.setattr(lt, "cpu_load", lambda: (next(values), 2))
    cache = tmp_path / "c.json"
    with pytest.warns(RuntimeWarning, match="load average 0.5 before timing and 3.0 after"):
        table = LatencyTable.measure([conv(cin=8, cout=16)], step=8, threads=1, cache=cache, **FAST)
    assert table.stats["under_load"] == 2 and "under_load" in json.loads(cache.read_text())


def test_a_table_measured_here_under_a_device_label_loads_without_a_warning(
        tmp_path, monkeypatch, fake_ort):
    """break26 #6: measure(device=LABEL) stored the label where load looked for the CPU, so
    every load warned that the table was another machine's."""
    _load(monkeypatch, 0.1)  # an idle machine: no load flags to warn of either
    table = LatencyTable.measure([conv(cin=8, cout=8)], step=8, threads=1, device="my-laptop",
                                 **FAST)
    assert table.device == "my-laptop"
    table.save(tmp_path / "t.json")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert LatencyTable.load(tmp_path / "t.json").device == "my-laptop"


def test_a_custom_timer_is_not_load_checked(monkeypatch):
    readings = _load(monkeypatch, 9.0)
    table = LatencyTable.measure([conv(cin=8, cout=8)], step=8, timer=CountingTimer(), **FAST)
    assert readings == [] and table.stats["under_load"] == 0


def test_a_torch_device_as_measures_device_is_where_it_times_not_a_label(fake_ort, monkeypatch):
    """break32 #2: device="cuda" labelled a table timed on the CPU (torch_device decided); it
    is now the device, as in deploy and calibrate_cost, and a backend's other device refused."""
    _load(monkeypatch, 0.1)
    table = LatencyTable.measure([conv(cin=8, cout=8)], backend="torch", step=8, threads=1,
                                 device="cpu", **FAST)
    assert table.torch_settings["torch_device"] == "cpu" and table.device != "cpu"  # its name
    with pytest.raises(DeployError, match="the onnxruntime backend times on the CPU, not on "
                                          "device='cuda'"):
        LatencyTable.measure([conv(cin=8, cout=8)], step=8, device="cuda", **FAST)
    if not torch.cuda.is_available():
        with pytest.raises(DeployError, match="CUDA is not available"):
            LatencyTable.measure([conv(cin=8, cout=8)], backend="torch", step=8, device="cuda",
                                 **FAST)


def test_a_saved_torch_table_from_another_machine_is_warned_of(tmp_path, monkeypatch):
    """break32 #8: only ONNX Runtime tables were checked against this machine on load."""
    _load(monkeypatch, 0.1)
    table = LatencyTable.measure([conv(cin=8, cout=8)], backend="torch", step=8, threads=1,
                                 torch_device="cpu", **FAST)
    table.save(tmp_path / "here.json")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LatencyTable.load(tmp_path / "here.json")
    data = json.loads((tmp_path / "here.json").read_text())
    data["timed_on"] = "NVIDIA A100-SXM4-80GB"
    (tmp_path / "there.json").write_text(json.dumps(data))
    with pytest.warns(RuntimeWarning, match="timed on NVIDIA A100-SXM4-80GB"):
        LatencyTable.load(tmp_path / "there.json")


def test_a_saved_table_missing_a_grid_point_is_refused_on_load(tmp_path):
    """break32 #6: it loaded, and failed at the first mask update, hours into training."""
    table = LatencyTable.measure([conv(cin=16, cout=32)], step=8, timer=CountingTimer(), **FAST)
    data = table.to_dict()
    points = next(iter(data["points"].values()))
    del points["16,32"]
    (tmp_path / "t.json").write_text(json.dumps(data))
    with pytest.raises(DeployError, match=r"lacks 1 grid point\(s\), the first \(16, 32\)"):
        LatencyTable.load(tmp_path / "t.json")


# --------------------------------------------------------- break42: dtype, clamping, edits
def _tiny_prepared():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(16, 8, 3, padding=1))
    return fxprune.prepare(model.eval(), (torch.randn(1, 3, 6, 6),))


def test_a_model_cast_after_prepare_is_timed_and_priced_at_its_dtype_now():
    """break42 #3: after pm.to(float64) the specs still said float32 (prepare's): the table
    timed float32 layers, and a float32 table priced the float64 model without a word."""
    float32_table = LatencyTable.measure(_tiny_prepared(), step=8, timer=CountingTimer(), **FAST)
    pm = _tiny_prepared().to(torch.float64)
    assert {s.dtype for s in fxprune.layer_specs(pm)} == {"float64"}
    dtypes = []
    table = LatencyTable.measure(pm, step=8, timer=lambda l, ci, co: dtypes.append(l.dtype) or 1.0,
                                 **FAST)
    assert set(dtypes) == {"float64"}
    fxprune.SMCP(pm, target=1.0, cost=table, channel_step=8)  # priced at float64
    # not at prepare's float32; break50 #5: and the refusal names the cast, not "measure first"
    with pytest.raises(UnmeasuredLayerError, match=r"layer '0' was measured at float32, and its "
                                                   r"weights are float64 now \(the model was cast"):
        fxprune.SMCP(pm, target=1.0, cost=float32_table, channel_step=8)
    # precision= still names the dtype to time at
    dtypes.clear()
    LatencyTable.measure(pm, step=8, precision="fp16", timer=lambda l, ci, co: dtypes.append(
        l.dtype) or 1.0, **FAST)
    assert set(dtypes) == {"float16"}


def test_a_model_cast_after_its_pruner_was_built_is_priced_again():
    """break159 F4: a pruner built on the float32 model kept pricing it with the float32
    timings after ``pm.double()`` mid-run, without a word (a pruner built after the cast was
    refused). At the next step or cost() it is priced again: refused by a float32 table, and
    by a table holding both dtypes priced at the new one."""
    pm = _tiny_prepared()
    table = LatencyTable.measure(pm, step=8, timer=lambda l, ci, co: 1.0 + 0.01 * ci * co, **FAST)
    pruner = fxprune.SMCP(pm, target=1.0, cost=table, channel_step=8)
    pm.double()
    for call in (pruner.cost, pruner.step):
        with pytest.raises(UnmeasuredLayerError, match=r"layer '0' was measured at float32, and its "
                                                       r"weights are float64 now"):
            call()
    # one table timing both dtypes (float64 layers twice as slow)
    both = LatencyTable.measure([*fxprune.layer_specs(_tiny_prepared()), *fxprune.layer_specs(pm)], step=8,
                                timer=lambda l, ci, co: (2.0 if l.dtype == "float64" else 1.0) * ci * co,
                                **FAST)
    pm.float()
    pruner = fxprune.SMCP(pm, target=1.0, cost=both, channel_step=8)
    dense = pruner.budget.dense
    pm.double()
    assert pruner.cost() == 1.0 and pruner.budget.dense == pytest.approx(2 * dense)
    assert {layer.spec.dtype for layer in pruner.budget.layers} == {"float64"}
    # review161 F5: a constant fitted at float32 is refused after the cast, as at construction
    from fxprune.cost import FlopsCost, WithFixedCost, layer_keys

    pm.float()
    fitted = WithFixedCost(FlopsCost(), fixed_cost=1e4, layers=layer_keys(fxprune.layer_specs(pm), FlopsCost()))
    pruner = fxprune.SMCP(pm, target=1.0, cost=fitted, channel_step=8)
    pm.double()
    with pytest.raises(ValueError, match=r"fitted on this model's layers at float32, and they are float64 now"):
        pruner.cost()
    flops = fxprune.SMCP(pm, target=1.0, channel_step=8)  # FLOPs do not move with the dtype
    before = flops.cost()
    pm.float()
    assert flops.cost() == before


def test_cucbs_fitted_rho_is_fitted_again_after_a_cast():
    """review161 F5: after a cast, CUCB's common fraction stayed fitted to the old dtype's
    prices; it is refitted, as a CUCB built after the cast fits it, and a target the new
    prices put below the narrowest model is refused."""
    pm = _tiny_prepared()
    # float64 layers priced with a large fixed part: the common fraction fitting 0.6 moves
    both = LatencyTable.measure(
        [*fxprune.layer_specs(pm), *fxprune.layer_specs(_tiny_prepared().double())], step=1,
        timer=lambda l, ci, co: (40.0 + ci * co) if l.dtype == "float64" else float(ci * co),
        **FAST)
    kwargs = dict(target=0.6, cost=both, channel_step=1, rho=None, mode="ratio",
                  execution="masked", explore=10, warmup=1)
    pruner = fxprune.CUCB(pm, **kwargs)
    pm.double()
    fresh = fxprune.CUCB(_tiny_prepared().double(), **kwargs)
    assert (pruner.rho, fresh.rho) == (0.59375, 0.40625)
    pruner.cost()
    assert pruner.rho == fresh.rho
    high_floor = LatencyTable.measure(
        [*fxprune.layer_specs(_tiny_prepared()), *fxprune.layer_specs(pm)], step=1,
        timer=lambda l, ci, co: (1e4 + ci * co) if l.dtype == "float64" else float(ci * co),
        **FAST)
    pm.float()
    pruner = fxprune.CUCB(pm, **{**kwargs, "cost": high_floor, "target": 0.3})
    pm.double()
    with pytest.raises(ValueError, match=r"target 0.3 of dense is below the narrowest model"):
        pruner.cost()


def test_a_width_below_the_grid_is_warned_of_once_per_layer_signature():
    """break42 #4: a table measured at step 16 priced 8 channels as 16, without a word."""
    layer = conv(cin=32, cout=32)
    table = LatencyTable.measure([layer, conv("twin", cin=32, cout=32)], step=16,
                                 timer=CountingTimer(), **FAST)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # widths on the grid (or between its points): silent
        for ci, co in [(16, 16), (24, 32), (32, 32), (0, 8)]:
            table.layer_cost(layer, ci, co)
    with pytest.warns(RuntimeWarning) as caught:
        assert table.layer_cost(layer, 8, 16) == pytest.approx(bilinear_fn(16, 16))  # clamped
        table.layer_cost(layer, 4, 4)
        table.layer_cost(conv("twin", cin=32, cout=32), 16, 8)  # same signature: said already
    (w,) = caught
    text = str(w.message)
    assert "layer 'c'" in text and layer.signature() in text and "at 8 input channels" in text
    assert "smallest count its grid was measured at (16)" in text and "finer step" in text
    small = conv(cin=32, cout=32, hw=4)  # another signature: its own warning, on its output
    table = LatencyTable.measure([small], step=16, timer=CountingTimer(), **FAST)
    with pytest.warns(RuntimeWarning, match="at 4 output channels.*measured at \\(16\\)"):
        table.layer_cost(small, 16, 4)


def _edited_table_dict(edit):
    table = LatencyTable.measure([conv(cin=32, cout=32), conv("dw", cin=16, cout=16, groups=16)],
                                 step=8, timer=CountingTimer(), **FAST)
    data = table.to_dict()
    dense = next(k for k in data["grids"] if "g1b" in k)
    dw = next(k for k in data["grids"] if "dwb" in k)
    edit(data, data["grids"][dense], data["grids"][dw])
    return data


@pytest.mark.parametrize("edit, field", [
    (lambda d, g, dw: g.update(c_in=[32, 24, 16, 8]), "'c_in'"),
    (lambda d, g, dw: g.update(c_in=[8, 24, 16, 32]), "'c_in'"),
    (lambda d, g, dw: g.update(c_in=[8, 16, 24]), "'c_in'"),  # the dense count dropped
    (lambda d, g, dw: g.update(c_in=[-8, 16, 24, 32]), "'c_in'"),
    (lambda d, g, dw: g.update(c_out=[8, 16, 24, 32, 40]), "'c_out'"),  # beyond dense
    (lambda d, g, dw: g.update(c_out=[8, 16.5, 24, 32]), "'c_out'"),
    (lambda d, g, dw: g.update(c_out=[]), "'c_out'"),
    (lambda d, g, dw: g.update(diagonal=True, c_out=list(g["c_in"])), "'diagonal'"),
    (lambda d, g, dw: dw.update(diagonal=False), "'diagonal'"),
    (lambda d, g, dw: d.update(threads="two"), "'threads'"),
    (lambda d, g, dw: d.update(threads=0), "'threads'"),
    (lambda d, g, dw: d.update(batch=0), "'batch'"),
    (lambda d, g, dw: d.update(batch="8"), "'batch'"),
    (lambda d, g, dw: d.update(dtype=16), "'dtype'"),
    (lambda d, g, dw: d.update(backend=["onnxruntime"]), "'backend'"),
])
def test_an_edited_tables_impossible_axes_and_settings_are_refused(tmp_path, edit, field):
    """break42 #6: unsorted, negative or out-of-range axes loaded (bisect then priced wrong
    widths), as did a flipped diagonal and threads "two"."""
    path = tmp_path / "t.json"
    path.write_text(json.dumps(_edited_table_dict(edit)))
    with pytest.raises(DeployError, match=f"{field}.*measure the table again") as err:
        LatencyTable.load(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert LatencyTable.from_dict(_edited_table_dict(lambda d, g, dw: None)) is not None


@pytest.mark.parametrize("field, value, timed", [("batch", 8, "1"), ("dtype", "float16", "float32")])
def test_a_tables_header_that_contradicts_its_timings_is_refused_on_load(tmp_path, field, value, timed):
    """break106 #4: a header edited to float16 (or batch 8) loaded, and pricing a float32
    batch-1 model then said the model "was cast since" (or "is batch 8"): false of the model."""
    data = _edited_table_dict(lambda d, g, dw: d.update({field: value}))
    path = tmp_path / "t.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DeployError, match=rf"records {field} {value}, but its layers were timed at "
                                          rf"{field} {timed} \(the file was edited or mixed\); "
                                          r"measure the table again"):
        LatencyTable.load(path)


def _two_groups_and_their_table():
    """Three convs (two prunable groups), prepared, and a MACs-timed table of them at step 8."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3), torch.nn.ReLU(), torch.nn.Conv2d(32, 32, 3),
                                torch.nn.ReLU(), torch.nn.Conv2d(32, 8, 1))
    pm = fxprune.prepare(model, (torch.randn(1, 3, 12, 12),))
    macs = lambda layer, ci, co: layer.macs(ci, co) / 1e6 + 0.01  # noqa: E731
    return pm, LatencyTable.measure(pm, step=8, timer=macs, **FAST), macs


def test_a_method_on_a_table_at_its_channel_step_saves_and_resumes_quietly():
    """break49 #6, break50 #3: state_dict() priced its half-width fingerprint at channel step 1,
    below a step-8 table's grid, and warned with advice the run already followed; a table that
    is coarser warned once per layer (14 on mobilenet_v3_small)."""
    pm, table, macs = _two_groups_and_their_table()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pruner = fxprune.SMCP(pm, 0.5, cost=table, channel_step=8)
        fxprune.SMCP(pm, 0.5, cost=table, channel_step=8).load_state_dict(pruner.state_dict())
    coarse = LatencyTable.measure(pm, step=16, timer=macs, **FAST)
    with pytest.warns(RuntimeWarning, match="below the smallest count.*said once per table") as said:
        fxprune.SMCP(pm, 0.5, cost=coarse, channel_step=8)
    assert sum("below the smallest count" in str(w.message) for w in said) == 1


def test_an_unreachable_target_prices_its_advice_without_the_tables_warning():
    """break210 F2, break211 F1: a target below the floor was refused with a warning that the
    table, timed at the method's own step, needed a finer one: the error's "at channel_step 1"
    advice was priced on it. That spent the table's one warning, so a real one later was not
    given."""
    pm, table, macs = _two_groups_and_their_table()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for min_kept in (0.0, 0.5):
            with pytest.raises(fxprune.InfeasibleBudget, match=r"below the narrowest model"):
                fxprune.SMCP(pm, 0.05, cost=table, channel_step=8, min_kept=min_kept)
    with pytest.warns(RuntimeWarning, match="priced at 4 output channels, below the smallest count"):
        fxprune.SMCP(pm, 0.5, cost=table, channel_step=4)  # the real one, still said


def test_a_table_of_a_model_that_kept_a_layers_channels_says_so_not_finer_step():
    """break164 F2: a table measured where c2's outputs reached the model's output (kept
    whole: its grid holds 32 only), used for a model that prunes them, priced every width as
    32; the warning advised a finer step, which could not help."""
    torch.manual_seed(0)
    head = [torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(), torch.nn.Conv2d(16, 32, 3)]
    x = torch.randn(1, 3, 12, 12)
    kept_whole = fxprune.prepare(torch.nn.Sequential(*head), (x,))
    prunes = fxprune.prepare(torch.nn.Sequential(*head, torch.nn.ReLU(), torch.nn.Conv2d(32, 8, 1)), (x,))
    macs = lambda layer, ci, co: layer.macs(ci, co) / 1e6 + 0.01  # noqa: E731
    table = LatencyTable.measure(kept_whole, step=8, timer=macs, **FAST)
    (c2,) = [s for s in fxprune.layer_specs(prunes) if s.name == "2"]
    with pytest.warns(RuntimeWarning, match=r"layer '2' .* was priced at 8 output channels, but "
                                            r"its grid holds only 32: the table was measured on a "
                                            r"model where these channels were kept whole") as said:
        assert table.layer_cost(c2, 16, 8) == table.layer_cost(c2, 16, 32)
    assert "finer step" not in str(said[0].message)
    del table.step  # a table pickled before the step was recorded (review172 F10)
    table._clamp_warned = False
    with pytest.warns(RuntimeWarning, match="kept whole"):
        table.layer_cost(c2, 16, 8)
    assert "step" not in table.to_dict()


def test_a_flat_latency_table_is_named_as_such():
    """On an H200 a small net at batch 4 is launch-bound: the table timed the narrowest model
    at 1.014 of dense (noise), and SMCP said to "check the cost model". It now says removing
    channels saves no time at that batch, and what to do."""
    from fxprune.deploy import LatencyTable

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(32, 8, 1))
    pm = fxprune.prepare(model, (torch.randn(1, 3, 16, 16),))
    flat = LatencyTable.measure(pm, step=8, threads=1, batch=4, progress=False, log=lambda s: None,
                                timer=lambda layer, ci, co: 0.02 - 1e-4 * (ci + co) / 32)
    with pytest.raises(ValueError, match=r"the latency table \(onnxruntime on .*, batch 4\) times "
                                         r"the narrowest allowed model at 1\.\d+ of dense: removing "
                                         r"channels saves no time there .*prune by cost='flops'"):
        fxprune.SMCP(pm, target=0.9, cost=flat, channel_step=8)


def test_a_table_of_another_batch_names_its_batch():
    """break66 #4: a table measured at batch 1 pricing a model prepared at batch 4 said "no
    latency was measured ... call LatencyTable.measure", not which batch it holds."""
    table = LatencyTable.measure(_tiny_prepared(), step=8, timer=CountingTimer(), **FAST)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(16, 8, 3, padding=1))
    pm4 = fxprune.prepare(model.eval(), (torch.randn(4, 3, 6, 6),))
    with pytest.raises(UnmeasuredLayerError, match=r"layer '0' was measured at batch 1, and the "
                                                   r"model's example inputs are batch 4: measure "
                                                   r"a table at batch 4"):
        fxprune.SMCP(pm4, target=1.0, cost=table, channel_step=8)


def test_a_remeasure_stopped_midway_keeps_the_flags_of_points_it_did_not_time(
        tmp_path, monkeypatch, fake_ort):
    """break74 F2: the cache write of a re-measure stopped by Ctrl-C (or a periodic save before
    a kill) unflagged every point loaded from the cache, timed again or not: the next measure
    used the busy timings as clean, without a word."""
    import fxprune.deploy.onnxruntime_backend as ortb

    cache = tmp_path / "c.json"
    layers = [conv(cin=16, cout=16)]
    _load(monkeypatch, 4.0)
    with pytest.warns(RuntimeWarning):
        LatencyTable.measure(layers, step=8, threads=1, cache=cache, **FAST)
    _load(monkeypatch, 0.1)
    timed = []

    def stopped_after_one(*args, **kwargs):
        if timed:
            raise KeyboardInterrupt
        timed.append(1)
        return 2.0

    monkeypatch.setattr(ortb, "time_single", stopped_after_one)
    with pytest.raises(KeyboardInterrupt):
        LatencyTable.measure(layers, step=8, threads=1, cache=cache, **FAST)
    doc = json.loads(cache.read_text())
    (flags,) = [pts for ctx in doc["under_load"].values() for pts in ctx.values()]
    (points,) = [pts for ctx in doc["contexts"].values() for pts in ctx.values()]
    retimed = [pt for pt, ms in points.items() if ms == 2.0]
    assert len(retimed) == 1 and sorted(flags) == sorted(set(points) - set(retimed))
    with pytest.warns(RuntimeWarning, match="3 of 4 points"):  # still busy: used, and said
        _load(monkeypatch, 4.0)
        LatencyTable.measure(layers, step=8, threads=1, cache=cache, **FAST)


def test_save_replaces_only_a_saved_table(tmp_path):
    """break74 F3: table.save onto the measure's cache (a user's mix-up) replaced it, and with
    it every thread count's, batch's and machine's timings; any other file went the same way."""
    cache, saved, notes = tmp_path / "c.json", tmp_path / "t.json", tmp_path / "notes.txt"
    table = LatencyTable.measure([conv()], step=8, cache=cache, timer=CountingTimer(), **FAST)
    before = cache.read_text()
    with pytest.raises(DeployError, match=r"c.json' exists and is a latency cache .*save "
                                          r"replaces only a table it wrote; give another path"):
        table.save(cache)
    assert cache.read_text() == before
    notes.write_text("mine")
    with pytest.raises(DeployError, match="exists and is not a saved latency table"):
        table.save(notes)
    assert notes.read_text() == "mine"
    table.save(saved)
    table.save(saved)  # its own file: replaced
    assert LatencyTable.load(saved).grid(conv()) == table.grid(conv())


def test_save_and_the_cache_leave_a_read_only_file_and_a_link_as_they_are(tmp_path,
                                                                         monkeypatch):
    """break164 F1: save and measure(cache=) renamed over a read-only table or cache of
    another user (a rename needs write permission on the folder only), and replaced a link to
    a shared table with a new file, the shared one unchanged. Refused as open(path, "w")
    would be, the cache before any timing."""
    import os

    table = LatencyTable.measure([conv()], step=8, timer=CountingTimer(), **FAST)
    shared, cache = tmp_path / "shared.json", tmp_path / "cache.json"
    table.save(shared)
    LatencyTable.measure([conv()], step=8, cache=cache, timer=CountingTimer(), **FAST)
    before = {p: p.read_bytes() for p in (shared, cache)}
    link = tmp_path / "link.json"
    link.symlink_to(shared)
    with pytest.raises(DeployError, match=r"link.json is a symbolic link \(to .*shared.json\): "
                                          r"writing would replace the link with a new file"):
        table.save(link)
    assert link.is_symlink()
    real_access = os.access
    # (as root, every file is writable: the check is os.access's, as open's permission is)
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: (
        False if os.fspath(p) in (str(shared), str(cache)) and mode == os.W_OK
        else real_access(p, mode, **kw)))
    with pytest.raises(DeployError, match=r"shared.json is read-only for this user, so it is "
                                          r"not replaced"):
        table.save(shared)
    timer = CountingTimer()
    with pytest.raises(DeployError, match=r"cache .*cache.json is read-only for this user"):
        LatencyTable.measure([conv(cin=32)], step=8, cache=cache, timer=timer, **FAST)
    assert timer.calls == []  # refused before any timing
    # every point cached: read, not written, so a read-only cache serves (review165 F2)
    assert LatencyTable.measure([conv()], step=8, cache=cache, timer=timer,
                                **FAST).grid(conv()) == table.grid(conv())
    assert timer.calls == []
    assert {p: p.read_bytes() for p in (shared, cache)} == before


def test_a_layer_measured_in_another_shape_is_named_with_what_the_table_holds():
    """break164 F6: a table of a 28x28 model used at 32x32 said only "no latency was
    measured", where a batch or dtype mismatch names what the table holds."""
    table = LatencyTable.measure([conv(hw=8)], step=8, timer=CountingTimer(), **FAST)
    with pytest.raises(UnmeasuredLayerError, match=r"^no latency was measured for layer 'c' "
                                                   r"\(conv 16->24, b1\|conv2d\[n1,16x16\].*; the "
                                                   r"table holds 'c' as 16->24 channels, "
                                                   r"b1\|conv2d\[n1,8x8\]"):
        table.layer_cost(conv(hw=16), 16, 24)
    with pytest.raises(UnmeasuredLayerError) as other:  # a layer it never saw: nothing to add
        table.layer_cost(conv(name="other", hw=16), 16, 24)
    assert "the table holds" not in str(other.value)


def test_a_cache_whose_under_load_lists_hold_no_points_is_refused_on_read(tmp_path, monkeypatch,
                                                                          fake_ort):
    """break74 F4: [16, 32] in an under_load list was read, and the write after all the timing
    failed with a TypeError traceback, the new timings lost."""
    cache = tmp_path / "c.json"
    LatencyTable.measure([conv(cin=8, cout=8)], step=8, threads=1, cache=cache, **FAST)
    doc = json.loads(cache.read_text())
    (ctx,) = doc["contexts"]
    (pk,) = doc["contexts"][ctx]
    doc["under_load"] = {ctx: {pk: [16, 32]}}
    cache.write_text(json.dumps(doc))
    calls = len(fake_ort)
    with pytest.raises(DeployError, match="malformed 'under_load' entry"):
        LatencyTable.measure([conv(cin=16, cout=16)], step=8, threads=1, cache=cache, **FAST)
    assert len(fake_ort) == calls  # refused before timing anything


class _PerFrame(torch.nn.Module):
    """(B, T*3, H, W) -> B*T frames through the convs -> averaged over time -> a head."""

    def __init__(self, frames=4):
        super().__init__()
        self.frames = frames
        self.c1, self.fc = torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.Linear(16, 10)

    def forward(self, x):
        b, _, h, w = x.shape
        f = torch.relu(self.c1(x.reshape(b * self.frames, 3, h, w)))
        return self.fc(f.mean((2, 3)).reshape(b, self.frames, 16).mean(1))


def test_batch_refuses_a_layer_whose_leading_dim_is_not_the_batch():
    """break74 F1: batch=8 set every layer's dim 0 to 8; a per-frame model's convs run on B*T
    frames (32 at batch 8) and were timed on 8, priced 4x too cheap against the head, silently.
    Specs given alone are judged by the dim 0 most of them share."""
    import fxprune

    pm = fxprune.prepare(_PerFrame().eval(), (torch.randn(1, 12, 8, 8),))
    with pytest.raises(DeployError, match=r"batch=8: layer 'c1' runs on a leading dim of 4, not "
                                          r"the example batch 1 .*prepare the model with example "
                                          r"inputs of batch 8 and measure without batch="):
        LatencyTable.measure(pm, step=8, batch=8, timer=CountingTimer(), **FAST)
    with pytest.raises(DeployError, match="layer 'odd' runs on a leading dim of 4, not the "
                                          "example batch 1"):
        LatencyTable.measure([conv("a"), conv("b", cin=24), dataclasses.replace(
            conv("odd"), input_shape=(4, 16, 8, 8), output_shape=(4, 24, 8, 8))], step=8,
            batch=8, timer=CountingTimer(), **FAST)
    # without batch= the layers are timed as the model runs them
    table = LatencyTable.measure(pm, step=8, timer=CountingTimer(), **FAST)
    assert len(table) > 0


def test_latency_cost_times_at_the_step_given_and_says_when_that_grid_is_large(monkeypatch):
    """break74 F5: CCP's and CUCB's channel_step 1 made cost="latency" time every width, 692,800
    points on resnet18 at 64x64 (hours), without a word: it is said first, with the count at
    step 8. The table stays at the method's step: widths between multiples of 8 run at times
    no interpolation gives (break75 #1: 17 of 24 channels priced 0.41, measured 0.86)."""
    import fxprune
    from fxprune.deploy import latency_cost, measured_cost

    macs = lambda layer, ci, co: layer.macs(ci, co) / 1e6 + 0.01  # noqa: E731
    real, asked = LatencyTable.measure.__func__, []

    def timed_by_macs(cls, layers, **kw):
        asked.append(kw)
        return real(cls, layers, timer=macs, **{**FAST, **kw, "progress": False})

    monkeypatch.setattr(LatencyTable, "measure", classmethod(timed_by_macs))
    monkeypatch.setattr(measured_cost, "LARGE_GRID", 500)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3), torch.nn.ReLU(), torch.nn.Conv2d(32, 32, 3),
                                torch.nn.ReLU(), torch.nn.Conv2d(32, 8, 1))
    pm = fxprune.prepare(model, (torch.randn(1, 3, 12, 12),))
    from fxprune.deploy.latency_table import grid_points

    step1, step8 = grid_points(pm, 1), grid_points(pm, 8)
    assert step1 > 500 > step8
    with pytest.warns(UserWarning, match=rf"cost='latency' at channel_step=1 times a latency table "
                                         rf"of {step1:,} layer shapes, .*channel_step=8 times "
                                         rf"{step8}"):
        pruner = fxprune.CCP(pm, mode="adaptive", target=0.5, collect=1, channel_step=1,
                             cost=latency_cost(pm, "latency", channel_step=1))
    assert pruner.channel_step == 1 and asked[-1]["step"] == 1
    assert sum(map(len, pruner.budget.model._points.values())) == step1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # SMCP's step 8: a small grid, nothing said
        latency_cost(pm, channel_step=8)
    assert asked[-1]["step"] == 8
    # break145 F7: at step 8 or more the advice is a coarser step than the one given
    monkeypatch.setattr(measured_cost, "LARGE_GRID", step8 - 1)
    with pytest.warns(UserWarning, match=rf"at channel_step=8 times a latency table of {step8:,} "
                                         r"layer shapes, twice \(minutes to hours on a CPU; "
                                         r"the time left is said once its pace is known, if over 5 "
                                         r"minutes\); channel_step=16 times "
                                         rf"{grid_points(pm, 16):,}, or measure the "
                                         r"table once and keep it \(cache=...; a recipe: prune.channel_step, "
                                         r"prune.latency_cache; the Lightning callback: "
                                         r"channel_step=, latency_cache=\)"):
        latency_cost(pm, "latency", channel_step=8)


def test_latency_cost_sends_the_table_and_calibration_lines_to_log(monkeypatch, capsys):
    """break196 F10: progress=False still printed the table's lines; log= takes them, as
    LatencyTable.measure's and calibrate_cost's own log= do."""
    import fxprune
    from fxprune.deploy import calibrate, latency_cost

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(), torch.nn.Conv2d(16, 8, 1))
    pm = fxprune.prepare(model, (torch.randn(1, 3, 8, 8),))
    lines = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # (a shared CPU's load)
        table = latency_cost(pm, "latency", progress=False, log=lines.append)
    assert isinstance(table, LatencyTable) and lines and capsys.readouterr().out == ""
    given = []
    real = LatencyTable.measure.__func__
    monkeypatch.setattr(LatencyTable, "measure", classmethod(
        lambda cls, layers, **kw: real(cls, layers, **{**kw, "timer": CountingTimer()})))
    monkeypatch.setattr(calibrate, "calibrate_cost", lambda table, pm, **kw: given.append(kw))
    monkeypatch.setattr(calibrate, "calibration_kept", lambda *a: None)
    latency_cost(pm, "latency+fixed", progress=False, log=lines.append)
    assert given[0]["log"] == lines.append and capsys.readouterr().out == ""
    with pytest.raises(TypeError, match=r"^log is a function taking one line \(print, "
                                        r"logger.info\), got list$"):
        latency_cost(pm, log=lines)


def test_the_benchmarks_batch_spelling_of_a_latency_cost_says_how_to_get_that_table():
    """break74 F6: "latency+fixed:64" (the README's benchmark command) was refused by the API
    without saying how to price at batch 64."""
    import fxprune

    pm = fxprune.prepare(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 4, 1)),
                         (torch.randn(1, 3, 8, 8),))
    with pytest.raises(ValueError, match=r"':64' batch form is bench_vs_torch_pruning.py's; here, "
                                         r"measure the table at that batch and pass it: table = "
                                         r"fxprune.deploy.LatencyTable.measure\(pm, batch=64\), "
                                         r"then cost=fxprune.deploy.calibrate_cost\(table, pm\)"):
        fxprune.SMCP(pm, 0.5, cost="latency+fixed:64")
    with pytest.raises(ValueError, match=r"batch=1\), then cost=table"):
        fxprune.SMCP(pm, 0.5, cost="latency:1")


def test_edited_tables_and_caches_of_another_format_and_bad_timing_options_are_refused(tmp_path):
    """break74 (minor): a table whose dtype was edited to int8 loaded (pricing then said the
    model had been cast), a backend fxprune lacks loaded, a version-99 table or cache was read
    as version 1, and target_ms -1 or nan was taken."""
    table = LatencyTable.measure([conv()], step=8, timer=CountingTimer(), **FAST)
    for key, value, said in (("dtype", "int8", "one of float32, float16, bfloat16, float64"),
                             ("backend", "foo", "one of onnxruntime, tensorrt, torch"),
                             ("version", 99, "1 \\(this fxprune's format")):
        data = {**table.to_dict(), key: value}
        with pytest.raises(DeployError, match=rf"has '{key}': .*, not {said}"):
            LatencyTable.from_dict(data)
    cache = tmp_path / "c.json"
    LatencyTable.measure([conv()], step=8, cache=cache, timer=CountingTimer(), **FAST)
    cache.write_text(json.dumps({**json.loads(cache.read_text()), "version": 99}))
    with pytest.raises(DeployError, match="latency cache of version 99, not this fxprune's 1"):
        LatencyTable.measure([conv()], step=8, cache=cache, timer=CountingTimer(), **FAST)
    for bad in (-1, 0, float("nan"), float("inf"), "5"):
        with pytest.raises(DeployError, match="target_ms must be a number of milliseconds > 0"):
            LatencyTable.measure([conv()], step=8, timer=CountingTimer(),
                                 **{**FAST, "target_ms": bad})
    # break74: "" meant no cache, and a point "-16,16" was read as a width
    for empty in ("", "  "):
        with pytest.raises(DeployError, match="cache is an empty path"):
            LatencyTable.measure([conv()], step=8, cache=empty, timer=CountingTimer(), **FAST)
    # break129 F7: a cache under a file timed the whole grid, then a bare FileExistsError lost it
    in_the_way = tmp_path / "notes.txt"
    in_the_way.write_text("mine")
    timer = CountingTimer()
    with pytest.raises(DeployError, match=rf"cache '.*notes.txt/sub/c.json': {in_the_way} is a file, "
                                          r"not a folder; give a cache path in a folder"):
        LatencyTable.measure([conv()], step=8, cache=in_the_way / "sub" / "c.json", timer=timer,
                             **FAST)
    assert timer.calls == [] and in_the_way.read_text() == "mine"
    with pytest.raises(DeployError, match=rf"{in_the_way} is a file, not a folder; save the table"):
        table.save(in_the_way / "t.json")
    data = table.to_dict()
    key = next(iter(data["points"]))
    data["points"][key] = {"-16,16": 1.0, **data["points"][key]}
    with pytest.raises(DeployError, match="is malformed .*point '-16,16' is not two channel"):
        LatencyTable.from_dict(data)
    # break164 F7: " 8, 24" was read as (8, 24) and overrode "8,24"; a key given twice
    # (a hand edit) kept the last value
    (tmp_path / "spaced.json").write_text(json.dumps({**data, "points": {
        key: {" 16, 16": 1.0, **{k: v for k, v in data["points"][key].items() if k != "-16,16"}}}}))
    with pytest.raises(DeployError, match=r"is malformed .*point ' 16, 16' is not 'c_in,c_out'"):
        LatencyTable.load(tmp_path / "spaced.json")
    (tmp_path / "twice.json").write_text(
        json.dumps(table.to_dict()).replace('"threads": ', '"threads": 4, "threads": ', 1))
    with pytest.raises(DeployError, match=r"has the key 'threads' twice \(a hand edit\?\); keep one"):
        LatencyTable.load(tmp_path / "twice.json")


def test_a_group_a_grouped_conv_ties_is_timed_at_every_width_its_channel_step_keeps():
    """break128 F1: the grid stepped by `step` units, not channels: under groups=4 (units of 4
    channels) a table at step 8 timed a 64-channel reader at 32 and 64 inputs only, and SMCP's
    8, 16 and 24 at channel_step=8 were all priced as 32 (a clamp warning whose advice, a step
    at most channel_step, had been followed)."""
    import fxprune
    from fxprune.deploy.latency_table import _as_layer_specs

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 32, 3, padding=1)
            self.g = nn.Conv2d(32, 64, 3, padding=1, groups=4)
            self.b = nn.Conv2d(64, 32, 3, padding=1)
            self.fc = nn.Linear(32, 10)

        def forward(self, x):
            return self.fc(F.relu(self.b(F.relu(self.g(F.relu(self.a(x)))))).mean((2, 3)))

    pm = fxprune.prepare(Tied(), (torch.randn(1, 3, 16, 16),))
    specs = {s.name: s for s in _as_layer_specs(pm)}
    assert layer_grid(specs["b"], 8)[0] == [8, 16, 24, 32, 40, 48, 56, 64]
    assert layer_grid(specs["a"], 8)[1] == [8, 16, 24, 32]
    assert layer_grid(specs["b"], 16)[0] == [16, 32, 48, 64]
    timer = CountingTimer()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no width priced below its grid (the clamp warning)
        table = LatencyTable.measure(pm, step=8, timer=timer, **FAST)
        pruner = fxprune.SMCP(pm, 0.5, table, channel_step=8)
    b = specs["b"]
    assert table.layer_cost(b, 8, 32) < table.layer_cost(b, 16, 32) < table.layer_cost(b, 32, 32)
    assert pruner.cost() == pytest.approx(1.0)


def test_grid_points_counts_what_measure_times_where_layers_alike_share_a_grid():
    """break76 #1: layers of one shape pruned differently share a grid (the union of their
    widths, every pair timed); the count added each layer's own, 2.6x too few on regnet_y_400mf
    (9,170 said, 23,910 timed at step 4), and the large-grid warning stayed silent."""
    import torchvision

    import fxprune
    from fxprune.deploy.latency_table import grid_points

    model = torchvision.models.regnet_y_400mf(num_classes=10).eval()
    pm = fxprune.prepare(model, (torch.randn(1, 3, 32, 32),))
    table = LatencyTable.measure(pm, step=8, timer=lambda layer, ci, co: 1.0, **FAST)
    assert grid_points(pm, 8) == sum(map(len, table._points.values()))


@pytest.mark.parametrize("setting, message", [
    ({"backend": "bogus"}, r"LatencyTable\(backend='bogus'\): not one of onnxruntime"),
    ({"threads": 0}, r"LatencyTable\(threads=0\): not an integer >= 1"),
    ({"batch": 2.5}, r"LatencyTable\(batch=2.5\): not an integer >= 1"),
    ({"dtype": "int8"}, r"LatencyTable\(dtype='int8'\): not one of float32"),
    ({"device": 5}, r"LatencyTable\(device=5\): not a string")])
def test_a_table_built_with_settings_load_would_refuse_is_refused_when_built(tmp_path, setting,
                                                                              message):
    """break111 F6: save() wrote such a table and load() then refused the file, far from the
    code that made it."""
    with pytest.raises(DeployError, match=message):
        LatencyTable(**setting)
    # review118 #8: a numpy min_count reached the saved JSON ("int64 is not JSON serializable")
    pm = fxprune.prepare(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)),
                         (torch.randn(1, 3, 8, 8),))
    measured = LatencyTable.measure(fxprune.layer_specs(pm), step=np.int64(4), progress=False,
                                    min_count=np.int64(2), timer=lambda spec, ci, co: 0.01 * ci)
    measured.save(tmp_path / "measured.json")
    # numpy integers are integers (break117 F9), saved as plain ones
    LatencyTable(backend="torch", threads=np.int64(1), batch=np.int64(4),
                 dtype="float16").save(tmp_path / "t.json")
    with warnings.catch_warnings():  # (timed on no machine: "another machine's")
        warnings.simplefilter("ignore", RuntimeWarning)
        assert LatencyTable.load(tmp_path / "t.json").batch == 4


@pytest.mark.parametrize("fields, message", [
    ({"kind": "rnn"}, r"kind is one of 'conv', 'conv_transpose', 'linear', got 'rnn' \(a new "
                      r"kind is a LayerKind in fxprune.cost.LAYER_KINDS\)"),
    ({"kind": ["conv"]}, r"kind is one of 'conv', 'conv_transpose', 'linear', got \['conv'\]"),
    ({"in_channels": -3}, r"in_channels is an integer >= 0, got -3"),
    ({"groups": 0}, r"groups is an integer >= 1, got 0"),
    ({"input_shape": (), "output_shape": ()}, r"a conv needs input and output shapes"),
    ({"kernel_size": 3}, r"kernel_size is a tuple of integers \(one per dim\), got 3"),
    ({"padding": "same"}, r"padding is a tuple of integers \(one per dim\), got 'same'")])
def test_a_layer_spec_checks_its_fields(fields, message):
    """break111 F14: an unknown kind was priced as a conv, negative counts gave negative FLOPs,
    list shapes failed as 'unhashable', a conv without shapes as an IndexError."""
    good = dict(name="c", kind="conv", in_channels=3, out_channels=4, input_shape=[1, 3, 8, 8],
                output_shape=[1, 4, 6, 6], kernel_size=[3, 3], stride=[1, 1], padding=[0, 0],
                dilation=[1, 1])
    with pytest.raises(ValueError, match=rf"LayerSpec 'c': {message}"):
        LayerSpec(**{**good, **fields})
    spec = LayerSpec(**good)  # lists become tuples: hashable, equal to the tuple form
    assert hash(spec) == hash(dataclasses.replace(spec, input_shape=(1, 3, 8, 8)))
    assert spec.flops() == 2 * 6 * 6 * 4 * 3 * 9
    with pytest.raises(ValueError, match=r"channel counts are >= 0, got c_in=-4"):
        fxprune.FlopsCost().layer_cost(spec, -4, 4)


def test_a_long_table_says_its_points_and_passes_then_the_time_its_pace_gives(monkeypatch):
    """break171 F7: the README's LatencyTable.measure(pm, step=8) on resnet50 began hours of
    timing (96,200 points, which the progress bar counted as 192,400) without an estimate."""
    import fxprune.deploy.latency_table as latency_table

    pm = fxprune.prepare(torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(),
                                             torch.nn.Conv2d(16, 8, 1)), (torch.randn(1, 3, 8, 8),))
    said = []
    LatencyTable.measure(pm, step=8, threads=1, **{**FAST, "passes": 2, "log": said.append})
    assert re.search(r"to time, in 2 passes\)$", said[0]) and len(said) == 1  # (quick: no pace)
    # break180 F11: the time left is said from the pace measured, not a fixed 30 ms a point
    # (0.7 h said for a table of 4 minutes); here each point takes 30 minutes of a fake clock
    clock = iter(range(0, 10**9, 1800))
    monkeypatch.setattr(latency_table, "_pace_clock", lambda: float(next(clock)))
    said.clear()
    LatencyTable.measure(pm, step=8, threads=1, **{**FAST, "passes": 2, "log": said.append})
    n = grid_points(pm, 8)
    assert re.search(rf"{n} grid points \(0 cached, {n} to time, in 2 passes\)$", said[0])
    pace = re.fullmatch(rf"latency table: 1 of {2 * n:,} points timed in (\d+) s; about "
                        r"([\d.]+) h more at this pace: a coarser step times fewer, and a "
                        r"cache= file keeps what was timed", said[1])
    assert pace and len(said) == 2, said
    spent, hours = int(pace.group(1)), float(pace.group(2))
    assert spent == 1800 and hours == pytest.approx((2 * n - 1) * 0.5, abs=0.05)


def test_a_method_pricing_with_a_table_timed_at_another_step_says_so():
    """review195 R4: a table timed at step 8 priced a method choosing widths at step 4 by
    interpolation between its grid points, without a word."""
    import fxprune

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3), torch.nn.ReLU(), torch.nn.Conv2d(32, 8, 1))
    pm = fxprune.prepare(model, (torch.randn(1, 3, 8, 8),))
    table = LatencyTable.measure(pm, step=8, timer=CountingTimer(), **FAST)
    with pytest.warns(RuntimeWarning, match=r"^SMCP: the latency table was timed at step 8 and "
                                            r"this method chooses widths at channel_step=4: .*"
                                            r"latency_cost\(pm, \.\.\., channel_step=4\)\)$"):
        fxprune.SMCP(pm, target=0.9, cost=table, channel_step=4)
    # break199 F4: a table of another backend (a GPU's) is not told to become a CPU one
    table.backend = "torch"
    with pytest.warns(RuntimeWarning, match=r"\(LatencyTable.measure\(pm, backend='torch', step=4, "
                                            r"\.\.\.\) as this one was timed\)$"):
        fxprune.SMCP(pm, target=0.9, cost=table, channel_step=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a multiple of the table's step: on its grid
        fxprune.SMCP(pm, target=0.9, cost=table, channel_step=16)


def test_a_latency_recipe_refuses_a_method_whose_channel_step_cannot_be_read(tmp_path):
    """review195 R4: a factory taking **kwargs had its table timed at a guessed step 1."""
    import fxprune
    from fxprune.methods.registration import register_method, registry
    from fxprune.train import ConfigError, load_config, train

    def forwarding(prepared, **kwargs):
        return fxprune.SMCP(prepared, **kwargs)

    saved = dict(registry)
    try:
        register_method("forwarding", forwarding)
        recipe = tmp_path / "r.yaml"
        recipe.write_text("prune:\n  method: forwarding\n  target: 0.5\n  cost: latency\n")
        cfg = load_config(recipe, ["data.name=synthetic", "data.synthetic_train=64",
                                   "data.synthetic_test=32", "model.widths=[8,16,16]",
                                   "optim.epochs=1", "log.progress=false",
                                   "log.tensorboard=false", f"out={tmp_path / 'run'}"])
        with pytest.raises(ConfigError, match=r"channel_step cannot be read from its signature; "
                                              r"set prune.channel_step$"):
            train(cfg)
    finally:
        registry.clear()
        registry.update(saved)
