"""benchmarks/bench_latency_table.py: its figures, on made-up timings (seconds)."""
from __future__ import annotations

import json

import pytest
from torch import nn

from fxprune.deploy.latency_table import LatencyTable
from helpers import load_benchmark


def made_up(layer, c_in, c_out):
    return 1e-4 * c_in * c_out + 1e-3


@pytest.fixture
def fake_timing(monkeypatch):
    measure = LatencyTable.measure.__func__
    monkeypatch.setattr(LatencyTable, "measure", classmethod(
        lambda cls, *a, **kw: measure(cls, *a, **{**kw, "timer": made_up})))


def test_the_half_width_sum_says_where_the_grid_clamps_it(fake_timing):
    """break42 #9: at a step coarser than the half widths, every half width is priced at the
    grid's narrowest point (the dense width): the sum is not a half-width prediction, and the
    layers it clamps are named; on a fine grid none is."""
    bench = load_benchmark("bench_latency_table")
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 32, 3),
                          nn.Flatten(), nn.Linear(32 * 4 * 4, 10))
    layers = bench.hooked_layer_specs(model, (1, 3, 8, 8))
    fine = LatencyTable.measure(layers, step=4, progress=False, log=lambda s: None)
    total, clamped = bench.half_width_sum(fine, layers)
    assert clamped == [] and total == pytest.approx(
        made_up(None, 3, 8) + made_up(None, 8, 16) + made_up(None, 256, 10))
    coarse = LatencyTable.measure(layers, step=64, progress=False, log=lambda s: None)
    total, clamped = bench.half_width_sum(coarse, layers)
    # the convs' half widths (8 of 16, 16 of 32) lie below their one grid point, priced dense;
    # the linear's 256 of 512 inputs lie on its grid (64, 128, ..., 512)
    assert clamped == ["0", "2"]
    assert total == pytest.approx(made_up(None, 3, 16) + made_up(None, 16, 32)
                                  + made_up(None, 256, 10))


def test_a_coarse_step_is_reported_as_clamped(fake_timing, tmp_path):
    bench = load_benchmark("bench_latency_table")
    assert bench.main(["--step", "1024", "--threads", "1", "--out", str(tmp_path / "lt")]) == 0
    r = json.loads((tmp_path / "lt.json").read_text())
    assert r["half_width_layers_below_grid"] > 0
    assert r["table_sum_half_width_note"].startswith("NOT a half-width prediction")
    assert "NOT a half-width prediction" in (tmp_path / "lt.md").read_text()


def test_points_timed_under_load_are_counted_in_the_results(fake_timing, tmp_path, monkeypatch):
    """break80 F8: said on stderr only; the results file gave load averages a reader had to
    compare with the core count."""
    measure = LatencyTable.measure.__func__

    def busy(cls, *a, **kw):  # every point timed on a busy machine (the fake timer reads no load)
        table = measure(cls, *a, **{**kw, "timer": made_up})
        table.stats["under_load"] = table.stats["measured"]
        return table

    monkeypatch.setattr(LatencyTable, "measure", classmethod(busy))
    bench = load_benchmark("bench_latency_table")
    assert bench.main(["--step", "1024", "--threads", "1", "--out", str(tmp_path / "lt")]) == 0
    r = json.loads((tmp_path / "lt.json").read_text())
    assert r["grid_points_timed_under_load"] == r["grid_points_timed"] > 0
    assert f"| grid_points_timed_under_load | {r['grid_points_timed']} |" in (
        tmp_path / "lt.md").read_text()
