"""A method of one's own against the documented protocol (``fxprune.methods.base``): the
checks a ``PruningMethod`` subclass gets, and what ``fxprune train`` and the Lightning
callback refuse of a method that breaks the protocol (break198)."""
from __future__ import annotations

import json
import math
import re

import pytest
import torch
import yaml
from torch import nn

import fxprune
from fxprune.cli import main as cli_main
from fxprune.errors import InfeasibleBudget, MethodProtocolError
from fxprune.methods.base import method_cost
from fxprune.methods.registration import register_method, registry
from helpers import TINY_RECIPE, UniformOneShot


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_RECIPE))
    return path


@pytest.fixture
def register(monkeypatch):
    """register_method into a copy of the registry, undone after the test."""
    monkeypatch.setattr("fxprune.methods.registration.registry", dict(registry))
    return register_method


def prepared():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
    return fxprune.prepare(net, torch.randn(2, 3, 12, 12))


def test_a_subclass_gets_the_target_check_and_the_step_checks_of_the_shipped_methods():
    """break198 F1: a subclass that did not call the base's private checks was refused only at
    its pruning step (epochs into a run), and two steps per backward went unsaid."""
    with pytest.raises(InfeasibleBudget, match=r"^target 0\.001 of dense is below the narrowest "
                                               r"model the constraints allow"):
        UniformOneShot(prepared(), target=0.001)
    pm = prepared()
    pruner = UniformOneShot(pm, target=0.9, at_step=2)
    assert pruner.floor_kept is not None
    pm(torch.randn(2, 3, 12, 12)).sum().backward()
    assert pruner.step() is None
    with pytest.warns(RuntimeWarning, match=r"UniformOneShot.step\(\) at step 1 ran with no "
                                            r"backward since the last step\(\)"):
        record = pruner.step()
    assert record["step"] == 2 and record["cost"] < 0.9
    x = (torch.randn(1, 3, 12, 12),)
    dense = fxprune.count_flops(fxprune.finalize(prepared(), check=False), x)
    assert fxprune.count_flops(fxprune.finalize(pm), x) / dense == pytest.approx(record["cost"])


@pytest.mark.parametrize("value", [None, float("nan"), "0.5", -0.1])
def test_a_cost_that_is_not_a_finite_fraction_is_refused(value):
    """break198 F2: None, NaN or a str from cost() counted as a target reached."""
    pruner = UniformOneShot(prepared())
    pruner.cost = lambda cost_model=None: value
    with pytest.raises(MethodProtocolError, match=rf"^mine's cost\(\) returned {re.escape(repr(value))}; "
                                                  r"the protocol \(fxprune.methods.base\) asks"):
        method_cost(pruner, "mine")
    pruner.cost = lambda cost_model=None: torch.tensor(0.25, dtype=torch.float64)
    assert method_cost(pruner, "mine") == 0.25
    # named costs: for a method without a target only (one with a target is checked by number)
    pruner.cost = lambda cost_model=None: {"flops": 0.5, "params": 0.25}
    with pytest.raises(MethodProtocolError, match=r"which its target is checked against\)$"):
        method_cost(pruner, "mine")
    pruner.target = None
    assert method_cost(pruner, "mine") == {"flops": 0.5, "params": 0.25}


class NaNCost(UniformOneShot):
    def cost(self, cost_model=None):
        return math.nan


class ForgetsItsSteps(UniformOneShot):
    def load_state_dict(self, state):
        pass


class SavesLessThanItLoads(UniformOneShot):
    def load_state_dict(self, state):
        self.step_count, self.fired = state["step_count"], state["fired"]


class ScheduleOfItsOwn(UniformOneShot):
    schedule = "once"


def test_the_trainer_refuses_a_cost_that_is_not_a_number(recipe, tmp_path, capsys, register):
    """break198 F2: a run whose method's cost() was NaN ended with target_reached true and
    NaN in results.json, exit 0."""
    register("nan_cost", NaNCost)
    out = tmp_path / "r"
    assert cli_main(["train", str(recipe), "--set", "prune.method=nan_cost", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "fxprune train: error: nan_cost's cost() returned nan; the protocol" in err, err
    assert not (out / "results.json").exists()


@pytest.mark.parametrize("method, message", [
    (ForgetsItsSteps, r"forgets's load_state_dict left it at step_count 0, and it was at 12 when "
                      r"its state_dict was saved: its schedule would start over mid-run"),
    (SavesLessThanItLoads, r"--resume: forgets's load_state_dict failed on the state its own "
                           r"state_dict saved in .*checkpoint.pt \(KeyError: 'fired'\): its save "
                           r"and load disagree; fix the method, the checkpoint is as it saved "
                           r"it")])
def test_a_state_the_method_does_not_load_back_is_its_fault_on_resume(
        recipe, tmp_path, capsys, register, method, message):
    """break198 F3: a load_state_dict that left step_count at 0 resumed, and the run ended
    unpruned, told to lengthen its schedule; F4: a KeyError of the method's own load was
    called a checkpoint that does not fit, with --overwrite (losing the run) as the way out."""
    register("forgets", method)
    out = tmp_path / "r"
    args = ["train", str(recipe), "--set", "prune.method=forgets", "--set", "prune.at_step=8",
            "--out", str(out)]
    assert cli_main(args) == 0  # 12 steps, pruned at the 8th; then trained on to 3 epochs
    capsys.readouterr()
    args += ["--set", "optim.epochs=3", "--resume"]
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert re.search(r"^fxprune train: error: " + message, err, re.M), err
    assert "--overwrite" not in err
    register("forgets", UniformOneShot)  # the same run, by a method that loads its state
    assert cli_main(args) == 0
    assert json.loads((out / "results.json").read_text())["target_reached"] is True


def test_refusals_of_a_plug_ins_schedule_name_its_own_settings(recipe, tmp_path, capsys, register):
    """break198 F5: a plug-in pruning after the run was told CCP's prune.collect and prune_at;
    F7: a schedule attribute of its own kind was an AttributeError traceback."""
    register("mine", UniformOneShot)
    assert cli_main(["train", str(recipe), "--set", "prune.method=mine", "--set",
                     "prune.at_step=100", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert ("mine prunes at optimizer step 100, but the run has 12 (2 epochs x 6), so it would "
            "end unpruned; lower prune.at_step (or the _epochs/_fraction form set) or raise "
            "optim.epochs") in err, err
    register("own_schedule", ScheduleOfItsOwn)
    assert cli_main(["train", str(recipe), "--set", "prune.method=own_schedule", "--out",
                     str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert ("ScheduleOfItsOwn.schedule is a str; fxprune train and the Lightning callback read a "
            "method's schedule attribute as a fxprune.PruningSchedule") in err, err
    assert "Traceback" not in err


class WithoutStepCount:
    """A method of the bare protocol without the optional ``step_count``, pruning at step 100."""

    def __init__(self, prepared, target=0.5):
        self.prepared, self.target, self.history = prepared, target, []

    def step(self, loss=None):
        return None

    def cost(self, cost_model=None):
        return 1.0

    def prune_steps(self):
        return [100]

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def finalize_masks(self):
        return False


def test_the_lightning_callback_holds_a_plug_in_to_the_protocol_as_the_trainer_does(
        tmp_path, register):
    """break198 F6: a method without step_count (optional) was an AttributeError at fit start;
    F2: a NaN cost() passed; F3: a state loaded without its step count went on unsaid; F5:
    the advice named SMCP's and CCP's arguments."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from fxprune.integrations.lightning import PruningCallback
    from lightning_app import Classifier, loader, trainer

    register("no_count", WithoutStepCount)
    with pytest.raises(ValueError, match=r"no_count reaches its target at optimizer step 100 "
                                         r"\(its schedule's end\), but this fit has at most 4 "
                                         r"optimizer steps; pass a shorter schedule to the "
                                         r"callback \(the arguments of WithoutStepCount that set "
                                         r"when it prunes\)"):
        trainer(tmp_path / "a", 1, [PruningCallback("no_count")]).fit(Classifier(), loader())
    register("nan_cost", NaNCost)
    with pytest.raises(MethodProtocolError, match=r"^nan_cost's cost\(\) returned nan"):
        trainer(tmp_path / "b", 1, [PruningCallback("nan_cost", at_step=2)]).fit(
            Classifier(), loader())
    register("forgets", ForgetsItsSteps)
    saved = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
    trainer(tmp_path / "c", 1, [PruningCallback("forgets", at_step=3), saved]).fit(
        Classifier(), loader())
    (ckpt,) = (tmp_path / "ckpt").glob("*.ckpt")
    with pytest.raises(MethodProtocolError, match=r"^forgets's load_state_dict left it at "
                                                  r"step_count 0, and it was at 4 when"):
        trainer(tmp_path / "c", 2, [PruningCallback("forgets", at_step=3)]).fit(
            Classifier(), loader(), ckpt_path=ckpt)


def test_a_trial_build_leaves_no_copy_no_random_draw_and_no_pruner_behind():
    """break199 F1's trial (the method on a FLOPs-priced copy, before a latency table):
    review202 R3 found the copy kept alive by a cycle through the timing."""
    import random
    import weakref

    import numpy as np

    from fxprune.groups import latest_pruner
    from fxprune.methods.base import check_on_trial

    pm = prepared()
    copies, checked = [], []
    states = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())

    def build(model):
        copies.append(weakref.ref(model))
        torch.randn(3), random.random(), np.random.rand()  # draws a trial must not leave
        return fxprune.CCP(model, target=0.5, collect=2, prune_at=3, channel_step=1)

    check_on_trial(build, pm, lambda method, model: checked.append(method.prepared is model))
    assert checked == [True] and copies[0]() is None and latest_pruner(pm) is None
    assert torch.equal(torch.get_rng_state(), states[0]) and random.getstate() == states[1]
    assert (np.random.get_state()[1] == states[2]).all()
    with pytest.raises(ValueError, match="too short"):  # a check's refusal is the caller's
        check_on_trial(build, pm, lambda method, model: (_ for _ in ()).throw(ValueError("too short")))
    # a target below the copy's floor is the real cost model's to judge: not raised here
    check_on_trial(lambda model: UniformOneShot(model, target=0.001), pm, checked.append)
    assert len(checked) == 1
