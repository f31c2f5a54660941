"""passes/follow_mode.py: code that reads ``self.training`` keeps following .train()/.eval()
after prepare and finalize, instead of being frozen in the mode the model was traced in."""
from __future__ import annotations

import io
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxprune
from helpers import assert_plain, random_masks
from torchvision.ops import StochasticDepth, stochastic_depth  # a global name: torch.fx wraps it

X = torch.randn(4, 3, 12, 12)


class OwnBatchNorm(nn.BatchNorm2d):
    """A norm with its own forward (as timm's BatchNormAct2d): the flag is read in Python."""

    def forward(self, x):
        return F.relu(F.batch_norm(x, self.running_mean, self.running_var, self.weight,
                                   self.bias, self.training, 0.1, self.eps))


class Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Conv2d(8, 5, 1)

    def forward(self, x):
        return self.fc(F.dropout(x, 0.5, training=self.training))


class Net(nn.Module):
    def __init__(self, head_dropout=True):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = OwnBatchNorm(8)
        self.mid = nn.Conv2d(8, 8, 3, padding=1)
        self.head = Head()
        self.head_dropout = head_dropout

    def forward(self, x):
        x = F.relu(self.mid(self.norm(self.conv(x))))
        x = F.dropout2d(x, 0.25, self.training) if self.head_dropout else x  # the model's own
        return self.head(x)


def net():
    torch.manual_seed(0)
    m = Net()
    m.norm.running_mean.uniform_(-1, 1)
    m.norm.running_var.uniform_(0.5, 2)
    return m


ROW = fxprune.rules.ChannelAffine(("weight", "bias", "running_mean", "running_var"))


@pytest.mark.parametrize("prepared_in", ["train", "eval"])
def test_both_modes_follow_the_flag_whichever_mode_the_model_was_prepared_in(prepared_in):
    model = net().train(prepared_in == "train")
    pm = fxprune.prepare(model, (X,))
    model.eval(), pm.eval()
    torch.testing.assert_close(pm(X), model(X), rtol=0, atol=0)  # running stats, no dropout
    # train mode: batch statistics and dropout; the dropout calls became modules
    model.train(), pm.train()
    torch.manual_seed(1)
    want = model(X)
    torch.manual_seed(1)
    torch.testing.assert_close(pm(X), want, rtol=0, atol=0)
    kinds = {type(m) for m in pm.modules()}
    assert {nn.Dropout, nn.Dropout2d} <= kinds and OwnBatchNorm in kinds


def prepared_silently_following_both_modes(model, x, prepared_in: str):
    """``model`` prepared in ``prepared_in`` mode with no warning (no "reads self.training"),
    its prepared form computing what it does in both modes, random ops alike (same seed)."""
    import warnings

    model.train(prepared_in == "train")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pm = fxprune.prepare(model, (x,))
    for mode in ("train", "eval"):
        model.train(mode == "train"), pm.train(mode == "train")
        torch.manual_seed(1)
        want = model(x)
        torch.manual_seed(1)
        torch.testing.assert_close(pm(x), want, rtol=0, atol=0)
    return pm


class TorchDropouts(nn.Module):
    """torch's own dropouts, ``torch.dropout(x, p, train)`` and its alpha forms."""

    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = torch.feature_alpha_dropout(self.conv(x), 0.25, self.training)
        y = torch.alpha_dropout(torch.relu(y), 0.1, train=self.training)
        return torch.dropout(self.head(y), 0.5, self.training)


@pytest.mark.parametrize("prepared_in", ["train", "eval"])
def test_torchs_own_dropouts_follow_the_flag(prepared_in):
    """break94 #6: ``torch.dropout(x, p, self.training)`` has no Python signature to bind: it
    was not made a module as F.dropout is, and stayed in the prepare mode (warned; prepared in
    eval mode, train mode's output was 0.42 off)."""
    torch.manual_seed(0)
    pm = prepared_silently_following_both_modes(TorchDropouts(), X, prepared_in)
    assert {nn.Dropout, nn.FeatureAlphaDropout, nn.AlphaDropout} <= {type(m) for m in pm.modules()}


def test_a_module_that_reads_the_flag_is_one_call_and_kept_whole_until_it_has_a_row():
    pm = fxprune.prepare(net(), (X,))
    (conv,) = [g for g in fxprune.channel_groups(pm) if g.producers == ["conv"]]
    assert not conv.prunable
    assert "reads self.training at" in conv.reason and "OwnBatchNorm" in conv.reason
    assert "test_follow_mode.py" in conv.reason  # the line that reads it
    pm = fxprune.prepare(net(), (X,), rules={OwnBatchNorm: ROW})
    (conv,) = [g for g in fxprune.channel_groups(pm) if g.producers == ["conv"]]
    assert conv.prunable


def test_finalized_model_follows_the_flag_and_is_exact_in_eval():
    model = net().train()
    pm = fxprune.prepare(model, (X,), rules={OwnBatchNorm: ROW})
    random_masks(pm, 0.5, 0)
    small = fxprune.finalize(pm)
    assert_plain(small)  # the dropout modules too: named after their nodes
    assert small.get_submodule("norm").num_features < 8
    pm.eval(), small.eval()
    torch.testing.assert_close(small(X), pm(X))
    small.train()
    torch.manual_seed(2)
    a = small(X)
    torch.manual_seed(3)
    assert not torch.equal(a, small(X))  # dropout is live in train mode
    # saved and loaded (the finalized model pickles as a plain GraphModule, its code traced
    # again on load): still one call per norm, still following the flag
    buf = io.BytesIO()
    torch.save(small, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False).eval()
    torch.testing.assert_close(loaded(X), small.eval()(X), rtol=0, atol=0)
    loaded.train()
    torch.manual_seed(2)
    torch.testing.assert_close(loaded(X), a, rtol=0, atol=0)


def test_prepared_model_saved_and_loaded_still_follows_the_flag():
    pm = fxprune.prepare(net().train(), (X,))
    buf = io.BytesIO()
    torch.save(pm, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    loaded.eval(), pm.eval()
    torch.testing.assert_close(loaded(X), pm(X), rtol=0, atol=0)
    loaded.train()
    torch.manual_seed(4)
    a = loaded(X)
    torch.manual_seed(5)
    assert not torch.equal(a, loaded(X))



def test_every_modules_flag_survives_save_and_load():
    """The containers torch.fx stands in for traced-through modules, too (``head`` here)."""
    model = net().train()
    model.head.eval()
    pm = fxprune.prepare(model, (X,))
    buf = io.BytesIO()
    torch.save(pm, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    flags = {name: m.training for name, m in pm.named_modules()}
    assert flags["head"] is False
    assert {name: m.training for name, m in loaded.named_modules()} == flags

def test_the_users_modes_are_left_as_they_were():
    model = net().train()
    model.head.eval()  # mixed on purpose
    before = {name: m.training for name, m in model.named_modules()}
    pm = fxprune.prepare(model, (X,))
    assert {name: m.training for name, m in model.named_modules()} == before
    assert pm.training and not pm.get_submodule("head").training
    assert not pm.get_submodule("head.dropout_module").training


class AuxNet(nn.Module):
    """An auxiliary output in the model's own forward, as torchvision's GoogLeNet."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.aux = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        x = self.conv(x)
        if self.training:
            return x, self.aux(x)
        return x


def test_the_models_own_forward_reading_the_flag_is_kept_as_prepared_with_a_warning():
    with pytest.warns(UserWarning, match=r"AuxNet.forward reads self.training \(.*test_follow_mode"
                                         r".py:\d+\).*in eval mode.*prepare it in train mode"):
        pm = fxprune.prepare(AuxNet().eval(), (X,))
    assert isinstance(pm.train()(X), torch.Tensor)  # the eval branch, in both modes
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a model that does not read the flag: no warning
        fxprune.prepare(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout()), (X,))


class AuxHeadNet(AuxNet):
    """GoogLeNet's auxiliary heads: submodules the model's own forward calls in train mode only."""

    def __init__(self):
        super().__init__()
        self.aux = nn.Sequential(nn.Conv2d(8, 6, 1), nn.ReLU(), nn.Conv2d(6, 2, 1))


def test_a_head_called_in_train_mode_only_is_traced_through_and_pruned():
    """break89 F1: prepared in train mode (as the warning above advises for auxiliary heads),
    GoogLeNet's and Inception v3's heads had nodes in one mode's graph only, so each was taken
    for a module whose own forward reads self.training: called as one op, its channels kept
    whole (googlenet 49 prunable groups instead of 57), blamed on a line that does not read the
    flag. The model's own forward reads it: the warning names that line."""
    import inspect
    lines, start = inspect.getsourcelines(AuxHeadNet.forward)
    call = start + next(i for i, line in enumerate(lines) if "self.aux(x)" in line)
    with pytest.warns(UserWarning, match=rf"AuxHeadNet.forward reads self.training \(.*test_follow_mode.py:{call}\)"):
        pm = fxprune.prepare(AuxHeadNet().train(), (X,))
    groups = {g.name: g for g in fxprune.channel_groups(pm)}
    assert groups["aux.0"].prunable, groups["aux.0"].reason
    assert not any(n.op == "call_module" and n.target == "aux" for n in pm.graph.nodes)


class OwnBN(nn.BatchNorm2d):
    """A norm subclass with a forward of its own (as detection libraries write)."""

    def forward(self, x):
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            self.training, self.momentum, self.eps)


class FunctionalAuxHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(8, 8, 1), OwnBN(8), nn.Linear(8, 2)

    def forward(self, x):
        x = F.dropout(torch.relu(self.bn(self.conv(x))).mean((2, 3)), 0.5, self.training)
        return self.fc(x)


class FunctionalAuxNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.aux, self.head = nn.Conv2d(3, 8, 3), FunctionalAuxHead(), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        return (self.head(x), self.aux(x)) if self.training else self.head(x)


def test_a_head_called_in_one_mode_only_still_follows_the_flag_in_its_own_code():
    """break92 F3: once a head called in train mode only was traced through, what its own code
    does with self.training (F.dropout(x, p, self.training), a norm calling F.batch_norm with
    it) was frozen in train mode: in eval mode it dropped out and updated its running
    statistics, and finalize blamed the user's dropout. A third trace, with the heads alone
    flipped, finds it as the two-mode comparison does for every other module."""
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match=r"FunctionalAuxNet.forward reads self.training"):
        pm = fxprune.prepare(FunctionalAuxNet().train(), (X,))
    pm.eval()
    stats = pm.get_submodule("aux.bn").running_mean.clone()
    with torch.no_grad():
        first, again = pm(X), pm(X)
    assert torch.equal(first[1], again[1])  # no dropout in eval mode
    assert torch.equal(stats, pm.get_submodule("aux.bn").running_mean)
    assert any(n.op == "call_module" and "dropout" in n.target for n in pm.graph.nodes)
    group = next(g for g in fxprune.channel_groups(pm) if g.prunable)
    group.mask[::2] = 0
    fxprune.finalize(pm)  # exact in eval mode


class TupleInTrainHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        y = self.fc(x.mean((2, 3)))
        return (y, y * 2) if self.training else y


class DropsOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return F.dropout(self.conv(x), 0.5, self.training)


class ReadsTheHeadsTuple(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.aux, self.block = nn.Conv2d(3, 8, 3), TupleInTrainHead(), DropsOut()

    def forward(self, x):
        x = self.stem(x)
        extra = None
        if self.training:
            out = self.aux(x)
            extra = out[len(out) - 1]  # the head's train-mode tuple, read as one
        return self.block(x), extra


def test_a_head_that_cannot_be_traced_alone_in_the_other_mode_keeps_what_the_full_flip_found():
    """break93 #1: when the heads-only trace failed (the caller reads the head's train-mode
    tuple), its failure replaced what the full flip had found: a dropout of the main path stayed
    in train mode (pm.eval() random, 0.025 off). It stands now; the head's own use of the flag is
    said to be unchecked."""
    torch.manual_seed(0)
    model = ReadsTheHeadsTuple().train()
    with pytest.warns(UserWarning, match=r"`aux` is called in train mode only, and its code could "
                                         r"not be traced alone in the other mode"):
        pm = fxprune.prepare(model, (X,))
    pm.eval(), model.eval()
    with torch.no_grad():
        assert torch.equal(pm(X)[0], pm(X)[0])
        torch.testing.assert_close(pm(X)[0], model(X)[0])


class FrozenNormBackbone(nn.Module):
    """mmdet's norm_eval: ``train()`` keeps the backbone's BatchNorms in eval mode."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))

    def train(self, mode=True):
        super().train(mode)
        self.bn.eval()
        return self


def test_a_train_override_the_prepared_model_cannot_keep_is_named():
    """break90 F3: torch.fx rebuilds a traced-through module as a plain nn.Module, so its
    train() override is gone: after pm.train() the frozen BatchNorms updated their statistics,
    without a word."""
    model = nn.Sequential(FrozenNormBackbone(), nn.Conv2d(8, 4, 1)).train()
    with pytest.warns(UserWarning, match=r"`0` \(FrozenNormBackbone\) overrides train\(\)/eval\(\), "
                                         r"which the prepared and finalized models do not keep"):
        pm = fxprune.prepare(model, (X,))
    assert not pm.get_submodule("0.bn").training  # the mode it had, as prepared
    with warnings.catch_warnings():  # a leaf keeps its class, and its override
        warnings.simplefilter("error")
        pm = fxprune.prepare(model, (X,), leaf_modules=[FrozenNormBackbone])
    assert not pm.train().get_submodule("0").bn.training

    class ClearsACache(FrozenNormBackbone):  # timm's levit attention: modes as nn.Module sets them
        def train(self, mode=True):
            nn.Module.train(self, mode)
            self.cache = {}
            return self

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fxprune.prepare(nn.Sequential(ClearsACache(), nn.Conv2d(8, 4, 1)), (X,))

    class SetsAFlag(FrozenNormBackbone):  # break93 #2: a flag its forward reads, modes as usual
        def train(self, mode=True):
            nn.Module.train(self, mode)
            self.calibrated = not mode
            return self

    class InferenceOnly(FrozenNormBackbone):  # break93 #3: prepare crashed calling it
        def train(self, mode=True):
            if mode:
                raise RuntimeError("inference only")
            return nn.Module.train(self, mode)

    for cls in (SetsAFlag, InferenceOnly):
        with pytest.warns(UserWarning, match=rf"`0` \({cls.__name__}\) overrides train"):
            fxprune.prepare(nn.Sequential(cls(), nn.Conv2d(8, 4, 1)).eval(), (X,))


class TrainOnlyUntraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        x = self.conv(x)
        if self.training and x.sum() > 0:  # data-dependent, reached in train mode only
            x = x * 2
        return x


def test_a_model_that_cannot_be_traced_in_the_other_mode_is_prepared_with_a_warning():
    with pytest.warns(UserWarning, match="could not be traced with every module's mode flipped"):
        pm = fxprune.prepare(TrainOnlyUntraceable().eval(), (X,))
    assert pm(X).shape == (4, 4, 10, 10)


def test_timm_models_follow_the_flag():
    timm = pytest.importorskip("timm", reason="timm is a test dependency: pip install -e '.[dev]'")
    x = torch.randn(2, 3, 32, 32)
    for name, kw in (("efficientnet_b0", {"drop_rate": 0.3}),  # BatchNormAct2d, F.dropout
                     ("convnext_atto", {"drop_path_rate": 0.2})):  # DropPath
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False, num_classes=10, **kw)  # train mode
        pm = fxprune.prepare(model, (x,))
        assert sum(g.prunable for g in fxprune.channel_groups(pm)) > 10, name
        random_masks(pm, 0.5, 0)
        small = fxprune.finalize(pm).eval()
        model.eval(), pm.eval()
        torch.testing.assert_close(small(x), pm(x), rtol=1e-4, atol=1e-4)
        assert torch.equal(pm(x), pm(x)), name  # no dropout left on in eval


class EvalCache(nn.Module):
    """The eval path builds a fused weight with item assignment, which torch.fx cannot trace."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        if self.training:
            return self.conv(x)
        w = self.conv.weight.clone()
        w[:, :, 1, 1] += 1.0
        return F.conv2d(x, w, self.conv.bias, padding=1)


def test_a_submodule_whose_other_mode_cannot_be_traced_is_one_call():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), EvalCache(), nn.Conv2d(8, 4, 1)).train()
    # was: a warning naming nothing, and eval left wrong; now the module and why
    with pytest.warns(UserWarning, match=r"\(1\) is called as one op.*cannot be traced in eval"):
        pm = fxprune.prepare(model, (X,))
    model.eval(), pm.eval()
    torch.testing.assert_close(pm(X), model(X), rtol=0, atol=0)
    reasons = " ".join(g.reason for g in fxprune.channel_groups(pm))
    assert "(called as one op: its forward cannot be traced in eval mode (TypeError" in reasons


def test_torchvisions_functional_stochastic_depth_becomes_its_module():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x):  # its op-table row was never used: torch.fx traced into it
            return x + stochastic_depth(self.conv(x), 0.2, "row", self.training)

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), Block(), nn.Conv2d(8, 4, 1)).train()
    pm = fxprune.prepare(model, (X,))
    assert any(isinstance(m, StochasticDepth) for m in pm.modules())
    assert any(g.prunable and g.producers[:1] == ["0"] for g in fxprune.channel_groups(pm))
    model.eval(), pm.eval()
    torch.testing.assert_close(pm(X), model(X), rtol=0, atol=0)
    model.train(), pm.train()
    torch.manual_seed(0)
    want = model(X)
    torch.manual_seed(0)
    torch.testing.assert_close(pm(X), want, rtol=0, atol=0)


class InlineDropBlock(nn.Module):
    """Stochastic depth written inline: the whole block reads the flag."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        if self.training:
            y = y * (torch.rand(x.shape[0], 1, 1, 1) > 0.2).to(y.dtype) / 0.8
        return x + y


def test_a_block_made_one_call_with_layers_inside_is_said():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), InlineDropBlock(), nn.Conv2d(8, 4, 1))
    with pytest.warns(UserWarning, match=r"1 submodule holding convs or linears \(1\) is called as "
                                         r"one op.*`1`: its forward reads self.training at .*"
                                         r"move that code into a small submodule"):
        pm = fxprune.prepare(model.train(), (X,))
    model.eval(), pm.eval()
    torch.testing.assert_close(pm(X), model(X), rtol=0, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a norm made one call hides no layer: nothing to say
        fxprune.prepare(net(), (X,))



@pytest.mark.filterwarnings("ignore:1 submodule holding")
def test_the_reason_names_the_mode_dependent_line_whichever_mode_was_prepared():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), InlineDropBlock(), nn.Conv2d(8, 4, 1))
    reasons = {fxprune.prepare(model.train(mode), (X,)).meta["fxprune_mode_leaves"]["1"]
               for mode in (True, False)}
    (reason,) = reasons  # the same in both
    line = InlineDropBlock.forward.__code__.co_firstlineno + 3  # y = y * (torch.rand(...
    assert reason.endswith(f"test_follow_mode.py:{line}"), reason

@torch.fx.wrap
def _attention_like(x, weight, p: float, training: bool):
    """Stands for torchvision's ``shifted_window_attention``: a wrapped function that takes a
    layer's weight and the flag."""
    return F.dropout(F.conv2d(x, weight), p, training)


class WeightsIntoAFunction(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        return _attention_like(x, self.proj.weight, 0.1, self.training)


def test_a_block_whose_layers_only_lend_their_weights_to_a_function_is_not_said():
    """Its layers were out of reach before it became one call (a function read the weights),
    so nothing is lost and nothing is said (torchvision's Swin attention)."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), WeightsIntoAFunction(), nn.Conv2d(8, 4, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pm = fxprune.prepare(model.train(), (X,))
    assert "1" in pm.meta["fxprune_mode_leaves"]
    model.eval(), pm.eval()
    torch.testing.assert_close(pm(X), model(X), rtol=0, atol=0)


class ScaledInTrainingConv(nn.Conv2d):
    """A conv subclass whose own forward reads the flag: traced through, it is ``F.conv2d``."""

    def forward(self, x):
        weight = self.weight * 0.5 if self.training else self.weight
        return self._conv_forward(x, weight, self.bias)


@pytest.mark.parametrize("mode", [True, False])
def test_a_conv_subclass_reading_the_flag_is_said_to_lose_its_layer(mode):
    """Its conv was prunable in the first trace (a conv function on its weight), so making it
    one call loses a layer and prepare says so (it said nothing: no call_module named it)."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), ScaledInTrainingConv(8, 8, 3, padding=1),
                          nn.Conv2d(8, 4, 1)).train(mode)
    with pytest.warns(UserWarning, match=r"1 submodule holding convs or linears \(1\) is called "
                                         r"as one op.*reads self.training"):
        fxprune.prepare(model, (X,))


class AttentionWithDropout(nn.Module):
    """timm's attention with attn_drop > 0: ``dropout_p=self.p if self.training else 0.``."""

    def __init__(self, p=0.25):
        super().__init__()
        self.p = p
        self.qkv, self.proj = nn.Linear(8, 24), nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, 2, 4).permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.p if self.training else 0.)
        return self.head(self.proj(y.transpose(1, 2).reshape(b, n, 8))).mean(1)


@pytest.mark.parametrize("prepared_in", ["train", "eval"])
def test_attention_dropout_chosen_by_the_flag_follows_the_mode(prepared_in):
    """break96 #8: the attention call's dropout probability differs between the modes, so
    the module was called as one op and its channels kept whole (timm's vit_tiny with
    attn_drop_rate=0.1: 12/15 groups prunable, 25/27 without). It now reads the rate from an
    nn.Dropout(p) added beside it, which .train()/.eval() set: the head dims prune, and both
    modes compute what the model does."""
    from helpers import prune_and_check

    torch.manual_seed(0)
    model, x = AttentionWithDropout(), torch.randn(2, 5, 8)
    pm = prepared_silently_following_both_modes(model, x, prepared_in)
    heads = next(g for g in fxprune.channel_groups(pm) if "qkv" in g.producers)
    assert heads.prunable
    pm, small = prune_and_check(model.eval(), x)
    small.train()
    assert not torch.equal(small(x), small(x))  # the pruned model's attention drops in train mode
