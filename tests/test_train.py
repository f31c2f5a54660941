"""``fxprune train``: config overrides, logs, checkpoints, exact resume, pruning hooks.

Runs use the synthetic data set and a tiny ResNet so each takes a second or two.
"""
from __future__ import annotations

import copy
import csv
import json
import shutil
import os
import re
import warnings

import pytest
import torch
import yaml

import fxprune
from fxprune import train as train_mod
from fxprune.cli import main as cli_main
from fxprune.recipe_config import DEFAULTS
from fxprune.train import ConfigError, apply_overrides, load_config, resolve_config, train
from fxprune.run_io import format_results
from helpers import TINY_RECIPE as TINY



@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def tiny_cfg(out, *overrides):
    return resolve_config(TINY, [f"out={out}", *overrides])


def read_csv(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- config

def test_overrides_are_yaml_typed():
    cfg = apply_overrides(resolve_config(), [
        "optim.epochs=2", "optim.lr=1e-3", "model.widths=[8, 16, 32]", "data.root=null",
        "data.root=/some/where", "optim.nesterov=false", "prune.method=smcp",
        "prune.target=0.5", "prune.cost=flops"])
    assert cfg["optim"]["epochs"] == 2 and isinstance(cfg["optim"]["epochs"], int)
    assert cfg["optim"]["lr"] == pytest.approx(1e-3)
    assert cfg["model"]["widths"] == [8, 16, 32]
    assert cfg["data"]["root"] == "/some/where"
    assert cfg["optim"]["nesterov"] is False
    # prune belongs to the method: any key passes through untouched.
    assert cfg["prune"] == {"method": "smcp", "target": 0.5, "cost": "flops"}


@pytest.mark.parametrize("text, read", [("seed: 017", "15"), ("seed: 1:30", "90"),
                                        ("data:\n  batch_size: -0_17", "-15")])
def test_yaml_1_1_octal_and_base_60_integers_are_refused_not_read(tmp_path, text, read):
    """break170 F6: seed: 017 trained with seed 15 and 1:30 with 90, without a word."""
    path = tmp_path / "r.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError, match=rf"is read by YAML 1.1 as {read} \(a leading 0 is "
                                          r"octal, a colon base 60\); write the number plainly"):
        load_config(path)
    # review172 F11: an override is not at "line 1", and it is valid YAML, refused
    with pytest.raises(ConfigError, match=rf"^override 'seed={text.split(': ')[1]}': "
                                          rf"\S+ is read by YAML 1.1 as {read} \(a leading"):
        apply_overrides(resolve_config(), [f"seed={text.split(': ')[1]}"])
    path.write_text("seed: 17\ndata:\n  batch_size: 1_28\n  root: '017'\n")
    cfg = load_config(path)
    assert (cfg["seed"], cfg["data"]["batch_size"], cfg["data"]["root"]) == (17, 128, "017")


def test_overrides_do_not_mutate_input():
    base = resolve_config()
    snapshot = copy.deepcopy(base)
    apply_overrides(base, ["optim.epochs=7", "prune.target=0.3"])
    assert base == snapshot


@pytest.mark.parametrize("override, message", [
    # the keys of the section, and the closest (break37 #8: a list of every key was cut off)
    ("optim.epoch=2", r"unknown key optim.epoch \(did you mean optim.epochs\?\); "
                      r"valid keys in optim: optim.epochs"),
    ("optimizer.lr=0.1", r"unknown key optimizer \(did you mean optim\?\); "
                         r"valid keys: seed, .*prune"),
    ("lr=0.1", r"unknown key lr \(did you mean optim.lr\?\)"),
    ("optim.epochs=two", r"optim.epochs takes an integer >= 1; got 'two'"),
    ("optim.lr=fast", r"optim.lr takes a number > 0; got 'fast'"),
    ("optim=3", r"optim is a section"),
    ("optim.epochs", r"not KEY=VALUE"),
    ("optim.schedule=linear", r"optim.schedule must be one of 'cosine' \| 'step' \| 'constant'"),
    ("prune.method=magic", r"prune.method must be one of 'none' \| 'smcp' \| .* \| 'ccp' \| .*; got 'magic'"),
    ("optim.epochs=null", r"cannot be null"),
    ("model.inner_widths=[8]", r"model.inner_widths needs one entry per stage like model.widths \(3\)"),
    ("model.conv_init=xavier", r"model.conv_init must be one of 'kaiming_fan_out' \| 'torch_default' "
                               r"\(or null\); got 'xavier'"),
    (["model.name=resnet18", "model.widths=null", "model.blocks=null", "model.conv_init=torch_default"],
     r"model.conv_init only applies to resnet_fmnist; set it to null for the torchvision model "
     r"'resnet18' \(--set model.conv_init=null\)$"),
    # break182 F5: widths and blocks at their defaults are no setting of another model
    (["model.name=resnet18", "model.conv_init=torch_default"],
     r"model.conv_init only applies to resnet_fmnist; set it to null for the torchvision model "
     r"'resnet18' \(--set model.conv_init=null\)$"),
    (["model.name=timm:resnet10t", "model.widths=[8, 8, 8]", "model.conv_init=torch_default"],
     r"model.widths, model.conv_init only apply to resnet_fmnist; set them to null for the timm "
     r"model 'timm:resnet10t' \(--set model.widths=null --set model.conv_init=null\)$"),
    (["prune.method=smcp", "prune.bn_rescale=off"],
     r"prune.bn_rescale must be one of 'kept_fraction' \| 'off'; got false \(YAML reads unquoted "
     r"off/no/on/yes as booleans: write bn_rescale: \"off\" in a recipe, --set "
     r"'prune.bn_rescale=\"off\"' on the command line\)"),
    ("device=yes", r"device takes a string; got true \(bool\) \(YAML reads .* --set 'device=\"on\"'"),
    ("optim.milestones=[5]", r"optim.milestones \[5\] are read by the step schedule only \(optim.schedule "
                             r"is 'cosine'\): --set optim.schedule=step"),
    (["optim.schedule=step", "optim.epochs=10", "optim.milestones=[3, 10, 30]"],
     r"optim.milestones \[10, 30\] lie at or past optim.epochs \(10\), where they never apply"),
    # break158 F3: a 30-line AttributeError ('int' object has no attribute 'removesuffix')
    ("prune={method: smcp, 1: x}", r"^prune has the key 1 \(int\), not a name: YAML reads"),
    ("prune={method: none, on: true}", r"^prune has the key True \(bool\), not a name"),
    ("prune={null: 3}", r"^prune has the key None \(NoneType\), not a name"),
])
def test_bad_overrides_are_clear_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config(None, override if isinstance(override, list) else [override])


@pytest.mark.parametrize("milestones", [[1, 2], [2, 1]])
def test_step_schedule_decays_at_each_milestone(milestones):
    optim = resolve_config(None, ["optim.schedule=step", "optim.epochs=3", "optim.gamma=0.1",
                                  "optim.warmup_epochs=0", f"optim.milestones={milestones}"])["optim"]
    factors = [train_mod.lr_factor(step, optim, steps_per_epoch=4) for step in range(12)]
    assert factors == pytest.approx([1.0] * 4 + [0.1] * 4 + [0.01] * 4)


def test_typo_in_recipe_file_names_file_and_key(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"typo\.yaml: unknown key optim.learning_rate"):
        load_config(path)



def test_a_key_given_twice_is_refused_naming_it_and_its_line(tmp_path):
    """PyYAML keeps the last of two equal keys: a second ``prune:`` block would replace the first."""
    path = tmp_path / "twice.yaml"
    path.write_text("prune:\n  method: smcp\n  target: 0.5\noptim:\n  lr: 0.1\nprune:\n  target: 0.3\n")
    with pytest.raises(ConfigError, match=r"twice\.yaml: not a valid YAML recipe \(key 'prune' is "
                                          r"given twice in one mapping, at line 6; keep one\)"):
        load_config(path)
    path.write_text("optim:\n  lr: 0.1\n  epochs: 2\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match="key 'lr' is given twice"):
        load_config(path)


def test_yaml_merge_keys_still_merge_and_an_explicit_key_overrides_them(tmp_path):
    """``<<: *base`` is not a key given twice; an unhashable key stays a ConfigError."""
    path = tmp_path / "merge.yaml"
    path.write_text("optim:\n  <<: {lr: 0.05, epochs: 2}\n  lr: 0.2\n")
    cfg = load_config(path)
    assert (cfg["optim"]["lr"], cfg["optim"]["epochs"]) == (0.2, 2)
    path.write_text("optim:\n  <<: {lr: 0.05}\n  <<: {epochs: 2}\n")
    with pytest.raises(ConfigError, match="'<<' is given twice in one mapping, at line 3"):
        load_config(path)
    path.write_text("optim:\n  ? [lr, epochs]\n  : 1\n")
    with pytest.raises(ConfigError, match="not a valid YAML recipe"):
        load_config(path)
    path.write_text("data:\n  name: synthetic\n optim:\n  epochs: 1\n")  # break29 #7: where?
    with pytest.raises(ConfigError, match=r"not a valid YAML recipe \(line 3, column 2: expected "
                                          r"<block end>"):
        load_config(path)
    path.write_text("optim:\n\tlr: 0.1\n")  # break132 #7: no way out was said
    with pytest.raises(ConfigError, match=r"line 2, column 1: .*; indent with spaces, not tabs$"):
        load_config(path)
    path.write_text("optim:\n  lr:\t0.1\n")  # review137 #7: a tab that indents nothing
    with pytest.raises(ConfigError, match=r"cannot start any token\)$"):
        load_config(path)


def test_a_recipes_method_switches_on_the_command_line_by_removing_its_own_keys():
    smcp = ["prune.method=ccp"]
    with pytest.raises(ConfigError, match=r"unknown key prune.warmup_fraction for prune.method ccp.*"
                                          r"on the command line: --set '~prune.warmup_fraction' "):
        load_config("configs/fashion_mnist_smcp.yaml", smcp)
    with pytest.raises(ConfigError) as info:
        load_config("configs/fashion_mnist_smcp.yaml", smcp)
    drop = [w.strip("'") for w in str(info.value).split("command line: ")[1].rstrip(")").split()
            if w != "--set"]
    cfg = load_config("configs/fashion_mnist_smcp.yaml", smcp + drop)
    assert cfg["prune"]["method"] == "ccp" and "warmup_fraction" not in cfg["prune"]
    assert load_config("configs/fashion_mnist_smcp.yaml", ["~optim.lr"])["optim"]["lr"] == DEFAULTS["optim"]["lr"]
    with pytest.raises(ConfigError, match=r"'~prune.nope': the recipe does not set 'prune.nope', "
                                          r"so there is nothing to remove$"):
        load_config("configs/fashion_mnist_smcp.yaml", ["~prune.nope"])
    # break52: a typo was told to drop a value it did not have; the key is named, with a match
    with pytest.raises(ConfigError, match=r"'~optim.lrx': the recipe does not set 'optim.lrx'.* "
                                          r"\(did you mean ~optim.lr\?\)"):
        load_config("configs/fashion_mnist_smcp.yaml", ["~optim.lrx"])
    with pytest.raises(ConfigError, match=r"'~optim.lr=0.1' removes a key, so it takes no value"):
        load_config("configs/fashion_mnist_smcp.yaml", ["~optim.lr=0.1"])

def test_shipped_recipe_loads_and_builds():
    cfg = load_config("configs/fashion_mnist_resnet.yaml", ["optim.epochs=1"])
    assert cfg["prune"]["method"] == "none" and cfg["optim"]["epochs"] == 1
    assert cfg["optim"]["weight_decay"] == pytest.approx(5e-4)


def test_cli_reports_config_errors(recipe, tmp_path, capsys):
    rc = cli_main(["train", str(recipe), "--set", "optim.epoch=1", "--out", str(tmp_path / "r")])
    assert rc == 2
    assert "unknown key optim.epoch " in capsys.readouterr().err
    # break170 F3: "Overflow when unpacking long long", naming no key
    rc = cli_main(["train", str(recipe), "--set", f"seed={2**64}", "--out", str(tmp_path / "r")])
    assert rc == 2
    assert (f"seed takes an integer >= 0 and <= {2**64 - 1}; got {2**64}"
            in capsys.readouterr().err)
    assert not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------- runs

def test_cli_run_writes_logs_checkpoint_model_and_results(recipe, tmp_path):
    out = tmp_path / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(3)  # the recipe trains with 1 (num_threads)
    try:
        assert cli_main(["train", str(recipe), "--set", "optim.epochs=1", "--set",
                         "optim.schedule=cosine", "--out", str(out)]) == 0
        assert torch.get_num_threads() == 3  # the caller's again (review126 #6)
    finally:
        torch.set_num_threads(threads)
    rows = read_csv(out / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1"]
    assert 0.0 <= float(rows[0]["test_acc"]) <= 1.0
    # 6 steps, every 4, and the epoch's last two (break81 #1: they were in no row)
    steps = read_csv(out / "steps.csv")
    assert [int(r["step"]) for r in steps] == [4, 6]
    # the rate the epoch's last step trained with, as steps.csv says it (review126 #4: the
    # next step's, 0.0 at a cosine run's end)
    assert float(rows[0]["lr"]) == float(steps[-1]["lr"]) > 0
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["step"] == 6 and ckpt["pruner"] is None
    assert set(ckpt) >= {"model", "optimizer", "scheduler", "rng", "config"}
    model = torch.load(out / "model_dense.pt", weights_only=False)
    assert model.fxprune_input_shape == (1, 1, 28, 28)
    assert model(torch.zeros(1, 1, 28, 28)).shape == (1, 10)
    results = json.loads((out / "results.json").read_text())
    assert results["epochs"] == 1 and results["method"] == "none"
    # what the accuracy was scored on, for fxprune plot to compare (break158 F2)
    assert results["test_data"] == {"name": "synthetic", "samples": results["test_samples"],
                                    "labels_sha256": ckpt["data"]["test"]["labels_sha256"],
                                    "images_sha256": ckpt["data"]["test"]["images_sha256"]}
    assert results["params"] == sum(p.numel() for p in model.parameters())
    assert results["flops"] > 0 and results["flops_ratio"] == 1.0
    assert results["accuracy"] == pytest.approx(float(rows[0]["test_acc"]))
    assert results["threads"] == 1  # the recipe's num_threads, said (break170 F1)


def test_ctrl_c_after_a_run_wrote_its_results_keeps_the_runs_status(recipe, tmp_path, capsys,
                                                                    monkeypatch):
    """break170 F4: a Ctrl-C between results.json and the printed table said "interrupted ...
    continue with --resume" (130) of a finished run."""
    def interrupted(results):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "format_results", interrupted)
    out = tmp_path / "run"
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=1", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert (f"fxprune train: interrupted after the run finished; its results are in "
            f"{out / 'results.json'}") in err and "--resume" not in err


def test_the_fxprune_command_ignores_ctrl_c_and_sigterm_once_it_has_finished(tmp_path):
    """break170 F4: in the seconds the interpreter takes to exit, a signal turned a finished
    run into death by SIGINT/SIGTERM or an exit handler's traceback. Only the program (the
    console script, python -m fxprune): a Python caller of cli.main keeps its handlers."""
    import subprocess
    import sys

    code = ("import signal, sys\n"
            "signal.signal(signal.SIGINT, signal.default_int_handler)\n"  # (CI ignores SIGINT)
            "from fxprune import cli\n"
            "assert cli.main(['methods']) == 0\n"  # a call from Python: handlers kept
            "sys.argv = ['fxprune', 'methods']\n"
            "assert cli.main() == 0\n"  # (review172 F2: not even with sys.argv set)
            "assert signal.getsignal(signal.SIGINT) is signal.default_int_handler\n"
            "rc = cli.program()\n"
            "print(rc, signal.getsignal(signal.SIGINT) is signal.SIG_IGN,\n"
            "      signal.getsignal(signal.SIGTERM) is signal.SIG_IGN)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "0 True True"
    from importlib.metadata import entry_points

    (script,) = entry_points(group="console_scripts", name="fxprune")
    assert script.value == "fxprune.cli:program"


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="CPU affinity is Linux's")
def test_num_threads_null_is_the_cores_this_process_may_use_or_omp_num_threads(monkeypatch):
    """break170 F1: null was os.cpu_count(), the host's every core, whatever taskset, a
    container's cpuset or OMP_NUM_THREADS allowed: 32 threads pinned to one core trained 5x
    slower, without a word."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 32)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert train_mod.default_threads() == 4 and train_mod.default_threads(2) == 2
    assert train_mod.default_threads(8) == 1  # at least one
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert train_mod.default_threads() == 3 == train_mod.default_threads(2)
    monkeypatch.setenv("OMP_NUM_THREADS", "lots")  # not a count: the cores
    assert train_mod.default_threads() == 4


def test_a_reader_that_goes_away_does_not_stop_a_run(recipe, tmp_path):
    """break158 F1: `fxprune train ... | head -2` stopped with "error: Broken pipe" (2) at the
    next epoch line, before that epoch's checkpoint; the console's rest is dropped now (stderr
    too: `2>&1 | head`) and the run goes on to its results."""
    import subprocess
    import sys

    r, w = os.pipe()
    os.close(r)  # every write to w fails with EPIPE
    out = tmp_path / "run"
    try:
        proc = subprocess.run([sys.executable, "-m", "fxprune", "train", str(recipe), "--set",
                               "optim.epochs=2", "--out", str(out)], stdout=w, stderr=w,
                              timeout=600)
    finally:
        os.close(w)
    assert proc.returncode == 0
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 2
    assert json.loads((out / "results.json").read_text())["epochs"] == 2


def test_an_epochs_line_is_printed_once_its_checkpoint_is_saved(recipe, tmp_path, capsys,
                                                               monkeypatch):
    """break158 F1: the line came first, so a reader that saw it could lose the epoch."""
    saves = []
    real_save = train_mod.save_checkpoint

    def save(checkpoint, path):
        saves.append(capsys.readouterr().out)
        real_save(checkpoint, path)
    monkeypatch.setattr(train_mod, "save_checkpoint", save)
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=2", "--out",
                     str(tmp_path / "r")]) == 0
    assert len(saves) == 2 and "epoch 1/2:" in saves[1]
    assert not any("epoch 1/2:" in text for text in saves[:1])
    assert "epoch 2/2:" in capsys.readouterr().out


def test_an_interrupt_before_the_first_save_says_what_to_do_and_that_works(
        recipe, tmp_path, capsys, monkeypatch):
    """break158 F8: "no epoch had finished" beside metrics.csv's row of epoch 1, written just
    before the checkpoint; the advice given is followed here."""
    def stopped(checkpoint, path):
        raise KeyboardInterrupt
    monkeypatch.setattr(train_mod, "save_checkpoint", stopped)
    out = tmp_path / "r"
    argv = ["train", str(recipe), "--set", "optim.epochs=1", "--out", str(out)]
    assert cli_main(argv) == 130
    assert capsys.readouterr().err == ("fxprune train: interrupted; no epoch had been saved yet; "
                                       "run the same command again to start over\n")
    monkeypatch.undo()
    assert cli_main(argv) == 0


class _OutOfMemoryAbove(torch.nn.Module):
    """A classifier that fails as torch's CPU allocator does on batches above ``limit``."""

    def __init__(self, limit):
        super().__init__()
        self.limit, self.head = limit, torch.nn.Sequential(torch.nn.Flatten(),
                                                           torch.nn.Linear(28 * 28, 10))

    def forward(self, x):
        if x.shape[0] > self.limit:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: "
                               "can't allocate memory: you tried to allocate 205520896 bytes.")
        return self.head(x)


def test_a_batch_too_large_for_memory_is_one_line_naming_the_batch(recipe, tmp_path, capsys,
                                                                   monkeypatch):
    """break186 F3: a data.batch_size (or test_batch_size) too large for memory ended in a
    57-line traceback, exit 1, where a model too large was one line; break190 F12: a resume
    keeps the training batch (a new run changes it), and may change the evaluation's."""
    said = "(can't allocate memory: you tried to allocate 205520896 bytes)"
    monkeypatch.setattr(train_mod, "build_model", lambda name, **kwargs: _OutOfMemoryAbove(16))
    assert cli_main(["train", str(recipe), "--out", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err == (
        f"fxprune train: error: ran out of memory training at data.batch_size 32 {said}; lower "
        "data.batch_size in a new run (--set data.batch_size=N, another --out), or choose a "
        "smaller model\n")
    # the evaluation of a resumed run's epoch: the resume may change its batch
    monkeypatch.setattr(train_mod, "build_model", lambda name, **kwargs: _OutOfMemoryAbove(100))
    assert cli_main(["train", str(recipe), "--out", str(tmp_path / "e"), "--set",
                     "optim.epochs=1"]) == 0
    monkeypatch.setattr(train_mod, "build_model", lambda name, **kwargs: _OutOfMemoryAbove(40))
    capsys.readouterr()
    assert cli_main(["train", str(recipe), "--out", str(tmp_path / "e"), "--resume"]) == 2
    assert capsys.readouterr().err == (
        f"fxprune train: error: ran out of memory evaluating at data.test_batch_size 64 {said}; "
        "lower data.test_batch_size (--set data.test_batch_size=N, with --resume), or choose a "
        "smaller model\n")
    assert cli_main(["train", str(recipe), "--out", str(tmp_path / "e"), "--resume", "--set",
                     "data.test_batch_size=32"]) == 0


def test_memory_run_out_in_the_methods_step_is_not_blamed_on_the_batch(tmp_path, capsys,
                                                                      monkeypatch):
    """review189 R2: an allocation in SMCP's step (its knapsack, a C x C statistic) was told
    to lower data.batch_size, which does not change it."""
    def step(self, *args, **kwargs):
        raise MemoryError("Unable to allocate 8.00 TiB for an array with shape (1099511627776,) "
                          "and data type float64")

    monkeypatch.setattr(fxprune.SMCP, "step", step)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(TINY))
    assert cli_main(["train", str(recipe), "--set", "prune.method=smcp", "--set", "prune.target=0.5",
                     "--set", "prune.channel_step=2", "--set", "prune.warmup=1", "--set",
                     "prune.ramp=4", "--set", "prune.update_every=1", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err == ("fxprune train: error: ran out of memory in prune.method smcp's step (Unable "
                   "to allocate 8.00 TiB for an array with shape (1099511627776,) and data type "
                   "float64); choose a smaller model or a coarser prune.channel_step, or free "
                   "memory\n"), err


def test_a_model_too_large_for_memory_is_one_line_naming_its_size(recipe, tmp_path, capsys,
                                                                  monkeypatch):
    """break158 F7: model.widths=[100000] ended in a 38-line allocation traceback (exit 1)."""
    def too_large(name, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: "
                           "can't allocate memory: you tried to allocate 360000000000 bytes.")
    monkeypatch.setattr(train_mod, "build_model", too_large)
    assert cli_main(["train", str(recipe), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fxprune train: error: model resnet_fmnist (model.widths=[4, 8, 8], "
                          "model.blocks=[1, 1, 1]) does not fit in memory (can't allocate "
                          "memory: you tried to allocate 360000000000 bytes); choose"), err
    assert err.rstrip().endswith("; choose a smaller model") and err.count("\n") == 1, err

    def other(name, **kwargs):  # any other RuntimeError stays a traceback (a bug to see)
        raise RuntimeError("something else")
    monkeypatch.setattr(train_mod, "build_model", other)
    with pytest.raises(RuntimeError, match="something else"):
        cli_main(["train", str(recipe), "--out", str(tmp_path / "r2")])


@pytest.mark.parametrize("failure", ["lost_a_peer", "config", "interrupt"])
def test_a_signal_after_the_error_line_leaves_the_error_and_its_status(recipe, tmp_path, capsys,
                                                                       monkeypatch, failure):
    """break173 F1: under torchrun the survivors of a process that died get SIGTERM as their
    collective fails: "stopped: another process ..." was followed by "interrupted", exit 130.
    Once the error line is out, a signal changes nothing; a Python caller's handlers are back
    afterwards."""
    import signal

    def lost(cfg, **kwargs):
        if failure == "config":
            raise ConfigError("a bad value; the way out")
        if failure == "interrupt":  # review177 F4: the terminal's Ctrl-C, then torchrun's
            raise KeyboardInterrupt
        raise RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection "
                           "closed by peer")
    monkeypatch.setattr(train_mod, "train", lost)
    monkeypatch.setattr(train_mod, "_lost_a_peer", lambda exc: True)

    def print_then_signal(*args, **kwargs):  # torchrun's SIGTERM, as the line goes out
        print(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
    monkeypatch.setattr(train_mod, "print", print_then_signal, raising=False)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    rc = cli_main(["train", str(recipe), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    said = {"lost_a_peer": "stopped: another process", "config": "a bad value",
            "interrupt": "interrupted; no epoch had been saved yet"}[failure]
    assert said in err and rc == (130 if failure == "interrupt" else 2), (rc, err)
    assert failure == "interrupt" or "interrupted" not in err
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    # the fxprune command (cli.program) ends with the command: they stay ignored to its exit,
    # or a signal in the interpreter's last seconds would still change the status (review178 F7)
    from fxprune import cli
    monkeypatch.setattr(cli, "AS_PROGRAM", True)
    try:
        rc2 = cli_main(["train", str(recipe), "--out", str(tmp_path / "r2")])
        after = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    finally:
        for signum, handler in zip((signal.SIGINT, signal.SIGTERM), before):
            signal.signal(signum, handler)
    assert rc2 == rc and after == (signal.SIG_IGN, signal.SIG_IGN), (rc2, after)


@pytest.mark.parametrize("method", ["none", "smcp"])
def test_a_run_whose_loss_diverges_stops_in_one_line(recipe, tmp_path, capsys, method):
    """break158 F10: optim.lr=10000 exited 0 with an accuracy of chance and a bare NaN in
    results.json (the dense recipe); a pruning run failed at finalize, advising
    finalize(..., check=False), which a command-line user cannot pass."""
    out = tmp_path / "r"
    prune = ["--set", "prune.method=smcp", "--set", "prune.target=0.7", "--set",
             "prune.allow_above_target=true", "--set", "prune.channel_step=1", "--set", "prune.warmup=0",
             "--set", "prune.ramp=4", "--set", "prune.update_every=2"] if method == "smcp" else []
    assert cli_main(["train", str(recipe), "--set", "optim.lr=1e30", "--set",
                     "optim.warmup_epochs=0", *prune, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fxprune train: error: training diverged: the loss is not finite in "
                          "the steps up to "), err
    assert err.rstrip().endswith("; no epoch was saved; lower optim.lr (or raise "
                                 "optim.warmup_epochs) and start over with --overwrite"), err
    assert not (out / "results.json").exists() and not (out / "checkpoint.pt").exists()


def test_masks_are_broadcast_after_updates_only(recipe, tmp_path, monkeypatch):
    """break166 F1: the trainer broadcast the masks after every step; under a process group the
    copy bumped each mask's version, and masked norms read their mask from the device at
    every forward. Now after each step whose record says it updated them, as the README's own
    loop and the Lightning callback do (train.check_masks, a debug mode, every step)."""
    from fxprune.methods.smcp import SMCP

    records, broadcasts = [], []
    real_step = SMCP.step

    def step(self, *args, **kwargs):
        record = real_step(self, *args, **kwargs)
        records.append(record is not None)
        return record
    monkeypatch.setattr(SMCP, "step", step)
    monkeypatch.setattr(train_mod.fxdist, "broadcast_masks",
                        lambda net, check=False: broadcasts.append((len(records), check)))
    args = ["train", str(recipe), "--set", "optim.epochs=2", "--set", "prune.method=smcp",
            "--set", "prune.target=0.7", "--set", "prune.channel_step=1", "--set",
            "prune.warmup=0", "--set", "prune.ramp=4", "--set", "prune.update_every=2",
            "--set", "prune.allow_above_target=true"]
    assert cli_main([*args, "--out", str(tmp_path / "r")]) == 0
    updates = [i + 1 for i, updated in enumerate(records) if updated]
    assert 0 < len(updates) < len(records) == 12
    assert [n for n, _ in broadcasts if n <= len(records)][:len(updates)] == updates
    records.clear(), broadcasts.clear()
    assert cli_main([*args, "--set", "train.check_masks=true", "--out", str(tmp_path / "c")]) == 0
    assert [n for n, check in broadcasts if check][:12] == list(range(1, 13))


def test_a_torchvision_model_trains_on_gray_images_repeated_as_rgb(recipe, tmp_path, capsys):
    base = ["train", str(recipe), "--set", "optim.epochs=1", "--set", "model.name=resnet18",
            "--set", "model.widths=null", "--set", "model.blocks=null", "--set", "prune.method=smcp",
            "--set", "prune.target=0.6", "--set", "prune.allow_above_target=true",
            "--set", "prune.warmup=0", "--set", "prune.ramp=4", "--set", "prune.update_every=2"]
    assert cli_main([*base, "--out", str(tmp_path / "gray")]) == 2
    assert "--set data.channels=3" in capsys.readouterr().err
    out = tmp_path / "rgb"
    assert cli_main([*base, "--set", "data.channels=3", "--out", str(out)]) == 0
    model = torch.load(out / "model_pruned.pt", weights_only=False)
    assert model.fxprune_input_shape == (1, 3, 28, 28)
    assert model(torch.zeros(1, 3, 28, 28)).shape == (1, 10)
    # the recipe's own net follows the data: its stem reads 3 channels
    cfg = tiny_cfg(tmp_path / "own", "optim.epochs=1", "data.channels=3")
    train(cfg)
    own = torch.load(tmp_path / "own" / "model_dense.pt", weights_only=False)
    assert own.conv1.in_channels == 3 and own.fxprune_input_shape == (1, 3, 28, 28)


def test_channels_last_is_off_where_a_conv_would_meet_the_onednn_nhwc_fault(recipe, tmp_path,
                                                                           capsys, monkeypatch):
    # the tiny net's layer2 shortcut is a stride-2 1x1 conv with 4 input channels
    layouts = []
    real = train_mod._to_device
    monkeypatch.setattr(train_mod, "_to_device",
                        lambda x, device, cl: layouts.append(cl) or real(x, device, cl))
    out = tmp_path / "run"
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=1", "--set", "channels_last=true",
                     "--out", str(out)]) == 0
    assert "channels_last off: layer2.0.downsample.0 (strided 1x1 conv, 4 input channels)" \
        in capsys.readouterr().out
    assert layouts and not any(layouts)
    # the layout that trained, recorded (break158 F6: config.yaml alone said true)
    assert json.loads((out / "results.json").read_text())["channels_last"] is False
    wide = tmp_path / "wide"  # 16 input channels: NHWC stays on
    layouts.clear()
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=1", "--set", "channels_last=true",
                     "--set", "model.widths=[16,16,16]", "--out", str(wide)]) == 0
    assert "channels_last off" not in capsys.readouterr().out
    assert layouts and all(layouts)
    assert json.loads((wide / "results.json").read_text())["channels_last"] is True


def test_epoch_totals_add_up_the_logged_windows_and_the_rest(recipe, tmp_path):
    # the loop reads its device-side sums once per logged window, plus once for the steps after
    # the last window: the epoch's train loss/accuracy must still cover every batch
    for every, out in ((1, tmp_path / "every1"), (4, tmp_path / "every4")):
        assert cli_main(["train", str(recipe), "--set", "optim.epochs=1", "--set",
                         f"log.every_steps={every}", "--out", str(out)]) == 0
    steps = read_csv(tmp_path / "every1" / "steps.csv")
    assert len(steps) == 6  # 192 images / batch 32, equal batches
    for out in ("every1", "every4"):
        (epoch,) = read_csv(tmp_path / out / "metrics.csv")
        assert float(epoch["train_loss"]) == pytest.approx(
            sum(float(r["loss"]) for r in steps) / 6, rel=1e-9)
        assert float(epoch["train_acc"]) == pytest.approx(
            sum(float(r["acc"]) for r in steps) / 6, rel=1e-9)
    # every 4: a row of 4 steps and one of the epoch's last 2, which rebuild the epoch's mean
    four = read_csv(tmp_path / "every4" / "steps.csv")
    assert [int(r["step"]) for r in four] == [4, 6]
    assert float(epoch["train_loss"]) == pytest.approx(
        (4 * float(four[0]["loss"]) + 2 * float(four[1]["loss"])) / 6, rel=1e-9)


def test_existing_run_is_not_overwritten_and_resume_needs_checkpoint(recipe, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_main(["train", str(recipe), "--resume", "--out", str(out)]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=1", "--out", str(out)]) == 0
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=1", "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=1", "--set", "optim.lr=0.2",
                     "--resume", "--out", str(out)]) == 2
    assert "optim.lr" in capsys.readouterr().err
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=1", "--resume", "--overwrite",
                     "--out", str(out)]) == 2
    assert "pass one of them" in capsys.readouterr().err


def test_a_run_without_its_checkpoint_is_still_a_run(recipe, tmp_path, capsys):
    """break35 #2: only checkpoint.pt marked a run, so a plain rerun deleted an interrupted
    run's checkpoint.prev.pt, or a finished run's model and results once its checkpoints were
    deleted to save space."""
    out = tmp_path / "run"
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=1", "--out", str(out)]) == 0
    (out / "checkpoint.pt").rename(out / "checkpoint.prev.pt")  # interrupted between renames
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=1", "--out", str(out)]) == 2
    assert "holds an interrupted run (checkpoint.prev.pt" in capsys.readouterr().err
    (out / "checkpoint.prev.pt").unlink()  # a finished run, its checkpoints deleted
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=1", "--out", str(out)]) == 2
    assert "without its checkpoints, which cannot be resumed; pass --overwrite" in (
        capsys.readouterr().err)  # not "pass --resume", which refuses it (break38 #5)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == {
        k: v for k, v in before.items() if k != "checkpoint.prev.pt"}


def test_resume_refuses_epochs_below_the_checkpoint_and_another_format(recipe, tmp_path, capsys):
    """break35 #3: a resume to fewer epochs than the checkpoint's trained nothing and reported
    the smaller number; #4: a checkpoint of another format resumed, half understood."""
    out = tmp_path / "run"
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=2", "--out", str(out)]) == 0
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=1", "--resume",
                     "--out", str(out)]) == 2
    assert "the checkpoint is at epoch 2, past optim.epochs 1" in capsys.readouterr().err
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    ckpt["format"] = 99
    torch.save(ckpt, out / "checkpoint.pt")
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=3", "--resume",
                     "--out", str(out)]) == 2
    assert "is checkpoint format 99, and this fxprune reads format 2" in capsys.readouterr().err
    # deploy pointed at the checkpoint names the model files of the run (break35 #6)
    assert cli_main(["deploy", str(out / "checkpoint.pt"), "--out", str(tmp_path / "d")]) == 2
    assert "a fxprune train checkpoint: deploy the model_pruned.pt" in capsys.readouterr().err
    for given in (out, out / "x.onnx"):  # a folder is not "a file that does not exist"
        (out / "x.onnx").mkdir(exist_ok=True)
        assert cli_main(["deploy", str(given), "--out", str(tmp_path / "d")]) == 2
        assert "is a folder" in capsys.readouterr().err
    assert cli_main(["deploy", str(out), "--out", str(tmp_path / "d")]) == 2
    # break44 #6: the file named is one the run holds (this dense run: model_dense.pt)
    assert (f"is a folder, a fxprune train run: pass the model file in it "
            f"({out / 'model_dense.pt'}") in capsys.readouterr().err
    # break38 #8: the folder given as --compare is named so, with the dense model's file, and
    # a folder that is no run is not told to pick a file "in it"
    assert cli_main(["deploy", str(out / "model_dense.pt"), "--trust-model-file", "--compare",
                     str(out), "--out", str(tmp_path / "d")]) == 2
    assert f"--compare '{out}' is a folder, a fxprune train run: pass the model file in it " \
           f"({out / 'model_dense.pt'}" in capsys.readouterr().err
    (out / "model_dense.pt").rename(tmp_path / "dense.pt")  # as a pruning run holds none
    assert cli_main(["deploy", str(tmp_path / "dense.pt"), "--trust-model-file", "--compare",
                     str(out), "--out", str(tmp_path / "d")]) == 2
    assert "a fxprune train run that holds no model_dense.pt: pass a model_dense.pt (a dense " \
           "run's, prune.method none)" in capsys.readouterr().err
    assert cli_main(["deploy", str(out / "x.onnx"), "--out", str(tmp_path / "d")]) == 2
    assert "is a folder: pass a model file (a torch.save of the module" in capsys.readouterr().err


def test_a_resume_may_set_back_a_default_that_moved_since_the_run_started(recipe, tmp_path):
    """break35 #1: a run started when SMCP's hysteresis default was 0 resumed under 3 without
    a word, and --set prune.hysteresis=0 was refused as a change of the recipe."""
    out = tmp_path / "run"
    smcp = ["--set", "prune.method=smcp", "--set", "prune.target=0.6", "--set", "prune.channel_step=2",
            "--set", "prune.warmup=0", "--set", "prune.ramp=4", "--set", "prune.update_every=2"]
    assert cli_main(["train", str(recipe), *smcp, "--set", "optim.epochs=1", "--out", str(out)]) == 0
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert "hysteresis" not in ckpt["config"]["prune"]  # left to the default
    ckpt["pruner"]["run_settings"]["hysteresis"] = 0.0  # as an older default ran it
    torch.save(ckpt, out / "checkpoint.pt")
    with pytest.warns(RuntimeWarning, match=r"hysteresis 0\.0 -> 3\.0"):
        assert cli_main(["train", str(recipe), *smcp, "--set", "optim.epochs=2", "--resume",
                         "--out", str(out)]) == 0
    torch.save(ckpt, out / "checkpoint.pt")  # the run as it was, set back this time
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*resuming a state saved with another")
        assert cli_main(["train", str(recipe), *smcp, "--set", "optim.epochs=2", "--set",
                         "prune.hysteresis=0", "--resume", "--out", str(out)]) == 0
    # a defining setting left to its default may be written out as the run used it (break38 #4)
    torch.save(ckpt, out / "checkpoint.pt")
    assert cli_main(["train", str(recipe), *smcp, "--set", "optim.epochs=2", "--set",
                     "prune.hysteresis=0", "--set", "prune.accumulate=mean", "--resume",
                     "--out", str(out)]) == 0
    # and one the state does not record, as the method's default (break73 M1: refused)
    torch.save(ckpt, out / "checkpoint.pt")
    assert cli_main(["train", str(recipe), *smcp, "--set", "optim.epochs=2", "--set",
                     "prune.hysteresis=0", "--set", "prune.ramp_shape=exp", "--set",
                     "prune.momentum=0.9", "--resume", "--out", str(out)]) == 0
    # the reverse: started with a default written out, resumed with it left out (break76 #4)
    written = copy.deepcopy(ckpt)
    written["config"]["prune"]["momentum"] = 0.9
    torch.save(written, out / "checkpoint.pt")
    assert cli_main(["train", str(recipe), *smcp, "--set", "optim.epochs=2", "--set",
                     "prune.hysteresis=0", "--resume", "--out", str(out)]) == 0
    written["config"]["prune"]["momentum"] = 0.5  # not the default: a change
    torch.save(written, out / "checkpoint.pt")
    assert cli_main(["train", str(recipe), *smcp, "--set", "optim.epochs=2", "--set",
                     "prune.hysteresis=0", "--resume", "--out", str(out)]) == 2
    torch.save(ckpt, out / "checkpoint.pt")  # another value is still a change
    assert cli_main(["train", str(recipe), *smcp, "--set", "optim.epochs=2", "--set",
                     "prune.hysteresis=0", "--set", "prune.ramp_shape=linear", "--resume",
                     "--out", str(out)]) == 2


def test_a_missing_recipe_names_the_shipped_ones_from_where_the_user_is(tmp_path, monkeypatch):
    """break37 #9: the hint named configs/... relative to the source tree, from any folder."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="not found") as info:
        load_config(tmp_path / "nope.yaml")
    shipped = str(info.value).split("the shipped recipes are ")[1].split(" (SMCP)")[0]
    assert os.path.isfile(shipped), shipped


def test_a_null_target_is_the_methods_default():
    """break38 #6: `fxprune methods cucb` lists target = None, and prune.target: null was refused."""
    from fxprune.models import build_model
    from fxprune.train import make_pruner

    pm = fxprune.prepare(build_model("resnet_fmnist", widths=[8, 8, 8]), (torch.randn(1, 1, 28, 28),))
    cfg = resolve_config({**TINY, "prune": {"method": "cucb", "target": None, "mode": "budget",
                                             "channel_step": 4, "warmup": 1}})
    assert make_pruner(pm, cfg["prune"], steps_per_epoch=4, epochs=1).target == 0.5


def test_save_module_leaves_the_module_as_it_was(tmp_path):
    """break35 #5: the exported helper put the caller's model in eval mode and added an
    attribute to it."""
    from fxprune.run_io import save_module

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4)).train()
    save_module(model, tmp_path / "m.pt", (1, 1, 8, 8))
    assert model.training and not hasattr(model, "fxprune_input_shape")
    loaded = torch.load(tmp_path / "m.pt", weights_only=False)
    assert not loaded.training and loaded.fxprune_input_shape == (1, 1, 8, 8)


def test_resume_reads_a_checkpoint_written_before_a_key_existed(recipe, tmp_path):
    out = tmp_path / "run"
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=1", "--out", str(out)]) == 0
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    del ckpt["config"]["data"]["channels"]  # as saved before data.channels was added
    torch.save(ckpt, out / "checkpoint.pt")
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=2", "--resume",
                     "--out", str(out)]) == 0
    # a key the checkpoint lacks still counts as changed when set away from its default
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    del ckpt["config"]["data"]["channels"]
    torch.save(ckpt, out / "checkpoint.pt")
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=3", "--set", "data.channels=3",
                     "--resume", "--out", str(out)]) == 2


def test_resume_extends_epochs(recipe, tmp_path, capsys):
    """break62 #4: a finished cosine run trained on went from lr 0 back up to the longer
    schedule's lr without a word, and its results read like one run of that length."""
    out = tmp_path / "run"
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=1", "--out", str(out)]) == 0
    assert "lr_schedules" not in json.loads((out / "results.json").read_text())
    capsys.readouterr()
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=2", "--resume",
                     "--out", str(out)]) == 0
    assert [r["epoch"] for r in read_csv(out / "metrics.csv")] == ["1", "2"]
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 2
    results = json.loads((out / "results.json").read_text())
    assert results["epochs"] == 2
    assert results["lr_schedules"] == [{"from_epoch": 0, "epochs": 1},
                                       {"from_epoch": 1, "epochs": 2}]
    said = capsys.readouterr().out
    assert ("--resume with optim.epochs 1 -> 2: from epoch 2 the learning rate follows the "
            "2-epoch schedule (lr 0 -> 0.025); the epochs before ran on the 1-epoch one") in said
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=3", "--resume",
                     "--out", str(out)]) == 0  # and on: the history is kept
    assert json.loads((out / "results.json").read_text())["lr_schedules"][1:] == [
        {"from_epoch": 1, "epochs": 2}, {"from_epoch": 2, "epochs": 3}]
    (out / "metrics.csv").unlink()  # break170 F8: re-created from epoch 4 on, without a word
    with pytest.warns(RuntimeWarning, match=r"--resume: .*metrics.csv is gone \(the "
                                            r"checkpoint's 3 epoch\(s\) had written their rows "
                                            r"there\); it starts again at epoch 4"):
        assert cli_main(["train", str(recipe), "--set", "optim.epochs=4", "--resume",
                         "--out", str(out)]) == 0
    assert [r["epoch"] for r in read_csv(out / "metrics.csv")] == ["4"]
    (out / "steps.csv").unlink()  # review172 F11: steps.csv alike
    with pytest.warns(RuntimeWarning, match=r"--resume: \S*steps.csv is gone .* it starts again "
                                            r"at epoch 5"):
        assert cli_main(["train", str(recipe), "--set", "optim.epochs=5", "--resume",
                         "--out", str(out)]) == 0
    assert int(read_csv(out / "steps.csv")[0]["step"]) > 0


def test_a_resume_may_read_the_data_from_where_it_moved(recipe, tmp_path):
    """break62 #1: a run started with data.root could not resume once the data moved: the new
    root was refused as a config change, the old one as data not found."""
    out = tmp_path / "run"
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=1", "--set",
                     f"data.root={tmp_path / 'A'}", "--out", str(out)]) == 0
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=2", "--set",
                     f"data.root={tmp_path / 'B'}", "--resume", "--out", str(out)]) == 0
    assert [r["epoch"] for r in read_csv(out / "metrics.csv")] == ["1", "2"]


def test_a_resume_on_other_data_is_refused(recipe, tmp_path, capsys):
    """break65 #3: with data.root free to change, another split (the test files as the
    training set) trained the next epochs; the checkpoint records the splits' sizes and label
    hashes, and a resume compares them."""
    out = tmp_path / "run"
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=1", "--out", str(out)]) == 0
    capsys.readouterr()
    saved = torch.load(out / "checkpoint.pt", weights_only=True)
    assert saved["data"]["train"]["samples"] == 192 and saved["data"]["test"]["samples"] == 64
    # the run as if it had trained on other files (the synthetic data has no root to move)
    for edit, said in [(("samples", 160), "192 training / 64 test images against 160 training / "
                                          "64 test images"),
                       (("labels_sha256", "0" * 64), "192 training / 64 test images, as the "
                                                     "run's, other labels"),
                       # break85 F1: the same labels on other images resumed without a word
                       (("images_sha256", "0" * 64), "192 training / 64 test images, as the "
                                                     "run's, other images")]:
        ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
        ckpt["data"]["train"][edit[0]] = edit[1]
        torch.save(ckpt, out / "checkpoint.pt")
        rc = cli_main(["train", str(recipe), "--set", "optim.epochs=2", "--resume",
                       "--out", str(out)])
        err = capsys.readouterr().err
        assert rc == 2 and f"is not the run's ({said}); point data.root at the data" in err, err
        torch.save(saved, out / "checkpoint.pt")
    # a checkpoint written before the images' hash compares what it has
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    for split in ("train", "test"):
        del ckpt["data"][split]["images_sha256"]
    torch.save(ckpt, out / "checkpoint.pt")
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=2", "--resume",
                     "--out", str(out)]) == 0


def test_a_finished_run_resumed_trains_nothing_and_keeps_its_files(recipe, tmp_path, capsys):
    """break52: --resume of a finished run (a re-queued job) finalized and saved the model
    again, so the run's deploy report read as stale to fxprune plot; it rewrote results.json
    too. A run stopped after its last checkpoint but before its results still finishes."""
    out = tmp_path / "run"
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=1", "--out", str(out)]) == 0
    files = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir() if p.is_file()}
    capsys.readouterr()
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=1", "--resume",
                     "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert f"the run in {out} finished its 1 epochs; nothing to resume" in said
    assert "test accuracy" in said  # its results, as the run printed them
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns)
            for p in out.iterdir() if p.is_file()} == files
    moved = tmp_path / "moved"  # break57 #8: a moved run named the old folder's model
    shutil.copytree(out, moved)  # (times kept, as mv and cp -a keep them)
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=1", "--resume",
                     "--out", str(moved)]) == 0
    said = capsys.readouterr().out
    assert f"model: {moved / 'model_dense.pt'}" in said and str(out / "model") not in said
    # break57 #12: a copy that does not keep times (cp -r, scp -r) is still the run's: the marker
    # records each file's content too; a file changed at the same size is still refused
    copied = tmp_path / "copied"
    shutil.copytree(out, copied, copy_function=shutil.copyfile)
    assert (copied / "results.json").stat().st_mtime_ns != (out / "results.json").stat().st_mtime_ns
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=1", "--resume",
                     "--out", str(copied)]) == 0
    assert "nothing to resume" in capsys.readouterr().out
    text = (copied / "metrics.csv").read_text()
    (copied / "metrics.csv").write_text(text.replace("1", "2", 1))  # same size, other content
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=1", "--overwrite",
                     "--out", str(copied)]) == 2
    assert f"--overwrite: metrics.csv in {copied} was not written" in capsys.readouterr().err
    (out / "results.json").unlink()  # stopped before writing its results: finished now
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=1", "--resume",
                     "--out", str(out)]) == 0
    assert "nothing to resume" not in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text())["epochs"] == 1


def test_a_resume_at_another_step_count_per_epoch_is_said(recipe, tmp_path):
    """break52 #7: the README says a resume across process counts says so; resumed in 1 process
    from a 2-process run (16 steps per epoch, then 17) it said nothing, and the learning-rate
    schedule stretched (it ended at lr 2e-4, not 0). The checkpoint is edited here to hold the
    step count another process count gives, which a 1-CPU test cannot run."""
    out = tmp_path / "run"
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=1", "--out", str(out)]) == 0
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    per_epoch = ckpt["steps_per_epoch"]
    ckpt["step"], ckpt["world_size"] = ckpt["step"] // 2, 2  # as two processes would have run
    ckpt["steps_per_epoch"] = per_epoch // 2
    ckpt["process_counts"] = [{"from_epoch": 0, "world_size": 2}]
    torch.save(ckpt, out / "checkpoint.pt")
    with pytest.warns(RuntimeWarning, match=rf"--resume: the checkpoint ran {per_epoch // 2} "
                                            r"optimizer steps per epoch \(2 process\(es\)\) and "
                                            rf"this run runs {per_epoch} \(1\)"):
        results = train(tiny_cfg(out, "optim.epochs=2"), resume=True)
    # break70 #2: the throughput spans both counts; results.json said world_size 1 alone
    assert results["world_size"] == 1 and results["process_counts"] == [
        {"from_epoch": 0, "world_size": 2}, {"from_epoch": 1, "world_size": 1}]
    assert "on 2 then 1 processes" in format_results(results)
    # break54 #7: epoch 1 at the other count, epoch 2 at this one: the next resume at this
    # count is no change (the average over both epochs, a fraction, warned at every resume)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] / ckpt["epoch"] != per_epoch and ckpt["steps_per_epoch"] == per_epoch
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="--resume: the checkpoint ran")
        train(tiny_cfg(out, "optim.epochs=3"), resume=True)


def test_resume_after_crash_matches_uninterrupted_run(tmp_path, monkeypatch):
    straight = train(tiny_cfg(tmp_path / "straight"))
    reference = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)

    real_evaluate = train_mod.evaluate
    calls = {"n": 0}

    def crash_in_second_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash")
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train_mod, "evaluate", crash_in_second_epoch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(tiny_cfg(tmp_path / "crashed"))
    monkeypatch.setattr(train_mod, "evaluate", real_evaluate)
    assert torch.load(tmp_path / "crashed" / "checkpoint.pt", weights_only=True)["epoch"] == 1

    resumed = train(tiny_cfg(tmp_path / "crashed"), resume=True)
    final = torch.load(tmp_path / "crashed" / "checkpoint.pt", weights_only=True)
    for key, value in reference["model"].items():
        assert torch.equal(value, final["model"][key]), key
    assert resumed["accuracy"] == straight["accuracy"]
    straight_rows = read_csv(tmp_path / "straight" / "metrics.csv")
    resumed_rows = read_csv(tmp_path / "crashed" / "metrics.csv")
    assert [r["test_loss"] for r in resumed_rows] == [r["test_loss"] for r in straight_rows]
    # steps.csv rows of the crashed epoch were dropped, then written again once.
    assert [r["step"] for r in read_csv(tmp_path / "crashed" / "steps.csv")] == [
        "4", "6", "8", "12"]
    assert read_csv(tmp_path / "crashed" / "steps.csv") == read_csv(tmp_path / "straight" / "steps.csv")


# ----------------------------------------------------------------------------- pruning hooks

class RecordingPruner:
    """Stands in for a pruning method: checks when it is called and what is saved."""

    instances: list = []

    def __init__(self, pm, target, steps_per_epoch=None, **kwargs):
        # kept by another name: a method without a `target` may give its costs as a mapping
        self.pm, self.asked_target, self.kwargs = pm, target, kwargs
        self.steps_per_epoch = steps_per_epoch
        self.steps, self.loaded = 0, None
        self.at_forward = None
        pm.register_forward_pre_hook(self._snapshot)
        RecordingPruner.instances.append(self)

    def _params(self):
        return [p for p in self.pm.parameters() if p.requires_grad]

    def _snapshot(self, module, args):
        self.at_forward = [p.detach().clone() for p in self._params()]

    def step(self, loss=None):
        assert isinstance(loss, torch.Tensor) and loss.ndim == 0, "the trainer passes the loss"
        params = self._params()
        assert all(p.grad is not None for p in params), "step() must come after backward()"
        # Weights are still those of the forward pass: the optimizer has not stepped yet.
        assert all(torch.equal(p, q) for p, q in zip(params, self.at_forward)), \
            "step() must come before optimizer.step()"
        self.steps += 1

    def cost(self):
        return {"ratio": 1.0 - self.asked_target, "flops": 123.0}

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        self.loaded = state
        self.steps = state["steps"]


def test_pruning_hooks_called_in_order_and_saved(tmp_path, monkeypatch):
    RecordingPruner.instances = []
    prepared = []

    def fake_prepare(model, example_inputs, keep=()):
        # prepare traces on a single real image: costs describe batch-1 deployment
        # and the channel structure does not depend on the batch size.
        assert example_inputs[0].shape == (1, 1, 28, 28)
        gm = torch.fx.symbolic_trace(copy.deepcopy(model))
        prepared.append(gm)
        return gm

    monkeypatch.setattr(fxprune, "prepare", fake_prepare, raising=False)
    monkeypatch.setattr(fxprune, "SMCP", RecordingPruner, raising=False)
    monkeypatch.setattr(fxprune, "finalize", lambda pm: copy.deepcopy(pm), raising=False)

    out = tmp_path / "pruned"
    cfg = tiny_cfg(out, "optim.epochs=1", "prune.method=smcp", "prune.target=0.25",
                   "prune.extra=7")
    results = train(cfg)
    pruner = RecordingPruner.instances[-1]
    assert pruner.pm is prepared[-1] and pruner.kwargs == {"extra": 7}
    assert pruner.steps == 6 and pruner.steps_per_epoch == 6
    assert torch.load(out / "checkpoint.pt", weights_only=True)["pruner"] == {"steps": 6}
    rows = read_csv(out / "metrics.csv")
    assert float(rows[0]["cost.ratio"]) == 0.75 and float(rows[0]["cost.flops"]) == 123.0
    saved = torch.load(out / "model_pruned.pt", weights_only=False)
    assert saved.fxprune_input_shape == (1, 1, 28, 28)
    assert results["accuracy"] == results["accuracy_masked"]
    assert results["finalize_mismatched_samples"] == 0
    assert results["pruner_cost"] == {"cost.ratio": 0.75, "cost.flops": 123.0}

    resumed = train(resolve_config(cfg, ["optim.epochs=2"]), resume=True)
    pruner = RecordingPruner.instances[-1]
    assert pruner.loaded == {"steps": 6} and pruner.steps == 12
    assert resumed["epochs"] == 2


# ----------------------------------------------------------------------------- fractions of the run

FRACTION_SCHEDULE = {"method": "smcp", "target": 0.5, "channel_step": 1, "warmup_fraction": 0.1,
                     "ramp_fraction": 0.5, "cooldown_fraction": 0.3, "update_every_fraction": 0.05}


@pytest.mark.parametrize("epochs, steps, expected", [
    (10, 100, (100, 500, 700, 50)), (2, 100, (20, 100, 140, 10)),
    (1, 10, (1, 5, 7, 1))])  # update_every 0.5 steps: an interval is at least 1 step
def test_schedule_in_fractions_keeps_its_shape_at_any_length(epochs, steps, expected):
    from fxprune.train import make_pruner
    from fxprune.models import build_model

    pm = fxprune.prepare(build_model("resnet_fmnist", widths=[4, 8, 8]), (torch.randn(1, 1, 28, 28),))
    cfg = resolve_config({**TINY, "optim": {"epochs": epochs}, "prune": FRACTION_SCHEDULE})
    pruner = make_pruner(pm, cfg["prune"], steps_per_epoch=steps, epochs=epochs)
    s = pruner.schedule
    assert (s.warmup, s.ramp, s.freeze_after, s.update_every) == expected


def test_a_target_below_the_cheapest_model_is_not_blamed_on_the_runs_length():
    """break32 #7: the refusal said "a longer run ... also gives them room", which no run
    length changes; a schedule error keeps that hint."""
    from fxprune.train import make_pruner
    from fxprune.models import build_model

    pm = fxprune.prepare(build_model("resnet_fmnist", widths=[8, 8, 8]), (torch.randn(1, 1, 28, 28),))
    cfg = resolve_config({**TINY, "optim": {"epochs": 1},
                          "prune": {**FRACTION_SCHEDULE, "channel_step": 4, "target": 0.1}})
    with pytest.raises(ConfigError) as info:
        make_pruner(pm, cfg["prune"], steps_per_epoch=4, epochs=1)
    assert "below the narrowest model" in str(info.value)
    assert "longer run" not in str(info.value)


def test_fraction_and_epochs_of_one_key_is_a_config_error():
    with pytest.raises(ConfigError, match="prune.warmup_fraction and prune.warmup_epochs set the same"):
        resolve_config({**TINY, "prune": {**FRACTION_SCHEDULE, "warmup_epochs": 1}})
    with pytest.raises(ConfigError, match="prune.cooldown_fraction and prune.freeze_after set the same"):
        resolve_config({**TINY, "prune": {**FRACTION_SCHEDULE, "freeze_after": 10}})
    with pytest.raises(ConfigError, match="prune.ramp_fraction"):
        resolve_config({**TINY, "prune": {**FRACTION_SCHEDULE, "ramp_fraction": 1.5}})
    with pytest.raises(ConfigError, match="the pruning ramp ends at epoch"):  # 0.1 + 0.8 > 1 - 0.3
        resolve_config({**TINY, "prune": {**FRACTION_SCHEDULE, "ramp_fraction": 0.8}})


def test_an_override_in_another_unit_replaces_the_recipes_form():
    cfg = resolve_config({**TINY, "prune": FRACTION_SCHEDULE},
                         ["prune.update_every=7", "prune.cooldown_epochs=0.5"])
    assert cfg["prune"]["update_every"] == 7 and "update_every_fraction" not in cfg["prune"]
    assert cfg["prune"]["cooldown_epochs"] == 0.5 and "cooldown_fraction" not in cfg["prune"]
    assert cfg["prune"]["warmup_fraction"] == 0.1  # untouched forms stay
    # removing the replaced form as well, after it (break98 F1: "the recipe does not set it")
    both = resolve_config({**TINY, "prune": FRACTION_SCHEDULE},
                          ["prune.update_every=7", "~prune.update_every_fraction"])
    assert both["prune"] == resolve_config({**TINY, "prune": FRACTION_SCHEDULE},
                                           ["~prune.update_every_fraction", "prune.update_every=7"])["prune"]
    with pytest.raises(ConfigError, match="the recipe does not set 'prune.update_every_fractio'"):
        resolve_config({**TINY, "prune": FRACTION_SCHEDULE}, ["~prune.update_every_fractio"])
    # break193 F8: two overrides of one setting in two units kept the last without a word
    with pytest.raises(ConfigError, match=r"^prune.update_every_fraction gives the setting that "
                                          r"--set prune.update_every=7 gave, in another unit; "
                                          r"keep one of them$"):
        resolve_config({**TINY, "prune": FRACTION_SCHEDULE},
                       ["prune.update_every=7", "prune.update_every_fraction=0.2"])
    assert resolve_config({**TINY, "prune": FRACTION_SCHEDULE},  # one form twice: the last
                          ["prune.update_every=7", "prune.update_every=8"])["prune"]["update_every"] == 8
    # break196 F4: the mapping form replaces the recipe's other form as the dotted one does, and
    # meets another override's form as the dotted one does, in either order
    assert resolve_config({**TINY, "prune": FRACTION_SCHEDULE},
                          ["prune={update_every: 7}"])["prune"]["update_every"] == 7
    for overrides in (["prune={update_every_epochs: 0.5}", "prune.update_every=7"],
                      ["prune.update_every=7", "prune={update_every_epochs: 0.5}"]):
        with pytest.raises(ConfigError, match=r"gives the setting that --set prune.*gave, in "
                                              r"another unit; keep one of them$"):
            resolve_config({**TINY, "prune": FRACTION_SCHEDULE}, overrides)
    with pytest.raises(ConfigError, match=r"^prune.update_every and prune.update_every_epochs set "
                                          r"the same thing"):  # both in one mapping: its own
        resolve_config({**TINY, "prune": FRACTION_SCHEDULE},
                       ["prune={update_every: 7, update_every_epochs: 0.5}"])
    # review197 N1: nor is one whose whole section was removed
    assert resolve_config({**TINY, "prune": FRACTION_SCHEDULE},
                          ["prune.update_every=7", "~prune", "prune.method=smcp",
                           "prune.update_every_fraction=0.2"])["prune"]["update_every_fraction"] == 0.2
    # review195 R5: an override removed with ~ is no longer in effect
    assert resolve_config({**TINY, "prune": FRACTION_SCHEDULE},
                          ["prune.update_every=7", "~prune.update_every",
                           "prune.update_every_fraction=0.2"])["prune"]["update_every_fraction"] == 0.2


def test_resume_refuses_to_move_a_fractional_schedule(recipe, tmp_path, capsys):
    out = tmp_path / "run"
    sets = [f"prune.{k}={v}" for k, v in FRACTION_SCHEDULE.items()]
    args = ["train", str(recipe), *sum((["--set", s] for s in sets), []), "--out", str(out)]
    assert cli_main(args) == 0
    assert cli_main([*args, "--set", "optim.epochs=3", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "prune.cooldown_fraction is a fraction of the run" in err, err
    assert "another --out" in err
    assert cli_main([*args, "--resume"]) == 0  # the same length resumes (nothing left to do)
    # what the fractions became is printed and recorded (6 steps per epoch x 2 epochs)
    steps = json.loads((out / "results.json").read_text())["schedule_steps"]
    assert steps == {"warmup": 1, "ramp": 6, "update_every": 1, "freeze_after": 8}


def test_resume_refuses_to_move_a_cool_down_counted_from_the_end(recipe, tmp_path, capsys):
    """review126 #5: cooldown_epochs is counted back from optim.epochs, so a resume with
    another length moved the frozen window under the run, with a warning only."""
    out = tmp_path / "run"
    sets = ["prune.method=smcp", "prune.target=0.5", "prune.channel_step=1", "prune.warmup=1",
            "prune.ramp=4", "prune.update_every=1", "prune.cooldown_epochs=1"]
    args = ["train", str(recipe), *sum((["--set", s] for s in sets), []), "--out", str(out)]
    assert cli_main(args) == 0  # 2 epochs
    assert cli_main([*args, "--set", "optim.epochs=3", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "prune.cooldown_epochs counts from the end of the run" in err, err


@pytest.mark.parametrize("overrides, message", [
    (["prune.method=cucb", "prune.warmup=2", "prune.explore=100", "prune.channel_step=4"],
     r"cucb makes its final selection at optimizer step 100 \(prune.explore\)"),
    (["prune.method=smcp", "prune.warmup=2", "prune.ramp=500", "prune.update_every=2",
      "prune.channel_step=4"], r"the pruning schedule reaches its target at step 502")])
def test_refusals_that_need_no_timings_come_before_the_latency_table(
        tmp_path, monkeypatch, overrides, message):
    """break199 F1: a CUCB explore past the run, or a ramp past it, was refused only after the
    whole latency table was timed (an hour on resnet18's recipe); the method is tried on a copy
    priced by FLOPs first, and a target below that copy's floor is left to the table."""
    import fxprune.train as train_module

    def not_yet(*args, **kwargs):
        raise AssertionError("timed before the refusal")

    monkeypatch.setattr(train_module, "latency_cost", not_yet)
    cfg = tiny_cfg(tmp_path / "run", "prune.cost=latency", "prune.target=0.5",
                   "model.widths=[8, 8, 8]", *overrides)
    with pytest.raises(ConfigError, match=message):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_a_latency_table_is_timed_at_the_methods_own_channel_step(recipe, tmp_path, monkeypatch):
    """review126 #2: a recipe leaving channel_step to SMCP (8) timed its table at step 1."""
    import inspect

    import fxprune.train as train_module

    class Timed(Exception):
        pass

    def spy(net, cost, channel_step, progress=True, cache=None):
        raise Timed(channel_step)

    monkeypatch.setattr(train_module, "latency_cost", spy)
    cfg = tiny_cfg(tmp_path / "run", "prune.method=smcp", "prune.target=0.5", "prune.cost=latency",
                   "prune.warmup=1", "prune.ramp=2", "prune.update_every=1",
                   "model.widths=[16, 16, 16]")  # (wider than step 8: see below)
    with pytest.raises(Timed) as e:
        train(cfg)
    assert e.value.args[0] == inspect.signature(fxprune.SMCP).parameters["channel_step"].default == 8
    # break151 F1: the floor of a table timed by this run moves at the next: a margin
    from fxprune.cost import FlopsCost

    monkeypatch.setattr(train_module, "latency_cost", lambda *a, **k: FlopsCost())
    cfg = tiny_cfg(tmp_path / "run1", "prune.method=smcp", "prune.target=0.01",
                   "prune.cost=latency", "prune.warmup=1", "prune.ramp=2",
                   "prune.update_every=1", "model.widths=[16, 16, 16]")
    with pytest.raises(ConfigError, match=r"^prune \(smcp\): target 0.01 of dense is below the "
                                          r"narrowest model .*raise the target to at least .* "
                                          r"\(that floor comes from latencies timed just now, "
                                          r".*: leave a margin\)$"):
        train(cfg)
    # break151 F2: a channel_step no group can be pruned at was refused after the timing
    cfg = tiny_cfg(tmp_path / "run2", "prune.method=smcp", "prune.target=0.5",
                   "prune.cost=latency", "prune.channel_step=512", "prune.warmup=1",
                   "prune.ramp=2", "prune.update_every=1")
    with pytest.raises(ConfigError, match=r"^prune \(smcp\): channel_step=512 is at least as "
                                          r"wide as every prunable group .*; lower channel_step$"):
        train(cfg)


def test_results_table_formats_the_pruners_cost():
    from fxprune.run_io import format_results

    results = {"dense_params": 1000, "params": 500, "params_ratio": 0.5, "dense_flops": 10_000,
               "flops": 4_000, "flops_ratio": 0.4, "accuracy": 0.9, "accuracy_masked": 0.9,
               "finalize_mismatched_samples": 0, "method": "smcp", "epochs": 1,
               "train_time_s": 1.0, "model": "m.pt",
               "pruner_cost": {"cost.fraction": 0.4987654321, "cost.kept": 1234, "cost.kind": "flops"}}
    table = format_results(results)
    assert "0.4988" in table and "0.4987654321" not in table
    assert "1,234" in table and "flops" in table


@pytest.mark.parametrize("rank, shown", [("0", True), ("1", False)])
def test_a_config_error_is_reported_once_under_torchrun(recipe, tmp_path, capsys, monkeypatch,
                                                        rank, shown):
    monkeypatch.setenv("RANK", rank)
    assert cli_main(["train", str(recipe), "--set", "optim.lr=-1", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert ("optim.lr" in err) == shown, err
    if not shown:
        assert err == ""


def test_only_step_counts_have_epoch_and_fraction_forms():
    """rho, ratio, seed, channel_step are not step counts: no NAME_fraction for them (a
    ratio_fraction of 0.7 became ratio 1 and pruned nothing)."""
    from fxprune.recipe_config import prune_keys

    for method, fake in (("ccp", "ratio"), ("cucb", "rho"), ("cucb", "seed"), ("smcp", "channel_step"),
                         ("smcp", "resolution")):
        keys = prune_keys(method)
        assert f"{fake}_fraction" not in keys and f"{fake}_epochs" not in keys, (method, fake)
        with pytest.raises(ConfigError, match=f"unknown key prune.{fake}_fraction"):
            resolve_config({**TINY, "prune": {"method": method, f"{fake}_fraction": 0.5}})
    assert {"collect_fraction", "prune_at_fraction", "round_every_fraction"} <= set(prune_keys("ccp"))
    assert {"warmup_fraction", "explore_fraction"} <= set(prune_keys("cucb"))


def test_fraction_schedule_errors_name_what_was_written():
    with pytest.raises(ConfigError, match=r"prune.update_every_fraction takes a number > 0"):
        resolve_config({**TINY, "prune": {**FRACTION_SCHEDULE, "update_every_fraction": 0}})
    with pytest.raises(ConfigError) as err:
        resolve_config({**TINY, "prune": {**FRACTION_SCHEDULE, "warmup_fraction": 0.6}})
    msg = str(err.value)
    assert "prune.warmup_fraction (0.6 of the run) + prune.ramp_fraction (0.5 of the run)" in msg
    assert "raise optim.epochs" not in msg  # it would scale the fractions too
    with pytest.raises(ConfigError, match=r"prune.prune_at_fraction \(1 of the run\) is at or after "
                                          r"the end of the run"):
        resolve_config({**TINY, "prune": {"method": "ccp", "prune_at_fraction": 1.0}})
    with pytest.raises(ConfigError, match=r"prune.prune_at_epochs \(3\) is at or after"):
        resolve_config({**TINY, "prune": {"method": "taylor", "prune_at_epochs": 3}})


def test_the_command_line_shows_fxprune_s_warnings_without_a_library_line():
    """break26 nit: CUCB's ratio-mode warning in a recipe was attributed to the method
    registry's line; other libraries' warnings keep their location."""
    import warnings

    import fxprune.methods
    from fxprune.cli import _plain_warnings

    inside = fxprune.methods.__file__
    with _plain_warnings():
        ours = warnings.formatwarning("CUCB: the widest model", RuntimeWarning, inside, 12)
        theirs = warnings.formatwarning("deprecated", UserWarning, "/elsewhere/lib.py", 3)
    assert ours == "warning: CUCB: the widest model\n"
    assert theirs.startswith("/elsewhere/lib.py:3: UserWarning: deprecated")
    assert warnings.formatwarning("x", UserWarning, inside, 1).startswith(inside)  # restored


def test_tensorboard_asked_for_but_missing_is_a_config_error(monkeypatch):
    """break29 #8: refused only after the data loaded and the model was prepared."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ConfigError, match="log.tensorboard is true but tensorboard is not installed"):
        load_config("configs/fashion_mnist_quick.yaml", ["log.tensorboard=true"])


@pytest.mark.parametrize("recipe", ["smcp", "quick", "ccp", "cucb"])
def test_sync_batchnorm_swaps_in_before_each_recipes_method(recipe):
    """break31 #3/#4: with train.sync_bn the trainer swapped the norms after building the
    method: SMCP's wrapped norms (even with bn_rescale off) refused the swap, and CCP's
    collect_bn switched norms that no longer ran. Now the swap comes first, as in train()."""
    from fxprune import distributed as fxdist
    from fxprune.models import build_model
    from fxprune.train import make_pruner

    cfg = load_config(f"configs/fashion_mnist_{recipe}.yaml", ["optim.epochs=2"])
    net = fxprune.prepare(build_model("resnet_fmnist", widths=[8, 16, 16]),
                          (torch.randn(1, 1, 28, 28),))
    undo = fxdist.use_sync_batchnorm(net)
    prune_cfg = {k: v for k, v in cfg["prune"].items() if k != "execution"}
    if recipe == "cucb":
        prune_cfg["execution"] = "masked"
    pruner = make_pruner(net, prune_cfg, steps_per_epoch=10, epochs=2)
    norms = {type(m).__name__ for m in net.modules()
             if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
    assert norms == {"SyncBatchNorm"}
    bns = getattr(pruner, "_bns", [])  # CCP's collect_bn, SMCP's re-estimation: the ones that run
    for bn in (bns.values() if isinstance(bns, dict) else bns):
        assert isinstance(bn, torch.nn.SyncBatchNorm)
    net.train()
    net(torch.randn(4, 1, 28, 28)).sum().backward()  # one process: SyncBatchNorm runs as BN
    undo()
    assert {type(m).__name__ for m in net.modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)} == {"BatchNorm2d"}


def test_rank_0s_error_is_not_printed_again_by_the_others(monkeypatch, capsys, tmp_path):
    """break31 #10: under torchrun rank 1 printed rank 0's --resume error as its own."""
    import argparse

    def fails(cfg, **_):
        exc = FileNotFoundError("--resume: no checkpoint at X")
        exc.fxprune_from_rank0 = True  # as _on_main raises it on the other ranks
        raise exc

    monkeypatch.setattr(train_mod, "train", fails)
    monkeypatch.setenv("RANK", "1")
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(TINY))
    args = argparse.Namespace(overrides=[], out=str(tmp_path / "o"), config=str(path),
                              resume=True, overwrite=False)
    assert train_mod.run(args) == 2
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "0")
    assert train_mod.run(args) == 2
    assert "no checkpoint at X" in capsys.readouterr().err


def test_under_torchrun_rank_0_alone_warns_and_a_lost_peer_is_one_line(monkeypatch, capsys, tmp_path):
    """break133 F4: every rank printed every warning (the README says rank 0 alone prints);
    F6: a rank whose peer failed printed a 30-line gloo traceback under rank 0's error."""
    import argparse

    def warns(cfg, **_):
        warnings.warn("a warning of the run", RuntimeWarning)

    def loses_its_peer(cfg, *args, **kwargs):
        raise RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection "
                           "closed by peer [127.0.0.1]:29500\nmore lines")

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(TINY))
    args = argparse.Namespace(overrides=[], out=str(tmp_path / "o"), config=str(path),
                              resume=False, overwrite=False)
    monkeypatch.setattr(train_mod, "train", warns)
    for rank, said in (("1", False), ("0", True)):
        monkeypatch.setenv("RANK", rank)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert train_mod.run(args) == 0
        assert any("a warning of the run" in str(w.message) for w in caught) == said, rank
    monkeypatch.setenv("RANK", "1")  # not shown, but -W error stops every rank alike (review137 #4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeWarning, match="a warning of the run"):
            train_mod.run(args)
    # the real train() around a run that loses its peer: the process group it joined is
    # destroyed before run() reads the error (review138 F1: the one line never came)
    monkeypatch.undo()
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(train_mod, "_train", loses_its_peer)
    monkeypatch.setattr(train_mod, "_pick_device", lambda *a, **k: torch.device("cpu"))
    store = tmp_path / "store"

    def joins(device):
        torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
        return True

    for group, one_line in ((False, False), (True, True)):  # a failed rendezvous keeps its traceback
        monkeypatch.setattr(train_mod.fxdist, "init_from_env", joins if group else (lambda device: False))
        if one_line:
            assert train_mod.run(args) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and "rank 1): stopped: another process of the job failed" in err, err
        else:
            with pytest.raises(RuntimeError, match="Connection closed by peer"):
                train_mod.run(args)
        assert not torch.distributed.is_initialized()
    # break160 F4: rank 0 losing its peer printed gloo's 28-line traceback
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(train_mod.fxdist, "init_from_env", joins)
    assert train_mod.run(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fxprune train: stopped: another process of the job "
                                                    "failed or was stopped and left a collective"), err


def test_an_out_that_cannot_hold_the_run_is_named_before_any_work(recipe, tmp_path, capsys,
                                                                  monkeypatch):
    """break62 #12: --out "" trained into the recipe's folder; #14: a path under a file gave a
    bare "[Errno 20] Not a directory" that did not name --out."""
    monkeypatch.chdir(tmp_path)  # where a relative recipe folder would land
    (tmp_path / "a_file").write_text("mine")
    for out, said in [("", "out is empty: give the run's folder (--out DIR, or out: in the "
                           "recipe)"),
                      (str(tmp_path / "a_file" / "run"), f"--out {tmp_path / 'a_file' / 'run'}: "
                       f"{tmp_path / 'a_file'} is a file, not a folder; choose another --out")]:
        assert cli_main(["train", str(recipe), "--set", "optim.epochs=1", "--out", out]) == 2
        assert f"fxprune train: error: {said}" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "tiny.yaml"]


def test_a_finished_run_in_a_folder_that_cannot_be_written_still_resumes_to_its_results(
        recipe, tmp_path, capsys, monkeypatch):
    """break65 #5: the --out writability check refused --resume of a finished run on a
    read-only copy, which writes nothing (it prints the results); a run that would train on
    is refused, before any epoch. (The folder is declared unwritable: root writes anywhere.)"""
    import fxprune.run_io
    import fxprune.train as train_module

    out = tmp_path / "run"
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=1", "--out", str(out)]) == 0
    capsys.readouterr()
    read_only = lambda folder: f"{folder} refuses a new file (Read-only file system)"  # noqa: E731
    monkeypatch.setattr(fxprune.run_io, "unwritable_folder", read_only)
    monkeypatch.setattr(train_module, "unwritable_folder", read_only)
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=1", "--resume",
                     "--out", str(out)]) == 0
    assert "nothing to resume" in capsys.readouterr().out
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=2", "--resume",
                     "--out", str(out)]) == 2
    assert (f"--out {out}: {out} refuses a new file (Read-only file system); copy the run to a "
            "folder you can write and --resume there") in capsys.readouterr().err
    assert [r["epoch"] for r in read_csv(out / "metrics.csv")] == ["1"]


def test_a_read_only_run_file_is_refused_before_any_epoch(recipe, tmp_path, capsys, monkeypatch):
    """review165 F3: a read-only results.json (atomic_write will not replace it) failed the
    run at its end, after the training, its model beside the old results. Refused first now,
    for a start over it and a resume that trains on. (Declared read-only: root writes anywhere.)"""
    import os

    out = tmp_path / "run"
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=1", "--out", str(out)]) == 0
    capsys.readouterr()
    results = str(out / "results.json")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: (
        False if os.fspath(p) == results and mode & os.W_OK else real_access(p, mode, **kw)))
    before = (out / "metrics.csv").read_text()
    for extra in (["--overwrite"], ["--set", "optim.epochs=2", "--resume"]):
        assert cli_main(["train", str(recipe), *extra, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"{results} is read-only, and the run writes a file of its own there; make it a " \
               "writable file" in err, err
        assert (out / "metrics.csv").read_text() == before  # no epoch ran


def test_finalize_mismatched_samples_counts_predictions_that_differ_not_the_accuracy_change():
    """break73 F1: "N samples differ" was |delta correct| x N: a finalize that flipped 147
    predictions said 9 (right-to-wrong and wrong-to-right flips cancel; wrong-to-other-wrong
    ones count nothing). It counts the samples whose predicted class changed."""
    from fxprune.data import make_loaders

    _, test = make_loaders({"name": "synthetic", "synthetic_train": 8, "synthetic_test": 64,
                            "batch_size": 8, "test_batch_size": 16}, seed=0)
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))
    b = torch.nn.Sequential(a, torch.nn.Flatten())  # the same predictions...
    flipped = copy.deepcopy(a)
    with torch.no_grad():  # ...and another model: its classes' rows rolled by one
        flipped[1].weight.copy_(a[1].weight.roll(1, 0)), flipped[1].bias.copy_(a[1].bias.roll(1, 0))
    cpu = torch.device("cpu")
    assert train_mod.prediction_differences(a, b, test, cpu) == 0
    expected = sum(int((a(x).argmax(1) != flipped(x).argmax(1)).sum()) for x, _ in test)
    assert expected > 32 and train_mod.prediction_differences(a, flipped, test, cpu) == expected
    _, acc_a = train_mod.evaluate(a, test, cpu)
    _, acc_f = train_mod.evaluate(flipped, test, cpu)
    assert round(abs(acc_a - acc_f) * 64) < expected  # what the old count said


def test_tensorboard_events_of_a_replaced_run_go_and_a_resume_purges_later_steps(tmp_path,
                                                                                  monkeypatch):
    """break73 F2: TensorBoard reads every event file of its folder as one run: --overwrite kept
    the replaced run's curves beside the new ones, and --resume the steps the interrupted run
    logged after its checkpoint (steps.csv drops those rows). A fresh start removes the old
    run's event files; a resume purges from the step after its checkpoint. break148 F10: the
    fresh start removed every event file there, a user's too: it removes those the marker
    names as the run's writers' now, and the check before any work refuses a user's."""
    from fxprune import run_io
    from fxprune.run_io import check_out_folder

    made = []

    class Writer:  # creates its event file, as SummaryWriter does
        scalars = []

        def __init__(self, out, purge_step):
            made.append(purge_step)
            (out / "tensorboard").mkdir(exist_ok=True)
            (out / "tensorboard" / f"events.out.tfevents.{len(made)}.host").write_text("run")

        def add_scalar(self, tag, value, step):
            self.scalars.append((tag, step))

        def close(self):
            pass

    monkeypatch.setattr(run_io, "tensorboard_writer", lambda setting, out: Writer)
    out = tmp_path / "run"
    board = out / "tensorboard"
    run_io.RunLogs(out, True).open({"seed": 0}, None)
    (board / "events.out.tfevents.9.mine").write_text("the user's")
    (board / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"--overwrite: .*events.out.tfevents.9.mine was not "
                                              r"written by fxprune.* --set log.tensorboard=false"):
        check_out_folder(out, resume=False, overwrite=True, tensorboard=True)
    check_out_folder(out, resume=False, overwrite=True, tensorboard=False)  # not logged: kept
    run_io.RunLogs(out, True).open({"seed": 1}, None, overwrite=True)
    assert sorted(p.name for p in board.iterdir()) == [
        "events.out.tfevents.2.host", "events.out.tfevents.9.mine", "notes.txt"]
    (board / "events.out.tfevents.9.mine").unlink()
    check_out_folder(out, resume=False, overwrite=True, tensorboard=True)
    logs = run_io.RunLogs(out, True)
    logs.open({"seed": 1}, (1, 40))
    assert made == [None, None, 41]
    assert [p.name for p in run_io._event_files(out)[0]] == [
        "events.out.tfevents.2.host", "events.out.tfevents.3.host"]
    # epoch rows at their optimizer step, so the purge reaches an epoch logged after the
    # checkpoint too (break76: it showed twice)
    logs.epoch_row({"epoch": 2, "step": 80, "lr": 0.1})
    assert Writer.scalars == [("epoch/lr", 80)]
    # a run of an earlier fxprune, whose marker named no event file: they are all its own
    marker = out / ".fxprune-run"
    head, _, record = marker.read_text().partition("\n")
    marker.write_text(head + "\n" + json.dumps({"written": json.loads(record)["written"]}) + "\n")
    check_out_folder(out, resume=False, overwrite=True, tensorboard=True)
    run_io.RunLogs(out, True).open({"seed": 2}, None, overwrite=True)
    assert sorted(p.name for p in board.iterdir()) == ["events.out.tfevents.4.host", "notes.txt"]


@pytest.mark.parametrize("events", [None, 3, "events.out.tfevents.1.host"])
def test_a_marker_whose_event_record_is_damaged_names_no_event_file_as_the_run_s(tmp_path, events):
    """review153 F4: "events": null in the marker was a TypeError traceback."""
    from fxprune.run_io import RUN_MARKER, _MARKER_TEXT, check_out_folder

    out = tmp_path / "run"
    (out / "tensorboard").mkdir(parents=True)
    (out / "tensorboard" / "events.out.tfevents.1.host").write_text("x")
    (out / RUN_MARKER).write_text(_MARKER_TEXT + json.dumps({"written": {}, "events": events}))
    with pytest.raises(FileExistsError, match="events.out.tfevents.1.host was not written by "
                                              "fxprune"):
        check_out_folder(out, resume=False, overwrite=True, tensorboard=True)


def test_a_file_named_tensorboard_is_refused_before_any_work_when_the_run_logs_there(tmp_path):
    """break73 F3: --overwrite removed the old run's files, then SummaryWriter failed with a
    bare "[Errno 17] File exists: 'OUT/tensorboard'"."""
    from fxprune.run_io import check_out_folder

    out = tmp_path / "run"
    out.mkdir()
    (out / ".fxprune-run").write_text("{}")
    (out / "tensorboard").write_text("my notes")
    with pytest.raises(FileExistsError, match="holds tensorboard, which is not a folder; fxprune "
                                              "writes TensorBoard logs there: move it, or --set "
                                              "log.tensorboard=false"):
        check_out_folder(out, resume=False, overwrite=True, tensorboard=True)
    check_out_folder(out, resume=False, overwrite=True, tensorboard=False)  # not written: no matter


def test_a_recipe_is_read_from_a_pipe(tmp_path):
    """break73 M3: `fxprune train <(sed ... recipe.yaml)` said "config file /dev/fd/63 not
    found": a pipe is not a regular file, and it was refused as missing."""
    import threading
    from pathlib import Path

    recipe = Path(__file__).resolve().parents[1] / "configs" / "fashion_mnist_quick.yaml"
    fifo = tmp_path / "recipe.yaml"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text(
        recipe.read_text().replace("epochs: 3", "epochs: 1")), daemon=True)
    writer.start()
    cfg = load_config(fifo)
    writer.join()
    assert cfg["optim"]["epochs"] == 1
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_a_pipe_closed_in_this_process_is_named_as_such(monkeypatch):
    """break76 PIPE-1: under torchrun, `<(sed ...)` is /dev/fd/63 in the shell's child only;
    each process said "not found" with the list of shipped recipes."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"^config file /dev/fd/987 is a shell pipe this "
                                          r"process cannot open \(torchrun's processes do not "
                                          r"inherit it\); write the recipe to a file"):
        load_config("/dev/fd/987")
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(ConfigError, match=r"cannot open; write the recipe to a file"):
        load_config("/proc/self/fd/987")


def test_a_global_batch_below_the_process_count_is_a_config_error(tmp_path, monkeypatch, capsys):
    """break73 M4: the loader's ValueError, raised on every rank after the data was read, was
    printed by each process; a ConfigError is said by rank 0 alone, before any work."""
    monkeypatch.setattr(train_mod.fxdist, "world_size", lambda: 4)
    cfg = tiny_cfg(tmp_path / "run", "data.batch_size=2")
    with pytest.raises(ConfigError, match=r"^data.batch_size 2 is smaller than the 4 processes"):
        train(cfg)
    assert not (tmp_path / "run").exists()
    import argparse

    parser = argparse.ArgumentParser()
    train_mod.add_arguments(parser)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(TINY))
    args = parser.parse_args([str(tmp_path / "r.yaml"), "--set", "data.batch_size=2", "--out",
                              str(tmp_path / "run")])
    monkeypatch.setenv("RANK", "1")  # another rank of the job: silent, rank 0 says it
    assert train_mod.run(args) == 2 and capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "0")
    assert train_mod.run(args) == 2
    assert "error: data.batch_size 2 is smaller than the 4" in capsys.readouterr().err


def test_evaluate_reads_its_sums_from_the_device_once_not_per_batch(monkeypatch):
    # review140 F2: two .item() per batch, each a device sync on a GPU
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    loader = [(torch.randn(4, 3, 2, 2), torch.randint(0, 3, (4,))) for _ in range(5)]
    with torch.no_grad():
        logits = [model(x) for x, _ in loader]
    want_loss = sum(torch.nn.functional.cross_entropy(l, y, reduction="sum").item()
                    for l, (_, y) in zip(logits, loader)) / 20
    want_acc = sum(int((l.argmax(1) == y).sum()) for l, (_, y) in zip(logits, loader)) / 20
    reads = []
    for name in ("item", "__float__", "__int__", "tolist"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name,
                            lambda t, *a, _real=real, _name=name: reads.append(_name) or _real(t, *a))
    loss, acc = train_mod.evaluate(model, loader, torch.device("cpu"))
    assert len(reads) <= 2, reads
    assert loss == pytest.approx(want_loss, rel=1e-12) and acc == want_acc


@pytest.mark.parametrize("method", ["numpy_at_start", "numpy_later"])
def test_a_method_state_that_resume_could_not_read_is_refused_before_it_is_saved(
        recipe, tmp_path, capsys, monkeypatch, method):
    """break176 F1: a plug-in whose state_dict held numpy data trained and saved checkpoints,
    and --resume then called the file another program's."""
    from fxprune.methods.registration import register_method, registry

    monkeypatch.setattr("fxprune.methods.registration.registry", dict(registry))
    from helpers import NumpyStateAtStart, NumpyStateLater

    register_method(method, NumpyStateAtStart if method == "numpy_at_start" else NumpyStateLater)
    out = tmp_path / "r"
    assert cli_main(["train", str(recipe), "--set", f"prune.method={method}", "--set",
                     "prune.channel_step=1", "--set", "prune.warmup=2", "--set", "prune.ramp=4",
                     "--set", "prune.update_every=2", "--out",
                     str(out)]) == 2
    err = capsys.readouterr().err
    assert re.search(rf"^fxprune train: error: prune.method {method}: its state_dict\(\) holds "
                     r"objects that torch.load\(weights_only=True\) refuses \(.*numpy.*\), so "
                     r"--resume could not read the run's checkpoint; a method's state holds "
                     r"tensors and plain Python data", err), err
    assert not (out / "checkpoint.pt").exists()


def test_a_method_without_a_schedule_ending_above_its_target_is_not_told_to_lengthen_it(
        recipe, tmp_path, capsys, monkeypatch):
    """break176 F5: a plug-in with no schedule was told to lengthen it."""
    from fxprune.methods.registration import register_method, registry
    from helpers import NoScheduleMethod

    monkeypatch.setattr("fxprune.methods.registration.registry", dict(registry))
    register_method("no_schedule", NoScheduleMethod)
    assert cli_main(["train", str(recipe), "--set", "prune.method=no_schedule", "--out",
                     str(tmp_path / "r")]) == 3
    err = capsys.readouterr().err
    assert ("prune.method no_schedule declares no schedule a longer run would lengthen (a "
            "`schedule` or prune_steps()): its final masks are what its own settings chose; "
            "change them, or set prune.allow_above_target=true") in err, err
    assert "lengthen the schedule" not in err


def test_results_name_the_cost_model_the_pruner_cost_is_in(recipe, tmp_path, capsys):
    """break176 F7: pruner_cost and target were fractions of a cost named nowhere (a method's
    own cost model beside the FLOPs row of the table)."""
    out = tmp_path / "r"
    assert cli_main(["train", str(recipe), "--set", "prune.method=smcp", "--set",
                     "prune.cost=params", "--set", "prune.channel_step=1", "--set", "prune.warmup=2",
                     "--set", "prune.ramp=4", "--set", "prune.update_every=2", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["cost_model"] == "params"
    assert re.search(r"pruner cost +\d\.\d+   \(params of dense\)", capsys.readouterr().out)


def test_a_config_error_names_the_override_that_made_it_not_the_file(tmp_path):
    """break187: `--set prune.target=0` on a recipe holding target 0.5 was refused as
    "RECIPE.yaml: prune.target takes ... got 0", sending the user to a file that was right."""
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"data": {"name": "synthetic"},
                                    "prune": {"method": "smcp", "target": 0.5}}))
    with pytest.raises(ConfigError, match=r"^--set prune.target=0: prune.target takes a number"):
        load_config(path, ["optim.epochs=2", "prune.target=0"])
    with pytest.raises(ConfigError, match=r"^--set prune.seed=-1: prune.seed takes an integer >= 0"):
        load_config(path, ["prune.method=cucb", "prune.seed=-1"])  # (break190 F13)
    path.write_text(yaml.safe_dump({"data": {"name": "synthetic"},
                                    "prune": {"method": "smcp", "target": 7}}))
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: prune.target takes"):
        load_config(path, ["optim.epochs=2"])
    # the override that caused it, though a later one changes the numbers its message quotes
    # (break190 F7: blamed on --set optim.epochs=1, which runs alone)
    path.write_text(yaml.safe_dump({"data": {"name": "synthetic"}, "optim": {"epochs": 3},
                                    "prune": {"method": "smcp", "target": 0.5,
                                              "warmup_fraction": 0.1, "ramp_fraction": 0.5}}))
    with pytest.raises(ConfigError, match=r"^--set prune.cooldown_fraction=0.5: "):
        load_config(path, ["prune.cooldown_fraction=0.5", "optim.epochs=1"])
    load_config(path, ["optim.epochs=1"])
    # a conflict with the file's value: the override that made it (the message shows both)
    path.write_text(yaml.safe_dump({"data": {"name": "synthetic"}, "model": {"widths": [8, 8]}}))
    with pytest.raises(ConfigError, match=r"^--set model.blocks=\[1\]: model.widths and "
                                          r"model.blocks .*; got \[8, 8\] and \[1\]"):
        load_config(path, ["model.blocks=[1]", "optim.epochs=2"])


@pytest.mark.parametrize("given, meant", [("model.target", "prune.target"),
                                          ("optim.warmup", "optim.warmup_epochs"),
                                          ("data.channel_step", "prune.channel_step"),
                                          ("lr", "optim.lr"), ("optim.epoch", "optim.epochs"),
                                          ("optim.seed", "seed"), ("model.seed", "seed"),
                                          ("prune.lr", "optim.lr"),
                                          ("prune.batch_size", "data.batch_size")])
def test_a_misplaced_key_is_pointed_to_where_it_belongs(given, meant):
    """break187: `--set model.target=0.5` was asked "did you mean model.name?"; a method's
    key given in another section is pointed to prune."""
    with pytest.raises(ConfigError, match=rf"unknown (config )?key '?{re.escape(given)}'?( for "
                                          rf"prune.method smcp)? \(did you mean "
                                          rf"{re.escape(meant)}\?\)"):
        resolve_config(TINY, [f"{given}=1", *(["prune.method=smcp"]
                                             if given.startswith("prune.") else [])])


def test_a_latency_cache_makes_a_latency_priced_recipe_repeat(tmp_path, monkeypatch):
    """break188 F3: each start of a recipe with prune.cost=latency timed a new table, and two
    identical commands pruned to 0.855 and 0.662 of the dense FLOPs; prune.latency_cache reads
    the timings back."""
    import itertools

    from fxprune.deploy.latency_table import LatencyTable

    clock = itertools.count(1)

    def noisy_timer(layer, c_in, c_out):  # every timing differs, as a loaded machine's
        return (c_in * c_out + 1) * (1 + 0.37 * (next(clock) % 7))

    measure = LatencyTable.measure.__func__

    def timed_by_noise(cls, layers, *args, **kwargs):
        return measure(cls, layers, *args, **{**kwargs, "timer": noisy_timer})

    monkeypatch.setattr(LatencyTable, "measure", classmethod(timed_by_noise))
    prune = ["prune.method=smcp", "prune.target=0.6", "prune.cost=latency", "prune.channel_step=4",
             "prune.warmup=1", "prune.ramp=2", "prune.update_every=1", "model.widths=[8, 16, 16]"]
    cache = tmp_path / "latency_cache.json"
    runs = [train(tiny_cfg(tmp_path / f"r{i}", *prune, f"prune.latency_cache={cache}"))
            for i in range(2)]
    assert cache.is_file()
    assert runs[0]["params"] == runs[1]["params"] and runs[0]["flops"] == runs[1]["flops"]
    assert runs[0]["pruner_cost"] == runs[1]["pruner_cost"]
    # without it, the second run times again (the noise moves the prices)
    fresh = [train(tiny_cfg(tmp_path / f"f{i}", *prune)) for i in range(2)]
    assert fresh[0]["pruner_cost"] != fresh[1]["pruner_cost"]
    # a cache with another cost is refused by name
    with pytest.raises(ConfigError, match=r"prune.latency_cache is the latency table's cache, "
                                          r"read when prune.cost is latency or latency\+fixed"):
        resolve_config(TINY, ["prune.method=smcp", "prune.cost=flops",
                              f"prune.latency_cache={cache}"])
    # a floor priced from the cache alone does not move at the next run (break191 F4: "timed
    # just now ... leave a margin" was said of it)
    with pytest.raises(ConfigError, match=r"below the narrowest model") as below:
        train(tiny_cfg(tmp_path / "low", *prune, "prune.target=0.01", f"prune.latency_cache={cache}"))
    assert "timed just now" not in str(below.value)
    # a resume reads no cache: it may move (break190 F2); one named anew is said to be unused
    # (break204 F4: neither read nor written, without a word); the one it began with is not
    with pytest.warns(RuntimeWarning, match=r"prune.latency_cache .*moved.json is neither read "
                                            r"nor written by a resumed run: it prices with the "
                                            r"table in its checkpoint"):
        train(tiny_cfg(tmp_path / "r0", *prune, f"prune.latency_cache={tmp_path / 'moved.json'}",
                       "optim.epochs=3"), resume=True)
    assert not (tmp_path / "moved.json").exists()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=r".*latency_cache")
        train(tiny_cfg(tmp_path / "r1", *prune, f"prune.latency_cache={cache}",
                       "optim.epochs=3"), resume=True)
    # a cache that cannot be one is refused before any timing, in the recipe's words
    # (break190 F1, review189 R5: the Python argument's words, or an OSError after timing)
    monkeypatch.setattr(LatencyTable, "measure", classmethod(
        lambda *a, **k: pytest.fail("timed before the cache was judged")))
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": 1}')
    (tmp_path / "afile").write_text("x")
    for value, says in (("''", r"prune.latency_cache is empty: give a file path"),
                        (str(tmp_path), r"prune.latency_cache .* is a folder: give a file path"),
                        (str(notes), r"prune.latency_cache: .*notes.json' is not a latency cache"),
                        (str(tmp_path / "afile" / "c.json"),
                         r"prune.latency_cache .*c.json: .*afile is a file, not a folder"),
                        # (break190 F9: timed, then the run refused its folder for the cache)
                        (str(tmp_path / "bad" / "lc.json"),
                         r"prune.latency_cache .*lc.json is inside the run's folder .*bad, which "
                         r"holds the run's own files only: keep the cache beside it")):
        with pytest.raises(ConfigError, match=says):
            train(tiny_cfg(tmp_path / "bad", *prune, f"prune.latency_cache={value}"))
    assert notes.read_text() == '{"mine": 1}'


def test_results_record_what_a_run_depends_on_beyond_its_recipe(tmp_path):
    """break188 F2, F5, F6: results.json named no versions, device, seed or training data;
    config.yaml holds only the recipe's keys, not the method's defaults; CUCB drew from
    prune.seed (0) whatever the run's seed."""
    import platform

    cucb = ["prune.method=cucb", "prune.warmup=2", "prune.explore=5", "prune.channel_step=4",
            "model.widths=[8, 8, 8]"]
    results = train(tiny_cfg(tmp_path / "a", "seed=5", *cucb))
    env = results["environment"]
    assert env["seed"] == 5 and env["torch"] == torch.__version__
    assert env["fxprune"] == fxprune.__version__ and env["python"] == platform.python_version()
    assert isinstance(env["cpu"], str) and env["cpu"]
    # the commit of a checkout (the version is the same for every one: review189 R10)
    from fxprune.train import _source_commit
    assert env["fxprune_commit"] == _source_commit()
    assert results["train_data"]["samples"] == TINY["data"]["synthetic_train"]
    assert len(results["train_data"]["images_sha256"]) == 64
    arguments = results["method_arguments"]
    assert arguments["seed"] == 5  # the run's, where the recipe sets no prune.seed
    assert arguments["selection"] == "cucb" and arguments["explore"] == 5  # defaults too
    assert json.loads((tmp_path / "a" / "results.json").read_text())["method_arguments"] == arguments
    assert train(tiny_cfg(tmp_path / "b", "seed=5", *cucb, "prune.seed=9"))[
        "method_arguments"]["seed"] == 9
    # a run begun before CUCB's generator followed the run's seed drew from 0: its resume
    # says so (review189 R3), as its state, without the seed, tells
    from fxprune.run_io import atomic_torch_save

    ckpt_path = tmp_path / "a" / "checkpoint.pt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    assert ckpt["pruner"]["seed"] == 5
    del ckpt["pruner"]["seed"]
    atomic_torch_save(ckpt, ckpt_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        resumed = train(tiny_cfg(tmp_path / "a", "seed=5", *cucb, "optim.epochs=3"), resume=True)
    assert resumed["method_arguments"]["seed"] == 0
    assert yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())["prune"]["seed"] == 0


def test_a_resume_records_the_seed_the_method_drew_from_not_the_one_it_is_given(tmp_path):
    """break192 F1, F3: a CUCB run from before its state kept the seed, begun at prune.seed 3,
    was recorded as 0 (or the resume's --set prune.seed), and a prune.seed given on --resume,
    which cannot move a generator that goes on from the checkpoint, was written to
    config.yaml without a word."""
    from fxprune.run_io import atomic_torch_save

    cucb = ["prune.method=cucb", "prune.warmup=2", "prune.explore=5", "prune.channel_step=4",
            "model.widths=[8, 8, 8]"]
    train(tiny_cfg(tmp_path / "a", "seed=1", *cucb, "prune.seed=3", "optim.epochs=2"))
    ckpt_path = tmp_path / "a" / "checkpoint.pt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    del ckpt["pruner"]["seed"]  # as the state of an earlier fxprune, whose recipe set seed 3
    atomic_torch_save(ckpt, ckpt_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        resumed = train(tiny_cfg(tmp_path / "a", "seed=1", *cucb, "optim.epochs=3"), resume=True)
    assert resumed["method_arguments"]["seed"] == 3
    config = tmp_path / "a" / "config.yaml"
    assert yaml.safe_load(config.read_text())["prune"]["seed"] == 3
    with pytest.warns(RuntimeWarning, match=r"^--resume: prune.seed 7 has no effect; cucb's "
                                            r"generator goes on from the checkpoint, begun at "
                                            r"seed 3, which config.yaml and results.json record; "
                                            r"to draw from seed 7, start a new run \(another "
                                            r"--out\)$"):
        resumed = train(tiny_cfg(tmp_path / "a", "seed=1", *cucb, "prune.seed=7",
                                 "optim.epochs=4"), resume=True)
    assert resumed["method_arguments"]["seed"] == 3
    assert yaml.safe_load(config.read_text())["prune"]["seed"] == 3


def test_a_resume_goes_on_at_the_channel_step_the_run_began_at_when_the_default_moved(tmp_path):
    """review195 R1: CCP's and CUCB's channel_step default moved from 1 to 8; a run begun at 1
    by a recipe that left it unset went on at 8 after --resume, with a warning only."""
    from fxprune.run_io import atomic_torch_save

    cucb = ["prune.method=cucb", "prune.warmup=2", "prune.explore=5", "model.widths=[8, 8, 8]"]
    train(tiny_cfg(tmp_path / "r", *cucb, "prune.channel_step=1", "optim.epochs=2"))
    ckpt_path = tmp_path / "r" / "checkpoint.pt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    del ckpt["config"]["prune"]["channel_step"]  # as a recipe of the old default wrote it
    atomic_torch_save(ckpt, ckpt_path)
    with pytest.warns(RuntimeWarning, match=r"^--resume: the run began at channel_step 1, cucb's "
                                            r"default then \(now 8\), and goes on at it; "
                                            r"config.yaml records prune.channel_step: 1"):
        train(tiny_cfg(tmp_path / "r", *cucb, "optim.epochs=3"), resume=True)
    assert yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["prune"]["channel_step"] == 1
    assert torch.load(ckpt_path, weights_only=True)["pruner"]["run_settings"]["channel_step"] == 1
    # review197 M1: and the next --resume of the same recipe goes on (config.yaml now says 1)
    train(tiny_cfg(tmp_path / "r", *cucb, "optim.epochs=4"), resume=True)
    assert torch.load(ckpt_path, weights_only=True)["pruner"]["run_settings"]["channel_step"] == 1


def test_a_saved_model_file_is_the_same_bytes_for_the_same_model(tmp_path):
    """break188 F7: the zip inside model_pruned.pt was rooted at the temporary file's random
    name, so two identical runs' files differed byte for byte and a published sha256 could not
    confirm a reproduction."""
    from fxprune.run_io import file_sha256, save_module

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU())
    save_module(model, tmp_path / "a.pt", (1, 1, 8, 8))
    save_module(model, tmp_path / "b.pt", (1, 1, 8, 8))
    assert file_sha256(tmp_path / "a.pt") == file_sha256(tmp_path / "b.pt")
    loaded = torch.load(tmp_path / "a.pt", weights_only=False)
    assert loaded.fxprune_input_shape == (1, 1, 8, 8) and not loaded.training


def test_a_resume_on_another_thread_count_records_each_parts(tmp_path):
    """break190 F5: results.json said threads 2 for a run whose first epoch ran on 1 thread;
    process counts and lengths were recorded per part, threads and environment not."""
    before = torch.get_num_threads()
    try:
        train(tiny_cfg(tmp_path / "r", "num_threads=1", "optim.epochs=1"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the thread count's own warning
            results = train(tiny_cfg(tmp_path / "r", "num_threads=2", "optim.epochs=2"),
                            resume=True)
    finally:
        torch.set_num_threads(before)
    parts = results["environments"]
    assert [(p["from_epoch"], p["threads"]) for p in parts] == [(0, 1), (1, 2)]
    assert parts[1]["torch"] == torch.__version__ and results["threads"] == 2
    # one part: no list
    assert "environments" not in train(tiny_cfg(tmp_path / "s", "num_threads=1", "optim.epochs=1"))
    # break192 F4: a checkpoint of an earlier fxprune recorded no environment: its part is
    # null there, not taken for this one
    from fxprune.run_io import atomic_torch_save

    ckpt_path = tmp_path / "s" / "checkpoint.pt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    del ckpt["environments"]
    atomic_torch_save(ckpt, ckpt_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parts = train(tiny_cfg(tmp_path / "s", "num_threads=1", "optim.epochs=2"),
                      resume=True)["environments"]
    assert [(p["from_epoch"], p["threads"], p["torch"]) for p in parts] == [
        (0, 1, None), (1, 1, torch.__version__)]


def test_the_run_seed_reaches_no_seed_a_methods_registration_fixes(tmp_path):
    """review189 R11: a method registered with defaults={"seed": K} failed at any other run
    seed, told to remove a prune.seed the user never set; R15: --set prune.seed on a resume
    (the seed the run used) was refused as a change."""
    from fxprune.methods.registration import get_method, register_method, registry
    from fxprune.methods.cucb import CUCB
    from fxprune.train import make_pruner

    saved = dict(registry)
    try:
        register_method("cucb_seed7", CUCB, defaults={"seed": 7})
        pm = fxprune.prepare(torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(),
                                                 torch.nn.Conv2d(8, 4, 1)),
                             (torch.randn(1, 1, 8, 8),))
        pruner = make_pruner(pm, {"method": "cucb_seed7", "warmup": 1, "explore": 3,
                                  "execution": "masked", "channel_step": 1},
                             steps_per_epoch=2, epochs=2, seed=5)
        assert pruner.seed == 7 and get_method("cucb_seed7").defaults == {"seed": 7}
    finally:
        registry.clear()
        registry.update(saved)
    cucb = ["prune.method=cucb", "prune.warmup=2", "prune.explore=5", "prune.channel_step=4",
            "model.widths=[8, 8, 8]"]
    train(tiny_cfg(tmp_path / "r", "seed=5", *cucb))
    resumed = train(tiny_cfg(tmp_path / "r", "seed=5", *cucb, "prune.seed=5", "optim.epochs=3"),
                    resume=True)
    assert resumed["method_arguments"]["seed"] == 5


def test_a_run_begun_before_the_test_subset_stopped_following_the_seed_is_told_so(recipe,
                                                                                   tmp_path,
                                                                                   capsys):
    """break204 F1: a run begun before f32d14a with data.subset_test at a seed other than 0
    scored other test images than the same data gives now; the resume blamed data.root."""
    out = tmp_path / "run"
    args = ["--set", "seed=1", "--set", "data.subset_test=32", "--out", str(out)]
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=1", *args]) == 0
    capsys.readouterr()
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    for split in ("train", "test"):  # as such a checkpoint: the labels' hash alone
        del ckpt["data"][split]["images_sha256"]
    ckpt["data"]["test"]["labels_sha256"] = "0" * 64  # the per-seed draw's other images
    torch.save(ckpt, out / "checkpoint.pt")
    assert cli_main(["train", str(recipe), "--set", "optim.epochs=2", "--resume", *args]) == 2
    err = capsys.readouterr().err
    assert ("--resume: this run's test subset (data.subset_test 32, seed 1) was drawn by an "
            "fxprune older than 2026-12-04, which drew it anew for every seed; this one draws the "
            "same test images at every seed, so it cannot score the run on the images it began "
            "with: finish the run with the fxprune it began with, or start a new run with "
            "another --out") in err, err
