"""Reliability and safety (issue 8): nothing silently wrong, nothing of the user's destroyed,
no code run from a file without consent, every bad input a one-line error.

Each test names the issue's bullet it covers. Runs use synthetic data and a tiny ResNet.
"""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

import fxprune
from fxprune.cli import main as cli_main
from fxprune.data import write_idx
from fxprune.run_io import load_checkpoint, set_rng_state
from fxprune.train import (ConfigError, TargetNotReachedError, load_config,
                           resolve_config, train)
from helpers import TINY_RECIPE as TINY

SMCP_TINY = ["prune.method=smcp", "prune.target=0.5", "prune.warmup_epochs=0.5",
             "prune.ramp_epochs=1", "prune.cooldown_epochs=0.5", "prune.update_every=2",
             "prune.channel_step=1"]


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    return err


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# ----------------------------------------------------------------------------- 1. target reached

@pytest.mark.parametrize("epochs, phrase", [
    (1, r"prune.cooldown_epochs \(1\) >= optim.epochs \(1\) leaves no epoch to prune"),
    (2, r"the pruning ramp ends at epoch 2 .* but masks stop changing at epoch 1"),
])
def test_schedule_that_cannot_reach_target_is_a_config_error(recipe, tmp_path, capsys, epochs, phrase):
    out = tmp_path / "run"
    rc = cli_main(["train", str(recipe), "--set", f"optim.epochs={epochs}", "--set", "prune.method=smcp",
                   "--set", "prune.warmup_epochs=0.5", "--set", "prune.ramp_epochs=1.5",
                   "--set", "prune.cooldown_epochs=1", "--out", str(out)])
    err = one_line_error(capsys)
    assert rc == 2
    assert re.search(phrase, err), err
    assert not out.exists()  # refused before any work: no folder left behind


def test_schedule_in_steps_cut_by_freeze_is_refused():
    from fxprune.recipe_config import check_schedule_steps
    from fxprune.schedule import PruningSchedule

    with pytest.raises(ConfigError, match="reaches its target at step 150 .* stop changing at "
                                          "step 120 of 200"):
        check_schedule_steps(PruningSchedule(50, 100, 10, freeze_after=120), 0.5, 200)
    check_schedule_steps(PruningSchedule(50, 100, 10, freeze_after=150), 0.5, 200)  # fits


def test_last_update_lands_on_the_ramp_end_whatever_update_every():
    from fxprune.schedule import PruningSchedule

    s = PruningSchedule(warmup=5, ramp=23, update_every=10)
    assert [t for t in range(60) if s.updates_at(t)] == [15, 25, 28, 35, 45, 55]
    assert s.target(28, 0.5) == pytest.approx(0.5)
    # with a cool-down: the extra update only where no regular one is left before the freeze
    assert PruningSchedule(5, 23, 10, freeze_after=30).updates_at(28)
    assert not PruningSchedule(5, 23, 10, freeze_after=35).updates_at(28)  # 35 updates


class AboveTargetPruner:
    """A method that never gets below its target (what the loud check exists for)."""

    def __init__(self, pm, target, **kwargs):
        self.target = target

    def step(self):
        pass

    def cost(self):
        return 0.9

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_run_ending_above_target_fails_loudly_unless_allowed(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fxprune, "SMCP", AboveTargetPruner, raising=False)
    out = tmp_path / "run"
    cfg = resolve_config(TINY, [f"out={out}", "optim.epochs=1", "prune.method=smcp",
                                "prune.target=0.5"])
    with pytest.raises(TargetNotReachedError, match=r"cost 0.9000 of dense, above its target "
                                                    r"0.5000.*prune.allow_above_target=true"):
        train(cfg)
    results = json.loads((out / "results.json").read_text())
    assert results["target_reached"] is False and results["target"] == 0.5
    # the CLI: one line, non-zero exit
    yaml_path = tmp_path / "r.yaml"
    yaml_path.write_text(yaml.safe_dump(TINY))
    rc = cli_main(["train", str(yaml_path), "--set", "optim.epochs=1", "--set",
                   "prune.method=smcp", "--set", "prune.target=0.5", "--out", str(out),
                   "--overwrite"])
    # status 3: trained and written, not a config error's 2 (break85 F3)
    assert rc == 3 and "above its target" in one_line_error(capsys)
    allowed = train(resolve_config(cfg, ["prune.allow_above_target=true"]), overwrite=True)
    assert allowed["target_reached"] is False
    # a finished run resumed (nothing to train) says the same, and accepts it when allowed
    with pytest.raises(TargetNotReachedError, match=r"cost 0.9000 of dense, above its target") \
            as finished:
        train(cfg, resume=True)
    # resuming cannot lengthen a finished run: the way out is a new run (review178 F9)
    assert "the run is finished and resuming prunes it no further: in a new run (another " \
           "--out), change prune.method smcp's settings (it declares no schedule" \
           in str(finished.value)  # as its first error said (review181 F7)
    assert "lengthen the schedule" not in str(finished.value)
    assert json.loads((out / "results.json").read_text())["schedule_end"] is None
    # results a version before schedule_end wrote do not say whether there is one (review183 R5)
    old = json.loads((out / "results.json").read_text())
    from fxprune.run_io import atomic_write_text

    del old["schedule_end"]
    atomic_write_text(out / "results.json", json.dumps(old))  # as the run wrote it
    with pytest.raises(TargetNotReachedError, match=r"in a new run \(another --out\), lengthen "
                                                    r"the schedule or change prune.method smcp's "
                                                    r"settings, or set"):
        train(cfg, resume=True)
    assert train(resolve_config(cfg, ["prune.allow_above_target=true"]),
                 resume=True)["target_reached"] is False


def test_smcp_run_reaches_its_target(tmp_path):
    results = train(resolve_config(TINY, [f"out={tmp_path / 'run'}", *SMCP_TINY]))
    assert results["target_reached"] is True
    assert results["pruner_cost"]["cost"] <= 0.5 + 1e-9


# ----------------------------------------------------------------------------- 2. user files

def test_folder_of_user_files_is_refused_byte_for_byte(recipe, tmp_path, capsys):
    project = tmp_path / "myproject"
    project.mkdir()
    (project / "config.yaml").write_text("mine\n")
    (project / "metrics.csv").write_text("a,b\n")
    before = snapshot(project)
    rc = cli_main(["train", str(recipe), "--out", str(project)])
    err = one_line_error(capsys)
    assert rc == 2 and "already holds files fxprune did not write (config.yaml, metrics.csv);" in err
    assert snapshot(project) == before
    rc = cli_main(["train", str(recipe), "--out", str(project), "--overwrite"])
    assert rc == 2 and snapshot(project) == before  # --overwrite is for fxprune's own runs
    # break52: --resume said "run without --resume to start", which is the refusal above
    capsys.readouterr()
    rc = cli_main(["train", str(recipe), "--out", str(project), "--resume"])
    err = one_line_error(capsys)
    assert rc == 2 and ("holds no fxprune run (no checkpoint, and files fxprune did not write: "
                        "config.yaml, metrics.csv); point --out at the run to continue, or at a "
                        "new or empty folder") in err
    assert "run without --resume" not in err and snapshot(project) == before


def test_recipe_inside_its_own_out_folder_is_not_replaced(tmp_path, capsys):
    exp = tmp_path / "exp"
    exp.mkdir()
    text = "# my comments\n" + yaml.safe_dump(TINY)
    (exp / "config.yaml").write_text(text)
    rc = cli_main(["train", str(exp / "config.yaml"), "--out", str(exp), "--set",
                   "optim.epochs=1"])
    assert rc == 2 and "did not write" in one_line_error(capsys)
    assert (exp / "config.yaml").read_text() == text


def test_overwrite_of_own_run_leaves_other_files_alone(recipe, tmp_path):
    out = tmp_path / "run"
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=1", "--out", str(out)]) == 0
    assert (out / ".fxprune-run").is_file()
    mine = {"notes.txt": "my notes", "metrics.tmp": "mine", "steps.tmp": "mine too"}
    for name, text in mine.items():  # break24 #5: the CSV logs were rewritten via NAME.tmp
        (out / name).write_text(text)
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=1", "--out", str(out),
                     "--overwrite"]) == 0
    assert {name: (out / name).read_text() for name in mine} == mine
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp") and p.name not in mine]


def test_overwrite_keeps_a_file_of_a_run_name_that_fxprune_did_not_write(recipe, tmp_path, capsys):
    """break52 #2: --overwrite removed every file of a run file's name, so a user's dense model
    copied in as model_dense.pt (which an SMCP run never writes) was deleted without a word."""
    out = tmp_path / "run"
    assert cli_main(["train", str(recipe), *sum((["--set", s] for s in SMCP_TINY), []),
                     "--set", "optim.epochs=2", "--out", str(out)]) == 0
    assert not (out / "model_dense.pt").exists()
    (out / "model_dense.pt").write_bytes(b"the user's dense model")
    rc = cli_main(["train", str(recipe), "--set", "optim.epochs=1", "--out", str(out), "--overwrite"])
    assert rc == 2 and f"--overwrite: model_dense.pt in {out} was not written by fxprune" in (
        one_line_error(capsys))
    assert (out / "model_dense.pt").read_bytes() == b"the user's dense model"
    (out / "results.json").write_text("{}")  # a file of the run, changed since: refused too
    (out / "model_dense.pt").unlink()
    rc = cli_main(["train", str(recipe), "--set", "optim.epochs=1", "--out", str(out), "--overwrite"])
    assert rc == 2 and "results.json in" in one_line_error(capsys)
    (out / "results.json").unlink()
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=1", "--out", str(out), "--overwrite"]) == 0


def test_the_marker_fails_safe_and_guards_every_start(recipe, tmp_path, capsys):
    """break54 #1: a kill while the marker was rewritten in place left it empty, which read as
    an older fxprune's marker (no record), and --overwrite removed a user's model_dense.pt.
    #3: a plain start after a run stopped in its first epoch, and --resume, replaced files
    --overwrite refused. #8: the files were named one per attempt. #6: a folder of a run
    file's name, and --out a dangling link, failed after prepare."""
    from fxprune.run_io import RUN_MARKER

    out = tmp_path / "run"
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=1", "--out", str(out)]) == 0
    marker = (out / RUN_MARKER).read_text()
    (out / "model_pruned.pt").write_bytes(b"the user's model")
    (out / RUN_MARKER).write_text("")  # as a kill mid-rewrite left it
    rc = cli_main(["train", str(recipe), "--set", "optim.epochs=1", "--out", str(out), "--overwrite"])
    assert rc == 2 and (f"--overwrite: config.yaml, metrics.csv, steps.csv, checkpoint.pt, "
                        f"model_dense.pt, model_pruned.pt, results.json in {out} were not written "
                        "by fxprune (or changed since), and starting over would remove them; "
                        "move them") in (
        one_line_error(capsys))
    assert (out / "model_pruned.pt").read_bytes() == b"the user's model"
    (out / RUN_MARKER).write_text(marker)
    rc = cli_main(["train", str(recipe), "--set", "optim.epochs=2", "--out", str(out), "--resume"])
    assert rc == 2 and "--resume: model_pruned.pt in" in one_line_error(capsys)
    assert (out / "model_pruned.pt").read_bytes() == b"the user's model"
    # a run stopped in its first epoch (no checkpoint), a user's notes as metrics.csv
    for name in ("checkpoint.pt", "checkpoint.prev.pt", "model_dense.pt", "model_pruned.pt",
                 "results.json"):
        (out / name).unlink(missing_ok=True)
    (out / "metrics.csv").write_text("my notes\n")
    rc = cli_main(["train", str(recipe), "--set", "optim.epochs=1", "--out", str(out)])
    assert rc == 2 and f"--out {out}: metrics.csv in" in one_line_error(capsys)
    assert (out / "metrics.csv").read_text() == "my notes\n"
    (out / "metrics.csv").unlink()
    (out / "steps.csv").unlink()
    (out / "steps.csv").mkdir()
    rc = cli_main(["train", str(recipe), "--set", "optim.epochs=1", "--out", str(out), "--overwrite"])
    assert rc == 2 and "holds steps.csv, which is not a file" in one_line_error(capsys)
    assert (out / "config.yaml").is_file()  # nothing removed
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    rc = cli_main(["train", str(recipe), "--set", "optim.epochs=1", "--out", str(tmp_path / "link")])
    assert rc == 2 and "is a symbolic link to" in one_line_error(capsys)


def _killed_before_the_record(run_io, name, calls):
    """``_record_written`` that records ``name``'s pending write, then raises (a kill) where
    the record after the write would be made."""
    real = run_io._record_written

    def record(path, **kwargs):
        if path.name != name:  # the marker's own write, other files
            return real(path, **kwargs)
        pending = kwargs.get("from_file") is not None or bool(kwargs.get("appending"))
        calls.append(pending)
        if not pending:
            raise KeyboardInterrupt  # the record after the write never happens
        real(path, **kwargs)
    return record


def test_a_kill_between_a_write_and_its_record_leaves_the_file_the_runs(tmp_path, monkeypatch):
    """The marker records a file before it is written (pending) and after: a kill in between
    must not make the run's own file look like the user's at the next start."""
    from fxprune import run_io

    out = tmp_path / "run"
    run_io.claim_out_folder(out)
    log = run_io.CsvLog(out / "steps.csv")
    log.append({"step": 1, "loss": 2.0})
    calls = []
    monkeypatch.setattr(run_io, "_record_written", _killed_before_the_record(run_io, "steps.csv", calls))
    with pytest.raises(KeyboardInterrupt):
        log.append({"step": 2, "loss": 1.0})
    monkeypatch.undo()
    assert calls == [True, False] and (out / "steps.csv").read_text().count("\n") == 3
    assert run_io.foreign_run_files(out) == []
    (out / "results.json").write_text("{}")  # never recorded: the user's
    assert run_io.foreign_run_files(out) == ["results.json"]


def test_a_log_row_cut_mid_write_is_dropped_at_the_resume_not_glued_to_the_next(tmp_path):
    """break148 F3: a full disk cut a steps.csv row inside its step number ("3" of "36"); the
    resume kept it as step 3 and appended the next row onto it: step 36 logged as 336."""
    import csv

    from fxprune import run_io

    out = tmp_path / "run"
    run_io.claim_out_folder(out)
    log = run_io.CsvLog(out / "steps.csv")
    for step in (28, 32):
        log.append({"step": step, "loss": 1.0})
    with (out / "steps.csv").open("a") as f:
        f.write("3")  # what fitted of the row of step 36
    resumed = run_io.CsvLog(out / "steps.csv")
    resumed.truncate("step", 32)  # the checkpoint was at step 32
    resumed.append({"step": 36, "loss": 0.5})
    with (out / "steps.csv").open(newline="") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [28, 32, 36]
    run_io.release_out_folder(out)


@pytest.mark.parametrize("killed", ["before the rename", "after the rename", "mid-append"])
def test_a_pending_write_left_by_a_kill_does_not_adopt_a_later_file(tmp_path, monkeypatch, killed):
    """break58 #2: a kill left the file's entry "pending", which matched any file: a user's
    file put at that name later counted as fxprune's, and --overwrite removed it. The pending
    entry now holds the file before and after the write; the run's file is fxprune's in
    either state, another file is not."""
    from fxprune import run_io

    out = tmp_path / "run"
    run_io.claim_out_folder(out)
    run_io.atomic_write_text(out / "config.yaml", "a: 1\n")
    log = run_io.CsvLog(out / "steps.csv")
    log.append({"step": 1, "loss": 2.0})
    calls = []
    if killed == "mid-append":
        monkeypatch.setattr(run_io, "_record_written", _killed_before_the_record(run_io, "steps.csv", calls))
        with pytest.raises(KeyboardInterrupt):
            log.append({"step": 2, "loss": 1.0})
        name = "steps.csv"
    else:
        if killed == "before the rename":
            real_replace = os.replace

            def replace(src, dst):  # the kill falls between the marker's record and the rename
                if Path(dst).name == "config.yaml":
                    raise KeyboardInterrupt
                real_replace(src, dst)
            monkeypatch.setattr(run_io.os, "replace", replace)
        else:
            monkeypatch.setattr(run_io, "_record_written", _killed_before_the_record(run_io, "config.yaml", calls))
        with pytest.raises(KeyboardInterrupt):
            run_io.atomic_write_text(out / "config.yaml", "a: 2\n")
        name = "config.yaml"
    monkeypatch.undo()
    assert run_io.foreign_run_files(out) == []  # the run's file, as it was or as it was to be
    (out / name).unlink()
    (out / name).write_text("the user's own file\n")  # put there after the kill
    assert run_io.foreign_run_files(out) == [name]
    if killed == "mid-append":  # a row cut short by the kill is still the run's log
        (out / name).unlink()
        log.rows = log.rows[:1]
        log._rewrite()
        log.rows.append({"step": 2, "loss": 1.0})
        monkeypatch.setattr(run_io, "_record_written", _killed_before_the_record(run_io, "steps.csv", []))
        with pytest.raises(KeyboardInterrupt):
            log.append({"step": 3, "loss": 0.5})
        monkeypatch.undo()
        data = (out / name).read_bytes()
        (out / name).write_bytes(data[:-4])  # the kill fell inside the row
        assert run_io.foreign_run_files(out) == []


def test_a_second_train_in_the_same_out_is_refused(recipe, tmp_path, capsys):
    """break58 #3: two starts in one --out both wrote its checkpoint and logs. A train holds
    the folder's flock; another process's start is refused in one line, and the lock goes
    with the train that held it."""
    import fcntl

    out = tmp_path / "run"
    out.mkdir()
    other = os.open(out, os.O_RDONLY)  # another open of the folder: another train's lock
    try:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        rc = cli_main(["train", str(recipe), "--set", "optim.epochs=1", "--out", str(out)])
        assert rc == 2 and "is in use: another fxprune run is writing there" in one_line_error(capsys)
        assert list(out.iterdir()) == []  # nothing written
    finally:
        os.close(other)
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=1", "--out", str(out)]) == 0
    mine = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(mine, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released at the train's end
    finally:
        os.close(mine)


def test_a_run_finished_in_a_new_folder_after_the_check_is_not_removed(recipe, tmp_path):
    """break60 #2: two trains with one new --out: the second checked while the folder did not
    exist (nothing to lock), the first created it and finished, then the second's claim took
    the free lock and its fresh logs removed the first run's files. The claim checks again."""
    from fxprune import run_io

    out = tmp_path / "race"
    run_io.check_out_folder(out, resume=False, overwrite=False)  # the second train's check
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=1", "--out", str(out)]) == 0
    files = sorted(p.name for p in out.iterdir())
    with pytest.raises(FileExistsError, match="already holds a run"):
        run_io.claim_out_folder(out)
    assert sorted(p.name for p in out.iterdir()) == files
    run_io.release_out_folder(out)


def test_a_start_removes_the_temporary_files_a_kill_left(tmp_path):
    """break60: a kill mid-save left ``.checkpoint.pt.<hex>.tmp`` (checkpoint-sized), which
    no later run removed. break61 #7: removing every file named so removed the user's too;
    the marker records each temporary name before the file exists, and only those go."""
    from fxprune import run_io

    out = tmp_path / "run"
    run_io.claim_out_folder(out)
    run_io.release_out_folder(out)
    killed = subprocess.run([sys.executable, "-c", f"""
import os
from pathlib import Path
from fxprune import run_io
def write(tmp):
    Path(tmp).write_bytes(b"x" * 100)
    os._exit(9)  # killed mid-save: no except clause, no finally
run_io.atomic_write(Path({str(out)!r}) / "checkpoint.pt", write)
"""], capture_output=True, text=True, timeout=120)
    assert killed.returncode == 9, killed.stderr
    left = [p.name for p in out.iterdir() if p.name.startswith(".checkpoint.pt.")]
    assert len(left) == 1 and run_io._temps(out) == left
    (out / ".results.json.0123abcd.tmp").write_text("mine")  # named like one, never recorded
    run_io.claim_out_folder(out)
    run_io.release_out_folder(out)
    assert sorted(p.name for p in out.iterdir()) == [".fxprune-run", ".results.json.0123abcd.tmp"]
    assert run_io._temps(out) == []
    run_io.atomic_write_text(out / "config.yaml", "a: 1\n")  # a finished write leaves no record
    assert run_io._temps(out) == [] and run_io.foreign_run_files(out) == []


@pytest.mark.parametrize("killed_at", range(1, 9))
def test_a_kill_during_an_overwrites_removals_never_leaves_an_interrupted_looking_run(
        tmp_path, monkeypatch, killed_at):
    """break61 #4: --overwrite removed checkpoint.pt before checkpoint.prev.pt; a kill between
    them left a folder the next start called "an interrupted run", whose advice (move prev
    back, --resume) retrained the old run's last epoch."""
    from pathlib import Path as P

    from fxprune import run_io

    out = tmp_path / "run"
    run_io.claim_out_folder(out)
    run_io.release_out_folder(out)
    for name in run_io.RUN_FILES:
        run_io.atomic_write_text(out / name, name)
    real, calls = P.unlink, []

    def unlink(self, missing_ok=False):
        if self.parent == out and self.name in run_io.RUN_FILES:
            calls.append(self.name)
            if len(calls) == killed_at:
                raise KeyboardInterrupt
        return real(self, missing_ok=missing_ok)

    monkeypatch.setattr(P, "unlink", unlink)
    logs = run_io.RunLogs(out, False)
    with pytest.raises(KeyboardInterrupt):
        logs.open({"a": 1}, None, overwrite=True)
    monkeypatch.undo()
    run_io.release_out_folder(out)
    assert not ((out / "checkpoint.prev.pt").exists() and not (out / "checkpoint.pt").exists())


@pytest.mark.parametrize("stop", ["before_the_rename", "none"])
def test_checkpoint_pt_is_there_at_every_moment_of_a_save(tmp_path, monkeypatch, stop):
    """break148 F1: the old checkpoint was moved to checkpoint.prev.pt, then the new one hashed
    and recorded, then renamed in: a kill in between (0.4 s an epoch at 100 MB) left no
    checkpoint.pt, and --resume refused until a file was moved by hand."""
    from fxprune import run_io

    out = tmp_path / "run"
    run_io.claim_out_folder(out)
    ckpt = out / "checkpoint.pt"
    run_io.save_checkpoint({"epoch": 1}, ckpt)
    real, seen = os.replace, []

    def replace(src, dst):
        seen.append(ckpt.is_file())  # at the rename of the new file, the old one is still there
        if stop == "before_the_rename" and Path(dst) == ckpt:
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(run_io.os, "replace", replace)
    if stop == "none":
        run_io.save_checkpoint({"epoch": 2}, ckpt)
    else:
        with pytest.raises(KeyboardInterrupt):
            run_io.save_checkpoint({"epoch": 2}, ckpt)
    monkeypatch.undo()
    assert seen and all(seen)
    epochs = [torch.load(f, weights_only=True)["epoch"] for f in (ckpt, out / "checkpoint.prev.pt")]
    assert epochs == ([2, 1] if stop == "none" else [1, 1])
    assert run_io.foreign_run_files(out) == []  # both still recorded as fxprune's
    run_io.release_out_folder(out)


def test_without_hard_links_the_previous_checkpoint_is_moved_as_before(tmp_path, monkeypatch):
    # review149 F10: the fallback for file systems without hard links had no test
    from fxprune import run_io

    out = tmp_path / "run"
    run_io.claim_out_folder(out)
    ckpt = out / "checkpoint.pt"
    run_io.save_checkpoint({"epoch": 1}, ckpt)

    def no_links(src, dst):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(run_io.os, "link", no_links)
    run_io.save_checkpoint({"epoch": 2}, ckpt)
    monkeypatch.undo()
    epochs = [torch.load(f, weights_only=True)["epoch"] for f in (ckpt, out / "checkpoint.prev.pt")]
    assert epochs == [2, 1] and not os.path.samefile(ckpt, out / "checkpoint.prev.pt")
    assert run_io.foreign_run_files(out) == [] and run_io._temps(out) == []
    run_io.release_out_folder(out)


def test_a_checkpoint_damaged_or_edited_since_the_run_wrote_it_is_not_resumed_unsaid(tmp_path):
    """break148 F2: a bit flipped in checkpoint.pt (its zip CRC fails; the marker's sha256
    differs) was resumed without a word, and the damage shipped in model_pruned.pt."""
    from fxprune import run_io

    out = tmp_path / "run"
    run_io.claim_out_folder(out)
    ckpt = out / "checkpoint.pt"
    run_io.save_checkpoint({"epoch": 1}, ckpt)
    run_io.save_checkpoint({"epoch": 2, "weight": torch.full((256,), 0.1)}, ckpt)
    raw = bytearray(ckpt.read_bytes())
    at = raw.find(torch.full((256,), 0.1).numpy().tobytes()[:64])
    raw[at + 3] ^= 0x40
    ckpt.write_bytes(bytes(raw))
    with pytest.raises(run_io.CheckpointError, match=r"^--resume: checkpoint .*checkpoint.pt is "
                                                     r"damaged: its record .* fails the zip's "
                                                     r"checksum; .*checkpoint.prev.pt holds the "
                                                     r"epoch before it"):
        run_io.load_checkpoint(ckpt, "cpu")
    good = {"format": run_io.CHECKPOINT_FORMAT, "epoch": 1, "step": 4, "elapsed_s": 1.0,
            "config": {"optim": {"epochs": 2}, "prune": {}}, "model": {}, "optimizer": {},
            "scheduler": {}, "rng": run_io.rng_state()}
    run_io.save_checkpoint(good, ckpt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run_io.load_checkpoint(ckpt, "cpu")["step"] == 4  # the run's own: nothing said
    torch.save({**good, "step": 5}, ckpt)  # edited: a valid file, not the one the run wrote
    with pytest.warns(RuntimeWarning, match=r"is not the file this run wrote \(edited since, or "
                                            r"damaged\); resuming from it as it is"):
        assert run_io.load_checkpoint(ckpt, "cpu")["step"] == 5
    run_io.release_out_folder(out)


def test_the_checkpoint_checks_refuse_a_broken_index_and_pass_what_the_run_wrote(tmp_path):
    """review149 F1: a damaged zip index escaped the CRC check as a UnicodeDecodeError or
    zlib.error traceback; F2: checkpoints written with torch's CRCs off were all "damaged";
    F4: following fxprune's own advice (move checkpoint.prev.pt to checkpoint.pt) warned that
    the file was not the run's."""
    from fxprune import run_io

    out = tmp_path / "run"
    run_io.claim_out_folder(out)
    ckpt = out / "checkpoint.pt"
    good = {"format": run_io.CHECKPOINT_FORMAT, "epoch": 1, "step": 4, "elapsed_s": 1.0,
            "config": {"optim": {"epochs": 2}, "prune": {}}, "model": {"w": torch.ones(64)},
            "optimizer": {}, "scheduler": {}, "rng": run_io.rng_state()}
    run_io.save_checkpoint(good, ckpt)
    run_io.save_checkpoint({**good, "epoch": 2, "step": 8}, ckpt)
    os.replace(out / "checkpoint.prev.pt", ckpt)  # the advice after an interrupted save
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run_io.load_checkpoint(ckpt, "cpu")["epoch"] == 1
    run_io.save_checkpoint(good, ckpt)
    raw = bytearray(ckpt.read_bytes())
    index = raw.rfind(b"PK\x01\x02")  # the last central-directory entry: its name's bytes
    raw[index + 46: index + 50] = b"\xff\xfe\xfd\xfc"
    ckpt.write_bytes(bytes(raw))
    with pytest.raises(run_io.CheckpointError, match=r"^--resume: checkpoint .* is damaged: its "
                                                     r"(zip index|record .*) does not read"):
        run_io.load_checkpoint(ckpt, "cpu")
    torch.serialization.set_crc32_options(False)
    try:
        run_io.save_checkpoint(good, ckpt)
    finally:
        torch.serialization.set_crc32_options(True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run_io.load_checkpoint(ckpt, "cpu")["step"] == 4
    run_io.release_out_folder(out)
    unmarked = tmp_path / "unmarked" / "checkpoint.pt"
    unmarked.parent.mkdir()
    torch.save(good, unmarked)  # no marker: nothing recorded to differ from
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run_io.load_checkpoint(unmarked, "cpu")["epoch"] == 1


def test_a_new_folder_is_locked_when_claimed(tmp_path):
    """A folder the run creates does not exist at the check: claiming it takes the lock, so
    a second start that checked the same empty place fails before its first write."""
    import fcntl

    from fxprune import run_io

    out = tmp_path / "run"
    run_io.claim_out_folder(out)
    try:
        other = os.open(out, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(other)
    finally:
        run_io.release_out_folder(out)


def test_a_marker_temp_file_left_by_a_kill_in_the_claim_is_not_the_users(recipe, tmp_path):
    """break58 #9: a kill while the run wrote its marker left ``..fxprune-run.<hex>.tmp`` and
    no marker; the next start refused the folder as holding files fxprune did not write."""
    from fxprune import run_io

    out = tmp_path / "run"
    out.mkdir()
    (out / f".{run_io.RUN_MARKER}.0123abcd.tmp").write_text("")
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=1", "--out", str(out)]) == 0
    assert (out / "checkpoint.pt").is_file()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / f".{run_io.RUN_MARKER}.notours.tmp").write_text("x")
    with pytest.raises(FileExistsError, match="already holds files fxprune did not write"):
        run_io.check_out_folder(tmp_path / "mine", resume=False, overwrite=False)


def test_overwrite_leaves_nothing_of_the_last_run(recipe, tmp_path):
    """--overwrite starts over: the last run's checkpoint does not become this run's
    checkpoint.prev.pt, and a pruned run's model does not linger beside a dense rerun's."""
    out = tmp_path / "run"
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=2", *sum((["--set", s] for s in SMCP_TINY), []),
                     "--set", "optim.epochs=2", "--out", str(out)]) == 0
    assert (out / "model_pruned.pt").is_file() and (out / "checkpoint.prev.pt").is_file()
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=1", "--out", str(out),
                     "--overwrite"]) == 0
    assert not (out / "model_pruned.pt").exists() and (out / "model_dense.pt").is_file()
    assert not (out / "checkpoint.prev.pt").exists()  # one epoch: no earlier checkpoint of its own
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1


def test_out_tilde_is_expanded(recipe, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=1", "--out", "~/x"]) == 0
    assert (tmp_path / "home" / "x" / "model_dense.pt").is_file()
    assert not (tmp_path / "~").exists()


# ----------------------------------------------------------------------------- 3. no evidence

def small_prepared(widths=(16, 32)):
    torch.manual_seed(0)
    a, b = widths
    model = nn.Sequential(nn.Conv2d(3, a, 3, padding=1), nn.BatchNorm2d(a), nn.ReLU(),
                          nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(b, 10))
    return fxprune.prepare(model, (torch.randn(1, 3, 8, 8),))


def test_update_with_no_gradients_is_skipped_with_a_warning_not_ranked_on_zeros():
    pm = small_prepared()
    pruner = fxprune.SMCP(pm, target=0.5, warmup=0, ramp=1, update_every=1, channel_step=1)
    opt = torch.optim.SGD(pm.parameters(), lr=0.1)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    for _ in range(3):  # the wrong order: step() before backward(), gradients cleared
        opt.zero_grad(set_to_none=True)
        with pytest.warns(RuntimeWarning, match="skipped: no gradients were seen") as caught:
            assert pruner.step() is None
        F.cross_entropy(pm(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    # the prepared model trains: not told it is another model (break133 F3's clause)
    assert not any("prepare() returned" in str(w.message) for w in caught)
    assert pruner.skipped_updates == 3 and pruner.history == []
    assert all(bool((g.mask == 1).all()) for g in fxprune.channel_groups(pm) if g.prunable)
    # the right order prunes
    F.cross_entropy(pm(x), y).backward()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        record = pruner.step()
    assert record is not None and pruner.cost() <= 0.5 + 1e-9


def test_a_loop_clearing_gradients_before_step_with_an_update_through_data_is_not_told_it_trains_another_model():
    """review137 #2: an optimizer writing through .data (a fused one moves no version counter
    either) trained the prepared model, and the warning asked whether the loop trained it."""
    pm = small_prepared()
    pruner = fxprune.SMCP(pm, target=0.5, warmup=0, ramp=4, update_every=2, channel_step=1)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(4):
            F.cross_entropy(pm(x), y).backward()
            with torch.no_grad():
                for p in pm.parameters():
                    if p.grad is not None:
                        p.data.add_(p.grad, alpha=-0.1)
            pm.zero_grad(set_to_none=True)  # the wrong order: cleared before step()
            pruner.step()
    said = [str(w.message) for w in caught]
    assert any("no gradients were seen" in m for m in said), said
    assert not any("prepare() returned" in m for m in said), said


@pytest.mark.parametrize("method", ["smcp", "ccp", "cucb"])
def test_a_loop_training_the_model_given_to_prepare_is_told_so(method):
    """break133 F3: DDP(model) then prepare(ddp.module): the loop trained the original, no
    gradient ever reached the prepared copy, and each method said only "call pruner.step()
    after loss.backward()", which the loop did. The same loop on one process: model, not pm."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    pm = fxprune.prepare(model, (torch.randn(1, 3, 8, 8),))
    build = {"smcp": lambda: fxprune.SMCP(pm, target=0.5, warmup=2, ramp=4, update_every=2, channel_step=4),
             "ccp": lambda: fxprune.CCP(pm, target=0.5, collect=2, prune_at=3, channel_step=4),
             "cucb": lambda: fxprune.CUCB(pm, target=0.5, mode="budget", warmup=2, explore=4,
                                          channel_step=4, execution="masked")}[method]
    pruner = build()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)  # the user's model, as DDP(model) trains it
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(6):
            F.cross_entropy(model(x), y).backward()
            pruner.step()
            opt.step()
            opt.zero_grad()
    said = [str(w.message) for w in caught if "does the loop train the model prepare() returned" in str(w.message)]
    assert said, [str(w.message) for w in caught]


@pytest.mark.parametrize("accumulate", ["mean", "momentum"])
def test_an_update_without_gradients_since_the_last_one_is_skipped(accumulate):
    """break36 #2: with accumulate="momentum" the steps since the last update were never reset,
    so after one update a window without gradients was solved on the stale average, unsaid."""
    pm = small_prepared()
    pruner = fxprune.SMCP(pm, target=0.5, warmup=0, ramp=12, update_every=4, channel_step=1,
                          accumulate=accumulate)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    for step in range(1, 13):
        if step <= 4:  # gradients in the first window only
            F.cross_entropy(pm(x), y).backward()
        if step in (8, 12):
            with pytest.warns(RuntimeWarning, match="skipped: no gradients were seen"):
                assert pruner.step() is None
        else:
            pruner.step()
        pm.zero_grad(set_to_none=True)
    assert pruner.skipped_updates == 2 and len(pruner.history) == 1


def test_an_update_on_diverged_weights_names_them():
    """break36 #5: nan weights under magnitude importance reached the knapsack, whose error
    ("group 0: values must be finite") named no layer and no cause."""
    pm = small_prepared()
    pruner = fxprune.SMCP(pm, target=0.5, importance="magnitude", warmup=0, ramp=1, update_every=1)
    with torch.no_grad():
        pm.get_submodule("3").weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"step 1: \d+ channel importance scores "
                                                 r"\(magnitude\) are inf/nan, from the weights of 3: "
                                                 r"the run has diverged; lower the learning rate"):
        pruner.step()


def test_an_update_after_only_overflowed_steps_is_skipped_not_ranked_on_zeros():
    """break28 #1: the guard counted the steps observed, not those averaged: after a window of
    inf gradients (what pruner.step() sees after scaler.unscale_ on an overflow) the update
    ranked all-zero scores, and every group fell to 1 channel (0.013 of dense for 0.5)."""
    pm = small_prepared()
    pruner = fxprune.SMCP(pm, target=0.5, warmup=0, ramp=4, update_every=2, channel_step=1)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))

    def train_step(overflow):
        F.cross_entropy(pm(x), y).backward()
        if overflow:
            for p in pm.parameters():
                p.grad.fill_(float("inf"))
        record = pruner.step()
        pm.zero_grad()
        return record

    train_step(False)
    first = train_step(False)
    kept = pruner.cost()
    train_step(True)
    with pytest.warns(RuntimeWarning, match=r"skipped: every one of the 2 steps since the last "
                                            r"update had inf/nan gradients"):
        assert train_step(True) is None
    assert pruner.skipped_updates == 1 and pruner.cost() == kept and first["actual"] > 0.5
    train_step(False)
    assert train_step(False)["actual"] <= 0.5 + 1e-9  # evidence again: it goes on


def test_channels_only_frozen_layers_read_are_kept_while_the_target_allows():
    """break28 #2: their scores are 0, every count of their group is worth the same, and the
    exhaustive search took the cheapest: 0.063 of dense for a target of 0.7."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
    pm = fxprune.prepare(net, (torch.randn(1, 3, 8, 8),))
    pm.get_submodule("2").weight.requires_grad_(False)
    with pytest.warns(RuntimeWarning, match="frozen weights"):
        pruner = fxprune.SMCP(pm, target=0.7, warmup=0, ramp=4, update_every=4, channel_step=1)
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 4, (8,))
    for _ in range(4):
        F.cross_entropy(pm(x), y).backward()
        record = pruner.step()
        pm.zero_grad()
    assert 0.65 < record["actual"] <= 0.7 + 1e-9


# ----------------------------------------------------------------------------- 4. save/load

def test_prepared_model_round_trips_through_torch_save_in_a_fresh_process(tmp_path):
    pm = small_prepared()
    group = [g for g in fxprune.channel_groups(pm) if g.prunable][1]
    group.mask[:5] = 0
    x = torch.randn(2, 3, 8, 8)
    torch.save(pm, tmp_path / "pm.pt")
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(pm.eval()(x), tmp_path / "ref.pt")
    script = (
        "import torch, fxprune\n"
        f"pm = torch.load({str(tmp_path / 'pm.pt')!r}, weights_only=False).eval()\n"
        f"x = torch.load({str(tmp_path / 'x.pt')!r})\n"
        f"ref = torch.load({str(tmp_path / 'ref.pt')!r})\n"
        "masks = [g.mask.tolist() for g in fxprune.channel_groups(pm) if g.prunable]\n"
        "small = fxprune.finalize(pm)\n"
        "with torch.no_grad():\n"
        "    print(torch.equal(pm(x), ref), masks[1][:6], float((small(x) - ref).abs().max()))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == "True"
    assert "[0.0, 0.0, 0.0, 0.0, 0.0, 1.0]" in proc.stdout
    assert float(proc.stdout.split()[-1]) < 1e-5


def test_finalized_model_still_loads_without_fxprune(tmp_path):
    small = fxprune.finalize(small_prepared())
    torch.save(small, tmp_path / "small.pt")
    script = ("import sys, torch; sys.modules['fxprune'] = None\n"
              f"m = torch.load({str(tmp_path / 'small.pt')!r}, weights_only=False)\n"
              "print(m(torch.zeros(1, 3, 8, 8)).shape)")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "torch.Size([1, 10])" in proc.stdout


# ----------------------------------------------------------------------------- 5. state signature

@pytest.mark.parametrize("other", [(32, 16), (24, 24)])
def test_pruner_state_refuses_other_groups_naming_both(other):
    source = fxprune.SMCP(small_prepared((16, 32)), target=0.5, channel_step=1)
    target = fxprune.SMCP(small_prepared(other), target=0.5, channel_step=1)
    state = source.state_dict()
    with pytest.raises(ValueError, match=rf"saved for channel groups .*\(16\), .*\(32\) but the "
                                         rf"prepared model has .*\({other[0]}\), .*\({other[1]}\)"):
        target.load_state_dict(state)
    fxprune.SMCP(small_prepared((16, 32)), target=0.5, channel_step=1).load_state_dict(state)


# ----------------------------------------------------------------------------- 6. loading safely

def test_checkpoints_load_with_weights_only(tmp_path):
    train(resolve_config(TINY, [f"out={tmp_path / 'run'}", *SMCP_TINY]))
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["pruner"]["groups"]
    assert torch.load(tmp_path / "run" / "checkpoint.prev.pt", weights_only=True)["epoch"] == 1
    # loaded for another device, the generators' states stay CPU tensors, which is what
    # torch.set_rng_state takes (review126 #1: mapped to CUDA, a GPU run could not resume);
    # "meta" stands in for a GPU here
    moved = load_checkpoint(tmp_path / "run" / "checkpoint.pt", "meta")
    assert all(t.is_meta for t in moved["model"].values())
    assert moved["rng"]["torch"].device.type == "cpu"
    assert moved["rng"]["numpy"]["keys"].device.type == "cpu"
    before = torch.get_rng_state()
    set_rng_state(moved["rng"])
    assert torch.equal(torch.get_rng_state(), ckpt["rng"]["torch"])
    torch.set_rng_state(before)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_resume_never_unpickles_code(recipe, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=1", "--out", str(out)]) == 0
    marker = tmp_path / "pwned"
    torch.save({"epoch": 1, "evil": _Payload(marker)}, out / "checkpoint.pt")
    rc = cli_main(["train", str(recipe), "--set", "optim.epochs=2", "--resume", "--out",
                   str(out)])
    err = one_line_error(capsys)
    assert rc == 2 and "holds Python objects beyond tensors and plain data" in err, err
    assert "would run code the file carries" in err
    assert not marker.exists()
    # bytes that are no pickle at all: damaged, not "code" (break98 F3)
    (out / "checkpoint.pt").write_bytes(b"not a pt")
    rc = cli_main(["train", str(recipe), "--set", "optim.epochs=2", "--resume", "--out",
                   str(out)])
    err = one_line_error(capsys)
    assert rc == 2 and "is damaged or not a fxprune checkpoint (not a file torch.save wrote" in err, err


# ----------------------------------------------------------------------------- clear errors

BAD_OVERRIDES = [
    (["prune.method=smcp", "prune.target=1.5"], "prune.target takes a number > 0 and <= 1"),
    (["prune.method=smcp", "prune.target=0"], "prune.target takes a number > 0 and <= 1"),
    (["prune.method=smcp", "prune.target=-1"], "prune.target takes a number > 0 and <= 1"),
    (["prune.method=smcp", "prune.target=abc"], "prune.target takes a number > 0 and <= 1"),
    (["prune.method=smcp", "prune.cost=banana"],
     "prune.cost must be one of 'flops' | 'params' | 'latency' | 'latency+fixed'; got 'banana'"),
    (["prune.method=smcp", "prune.tagret=0.5"], "unknown key prune.tagret for prune.method smcp "
                                                "(did you mean prune.target?); valid: accumulate"),
    # break62 #9: a one-shot method forwards its keywords to SMCP: a typo was SMCP's TypeError
    (["prune.method=magnitude", "prune.taget=0.3"], "unknown key prune.taget for prune.method "
                                                    "magnitude (did you mean prune.target?); "
                                                    "valid: accumulate"),
    (["model.name=banana"], "model.name 'banana' is not a model: use resnet_fmnist"),
    # break73 M6: a method's name in capitals or mistyped got the list, no "did you mean"
    (["prune.method=SMCP"], "got 'SMCP' (did you mean 'smcp'?)"),
    (["prune.method=smpc"], "got 'smpc' (did you mean 'smcp'?)"),
    (["model.widths=[0,32,64]"], "model.widths takes a list of integers each >= 1"),
    (["data.name=banana"], "data.name must be one of 'fashion_mnist' | 'synthetic'"),
    (["data.batch_size=0"], "data.batch_size takes an integer >= 1; got 0"),
    (["data.subset_train=0"], "data.subset_train takes an integer >= 1 (or null); got 0"),
    (["device=banana"], "device 'banana' is not a device: use auto, cpu, cuda or cuda:N"),
    # break24 #9: tracebacks mid-run (meta: at the first pruner step, leaving a folder)
    (["device=meta"], "device 'meta': fxprune train runs on cpu or cuda[:N] (or auto)"),
    (["device=mps"], "device 'mps': fxprune train runs on cpu or cuda[:N] (or auto)"),
    (["prune.method=smcp", "prune.channel_step=0"], "prune.channel_step takes an integer >= 1"),
    (["prune.target=0.5"], "prune.target is set but prune.method is none"),
    (["prune.method=none", "prune.target=0.5"], "remove the prune.* keys (on the command line: "
                                                "--set '~prune.target')"),
    (["model.num_classes=3"], "model.num_classes: the model gives outputs of shape (1, 3) but "
                              "the data has 10 classes"),
    (["model.name=resnet18", "model.widths=null", "model.blocks=null"],
     "model.name 'resnet18' does not run on the data's images of shape (1, 28, 28)"),
    # break102 F1: torch's "Output size is too small" alone, no way out
    (["model.name=alexnet", "model.widths=null", "model.blocks=null", "data.channels=3"],
     "Output size is too small; the model shrinks 28x28 images below one pixel (the recipe "
     "resizes nothing): choose a model that keeps a spatial size there"),
    # break73 F4: eval mode gives logits, training GoogLeNetOutputs: a traceback at step 1
    (["model.name=googlenet", "model.widths=null", "model.blocks=null", "data.channels=3"],
     "model.name 'googlenet' returns GoogLeNetOutputs in training, not a logits tensor"),
    # break52 #3, #4: the trainer's own (its loss is a mean, it runs no scaler): loss_reduction=sum
    # picked other channels silently, scaler crashed at the first step leaving a folder
    (["prune.method=ccp", "prune.loss_reduction=sum"], "prune.loss_reduction is an argument "
                                                       "fxprune train gives the method itself"),
    (["prune.method=ccp", "prune.scaler=true"], "prune.scaler is an argument fxprune train gives "
                                                "the method itself"),
    # break54 #5: a method taking **kwargs let them through (scaler crashed, sum was kept)
    (["prune.method=kwargs_ccp", "prune.scaler=true"], "--set '~prune.scaler'"),
    (["prune.method=kwargs_ccp", "prune.reduce_fn=1"], "prune.reduce_fn is an argument"),
    # break57 #9: the trainer gives no schedule; the recipe's schedule keys build it
    (["prune.method=smcp", "prune.schedule=1"], "prune.schedule is the method's schedule object, "
                                                "which it builds from the recipe's prune.warmup"),
]


def _kwargs_ccp(prepared, **kwargs):
    """A method forwarding any keyword to CCP, as the README's subclass or factory does."""
    return fxprune.CCP(prepared, **kwargs)


@pytest.mark.parametrize("overrides, message", BAD_OVERRIDES)
def test_config_errors_are_one_line_before_any_work(recipe, tmp_path, capsys, overrides,
                                                    message, monkeypatch):
    from fxprune.methods import base

    base.get_method("ccp")  # the built-in ones registered first
    monkeypatch.setitem(base.registry, "kwargs_ccp", base.MethodEntry(
        "kwargs_ccp", lambda: _kwargs_ccp, {}, "CCP, any keyword forwarded"))
    out = tmp_path / "run"
    argv = ["train", str(recipe), "--out", str(out)]
    for o in overrides:
        argv += ["--set", o]
    assert cli_main(argv) == 2
    err = one_line_error(capsys)
    assert message in err, err
    assert not out.exists()


def test_a_settings_own_error_is_not_blamed_on_the_runs_length(recipe, tmp_path, capsys):
    """break52 #5: every error from a method's constructor ended "a longer run, with more data
    or optim.epochs, also gives them room", also `collect_bn='Eval'` and `c=-1`."""
    base = ["train", str(recipe), "--out", str(tmp_path / "run"), "--set", "prune.method=ccp",
            "--set", "prune.collect_fraction=0.2"]
    assert cli_main([*base, "--set", "prune.collect_bn=Eval"]) == 2
    err = one_line_error(capsys)
    assert "collect_bn must be 'eval'" in err and "also gives them room" not in err, err
    steps = ["train", str(recipe), "--out", str(tmp_path / "run"), "--set", "prune.method=cucb",
             "--set", "prune.warmup_fraction=0.8", "--set", "prune.explore_fraction=0.2"]
    assert cli_main(steps) == 2  # about the steps: the hint stays
    err = one_line_error(capsys)
    assert "also gives them room" in err, err


def test_a_null_prune_key_is_accepted_with_method_none(recipe):
    """break40 #7: `prune.target: null` means the method's default, so switching a recipe to
    method none on the command line needed `~prune.target` even when the target was null."""
    from fxprune.recipe_config import load_config

    cfg = load_config(recipe, ["prune.method=none", "prune.target=null"])
    assert cfg["prune"]["method"] == "none"


def test_smcp_constructor_rejects_bad_arguments_in_one_line():
    pm = small_prepared()
    for kwargs, phrase in [({"channel_step": 0}, "channel_step must be >= 1, got 0"),
                           ({"update_every": 0}, "update_every must be >= 1"),
                           ({"momentum": 1.5}, "momentum must be < 1"),
                           ({"masked_decay": -1.0}, "masked_decay must be >= 0"),
                           ({"warmup": -3}, "warmup must be >= 0"),
                           ({"target": "abc"}, "fraction of the dense cost"),
                           ({"ramp": 100, "freeze_after": 50}, "stops mask updates before the "
                                                              "ramp ends at step 100")]:
        with pytest.raises(ValueError, match=phrase) as info:
            fxprune.SMCP(pm, **kwargs)
        assert "\n" not in str(info.value)


def test_empty_recipe_is_an_error(tmp_path, capsys):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    rc = cli_main(["train", str(empty), "--out", str(tmp_path / "run")])
    assert rc == 2 and "is empty" in one_line_error(capsys)
    with pytest.raises(ConfigError, match="is empty"):
        load_config(empty)
    rc = cli_main(["train", str(tmp_path), "--out", str(tmp_path / "run")])
    assert rc == 2 and "is a folder, not a YAML recipe" in one_line_error(capsys)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    # break170 F7: a run's folder is pointed to its recipe; "-" to /dev/stdin
    run = tmp_path / "run_done"
    run.mkdir()
    (run / ".fxprune-run").write_text("")
    (run / "config.yaml").write_text("seed: 0\n")
    with pytest.raises(ConfigError, match=rf"is a run's folder, not a YAML recipe; its recipe is "
                                          rf"{re.escape(str(run / 'config.yaml'))} \(fxprune train "):
        load_config(run)
    with pytest.raises(ConfigError, match=r"^config file - is not read as standard input; pass "
                                          r"/dev/stdin"):
        load_config("-")


def test_corrupt_data_prints_the_message_alone(recipe, tmp_path, capsys):
    root = tmp_path / "fmnist"
    root.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 20)):
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz",
                  rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz",
                  rng.integers(0, 10, n, dtype=np.uint8))
    base = ["train", str(recipe), "--set", "data.name=fashion_mnist", "--set",
            f"data.root={root}", "--out", str(tmp_path / "run")]
    good = (root / "train-images-idx3-ubyte.gz").read_bytes()
    (root / "train-images-idx3-ubyte.gz").write_bytes(good[: len(good) // 2])
    assert cli_main(base) == 2
    assert "the file is corrupt or truncated" in one_line_error(capsys)
    (root / "train-images-idx3-ubyte.gz").write_bytes(good)
    # labels from the other split
    (root / "train-labels-idx1-ubyte.gz").write_bytes(
        (root / "t10k-labels-idx1-ubyte.gz").read_bytes())
    assert cli_main(base) == 2
    assert "has 40 images but" in one_line_error(capsys)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("damage", ["truncated", "empty", "foreign"])
def test_resume_on_a_damaged_checkpoint_says_what_to_do(recipe, tmp_path, capsys, damage):
    out = tmp_path / "run"
    assert cli_main(["train", str(recipe), "--out", str(out)]) == 0  # 2 epochs
    ckpt = out / "checkpoint.pt"
    prev = (out / "checkpoint.prev.pt").read_bytes()
    if damage == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[:1000])
    elif damage == "empty":
        ckpt.write_bytes(b"")
    else:
        torch.save({"state_dict": {"w": torch.zeros(2)}}, ckpt)
    rc = cli_main(["train", str(recipe), "--set", "optim.epochs=3", "--resume", "--out",
                   str(out)])
    err = one_line_error(capsys)
    assert rc == 2 and "checkpoint.prev.pt holds the epoch before it" in err
    assert ("is damaged" in err) if damage != "foreign" else ("not a fxprune train checkpoint"
                                                              in err)
    assert (out / "checkpoint.prev.pt").read_bytes() == prev  # the way out is intact
    os.replace(out / "checkpoint.prev.pt", ckpt)
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=3", "--resume", "--out",
                     str(out)]) == 0


@pytest.mark.parametrize("edit", ["epoch", "step", "optimizer", "elapsed_s", "config", "prune",
                                  "rng", "optimizer_str", "model_key", "model_shape",
                                  "optimizer_state_str"])
def test_resume_refuses_an_edited_checkpoint_in_one_line(recipe, tmp_path, capsys, edit):
    """break103 F1: the README says the checkpoints may be edited, but an `epoch` of -3 trained
    a run labelled "epoch -2/12" on a schedule run past its end, with rc 0; a `step` of "abc"
    and another model's optimizer state (its momentum of other shapes) raised tracebacks from
    the training loop. Each is now the one-line damaged-checkpoint error, rc 2."""
    out = tmp_path / "run"
    assert cli_main(["train", str(recipe), "--out", str(out)]) == 0  # 2 epochs
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    if edit == "epoch":
        ckpt["epoch"] = -3
    elif edit == "step":
        ckpt["step"] = "abc"
    elif edit == "elapsed_s":  # review126 #3: these four raised KeyError/TypeError tracebacks
        del ckpt["elapsed_s"]
    elif edit == "config":
        ckpt["config"] = "tiny.yaml"
    elif edit == "prune":
        del ckpt["config"]["prune"]
    elif edit == "rng":
        del ckpt["rng"]["python"]
    elif edit == "optimizer_str":  # break206 F5: an AttributeError traceback
        ckpt["optimizer"] = "x"
    elif edit == "optimizer_state_str":  # break209 F6: the same, one level down
        ckpt["optimizer"]["state"] = "x"
    elif edit == "model_key":  # break206 F5: "Error(s) in loading state_dict for ...:" alone
        del ckpt["model"]["conv1.weight"]
    elif edit == "model_shape":
        ckpt["model"]["conv1.weight"] = ckpt["model"]["conv1.weight"][:1]
    else:
        state = ckpt["optimizer"]["state"]
        assert state, "the recipe's optimizer keeps a state to edit"
        for entry in state.values():
            for key, value in entry.items():
                if value.dim():
                    entry[key] = value.flatten()[:3]
    torch.save(ckpt, out / "checkpoint.pt")
    rc = cli_main(["train", str(recipe), "--set", "optim.epochs=3", "--resume", "--out", str(out)])
    err = one_line_error(capsys)
    assert rc == 2, err
    expected = {"epoch": "has epoch -3, not a count", "step": "has step 'abc', not a count",
                "optimizer": "does not fit this run (the optimizer's",
                "elapsed_s": "it lacks ['elapsed_s']",
                "config": "its config is a str, not the recipe's mapping",
                "prune": "its config lacks its 'prune' section",
                "rng": "its rng lacks python's generator state",
                "optimizer_str": "does not fit this run (its optimizer state is a str, not a "
                                 "dict)",
                "model_key": 'Missing key(s) in state_dict: "conv1.weight"',
                "model_shape": "size mismatch for conv1.weight",
                "optimizer_state_str": "does not fit this run (its optimizer state does not "
                                       "load ("}[edit]
    assert expected in err and ("checkpoint.prev.pt holds the epoch before it" in err
                                or "start over with --overwrite" in err), err


def test_a_damaged_checkpoints_way_out_is_one_overwrite_takes(recipe, tmp_path, capsys):
    """break158 F4: a checkpoint cut short said "start over with --overwrite", which then
    refused it as not written by fxprune; the advice now moves it out first, and works."""
    out = tmp_path / "run"
    argv = ["train", str(recipe), "--set", "optim.epochs=1", "--out", str(out)]
    assert cli_main(argv) == 0
    assert not (out / "checkpoint.prev.pt").exists()
    data = (out / "checkpoint.pt").read_bytes()
    (out / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    assert cli_main([*argv[:-2], "--set", "optim.epochs=2", "--resume", "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert err.rstrip().endswith(
        "is damaged: its zip index does not read (File is not a zip file); move checkpoint.pt "
        "out of the folder (it changed since fxprune wrote it), then start over with "
        "--overwrite, or use another --out"), err
    (out / "checkpoint.pt").rename(tmp_path / "damaged.pt")
    assert cli_main([*argv, "--overwrite"]) == 0


def test_resume_from_the_run_s_own_edited_config_says_so_and_its_way_out_works(recipe, tmp_path, capsys):
    """break103 F2: resuming with the run's config.yaml, edited (a key that may change), was
    refused as "not written by fxprune ... or choose another --out", which would abandon the
    run. The refusal stays (the edit is the user's), and names the file and a way out that
    keeps both the edit and the run."""
    out = tmp_path / "run"
    assert cli_main(["train", str(recipe), "--out", str(out)]) == 0  # 2 epochs
    own = out / "config.yaml"
    cfg = yaml.safe_load(own.read_text())
    cfg["optim"]["epochs"] = 3
    own.write_text(yaml.safe_dump(cfg))
    assert cli_main(["train", str(own), "--out", str(out), "--resume"]) == 2
    err = one_line_error(capsys)
    assert f"the recipe {own} is the run's own config.yaml, edited since the run wrote it" in err
    assert yaml.safe_load(own.read_text())["optim"]["epochs"] == 3  # not written over
    moved = tmp_path / "run-edited.yaml"
    assert f"mv {own} {moved}" in err
    own.rename(moved)
    assert cli_main(["train", str(moved), "--out", str(out), "--resume"]) == 0
    assert yaml.safe_load(own.read_text())["optim"]["epochs"] == 3


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        cli_main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"fxprune {fxprune.__version__}"


def test_an_unknown_option_of_a_subcommand_shows_that_subcommand_s_usage(capsys):
    """break98 F7: `fxprune train CONFIG --bogus` printed the top-level usage."""
    with pytest.raises(SystemExit) as info:
        cli_main(["train", "recipe.yaml", "--bogus"])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert "usage: fxprune train" in err and "fxprune train: error: unrecognized arguments: --bogus" in err


def test_rebinding_a_group_mask_raises_and_wrong_length_names_the_group():
    pm = small_prepared()
    group = [g for g in fxprune.channel_groups(pm) if g.prunable][0]
    with pytest.raises(AttributeError, match=rf"group {group.key} .*write into it instead"):
        group.mask = torch.zeros(group.size)
    group.mask[:] = 1  # writing into it is the way
    pruner = fxprune.SMCP(pm, target=0.5)
    pm.get_submodule("fxprune_masks").register_buffer(group.key, torch.ones(group.size - 1))
    message = (rf"mask buffer of group {group.key} \({group.name}\) must be a tensor of "
               rf"{group.size} entries, one per channel, but it is shape \({group.size - 1},\)")
    with pytest.raises(ValueError, match=message):
        fxprune.finalize(pm)
    with pytest.raises(ValueError, match=message):
        pruner.cost()
    with pytest.raises(ValueError, match=message):
        fxprune.channel_groups(pm)


@pytest.fixture(scope="module")
def long_run(tmp_path_factory):
    """A recipe long enough to interrupt, and its uninterrupted run."""
    folder = tmp_path_factory.mktemp("interrupt")
    cfg = yaml.safe_load(yaml.safe_dump(TINY))
    cfg["data"].update(synthetic_train=512, synthetic_test=32)
    cfg["optim"]["epochs"] = 6
    recipe = folder / "r.yaml"
    recipe.write_text(yaml.safe_dump(cfg))
    threads = torch.get_num_threads()
    assert cli_main(["train", str(recipe), "--out", str(folder / "straight")]) == 0
    torch.set_num_threads(threads)
    return recipe, torch.load(folder / "straight" / "checkpoint.pt", weights_only=True)["model"]


def test_a_method_refusing_a_schedule_of_fractions_names_the_run_length(tmp_path, capsys):
    """break24 nit: the SMCP recipe at 1 optimizer step was told to freeze later or shorten
    the warm-up, but it wrote fractions: a longer run is the way out too."""
    cfg = yaml.safe_load(yaml.safe_dump(TINY))
    cfg["data"].update(synthetic_train=16, batch_size=16)
    cfg["optim"]["epochs"] = 1
    cfg["prune"] = {"method": "smcp", "target": 0.5, "warmup_fraction": 0.1,
                    "ramp_fraction": 0.3, "cooldown_fraction": 0.5}
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(cfg))
    assert cli_main(["train", str(recipe), "--out", str(tmp_path / "run")]) == 2
    err = one_line_error(capsys)
    assert "of this run's 1 optimizer steps: a longer run" in err and "prune.ramp_fraction" in err


def test_an_interrupt_between_a_saves_renames_names_the_previous_checkpoint(
        recipe, tmp_path, capsys, monkeypatch):
    """break24 #10: between checkpoint.pt -> checkpoint.prev.pt and the new file's rename, the
    message said no epoch had finished; and under torchrun every process printed it (#12)."""
    import fxprune.train as train_module

    out = tmp_path / "run"

    def interrupted(cfg, **kw):
        out.mkdir()
        (out / "checkpoint.prev.pt").write_bytes(b"epoch 1")
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "train", interrupted)
    assert cli_main(["train", str(recipe), "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert "an epoch is in" in err and "checkpoint.prev.pt; move it to checkpoint.pt" in err
    monkeypatch.setenv("RANK", "1")
    (out / "checkpoint.prev.pt").unlink()
    out.rmdir()
    assert cli_main(["train", str(recipe), "--out", str(out)]) == 130
    assert capsys.readouterr().err == ""  # rank 0 says it


def test_an_interrupted_overwrite_does_not_advise_resuming_the_run_it_replaces(
        recipe, tmp_path, capsys, monkeypatch):
    """break85 F2: Ctrl-C during an --overwrite start, before its first epoch, said "continue
    with --resume" of a checkpoint that was still the old run's: --resume with the new config
    is refused. An epoch this run saved is still named for --resume."""
    import os
    import time

    import fxprune.train as train_module

    out = tmp_path / "run"
    out.mkdir()
    old = out / "checkpoint.pt"
    old.write_bytes(b"the old run")
    os.utime(old, ns=(1, 1))

    def interrupted(cfg, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "train", interrupted)
    assert cli_main(["train", str(recipe), "--out", str(out), "--overwrite"]) == 130
    err = capsys.readouterr().err
    assert "no epoch of this run had finished" in err and "--resume" not in err, err
    # break88 F3: the old run stopped between a save's renames left checkpoint.prev.pt alone
    old.rename(out / "checkpoint.prev.pt")
    assert cli_main(["train", str(recipe), "--out", str(out), "--overwrite"]) == 130
    err = capsys.readouterr().err
    assert "no epoch of this run had finished" in err and "--resume" not in err, err
    (out / "checkpoint.prev.pt").rename(old)

    def saved_one(cfg, **kw):
        time.sleep(0.1)  # an epoch takes longer
        old.write_bytes(b"epoch 1 of this run")
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "train", saved_one)
    assert cli_main(["train", str(recipe), "--out", str(out), "--overwrite"]) == 130
    assert "the last finished epoch is in" in capsys.readouterr().err


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_interrupt_then_resume_is_bit_identical(long_run, tmp_path, sig):
    import signal
    import time

    recipe, reference = long_run
    out = tmp_path / "stopped"
    # the child starts with Ctrl-C's default action even when this suite runs as a background
    # job, whose shell hands SIGINT down ignored (Python then installs no KeyboardInterrupt)
    proc = subprocess.Popen([sys.executable, "-m", "fxprune.cli", "train", str(recipe), "--out",
                             str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(getattr(signal, sig))
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "continue with --resume" in err
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] < 6  # interrupted
    assert cli_main(["train", str(recipe), "--out", str(out), "--resume"]) == 0
    resumed = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)


@pytest.mark.parametrize("command", [["train", "missing.yaml"], ["deploy", "missing.pt"]])
def test_the_cli_called_in_process_puts_the_sigterm_handler_back(command, tmp_path, capsys):
    # review146 F5: main() left SIGTERM raising KeyboardInterrupt in the program that called it
    import signal

    def handler(signum, frame):
        pass

    before = signal.signal(signal.SIGTERM, handler)
    try:
        assert cli_main([command[0], str(tmp_path / command[1]), "--out", str(tmp_path / "o")]) == 2
        assert "error:" in capsys.readouterr().err
        assert signal.getsignal(signal.SIGTERM) is handler
    finally:
        signal.signal(signal.SIGTERM, before)


def test_a_recipe_of_nested_yaml_aliases_is_refused_in_a_bounded_line(tmp_path):
    """break148 F7: a 338-byte recipe of aliases nested 6 deep (a "billion laughs") made a
    3.5 MB error line; 8 deep took 2 GB; the message showed the value fully expanded."""
    from fxprune.recipe_config import ConfigError, load_config

    items = ["&a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"] + [
        f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    recipe = tmp_path / "lol.yaml"
    recipe.write_text("optim:\n  milestones: [" + ", ".join(items) + "]\n")
    with pytest.raises(ConfigError, match=r"optim.milestones takes a list of numbers each >= 0; "
                                          r"got \[\[1, 1, 1, 1, 1, 1, 1, 1, 1, 1\], \[\[\.\.\.\]") as e:
        load_config(recipe, [])
    assert len(str(e.value)) < 2000 and "\n" not in str(e.value)
    # review149 F5: the message of a key a method sets itself showed the value with !r
    recipe.write_text("prune:\n  method: magnitude\n  importance: [" + ", ".join(items) + "]\n")
    with pytest.raises(ConfigError, match=r"prune.method magnitude runs with importance="
                                          r"'magnitude', but the recipe sets prune.importance="
                                          r"\[\[1, 1, 1, 1, 1, 1, 1, 1, 1, 1\], \[\[\.\.\.\]") as e:
        load_config(recipe, [])
    assert len(str(e.value)) < 2000 and "\n" not in str(e.value)


@pytest.mark.parametrize("epoch_saved", [True, False])
def test_a_full_disk_names_the_folder_and_the_way_on(recipe, tmp_path, monkeypatch, capsys,
                                                     epoch_saved):
    """break148 F4: "fxprune train: error: [Errno 28] No space left on device", no file, no
    way out (freeing space and --resume worked)."""

    import fxprune.train as train_module

    out = tmp_path / "run"

    def full(cfg, **kw):
        out.mkdir()
        if epoch_saved:
            (out / "checkpoint.pt").write_bytes(b"an epoch")
        with open("/dev/full", "wb") as f:  # torch.save into a file object, as fxprune's
            torch.save({"weight": torch.zeros(4096)}, f)

    monkeypatch.setattr(train_module, "train", full)
    assert cli_main(["train", str(recipe), "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert f"writing {out}: no space left on device (a full disk or quota); " in err, err
    assert err.rstrip().endswith(f"the last finished epoch is in {out / 'checkpoint.pt'}; free "
                                 "space there, then run the same command with --resume"
                                 if epoch_saved else "no epoch of this run had finished; free "
                                 "space there, then run the same command again"), err


def test_a_checkpoint_write_that_finds_no_room_raises_the_os_error(tmp_path, monkeypatch):
    # review149 F3: torch.save to a path raised "unexpected pos 64 vs 0" (a RuntimeError) on a
    # full disk; into a file object the OSError says ENOSPC
    import builtins
    import errno

    from fxprune import run_io

    out = tmp_path / "run"
    run_io.claim_out_folder(out)
    real_open = builtins.open
    monkeypatch.setattr(run_io, "open", lambda file, mode="r", *a, **k: real_open(
        "/dev/full" if str(file).endswith(".tmp") and "w" in mode else file, mode, *a, **k),
        raising=False)
    with pytest.raises(OSError) as e:
        run_io.save_checkpoint({"weight": torch.zeros(4096)}, out / "checkpoint.pt")
    assert e.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert not (out / "checkpoint.pt").exists()

    # break206 F2: a disk that fills mid-file, whose file still closes (a real file system,
    # unlike /dev/full), raised torch's "unexpected pos" RuntimeError over the OSError
    class DiskFills(io.RawIOBase):
        def __init__(self, path):
            self.file, self.written = real_open(path, "wb"), 0

        def writable(self):
            return True

        def write(self, data):
            if self.written + len(data) > 2000:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.written += len(data)
            return self.file.write(data)

        def close(self):
            self.file.close()
            super().close()

    monkeypatch.setattr(run_io, "open", lambda file, mode="r", *a, **k: DiskFills(file)
                        if str(file).endswith(".tmp") and "w" in mode
                        else real_open(file, mode, *a, **k), raising=False)
    for save in (lambda: run_io.save_checkpoint({"weight": torch.zeros(4096)},
                                                out / "checkpoint.pt"),
                 lambda: run_io.save_module(torch.nn.Linear(64, 64), out / "model_pruned.pt")):
        with pytest.raises(OSError) as e:
            save()
        assert e.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert not (out / "checkpoint.pt").exists() and not (out / "model_pruned.pt").exists()
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]
    run_io.release_out_folder(out)


def test_a_run_copied_without_its_marker_is_told_how_to_copy_it(recipe, tmp_path, capsys):
    # break148 F5: "has no .fxprune-run marker, so fxprune did not write it", for files it wrote
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "checkpoint.pt").write_bytes(b"a run's checkpoint, copied with cp run/* copy/")
    assert cli_main(["train", str(recipe), "--out", str(copy), "--resume"]) == 2
    err = one_line_error(capsys)
    assert re.search(r"--resume: .*copy has no .fxprune-run marker, the hidden file a run keeps of "
                     r"the files it wrote .*; copy the whole folder \(`cp -r RUN NEW`\) and "
                     r"--resume there", err), err


def test_a_resume_on_another_thread_count_says_it_is_not_exact(recipe, tmp_path, capsys):
    # break148 F8: allowed, not bit-identical, and nothing said so
    out = tmp_path / "run"
    threads = torch.get_num_threads()
    try:
        assert cli_main(["train", str(recipe), "--out", str(out), "--set", "num_threads=1"]) == 0
        assert torch.load(out / "checkpoint.pt", weights_only=True)["threads"] == 1
        # review172 F9: the thread count shows when the run starts, not only in results.json
        assert f"fxprune train: {out} on cpu, 1 CPU thread(s)\n" in capsys.readouterr().out
        with pytest.warns(RuntimeWarning, match=r"--resume: the checkpoint's epochs ran on 1 CPU "
                                                r"threads per process and this run uses 2: .*set "
                                                r"num_threads: 1 \(--set num_threads=1\) to "
                                                r"resume exactly"):
            assert cli_main(["train", str(recipe), "--out", str(out), "--resume", "--set",
                             "num_threads=2", "--set", f"optim.epochs={TINY['optim']['epochs'] + 1}"]) == 0
    finally:
        torch.set_num_threads(threads)


def test_a_hook_that_fails_on_the_pruned_widths_is_named_not_blamed_on_fxprune():
    """break27 #6: a per-channel forward hook on a pruned layer made finalize say "This is a bug
    in fxprune", without naming the hook."""
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 4, 3)).eval()
    scale = torch.rand(1, 16, 1, 1)
    model[0].register_forward_hook(lambda mod, inp, out: out * scale)
    pm = fxprune.prepare(model, (torch.randn(1, 3, 8, 8),))
    for g in fxprune.channel_groups(pm):
        if g.prunable:
            g.mask[:8] = 0
    with pytest.raises(fxprune.SurgeryError, match=r"Layer `0`'s forward hook \(<lambda> at "
                                                   r"test_safety.py:\d+\) raised it.*remove it "
                                                   r"\(handle.remove\(\)\) before finalize, or "
                                                   r"before prepare") as e:
        fxprune.finalize(pm)
    assert "bug in fxprune" not in str(e.value)


def test_the_hook_that_fails_on_the_pruned_widths_is_the_one_named():
    # break144 F4: the first hooked layer was named (a harmless pre-hook, called a forward
    # hook), not the layer whose hook raised
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    pm = fxprune.prepare(model, (torch.randn(1, 3, 8, 8),))
    for g in fxprune.channel_groups(pm):
        if g.prunable:
            g.mask[: g.size // 2] = 0
    pm.get_submodule("1").register_forward_pre_hook(lambda mod, inp: None)
    bias = torch.randn(1, 8, 1, 1)

    def culprit(mod, inp, out):
        return out + bias

    pm.get_submodule("3").register_forward_hook(culprit)
    with pytest.raises(fxprune.SurgeryError, match=r"Layer `3`'s forward hook \(culprit at "
                                                   r"test_safety.py:\d+\) raised it"):
        fxprune.finalize(pm)


def test_an_older_fxprunes_marker_adopts_its_run_files_when_first_recorded(tmp_path):
    """A run folder whose marker an older fxprune wrote (its first line alone) records no files;
    the first record in it adopts the run files there, so a later start does not call the run's
    own files the user's."""
    from fxprune import run_io

    out = tmp_path / "run"
    out.mkdir()
    (out / run_io.RUN_MARKER).write_text(run_io._MARKER_TEXT)  # as an older fxprune wrote it
    (out / "model_pruned.pt").write_bytes(b"the old run's model")
    (out / "metrics.csv").write_text("epoch\n1\n")
    assert run_io.foreign_run_files(out) == []  # an old marker: trusted, as before
    run_io.atomic_write_text(out / "config.yaml", "a: 1\n")
    assert run_io.foreign_run_files(out) == []
    (out / "results.json").write_text("{}")  # put there since: the user's
    assert run_io.foreign_run_files(out) == ["results.json"]


def test_a_run_copied_with_hard_links_and_resumed_leaves_the_originals_logs(recipe, tmp_path):
    """break206 F4: `cp -al run copy` then --resume in the copy appended its rows to the
    original's metrics.csv and steps.csv (one file under two names), whose own --resume was
    then refused as changed by another program."""
    run, copy = tmp_path / "run", tmp_path / "copy"
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=1", "--out", str(run)]) == 0
    before = {name: (run / name).read_bytes() for name in ("metrics.csv", "steps.csv")}
    subprocess.run(["cp", "-al", str(run), str(copy)], check=True)
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=2", "--out", str(copy),
                     "--resume"]) == 0
    assert {name: (run / name).read_bytes() for name in before} == before
    assert (copy / "metrics.csv").read_text().count("\n") > before["metrics.csv"].count(b"\n")
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=2", "--out", str(run),
                     "--resume"]) == 0


def test_a_saved_checkpoint_is_on_the_disk_before_its_rename(tmp_path, monkeypatch):
    """break206 F6: nothing was fsynced, so after a power loss a renamed checkpoint.pt could
    come back empty on file systems without ext4's rename heuristics."""
    from fxprune import run_io

    synced, renamed = [], []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(run_io.os, "fsync", lambda fd: synced.append(len(renamed))
                        or real_fsync(fd))
    monkeypatch.setattr(run_io.os, "replace", lambda a, b: renamed.append(b)
                        or real_replace(a, b))
    out = tmp_path / "run"
    run_io.claim_out_folder(out)
    run_io.save_checkpoint({"weight": torch.zeros(8)}, out / "checkpoint.pt")
    run_io.release_out_folder(out)
    monkeypatch.undo()
    target = renamed.index(out / "checkpoint.pt")
    assert synced and synced[0] <= target  # synced before the rename that publishes it


def test_a_cut_run_marker_is_named_and_its_way_out_resumes(recipe, tmp_path, capsys):
    """break209 F8: an empty marker (what a power loss can leave: it is renamed into place,
    not synced) made --resume call the run's own logs "not written by fxprune"."""
    out = tmp_path / "run"
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=1", "--out", str(out)]) == 0
    (out / "results.json").unlink()  # as if stopped after its checkpoint
    (out / ".fxprune-run").write_text("")
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=1", "--out", str(out),
                     "--resume"]) == 2
    err = one_line_error(capsys)
    assert (f"{out / '.fxprune-run'}, the record of the files fxprune wrote there, is empty or "
            "cut") in err and "move them out of the folder (--resume then goes on from the " \
            "checkpoint" in err, err
    said = re.search(r"so (.*) cannot be told", err).group(1).split(", ")
    for name in said:
        (out / name).rename(tmp_path / name)
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=1", "--out", str(out),
                     "--resume"]) == 0
