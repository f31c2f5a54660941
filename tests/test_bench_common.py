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
def test_an_out_that_names_no_file_is_a_usage_error(out, says, capsys, monkeypatch):
    common = load_benchmark("bench_common")
    monkeypatch.setattr("sys.argv", ["benchmarks/bench_gpu.py", "--out", out])
    with pytest.raises(SystemExit) as e:
        common.results_stem("gpu", out)
    err = capsys.readouterr().err
    assert e.value.code == 2 and says in err
    # argparse's form, as the script's parser.error refusals end (review183 R8)
    assert err.startswith("bench_gpu.py: error: ") and err.count("\n") == 1


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


@pytest.mark.parametrize("script, args, says", [
    ("bench_vs_torch_pruning", ["--no-tp", "--epochs", "-1"], "--epochs: must be >= 1, got -1"),
    ("bench_vs_torch_pruning", ["--no-tp", "--iters", "0"], "--iters: must be >= 1, got 0"),
    ("bench_latency_table", ["--batch", "0"], "--batch: must be >= 1, got 0"),
    ("bench_methods", ["--timing-steps", "0"], "--timing-steps: must be >= 1, got 0"),
    ("bench_overheads", ["--threads", "0"], "--threads: must be >= 1, got 0"),
    ("bench_knapsack", ["--repeats", "0"], "--repeats: must be >= 1, got 0"),
    ("bench_knapsack", ["--ratio", "1"], "--ratio is the fraction of the dense cost removed"),
    ("bench_smcp_ablation", ["--update-every", "x"], "'x' is not a whole number"),
    ("bench_latency_pruning", ["--models", "nosuch"], "nosuch not among torchvision's classification"),
    ("bench_latency_pruning", ["--models", "fcn_resnet50"], "fcn_resnet50 not among"),
    # break180 F1-F3: found after the table was timed or the dense rows trained
    ("bench_latency_pruning", ["--target", "2"], "--target: the fraction of the dense cost to keep, in (0, 1]; got 2"),
    ("bench_latency_pruning", ["--target", "0"], "--target: the fraction of the dense cost to keep"),
    ("bench_latency_pruning", ["--target", "-0.5"], "--target: the fraction of the dense cost to keep"),
    ("bench_vs_torch_pruning", ["--smoke", "--target", "2"], "--target: the fraction of the dense cost"),
    ("bench_vs_torch_pruning", ["--smoke", "--lr", "-1"], "--lr: must be > 0, got -1"),
    ("bench_smcp_ablation", ["--smoke", "--target", "2"], "--target: the fraction of the dense cost"),
    ("bench_smcp_ablation", ["--smoke", "--target", "nan"], "--target: 'nan' is not a number"),
    ("bench_smcp_ablation", ["--smoke", "--lr", "-1"], "--lr: must be > 0, got -1"),
    # break182 F3: four rows trained, then a traceback
    ("bench_smcp_ablation", ["--smoke", "--hysteresis", "-1"], "--hysteresis: must be >= 0, got -1"),
    # break180 F13: "invalid <lambda> value: 'x'"
    ("bench_vs_torch_pruning", ["--round-to", "x"], "--round-to: 'x' is not an integer >= 1 or 'none'"),
])
def test_a_count_out_of_range_is_refused_before_any_work(script, args, says, capsys):
    """break167 F4-F8: --epochs -1 trained nothing and exited 0, --batch 0 timed an empty batch
    for minutes, --timing-steps 0 failed after every row had trained, --threads 0, --repeats 0,
    --ratio 1 and an unknown model were tracebacks."""
    bench = load_benchmark(script)
    with pytest.raises(SystemExit) as e:
        bench.main(args)
    assert e.value.code == 2 and says in capsys.readouterr().err


def test_a_results_path_that_cannot_be_written_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    """break167 F3: the scripts write at the end, and a read-only folder was a traceback after
    all the work (hours, for the methods protocol)."""
    import tempfile

    bench = load_benchmark("bench_knapsack")
    timed = []
    monkeypatch.setattr(bench, "time_problem", lambda *a: timed.append(a))
    (tmp_path / "file").write_text("")
    with monkeypatch.context() as m:  # a results file of its own, for the link to point to
        m.setattr(bench, "PROBLEMS", {})
        assert bench.main(["--repeats", "1", "--out", str(tmp_path / "k")]) == 0
    (tmp_path / "link.json").symlink_to(tmp_path / "k.json")

    def read_only(*a, **k):
        raise PermissionError(30, "Read-only file system")

    for out, says in ((tmp_path / "file" / "k", "file is a file, not a folder"),
                      (tmp_path / "link", "is a symbolic link"),
                      (tmp_path / "new" / "k", "Read-only file system")):
        with monkeypatch.context() as m:
            if "new" in str(out):
                m.setattr(tempfile, "mkstemp", read_only)
            with pytest.raises(SystemExit) as e:
                bench.main(["--repeats", "1", "--out", str(out)])
        err = capsys.readouterr().err
        assert e.value.code == 2 and says in err and "choose another --out" in err, err
    assert timed == []
    methods = load_benchmark("bench_methods")  # its run folders, named by their own option
    with pytest.raises(SystemExit):
        methods.main(["--smoke", "--runs-dir", str(tmp_path / "file" / "runs"),
                      "--out", str(tmp_path / "m")])
    assert "choose another --runs-dir" in capsys.readouterr().err


def test_ctrl_c_in_a_benchmark_is_one_line_and_status_130(capsys):
    """break167 F9: a 17-frame traceback, and no word of how to resume."""
    common = load_benchmark("bench_common")

    def interrupted():
        raise KeyboardInterrupt

    assert common.run_script(interrupted, "add --reuse") == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted; no results file was written" in err
    assert err.rstrip().endswith("; add --reuse")
    assert common.run_script(lambda: 0) == 0
    # a script that writes as it goes says what the file holds (review169 F1)
    assert common.run_script(interrupted, left="the file holds the rows finished") == 130
    assert "interrupted; the file holds the rows finished\n" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--model=resnet50", "--batch=8"])
def test_profile_step_s_smoke_mode_refuses_what_it_would_replace(option, tmp_path, capsys):
    """break167 F7: --model=resnet50 (typed with '=') and --batch 8 were replaced without a word
    by the smoke run's tiny model at batch 4."""
    bench = load_benchmark("profile_step")
    with pytest.raises(SystemExit) as e:
        bench.main(["--smoke", "--device", "cpu", option, "--out", str(tmp_path / "p")])
    assert e.value.code == 2 and "drop --" in capsys.readouterr().err
