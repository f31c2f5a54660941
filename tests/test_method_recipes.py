"""The CUCB and CCP recipes run end to end through ``fxprune train`` (on synthetic images here;
tests/test_recipe_e2e.py covers the real files): the budget holds by the flop counter, finalize
changes no prediction, and a run resumes."""
from __future__ import annotations

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
                       "prune.explore_epochs=0.5", "prune.mode=ratio", "prune.target=0.3",
                       f"out={tmp_path / 'run'}"])
    with pytest.warns(UserWarning, match=r"prune.target 0.3 is not used by cucb in mode 'ratio': "
                                         r"each group keeps prune.rho=0.7 of its channels"):
        results = train(cfg)
    assert "target" not in results  # no cost promised, none reported
