"""benchmarks/bench_gpu.py's smoke mode on the CPU: the script the GPU run will use, end to end
on tiny models (seconds), writing only to a temporary folder."""
from __future__ import annotations

import json
import warnings

import pytest
import torch

from helpers import BENCHMARKS, load_benchmark


def test_smoke_run_writes_every_section(tmp_path, monkeypatch):
    bench = load_benchmark("bench_gpu")
    # the sections' time budgets guard GPU time; here they would only make the test depend on
    # the load beside it (xd1: section a ran out of its 60 s beside four other processes)
    monkeypatch.setitem(bench.SMOKE, "budgets_s", {"a": 3600, "b": 3600, "c": 3600})
    out = tmp_path / "gpu"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert bench.main(["--device", "cpu", "--smoke", "--threads", "1", "--out", str(out)]) == 0
    # break167 F14: its own set-up (two pruners on one half-masked model) was warned of
    said = [str(w.message) for w in caught]
    assert not [m for m in said if "pruner was built on this model" in m or "already pruned" in m], said
    r = json.loads(out.with_suffix(".json").read_text())
    meta = r["meta"]
    # break42 #8: the header states the command as typed and the thread count
    command = f"python benchmarks/bench_gpu.py --device cpu --smoke --threads 1 --out {out}"
    assert meta["command"] == command and meta["torch_threads"] == 1
    assert f"`{command}` on " in out.with_suffix(".md").read_text()
    assert "1 CPU thread(s)" in out.with_suffix(".md").read_text()
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
        err = capsys.readouterr().err
        assert "CUDA is not available" in err and "--device cpu --smoke --out PREFIX" in err
        assert "--backend" not in err  # break80 F10: deploy's option, not this script's
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("args", [["--amp", "off"], ["--channel-step", "16"],
                                  ["--precision", "fp32"]])
def test_a_run_off_the_published_protocol_needs_out_where_gpu_json_exists(args, tmp_path,
                                                                           monkeypatch, capsys):
    """break42 #8: as the other benchmarks, before anything runs (a GPU or not); which GPU,
    the CPU threads or the default precision spelled out are not another protocol."""
    import sys

    bench = load_benchmark("bench_gpu")
    monkeypatch.setattr(sys.modules[bench.results_stem.__module__], "RESULTS", tmp_path)
    published = {"meta": {"device_type": "cuda"}, "training": [], "table": None, "speedups": [],
                 "skipped": [], "section_seconds": {}}
    (tmp_path / "gpu.json").write_text(json.dumps(published))
    with pytest.raises(SystemExit) as e:
        bench.main(args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"{args[0]} changes the published protocol" in err
    assert "give --out PATH" in err

    def no_device(name):
        raise RuntimeError("no device here")

    monkeypatch.setattr(bench.tb, "resolve_device", no_device)
    # the same options with --out, or only the GPU, threads or an explicit fp16: past the guard
    for ok in ([*args, "--out", str(tmp_path / "mine")],
               ["--device", "cuda:1", "--threads", "4", "--precision", "fp16"]):
        assert bench.main(ok) == 2  # stopped at the device
        assert "no device here" in capsys.readouterr().err


def test_profile_step_smoke_writes_both_tables_and_keeps_an_existing_file(tmp_path, capsys):
    """benchmarks/profile_step.py on the CPU: the plain and the half-masked step's top ops;
    a user's file at OUT.txt is refused, not replaced (break61 #8), and its own earlier
    output is replaced (break180 F9: that was refused too)."""
    profile = load_benchmark("profile_step")
    out = tmp_path / "prof"
    assert profile.main(["--device", "cpu", "--smoke", "--steps", "1", "--out", str(out)]) == 0
    text = (tmp_path / "prof.txt").read_text()
    assert "== plain" in text and "== half masked (prepared)" in text and "tiny_convnext" in text
    assert profile.main(["--device", "cpu", "--smoke", "--steps", "2", "--out", str(out)]) == 0
    assert "2 profiled steps" in (tmp_path / "prof.txt").read_text()
    mine = tmp_path / "mine.txt"
    mine.write_text("my notes\n")
    with pytest.raises(SystemExit) as e:
        profile.main(["--device", "cpu", "--smoke", "--out", str(mine)])
    assert e.value.code == 2 and "mine.txt exists and is not this script's output" in (
        capsys.readouterr().err)
    assert mine.read_text() == "my notes\n"
    # break80 F9: OUT.txt wrote OUT.txt.txt; a missing GPU or an unknown model: a traceback
    assert profile.main(["--device", "cpu", "--smoke", "--steps", "1", "--out",
                         str(tmp_path / "two.txt")]) == 0
    assert (tmp_path / "two.txt").is_file() and not (tmp_path / "two.txt.txt").exists()


@pytest.mark.parametrize("args, says", [
    (["--device", "cpu", "--model", "resnet5"], "--model resnet5: "),
    (["--device", "cpu", "--smoke", "--model", "resnet18"], "drop --model or --smoke"),
    *([(["--device", "cuda"], "--device cuda: asked for cuda.*CUDA is not available.*--device cpu --smoke")]
      if not torch.cuda.is_available() else []),
])
def test_profile_step_says_what_is_wrong_in_one_line(tmp_path, capsys, args, says):
    profile = load_benchmark("profile_step")
    with pytest.raises(SystemExit) as e:
        profile.main([*args, "--out", str(tmp_path / "p")])
    assert e.value.code == 2 and __import__("re").search(says, capsys.readouterr().err)
    assert not list(tmp_path.iterdir())


def test_ctrl_c_keeps_an_earlier_file_or_marks_the_sections_it_wrote(tmp_path, monkeypatch):
    """break167 F2: Ctrl-C rewrote the results as an empty, unmarked run, over a finished one.
    Interrupted before anything was measured, nothing is written; later, the file holds what
    was measured (review169 F2: a section's finished models too) and says it was interrupted."""
    bench = load_benchmark("bench_gpu")
    out = tmp_path / "gpu"
    args = ["--device", "cpu", "--smoke", "--threads", "1", "--sections", "ab", "--out", str(out)]

    def section(key, budgets, results, skipped, fn, stop_at, measured=True):
        if measured or key != stop_at:
            results["speedups"].append({"model": f"from ({key})"})  # a finished model's row
        if key == stop_at:
            raise KeyboardInterrupt
        results["section_seconds"][key] = 0.0

    monkeypatch.setattr(bench, "run_section", lambda *a: section(*a, stop_at="none"))
    assert bench.main(args) == 0
    finished = out.with_suffix(".json").read_text()
    monkeypatch.setattr(bench, "run_section", lambda *a: section(*a, stop_at="a", measured=False))
    with pytest.raises(KeyboardInterrupt):  # run_script says it in one line, status 130
        bench.main(args)
    assert out.with_suffix(".json").read_text() == finished
    for stop_at, models in (("a", ["from (a)"]), ("b", ["from (a)", "from (b)"])):
        monkeypatch.setattr(bench, "run_section", lambda *a: section(*a, stop_at=stop_at))
        assert bench.main(args) == 130
        r = json.loads(out.with_suffix(".json").read_text())
        assert r["meta"]["interrupted"].startswith(f"in section ({stop_at})")
        assert [row["model"] for row in r["speedups"]] == models
        assert f"(interrupted in section ({stop_at})" in out.with_suffix(".md").read_text()


def test_cpu_threads_follow_omp_num_threads_and_the_load_is_recorded(tmp_path, monkeypatch):
    """break180 F10: --device cpu took 2 threads whatever OMP_NUM_THREADS said, and recorded
    no load: a step timed 100x too slow beside other jobs was published without a word."""
    import os

    bench = load_benchmark("bench_gpu")

    def no_timing(key, budgets, results, skipped, fn):  # the sections are tested above
        results["section_seconds"][key] = 0.0

    monkeypatch.setattr(bench, "run_section", no_timing)
    readings = iter([(0.2, 2), (9.0, 2)])  # before, then a busy CPU after
    monkeypatch.setattr(bench, "cpu_load", lambda: next(readings))
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        out = tmp_path / "gpu"
        assert bench.main(["--device", "cpu", "--smoke", "--sections", "a", "--out", str(out)]) == 0
        meta = json.loads(out.with_suffix(".json").read_text())["meta"]
        assert meta["threads"] == 1 and meta["torch_threads"] == 1
        assert (meta["load_average_before"], meta["load_average_after"]) == (0.2, 9.0)
        assert meta["cores"] == 2 and meta["under_load"] is True
        assert "Timed under load (load average 0.2 before, 9.0 after, on 2 cores)" in (
            out.with_suffix(".md").read_text())
        monkeypatch.delenv("OMP_NUM_THREADS")
        monkeypatch.setattr(bench, "cpu_load", lambda: (0.0, 2))
        assert bench.main(["--device", "cpu", "--smoke", "--sections", "a", "--out", str(out)]) == 0
        meta = json.loads(out.with_suffix(".json").read_text())["meta"]
        assert meta["threads"] == len(os.sched_getaffinity(0)) and meta["under_load"] is False
        assert "under load" not in out.with_suffix(".md").read_text()
    finally:
        torch.set_num_threads(before)


def _gpu_checks(tmp_path, *args):
    """benchmarks/gpu_checks.sh run as break180 F7 ran it: SMOKE=1 and PYTHON=echo, so that its
    steps print their commands and nothing is installed or run (no GPU here)."""
    import os
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_checks.sh"
    env = {**os.environ, "SMOKE": "1", "PYTHON": "echo"}
    return subprocess.run(["bash", str(script), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)


def test_gpu_checks_help_usage_and_a_folder_of_other_files(tmp_path):
    """break180 F7: --help was taken for OUT_DIR (mkdir's help, then tee and cat errors), and
    a user's steps.txt and machine.txt in OUT_DIR were replaced."""
    for flag in ("-h", "--help"):
        done = _gpu_checks(tmp_path, flag)
        assert done.returncode == 0 and "usage:" in done.stdout and "OUT_DIR" in done.stdout
        assert not done.stderr
    for args in ((), ("a", "b"), ("--out",)):
        done = _gpu_checks(tmp_path, *args)
        assert done.returncode == 2 and "usage:" in done.stderr, args
    assert not list(tmp_path.iterdir())  # nothing made for a usage error
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "steps.txt").write_text("my notes\n")
    (mine / "machine.txt").write_text("my machine notes\n")
    done = _gpu_checks(tmp_path, "mine")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert ("mine holds files without this script's header line (machine.txt steps.txt: not "
            "written by it, or by an earlier version of it)") in done.stderr
    assert (mine / "steps.txt").read_text() == "my notes\n"
    assert sorted(p.name for p in mine.iterdir()) == ["machine.txt", "steps.txt"]
    (tmp_path / "afile").write_text("x")
    done = _gpu_checks(tmp_path, "afile")
    assert done.returncode == 2 and "afile is not a folder" in done.stderr
    # its own earlier output is replaced (a rerun), and the steps listed are this run's
    assert _gpu_checks(tmp_path, "new").returncode == 0
    written = sorted(p.name for p in (tmp_path / "new").iterdir())
    assert written == ["bench_gpu.log", "cuda_tests.log", "machine.txt", "steps.txt"]
    (tmp_path / "new" / "gpu.json").write_text('{"device_type": "mine"}')  # break182 F9
    assert _gpu_checks(tmp_path, "new").returncode == 2
    (tmp_path / "new" / "gpu.json").write_text(
        '{"meta": {"device_type": "cpu"}, "training": [], "speedups": [], "section_seconds": {}}')
    (tmp_path / "new" / "gpu.md").write_text("# table\n")
    done = _gpu_checks(tmp_path, "new")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "new" / "steps.txt").read_text().count("bench_gpu: exit 0") == 1
    (tmp_path / "new" / "notes.log").write_text("mine\n")
    done = _gpu_checks(tmp_path, "new")
    assert done.returncode == 2 and "(notes.log:" in done.stderr


def test_profile_step_knows_the_output_of_its_earlier_version(tmp_path):
    """break184 F2: an OUT.txt written before the header line, the shipped results file among
    them, was refused as "not this script's output"."""
    import shutil

    bench = load_benchmark("profile_step")
    shipped = tmp_path / "shipped.txt"
    shutil.copyfile(BENCHMARKS / "results" / "profile_convnext_h200.txt", shipped)
    mine = tmp_path / "mine.txt"
    mine.write_text("convnext notes, batch 2\n")
    assert bench.own_output(shipped) and not bench.own_output(mine)
