"""benchmarks/bench_table_calibration.py in its smoke mode (real ONNX Runtime timing, seconds)."""
from __future__ import annotations

import json
import math

import pytest

from helpers import load_benchmark


def test_smoke_run_prices_every_chosen_model_and_measures_it(tmp_path):
    bench = load_benchmark("bench_table_calibration")
    out = tmp_path / "cal.v2"  # a dot in the name is not an extension to replace
    (tmp_path / "cal.json").write_text("the user's")
    bench.main(["--smoke", "--nets", "resnet", "--passes", "1", "--out", str(out)])
    assert (tmp_path / "cal.json").read_text() == "the user's"
    data = json.loads((tmp_path / "cal.v2.json").read_text())
    rows = [r for r in data["rows"] if r["model"] != "dense"]
    dense = next(r for r in data["rows"] if r["model"] == "dense")
    assert data["meta"]["passes"] == 1 and dense["table_points_timed"] > 0
    # every cost model chose a model, or says why not (smoke tables of tiny layers are noisy:
    # one may price every allowed model above the target)
    refused = {miss["chooser"] for miss in dense["infeasible"]}
    assert {r["chosen_by"] for r in rows} | refused == {"table", "flops", "table+fixed",
                                                         "flops+fixed"}
    assert all(miss["floor"] > miss["target"] for miss in dense["infeasible"])
    for r in rows:
        # the knapsack's promise under its own cost model; a real, positive measured fraction
        assert r[f"{r['chosen_by']}_fraction"] <= r["target"] + 1e-9
        assert 0 < r["measured_fraction"] and math.isfinite(r["measured_fraction"])
        assert len(r["widths"]) > 1 and all(w > 0 for w in r["widths"])
    # each constant reproduces the half model it was fitted on, which ran faster than dense
    for fit in dense["fits"].values():  # (or says why it could not be fitted)
        assert "failed" in fit or (0 < fit["measured_fraction"] < 1 and fit["keep"] == 0.5)
    (summary,) = data["summary"]
    assert summary["models"] == len(rows) and summary["table_sum_over_real"] > 0
    text = (tmp_path / "cal.v2.md").read_text()
    assert "| resnet | flops | 0.9 |" in text and "fastest of 1 passes" in text
    assert all(f"resnet, {m['chooser']} at 0.9: no model" in text for m in dense["infeasible"])


@pytest.mark.parametrize("args, phrase", [
    (["--targets", "0"], "in (0, 1]"), (["--targets", "1.5"], "in (0, 1]"),
    (["--configs", "0"], "--configs must be >= 1"), (["--passes", "0"], "--passes must be >= 1"),
    (["--out", "."], "is a folder"),
    (["--cache", "."], "is not a file")])
def test_bad_arguments_are_refused_before_any_timing(args, phrase, capsys):
    bench = load_benchmark("bench_table_calibration")
    with pytest.raises(SystemExit) as e:
        bench.main(["--smoke", *args])
    assert e.value.code == 2 and phrase in capsys.readouterr().err


def test_a_constant_that_cannot_be_fitted_is_priced_as_zero_and_said(tmp_path, capsys,
                                                                      monkeypatch):
    bench = load_benchmark("bench_table_calibration")

    def refuse(*args, **kwargs):
        raise bench.DeployError("the half model ran at 1.000 of the dense latency")

    monkeypatch.setattr(bench, "calibrate_cost", refuse)
    bench.main(["--smoke", "--nets", "resnet", "--choosers", "flops+fixed", "--out",
                str(tmp_path / "cal")])
    data = json.loads((tmp_path / "cal.json").read_text())
    dense = next(r for r in data["rows"] if r["model"] == "dense")
    assert all(fit["fixed_cost"] == 0.0 and "1.000" in fit["failed"]
               for fit in dense["fits"].values())
    assert "flops+fixed: no constant fitted" in capsys.readouterr().out


def test_a_net_where_no_target_is_reachable_is_listed_not_a_crash():
    """break80 F7: summary() took the mean over no model, and the StatisticsError lost every
    net's results (a 40% target is below the floor on two of the three nets)."""
    bench = load_benchmark("bench_table_calibration")
    fits = {"table+fixed": {"fixed_share_of_dense": 0.1}, "flops+fixed": {"fixed_share_of_dense": 0.2}}
    dense = lambda net, infeasible: {"net": net, "model": "dense", "ms": 2.0,  # noqa: E731
                                     "table_sum_ms": 1.5, "fits": fits,
                                     "table_points_under_load": 0, "infeasible": infeasible}
    model = {"net": "wide", "model": "m0", "chosen_by": "table", "target": 0.5, "widths": [4, 8],
             "measured_fraction": 0.55, **{f"{k}_fraction": 0.5 for k in bench.PREDICTORS}}
    rows = [dense("wide", []), model,
            dense("resnet", [{"chooser": "table", "target": 0.05, "floor": 0.45}])]
    summ = bench.summary(rows)
    assert [s["models"] for s in summ] == [1, 0]
    assert summ[1]["table_mean_abs_error"] is None and summ[1]["landed_minus_target"] == {}
    machine = {"cpu": "cpu", "cores": 2, "onnxruntime": "1", "threads": 1, "batch": 64,
               "load_average_start": [0.0], "load_average_end": [0.0]}
    text = bench.markdown({"command": "c", "machine": machine, "iters": 5, "runtime_s": 1.0},
                          rows, summ)
    assert "| resnet | 2.000 | 0.75 | - | - | - (0.10) | - (0.20) | 0 | 0 |" in text
    assert "| wide | +0.050 (0.050) |" in text and "| resnet | - |" in text
    assert "resnet, table at 0.05: no model" in text
