"""benchmarks/bench_common.py: where every benchmark writes its results."""
from __future__ import annotations

from pathlib import Path

import pytest

from helpers import load_benchmark


def test_a_smoke_run_without_out_never_writes_the_published_results():
    """Every benchmark names its results through bench_common.results_stem: a smoke run's
    default is NAME_smoke, beside (not over) the published NAME."""
    common = load_benchmark("bench_common")
    published = common.RESULTS / "table_calibration"
    assert common.results_stem("table_calibration") == published
    assert common.results_stem("table_calibration", smoke=True) == published.with_name(
        "table_calibration_smoke")
    assert common.results_stem("table_calibration", "/tmp/x", smoke=True) == Path("/tmp/x")
    # what a user may type for --out: an extension is dropped, a folder or nothing refused
    assert common.results_stem("gpu", "/tmp/x.json") == common.results_stem("gpu", "/tmp/x.md")
    assert common.results_stem("gpu", "/tmp/x.json") == Path("/tmp/x")


@pytest.mark.parametrize("out, says", [("", "--out is empty"), (".", "is a folder"),
                                       ("newdir/", "is a folder")])
def test_an_out_that_names_no_file_is_a_usage_error(out, says, capsys):
    common = load_benchmark("bench_common")
    with pytest.raises(SystemExit) as e:
        common.results_stem("gpu", out)
    assert e.value.code == 2 and says in capsys.readouterr().err


def test_a_run_off_the_published_protocol_needs_out_where_results_exist(tmp_path, monkeypatch, capsys):
    """A shrunk run (``--epochs 1``) without ``--out`` must not replace the published figures;
    the same options with ``--out``, or the published protocol, write as before."""
    import argparse
    common = load_benchmark("bench_common")
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default=None)
    shrunk = parser.parse_args(["--epochs", "1", "--jobs", "4"])
    assert common.changed_options(parser, shrunk) == ["--epochs", "--jobs"]
    assert common.changed_options(parser, shrunk, ignore=("jobs",)) == ["--epochs"]
    assert common.changed_options(parser, parser.parse_args(["--epochs", "10"])) == []
    # nothing published yet: nothing to protect
    assert common.results_stem("fm", changed=["--epochs"]) == tmp_path / "fm"
    (tmp_path / "fm.json").write_text("{}")
    with pytest.raises(SystemExit) as e:
        common.results_stem("fm", changed=["--epochs"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--epochs changes the published protocol" in err
    assert "give --out PATH" in err and err.count("\n") == 1
    assert common.results_stem("fm", "/tmp/fm1", changed=["--epochs"]) == Path("/tmp/fm1")
    assert common.results_stem("fm", smoke=True, changed=["--epochs"]) == tmp_path / "fm_smoke"
    assert common.results_stem("fm") == tmp_path / "fm"


@pytest.mark.parametrize("script, args", [
    ("bench_knapsack", ["--repeats", "1"]),
    ("bench_latency_pruning", ["--iters", "5"]),
    ("bench_latency_table", ["--step", "64"]),
    ("bench_fashion_mnist", ["--epochs", "1"]),
    ("bench_overheads", ["--steps", "2"]),
    ("bench_overheads", ["--masks-only", "--mask-steps", "2"]),
    ("bench_smcp_ablation", ["--seeds", "0"]),
    ("bench_table_calibration", ["--nets", "concat"]),
    ("bench_vs_torch_pruning", ["--no-tp", "--seeds", "0"]),
])
def test_each_benchmark_refuses_to_replace_its_published_results_with_a_shrunk_run(script, args, capsys):
    """Before any work: the published file is in the checkout, and the run changes its protocol."""
    bench = load_benchmark(script)
    with pytest.raises(SystemExit) as e:
        bench.main(args)
    assert e.value.code == 2
    assert "the published protocol" in capsys.readouterr().err
