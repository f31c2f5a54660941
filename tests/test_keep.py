"""What pruning leaves: prepare(keep=...), layers whose output channels are never pruned
(break205 F1: no way to keep the stem or a head whole, as Torch-Pruning's ignored layers and
NNI's excluded ops do), and the methods' min_kept, a floor every group keeps (F2)."""
from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import fxprune
from fxprune.methods.ccp import CCP
from fxprune.methods.cucb import CUCB
from fxprune.models import build_model
from fxprune.recipe_config import ConfigError, resolve_config
from fxprune.train import train
from helpers import TINY_RECIPE
from test_cucb import _train
from test_smcp import prepared


def _resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval(), (torch.randn(2, 3, 32, 32),)


def _kept(pm) -> dict[str, str]:
    return {g.name: g.reason for g in fxprune.channel_groups(pm) if not g.prunable}


def test_a_kept_layer_keeps_its_output_channels_through_pruning_and_finalize():
    model, x = _resnet()
    before = copy.deepcopy(model.state_dict())
    keep = ["conv1"]
    pm = fxprune.prepare(model, x, keep=keep)
    assert _kept(pm)["conv1"] == "prepare(keep=...) names `conv1`"
    plain = fxprune.prepare(model, x)
    assert plain_is_prunable(plain, "conv1")  # kept only because it was asked
    pruner = fxprune.get_method("magnitude")(pm, 0.5)
    pruner.step()
    pruner.finalize_masks()
    small = fxprune.finalize(pm)
    # the stem's output (the residual stream of layer1) stays whole, others are cut
    assert small.conv1.weight.shape[0] == 64 and small.get_submodule("layer1.0.conv2").weight.shape[0] == 64
    assert sum(m.weight.shape[0] for m in small.modules() if isinstance(m, nn.Conv2d)) < \
        sum(m.weight.shape[0] for m in model.modules() if isinstance(m, nn.Conv2d))
    ratio = fxprune.count_flops(small, x) / fxprune.count_flops(model, x)
    assert pruner.cost() == pytest.approx(ratio, rel=1e-9) and ratio <= 0.5
    with torch.no_grad():
        torch.testing.assert_close(small(*x), pm.eval()(*x), rtol=1e-4, atol=1e-5)
    assert keep == ["conv1"]  # nothing the user passed is changed
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def plain_is_prunable(pm, name: str) -> bool:
    return next(g for g in fxprune.channel_groups(pm) if g.name == name).prunable


def test_keep_takes_paths_of_blocks_classes_and_the_models_own_modules():
    model, x = _resnet()
    pm = fxprune.prepare(model, x, keep=[model.layer4, "layer1", nn.Linear])
    kept = _kept(pm)
    assert kept["layer1.0.conv1"] == "prepare(keep=...) names `layer1` (`layer1.0.conv1`)"
    assert kept["layer4.1.conv1"].startswith("prepare(keep=...) names `layer4`")
    # the stem shares its channels with layer1's residual outputs: kept with the block
    assert kept["conv1"].startswith("prepare(keep=...) names `layer1`")
    prunable = [g.name for g in fxprune.channel_groups(pm) if g.prunable]
    assert prunable and all(name.startswith(("layer2", "layer3")) for name in prunable)
    # a norm layer names the channels it normalizes; one string is one path
    assert not plain_is_prunable(fxprune.prepare(model, x, keep="layer2.0.bn1"), "layer2.0.conv1")


@pytest.mark.parametrize("keep, error, message", [
    (["layer1.0.cnv1"], ValueError, r"keep= names 'layer1.0.cnv1', which is no module of the "
                                    r"model; did you mean 'layer1.0.conv1'\?"),
    (["nothing_like_it"], ValueError, r"no module of the model; paths are model.named_modules\(\)'s"
                                      r", e.g. 'conv1', 'bn1', 'relu', 'maxpool'"),
    (["relu"], ValueError, r"keep= names `relu`, which holds no channels fxprune prunes"),
    ([nn.GELU], ValueError, r"keep= names GELU, of which the model has no module"),
    ([nn.Conv2d(3, 3, 1)], ValueError, r"keep= holds a Conv2d that is not a submodule of this "
                                       r"model .*give its path instead"),
    ([""], ValueError, r"keep= names the whole model"),
    ([3], TypeError, r"keep= takes module paths \(str\), module classes or the model's modules, "
                     r"got int"),
    (5, TypeError, r"keep= is a list of module paths"),
])
def test_a_keep_entry_that_names_no_prunable_module_is_refused_in_one_line(keep, error, message):
    model, x = _resnet()
    with pytest.raises(error, match=message) as info:
        fxprune.prepare(model, x, keep=keep)
    assert "\n" not in str(info.value)


def test_models_prepared_with_other_kept_layers_hold_other_masks():
    model, x = _resnet()
    with pytest.raises(ValueError, match=r"the two models hold different channel masks"):
        fxprune.copy_masks(fxprune.prepare(model, x, keep=["conv1"]), fxprune.prepare(model, x))


def test_the_recipe_keeps_layers_with_prune_keep(tmp_path):
    def cfg(out, *overrides):
        return resolve_config(TINY_RECIPE, [f"out={out}", "optim.epochs=1", "prune.method=smcp",
                                            "prune.target=0.6", "prune.channel_step=1", "prune.warmup=1",
                                            "prune.ramp=3", "prune.update_every=1",
                                            *overrides])

    results = train(cfg(tmp_path / "kept", "prune.keep=[conv1]"))
    small = torch.load(tmp_path / "kept" / "model_pruned.pt", weights_only=False)
    assert small.conv1.weight.shape[0] == TINY_RECIPE["model"]["widths"][0]
    assert results["flops_ratio"] <= 0.6
    with pytest.raises(ConfigError, match=r"prune.keep: prepare: keep= names 'conv', which is no "
                                          r"module of the model; did you mean 'conv1'\?"):
        train(cfg(tmp_path / "typo", "prune.keep=[conv]"))
    with pytest.raises(ConfigError, match=r"prune.keep takes a list of strings; got 'conv1'"):
        cfg(tmp_path / "one", "prune.keep=conv1")
    train(cfg(tmp_path / "floor", "prune.min_kept=0.5"))
    small = torch.load(tmp_path / "floor" / "model_pruned.pt", weights_only=False)
    dense = build_model("resnet_fmnist", **TINY_RECIPE["model"])
    widths = [(small.get_submodule(n).weight.shape[0], m.weight.shape[0])
              for n, m in dense.named_modules() if isinstance(m, nn.Conv2d)]
    assert all(2 * kept >= size for kept, size in widths), widths
    assert any(kept < size for kept, size in widths), widths
    with pytest.raises(ConfigError, match=r"prune.min_kept takes a number >= 0 and <= 1"):
        cfg(tmp_path / "bad", "prune.min_kept=2")


def test_a_module_object_in_leaf_modules_is_named_by_its_path_not_printed_whole():
    """break205 F6: a module given where a path was wanted printed all of it (13,473
    characters for mobilenet_v2's features)."""
    model, x = _resnet()
    with pytest.raises(TypeError, match=r"^leaf_modules takes module classes or module paths "
                                        r"\(str\), got the module `layer1` itself: pass its path, "
                                        r"'layer1'$"):
        fxprune.prepare(model, x, leaf_modules=[model.layer1])
    with pytest.raises(TypeError, match=r"got a Conv2d$"):
        fxprune.prepare(model, x, leaf_modules=[nn.Conv2d(1, 1, 1)])


# ---------------------------------------------------------------------------- min_kept
def _kept_counts(pm) -> list[tuple[int, int]]:
    return [(int(g.mask.sum()), g.size) for g in fxprune.channel_groups(pm) if g.prunable]


def test_min_kept_is_a_floor_every_group_keeps_under_a_global_allocation():
    """break205 F2: the knapsack cut resnet18's stem and its layer2 stream to 8 and 16 of 64 and
    128 channels, and nothing could stop it short of a wider channel_step (Torch-Pruning's
    max_pruning_ratio, NNI's per-op sparsity)."""
    model, x = _resnet()
    collapsed = fxprune.prepare(model, x)
    pruner = fxprune.get_method("magnitude")(collapsed, 0.5)
    pruner.step()
    assert min(k / size for k, size in _kept_counts(collapsed)) < 0.25  # what the floor stops
    pm = fxprune.prepare(model, x)
    pruner = fxprune.get_method("magnitude")(pm, 0.5, min_kept=0.25)
    pruner.step()
    pruner.finalize_masks()
    assert all(k >= math.ceil(0.25 * size) for k, size in _kept_counts(pm))
    small = fxprune.finalize(pm)
    ratio = fxprune.count_flops(small, x) / fxprune.count_flops(model, x)
    assert pruner.cost() == pytest.approx(ratio, rel=1e-9) and ratio <= 0.5
    with torch.no_grad():
        torch.testing.assert_close(small(*x), pm.eval()(*x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("build", [
    lambda pm: CCP(pm, target=0.3, mode="adaptive", collect=2, rounds=1, channel_step=1,
                   min_kept=0.5),
    lambda pm: CCP(pm, ratio=0.6, collect=2, rounds=2, round_every=1, channel_step=1,
                   min_kept=0.5),
    lambda pm: CUCB(pm, target=0.3, mode="budget", warmup=1, explore=3, channel_step=1,
                    execution="masked", min_kept=0.5),
], ids=["ccp-adaptive", "ccp-ratio", "cucb-budget"])
def test_ccp_and_cucb_keep_the_floor_too(build):
    pm = prepared()
    pruner = build(pm)
    _train(pm, pruner, 4)
    pruner.finalize_masks()
    counts = _kept_counts(pm)
    assert all(k >= math.ceil(0.5 * size) for k, size in counts), counts
    assert any(k < size for k, size in counts)  # it pruned


class _TwoPieces(nn.Module):
    """Two convs whose outputs are concatenated into one group (a depthwise conv reads it)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.b = nn.Conv2d(3, 16, 3, padding=1)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.pw = nn.Conv2d(32, 32, 1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        y = torch.relu(self.pw(torch.relu(self.dw(torch.cat([self.a(x), self.b(x)], 1)))))
        return self.fc(y.mean((2, 3)))


@pytest.mark.parametrize("method, kwargs", [
    ("magnitude", dict(target=0.4, prune_at=1)),
    ("smcp", dict(target=0.4, warmup=0, ramp=1, update_every=1)),
    ("ccp", dict(mode="adaptive", target=0.4, prune_at=1, collect=1)),
    ("ccp", dict(ratio=0.5, prune_at=1, collect=1)),
    ("cucb", dict(target=0.4, mode="budget", warmup=1, explore=2, execution="masked")),
    ("cucb", dict(rho=0.5, warmup=1, explore=2, execution="masked")),
], ids=["magnitude", "smcp", "ccp-adaptive", "ccp-ratio", "cucb-budget", "cucb-ratio"])
def test_min_kept_holds_for_each_layer_that_writes_part_of_a_group(method, kwargs):
    """break210 F1: the floor held per group only, so a conv writing half of a concatenated
    group went from 16 channels to 1 at min_kept=0.5 (its channels looked unimportant to the
    layers reading them) while the group kept its 16 of 32."""
    torch.manual_seed(0)
    net = _TwoPieces()
    with torch.no_grad():  # b's channels matter little to their readers
        net.dw.weight[16:].mul_(1e-3)
        net.pw.weight[:, 16:].mul_(1e-3)
    pm = fxprune.prepare(net, (torch.randn(1, 3, 16, 16),))
    pruner = fxprune.get_method(method)(pm, min_kept=0.5, channel_step=1, **kwargs)
    for step in range(3):
        torch.manual_seed(step)
        nn.functional.cross_entropy(pm(torch.randn(4, 3, 16, 16)), torch.arange(4)).backward()
        pruner.step()
    pruner.finalize_masks()
    small = fxprune.finalize(pm)  # (checked equal to the masked model)
    widths = {name: small.get_submodule(name).out_channels for name in ("a", "b", "dw", "pw")}
    assert widths["a"] >= 8 and widths["b"] >= 8 and widths["pw"] >= 16, widths
    assert widths["a"] + widths["b"] < 32, widths  # it pruned the concatenated group


def test_keeping_every_prunable_layer_says_keep_not_the_model(tmp_path):
    """break210 F3: a keep= that covered every group that could be pruned was refused as if the
    model had none ("see fxprune.summary(prepared)", a Python object a recipe user lacks)."""
    pm = fxprune.prepare(_TwoPieces(), (torch.randn(1, 3, 16, 16),), keep=["a", "b", "pw"])
    with pytest.raises(ValueError, match=r"^the prepared model has no prunable channel group: "
                                         r"prepare\(keep=\.\.\.\) keeps the 2 that could be "
                                         r"pruned \(a, pw\), the others are kept for their "
                                         r"structure .*; keep fewer layers$"):
        fxprune.SMCP(pm, 0.5)
    cfg = resolve_config(TINY_RECIPE, [f"out={tmp_path / 'k'}", "optim.epochs=1",
                                       "prune.method=smcp",
                                       "prune.keep=[conv1, layer1, layer2, layer3]"])
    with pytest.raises(ConfigError, match=r"^prune.keep keeps every channel group that could be "
                                          r"pruned \(conv1, .*\), the others are kept for their "
                                          r"structure: nothing is left to prune; keep fewer "
                                          r"layers$"):
        train(cfg)
    assert not (tmp_path / "k").exists()


def test_keep_given_to_a_method_says_it_is_prepares():
    """break210 F6: PruningCallback("smcp", keep=[...]) (a recipe's prune.keep) was refused as
    an unknown argument, without where it goes."""
    from fxprune.integrations.lightning import PruningCallback

    pm = fxprune.prepare(_TwoPieces(), (torch.randn(1, 3, 16, 16),))
    for call in (lambda: PruningCallback("smcp", target=0.5, keep=["a"]),
                 lambda: fxprune.SMCP(pm, 0.5, keep=["a"]),
                 lambda: fxprune.get_method("ccp")(pm, ratio=0.5, keep=["a"])):
        with pytest.raises(TypeError, match=r"'keep' is not an argument of the method \(keep= is "
                                            r"fxprune.prepare's: prepare the model with it, "
                                            r"fxprune.prepare\(model, example_inputs, keep=\.\.\.\)\); "
                                            r"it takes target, "):
            call()


class _PieceAndSlice(_TwoPieces):
    """A concatenated group (a, b: 16 each) whose first 8 channels, a slice of a's piece, a
    conv also reads: floors on a part and on a part of it."""

    def __init__(self):
        super().__init__()
        del self.pw
        self.side = nn.Conv2d(8, 4, 1)
        self.fc = nn.Linear(36, 10)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], 1)
        return self.fc(torch.cat([torch.relu(self.dw(y)).mean((2, 3)),
                                  self.side(y[:, :8]).mean((2, 3))], 1))


def test_nested_parts_need_no_more_than_their_floors():
    """review212 R1: a piece (16 channels) and a slice of it (8) at min_kept=0.5 were counted
    apart: CCP at ratio=0.5 kept 20 of the group's 32 where 16 meet every floor, and the
    ranking's fewest moved between 16 and 20 with the scores."""
    from fxprune.units import UnitIndex

    torch.manual_seed(0)
    pm = fxprune.prepare(_PieceAndSlice(), (torch.randn(1, 3, 8, 8),))
    index = UnitIndex(pm, 0.5)
    assert sorted((len(p), need) for p, need in index.piece_floors(0)) == [(8, 4), (16, 8), (16, 8)]
    scores = np.zeros(32)
    scores[8:16], scores[:8] = 10, np.arange(8)  # a's best lie outside the slice
    for s in (np.zeros(32), scores):
        order, fewest = index.ranking(0, s)
        top = set(order[:fewest].tolist())
        assert fewest == 16 and len(top & set(range(8))) >= 4 and len(top & set(range(16))) >= 8
    for kwargs in (dict(ratio=0.5), dict(mode="adaptive", target=0.5)):
        pm = fxprune.prepare(_PieceAndSlice(), (torch.randn(1, 3, 8, 8),))
        pruner = CCP(pm, channel_step=1, min_kept=0.5, collect=2, prune_at=2, **kwargs)
        for step in range(3):
            torch.manual_seed(step)
            nn.functional.cross_entropy(pm(torch.randn(8, 3, 8, 8)), torch.arange(8)).backward()
            pruner.step()
        pruner.finalize_masks()
        mask = fxprune.channel_groups(pm)[0].mask
        assert int(mask.sum()) == 16, (kwargs, mask)
        assert mask[:8].sum() >= 4 and mask[:16].sum() >= 8 and mask[16:].sum() >= 8
        fxprune.finalize(pm)


def test_an_index_pickled_before_the_floor_per_layer_keeps_the_groups_alone():
    """An index saved (with its pruner) before min_kept held per layer goes on as its run
    began: the group's floor alone."""
    import pickle

    from fxprune.units import UnitIndex

    index = UnitIndex(fxprune.prepare(_TwoPieces(), (torch.randn(1, 3, 16, 16),)), 0.5)
    state = dict(index.__dict__)
    del state["min_kept"]
    old = UnitIndex.__new__(UnitIndex)
    old.__setstate__(state)
    assert old.min_kept == 0.0 and all(need == 1 for _, need in old.piece_floors(0))
    assert old.min_counts == index.min_counts
    assert pickle.loads(pickle.dumps(index)).piece_floors(0)[0][1] == 8


def test_a_group_its_structure_keeps_is_named_for_that_not_for_keep():
    """review212 R2: a group kept whole by an integer index on one of its channels was named
    for keep= when keep= marked an earlier channel of it, and 'keep fewer layers' advised."""
    class Indexed(_TwoPieces):
        def forward(self, x):
            ya, yb = self.a(x), self.b(x)
            z = torch.relu(self.pw(torch.relu(self.dw(torch.cat([ya, yb], 1)))))
            return self.fc(z.mean((2, 3))) + yb[:, 0].mean((1, 2)).unsqueeze(1)

    x = (torch.randn(1, 3, 16, 16),)
    alone = _kept(fxprune.prepare(Indexed(), x))["a"]
    pm = fxprune.prepare(Indexed(), x, keep=["a", "pw"])
    assert _kept(pm)["a"] == alone and "prepare(keep=" not in alone
    with pytest.raises(ValueError, match=r"keeps the 1 that could be pruned \(pw\)"):
        fxprune.SMCP(pm, 0.5, channel_step=1)


def test_ccp_keeps_as_few_as_the_narrowest_model_where_parts_cross():
    """break213 F2: on shufflenet_v2's groups (parts from chunk and channel shuffle, two of them
    crossing) CCP summed the parts' floors and kept every stage group whole at min_kept=0.5,
    while the constructor's narrowest model, which accepts a target, kept fewer: the run failed
    at its pruning step. Its lowest count per group is now the narrowest model's."""
    from fxprune.allocation import uniform_counts

    pm = fxprune.prepare(torchvision.models.shufflenet_v2_x0_5(num_classes=10).eval(),
                         (torch.randn(1, 3, 32, 32),))
    pruner = CCP(pm, mode="adaptive", target=0.9, min_kept=0.5, channel_step=8)
    for i, group in enumerate(pruner.index.groups):  # (every channel alive: positions as they are)
        floors = pruner.index.piece_floors(i)
        constraints = ([p.tolist() for p, _ in floors], [need for _, need in floors])
        assert pruner._counts(i, group.size, constraints)[0] == \
            uniform_counts(pruner.index, i, 8)[1][0], group.name
    pruner.finalize_masks()


def test_the_greedy_path_grows_from_the_floor_where_crossing_sets_stop_it():
    """break213 F2: where keep_one_of sets cross, the greedy elimination can stop above counts
    that meet them (it raised); those counts grow from the floor subset, every set's count
    held."""
    import fxprune.methods.ccp as ccp_module

    grown = []
    real = ccp_module._grown
    rng = np.random.default_rng(0)
    for _ in range(400):
        sets = [sorted(rng.choice(7, rng.integers(2, 4), replace=False).tolist()) for _ in range(3)]
        need = [int(rng.integers(1, len(s) + 1)) for s in sets]
        g = rng.normal(size=(20, 7))
        S = ccp_module.keep_form(rng.normal(size=7), g.T @ g / 20)
        floor = ccp_module._floor_subset(7, sets, need)
        calls = []
        ccp_module._grown = lambda *a: calls.append(1) or real(*a)
        try:
            out = ccp_module.best_subsets(S, range(len(floor), 8), sets, need)
        finally:
            ccp_module._grown = real
        assert sorted(out) == list(range(len(floor), 8))
        for p, (beta, value) in out.items():
            assert beta.sum() == p and all(beta[s].sum() >= q for s, q in zip(sets, need))
            assert value == pytest.approx(ccp_module.objective(S, beta))
        grown += calls
    assert grown  # the path that raised before was taken


def test_the_qp_keeps_as_many_of_a_set_as_it_needs():
    """CCP's solvers with a count per constraint set (a layer's min_kept floor): the exhaustive
    optimum and the greedy path with swaps meet it; a count outside 1..the set's size is
    refused."""
    from fxprune.methods.ccp import best_subsets, keep_form, solve_exhaustive

    rng = np.random.default_rng(0)
    a, g = rng.normal(size=10), rng.normal(size=(40, 10))
    S = keep_form(a, g.T @ g / 40)
    piece = [0, 1, 2, 3]
    free, _ = solve_exhaustive(S, 4)
    for need in (1, 2, 3):
        exact, value = solve_exhaustive(S, 4, [piece], [need])
        assert exact[piece].sum() >= need
        subsets = [np.isin(np.arange(10), c).astype(float)
                   for c in itertools.combinations(range(10), 4) if len(set(c) & set(piece)) >= need]
        brute = min(float(b @ S @ b) for b in subsets)
        assert value == pytest.approx(brute)
        for p, (beta, _) in best_subsets(S, [4, 6], [piece], [need]).items():
            assert beta.sum() == p and beta[piece].sum() >= need
    assert free[piece].sum() < 3  # what the count changes
    with pytest.raises(ValueError, match=r"need gives the fewest channels kept of each "
                                         r"keep_one_of set, one count in 1\.\.its size per set"):
        solve_exhaustive(S, 4, [piece], [5])


def test_a_target_below_the_floor_says_min_kept_and_min_kept_out_of_range_is_refused():
    model, x = _resnet()
    pm = fxprune.prepare(model, x)
    with pytest.raises(fxprune.InfeasibleBudget, match=r"channel_step=8, min_kept=0\.6\); raise "
                                                       r"the target to at least 0\.\d+ or lower "
                                                       r"channel_step \(at 1 the floor is 0\.\d+\) "
                                                       r"or min_kept \(at 0 the floor is 0\.\d+\)$"):
        fxprune.SMCP(pm, 0.2, min_kept=0.6)
    for bad, message in ((1.5, r"min_kept must be <= 1, got 1\.5"),
                         (-0.1, r"min_kept must be >= 0"), (True, r"min_kept must be a finite")):
        with pytest.raises(ValueError, match=message):
            fxprune.SMCP(pm, 0.5, min_kept=bad)
    assert fxprune.SMCP(pm, 0.5, min_kept=0.25).run_settings()["min_kept"] == 0.25
    small = prepared()  # a per-group ratio below the floor would be the floor, unsaid
    with pytest.raises(ValueError, match=r"^ratio=0\.2 keeps less of every group than "
                                         r"min_kept=0\.5, the floor every group keeps: raise "
                                         r"ratio or lower min_kept$"):
        CCP(small, ratio=0.2, channel_step=1, min_kept=0.5)
    with pytest.raises(ValueError, match=r"^rho=0\.2 keeps less"):
        CUCB(small, rho=0.2, channel_step=1, min_kept=0.5)


# ---------------------------------------------------------------------------- model.init
def test_a_recipe_prunes_trained_weights_from_model_init(tmp_path):
    """break205 F3: a recipe always began from random weights; the classic flow, prune a
    trained model then fine-tune, had no key."""
    from fxprune.run_io import file_sha256

    def cfg(out, *overrides):
        return resolve_config(TINY_RECIPE, [f"out={out}", "optim.epochs=1", *overrides])

    train(cfg(tmp_path / "dense"))  # a dense run: its checkpoint holds the model's state_dict
    trained = tmp_path / "dense" / "checkpoint.pt"
    weights = torch.load(trained, weights_only=True)["model"]
    results = train(cfg(tmp_path / "from", f"model.init={trained}", "optim.lr=1e-9",
                        "optim.weight_decay=0"))
    assert results["model_init"] == {"file": str(trained), "sha256": file_sha256(trained)}
    again = torch.load(tmp_path / "from" / "model_dense.pt", weights_only=False)
    torch.testing.assert_close(again.conv1.weight, weights["conv1.weight"], rtol=0, atol=1e-6)
    # a plain state_dict file, pruned from
    plain = tmp_path / "plain.pt"
    torch.save(weights, plain)
    pruned = train(cfg(tmp_path / "pruned", f"model.init={plain}", "prune.method=smcp",
                       "prune.target=0.6", "prune.channel_step=1", "prune.warmup=1",
                       "prune.ramp=3", "prune.update_every=1"))
    assert pruned["model_init"]["sha256"] == file_sha256(plain) and pruned["flops_ratio"] <= 0.6
    (tmp_path / "notes.yaml").write_text("a: 1\n")
    for value, says in (
            (tmp_path / "nowhere.pt", r"model.init .*nowhere.pt is not a file: give the "
                                      r"state_dict file"),
            (tmp_path / "notes.yaml", r"model.init .*notes.yaml is not a file torch.load reads "
                                      r"with weights_only=True"),
            (tmp_path / "dense" / "results.json", r"is not a file torch.load reads")):
        with pytest.raises(ConfigError, match=says):
            train(cfg(tmp_path / "bad", f"model.init={value}"))
    with pytest.raises(ConfigError, match=r"model.init .*plain.pt does not fit model "
                                          r"resnet_fmnist as the recipe builds it \(other shapes "
                                          r"at conv1.weight, .*\); give the weights of this model"):
        train(cfg(tmp_path / "wide", f"model.init={plain}", "model.widths=[2, 8, 8]"))
    with pytest.raises(ConfigError, match=r"model.init .*plain.pt holds narrower layers than "
                                          r"model resnet_fmnist .*, or this model built narrower "
                                          r"\(model.widths as when it was trained\)$"):
        train(cfg(tmp_path / "wide", f"model.init={plain}", "model.widths=[8, 8, 8]"))
    torch.save({"w": [1, 2]}, tmp_path / "odd.pt")
    with pytest.raises(ConfigError, match=r"holds a dict, not a state_dict"):
        train(cfg(tmp_path / "odd", f"model.init={tmp_path / 'odd.pt'}"))
    # review208 R7, break207 F3, F4: a DDP or compiled model's keys load; a pruning run's
    # checkpoint (its masks) and NaN weights are said as such
    wrapped = tmp_path / "ddp.pt"
    torch.save({f"module.{k}": v for k, v in weights.items()}, wrapped)
    assert train(cfg(tmp_path / "ddp", f"model.init={wrapped}"))["model_init"]["file"] == \
        str(wrapped)
    with pytest.raises(ConfigError, match=r"holds a prepared model's masks \(a pruning run's "
                                          r"checkpoint\): give the dense weights"):
        train(cfg(tmp_path / "m", f"model.init={tmp_path / 'pruned' / 'checkpoint.pt'}"))
    # break209 F4: stacked prefixes, a LightningModule with more than its model, a timm
    # checkpoint's arguments, another classifier
    lightning = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {**{f"model._orig_mod.{k}": v for k, v in weights.items()},
                               "criterion.weight": torch.ones(10)}}, lightning)
    assert train(cfg(tmp_path / "lt", f"model.init={lightning}"))["model_init"]
    import argparse

    torch.save({"state_dict": weights, "args": argparse.Namespace(lr=0.1)}, tmp_path / "timm.pt")
    with pytest.raises(ConfigError, match=r"timm.pt is not a file torch.load reads with "
                                          r"weights_only=True \(it holds Python objects beyond "
                                          r"tensors and plain data") as e:
        train(cfg(tmp_path / "t", f"model.init={tmp_path / 'timm.pt'}"))
    assert "\x1b" not in str(e.value)
    with pytest.raises(ConfigError, match=r"its `fc` \(the classifier\) is not the one model "
                                          r"resnet_fmnist builds here \(other shapes\); give "
                                          r"weights trained for model.num_classes classes"):
        train(cfg(tmp_path / "h", f"model.init={plain}", "model.num_classes=4"))
    nan = tmp_path / "nan.pt"
    torch.save({k: v * float("nan") if v.is_floating_point() else v
                for k, v in weights.items()}, nan)
    with pytest.raises(ConfigError, match=r"holds NaN or inf in conv1.weight"):
        train(cfg(tmp_path / "n", f"model.init={nan}"))
    # break210 F4, F5: the dense run's own model file (a pickled module) and a finalized
    # model's weights were said as a script's arguments and as the recipe's widths
    dense_file = tmp_path / "dense" / "model_dense.pt"
    with pytest.raises(ConfigError, match=r"model_dense.pt is not a file torch.load reads with "
                                          r"weights_only=True \(it holds Python objects beyond "
                                          r"tensors and plain data, `fxprune.models.ResNetFMNIST` "
                                          r"first: a whole model saved with torch.save\(model\), "
                                          r".*\); give .*dense.checkpoint.pt, the run's checkpoint, "
                                          r"which holds its weights, or save the weights alone"):
        train(cfg(tmp_path / "md", f"model.init={dense_file}"))
    small = torch.load(tmp_path / "pruned" / "model_pruned.pt", weights_only=False)
    torch.save(small.state_dict(), tmp_path / "small.pt")
    with pytest.raises(ConfigError, match=r"small.pt holds narrower layers than model "
                                          r"resnet_fmnist as the recipe builds it \(at .*\): a "
                                          r"pruned \(finalized\) model's weights, which fit only "
                                          r"a model built at the widths they were pruned to "
                                          r"\(resnet_fmnist: model.widths and "
                                          r"model.inner_widths;"):
        train(cfg(tmp_path / "s", f"model.init={tmp_path / 'small.pt'}"))


def test_a_floor_that_keeps_every_group_whole_is_named_not_the_step_or_the_cost_model(
        tmp_path, monkeypatch):
    """review208 R2: min_kept=0.95 was "channel_step=8 is at least as wide as every prunable
    group (16, 32, ...)", min_kept=1 "check the cost model", and a latency recipe timed its
    whole table before the refusal."""
    said = r"min_kept=0\.95 keeps every prunable group whole at channel_step=8, so none can be " \
           r"pruned and the model stays dense"
    with pytest.raises(fxprune.InfeasibleBudget, match=said + r", above target 0\.5; lower "
                                                      r"min_kept$"):
        fxprune.SMCP(prepared(), target=0.5, min_kept=0.95)
    with pytest.raises(fxprune.InfeasibleBudget, match=said + r"; lower min_kept$"):
        CCP(prepared(), ratio=0.97, min_kept=0.95)
    with pytest.raises(fxprune.InfeasibleBudget, match=r"min_kept=1 keeps every prunable group "
                                                       r"whole at channel_step=1"):
        fxprune.SMCP(prepared(), target=0.5, min_kept=1.0, channel_step=1)
    import fxprune.train as train_module

    monkeypatch.setattr(train_module, "latency_cost",
                        lambda *a, **k: pytest.fail("timed before the floor was judged"))
    cfg = resolve_config(TINY_RECIPE, [f"out={tmp_path / 'run'}", "prune.method=smcp",
                                       "prune.cost=latency", "prune.channel_step=4",
                                       "prune.min_kept=1.0", "prune.target=0.5"])
    with pytest.raises(ConfigError, match=r"prune \(smcp\): min_kept=1 keeps every prunable "
                                          r"group whole"):
        train(cfg)


def test_keep_follows_a_modules_second_name_and_refuses_the_model_itself():
    """break207 F5: a module's second name ("alias" of c2) was "holds no channels"; F8: the
    model itself was "a copy, or another model's?", and copy_masks between models prepared with
    other keep= said they must come from the same model, which they did."""
    class Alias(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2, self.head = nn.Conv2d(3, 16, 3), nn.Conv2d(16, 16, 3), nn.Linear(16, 4)
            self.alias = self.c2

        def forward(self, x):
            return self.head(self.alias(torch.relu(self.c1(x))).mean((2, 3)))

    model, x = Alias().eval(), (torch.randn(2, 3, 12, 12),)
    pm = fxprune.prepare(model, x, keep=["alias"])
    assert _kept(pm)["c2"] == "prepare(keep=...) names `alias` (`c2`)"
    for whole in (model, Alias):
        with pytest.raises(ValueError, match=r"^prepare: keep= names the whole model: nothing "
                                             r"would be pruned"):
            fxprune.prepare(model, x, keep=[whole])
    with pytest.raises(ValueError, match=r"prepared from the same model and example inputs, "
                                         r"with the same keep="):
        fxprune.copy_masks(pm, fxprune.prepare(model, x))


def test_a_state_loaded_under_another_min_kept_says_that_alone():
    """break209 F2: the half-width price that fingerprints the cost model moved with the floor,
    so a min_kept change was also said as "another cost model pricing (... another latency
    table ...?)"."""
    import warnings

    pm = prepared()
    state = fxprune.SMCP(pm, target=0.5, channel_step=1).state_dict()
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        fxprune.SMCP(pm, target=0.5, channel_step=1, min_kept=0.6).load_state_dict(state)
    text = " ".join(str(w.message) for w in said)
    assert "min_kept 0.0 -> 0.6" in text and "cost model pricing" not in text, text
