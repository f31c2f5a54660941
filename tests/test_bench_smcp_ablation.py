"""benchmarks/bench_smcp_ablation.py --append: rows added to a results file must have been
trained as its rows were (the training itself is faked: the smoke run is in
test_bench_vs_torch_pruning)."""
from __future__ import annotations

import json
import shutil
import sys

import pytest

from helpers import load_benchmark


@pytest.fixture
def bench(monkeypatch):
    """The benchmark with run_one faked (instant); ``bench.trained`` lists the rows it ran."""
    bench = load_benchmark("bench_smcp_ablation")
    bench.trained = []

    def run_one(options, seed, args):
        bench.trained.append((options, seed))
        row = {"accuracy": 0.5, "train_s": 0.0, "seed": seed}
        if options is not None:
            row.update(cost=0.5, mid_ramp_accuracy=0.4, flips=3, returned=1, updates=4)
        return row

    monkeypatch.setattr(bench, "run_one", run_one)
    return bench


@pytest.mark.parametrize("option, value, says", [
    ("--batch", "16", "has rows trained at --batch 128, this run at 16; pass --batch 128"),
    ("--threads", "2", "has rows trained at --threads 1, this run at 2; pass --threads 1"),
    ("--probe-after", "5", "has rows trained at --probe-after 1, this run at 5"),  # smoke's 1
    # break80 F2: "vs dense" then compared seeds 0-2 with seed 5, unsaid
    ("--seeds", "5", r"has rows trained on seeds \[0\], this run on \[5\]; pass --seeds 0"),
    # break56 #15: this said "use --out" to a run that had given one
    ("--lr", "0.05", "was measured on another schedule; drop --append or write to"),
])
def test_append_refuses_rows_trained_at_another_batch_or_thread_count(bench, tmp_path, option,
                                                                       value, says):
    """break42 #1: the header states one batch and thread count for every row, and "vs dense"
    compares across runs: another batch or thread count is refused, as another schedule is,
    before anything trains, and the file is left as it was."""
    out = str(tmp_path / "abl")
    assert bench.main(["--smoke", "--seeds", "0", "--rows", "dense", "--out", out]) == 0
    before = (tmp_path / "abl.json").read_text(), (tmp_path / "abl.md").read_text()
    bench.trained.clear()
    with pytest.raises(SystemExit, match=f"--append: .*abl.json {says}.*another --out"):
        bench.main(["--smoke", "--seeds", "0", "--rows", "SMCP", option, value, "--append",
                    "--out", out])  # (argparse: the later --seeds is the one taken)
    assert bench.trained == []
    assert ((tmp_path / "abl.json").read_text(), (tmp_path / "abl.md").read_text()) == before
    # the same settings append
    assert bench.main(["--smoke", "--seeds", "0", "--rows", "SMCP", "--append", "--out", out]) == 0
    result = json.loads((tmp_path / "abl.json").read_text())
    assert list(result["rows"]) == ["dense", "SMCP"] and len(result["meta"]["runs"]) == 2


def test_append_to_the_published_file_is_still_guarded(bench, tmp_path, monkeypatch, capsys):
    """``--append`` without ``--out`` adds rows to the published file: adding rows (--rows,
    --extra) is what it is for, but fewer seeds would replace published rows with a smaller
    run, so that needs ``--out`` as a plain run does."""
    shutil.copy(bench.results_stem.__globals__["RESULTS"] / "smcp_ablation.json",
                tmp_path / "smcp_ablation.json")  # a copy: nothing here writes the real one
    monkeypatch.setattr(sys.modules[bench.results_stem.__module__], "RESULTS", tmp_path)
    with pytest.raises(SystemExit) as e:
        bench.main(["--seeds", "0", "--rows", "SMCP", "--append"])
    assert e.value.code == 2 and "--seeds changes the published protocol" in capsys.readouterr().err
    assert bench.trained == []
    with pytest.raises(SystemExit, match="--batch 128, this run at 64"):
        bench.main(["--rows", "SMCP", "--batch", "64", "--append", "--out",
                    str(tmp_path / "smcp_ablation")])
    # the published protocol's seeds: the row is added to (replaced in) the file
    rows_before = json.loads((tmp_path / "smcp_ablation.json").read_text())["rows"]
    assert bench.main(["--rows", "SMCP", "--append"]) == 0
    after = json.loads((tmp_path / "smcp_ablation.json").read_text())
    assert list(after["rows"]) == list(rows_before)
    assert after["rows"]["SMCP"]["summary"]["accuracy"]["mean"] == 0.5
    assert after["meta"]["runs"][-1]["probe_after"] == 10


@pytest.mark.parametrize("extra, says", [
    ('dense={"hysteresis": 3}', "'dense' is a row already; give the extra row another name"),
    ('typo={"hysterisis": 3}', "TypeError: .*hysterisis"),
    ("lst=[1]", r"the JSON is SMCP's arguments, an object"),
    ('bad={"hysteresis": -1}', "ArgumentError: hysteresis must be >= 0"),
    # break83 F1: checked on a fixed 100-step schedule, this passed, then failed on the smoke
    # run's 32 steps after the dense row had trained
    ('w20={"warmup": 20}', "ArgumentError: freeze_after=24 stops mask updates before the ramp"),
])
def test_extra_rows_are_checked_before_anything_trains(bench, tmp_path, capsys, extra, says):
    """break80 F1: an extra row named like a built-in one replaced it (the dense row became a
    pruned one, and "vs dense" was measured against it); F5: a typo failed when that row
    trained, last, with a traceback, and nothing was written."""
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--smoke", "--seeds", "0", "--rows", "dense", "SMCP", "--extra", extra,
                    "--out", str(tmp_path / "abl")])
    assert exit_.value.code == 2 and bench.trained == []
    assert __import__("re").search(says, capsys.readouterr().err)
    assert not (tmp_path / "abl.json").exists()
