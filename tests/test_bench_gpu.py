"""benchmarks/bench_gpu.py's smoke mode on the CPU: the script the GPU run will use, end to end
on tiny models (seconds), writing only to a temporary folder."""
from __future__ import annotations

import json

import pytest
import torch

from helpers import load_benchmark


def test_smoke_run_writes_every_section(tmp_path):
    bench = load_benchmark("bench_gpu")
    out = tmp_path / "gpu"
    assert bench.main(["--device", "cpu", "--smoke", "--out", str(out)]) == 0
    r = json.loads(out.with_suffix(".json").read_text())
    meta = r["meta"]
    assert meta["smoke"] is True and meta["device_type"] == "cpu" and meta["device"]
    assert meta["torch"] == torch.__version__ and "cudnn" in meta and meta["total_seconds"] > 0
    assert set(r["section_seconds"]) == {"a", "b", "c"}

    assert [t["model"] for t in r["training"]] == ["tiny_resnet", "tiny_convnext"]
    for t in r["training"]:
        for key in ("plain_ms", "masked_ms", "smcp_window_ms", "smcp_outside_ms"):
            assert t[key] > 0
        assert t["smcp_window_ratio"] == pytest.approx(t["smcp_window_ms"] / t["plain_ms"], rel=1e-3)
        assert t["updates"] >= 1 and t["kept_after"] < t["channels"]
        assert t["cost_after"] <= 0.5 + 1e-9
        assert t["finalize_max_rel_error"] <= 1e-4

    table = r["table"]
    assert table["model"] == "tiny_resnet" and table["points_timed"] > 0 and table["batch"] == 4

    rows = r["speedups"]
    assert {row["model"] for row in rows if row["masks_by"] == "flops"} == {
        "tiny_resnet", "tiny_mobilenet", "tiny_convnext"}
    for row in rows:
        # a measured table need not be monotone (timing noise, odd channel counts): the table's
        # price of FLOPs-chosen masks may exceed dense; the table's own choice may not
        assert 0 < row["flops_ratio"] <= 1 and row["table_ratio"] > 0
        for batch in ("b4", "b1"):
            b = row[batch]
            assert b["dense_ms"] > 0 and b["pruned_ms"] > 0
            assert b["measured_speedup"] == pytest.approx(b["dense_ms"] / b["pruned_ms"], rel=1e-3)
            assert b["measured_over_predicted"] == pytest.approx(
                b["measured_speedup"] / b["predicted_speedup"])
        if row["masks_by"] == "flops":
            assert row["flops_ratio"] <= row["target"] + 1e-9
        else:
            assert row["table_ratio"] <= row["target"] + 1e-9
    # a model the table cannot price down to the target is reported with the reason
    for s in r["skipped"]:
        assert s["section"] in ("a", "b", "c") and s["reason"]
    text = out.with_suffix(".md").read_text()
    assert "smoke run" in text and "tiny_convnext" in text


def test_refuses_what_would_mislead(tmp_path, capsys):
    bench = load_benchmark("bench_gpu")
    assert bench.main(["--device", "cpu", "--out", str(tmp_path / "x")]) == 2  # full run: GPU
    if not torch.cuda.is_available():
        assert bench.main(["--out", str(tmp_path / "x")]) == 2
        assert "CUDA is not available" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
