"""A cost model's fixed cost: the pure fit, the knapsack's use of it, and the measured fit."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import fxprune
from fxprune.cost import FlopsCost, WithFixedCost, fit_fixed_cost, layer_keys
from fxprune.deploy import DeployError, calibrate_cost
from fxprune.allocation import uniform_kept
from fxprune.units import UnitIndex

from helpers import small_deploy_net


# ------------------------------------------------------------------------ the pure fit
@pytest.mark.parametrize("fixed", [0.0, 3.0, -1.5, 40.0])
def test_fit_recovers_the_constant_that_made_the_measurement(fixed):
    dense, pruned = 10.0, 3.5
    measured = (pruned + fixed) / (dense + fixed)
    assert fit_fixed_cost(dense, pruned, measured) == pytest.approx(fixed)


@pytest.mark.parametrize("dense, pruned, measured, says", [
    (10.0, 10.0, 0.5, "pruned_cost must be in"),
    (10.0, 0.0, 0.5, "pruned_cost must be in"),
    (10.0, 5.0, 1.02, "idle machine"),
    (10.0, 5.0, 0.0, "idle machine"),
    (float("inf"), 4.0, 0.5, "dense_cost must be a finite number, got inf"),  # gave inf
    ("10", 4.0, 0.5, "dense_cost must be a finite number, got '10'"),
])
def test_fit_refuses_what_fixes_no_constant(dense, pruned, measured, says):
    with pytest.raises(ValueError, match=says):
        fit_fixed_cost(dense, pruned, measured)


# --------------------------------------------------------------- in the knapsack's budget
def _prepared(width=16):
    return fxprune.prepare(small_deploy_net(width).eval(), (torch.randn(1, 3, 16, 16),))


def _flops_with(pm, fixed):
    keys = layer_keys(fxprune.layer_specs(pm))
    return WithFixedCost(FlopsCost(), fixed, keys)


def test_fixed_cost_enters_the_budget_and_its_fractions():
    pm = _prepared()
    priced = sum(s.flops() for s in fxprune.layer_specs(pm))
    fixed = priced / 4
    pruner = fxprune.SMCP(pm, target=0.5, cost=_flops_with(pm, fixed), channel_step=4)
    assert pruner.budget.other_cost == pytest.approx(fixed)
    assert pruner.budget.dense == pytest.approx(priced + fixed)
    kept = np.zeros(pruner.index.n, dtype=bool)
    kept[::2] = True
    total = pruner.budget.total(kept)
    assert total == pytest.approx(fixed + sum(
        pruner.budget.layer_cost(layer, *layer.widths(kept)) for layer in pruner.budget.layers))
    # pricing the method's masks with the wrapper counts the constant there too
    assert pruner.cost(_flops_with(pm, fixed)) == pytest.approx(1.0)


def test_a_target_under_a_fixed_cost_leaves_the_layers_less():
    from fxprune.allocation import allocate

    pm = _prepared()
    plain = fxprune.SMCP(pm, target=1.0, cost=FlopsCost(), channel_step=4)
    fixed = fxprune.SMCP(pm, target=1.0, cost=_flops_with(pm, plain.budget.dense / 3),
                         channel_step=4)
    scores = np.random.default_rng(0).random(plain.index.n)
    full = np.ones(plain.index.n, dtype=bool)
    a = allocate(plain._options(scores), plain.budget, 0.6, full).kept
    b = allocate(fixed._options(scores), fixed.budget, 0.6, full).kept
    assert fixed.budget.fraction(b) <= 0.6 + 1e-9
    # the layers alone: at most 0.6 - 0.4 * (1/3) / 1 = 0.4667 of their dense cost
    assert plain.budget.fraction(b) <= 0.6 - 0.4 / 3 + 1e-9 < plain.budget.fraction(a)


def test_layer_keys_of_a_list_match_and_a_model_is_refused():
    pm = _prepared(16)
    specs = fxprune.layer_specs(pm)
    # keys given as a list are the same keys: no false "fitted on another model"
    assert WithFixedCost(FlopsCost(), 1.0, list(layer_keys(specs))).fixed_cost_for(specs) == 1.0
    with pytest.raises(TypeError, match="pass fxprune.layer_specs\\(model\\), not the model"):
        layer_keys(pm)


def test_a_fixed_cost_fitted_on_another_model_is_refused():
    fitted = _flops_with(_prepared(16), 1e6)
    with pytest.raises(ValueError, match="fitted on another model.*calibrate_cost"):
        fxprune.SMCP(_prepared(24), target=0.5, cost=fitted, channel_step=4)


def test_a_fixed_cost_fitted_before_a_cast_names_the_cast():
    """break44 #3: layers are priced at their dtype now; a constant fitted on the float32
    model was refused after pm.double() as "fitted on another model"."""
    pm = _prepared(16)
    fitted = _flops_with(pm, 1e6)
    with pytest.raises(ValueError, match=r"fitted on this model's layers at float32, and they are "
                                         r"float64 now \(cast since the fit\).*calibrate_cost"):
        fxprune.SMCP(pm.double(), target=0.5, cost=fitted, channel_step=4)


def test_a_constant_fitted_with_a_batch_fixed_table_prices_another_example_batch():
    """break32 #9: a table timed at its own batch ignores the example batch, and so does its
    fitted constant; the same model prepared at batch 4 was refused as "another model"."""
    from fxprune.deploy import LatencyTable

    def prepared_at(batch):
        return fxprune.prepare(small_deploy_net(16).eval(), (torch.randn(batch, 3, 16, 16),))

    at_1, at_4 = fxprune.layer_specs(prepared_at(1)), fxprune.layer_specs(prepared_at(4))
    table = LatencyTable("onnxruntime", "cpu", 1, "test", batch=8)  # prices every layer at 8
    assert table.as_priced(at_4[0]).batch == 8
    fitted = WithFixedCost(table, 2.0, layer_keys(at_1, table))
    assert fitted.fixed_cost_for(at_4) == 2.0
    older = WithFixedCost(table, 2.0, layer_keys(at_1))  # keys saved before: the example batch
    assert older.fixed_cost_for(at_1) == 2.0
    per_example = LatencyTable("onnxruntime", "cpu", 1, "test")  # times at the example batch
    with pytest.raises(ValueError, match=r"fitted on another model \(layer 0: .*n4.* here, .*n1.* "
                                         r"when fitted\)"):
        WithFixedCost(per_example, 2.0, layer_keys(at_1, per_example)).fixed_cost_for(at_4)


# ------------------------------------------------------------------ measured (real runtimes)
def test_uniform_kept_keeps_about_the_fraction_on_the_step():
    pm = _prepared(16)
    index = UnitIndex(pm)
    kept = uniform_kept(index, 0.5, 4)
    for i in range(len(index.groups)):
        n = int(kept[index.group_slice(i)].sum())
        assert n % 4 == 0 and abs(n - 0.5 * index.groups[i].size) <= 2


def _timed_for_real_fitted_on(monkeypatch, dense: float, pruned: float) -> list[dict]:
    """The runtimes time both models for real (exporting and timing them is what the tests
    exercise), and the fit gets ``dense`` and ``pruned`` ms: on a loaded host a real half
    model of this size can time as slow as dense, and the fit refuses it (review146 F1: such
    tests failed 2 runs in 16). Returns the real medians, one dict per call."""
    import fxprune.deploy.calibrate as calibrate

    real, seen = calibrate._median_ms, []

    def timed(*args, **kwargs):
        seen.append(real(*args, **kwargs))
        return {"dense": dense, "pruned": pruned}

    monkeypatch.setattr(calibrate, "_median_ms", timed)
    return seen


def _timed(medians: list[dict]) -> bool:
    return len(medians) == 1 and all(0 < ms < float("inf") for ms in medians[0].values())


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_calibrate_cost_fits_the_measured_fraction_and_leaves_the_model(backend, monkeypatch):
    pm = _prepared(32)
    masks_before = UnitIndex(pm).masks(pm).clone()
    medians = _timed_for_real_fitted_on(monkeypatch, dense=10.0, pruned=7.0)
    cost = calibrate_cost(FlopsCost(), pm, backend=backend, threads=1, batch=8, iters=10,
                          warmup=2, log=lambda s: None)
    assert _timed(medians) and set(medians[0]) == {"dense", "pruned"}
    assert isinstance(cost, WithFixedCost) and cost.name == "flops+fixed"
    fit = cost.fit
    assert fit["backend"] == backend and (fit["dense_ms"], fit["pruned_ms"]) == (10.0, 7.0)
    assert fit["measured_fraction"] == pytest.approx(0.7)
    from fxprune.deploy.common import cpu_name
    assert fit["machine"] == cpu_name()  # break48 #6: the milliseconds name their machine
    # the fitted constant reproduces the uniform model's measured fraction
    pruner = fxprune.SMCP(pm, target=1.0, cost=cost, channel_step=4)
    kept = uniform_kept(pruner.index, 0.5, 8)
    assert pruner.budget.fraction(kept) == pytest.approx(fit["measured_fraction"])
    assert torch.equal(UnitIndex(pm).masks(pm), masks_before)


def test_calibrate_cost_with_a_latency_table_uses_its_runtime():
    from fxprune.deploy import LatencyTable

    pm = _prepared(16)
    # a made-up timer: what matters is the runtime settings the table carries, and a real
    # table of layers this small can price the half model at dense under noise
    table = LatencyTable.measure(pm, step=8, threads=1, batch=4, progress=False,
                                 log=lambda s: None, timer=lambda layer, ci, co: 0.01 + ci * co)
    cost = calibrate_cost(table, pm, iters=5, warmup=1, log=lambda s: None)
    assert (cost.fit["backend"], cost.fit["threads"], cost.fit["batch"]) == ("onnxruntime", 1, 4)
    assert cost.name == "latency+fixed"


def test_calibrate_cost_steps_as_its_table_was_measured(monkeypatch, tmp_path):
    """break171 F5: a table at step 32 of this very model, fitted at calibrate_cost's default
    step 8, priced 16 of 32 channels as 32 and warned that the table came from another model."""
    import warnings

    import fxprune.deploy.calibrate as calibrate
    from fxprune.deploy import LatencyTable

    pm = _prepared(32)
    table = LatencyTable.measure(pm, step=32, threads=1, progress=False, log=lambda s: None,
                                 timer=lambda layer, ci, co: 0.01 + ci * co)
    table.save(tmp_path / "t.json")
    assert (table.step, LatencyTable.load(tmp_path / "t.json").step) == (32, 32)
    monkeypatch.setattr(calibrate, "_median_ms", lambda *a, **kw: {"dense": 10.0, "pruned": 6.0})
    monkeypatch.setattr(calibrate, "cpu_load", lambda: (0.0, 2))  # (whatever runs beside)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for cost_model in (table, LatencyTable.load(tmp_path / "t.json")):
            assert calibrate_cost(cost_model, pm, log=lambda s: None).fit["step"] == 32
    # a step finer than the table's, asked for, is warned of as such
    with pytest.warns(RuntimeWarning, match=r"below the smallest count its grid was measured at "
                                            r"\(32\).*measure the table with a finer step"):
        assert calibrate_cost(table, pm, step=8, log=lambda s: None).fit["step"] == 8


def test_calibrate_cost_times_at_the_tables_precision_and_refuses_another_setting(monkeypatch):
    """break32 #1: an fp16 table was fitted against fp32 timings (and a torch table's device
    was not its own); the fit now times what the table timed and records it."""
    import fxprune.deploy.calibrate as calibrate
    from fxprune.deploy import LatencyTable

    pm = _prepared(16)
    table = LatencyTable.measure(pm, step=8, threads=1, batch=4, precision="fp16", progress=False,
                                 log=lambda s: None, timer=lambda layer, ci, co: 0.01 + ci * co)
    seen = {}

    def timed(models, shape, backend, threads, device, precision, *rest, **kw):
        seen.update(shape=shape, backend=backend, threads=threads, precision=precision)
        return {"dense": 10.0, "pruned": 6.0}

    monkeypatch.setattr(calibrate, "_median_ms", timed)
    cost = calibrate_cost(table, pm, log=lambda s: None)
    assert seen == {"shape": (4, 3, 16, 16), "backend": "onnxruntime", "threads": 1,
                    "precision": "fp16"}
    assert (cost.fit["precision"], cost.fit["device"]) == ("fp16", "cpu")
    for bad in ({"threads": 2}, {"batch": 8}, {"backend": "torch"}, {"device": "cuda"}):
        with pytest.raises(DeployError, match=f"{next(iter(bad))}=.*the table was timed with"):
            calibrate_cost(table, pm, log=lambda s: None, **bad)
    table.backend, table.torch_settings = "torch", {"torch_device": "cpu", "cuda_graphs": False,
                                                    "channels_last": False}
    seen.clear()
    monkeypatch.setattr(calibrate, "_median_ms", lambda *a, **kw: seen.update(
        device=a[4], options=kw["torch_options"]) or {"dense": 10.0, "pruned": 6.0})
    assert calibrate_cost(table, pm, log=lambda s: None).fit["device"] == "cpu"
    assert seen == {"device": "cpu", "options": {"cuda_graphs": False, "channels_last": False}}


def test_calibrate_cost_of_a_channels_last_model(monkeypatch):
    """break32 #4: exported at batch 1, a channels_last model's file fixed the batch at 1, and
    timing it at the table's batch failed with advice naming CLI flags."""
    pm = _prepared(32).to(memory_format=torch.channels_last)
    medians = _timed_for_real_fitted_on(monkeypatch, dense=10.0, pruned=7.0)
    cost = calibrate_cost(FlopsCost(), pm, backend="onnxruntime", threads=1, batch=4, iters=5,
                          warmup=1, sessions=1, log=lambda s: None)
    assert _timed(medians) and cost.fit["batch"] == 4


@pytest.mark.parametrize("kwargs, says", [
    ({"keep": 1.0}, "keep must be"),
    ({"keep": 0.0}, "keep must be"),
    ({"backend": "tensorrt"}, "fit_fixed_cost"),
])
def test_calibrate_cost_refuses_bad_requests(kwargs, says):
    with pytest.raises(DeployError, match=says):
        calibrate_cost(FlopsCost(), _prepared(), log=lambda s: None, **kwargs)


def test_a_fixed_cost_raises_the_floor_and_the_error_carries_it():
    from fxprune.allocation import InfeasibleBudget, allocate

    pm = _prepared()
    plain = fxprune.SMCP(pm, target=1.0, cost=FlopsCost(), channel_step=4)
    fixed = fxprune.SMCP(pm, target=1.0, cost=_flops_with(pm, plain.budget.dense),
                         channel_step=4)
    scores, full = np.zeros(plain.index.n), np.ones(plain.index.n, dtype=bool)
    floors = []
    for method in (plain, fixed):
        with pytest.raises(InfeasibleBudget) as e:
            allocate(method._options(scores), method.budget, 0.05, full)
        assert f"({e.value.floor:.3f}:" in str(e.value)
        floors.append(e.value.floor)
    # half the dense total is fixed: no width choice goes below half
    assert floors[1] == pytest.approx(0.5 + floors[0] / 2) and floors[1] > 0.5


def test_the_latency_fixed_cost_name_measures_a_table_and_fits_its_constant(monkeypatch):
    from fxprune.deploy import LatencyTable

    measure = LatencyTable.measure.__func__
    fast = dict(warmup=1, min_runs=2, max_runs=3, target_ms=0.5, passes=1, progress=False,
                log=lambda s: None, threads=1, batch=16)
    monkeypatch.setattr(LatencyTable, "measure",
                        classmethod(lambda cls, layers, **kw: measure(cls, layers, **{**kw, **fast})))
    # the table's points too: timed for real, a loaded host can price the half model at dense
    # (review146 F1); the SMCP below runs what the name builds, with a timer of known prices
    timed_points = []
    pm = _prepared(32)
    table = LatencyTable.measure(pm, step=8, **fast)  # the real timing path, once
    assert table.stats["measured"] > 0
    assert all(ms > 0 for points in table._points.values() for ms in points.values())
    fast["timer"] = lambda layer, ci, co: timed_points.append(1) or 0.01 + ci * co
    medians = _timed_for_real_fitted_on(monkeypatch, dense=10.0, pruned=7.0)
    # target 1.0: the test is about the cost the name builds
    pruner = fxprune.SMCP(pm, target=1.0, cost=fxprune.deploy.latency_cost(
        pm, "latency+fixed", channel_step=8, progress=False), channel_step=8)
    model = pruner.budget.model
    assert isinstance(model, WithFixedCost) and isinstance(model.base, LatencyTable)
    assert timed_points and _timed(medians)
    assert pruner.budget.other_cost == model.fixed_cost
    assert model.fit["threads"] == 1 and model.fit["batch"] == 16
    assert model.fit["measured_fraction"] == pytest.approx(0.7)


def test_calibrate_cost_under_load_warns_and_records_the_load(monkeypatch):
    import fxprune.deploy.calibrate as calibrate

    monkeypatch.setattr(calibrate, "cpu_load", lambda: (9.0, 2))
    _timed_for_real_fitted_on(monkeypatch, dense=10.0, pruned=7.0)
    with pytest.warns(RuntimeWarning, match="other processes shared the CPU.*idle machine"):
        cost = calibrate_cost(FlopsCost(), _prepared(32), threads=1, batch=8, iters=5,
                              warmup=1, log=lambda s: None)
    assert cost.fit["load_average"] == [9.0, 9.0]


def test_calibrate_cost_refuses_what_it_cannot_fit_before_timing(monkeypatch):
    import fxprune.deploy.calibrate as calibrate

    monkeypatch.setattr(calibrate, "_median_ms", lambda *a, **k: pytest.fail("timed"))
    pm = _prepared(16)
    with pytest.raises(TypeError, match="cost model object"):
        calibrate_cost("flops", pm)
    with pytest.raises(TypeError, match=r"the class FlopsCost \(call it\)"):
        calibrate_cost(FlopsCost, pm)
    for bad in ({"step": 0}, {"iters": 0}, {"threads": 0}, {"warmup": -1}, {"batch": 0},
                {"step": 8.0}, {"iters": None}, {"batch": 2.0}):  # (break129 F11: TypeErrors)
        with pytest.raises(DeployError, match=f"{next(iter(bad))} must be an integer"):
            calibrate_cost(FlopsCost(), pm, **bad)
    with pytest.raises(DeployError, match="no channel group is wide enough.*channel_step"):
        calibrate_cost(FlopsCost(), pm, step=64)
    # through latency_cost too, before the table is timed (refused for every latency cost
    # since break151 F2, in the method's words)
    with pytest.raises(ValueError, match="channel_step=64 is at least as wide as every "
                                         "prunable group"):
        fxprune.deploy.latency_cost(pm, "latency+fixed", channel_step=64)


@pytest.mark.parametrize("pruned_over_dense, says", [
    (1.0, "ran at 1.000 of the dense latency"),
    (1.02, "too small a difference"),
    # a half model far faster than priced: a large negative constant, below the narrowest model
    (0.01, "prices the narrowest model at"),
])
def test_calibrate_cost_refuses_a_fit_it_cannot_trust(monkeypatch, pruned_over_dense, says):
    import fxprune.deploy.calibrate as calibrate

    monkeypatch.setattr(calibrate, "_median_ms",
                        lambda *a, **k: {"dense": 10.0, "pruned": 10.0 * pruned_over_dense})
    with pytest.raises(DeployError, match=says):
        calibrate_cost(FlopsCost(), _prepared(32), log=lambda s: None)


def test_a_negative_constant_is_logged_as_what_it_takes_off_the_tables_sum(monkeypatch):
    """break22: "(-103.4% of the dense total)" for a constant below minus half the table's
    sum: a share of a total the constant itself has shrunk."""
    import fxprune.deploy.calibrate as calibrate

    monkeypatch.setattr(calibrate, "_median_ms", lambda *a, **k: {"dense": 10.0, "pruned": 2.5})
    lines = []
    cost = calibrate_cost(FlopsCost(), _prepared(32), log=lines.append)
    assert cost.fixed_cost < 0
    dense_sum = sum(FlopsCost().layer_cost(s, s.in_channels, s.out_channels)
                    for s in fxprune.layer_specs(_prepared(32)))
    assert f"taking {-cost.fixed_cost / dense_sum:.1%} off the table's dense sum" in lines[-1]
    assert "of the dense total" not in lines[-1]


def test_fitting_a_fitted_cost_again_starts_from_its_per_layer_model(monkeypatch):
    import fxprune.deploy.calibrate as calibrate

    monkeypatch.setattr(calibrate, "_median_ms", lambda *a, **k: {"dense": 10.0, "pruned": 5.0})
    pm = _prepared(32)
    once = calibrate_cost(FlopsCost(), pm, log=lambda s: None)
    twice = calibrate_cost(once, pm, log=lambda s: None)
    assert isinstance(twice.base, FlopsCost) and twice.name == "flops+fixed"
    assert twice.fixed_cost == pytest.approx(once.fixed_cost)
    assert 0 < once.fit["narrowest_fraction"] < once.fit["measured_fraction"]


def test_the_wrong_model_error_names_the_first_layer_that_differs():
    fitted = _flops_with(_prepared(16), 1e6)
    with pytest.raises(ValueError, match=r"layer 0: .*16x.* when fitted"):
        fitted.fixed_cost_for(fxprune.layer_specs(_prepared(24)))


def test_a_cost_model_that_ignores_widths_is_refused_with_its_likely_cause():
    class PerLayer:  # every layer costs 1 whatever it keeps
        name = "per-layer"

        def layer_cost(self, layer, c_in, c_out):
            return 1.0

    with pytest.raises(DeployError, match="costs as much as dense under 'per-layer'.*do not "
                                          "fall with fewer channels.*use FLOPs"):
        calibrate_cost(PerLayer(), _prepared(32), log=lambda s: None)


def test_calibrate_cost_of_an_untrained_zero_head_says_nothing_of_finalize(monkeypatch):
    """review172 F5: cost='latency+fixed' fits before training, where a zero-initialised head
    (a torchvision ViT's) made finalize tell the user to "finalize the trained model"; the
    copies are timed there, not judged."""
    import warnings

    import fxprune.deploy.calibrate as calibrate

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(),
                                torch.nn.Conv2d(16, 16, 3), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(16, 10))
    with torch.no_grad():
        model[-1].weight.zero_()
        model[-1].bias.zero_()
    pm = fxprune.prepare(model, (torch.randn(1, 3, 16, 16),))
    monkeypatch.setattr(calibrate, "_median_ms", lambda *a, **kw: {"dense": 10.0, "pruned": 6.0})
    monkeypatch.setattr(calibrate, "cpu_load", lambda: (0.0, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert calibrate_cost(FlopsCost(), pm, log=lambda s: None).fit["measured_fraction"] == 0.6
