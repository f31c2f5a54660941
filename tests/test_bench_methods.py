"""benchmarks/bench_methods.py --smoke: every row trains, prunes to the budget and finalizes exactly."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import load_benchmark

from fxprune.plot import load_points


def test_smoke_mode_runs_every_row(tmp_path):
    bench = load_benchmark("bench_methods")
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
    assert result["meta"]["device"] == "cpu" and result["meta"]["runtime_s"] > 0
    assert set(result["cucb_step_time"]) == {"full width", "rho 0.3", "rho 0.5", "rho 0.7"}
    assert 0 < result["solver"]["greedy_swap_hit_rate"] <= 1
    # the file is one `fxprune plot` draws: a point per row, its seeds' mean (break56 #15)
    points = {p.label: p for p in load_points([tmp_path / "methods_smoke.json"], latencies=False)}
    # a row's label names its target (break60 #5: "SMCP", where plot says "SMCP 50%" elsewhere)
    label = {r["row"]: r["row"] + ("" if r["target"] is None else f" {r['target'] * 100:g}%")
             for r in result["rows"]}
    assert label["SMCP"] == "SMCP 50%" and label["dense"] == "dense"
    assert set(points) == set(label.values())
    assert points["SMCP 50%"].accuracy == rows["SMCP"]["accuracy"][0]
    assert points[label["CUCB"]].family == "CUCB"
    assert points["SMCP 50%"].flops < points["dense"].flops


def test_reuse_reads_finished_rows_and_extra_rows_change_smcp(tmp_path):
    bench = load_benchmark("bench_methods")
    args = ["--smoke", "--rows", "dense", "late", "--extra", 'late={"warmup_fraction": 0.3, "ramp_fraction": 0.2}',
            "--runs-dir", str(tmp_path / "runs"), "--timing-steps", "1"]
    assert bench.main([*args, "--out", str(tmp_path / "a")]) == 0
    first = json.loads((tmp_path / "a.json").read_text())["runs"]
    assert [r["row"] for r in first] == ["dense", "late"] and not any(r.get("reused") for r in first)
    # a smoke run trains in its own folder, the epochs in the row's name (break56 #1)
    config = (tmp_path / "runs" / "smoke" / "late_e1_s0" / "config.yaml").read_text()
    assert "warmup_fraction: 0.3" in config
    assert bench.main([*args, "--reuse", "--out", str(tmp_path / "b")]) == 0
    second = json.loads((tmp_path / "b.json").read_text())["runs"]
    assert all(r["reused"] for r in second)
    assert [r["accuracy"] for r in second] == [r["accuracy"] for r in first]
    # another config under the same folder is trained, not read
    assert bench.main([*args[:5], 'late={"warmup_fraction": 0.2, "ramp_fraction": 0.2}', *args[6:], "--reuse",
                       "--out", str(tmp_path / "c")]) == 0
    third = {r["row"]: r for r in json.loads((tmp_path / "c.json").read_text())["runs"]}
    assert third["dense"]["reused"] and not third["late"].get("reused")


@pytest.mark.parametrize("given, expected", [(".", "{cwd}/smoke"), ("~/r", "{home}/r/smoke"),
                                             ("/", "/smoke"), ("runs", "{cwd}/runs/smoke")])
def test_smoke_runs_stay_inside_the_runs_dir(tmp_path, monkeypatch, given, expected):
    """break58: smoke runs went to a sibling folder, <runs>_smoke: ``--runs-dir .`` wrote to
    ../<cwd>_smoke, ``/`` failed, and ``~`` was a folder named "~" in the cwd."""
    bench = load_benchmark("bench_methods")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    cfg = bench.row_config("dense", {"method": "none"}, 0, 1, Path(given), 1, True)
    folder = expected.format(cwd=tmp_path, home=tmp_path / "home")
    assert cfg["out"] == f"{folder}/dense_e1_s0"


class _Stop(Exception):
    pass


def test_smoke_mode_keeps_the_options_given(tmp_path, monkeypatch):
    """break180 F5: --smoke replaced --epochs 2 with 1, --seeds 0 1 with [0] and
    --timing-steps with at most 3, without a word; the other smoke modes keep what was given."""
    bench = load_benchmark("bench_methods")
    trained, timed = [], []

    def fake_row(name, prune, seed, epochs, *rest):
        trained.append((name, seed, epochs))
        return {"row": name, "seed": seed, "accuracy": 0.5, "flops_ratio": 1.0,
                "params_ratio": 1.0, "train_time_s": 1.0}

    def fake_timing(widths, batch, rhos, steps, threads):
        timed.append(steps)
        raise _Stop

    monkeypatch.setattr(bench, "run_row", fake_row)
    monkeypatch.setattr(bench, "solver_hit_rate", lambda: {})
    monkeypatch.setattr(bench, "cucb_step_times", fake_timing)
    common = ["--smoke", "--rows", "dense", "--runs-dir", str(tmp_path / "runs"),
              "--out", str(tmp_path / "m")]
    with pytest.raises(_Stop):
        bench.main([*common, "--epochs", "2", "--seeds", "0", "1", "--timing-steps=7"])
    assert trained == [("dense", 0, 2), ("dense", 1, 2)] and timed == [7]
    trained.clear()
    timed.clear()
    with pytest.raises(_Stop):  # the smoke run's own defaults where nothing was given
        bench.main(common)
    assert trained == [("dense", 0, 1)] and timed == [3]


def test_a_users_file_in_a_rows_run_folder_is_one_line_before_any_training(tmp_path, monkeypatch,
                                                                         capsys):
    """break180 F6: a 27-line FileExistsError traceback naming --out, an option never typed,
    when that row's turn came (after the rows before it had trained)."""
    bench = load_benchmark("bench_methods")
    monkeypatch.setattr(bench, "run_row", lambda *a, **k: pytest.fail("trained"))
    folder = tmp_path / "runs" / "smoke" / "SMCP_e1_s0"
    folder.mkdir(parents=True)
    (folder / "mine.txt").write_text("mine\n")
    with pytest.raises(SystemExit) as e:
        bench.main(["--smoke", "--rows", "dense", "SMCP", "--runs-dir", str(tmp_path / "runs"),
                    "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    assert f"row 'SMCP' seed 0: its run folder {folder} already holds files fxprune did not " \
           "write (mine.txt); move them, or choose another --runs-dir" in err
    assert "--out" not in err and (folder / "mine.txt").read_text() == "mine\n"
    # review181 F6: a folder's other refusals name the row's folder and --runs-dir too
    (folder / "mine.txt").unlink()
    (folder / "checkpoint.pt").mkdir()
    with pytest.raises(SystemExit):
        bench.main(["--smoke", "--rows", "SMCP", "--runs-dir", str(tmp_path / "runs"),
                    "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert (f"row 'SMCP' seed 0: its run folder {folder} holds checkpoint.pt, which is not a "
            "file; fxprune writes a file of that name: move it, or choose another --runs-dir"
            ) in err and "--out" not in err, err
    assert not (tmp_path / "m.json").exists()


def test_reuse_runs_a_cucb_row_again_that_ran_before_its_draws_followed_the_seed(tmp_path,
                                                                                 monkeypatch,
                                                                                 capsys):
    """review189 R3: a CUCB row finished before the run's seed reached CUCB's generator (every
    seed drew alike; its results lack method_arguments) was reused without a word."""
    import yaml

    bench = load_benchmark("bench_methods")
    trained = []
    monkeypatch.setattr(bench, "train", lambda cfg, overwrite: trained.append(cfg) or {"x": 1})
    prune = bench.rows_for(1)["CUCB"]
    resolved = bench.row_config("CUCB", prune, 1, 1, tmp_path, 1, True)
    out = Path(resolved["out"])
    out.mkdir(parents=True)
    (out / "config.yaml").write_text(yaml.safe_dump(resolved))
    (out / "results.json").write_text(json.dumps({"accuracy": 0.5}))
    bench.run_row("CUCB", prune, 1, 1, tmp_path, 1, True, reuse=True)
    assert len(trained) == 1  # run again, and said why (break204 F5)
    assert capsys.readouterr().out == ("row 'CUCB' seed 1: trained again, not reused: its CUCB "
                                       "run predates draws that follow the run's seed (its "
                                       "results lack method_arguments)\n")
    (out / "results.json").write_text(json.dumps({"accuracy": 0.5, "method_arguments": {"seed": 1}}))
    assert bench.run_row("CUCB", prune, 1, 1, tmp_path, 1, True, reuse=True)["reused"]
    assert len(trained) == 1
