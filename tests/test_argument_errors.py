"""The argument and state checks a user reaches from the Python API, each with its message
(review146 F6: these raised as intended when tried by hand, and no test held them)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import fxprune
from fxprune.importance import ImportanceAccumulator, WeightTaylor
from fxprune.units import UnitIndex, consumer_weights

from test_smcp import prepared


@pytest.mark.parametrize("make, error, says", [
    (lambda pm: fxprune.SMCP(pm, 0.5, masks="sharp"), ValueError,
     r"^masks must be 'soft' \(SMCP\) or 'hard' \(HALP-style\), got 'sharp'$"),
    (lambda pm: fxprune.SMCP(pm, 0.5, allocation="greedy"), ValueError,
     r"^allocation must be 'knapsack' or 'uniform', got 'greedy'$"),
    (lambda pm: fxprune.SMCP(pm, 0.5, accumulate="median"), ValueError,
     r"^accumulate must be 'mean' or 'momentum', got 'median'$"),
    (lambda pm: fxprune.SMCP(pm, 0.5, importance="magnitude", accumulate="median"), ValueError,
     r"^accumulate must be 'mean' or 'momentum', got 'median'$"),
    (lambda pm: fxprune.CCP(pm, 0.5, mode="greedy"), ValueError,
     r"^mode must be 'ratio' \(per-layer ratio, CCP\) or 'adaptive' .*got 'greedy'$"),
    (lambda pm: fxprune.CCP(pm, 0.5, loss_reduction="none"), ValueError,
     r"^loss_reduction must be 'mean' or 'sum', got 'none'$"),
    (lambda pm: fxprune.CUCB(pm, mode="topk"), ValueError,
     r"^mode must be 'ratio' \(top rho per group\) or 'budget' .*got 'topk'$"),
    (lambda pm: fxprune.CUCB(pm, execution="sparse"), ValueError,
     r"^execution must be 'gathered' \(run the active sub-network\) or 'masked' .*got 'sparse'$"),
])
def test_a_method_argument_out_of_its_choices_is_named(make, error, says):
    with pytest.raises(error, match=says):
        make(prepared())


def test_importance_by_an_unknown_name_is_named():
    pm = prepared()
    index = UnitIndex(pm)
    with pytest.raises(ValueError, match=r"^importance must be one of \('taylor', 'magnitude'\), "
                                         r"got 'hessian'$"):
        ImportanceAccumulator(consumer_weights(pm, index), index.n, "hessian")
    with pytest.raises(ValueError, match=r"^accumulate must be 'mean' or 'momentum'"):
        WeightTaylor(consumer_weights(pm, index), index.n, accumulate="last")


def test_a_schedule_replaced_by_something_else_is_named_at_the_next_step():
    pm = prepared()
    pruner = fxprune.SMCP(pm, 0.5, warmup=1, ramp=2, update_every=1)
    pruner.schedule = {"warmup": 1}
    with pytest.raises(ValueError, match=r"^pruner.schedule was set to a dict: give a "
                                         r"fxprune.PruningSchedule$"):
        pruner.step()


def test_a_pruner_state_that_is_not_one_is_refused_naming_what_it_is():
    pm = prepared()
    pruner = fxprune.SMCP(pm, 0.5, warmup=1, ramp=2, update_every=1)
    with pytest.raises(TypeError, match=r"^a SMCP state is the dict its state_dict\(\) returned, "
                                        r"got list$"):
        pruner.load_state_dict([pruner.state_dict()])
    partial = {k: v for k, v in pruner.state_dict().items() if k != "masks"}
    with pytest.raises(ValueError, match=r"^this pruner state lacks masks: it is not a SMCP state "
                                         r"\(another method's, or incomplete\)"):
        pruner.load_state_dict(partial)


def test_finalize_refuses_a_non_finite_mask_naming_the_group():
    pm = prepared()
    group = next(g for g in fxprune.channel_groups(pm) if g.prunable)
    group.mask[0] = float("nan")
    with pytest.raises(fxprune.SurgeryError, match=rf"^group {group.key} \({group.name}\) has a "
                                                   r"non-finite mask value; masks hold 0 or 1$"):
        fxprune.finalize(pm)


def test_leaf_modules_naming_no_module_of_the_model_is_refused_with_the_paths_it_has():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    with pytest.raises(ValueError, match=r"^leaf_modules names \['body.0'\] are not modules of "
                                         r"the model; paths look like \['0', '1'\]$"):
        fxprune.prepare(model, torch.randn(1, 3, 8, 8), leaf_modules=["body.0"])
