"""benchmarks/bench_methods.py --smoke: every row trains, prunes to the budget and finalizes exactly."""
from __future__ import annotations

import importlib.util
import json
import os


BENCH = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "bench_methods.py")


def test_smoke_mode_runs_every_row(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_methods", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--smoke", "--out", str(tmp_path / "methods_smoke"), "--runs-dir", str(tmp_path / "runs"),
                       "--timing-steps", "2"]) == 0
    result = json.loads((tmp_path / "methods_smoke.json").read_text())
    rows = {r["row"]: r for r in result["summary"]}
    assert set(rows) == {"dense", "SMCP", "CUCB", "CUCB random", "CCP ratio", "CCP adaptive",
                         "one-shot magnitude", "one-shot Taylor"}
    for name, r in rows.items():
        assert r["finalize_mismatched_samples"] == 0, name
        if name != "dense":
            assert r["flops_ratio"][0] <= 0.5 + 1e-6, name
    assert result["meta"]["smoke"] and "SMOKE" in (tmp_path / "methods_smoke.md").read_text()
    assert set(result["cucb_step_time"]) == {"full width", "rho 0.3", "rho 0.5", "rho 0.7"}
    assert 0 < result["solver"]["greedy_swap_hit_rate"] <= 1
