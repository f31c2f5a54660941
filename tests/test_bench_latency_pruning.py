"""benchmarks/bench_latency_pruning.py's core on a tiny CNN (real ONNX Runtime timing, seconds)."""
from __future__ import annotations

import re

import torch
from torch import nn

from helpers import load_benchmark


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    # Wide enough at 32x32 that conv time, not ORT's per-call overhead, dominates the table:
    # otherwise half the latency could be out of reach of any channel count.
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    ).eval()


def test_bench_model_rows_and_latency_budget(tmp_path):
    bench = load_benchmark("bench_latency_pruning")
    result = bench.bench_model("tiny", tiny_cnn(), (1, 3, 32, 32), table_step=8,
                               channel_steps=(8,), target=0.5, iters=5, warmup=1, threads=1,
                               cache=tmp_path / "cache.json", workdir=str(tmp_path),
                               progress=False, log=lambda s: None)
    assert result["table"]["points_timed"] > 0 and (tmp_path / "cache.json").exists()
    assert result["timing"]["order"] == ["dense", "flops@8", "latency@8"]
    rows = {r["cost"]: r for r in result["rows"]}
    assert set(rows) == {"flops", "latency"}
    for r in rows.values():
        assert "error" not in r
        assert 0 < r["flops_ratio"] < 1 and 0 < r["params_ratio"] < 1
        assert r["dense_median_ms"] > 0 and r["pruned_median_ms"] > 0
        assert r["pruned_p90_ms"] >= r["pruned_median_ms"]
        assert r["measured_speedup"] == r["dense_median_ms"] / r["pruned_median_ms"]
        assert r["measured_over_pred_table"] == r["measured_speedup"] / r["pred_speedup_table"]
    # Each prune respects its own cost model's budget...
    assert rows["flops"]["pred_speedup_flops"] >= 1 / 0.5 * (1 - 1e-6)
    assert rows["latency"]["cost_fraction_own"] <= 0.5 + 1e-9
    # ...and the latency row's table prediction is that same fraction.
    assert rows["latency"]["pred_speedup_table"] == 1 / rows["latency"]["cost_fraction_own"]
    assert isinstance(rows["latency"]["goal_met"], bool)

    # The report renders both rows.
    text = bench.text_table(result["rows"])
    assert "flops" in text and "latency" in text


def test_a_cache_file_it_cannot_use_is_a_one_line_exit(tmp_path, capsys):
    """break56 #15: a --cache that is not a latency cache ended in a DeployError traceback."""
    import json

    import pytest

    bench = load_benchmark("bench_latency_pruning")
    cache = tmp_path / "notes.json"
    cache.write_text(json.dumps({"my": "notes"}))
    with pytest.raises(SystemExit) as exited:
        bench.main(["--models", "resnet18", "--size", "32", "--iters", "2", "--no-progress",
                    "--cache", str(cache), "--out", str(tmp_path / "lp")])
    # status 2 and argparse's form, as its other refusals (break187 F4: status 1, bare)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.count("\n") == 1, err
    assert re.match(r"^\S+: error: resnet18: ", err) and str(cache) in err
    assert "delete it" not in err  # the user's file (break187 F4)
    assert json.loads(cache.read_text()) == {"my": "notes"}


def test_a_run_with_its_own_out_keeps_its_latency_cache_beside_it(tmp_path, monkeypatch):
    """break80 D4: a trial run with --out elsewhere filled the repository's cache, whose points
    the published command then reused without saying where they came from."""
    import pytest

    from fxprune.deploy import DeployError

    bench = load_benchmark("bench_latency_pruning")
    used = []

    def stop(*args, cache=None, **kwargs):
        used.append(cache)
        raise DeployError("stopped before timing")

    monkeypatch.setattr(bench, "bench_model", stop)
    with pytest.raises(SystemExit):
        bench.main(["--models", "resnet18", "--out", str(tmp_path / "lp"), "--no-progress"])
    assert used == [f"{tmp_path / 'lp'}_latency_cache.json"]
