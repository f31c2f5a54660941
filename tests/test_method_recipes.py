"""The CUCB and CCP recipes run end to end through ``fxprune train`` (on synthetic images here;
tests/test_recipe_e2e.py covers the real files): the budget holds by the flop counter, finalize
changes no prediction, and a run resumes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fxprune.train import load_config, train

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["data.name=synthetic", "data.synthetic_train=256", "data.synthetic_test=64", "data.batch_size=32",
         "model.widths=[8,16,16]", "optim.epochs=2", "num_threads=1", "log.progress=false",
         "log.tensorboard=false"]
EXTRA = {
    "cucb": ["prune.warmup_epochs=0.25", "prune.explore_epochs=1.5"],
    "ccp": ["prune.collect_epochs=0.5", "prune.prune_at_epochs=1", "prune.rounds=2", "prune.round_every_epochs=0.5"],
}


@pytest.mark.parametrize("method", ["cucb", "ccp"])
def test_recipe_prunes_to_budget_and_finalizes_exactly(method, tmp_path):
    cfg = load_config(ROOT / "configs" / f"fashion_mnist_{method}.yaml",
                      [*SMALL, *EXTRA[method], f"out={tmp_path / 'run'}"])
    results = train(cfg)
    assert results["method"] == method
    assert results["flops_ratio"] <= 0.5 + 1e-6 and results["flops_ratio"] > 0.3
    assert results["finalize_mismatched_samples"] == 0
    resumed = train(load_config(ROOT / "configs" / f"fashion_mnist_{method}.yaml",
                                [*SMALL, *EXTRA[method], f"out={tmp_path / 'run'}", "optim.epochs=3"]),
                    resume=True)
    assert resumed["flops_ratio"] <= 0.5 + 1e-6 and resumed["finalize_mismatched_samples"] == 0


def test_the_trainer_passes_the_loss_to_methods_that_take_it():
    from fxprune.train import _takes_loss

    class Old:
        def step(self):
            pass

    class New:
        def step(self, loss=None):
            pass

    assert not _takes_loss(Old().step) and _takes_loss(New().step)


def test_a_target_the_ratio_mode_does_not_use_is_said(tmp_path):
    cfg = load_config(ROOT / "configs" / "fashion_mnist_cucb.yaml",
                      [*SMALL, *EXTRA["cucb"], "optim.epochs=1", "data.synthetic_train=64",
                       "prune.explore_epochs=0.5", "prune.mode=ratio", "prune.target=0.3", "prune.rho=0.7",
                       f"out={tmp_path / 'run'}"])
    with pytest.warns(RuntimeWarning, match=r"target=0.3 is not used in mode='ratio' with "
                                           r"rho=0.7: each group keeps rho of its channels.*"
                                           r"--set prune.rho=null\) or use mode='budget'"):
        results = train(cfg)
    assert "target" not in results  # no cost promised, none reported


def test_a_latency_fixed_run_resumes_on_its_own_timings(tmp_path, monkeypatch):
    """The table and fitted constant live in the checkpoint: a resumed run prices with them
    instead of timing again (new timings would move the budget under the chosen masks)."""
    import torch

    import fxprune.train as train_mod
    from fxprune.cost import WithFixedCost, layer_keys
    from fxprune.deploy import LatencyTable

    def fake_measurement(net, cost, channel_step, progress, cache=None):  # deterministic, one call only
        calls.append(cost)
        assert progress is False  # log.progress=false: no bar (break52)
        table = LatencyTable.measure(net, step=channel_step, progress=False, log=lambda s: None,
                                     timer=lambda layer, ci, co: 1e-3 * ci * co + 0.05)
        keys = layer_keys(fxprune.layer_specs(net))
        return WithFixedCost(table, 0.2, keys, {"measured_fraction": 0.6})

    import fxprune

    calls = []
    monkeypatch.setattr(train_mod, "latency_cost", fake_measurement)
    smcp = ROOT / "configs" / "fashion_mnist_smcp.yaml"
    args = [*SMALL, "prune.cost=latency+fixed", "prune.channel_step=4", "prune.target=0.7",
            f"out={tmp_path / 'run'}"]
    real_evaluate, evaluations = train_mod.evaluate, []

    def crash_in_second_epoch(*a, **kw):
        evaluations.append(1)
        if len(evaluations) == 2:
            raise RuntimeError("simulated crash")
        return real_evaluate(*a, **kw)

    monkeypatch.setattr(train_mod, "evaluate", crash_in_second_epoch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(load_config(smcp, args))
    monkeypatch.setattr(train_mod, "evaluate", real_evaluate)
    assert calls == ["latency+fixed"]
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["measured_cost"]
    assert saved["kind"] == "latency+fixed" and saved["fixed_cost"] == 0.2
    # break164 F3: an edited measured cost was a traceback (None), or, missing, timed anew
    import copy
    import re
    import shutil

    from fxprune.run_io import CheckpointError

    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    edits = {"missing": ({"measured_cost": None}, "holds no measured cost, though the run prices "
                                                  "by prune.cost=latency+fixed: timing a new table"),
             "constant": ({"measured_cost": {**saved, "fixed_cost": None}},
                          "fixed_cost is None, not a finite number of milliseconds"),
             "kind": ({"measured_cost": {**saved, "kind": "latency"}},
                      "is of kind 'latency', and the run prices by prune.cost=latency+fixed"),
             "list": ({"measured_cost": [1, 2]}, "is not a measured cost")}
    for name, (edit, said) in edits.items():
        edited = tmp_path / f"edited_{name}"
        shutil.copytree(tmp_path / "run", edited)
        torch.save({**copy.deepcopy(ckpt), **edit}, edited / "checkpoint.pt")
        with pytest.raises(CheckpointError, match=re.escape(said)):
            train(load_config(smcp, [*args[:-1], f"out={edited}"]), resume=True)
    assert calls == ["latency+fixed"]
    resumed = train(load_config(smcp, args), resume=True)
    assert calls == ["latency+fixed"]  # not timed again
    assert resumed["cost_fit"] == {"fixed_cost": 0.2, "measured_fraction": 0.6}
    # how the table was timed, in the results too (break164 F9: in the checkpoint only)
    assert resumed["cost_table"] == {"backend": "onnxruntime", "device": "custom-timer",
                                     "timed_on": None, "runtime": saved["table"]["runtime_version"],
                                     "threads": saved["table"]["threads"], "batch": 1,
                                     "dtype": "float32"}
    # the table kept the layers' own batch and dtype, which the results name (break180 F8: null)
    assert saved["table"]["batch"] is None and saved["table"]["dtype"] is None
    assert resumed["cost_table"]["runtime"].startswith("custom-timer ")  # its timer named
    assert resumed["pruner_cost"]["cost"] <= 0.7 + 1e-6


def test_a_schedule_that_would_end_unpruned_is_refused_before_training(tmp_path):
    from fxprune.recipe_config import ConfigError

    recipe = tmp_path / "ccp.yaml"
    recipe.write_text("prune:\n  method: ccp\n  target: 0.5\n")  # CCP's default: collect 20 steps
    cfg = load_config(recipe, [*SMALL, "optim.epochs=1", "data.synthetic_train=64",
                               "prune.channel_step=1", f"out={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match=r"ccp prunes at optimizer step 20, but the run has 2 "
                                          r"\(1 epochs x 2\), so it would end unpruned"):
        train(cfg)  # it trained to the end, then failed on the cost it never pruned to


@pytest.mark.parametrize("prune, said", [
    # break132 #3: rounds 1 and 2 do prune; all 50 steps were listed
    ("method: ccp\n  target: 0.5\n  collect: 1\n  prune_at: 1\n  rounds: 50\n  round_every: 1",
     r"ccp prunes at optimizer steps 3, 4, 5, \.\.\., 50, but the run has 2 \(1 epochs x 2\), "
     r"so 48 of its 50 rounds would not run"),
    # break132 #2: accepted, the pick came at the last step
    ("method: cucb\n  target: 0.5\n  explore: 100\n  warmup: 1", r"cucb makes its final selection at optimizer "
     r"step 100 \(prune.explore\), and the run has 2 .* lower prune.explore"),
    ("method: cucb\n  target: 0.5\n  explore: 2\n  warmup: 1", r"step 2 \(prune.explore\), and the run has 2 "),
    # break158 F5: no explore at all, the pick after the last step, was accepted
    ("method: cucb\n  target: 0.5\n  warmup: 1", r"cucb has no prune.explore, so its final "
     r"selection would come after the last step, and the run has 2 \(1 epochs x 2\): nothing "
     r"would be fine-tuned after it; set prune.explore"),
    # break132 #1: "shorten prune.ramp", which a one-shot method refuses; review137 #1: its
    # window made it "step 6 (prune_at 10)"
    ("method: magnitude\n  target: 0.8\n  prune_at: 100", r"the pruning comes at step 100 "
     r"\(prune.prune_at\) but the run has 2 \(1 epochs x 2\); lower prune.prune_at \(or"),
    ("method: magnitude\n  target: 0.8\n  prune_at: 3\n  window: 2", r"comes at step 3 "),
    # review138 F4: at the last step, nothing fine-tuned after (refused as CUCB's explore is)
    ("method: magnitude\n  target: 0.8\n  prune_at: 2\n  window: 1", r"comes at step 2 "
     r"\(prune.prune_at\), the last of the run's, with nothing fine-tuned after; the run has 2 "
     r"\(1 epochs x 2\)"),
    # review142 F10: a ramp ending at the last step, unfrozen, was accepted
    ("method: smcp\n  target: 0.8\n  warmup: 0\n  ramp: 2\n  update_every: 1\n  freeze_after: null",
     r"reaches its target at step 2 \(warmup 0 \+ ramp 2\), the last of the run's, with nothing "
     r"fine-tuned after; the run has 2 \(1 epochs x 2\)"),
    ("method: ccp\n  target: 0.5\n  collect: 1\n  prune_at: 2", r"ccp's last pruning round comes "
     r"at optimizer step 2, and the run has 2 \(1 epochs x 2\): it would prune at the last step"),
    # review137 #1: warmup alone set, the default ramp the cause: both named
    ("method: smcp\n  target: 0.8\n  warmup: 1", r"\(warmup 1 \+ ramp \d+\) but masks stop changing "
     r"at step 2 of 2; shorten prune.warmup or prune.ramp")])
def test_a_schedule_past_the_run_is_refused_naming_what_was_set(tmp_path, prune, said):
    from fxprune.recipe_config import ConfigError

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"prune:\n  {prune}\n")
    cfg = load_config(recipe, [*SMALL, "optim.epochs=1", "data.synthetic_train=64",
                               "prune.channel_step=1", f"out={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match=said):
        train(cfg)


def test_a_run_priced_by_a_table_timed_under_load_keeps_that_in_its_results(tmp_path,
                                                                             monkeypatch):
    """break70 #3: a latency table timed while the CPU was shared warned once, at training;
    results.json, the printed results and fxprune plot said nothing of it."""
    import fxprune.train as train_mod
    from fxprune.deploy import LatencyTable
    from fxprune.plot import load_points

    def loaded_measurement(net, cost, channel_step, progress, cache=None):
        table = LatencyTable.measure(net, step=channel_step, progress=False, log=lambda s: None,
                                     timer=lambda layer, ci, co: 1e-3 * ci * co + 0.05)
        table.stats["under_load"] = 3  # as LatencyTable.measure counts layers timed under load
        return table

    monkeypatch.setattr(train_mod, "latency_cost", loaded_measurement)
    args = [*SMALL, "prune.cost=latency", "prune.channel_step=4", "prune.target=0.7",
            f"out={tmp_path / 'run'}"]
    results = train(load_config(ROOT / "configs" / "fashion_mnist_smcp.yaml", args))
    assert results["cost_timed_under_load"] == 3
    assert json.loads((tmp_path / "run" / "results.json").read_text())["cost_timed_under_load"] == 3
    with pytest.warns(RuntimeWarning, match=r"results.json: the latency table that priced this "
                                            r"run had 3 timings taken while other processes"):
        load_points([tmp_path / "run"])
