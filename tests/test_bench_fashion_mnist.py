"""benchmarks/bench_fashion_mnist.py: every row's config loads before any run, and the runs land
where the caller asked (break29 #3, #4)."""
from __future__ import annotations

import json

import pytest

from fxprune.run_io import RUN_MARKER
from helpers import load_benchmark


def test_every_rows_config_is_accepted_before_any_training(tmp_path):
    """break29 #3: the dense row kept the recipe's prune keys and was refused, after every
    other row had trained."""
    bench = load_benchmark("bench_fashion_mnist")
    for name in bench.METHODS:
        for target in ([None] if name == "dense" else [0.5]):
            _, config = bench.planned_config(name, target, 0, 1, tmp_path / name)
            assert (config["prune"]["method"] == "none") == (name == "dense")


def test_a_relative_runs_dir_is_the_callers(tmp_path, monkeypatch):
    """break29 #4: the runs trained into the checkout (their cwd) and the script then looked for
    them in the caller's folder."""
    bench = load_benchmark("bench_fashion_mnist")
    seen = []

    def fake_run(name, target, seed, epochs, out, fresh):
        seen.append(out)
        return {"row": name, "target": target, "seed": seed, "accuracy": 0.9, "flops_ratio": 1.0,
                "params_ratio": 1.0, "train_time_s": 1.0, "command": "x"}

    monkeypatch.setattr(bench, "run_one", fake_run)
    monkeypatch.chdir(tmp_path)
    assert bench.main(["--epochs", "1", "--methods", "dense", "--runs-dir", "runs",
                       "--out", "res"]) == 0
    assert seen == [tmp_path / "runs" / "dense_dense_e1_s0"]
    assert json.loads((tmp_path / "res.json").read_text())
    # break58 #5: a run of another length trains beside the 1-epoch one, not over it
    assert bench.main(["--epochs", "2", "--methods", "dense", "--runs-dir", "runs",
                       "--out", "res2"]) == 0
    assert seen[-1] == tmp_path / "runs" / "dense_dense_e2_s0"


def test_the_table_names_each_rows_seed_and_gives_the_mean_over_seeds():
    """break80 F12: two `| dense | - | 84.39% |` rows, with no seed to tell them apart."""
    bench = load_benchmark("bench_fashion_mnist")
    meta = {"command": "c", "cpu": "cpu", "cores": 2, "device": "cpu", "jobs": 1, "batch": 128,
            "torch": "2", "runtime_s": 1, "widths": [8], "epochs": 1, "seeds": [0, 1]}
    rows = [{"row": "dense", "target": None, "seed": s, "accuracy": a, "flops_ratio": 1.0,
             "params_ratio": 1.0, "train_time_s": 10} for s, a in ((0, 0.8439), (1, 0.8473))]
    text = bench.markdown(rows, meta)
    assert "| dense | - | 0 | 84.39% |" in text and "| dense | - | 1 | 84.73% |" in text
    assert "| dense | - | 2 | 84.56 +- 0.24% |" in text
    assert "mean +- std" not in bench.markdown(rows[:1], meta)


def test_ctrl_c_starts_none_of_the_queued_runs(tmp_path, monkeypatch):
    """break167 F1: after Ctrl-C stopped a run, leaving the thread pool waited for every queued
    run, which started and trained; a second Ctrl-C was needed."""
    import pytest

    bench = load_benchmark("bench_fashion_mnist")
    started = []

    def interrupted_run(name, target, seed, epochs, out, fresh):
        started.append(name)
        raise KeyboardInterrupt  # as the run's child reports the terminal's SIGINT

    monkeypatch.setattr(bench, "run_one", interrupted_run)
    with pytest.raises(KeyboardInterrupt):
        bench.main(["--epochs", "1", "--methods", "dense", "magnitude", "--targets", "0.5", "0.3",
                    "--jobs", "1", "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "r")])
    assert started == ["dense"] and not (tmp_path / "r.json").exists()


def _fake_train(bench, monkeypatch, started):
    """``fxprune train`` as run_one runs it, without training: its first line, a results file."""
    import subprocess
    from pathlib import Path

    def fake_run(cmd, stdout, **kwargs):
        out = Path(cmd[cmd.index("--out") + 1])
        started.append(out)
        print(f"fxprune train: {out} on cpu, 1 CPU thread(s)", file=stdout)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(
            {"accuracy": 0.9, "flops_ratio": 0.5, "params_ratio": 0.5, "train_time_s": 1.0}))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(bench.subprocess, "run", fake_run)


def test_a_users_file_at_a_rows_log_path_is_refused_and_its_own_log_replaced(tmp_path,
                                                                            monkeypatch, capsys):
    """break180 F4: a user's file at RUNS_DIR/<row>.log was truncated without a check."""
    import shutil

    import pytest

    bench = load_benchmark("bench_fashion_mnist")
    started = []
    _fake_train(bench, monkeypatch, started)
    runs = tmp_path / "runs"
    runs.mkdir()
    log = runs / "SMCP_50_e1_s0.log"
    log.write_text("my precious log\n")
    args = ["--epochs", "1", "--targets", "0.5", "--methods", "SMCP", "--jobs", "1",
            "--runs-dir", str(runs), "--out", str(tmp_path / "r")]
    with pytest.raises(SystemExit) as e:
        bench.main(args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    assert f"{log} exists and is not a log this benchmark wrote" in err and "--runs-dir" in err
    assert log.read_text() == "my precious log\n" and started == []
    log.unlink()

    def main_then_drop_the_run(extra=()):  # (the fake run's folder has no fxprune marker)
        assert bench.main([*args, *extra]) == 0
        shutil.rmtree(runs / "SMCP_50_e1_s0")

    main_then_drop_the_run()
    assert len(started) == 1 and log.read_text().splitlines()[0] == bench.LOG_HEADER
    main_then_drop_the_run(["--fresh"])  # its own log: replaced
    assert len(started) == 2 and log.read_text().count(bench.LOG_HEADER) == 1
    # a log written before the header: fxprune train's first line, for this very folder
    log.write_text(f"fxprune train: {runs / 'SMCP_50_e1_s0'} on cpu, 1 CPU thread(s)\n")
    main_then_drop_the_run(["--fresh"])
    assert len(started) == 3


def test_a_users_file_in_a_rows_run_folder_is_one_line_before_any_run(tmp_path, monkeypatch,
                                                                     capsys):
    """break180 F6: `RuntimeError: SMCP @ 0.5: exit 2, see ....log`, a traceback, once the
    row's run had been started (its log already truncated)."""
    import pytest

    bench = load_benchmark("bench_fashion_mnist")
    started = []
    _fake_train(bench, monkeypatch, started)
    folder = tmp_path / "runs" / "SMCP_50_e1_s0"
    folder.mkdir(parents=True)
    (folder / "mine.txt").write_text("mine\n")
    with pytest.raises(SystemExit) as e:
        bench.main(["--epochs", "1", "--targets", "0.5", "--methods", "dense", "SMCP",
                    "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    assert (f"row 'SMCP' at target 0.5 seed 0: its run folder {folder} already holds files "
            "fxprune did not write (mine.txt); move them, or choose another --runs-dir") in err
    assert "--out" not in err
    assert started == [] and not (tmp_path / "runs" / "SMCP_50_e1_s0.log").exists()


def test_a_log_of_an_earlier_version_is_its_own_in_a_moved_runs_folder(tmp_path):
    """break184 F4: a log without the header line was recognised only under the --runs-dir
    path it was written with."""
    bench = load_benchmark("bench_fashion_mnist")
    out = tmp_path / "moved" / "SMCP_50_e1_s0"
    log = bench.log_path(out)
    log.parent.mkdir(parents=True)
    log.write_text("fxprune train: /elsewhere/runs/SMCP_50_e1_s0 on cpu, 1 CPU thread(s)\n")
    assert bench.own_log(log, out)
    log.write_text("fxprune train: /elsewhere/runs/dense_e1_s0 on cpu, 1 CPU thread(s)\n")
    assert not bench.own_log(log, out)
    # break204 F3: one from before fxprune train named its folder begins with the schedule,
    # its run folder beside it marked as fxprune train's
    log.write_text("prune (smcp) schedule in optimizer steps (469 per epoch): warmup 46\n")
    assert not bench.own_log(log, out)  # no run folder of fxprune's beside it
    out.mkdir()
    (out / RUN_MARKER).write_text("")
    assert bench.own_log(log, out)
    log.write_text("my notes on prune (smcp) schedule in optimizer steps\n")
    assert not bench.own_log(log, out)
    log.write_text("epoch 1/1: train loss 0.5 acc 0.8 | test loss 0.4 acc 0.85\n")  # a dense
    assert bench.own_log(log, out)  # row's (break209 F5)


@pytest.mark.parametrize("option, value, says", [
    ("--targets", "1.5", "argument --targets: the fraction of the dense cost to keep, in (0, 1]; "
                         "got 1.5"),
    ("--seeds", "-1", "argument --seeds: must be >= 0, got -1")])
def test_a_target_or_seed_out_of_range_is_named_as_typed(option, value, says, tmp_path, capsys):
    """break187 F2: --targets 1.5 and --seeds -1 were refused as errors of the shipped
    configs/fashion_mnist_smcp.yaml (and "at target None" for a seed)."""
    bench = load_benchmark("bench_fashion_mnist")
    with pytest.raises(SystemExit) as e:
        bench.main([option, value, "--epochs", "1", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.rstrip().endswith(says), err
    assert "fashion_mnist_smcp.yaml" not in err


def test_a_row_saved_before_a_new_recipe_key_is_the_same_config(tmp_path):
    """break192 F2: config.yaml and a checkpoint written before `model.kwargs` existed were
    compared raw with today's resolved config, so every finished row was trained again (its
    results replaced) and every interrupted one restarted instead of resuming."""
    import torch
    import yaml

    bench = load_benchmark("bench_fashion_mnist")
    out = tmp_path / "SMCP_50_e1_s0"
    out.mkdir()
    _, planned = bench.planned_config("SMCP", 0.5, 0, 1, out)
    older = json.loads(json.dumps(planned))
    del older["model"]["kwargs"]  # a key the recipe schema gained since the row was trained
    (out / "config.yaml").write_text(yaml.safe_dump(older))
    torch.save({"config": older}, out / "checkpoint.pt")
    assert bench._saved_config(out, "config.yaml") == planned
    assert bench._saved_config(out, "checkpoint.pt") == planned
    (out / "config.yaml").write_text(yaml.safe_dump({**older, "optim": {"epochs": "x"}}))
    assert bench._saved_config(out, "config.yaml") is None  # no longer a config: run it anew
