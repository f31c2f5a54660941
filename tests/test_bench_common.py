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


def test_out_never_replaces_a_file_the_benchmark_did_not_write(tmp_path, monkeypatch, capsys):
    """break42 #7: ``--out`` at a user's own NAME.json (or a NAME.md beside no results file) is
    refused before any work, naming the file; the benchmark's own earlier file is replaced."""
    bench = load_benchmark("bench_knapsack")
    monkeypatch.setattr(bench, "PROBLEMS", {})  # nothing to time: the files are the point
    mine = tmp_path / "mine.json"
    mine.write_text('{"my": "notes"}')
    with pytest.raises(SystemExit) as e:
        bench.main(["--repeats", "1", "--out", str(tmp_path / "mine")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert f"{mine} exists and is not this benchmark's results file" in err
    assert "choose another --out" in err
    assert mine.read_text() == '{"my": "notes"}'
    # the benchmark's own file, written and written again
    assert bench.main(["--repeats", "1", "--out", str(tmp_path / "k")]) == 0
    assert bench.main(["--repeats", "1", "--out", str(tmp_path / "k")]) == 0
    # another benchmark's results are not this one's either, nor is a file that is not JSON
    common = load_benchmark("bench_common")
    for text in ((tmp_path / "k.json").read_text(), "not json", "[1, 2]"):
        (tmp_path / "other.json").write_text(text)
        with pytest.raises(SystemExit) as e:  # (review146 F9: a bare raises took exit 0 too)
            common.results_stem("fm", str(tmp_path / "other"), keys=("meta", "rows"))
        assert e.value.code == 2
        assert "other.json exists and is not this benchmark's results file" in capsys.readouterr().err
    # a NAME.md with no results file beside it is a user's
    (tmp_path / "notes.md").write_text("# my notes\n")
    with pytest.raises(SystemExit) as e:
        common.results_stem("fm", str(tmp_path / "notes"), keys=("meta", "rows"))
    assert e.value.code == 2
    assert "notes.md exists beside no notes.json" in capsys.readouterr().err
    # ... unless the benchmark writes no .md (knapsack: .json only)
    assert common.results_stem("k", str(tmp_path / "notes"), files=(".json",)) == tmp_path / "notes"


# The published results each benchmark wrote (benchmarks/results/*.json): a rerun with --out at
# them must replace them (and a rerun at the defaults the default one), while every other
# benchmark must refuse them.
PUBLISHED = {
    "bench_fashion_mnist": ([], ["fashion_mnist", "fashion_mnist_seed1"]),
    "bench_knapsack": ([], ["knapsack"]),
    "bench_latency_pruning": ([], ["latency_pruning"]),
    "bench_latency_table": ([], ["latency_table"]),
    "bench_methods": ([], ["methods_10epoch_smcp", "methods_10epoch_smcp_earlier",
                           "methods_10epoch_smcp_early", "methods_1epoch", "methods_1epoch_cucb",
                           "methods_1epoch_smcp_hysteresis3"]),
    "bench_overheads": ([], ["overheads"]),
    "bench_overheads --masks-only": (["--masks-only"], ["overheads_masks"]),
    "bench_smcp_ablation": ([], ["smcp_ablation"]),
    "bench_table_calibration": ([], ["table_calibration", "table_calibration_avx512_run1",
                                     "table_calibration_avx512_run2",
                                     "table_calibration_avx512_run3",
                                     "table_calibration_loaded_concat",
                                     "table_calibration_loaded_resnet"]),
    "bench_vs_torch_pruning": (["--no-tp"], ["vs_torch_pruning", "vs_torch_pruning_avx512"]),
    "bench_gpu": ([], []),
}


@pytest.mark.parametrize("script", PUBLISHED)
def test_each_benchmark_replaces_its_own_results_and_no_other(script, monkeypatch):
    """What each benchmark takes for its results file (the keys it passes to results_stem),
    checked against every published file: its own accepted, the others refused."""
    common = load_benchmark("bench_common")
    bench = load_benchmark(script.split()[0])
    args, own = PUBLISHED[script]
    seen = {}

    def capture(name, out=None, smoke=False, changed=(), **kw):
        seen.update(name=name, **kw)
        raise SystemExit(0)

    monkeypatch.setattr(bench, "results_stem", capture)
    with pytest.raises(SystemExit):
        bench.main(args)
    name = seen.pop("name")
    assert seen.get("keys"), f"{script} names no key of its results file"
    for other, (_, stems) in PUBLISHED.items():
        for stem in stems:
            path = str(common.RESULTS / stem)
            if other == script:
                assert common.results_stem(name, path, **seen) == common.RESULTS / stem
            else:
                with pytest.raises(SystemExit) as e:
                    common.results_stem(name, path, **seen)
                assert e.value.code == 2  # refused, not the capture's exit 0


def test_a_smoke_mode_keeps_the_options_given_in_any_spelling(monkeypatch):
    """break56 #14: bench_table_calibration --smoke looked for the literal "--iters" and ran 5
    timing runs for ``--iters=3``; bench_vs_torch_pruning --smoke trained concat for
    ``--nets resnet``."""
    import argparse

    common = load_benchmark("bench_common")
    p = argparse.ArgumentParser()
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--nets", nargs="+", default=["concat"])
    p.add_argument("--smoke", action="store_true")
    assert common.given_options(p, ["--smoke", "--iters=3"]) == {"smoke", "iters"}
    assert common.given_options(p, ["--iter", "3", "--nets", "resnet"]) == {"iters", "nets"}
    assert common.given_options(p, []) == set()
    assert p.parse_args([]).iters == 100  # the parser itself keeps its defaults

    bench = load_benchmark("bench_vs_torch_pruning")

    class Seen(Exception):
        pass

    def stop(args):  # the first thing main does with the arguments after the smoke defaults
        raise Seen(args)

    monkeypatch.setattr(bench, "smcp_rows", stop)
    with pytest.raises(Seen) as seen:
        bench.main(["--smoke", "--nets", "resnet", "--iters=7"])
    args = seen.value.args[0]
    assert (args.nets, args.iters, args.epochs, len(args.seeds)) == (["resnet"], 7, 2, 1)
    with pytest.raises(Seen) as seen:
        bench.main(["--smoke"])
    args = seen.value.args[0]
    assert (args.nets, args.iters, args.epochs) == (["concat"], bench.SMOKE_ITERS, 2)
