"""Issue 9: layers users really write. One small model per behaviour: its prunable groups written
out (producer -> units), finalize exact on the example inputs and on another batch size and
resolution."""
from __future__ import annotations

import functools
import contextlib
import dataclasses
import io
import operator
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import torch.nn.functional as F
from torch import fx, nn

import fxprune
from fxprune.compare import max_relative_error, run_eval
from fxprune.summary import summary_table
from helpers import n_params, prune_and_check


def cbr(cin, cout, k=3, groups=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


def prunable(pm) -> dict[str, int]:
    """{first producer (or group name): units} of every prunable group."""
    return {(g.producers[0] if g.producers else g.name): g.size
            for g in fxprune.channel_groups(pm) if g.prunable}


def check(model, x, other, **kw):
    """prepare -> half of every group masked -> finalize: exact on ``x`` and on ``other`` (another
    batch size and resolution)."""
    torch.manual_seed(0)
    pm, small = prune_and_check(model.eval(), x, **kw)
    err = max_relative_error(run_eval(pm, (other,)), run_eval(small, (other,)))
    assert err <= 1e-4, err
    return pm, small


X, X2 = torch.randn(2, 3, 16, 16), torch.randn(3, 3, 24, 20)


# -- subclasses of torch layers, functional layers on a module's own parameters -------------------

class PlainSubConv(nn.Conv2d):  # keeps Conv2d's forward: handled as a Conv2d
    pass


class DetectronConv(nn.Conv2d):  # detection libraries' wrapper: its own forward, F.conv2d on self
    def __init__(self, *a, norm=None, activation=None, **k):
        super().__init__(*a, **k)
        self.norm, self.activation = norm, activation

    def forward(self, x):
        x = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        if self.norm is not None:
            x = self.norm(x)
        return self.activation(x) if self.activation is not None else x


class BatchNormAct2d(nn.BatchNorm2d):  # timm's fused norm + activation
    def __init__(self, c):
        super().__init__(c)
        self.act = nn.SiLU()

    def forward(self, x):
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                         self.training, self.momentum, self.eps)
        return self.act(x)


class SubclassNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = PlainSubConv(3, 16, 3, padding=1)
        self.bn = BatchNormAct2d(16)
        self.b = DetectronConv(16, 24, 3, padding=1, norm=nn.BatchNorm2d(24), activation=nn.ReLU())
        self.dw = DetectronConv(24, 24, 3, padding=1, groups=24, bias=False)
        self.head = PlainSubConv(24, 5, 1)

    def forward(self, x):
        return self.head(self.dw(self.b(self.bn(self.a(x)))))


def test_a_layer_sharing_a_torch_layers_name_is_named_in_full():
    """break121 #4: a dynamically quantized Linear's barrier read "no channel rule for Linear",
    as if nn.Linear had none."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 4))
    quantized = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    pm = fxprune.prepare(quantized, (X,))
    (kept,) = [g for g in fxprune.channel_groups(pm) if g.producers == ["0"]]
    assert not kept.prunable
    assert "no channel rule for torch.ao.nn.quantized.dynamic" in kept.reason, kept.reason
    assert "no channel rule for Linear" not in kept.reason
    # (break139 F1: "add one to CHANNEL_RULES" led away from the way out)
    assert "a quantized layer: prune the float model" in kept.reason, kept.reason


def _int8_conv_net():
    from torch.ao import quantization as tq

    model = nn.Sequential(tq.QuantStub(), nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1),
                          tq.DeQuantStub()).eval()
    model.qconfig = tq.get_default_qconfig("x86")
    prepared = tq.prepare(model)
    prepared(X)  # calibration
    return tq.convert(prepared)


def test_an_int8_model_is_said_to_be_kept_whole_and_uncounted_with_the_way_out():
    """break139 F1, F2: an int8 model prepared without a word, and its summary read "params 0;
    FLOPs 0" and "see the reasons above" with none above."""
    with pytest.warns(UserWarning, match=r"prepare: 2 quantized layers \(1, 3; `1` is "
                                         r"torch\.ao\.nn\.quantized.*Conv2d\) are kept whole.*"
                                         r"in no count: prune the float model"):
        pm = fxprune.prepare(_int8_conv_net(), (X,))
    text = summary_table(pm)
    assert "not counted: the weights and FLOPs of 2 quantized layers (1, 3)" in text
    assert "no channel group was found" in text and "see the reasons above" not in text


@pytest.mark.parametrize("how", ["fx", "eager"])
def test_a_quantization_aware_training_model_is_refused_before_it_runs(how):
    # break139 F4: prepare_qat_fx's refusal offered rules={ConvBnReLU2d: CHANNEL_RULES[Conv2d]},
    # which kept every group whole; review142 F4: eager prepare_qat failed in shape
    # propagation with a bare RuntimeError (its observers resize their buffers)
    from torch.ao import quantization as tq
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))
    if how == "fx":
        qat = prepare_qat_fx(model.train(), tq.get_default_qat_qconfig_mapping("x86"), (X,)).eval()
        layer = r"`0` is a quantization-aware-training layer \(torch\.ao\.nn\.intrinsic\.qat\."
    else:
        model.qconfig = tq.get_default_qat_qconfig("x86")
        qat = tq.prepare_qat(model.train()).eval()
        layer = r"`0` is a quantization-aware-training layer \(torch\.ao\.nn\.qat\."
    with pytest.raises(ValueError, match=r"^prepare: " + layer + r".*which fxprune does not "
                                         r"prune; prune the float model"):
        fxprune.prepare(qat, (X,))


def test_subclasses_of_torch_layers_are_pruned():
    # the norm's own forward reads self.training: it is one call, whole until it has a row
    pm, small = check(SubclassNet(), X, X2)
    assert prunable(pm) == {"b": 24}
    (whole,) = [g for g in fxprune.channel_groups(pm) if g.producers == ["a"]]
    assert "no channel rule for BatchNormAct2d" in whole.reason
    assert "reads self.training" in whole.reason
    row = fxprune.rules.ChannelAffine(("weight", "bias", "running_mean", "running_var"))
    pm, small = check(SubclassNet(), X, X2, rules={BatchNormAct2d: row})
    assert prunable(pm) == {"a": 16, "b": 24}
    assert isinstance(small.get_submodule("a"), PlainSubConv)  # a leaf, still the user's class
    assert small.get_submodule("a").out_channels == fxprune.channel_groups(pm)[0].kept


class FunctionalParams(nn.Module):
    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(16, 3, 3, 3) * 0.3)
        self.w2 = nn.Parameter(torch.randn(12, 16, 1, 1) * 0.3)
        self.fc_w, self.fc_b = nn.Parameter(torch.randn(20, 12) * 0.3), nn.Parameter(torch.randn(20))
        self.out = nn.Linear(20, 4)

    def forward(self, x):
        x = F.relu(F.conv2d(x, self.w1, padding=1))
        x = F.relu(F.conv2d(x, self.w2)).mean((2, 3))
        return self.out(F.relu(F.linear(x, self.fc_w, self.fc_b)))


def test_functional_layers_on_module_parameters():
    pm, small = check(FunctionalParams(), X, X2)
    assert prunable(pm) == {"w1": 16, "w2": 12, "fc_w": 20}
    g = {p: gr for gr in fxprune.channel_groups(pm) for p in gr.producers}
    assert small.w1.shape[0] == g["w1"].kept and small.w2.shape[1] == g["w1"].kept
    assert [s.kind for s in fxprune.layer_specs(pm)] == ["conv", "conv", "linear", "linear"]


class DynamicKernels(nn.Module):
    """Per-sample kernels (CondInst / CondConv heads): groups = batch x channels, computed."""

    def __init__(self):
        super().__init__()
        self.a, self.k, self.c = nn.Conv2d(3, 16, 3, padding=1), nn.Linear(16, 16 * 9), nn.Conv2d(16, 4, 1)

    def forward(self, x):
        y = F.relu(self.a(x))
        b, c, h, w = y.shape
        k = self.k(y.mean((2, 3))).view(b * c, 1, 3, 3)
        return self.c(F.conv2d(y.reshape(1, b * c, h, w), k, padding=1, groups=b * c).view(b, c, h, w))


def test_a_computed_groups_is_not_baked_to_the_example_batch():
    """break39 #2: the example's groups (2 x 16) replaced b * c, and the finalized model failed
    at any other batch (finalize's check runs the example batch only)."""
    model = DynamicKernels().eval()
    pm = fxprune.prepare(model, (torch.randn(2, 3, 8, 8),))
    small = fxprune.finalize(pm)
    x = torch.randn(3, 3, 8, 8)
    assert max_relative_error(run_eval(model, (x,)), run_eval(small, (x,))) < 1e-5


class Centered(nn.Module):
    """Centres its input by a running mean its forward updates, whatever the mode."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mu", torch.zeros(16))

    def forward(self, y):
        self.mu.mul_(0.9).add_(0.1 * y.mean((0, 2, 3)).detach())
        return y - self.mu.view(1, -1, 1, 1)


class CenteredNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.center, self.c = nn.Conv2d(3, 16, 3, padding=1), Centered(), nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.c(torch.relu(self.center(torch.relu(self.a(x)))))


def _kept_whole_and_live(center: nn.Module, reason: str):
    """CenteredNet with ``center`` prepared: prepare's runs leave its buffer, the group before
    it is kept whole with ``reason``, and 3 calls match the original's. (prepared, reference)"""
    import copy

    model = CenteredNet()
    model.center = center
    pm = fxprune.prepare(model, (torch.randn(2, 3, 8, 8),))
    assert torch.equal(pm.center.mu, model.center.mu)  # prepare's runs left it
    (kept,) = [g for g in fxprune.channel_groups(pm) if g.name == "a"]
    assert not kept.prunable and reason in kept.reason
    reference = copy.deepcopy(model)
    for _ in range(3):
        x = torch.randn(4, 3, 8, 8) + 1
        assert torch.allclose(pm(x), reference(x), atol=1e-6)
    return pm, reference


def test_a_buffer_updated_in_forward_stays_live_and_checks_leave_it():
    """break39 #1: the update ran once, while tracing (the decay lost, the read a frozen
    constant), and prepare's and finalize's check runs moved the running mean: the prepared
    model drifted from the original (0.007 -> 0.024 over 5 calls). Its module is now called as
    one op (a barrier that says why), and check runs leave every buffer as it was."""
    pm, reference = _kept_whole_and_live(Centered(), "updates the buffer mu in place")
    assert torch.allclose(pm.center.mu, reference.center.mu)
    before = pm.center.mu.clone()
    fxprune.finalize(pm)
    assert torch.equal(pm.center.mu, before)  # "prepared is left untouched"
    # in the model's own forward it cannot be called as one op: said, not silent
    with pytest.warns(UserWarning, match=r"Centered.forward updates the buffer mu in "
                                         r"place, which a traced graph would freeze"):
        fxprune.prepare(Centered(), (torch.randn(2, 16, 8, 8),))


class Reassigned(Centered):
    """The same running mean, assigned rather than updated in place."""

    def forward(self, y):
        self.mu = 0.9 * self.mu + 0.1 * y.mean((0, 2, 3)).detach()
        return y - self.mu.view(1, -1, 1, 1)


def test_a_buffer_assigned_in_forward_is_one_op_not_a_crash():
    """`self.mu = 0.9 * self.mu + ...` stored a proxy in the traced copy's buffer, and prepare
    failed with torch.fx's "symbolically traced variables cannot be used as inputs to control
    flow" from its own buffer check. The module is called as one op, as the in-place form is."""
    _kept_whole_and_live(Reassigned(), "assigns the buffer mu a value computed from its input")


class CountsImages(nn.Module):
    """Counts the images it has seen in a buffer, in its own forward."""

    def __init__(self, in_place: bool):
        super().__init__()
        self.in_place = in_place
        self.a, self.c = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 1)
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))

    def forward(self, x):
        if self.in_place:
            self.seen += x.shape[0]
        else:
            self.seen = self.seen + x.shape[0]
        return self.c(torch.relu(self.a(x)))


@pytest.mark.parametrize("in_place", [True, False])
def test_a_buffer_the_models_own_forward_assigns_leaves_no_proxy_behind(in_place):
    """break109 F5: `self.seen += x.shape[0]` in the root forward left a torch.fx proxy as the
    prepared (and finalized) model's buffer: torch.save failed with "cannot pickle 'module'
    object", the buffer left the state_dict, and the mode check failed on it with a false
    warning about self.training."""
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        pm = fxprune.prepare(CountsImages(in_place), (torch.randn(1, 3, 8, 8),))
    messages = [str(w.message) for w in said]
    assert any("forward" in m and "the buffer seen" in m for m in messages), messages
    assert not any("mode flipped" in m for m in messages), messages
    assert isinstance(pm.seen, torch.Tensor) and "seen" in pm.state_dict()
    torch.save(pm, io.BytesIO())
    fxprune.channel_groups(pm)[0].mask[:4] = 0
    small = fxprune.finalize(pm)
    torch.save(small, io.BytesIO())
    assert "seen" in small.state_dict()


class KeepsFeatures(nn.Module):
    """Stores a feature map (for a feature loss, Grad-CAM) and counts its calls in forward."""

    def __init__(self):
        super().__init__()
        self.a, self.c, self.calls, self.mode = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 1), 0, "x"
        self.unset = float("nan")  # never touched: not "changed" (review108 F7)

    def forward(self, x):
        self.features = torch.relu(self.a(x))
        self.calls += 1
        self.taps = [self.features]
        return self.c(self.features)


def test_attributes_a_forward_sets_are_warned_of_and_the_model_left_alone():
    """break97 F8: `self.features = f` and `self.calls += 1` ran once, while tracing, and the
    prepared model never set them again (`pm.features` raised AttributeError), with no word at
    prepare. Unchanged attributes (`mode`) and the model's own stay out of it."""
    model = KeepsFeatures()
    with pytest.warns(UserWarning, match=r"KeepsFeatures's forward sets attributes `calls`, "
                                         r"`features`, `taps` while it runs: torch.fx ran that once"):
        fxprune.prepare(model, (torch.randn(1, 3, 8, 8),))
    assert model.calls == 0 and not hasattr(model, "features")  # prepare traced a copy


class CachesBias(nn.Module):
    """Caches a computed tensor in a dict, as timm's attention blocks do in eval mode."""

    def __init__(self):
        super().__init__()
        self.a, self.bias, self.cache = nn.Conv2d(3, 8, 3), nn.Parameter(torch.randn(8)), {}

    def forward(self, x):
        if "b" not in self.cache:
            self.cache["b"] = self.bias.view(1, -1, 1, 1) * 2
        return self.a(x) + self.cache["b"]


def test_a_dict_cache_of_traced_values_is_not_warned_of():
    """The graph computes the cached value again, so a cache is no lost side effect."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fxprune.prepare(CachesBias().eval(), (torch.randn(1, 3, 8, 8),))


def test_frozen_batch_norm_keeps_its_state_dict_names_and_prunes():
    """break39 #3: FrozenBatchNorm2d's scale, computed from buffers alone, was baked in as
    anonymous constants: a detection checkpoint could not be loaded by name (strict=False
    skipped all 80 statistics silently)."""
    from torchvision.ops import FrozenBatchNorm2d

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), FrozenBatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 8, 3, padding=1), FrozenBatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            m.running_var.uniform_(0.5, 2), m.running_mean.normal_(), m.weight.normal_()
    pm = fxprune.prepare(model, (torch.randn(1, 3, 8, 8),))
    assert {"1.weight", "1.running_var", "4.running_mean"} <= set(pm.state_dict())
    missing = pm.load_state_dict(model.state_dict(), strict=False).missing_keys
    assert all(k.startswith("fxprune_masks.") for k in missing)
    assert [g.size for g in fxprune.channel_groups(pm) if g.prunable] == [16, 8]
    check(model, torch.randn(1, 3, 8, 8), torch.randn(3, 3, 8, 8))


# -- rules= for layers with weights ---------------------------------------------------------------

class WrappedConv(nn.Conv2d):
    def forward(self, x):  # scales its output: a leaf's own forward must keep running
        return super().forward(x) * 2.0


class UserRuleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = WrappedConv(3, 16, 3, padding=1), WrappedConv(16, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        return self.head(F.relu(self.b(F.relu(self.a(x)))))


def test_user_rule_for_a_conv_subclass_leaf():
    from fxprune.rules import Conv
    pm, small = check(UserRuleNet(), X, X2, leaf_modules=[WrappedConv], rules={WrappedConv: Conv()})
    assert prunable(pm) == {"a": 16, "b": 8}
    assert type(small.get_submodule("a")) is WrappedConv


class GPT2Conv1D(nn.Module):
    """GPT-2's Conv1D: a linear whose weight is laid out [in, out] (x @ W + b)."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.in_features, self.out_features = n_in, n_out
        self.weight = nn.Parameter(torch.randn(n_in, n_out) / n_in ** 0.5)
        self.bias = nn.Parameter(torch.randn(n_out) * 0.1)

    def forward(self, x):
        return x @ self.weight + self.bias


class _TransposedMLP(nn.Module):
    def __init__(self, n_in=6, hidden=16, n_out=24):
        super().__init__()
        self.l1, self.l2, self.head = GPT2Conv1D(n_in, hidden), GPT2Conv1D(hidden, n_out), nn.Linear(n_out, 3)

    def forward(self, x):
        return self.head(torch.relu(self.l2(torch.relu(self.l1(x)))))


def test_a_row_with_its_own_weight_layout_prunes_exactly_and_torchs_layout_is_refused():
    """break176 F2: in_dim/out_dim of a Linear subclass were not read, so GPT-2's Conv1D (weight
    [in, out]) could not be described; given Linear() it failed with a numpy broadcast error."""
    from fxprune.rules import Linear

    class Conv1DRow(Linear):
        in_dim, out_dim = 0, 1

    x, other = torch.randn(4, 6), torch.randn(7, 6)
    pm, small = check(_TransposedMLP(), x, other, rules={GPT2Conv1D: Conv1DRow()})
    assert prunable(pm) == {"l1": 16, "l2": 24}
    assert tuple(small.l1.weight.shape) == (6, 8) and tuple(small.l2.weight.shape) == (8, 12)
    # review178 F1: its counts follow the row's dims, so the pruned model prepares again
    assert (small.l1.in_features, small.l1.out_features) == (6, 8)
    fxprune.prepare(small, (x,), rules={GPT2Conv1D: Conv1DRow()})
    specs = {s.name: s for s in fxprune.layer_specs(pm)}
    assert (specs["l1"].in_channels, specs["l1"].out_channels) == (6, 16)
    assert fxprune.FlopsCost().layer_cost(specs["l2"], 16, 24) == 2 * 4 * 16 * 24  # batch 4
    with pytest.raises(fxprune.FxPruneError, match=r"rule Linear\(\) cannot apply to `l1` "
                                                   r"\(GPT2Conv1D\): its weight has shape \(6, 16\), "
                                                   r"whose dim 1 \(the row's in_dim\) has 16 where its "
                                                   r"in_features is 6"):
        fxprune.prepare(_TransposedMLP(), (x,), rules={GPT2Conv1D: Linear()})


def test_a_row_that_cannot_apply_names_the_module():
    from fxprune.rules import Conv

    class Up(nn.Module):
        def __init__(self):
            super().__init__()
            self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
            self.a = nn.Conv2d(3, 8, 1)

        def forward(self, x):
            return self.up(self.a(x))

    with pytest.raises(fxprune.FxPruneError, match=r"`up` \(ConvTranspose2d\).*ConvTranspose\(\)"):
        fxprune.prepare(Up(), (X,), rules={nn.ConvTranspose2d: Conv()})
    from fxprune.rules import ConvTranspose  # and the reverse (review178 F6)
    with pytest.raises(fxprune.FxPruneError, match=r"`a` \(Conv2d\).*use Conv\(\)"):
        fxprune.prepare(Up(), (X,), rules={nn.Conv2d: ConvTranspose()})

    class NotAConv(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(3))

        def forward(self, x):
            return x * self.weight.view(1, -1, 1, 1)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.odd = NotAConv()

        def forward(self, x):
            return self.odd(x)

    with pytest.raises(fxprune.FxPruneError, match=r"`odd` \(NotAConv\).*lacks .*groups"):
        fxprune.prepare(Net(), (X,), leaf_modules=[NotAConv], rules={NotAConv: Conv()})
    # break176 F9: a row for functional calls keyed by a module class was a bare KeyError
    with pytest.raises(fxprune.FxPruneError, match=r"rule Conv\(\) given in rules= cannot apply "
                                                   r"to `a` \(Conv2d\): KeyError"):
        fxprune.prepare(Up(), (X,), rules={nn.Conv2d: Conv(functional=True)})


# -- transposed convs -----------------------------------------------------------------------------

class UNetish(nn.Module):
    def __init__(self, groups=1):
        super().__init__()
        self.down = cbr(3, 16)
        self.pool = nn.MaxPool2d(2)
        self.mid = cbr(16, 32)
        self.up = nn.ConvTranspose2d(32, 16, 2, stride=2, groups=groups)
        self.dw_up = nn.ConvTranspose2d(16, 32, 3, padding=1, groups=16)  # depthwise, multiplier 2
        self.fuse = cbr(16 + 32, 16)
        self.head = nn.Conv2d(16, 2, 1)

    def forward(self, x):
        d = self.down(x)
        u = self.dw_up(F.relu(self.up(self.mid(self.pool(d)))))
        return self.head(self.fuse(torch.cat([d, u], 1)))


class TransposedNd(nn.Module):
    def __init__(self, n):
        super().__init__()
        conv, tconv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[n - 1], (nn.ConvTranspose1d, nn.ConvTranspose2d,
                                                             nn.ConvTranspose3d)[n - 1]
        self.a = conv(2, 8, 3, padding=1)
        self.t = tconv(8, 12, 2, stride=2, output_padding=0)
        self.b = conv(12, 3, 1)

    def forward(self, x):
        return self.b(F.relu(self.t(F.relu(self.a(x)))))


def test_conv_transpose_unet_decoder():
    pm, small = check(UNetish(), X, X2)
    assert prunable(pm) == {"down.0": 16, "mid.0": 32, "up": 16, "fuse.0": 16}
    assert small.get_submodule("dw_up").groups == small.get_submodule("dw_up").in_channels


def test_conv_transpose_grouped():
    pm, small = check(UNetish(groups=4), X, X2)
    # groups=4: input position j of each group tied (32 -> 8 units); the 16 outputs are 4 columns
    # repeated per group
    assert prunable(pm) == {"down.0": 16, "mid.0": 8, "up": 4, "fuse.0": 16}
    up = small.get_submodule("up")
    assert up.groups == 4 and up.in_channels % 4 == 0 and up.out_channels % 4 == 0


@pytest.mark.parametrize("n, shape, other", [(1, (2, 2, 10), (3, 2, 7)), (2, (2, 2, 6, 6), (1, 2, 5, 9)),
                                             (3, (2, 2, 4, 4, 4), (1, 2, 3, 5, 4))])
def test_conv_transpose_1d_2d_3d(n, shape, other):
    pm, small = check(TransposedNd(n), torch.randn(*shape), torch.randn(*other))
    assert prunable(pm) == {"a": 8, "t": 12}
    spec = [s for s in fxprune.layer_specs(pm) if s.name == "t"][0]
    assert spec.kind == "conv_transpose" and spec.in_channels == 8 and spec.out_channels == 12


# -- linear -> view -> conv ------------------------------------------------------------------------

class Generator(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.how = how
        self.fc = nn.Linear(10, 16 * 4 * 4)
        self.c1 = nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, z):
        h = F.relu(self.fc(z))
        if self.how == "view":
            h = h.view(z.shape[0], 16, 4, 4)
        elif self.how == "reshape":
            h = h.reshape(-1, 16, 4, 4)
        else:
            h = h.unflatten(1, (16, 4, 4))
        return torch.tanh(self.c2(F.relu(self.bn(self.c1(h)))))


@pytest.mark.parametrize("how", ["view", "reshape", "unflatten"])
def test_linear_view_conv(how):
    pm, small = check(Generator(how), torch.randn(2, 10), torch.randn(5, 10))
    assert prunable(pm) == {"fc": 16, "c1": 8}  # 16 channels of 4x4 linear outputs each
    g = [gr for gr in fxprune.channel_groups(pm) if "fc" in gr.producers][0]
    assert small.get_submodule("fc").out_features == 16 * g.kept


# -- pixel shuffle ---------------------------------------------------------------------------------

class SuperRes(nn.Module):
    def __init__(self, functional=False):
        super().__init__()
        self.functional = functional
        self.a = cbr(3, 16)
        self.expand = nn.Conv2d(16, 8 * 4, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)
        self.b = cbr(8, 12)
        self.unshuffle = nn.PixelUnshuffle(2)
        self.head = nn.Conv2d(12 * 4, 3, 1)

    def forward(self, x):
        y = self.expand(self.a(x))
        y = F.pixel_shuffle(y, 2) if self.functional else self.shuffle(y)
        return self.head(self.unshuffle(self.b(y)))


@pytest.mark.parametrize("functional", [False, True])
def test_pixel_shuffle_prunes_blocks(functional):
    pm, small = check(SuperRes(functional), X, X2)
    assert prunable(pm) == {"a.0": 16, "expand": 8, "b.0": 12}  # expand: 8 blocks of 2*2
    g = {p: gr for gr in fxprune.channel_groups(pm) for p in gr.producers}
    assert small.get_submodule("expand").out_channels == 4 * g["expand"].kept
    assert small.get_submodule("head").in_channels == 4 * g["b.0"].kept


# -- channel pad (CIFAR ResNet option A) -------------------------------------------------------------

class OptionA(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
                                nn.BatchNorm2d(cout), nn.ReLU(), nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                                nn.BatchNorm2d(cout))
        self.pad = (cout - cin) // 2

    def forward(self, x):
        short = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(self.c1(x) + short)


class CifarResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 8)
        self.s2, self.s3 = OptionA(8, 16), OptionA(16, 32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(self.s3(self.s2(self.stem(x))).mean((2, 3)))


def test_channel_pad_is_a_concat_with_zero_channels():
    pm, small = check(CifarResNet(), X, X2)
    # one residual stream: the stem's 8 channels, s2's 16 (8 of them the padded zeros), s3's 32
    assert prunable(pm) == {"stem.0": 32, "s2.c1.0": 16, "s3.c1.0": 32}
    g = {p: gr for gr in fxprune.channel_groups(pm) for p in gr.producers}
    assert g["stem.0"] is g["s2.c1.3"] is g["s3.c1.3"]


# -- squeeze-excite written with x.size() ---------------------------------------------------------

class SE(nn.Module):
    def __init__(self, c, r=4):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(c, c // r), nn.ReLU(), nn.Linear(c // r, c), nn.Sigmoid())

    def forward(self, x):
        b, c, _, _ = x.size()
        y = self.pool(x).view(b, c)
        y = self.fc(y).view(b, c, 1, 1)
        return x * y.expand_as(x)


class SENet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.se, self.head = cbr(3, 16), SE(16), nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.head(self.se(self.a(x)))


def test_squeeze_excite_with_size_views():
    pm, small = check(SENet(), X, X2)
    assert prunable(pm) == {"a.0": 16, "se.fc.0": 4}
    g = {p: gr for gr in fxprune.channel_groups(pm) for p in gr.producers}
    assert g["a.0"] is g["se.fc.2"]


# -- recurrent state created from a literal channel count -----------------------------------------

class ConvLSTM(nn.Module):
    def __init__(self, cin=3, hidden=8):
        super().__init__()
        self.hidden = hidden
        self.gates = nn.Conv2d(cin + hidden, 4 * hidden, 3, padding=1)
        self.head = nn.Conv2d(hidden, 2, 1)

    def forward(self, x):  # x: (b, t, c, h, w)
        b, t, _, hh, ww = x.shape
        h = x.new_zeros(b, self.hidden, hh, ww)
        c = x.new_zeros(b, self.hidden, hh, ww)
        for step in range(3):
            i, f, o, g = self.gates(torch.cat([x[:, step], h], 1)).split(self.hidden, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        return self.head(h)


def test_recurrent_state_from_a_literal_count():
    pm, small = check(ConvLSTM(), torch.randn(2, 3, 3, 8, 8), torch.randn(1, 3, 3, 10, 6))
    # the gates' four pieces are tied to each other and to the hidden state (8 units)
    assert prunable(pm) == {"gates": 8}
    kept = fxprune.channel_groups(pm)[0].kept
    assert small.get_submodule("gates").in_channels == 3 + kept
    assert small.get_submodule("gates").out_channels == 4 * kept
    assert any(n.target == "new_zeros" and n.args[1][1] == kept for n in small.graph.nodes)


# -- a dim holding channels sized by a number that does not count them ----------------------------

class TokenMLP(nn.Module):
    """A token MLP over a conv's channels-last features, reshaped back with the conv's shape:
    the linear's channels are sized by the conv's count."""

    def __init__(self):
        super().__init__()
        self.a, self.lin, self.head = cbr(3, 16), nn.Linear(16, 16), nn.Conv2d(16, 4, 1)

    def forward(self, x):
        y = self.a(x)
        t = self.lin(y.flatten(2).transpose(1, 2))  # (b, hw, 16): the linear's channels
        return self.head(t.transpose(1, 2).reshape(y.shape))


class SpatialSoftmax(nn.Module):
    """A softmax over each channel's positions (keypoint heads), the batch and channels folded
    with ``c`` read from the shape, or written as the constructor's literal."""

    def __init__(self, literal: bool):
        super().__init__()
        self.literal, self.c = literal, 16
        self.a, self.head = cbr(3, 16), nn.Conv2d(16, 4, 1)

    def forward(self, x):
        y = self.a(x)
        b, c, h, w = y.shape
        c = self.c if self.literal else c
        return self.head(F.softmax(y.reshape(b * c, h * w), -1).reshape(b, c, h, w))


def test_a_shape_read_whole_sizes_the_channels_of_another_group_so_both_stay_whole():
    """break63 #1: ``reshape(y.shape)`` of the linear's channels was not checked (the shape
    was one argument): both groups were prunable and finalize called its surgery a bug."""
    pm, _ = check(TokenMLP(), X, X2)
    assert prunable(pm) == {}
    why = {g.producers[0]: g.reason for g in fxprune.channel_groups(pm, all_groups=True)
           if g.producers}
    assert "channel count used as a size of a dim without those channels" in why["a.0"]
    assert "channel count used as a size of a dim without those channels" in why["lin"]


class ShapedLikeAnother(nn.Module):
    """The second conv's channels viewed, reshaped or expanded like the first's output."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.a, self.b, self.head = cbr(3, 16), cbr(16, 16), nn.Conv2d(16, 4, 1)

    def forward(self, x):
        y = self.a(x)
        t = self.b(y)
        if self.how == "expand_as":
            return self.head(t.mean((2, 3), keepdim=True).expand_as(y))
        return self.head(getattr(t.flatten(2), self.how)(y))


@pytest.mark.parametrize("how", ["view_as", "reshape_as", "expand_as"])
def test_a_tensor_shaped_like_another_group_keeps_both_whole(how):
    """break65 #2: ``t.view_as(y)`` (reshape_as, expand_as) across two groups left both
    prunable; pruned to other widths, finalize failed ("a bug in fxprune")."""
    pm, _ = check(ShapedLikeAnother(how), X, X2)
    assert prunable(pm) == {}
    why = {g.producers[0]: g.reason for g in fxprune.channel_groups(pm, all_groups=True)
           if g.producers}
    assert "channel count used as a size of a dim without those channels" in why["a.0"]
    assert "channel count used as a size of a dim without those channels" in why["b.0"]


def test_a_literal_channel_count_in_arithmetic_keeps_the_channels_whole():
    """break63 #2: ``y.reshape(b * self.c, h * w)``: the literal 16 reached the view through a
    multiply with the batch, which the literal rewrite does not see; the group was prunable
    and finalize failed after training. Read from the shape, the count follows the pruning."""
    pm, _ = check(SpatialSoftmax(literal=True), X, X2)
    assert prunable(pm) == {}
    g = next(g for g in fxprune.channel_groups(pm, all_groups=True) if g.producers == ["a.0"])
    assert "sized by a number computed without their count" in g.reason
    pm, small = check(SpatialSoftmax(literal=False), X, X2)
    assert prunable(pm) == {"a.0": 16}
    assert small.get_submodule("a.0").out_channels == fxprune.channel_groups(pm)[0].kept


# -- tensor attributes: y.data, y.real, y.T, y.mT -------------------------------------------------

class Attributes(nn.Module):
    def __init__(self, how: str):
        super().__init__()
        self.how, self.a, self.head = how, cbr(3, 16), nn.Conv2d(16, 4, 1)

    def forward(self, x):
        y = self.a(x)
        if self.how == "data":
            y = y + y.data
        elif self.how == "real":
            y = y.real * 2
        elif self.how == "T":  # a pooled (b, c) map transposed twice: the channels move
            y = y.mean((2, 3)).T.T[:, :, None, None] * y
        elif self.how == "mT":
            y = y.flatten(2).mT.relu().mT.view(y.shape)
        return self.head(y)


@pytest.mark.parametrize("how", ["data", "real", "T", "mT"])
def test_tensor_attributes_that_are_the_tensor_are_followed(how):
    """break63 #3: ``y.data``, ``y.real``, ``.T`` and ``.mT`` dropped the channels' labels and
    the group was kept whole with a reason that blamed the first conv's input."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # .T on a 2-D tensor is fine; torch warns of n-D
        pm, small = check(Attributes(how), X, X2)
    assert prunable(pm) == {"a.0": 16}
    assert small.get_submodule("head").in_channels == fxprune.channel_groups(pm)[0].kept


def test_a_tensor_attribute_without_a_rule_names_itself():
    from fxprune.rules import ShapeRead

    class Ctx:  # what the rule reads of the analysis, for ``y.grad`` that is a tensor
        node = fx.Node(fx.Graph(), "getattr_1", "call_function", getattr, (), {})
        said = []

        def out_meta(self):
            return torch.empty(2, 16)

        def untracked_inputs(self, reason):
            self.said.append(reason)

    ctx = Ctx()
    assert ShapeRead().tensor_attribute(ctx, "grad", {1: np.arange(16)}, 2) is None
    assert ctx.said == ["no channel rule for Tensor.grad at `getattr_1`"]


# -- F.normalize over a non-channel dim -----------------------------------------------------------

class Normalized(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = cbr(3, 16), nn.Conv2d(16, 4, 1)

    def forward(self, x):
        y = self.a(x)
        y = F.normalize(y.flatten(2), dim=2).view_as(y)  # over space: per channel
        return self.b(F.normalize(y, dim=1) + y)  # over channels: mixes them


def test_normalize_over_a_non_channel_dim():
    class SpatialOnly(Normalized):
        def forward(self, x):
            y = self.a(x)
            return self.b(F.normalize(y.flatten(2), dim=-1).view_as(y))

    pm, _ = check(SpatialOnly(), X, X2)
    assert prunable(pm) == {"a.0": 16}
    pm = fxprune.prepare(Normalized(), (X,))
    g = fxprune.channel_groups(pm)[0]
    assert not g.prunable and "mixed along the channel dim" in g.reason


# -- tracing help -----------------------------------------------------------------------------------

class Bottleneck(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.cv1, self.cv2 = cbr(c, c), cbr(c, c)

    def forward(self, x):
        return x + self.cv2(self.cv1(x))


class C2f(nn.Module):  # as in YOLOv8
    def __init__(self, c1, c2, n=2):
        super().__init__()
        self.c = c2 // 2
        self.cv1 = cbr(c1, 2 * self.c, 1)
        self.cv2 = cbr((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(Bottleneck(self.c) for _ in range(n))

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class Yolo(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.c2f, self.head = cbr(3, 16), C2f(16, 16), nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.head(self.c2f(self.stem(x)))


def test_iterating_a_chunk_unrolls():
    pm, small = check(Yolo(), X, X2)
    assert prunable(pm) == {"stem.0": 16, "c2f.cv1.0": 16, "c2f.m.0.cv1.0": 8, "c2f.m.1.cv1.0": 8,
                            "c2f.cv2.0": 16}
    for g in fxprune.channel_groups(pm):  # each index list once
        lists = [tuple(p.tolist()) for p in g.keep_one_of]
        assert len(lists) == len(set(lists)), g


def test_iterating_an_unknown_piece_count_names_the_cause():
    class SplitInt(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)

        def forward(self, x):
            return sum(list(self.a(x).split(4, 1)))

    with pytest.raises(fxprune.TraceError, match=r"iterating the result of `split`.*a, b = x.split"):
        fxprune.prepare(SplitInt(), (X,))


def test_a_trace_error_in_a_torch_named_library_names_its_line():
    """break89 F2: frames under any folder whose name starts with torch's (torchvision,
    torchaudio, torchmetrics) were taken for torch's own, so a TraceError in their model code
    (every torchvision detector's loop over its images) named no file, line or source. The
    model's own forward cannot become a leaf module: the way out names preparing a part."""
    import os
    import sys

    package = os.path.dirname(torch.__file__) + "fxprune_test_models"
    source = ("import torch\n"
              "class Detector(torch.nn.Module):\n"
              "    def __init__(self):\n"
              "        super().__init__()\n"
              "        self.backbone = torch.nn.Conv2d(3, 8, 1)\n"
              "    def forward(self, images):\n"
              "        return [self.backbone(image) for image in images]\n")
    module = type(sys)("fxprune_test_models")
    exec(compile(source, os.path.join(package, "detector.py"), "exec"), module.__dict__)
    with pytest.raises(fxprune.TraceError) as raised:
        fxprune.prepare(module.Detector(), (X,))
    message = str(raised.value)
    assert "fxprune_test_models/detector.py:7 in forward()" in message, message
    assert "fxprune.prepare(model.backbone, ...)" in message


def test_a_str_argument_picking_a_branch_is_said_to_be_no_flag():
    """break154 F3: the error said flags could be given in example_inputs, and a str given
    there did not help."""
    class Heads(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)

        def forward(self, x, mode: str = "logits"):
            y = self.a(x)
            return y.softmax(1) if mode == "probs" else y

    with pytest.raises(fxprune.TraceError, match=r"forward arguments that are a bool or None can: "
                                                 r"give their values in example_inputs; a str or "
                                                 r"number that picks the branch cannot: make it a "
                                                 r"module attribute set in __init__"):
        fxprune.prepare(Heads(), (torch.randn(1, 3, 4, 4), "logits"))


def test_a_number_argument_setting_a_loop_count_is_named_in_the_trace_error():
    """break171 F8: `for _ in range(n)` with forward(x, scale=1.0, n: int = 1) was told to use
    tensor methods; the error names the number arguments traced as inputs and the way out."""
    class Repeats(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)

        def forward(self, x, scale=1.0, n: int = 1):
            y = self.a(x) * scale
            for _ in range(n):
                y = y * 2
            return y

    x = torch.randn(1, 3, 4, 4)
    for example, listed in (((x,), "n=1"), ((x, 2.0, 3), "n=3")):  # (scale: not on the line)
        with pytest.raises(fxprune.TraceError, match=rf"Note that forward's number argument "
                                                     rf"\({listed}\) is traced as an input, not as "
                                                     r"a value .*make it a module attribute set "
                                                     r"in __init__, or prepare a wrapper"):
            fxprune.prepare(Repeats(), example)
    pm = fxprune.prepare(nn.Sequential(nn.Conv2d(3, 8, 1)), (x,))  # nothing said where it traces
    assert pm(x).shape == (1, 8, 4, 4)

    class Gate(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    class Scaled(nn.Module):  # a scale that traces, and a failure that is not about it
        def __init__(self):
            super().__init__()
            self.a, self.g = nn.Conv2d(3, 8, 1), Gate()

        def forward(self, x, scale: float = 1.0):
            return self.g(self.a(x)) * scale

    with pytest.raises(fxprune.TraceError) as raised:
        fxprune.prepare(Scaled(), (x,))
    assert "number argument" not in str(raised.value)  # (review172 F6)


def test_a_trace_error_raised_inside_a_pass_names_the_model_s_line():
    """break154 F2: a gradient hook registered in forward failed in the grad-mode tracer's
    create_proxy, and the error named that line of fxprune, not the model's."""
    class GradScale(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)

        def forward(self, x):
            y = self.a(x)
            y.register_hook(lambda g: g * 0.1)
            return y

    with pytest.raises(fxprune.TraceError) as raised:
        fxprune.prepare(GradScale(), (torch.randn(1, 3, 4, 4),))
    message = str(raised.value)
    assert f"{__file__}:" in message and "y.register_hook(lambda g: g * 0.1)" in message, message


@pytest.mark.parametrize("conv, shape", [(nn.Conv1d, (3, 16)), (nn.Conv2d, (3, 8, 8)),
                                         (nn.Conv3d, (3, 5, 6, 7)), (nn.ConvTranspose2d, (3, 8, 8))])
def test_convs_on_unbatched_input_prune_and_are_priced_as_a_batch_of_one(conv, shape):
    """review115 F1: LayerSpec's shape check refused a conv fed (C, H, W) inside prepare, which
    fxprune supports; and its FLOPs dropped a spatial dim (output_shape[2:] of (C, H, W))."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model = nn.Sequential(conv(3, 8, 3), nn.ReLU(), conv(8, 4, 3))
    x = torch.randn(*shape)
    pm = fxprune.prepare(model, (x,))
    pruner = fxprune.SMCP(pm, target=0.5, channel_step=2)
    [g for g in fxprune.channel_groups(pm) if g.prunable][0].mask[:3] = 0
    small = fxprune.finalize(pm)

    def flops(m):
        with FlopCounterMode(display=False) as counter:
            m(x)
        return counter.get_total_flops()

    assert pruner.cost() == pytest.approx(flops(small) / flops(model))
    torch.testing.assert_close(small(x), pm.eval()(x), rtol=1e-5, atol=1e-6)
    # break117 F5: (C, H, W) recorded as the input shape, deploy read C as the batch
    assert not hasattr(small, "fxprune_input_shape")


class _Unsqueezed(nn.Module):
    def __init__(self, conv, dim):
        super().__init__()
        self.dim, self.a, self.b = dim, conv(1 if dim == 1 else 3, 8, 3), conv(8, 4, 1)

    def forward(self, x):
        return self.b(self.a(x.unsqueeze(self.dim)))


@pytest.mark.parametrize("model, shape, recorded", [
    (nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4)), (32,), None),
    (_Unsqueezed(nn.Conv2d, 0), (3, 16, 16), None),
    (_Unsqueezed(nn.Conv1d, 1), (2, 50), (2, 50)),
    (nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)), (2, 3, 8, 8), (2, 3, 8, 8))])
def test_the_input_shape_is_recorded_only_where_its_dim_0_is_the_batch(model, shape, recorded):
    """review118 #7: an MLP on a 1-D input and a model unsqueezing its (C, H, W) input before
    its convs recorded it, and deploy read C as the batch; an audio model adding its channel
    dim keeps its (N, L)."""
    pm = fxprune.prepare(model, (torch.randn(*shape),))
    fxprune.channel_groups(pm)[0].mask[:2] = 0
    assert getattr(fxprune.finalize(pm), "fxprune_input_shape", None) == recorded


def test_a_trace_error_in_the_models_own_forward_names_its_parts_with_convs():
    """break112 F3: the way out named model.backbone for a model with none (RAFT)."""

    class TwoEncoders(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(4, 2)
            self.features = nn.Conv2d(3, 4, 3)
            self.context = nn.Sequential(nn.Conv2d(3, 4, 1))

        def forward(self, x):
            return self.features(x) if x.sum() > 0 else self.context(x)

    with pytest.raises(fxprune.TraceError, match=r"prepare the part of the model that traces \(a "
                                                 r"submodule with its convs \(model.features, "
                                                 r"model.context\): fxprune.prepare\(model.features"):
        fxprune.prepare(TwoEncoders(), (X,))


class ZerosFromShape(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = cbr(3, 8), nn.Conv2d(16, 4, 1)

    def forward(self, x):
        y = self.a(x)
        b, c, h, w = y.shape
        z = torch.zeros(b, c, h, w, device=x.device, dtype=x.dtype)
        return self.b(torch.cat([y, z + 1.0], 1))


def test_torch_zeros_with_sizes_from_shape_traces():
    pm, small = check(ZerosFromShape(), X, X2)
    assert prunable(pm) == {"a.0": 8}
    assert small.get_submodule("b").in_channels == 2 * fxprune.channel_groups(pm)[0].kept


class NumpyNames(nn.Module):
    """torch's argument parser takes numpy's names for dim and keepdim."""

    def __init__(self, spelling):
        super().__init__()
        self.spelling = spelling
        self.a, self.b, self.head = cbr(3, 8), nn.Conv2d(8, 8, 1), nn.Conv2d(16, 4, 1)

    def forward(self, x):
        y = self.a(x)
        if self.spelling == "numpy":
            y = torch.softmax(y, axis=3) - y.mean(axis=(2, 3), keepdims=True)
            return self.head(torch.cat([y, self.b(y).cumsum(axis=2)], axis=1))
        y = torch.softmax(y, dim=3) - y.mean(dim=(2, 3), keepdim=True)
        return self.head(torch.cat([y, self.b(y).cumsum(dim=2)], dim=1))


def test_numpy_names_for_dim_and_keepdim_are_torch_names():
    """break79 F2: `torch.cat(..., axis=1)` failed inside the group analysis (numpy's "shape
    mismatch"), `cumsum(axis=1)` with a KeyError; a reduction with keepdims= was kept whole."""
    torch_spelled = fxprune.prepare(NumpyNames("torch").eval(), (X,))
    pm, small = check(NumpyNames("numpy"), X, X2)
    assert prunable(pm) == prunable(torch_spelled) == {"a.0": 8, "b": 8}


class FakeQuantized(nn.Module):
    """QAT-style: per-channel fake quantization, whose own argument is named ``axis``."""

    def __init__(self):
        super().__init__()
        self.a, self.b = cbr(3, 8), nn.Conv2d(8, 4, 1)
        self.register_buffer("scale", torch.full((8,), 0.05))
        self.register_buffer("zero_point", torch.zeros(8, dtype=torch.int32))

    def forward(self, x):
        y = torch.fake_quantize_per_channel_affine(self.a(x), self.scale, self.zero_point,
                                                   axis=1, quant_min=-128, quant_max=127)
        return self.b(y)


def test_an_ops_own_axis_argument_is_not_renamed():
    """break82 F3: every builtin's axis= became dim=, and prepare failed on the QAT model
    ("missing 3 required positional arguments"), blaming the example inputs."""
    model = FakeQuantized().eval()
    pm = fxprune.prepare(model, (X,))
    (call,) = [n for n in pm.graph.nodes if "fake_quantize" in str(n.target)]
    assert call.kwargs["axis"] == 1 and "dim" not in call.kwargs
    torch.testing.assert_close(pm.eval()(X), model(X))


@pytest.mark.parametrize("make", [
    lambda y, b, c, h, w: torch.zeros(b, c, h, w, dtype=y.dtype),
    lambda y, b, c, h, w: torch.ones(b, c, 1, 1, dtype=y.dtype).expand(b, c, h, w),
    lambda y, b, c, h, w: torch.zeros(w, dtype=y.dtype),  # one size: broadcast over the width
    lambda y, b, c, h, w: torch.zeros(y.shape, dtype=y.dtype),
    lambda y, b, c, h, w: torch.ones(b, 8, h, w, dtype=y.dtype),  # a count finalize rewrites
    lambda y, b, c, h, w: y.new_ones(b, 8, h, w),
])
def test_a_finalized_model_creating_tensors_from_its_sizes_saves_and_loads(make):
    """break79 F1: `torch.zeros(b, c, h, w)` was recorded with its sizes as separate proxies;
    torch.load re-traces a finalized model's code with plain torch.fx, which takes proxies
    inside a size tuple only: the model saved, then failed to load."""
    class FromSizes(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = cbr(3, 8), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            y = self.a(x)
            b, c, h, w = y.shape
            return self.b(y + make(y, b, c, h, w) + 1.0)

    pm, small = check(FromSizes().double(), X.double(), X2.double())
    assert small.get_submodule("b").in_channels < 8  # pruned: the sizes follow the kept channels
    buffer = io.BytesIO()
    torch.save(small, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert torch.equal(loaded(X2.double()), small(X2.double()))


# -- diagnostics ------------------------------------------------------------------------------------

def test_summary_says_why_nothing_is_prunable(capsys):
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.b(torch.fft.fft2(self.a(x)).real)

    from fxprune.summary import summary_table
    pm = fxprune.prepare(Odd(), (X,))
    text = summary_table(pm)
    assert "0 prunable" in text
    assert "groups kept whole:" in text and "no channel rule for torch._C._fft.fft_fft2" in text
    assert "reaches the model output" in text  # every kept group is listed with its reason


def test_summary_counts_hidden_groups_reasons():
    from fxprune.summary import summary_table

    class Scaled(nn.Module):  # a stray graph tensor with no layer: a hidden group
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)
            self.gain = nn.Parameter(torch.ones(1, 5, 1, 1))

        def forward(self, x):
            return self.b(self.a(x)), torch.fft.fft2(self.gain).real

    pm = fxprune.prepare(Scaled(), (X,))
    text, full = summary_table(pm), summary_table(pm, all_groups=True)
    assert "1 more groups hold no layer fxprune prunes" in text and "no channel rule" in text
    assert "gain[1]" in full and "gain[1]" not in text


def test_summary_prints_a_long_reason_whole_with_its_way_out():
    """break27 #8: reasons were cut at 160 characters, and the long ones end with the fix."""
    from fxprune.summary import summary_table

    class MyBN(nn.BatchNorm2d):
        def forward(self, x):  # reads self.training: called as one op, no row
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                self.training, self.momentum, self.eps) + 0.0

    pm = fxprune.prepare(nn.Sequential(nn.Conv2d(3, 8, 3), MyBN(8), nn.Conv2d(8, 4, 3)), (X,))
    reasons = [g.reason for g in fxprune.channel_groups(pm) if "MyBN" in g.reason]
    table = summary_table(pm)
    assert reasons and all(len(reason) > 160 and reason in table for reason in reasons)


def test_summary_counts_dense_flops_with_every_mask_at_one():
    """break42 #5: a masked LayerNorm computes its statistics by extra products; the dense
    FLOPs are the unmasked model's, and the masks are left as they were."""
    from fxprune.summary import count_flops, summary_table

    class LNNet(nn.Module):  # conv -> channels last -> LayerNorm over the prunable channels
        def __init__(self):
            super().__init__()
            self.c, self.ln = nn.Conv2d(3, 16, 3, padding=1), nn.LayerNorm(16)
            self.l1, self.l2 = nn.Linear(16, 8), nn.Linear(8, 4)

        def forward(self, x):
            y = self.ln(self.c(x).permute(0, 2, 3, 1))
            return self.l2(torch.relu(self.l1(y)).mean((1, 2)))

    x = torch.randn(2, 3, 8, 8)
    model = LNNet().eval()
    dense = count_flops(model, (x,))
    pm = fxprune.prepare(model, (x,))
    for g in fxprune.channel_groups(pm):
        if g.prunable:
            g.mask[1::2] = 0
    masked = [g.mask.clone() for g in fxprune.channel_groups(pm) if g.prunable]
    assert count_flops(pm, (x,)) > dense  # the masked LN's statistics products
    assert f"FLOPs  {dense:,} -> " in summary_table(pm)
    assert all(torch.equal(a, g.mask) for a, g in
               zip(masked, [g for g in fxprune.channel_groups(pm) if g.prunable]))


def test_summary_names_parameters_the_traced_forward_never_reads(tmp_path):
    """break120 F3: GoogLeNet's summary said params 6,624,904 for a model of 13,004,888 (its
    auxiliary heads, used in train mode only, are not in the prepared model), without a word."""
    from fxprune.summary import summary_table

    class WithAux(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.head = nn.Conv2d(3, 8, 3), nn.Linear(8, 4)
            self.aux = nn.Linear(8, 4)  # read in train mode only

        def forward(self, x):
            y = self.body(x).mean((2, 3))
            return (self.head(y), self.aux(y)) if self.training else self.head(y)

    model = WithAux().eval()
    pm = fxprune.prepare(model, (X,))
    text = summary_table(pm)
    assert ("not counted: 36 parameters of the model given to prepare that its traced forward "
            "never reads (aux: ") in text, text
    assert "params 260;" in text  # the body (224) and head (36); not the aux head
    path = tmp_path / "pm.pt"  # the record survives a pickle of the prepared model
    torch.save(pm, path)
    assert "not counted: 36 parameters" in summary_table(torch.load(path, weights_only=False))
    assert "not counted" not in summary_table(fxprune.prepare(model.train(), (X,)))
    model.train(False).aux.weight = model.head.weight  # review123 #4: tied to a read weight
    text = summary_table(fxprune.prepare(model, (X,)))
    assert "not counted: 4 parameters" in text and "(aux: " in text, text  # its bias alone

    class Holder(nn.Module):  # break124 #9: the wrapper's attribute was named, not the head
        def __init__(self):
            super().__init__()
            self.model = nn.ModuleDict({"body": nn.Conv2d(3, 8, 3), "head": nn.Linear(8, 4),
                                        "aux": nn.Linear(8, 4)})

        def forward(self, x):
            return self.model["head"](self.model["body"](x).mean((2, 3)))

    text = summary_table(fxprune.prepare(Holder().eval(), (X,)))
    assert "(model.aux: " in text, text


def test_summary_of_a_finalized_or_plain_model_says_how_to_count_it(tmp_path):
    """break42 #10: not "call fxprune.prepare first" for what finalize returned."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
    small = fxprune.finalize(fxprune.prepare(model, (X,)))
    # the names the error points to
    assert fxprune.count_flops(small, (X,)) > 0 and fxprune.count_params(small) > 0
    with pytest.raises(fxprune.NotPreparedError, match="GraphModule that is not a prepared model"
                       r".*finalize.*fxprune.count_flops\(model, inputs\) and "
                       r"fxprune.count_params\(model\)") as err:
        fxprune.summary(small)
    assert "\n" not in str(err.value)
    with pytest.raises(fxprune.NotPreparedError, match=r"got Sequential, not a prepared model.*"
                       "fxprune.prepare.*count_flops"):
        fxprune.summary(model)
    # break48 #5, break49 #11: a method or a latency table given the finalized model said
    # "got GraphModule; call fxprune.prepare first" to a user holding a GraphModule
    import io

    buffer = io.BytesIO()
    torch.save(small, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)  # (break51 #2: meta comes back empty)
    import copy

    from fxprune.run_io import save_module

    save_module(small, Path(tmp_path) / "small.pt")  # fxprune train's model_pruned.pt: a copy saved
    trained = torch.load(Path(tmp_path) / "small.pt", weights_only=False)
    for use in (lambda: fxprune.SMCP(small, 0.5), lambda: fxprune.channel_groups(small),
                lambda: fxprune.SMCP(loaded, 0.5), lambda: fxprune.SMCP(copy.deepcopy(small), 0.5),
                lambda: fxprune.SMCP(trained, 0.5)):
        with pytest.raises(fxprune.NotPreparedError, match=r"got one fxprune.finalize returned "
                           r"\(no masks left\): pass the prepared model"):
            use()


# -- the row's cost spec: what cost models price is what the flop counter counts -------------------

@pytest.mark.parametrize("factory", [UNetish, lambda: UNetish(groups=4), FunctionalParams, SubclassNet])
def test_layer_specs_price_what_the_flop_counter_counts(factory):
    from fxprune.summary import count_flops
    model = factory().eval()
    pm = fxprune.prepare(model, (X,))
    assert sum(s.flops() for s in fxprune.layer_specs(pm)) == count_flops(model, (X,))


def test_smcp_cost_matches_the_finalized_model_with_transposed_convs():
    from fxprune.summary import count_flops
    torch.manual_seed(0)
    pm = fxprune.prepare(UNetish(groups=4), (X,))
    pruner = fxprune.SMCP(pm, target=0.5, warmup=1, ramp=4, update_every=1)
    for _ in range(6):
        pm.zero_grad()
        pm(X).square().mean().backward()
        pruner.step()
    assert pruner.cost() <= 0.5 + 1e-9
    small = fxprune.finalize(pm)
    assert count_flops(small, (X,)) / count_flops(pm, (X,)) == pytest.approx(pruner.cost(), rel=1e-6)


def test_unrolled_chunk_checked_on_the_example_inputs():
    class Uneven(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 6, 1)

        def forward(self, x):
            return torch.cat(list(self.a(x).chunk(4, 1)), 1)  # 6 channels: 3 pieces, not 4

    with pytest.raises(fxprune.ExampleInputsError, match="unrolled into 4 pieces.*returns 3"):
        fxprune.prepare(Uneven(), (X,))


def test_conv_transpose_called_with_output_size():
    class Up(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = cbr(3, 16)
            self.down = nn.Conv2d(16, 24, 3, stride=2, padding=1)
            self.up = nn.ConvTranspose2d(24, 8, 3, stride=2, padding=1)
            self.head = nn.Conv2d(8 + 16, 2, 1)

        def forward(self, x):
            y = self.a(x)
            u = self.up(F.relu(self.down(y)), output_size=y.shape[-2:])  # odd sizes need it
            return self.head(torch.cat([u, y], 1))

    pm, small = check(Up(), torch.randn(2, 3, 15, 15), torch.randn(1, 3, 21, 17))
    assert prunable(pm) == {"a.0": 16, "down": 24, "up": 8}


def test_channel_pad_may_lose_all_its_zero_channels():
    torch.manual_seed(0)
    pm = fxprune.prepare(CifarResNet().eval(), (X,))
    g = [gr for gr in fxprune.channel_groups(pm) if "stem.0" in gr.producers][0]
    g.mask.zero_()
    g.mask[:4] = 1  # four of the stem's channels: s2's and s3's padded channels all go
    small = fxprune.finalize(pm)
    pads = [n.args[1] for n in small.graph.nodes if n.target is F.pad]
    assert all(p[4] + p[5] < 16 for p in pads) and any(p[4] == p[5] == 0 for p in pads), pads
    assert max_relative_error(run_eval(pm, (X2,)), run_eval(small, (X2,))) <= 1e-4


@pytest.mark.parametrize("parametrize", ["weight_norm", "spectral_norm", "bias"])
def test_a_parametrized_weight_is_kept_whole_with_the_way_out(parametrize):
    """break43 #6 (bias): a parametrized bias was sliced and set onto the parametrization, and
    finalize failed with torch's "does not implement right_inverse"."""
    from torch.nn.utils import parametrizations

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.c(F.relu(self.b(F.relu(self.a(x)))))

    class Twice(nn.Module):  # no right_inverse
        def forward(self, b):
            return b * 2

    model = Net()
    if parametrize == "bias":
        torch.nn.utils.parametrize.register_parametrization(model.b, "bias", Twice())
    else:
        getattr(parametrizations, parametrize)(model.b)
    pm, small = check(model, X, X2)  # was: "rule Conv() cannot apply ... leave it out of rules="
    assert prunable(pm) == {}  # b's input (a's output) and b's output: both read by b's weight
    reasons = " ".join(g.reason for g in fxprune.channel_groups(pm))
    what = "bias" if parametrize == "bias" else "weight"
    assert f"`b` (ParametrizedConv2d) computes its {what}" in reasons
    assert "remove_parametrizations" in reasons
    # break141 F4: c's input (b's output) read "the model input, or an output of an op ..."
    (c,) = [g for g in fxprune.channel_groups(pm) if "at `c`" in g.reason]
    assert f"they were dropped: `b` (ParametrizedConv2d) computes its {what}" in c.reason, c.reason


def test_channels_dropped_upstream_are_named_at_their_origin_not_nested():
    # break141 F4: after a parametrized conv and a BN, the next conv named the BN's reason,
    # which named the conv's: "dropped: ... (they were dropped: ...)"
    from torch.nn.utils import parametrizations

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8),
                          nn.ReLU(), nn.Conv2d(8, 4, 1))
    parametrizations.weight_norm(model[2])
    pm = fxprune.prepare(model.eval(), (X,))
    (last,) = [g for g in fxprune.channel_groups(pm) if "at `5`" in g.reason]
    assert last.reason.count("they were dropped") == 1, last.reason
    assert "they were dropped: `2` (ParametrizedConv2d) computes its weight" in last.reason


def test_a_model_converted_to_sync_batch_norm_prunes_as_with_batch_norm():
    # SyncBatchNorm had no row: every norm was a barrier (eval mode runs on the CPU)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 4, 1))
    # break107 F5: the pruned model keeps SyncBatchNorm, which trains only in a process group
    with pytest.warns(RuntimeWarning, match=r"finalize: the pruned model holds nn.SyncBatchNorm "
                                            r"\(1\), which trains only inside a process group"):
        pm, small = check(nn.SyncBatchNorm.convert_sync_batchnorm(model), X, X2)
    assert prunable(pm) == {"0": 8}
    assert small.get_submodule("1").num_features == fxprune.channel_groups(pm)[0].kept


class _EpsNorm(nn.BatchNorm2d):
    """A subclass that changes only its __init__ (review115 F6: it stayed a SyncBatchNorm)."""

    def __init__(self, channels):
        super().__init__(channels, eps=1e-3)


@pytest.mark.parametrize("dims", [1, 2, 3, "subclass"])
def test_batch_norm_converted_to_sync_after_prepare_comes_back_plain(dims):
    """review108 F5: Lightning's sync_batchnorm=True converts the prepared model's norms for the
    fit and reverts them after PruningCallback finalized; the finalized model kept SyncBatchNorm
    and the warning's way out was not the user's. Each becomes the class prepare traced again,
    sharing the trained tensors; the finalized model is exact and no warning is said."""
    conv, norm = {1: (nn.Conv1d, nn.BatchNorm1d), 2: (nn.Conv2d, nn.BatchNorm2d),
                  3: (nn.Conv3d, nn.BatchNorm3d), "subclass": (nn.Conv2d, _EpsNorm)}[dims]
    model = nn.Sequential(conv(3, 8, 3, padding=1), norm(8), nn.ReLU(), conv(8, 4, 1))
    x = torch.randn(2, 3, *[5] * (2 if dims == "subclass" else dims))
    pm = fxprune.prepare(model, (x,))
    nn.SyncBatchNorm.convert_sync_batchnorm(pm)  # what the DDP strategy does before the fit
    synced = pm.get_submodule("1")
    assert isinstance(synced, nn.SyncBatchNorm)
    with torch.no_grad():
        synced.running_mean.uniform_(-1, 1)
        synced.running_var.uniform_(0.5, 2)
        synced.weight.uniform_(0.5, 2)
    fxprune.channel_groups(pm)[0].mask[[1, 4]] = 0
    pm.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        small = fxprune.finalize(pm)
    plain = small.get_submodule("1")
    assert type(plain) is norm and plain.num_features == 6 and not plain.training
    assert plain.eps == norm(1).eps
    assert torch.equal(plain.running_mean, synced.running_mean[[0, 2, 3, 5, 6, 7]])
    assert isinstance(pm.get_submodule("1"), nn.SyncBatchNorm)  # the prepared model as it was
    torch.testing.assert_close(small(x), pm(x), rtol=1e-5, atol=1e-6)


# -- ops whose arguments or ranks could mislead the analysis (break pass 14) ----------------------

class PoolOverChannels(nn.Module):
    """``F.avg_pool3d`` on an (N, C, H, W) map pools over C, H and W: the channels mix."""

    def __init__(self, pool):
        super().__init__()
        self.a, self.c, self.pool = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1), pool

    def forward(self, x):
        return self.c(self.pool(F.relu(self.a(x))))


@pytest.mark.parametrize("pool", [lambda y: F.avg_pool3d(y, 3, stride=1, padding=1),
                                  lambda y: F.max_pool3d(y, 3, stride=1, padding=1)])
def test_a_functional_pool_over_the_channel_dim_keeps_it_whole(pool):
    pm = fxprune.prepare(PoolOverChannels(pool), (X,))
    (a,) = [g for g in fxprune.channel_groups(pm) if g.producers == ["a"]]
    assert not a.prunable and "a spatial op over a channel dim" in a.reason
    check(PoolOverChannels(lambda y: F.max_pool2d(y, 3, 1, 1)), X, X2)  # 2d on 4-D: prunable


class DtypeFrom(nn.Module):
    """``y.type_as(z)`` / ``y.to(z)`` read z's dtype and device only."""

    def __init__(self, how):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 6, 3, padding=1)
        self.c, self.d = nn.Conv2d(8, 4, 1), nn.Conv2d(6, 4, 1)
        self.how = how

    def forward(self, x):
        y, z = F.relu(self.a(x)), F.relu(self.b(x))
        y = {"type_as": lambda: y.type_as(z), "to": lambda: y.to(z),
             "zeros_like": lambda: torch.zeros_like(y) + y,
             "new_zeros_of_shape": lambda: y.new_zeros(y.shape) + y,  # was kept whole
             "zeros_of_size": lambda: torch.ones(y.size(), device=y.device) * y}[self.how]()
        return self.c(y) + self.d(z)


@pytest.mark.parametrize("how", ["type_as", "to", "zeros_like", "new_zeros_of_shape",
                                 "zeros_of_size"])
def test_an_op_reading_another_tensors_dtype_ties_no_channels(how):
    pm, _ = check(DtypeFrom(how), X, X2)
    assert prunable(pm) == {"a": 8, "b": 6}


class StdOverSpace(nn.Module):
    def __init__(self, std):
        super().__init__()
        self.a, self.fc, self.std = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 4), std

    def forward(self, x):
        return self.fc(self.std(F.relu(self.a(x)).flatten(2)))


@pytest.mark.parametrize("std", [lambda y: torch.std(y, 2, True), lambda y: y.var(2, False),
                                 lambda y: torch.std(y, -1, True, False)])
def test_std_and_var_read_their_third_argument_as_unbiased(std):
    """``torch.std(x, dim, unbiased, keepdim)``: position 2 is ``unbiased``, not ``keepdim``."""
    pm, _ = check(StdOverSpace(std), X, X2)
    assert prunable(pm) == {"a": 8}


class ScaledByTotal(nn.Module):
    def __init__(self, total):
        super().__init__()
        self.a, self.b, self.total = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1), total

    def forward(self, x):
        y = F.relu(self.a(x))
        return self.b(y * self.total(y))


@pytest.mark.parametrize("total", [lambda y: torch.sum(y, dim=(), keepdim=True),
                                   lambda y: y.mean(dim=[]), lambda y: torch.sum(y, [])])
def test_a_reduction_over_no_dims_listed_reduces_them_all(total):
    """``sum(y, dim=())`` sums every channel, as ``dim=None`` (read as none: finalize failed)."""
    pm, _ = check(ScaledByTotal(total), X, X2)
    assert "a" not in prunable(pm)


class CatOfATuple(nn.Module):
    """cat given the split's tuple itself, or a slice of it."""

    def __init__(self, how):
        super().__init__()
        self.a, self.c, self.how = cbr(3, 8), nn.Conv2d(8, 4, 1), how

    def forward(self, x):
        y = self.a(x)
        pieces = {"split": lambda: y.split(3, 1), "reversed_chunks": lambda: y.chunk(2, 1)[::-1],
                  "tuple_sum": lambda: y.split(3, 1) + y.chunk(1, 1),
                  "tuple_times": lambda: 2 * y.split(5, 1)}[self.how]()
        return self.c(torch.cat(pieces, 1)[:, :8])


@pytest.mark.parametrize("how", ["split", "reversed_chunks", "tuple_sum", "tuple_times"])
def test_cat_of_a_tuple_held_in_one_value(how):
    """The items of ``y.split(3, 1) + y.chunk(1, 1)`` are followed too (the sum lost them:
    prepare called ``a`` prunable and finalize failed)."""
    pm, _ = check(CatOfATuple(how), X, X2)
    assert prunable(pm) == {"a.0": 8}


class LayerNormOverShape(nn.Module):
    """``F.layer_norm(y, z.shape[1:])``: normalized over (C, H, W) read from a shape."""

    def __init__(self, same):
        super().__init__()
        self.a, self.b, self.same = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1), same
        self.c, self.d = nn.Conv2d(8, 4, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y, z = self.a(x), self.b(x)
        if self.same == "entries":  # each entry read, the tuple written out
            return self.c(torch.layer_norm(y, (y.shape[1], y.size(2), y.shape[3]))) + self.d(z)
        return self.c(F.layer_norm(y, (y if self.same else z).shape[1:])) + self.d(z)


def test_layer_norm_over_a_shape_read_at_run_time_is_not_baked_in():
    """The finalized model reads the shape again: it runs at another resolution (``check``)."""
    pm, small = check(LayerNormOverShape(same=True), X, X2)
    assert prunable(pm) == {"a": 8, "b": 8}
    pm, small = check(LayerNormOverShape(same="entries"), X, X2)  # wrote the example's H, W in
    assert prunable(pm) == {"a": 8, "b": 8}
    # another tensor's shape: pruned alike (tied) or kept whole, never out of step
    pm, small = check(LayerNormOverShape(same=False), X, X2)
    groups = {p: g for g in fxprune.channel_groups(pm) for p in g.producers}
    assert groups["a"] is groups["b"] or not groups["a"].prunable


class ChunkOfFlattened(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.p, self.q = cbr(3, 8), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = self.a(x)
        n, _, h, w = y.shape
        u, v = y.flatten(1).chunk(2, 1)
        return self.p(u.view(n, -1, h, w)) + self.q(v.view(n, -1, h, w))


def test_a_split_of_a_dim_merging_channels_with_space_is_kept_whole():
    """Its pieces' sizes count channels times H*W: written in, they would fit the example only."""
    pm, _ = check(ChunkOfFlattened(), X, X2)
    (a,) = [g for g in fxprune.channel_groups(pm) if g.producers == ["a.0"]]
    assert not a.prunable and "split of a dim that merges channels" in a.reason


class BranchOnResolution(nn.Module):
    """Traced as one call (a rule given for it): its forward branches on the input's size."""

    def forward(self, x):
        return x * 1.0 if x.shape[2] == 16 and x.shape[3] == 16 else x * 2.0


class ChunkOfFlattenedAfter(ChunkOfFlattened):
    """``branch`` (a module called as one op) before the flatten split."""

    def __init__(self, branch):
        super().__init__()
        self.branch = branch

    def forward(self, x):
        return super().forward(self.branch(x))


def test_a_size_fixed_by_a_branch_does_not_make_a_flatten_split_prunable():
    """The symbolic run took ``x.shape[2] == 16`` as fixing H: the split was pruned and the
    finalized model failed at 24x20, where the original runs."""
    from fxprune.rules.elementwise import Elementwise

    pm, _ = check(ChunkOfFlattenedAfter(BranchOnResolution()), X, X2,
                  rules={BranchOnResolution: Elementwise()})
    (a,) = [g for g in fxprune.channel_groups(pm) if g.producers == ["a.0"]]
    assert not a.prunable and "split of a dim that merges channels" in a.reason


class ChunkOfRepeatedChannels(nn.Module):
    """Chunks of a dim whose channels repeat at a size the model fixes: after torchvision's
    channel shuffle (channels times 2 groups), or of ``torch.cat([y, y])``."""

    def __init__(self, how):
        super().__init__()
        self.a, self.b, self.how = cbr(3, 4), cbr(3, 4), how
        self.p, self.q = nn.Conv2d(4, 5, 1), nn.Conv2d(4, 5, 1)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], 1) if self.how == "shuffle" else self.a(x)
        if self.how == "shuffle":
            n, c, h, w = y.size()
            y = y.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, -1, h, w)
        elif self.how == "repeat":  # tiled: no row before, kept whole
            y = y.repeat(1, 2, 1, 1)
        else:
            y = torch.cat([y, y], 1)
        u, v = y.chunk(2, 1)
        return self.p(u) + self.q(v)


@pytest.mark.parametrize("how", ["shuffle", "self_cat", "repeat"])
def test_a_split_of_channels_repeated_at_a_fixed_size_is_followed(how):
    """Only a dim whose size follows the inputs' (H*W) is kept whole: a fake run with symbolic
    input sizes tells them apart (ShuffleNetV2 lost 3 of its 21 groups to the first rule)."""
    pm, small = check(ChunkOfRepeatedChannels(how), X, X2)
    assert prunable(pm).get("a.0") == 4
    assert sum(p.numel() for p in small.parameters()) < sum(
        p.numel() for p in ChunkOfRepeatedChannels(how).parameters())


class ComputedBias(nn.Module):
    """``F.conv2d(y, self.w, self.b * 2)`` and ``F.linear(h, self.v, self.c + 1)``."""

    def __init__(self, untracked=False):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.w, self.b = nn.Parameter(torch.randn(6, 8, 3, 3) * 0.3), nn.Parameter(torch.randn(6))
        self.v, self.c = nn.Parameter(torch.randn(5, 6) * 0.3), nn.Parameter(torch.randn(5))
        self.head = nn.Linear(5, 3)
        self.untracked = untracked

    def forward(self, x):
        y = F.relu(self.a(x))
        bias = self.b.roll(1, 0) if self.untracked else self.b * 2.0
        y = F.relu(F.conv2d(y, self.w, bias, padding=1)).mean((2, 3))
        return self.head(F.relu(F.linear(y, self.v, self.c + 1.0)))


def test_a_bias_computed_in_the_graph_follows_the_output_channels():
    pm, small = check(ComputedBias(), X, X2)
    assert prunable(pm) == {"a": 8, "w": 6, "v": 5}
    assert small.b.shape[0] == small.w.shape[0] < 6 and small.c.shape[0] == small.v.shape[0] < 5
    pm, _ = check(ComputedBias(untracked=True), X, X2)  # rolled along its channels: w's outputs stay
    assert prunable(pm) == {"a": 8, "v": 5}


@pytest.mark.parametrize("groups, units", [(8, 8), (4, 2), (1, 8)])
def test_group_norm_with_one_channel_per_group_prunes_channel_by_channel(groups, units):
    """GroupNorm(C, C) normalizes each channel alone: the group count follows the kept count
    (it was one unit of 8 tied channels, never pruned)."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(groups, 8), nn.ReLU(),
                          nn.Conv2d(8, 4, 1))
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 1.5), model[1].bias.uniform_(-0.5, 0.5)
    pm, small = check(model, X, X2)
    assert prunable(pm) == {"0": units}
    gn = small.get_submodule("1")
    assert gn.num_channels < 8 and gn.num_groups == (gn.num_channels if groups == 8 else groups)


class BatchFold(nn.Module):
    """Channels folded into the batch, one shared 1-channel conv, unfolded again."""

    def __init__(self):
        super().__init__()
        self.a, self.k, self.c = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(1, 1, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.a(x)
        n, c, h, w = y.shape
        return self.c(self.k(y.reshape(n * c, 1, h, w)).reshape(n, c, h, w))


def test_channels_folded_into_the_batch_are_kept_whole_naming_the_batch_dim():
    pm, _ = check(BatchFold(), X, X2)
    (a,) = [g for g in fxprune.channel_groups(pm) if g.producers == ["a"]]
    assert not a.prunable and a.reason.startswith("batch dim of a conv (channels folded into the batch)")


class Narrowed(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dim = dim
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(4 if dim == 1 else 8, 4, 1)

    def forward(self, x):
        y = F.relu(self.a(x))
        return self.b(y.narrow(1, 2, 4) if self.dim == 1 else torch.narrow(y, self.dim, 1, 8))


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_narrow_passes_channels_it_does_not_cut(dim):
    """narrow of a spatial dim keeps the channels prunable (it had no row: kept whole); of the
    channel dim it keeps them, with the slice that fxprune rewrites as the way out."""
    pm, _ = check(Narrowed(dim), X, X2)
    (a,) = [g for g in fxprune.channel_groups(pm) if g.producers == ["a"]]
    assert a.prunable == (dim != 1)
    assert dim != 1 or "narrowed along the channel dim" in a.reason


class WaveformChunks(nn.Module):
    """A float (N, T) waveform: its dim 1 is time, not channels; then the channels of a
    flatten are split, or shuffled and split with the input read as (N, L, C)."""

    def __init__(self, how):
        super().__init__()
        self.how, self.a = how, nn.Conv1d(1 if how == "flatten" else 3, 4, 3, padding=1)
        self.p, self.q = nn.Conv1d(2, 4, 1), nn.Conv1d(2, 4, 1)

    def forward(self, x):
        if self.how == "flatten":
            y = self.a(x.unsqueeze(1))
            n, _, length = y.shape
            u, v = y.flatten(1).chunk(2, 1)
            return self.p(u.reshape(n, -1, length)) + self.q(v.reshape(n, -1, length))
        y = self.a(x.transpose(1, 2))  # (N, L, C) read channels-last
        n, c, length = y.shape
        y = y.view(n, 2, c // 2, length).transpose(1, 2).reshape(n, c, length)
        u, v = y.chunk(2, 1)
        return self.p(u) + self.q(v)


@pytest.mark.parametrize("how", ["flatten", "shuffle_channels_last"])
def test_sizes_follow_the_inputs_whatever_their_layout(how):
    """A float input's dim 1 was taken as channels: a (N, T) waveform's flatten split was pruned
    and failed at another T; the first conv fixing an (N, L, C) input's channels made every
    split of repeated channels a barrier (break pass 18)."""
    x, other = (torch.randn(2, 12), torch.randn(3, 20)) if how == "flatten" else (
        torch.randn(2, 12, 3), torch.randn(3, 20, 3))
    pm, _ = check(WaveformChunks(how), x, other)
    (a,) = [g for g in fxprune.channel_groups(pm) if g.producers == ["a"]]
    # channels last: no probe of C (dim 2) can run, and fxprune takes only dim 1 as fixed by
    # the weights, so the answer is unknown and the split kept whole (a size no probe reached
    # made the finalized model fail elsewhere, break pass 21)
    assert not a.prunable
    assert ("could not try" if how != "flatten" else "merges channels with other dims") in a.reason


class StemConv(nn.Conv2d):
    """A bare subclass: it runs torch's own forward."""


@torch.fx.wrap
def _symmetric(x):
    return x + x.transpose(-1, -2)  # needs H == W and fixes no size: no branch


class ShuffleAfter(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.how = how
        self.a = StemConv(3, 4, 3, padding=1) if how == "subclass_stem" else nn.Conv2d(3, 4, 3, padding=1)
        self.p, self.q = nn.Conv2d(2, 4, 1), nn.Conv2d(2, 4, 1)

    def forward(self, x):
        y = self.a(x)
        if self.how == "wrapped":
            y = _symmetric(y)
        n, c, h, w = y.shape
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        u, v = y.chunk(2, 1)
        return self.p(u) + self.q(v)


@pytest.mark.parametrize("how", ["subclass_stem", "wrapped"])
def test_code_the_trace_did_not_see_blocks_a_split_only_when_it_fixes_a_size(how):
    """A bare nn.Conv2d subclass was taken for user code, and a wrapped function that fixes no
    size gave up too (any size already fixed counted): a shuffle's split became a barrier."""
    from fxprune.rules.elementwise import Elementwise

    square = torch.randn(3, 3, 20, 20)
    pm, _ = check(ShuffleAfter(how), X, square if how == "wrapped" else X2,
                  rules={_symmetric: Elementwise()})
    assert prunable(pm).get("a") == 2  # the shuffle's two groups tie channels in pairs


def test_a_users_module_counts_as_its_own_code_whatever_its_file_is_called():
    """``operators.py`` or ``torch_utils.py`` passed a prefix test for torch's own code."""
    from fxprune.rules.elementwise import Elementwise

    class Branch(BranchOnResolution):
        def forward(self, x):
            return super().forward(x)

    Branch.__module__ = Branch.forward.__module__ = "torch_utils"
    pm, _ = check(ChunkOfFlattenedAfter(Branch()), X, X2, rules={Branch: Elementwise()})
    assert "a.0" not in prunable(pm)


class PoolWhenLarge(nn.Module):
    """Called as one op: pools to 4x4 from 16 pixels wide up, else passes the map on."""

    def forward(self, x):
        return F.adaptive_avg_pool2d(x, 4) if x.shape[-1] >= 16 else x


class OwnForwardConv(nn.Conv2d):
    """A conv with a forward of its own, given a Conv() row (as the README says)."""

    def forward(self, x):
        return self._conv_forward(x, self.weight, self.bias)


def test_a_size_branch_below_the_example_keeps_a_flatten_split_whole():
    """The branch fixes no size (w >= 16), so the symbolic run saw nothing; the split was
    pruned and the finalized model failed at 12x12, where the original runs (break pass 20)."""
    from fxprune.rules.elementwise import Spatial

    pm, _ = check(ChunkOfFlattenedAfter(PoolWhenLarge()), X, torch.randn(3, 3, 12, 12),
                  rules={PoolWhenLarge: Spatial()})
    assert "a.0" not in prunable(pm)


def test_a_stem_with_its_own_forward_does_not_block_a_shuffle_split():
    """Its weight fixes the input's channels inside code the trace did not see, which made
    the symbolic run give up: every shuffle split became a barrier (break pass 20)."""
    from fxprune.rules.layers import Conv

    model = ShuffleAfter("plain")
    model.a = OwnForwardConv(3, 4, 3, padding=1)
    pm, _ = check(model, X, X2, rules={OwnForwardConv: Conv()})
    assert prunable(pm).get("a") == 2


class PickyAboutSize(nn.Module):
    """A stride-2 stem without padding (size 2 cannot run, n-1 rounds back to n's size) and a
    position table cut to the map (twice the example's size cannot run); it runs at 12x12."""

    def __init__(self):
        super().__init__()
        self.stem, self.pos = nn.Conv2d(3, 8, 3, stride=2), nn.Parameter(torch.zeros(1, 8, 7, 7))
        self.p, self.q = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)
        self.seen = []
        self.stem.register_forward_hook(lambda m, i, o: self.seen.append(o))

    def forward(self, x):
        y = self.stem(x)
        y = y + self.pos[:, :, :y.shape[2], :y.shape[3]]
        n, _, h, w = y.shape
        u, v = y.flatten(1).chunk(2, 1)
        return self.p(u.reshape(n, -1, h, w)) + self.q(v.reshape(n, -1, h, w))


def test_a_size_no_probe_could_try_keeps_a_flatten_split_whole():
    """Every probe of H and W failed or moved nothing, which read as 'fixed': the split was
    pruned and the finalized model failed at 12x12 (break pass 21). The probes neither call the
    user's hooks nor leave fake tensors in what they capture."""
    model = PickyAboutSize()
    pm, _ = check(model, X, torch.randn(2, 3, 12, 12))
    assert "stem" not in prunable(pm)
    assert all(type(t) is torch.Tensor for t in model.seen)


class NormsEverywhere(nn.Module):
    """BatchNorms the probes meet at every kind of place: on the raw input (a probe of its
    channels must fail there), one without running statistics (batch statistics, kept real), a
    BatchNorm1d after a flatten whose size follows H*W, and a channel shuffle between."""

    def __init__(self):
        super().__init__()
        self.bn_in, self.a = nn.BatchNorm2d(3), cbr(3, 8)
        self.live = nn.BatchNorm2d(8, track_running_stats=False)
        self.p, self.q = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)
        self.bn_flat, self.head = nn.BatchNorm1d(4 * 16 * 16), nn.Linear(4 * 16 * 16, 3)

    def forward(self, x):
        y = self.live(self.a(self.bn_in(x)))
        n, c, h, w = y.size()
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, -1, h, w)
        u, v = y.chunk(2, 1)
        return self.head(self.bn_flat((self.p(u) + self.q(v)).flatten(1)))


def _stale_num_features():
    """A BatchNorm whose num_features was left as it was when its tensors were cut (another
    tool's surgery): the real forward never reads it (review161 F3)."""
    model = ChunkOfRepeatedChannels("shuffle")
    model.a[1].num_features = 7
    return model


@pytest.mark.parametrize("make", [NormsEverywhere, lambda: ChunkOfRepeatedChannels("shuffle"),
                                  lambda: torchvision.models.shufflenet_v2_x0_5(), _stale_num_features])
def test_the_probes_shape_only_batch_norm_answers_as_the_real_one(make, monkeypatch):
    """The size probes run eval-mode BatchNorms as a shape check (their fake decomposition was
    half of the probes' time, 13 s of ShuffleNetV2's 14 s prepare at 224x224): every node's
    answer must be the real BatchNorm's."""
    from fxprune.passes import size_probe

    pm = fxprune.prepare(make(), (X,))
    answers = size_probe.input_dependent_dims(pm)
    monkeypatch.setattr(size_probe, "_BATCH_NORMS", ())
    assert answers is not None and answers == size_probe.input_dependent_dims(pm)
    assert any(dims for dims, _ in answers.values())


# -- forward arguments that are flags or absent optional tensors -----------------------------------

class FlagsAndOptionals(nn.Module):
    """forward(x, return_features=False, skip=None): the signature most backbones have."""

    def __init__(self):
        super().__init__()
        self.a, self.b = cbr(3, 16), cbr(16, 16)
        self.fc = nn.Linear(16, 4)

    def forward(self, x, return_features: bool = False, skip=None):
        h = self.a(x)
        if skip is None:
            h = self.b(h)
        else:
            h = h + skip
        if return_features:
            return h
        return self.fc(h.mean((2, 3)))


@pytest.mark.parametrize("example", [(X,), (X, False), (X, False, None)])
def test_flags_and_absent_optionals_are_traced_as_their_values(example):
    """break27 #4: a bool flag failed the trace ("depends on tensor values"), and `skip is None`
    on a traced input took the other branch, so prepare blamed the example inputs."""
    model = FlagsAndOptionals().eval()
    torch.manual_seed(0)
    pm, small = prune_and_check(model, *example)
    assert max_relative_error(run_eval(pm, (X2,)), run_eval(small, (X2,))) <= 1e-4
    assert set(prunable(pm)) == {"a.0", "b.0"}  # the branch the call takes, b included
    with torch.no_grad():
        assert torch.equal(pm(X, return_features=False), pm(X))  # by keyword, as named
    with pytest.raises(AssertionError, match="return_features has been specialized to have value "
                                             "False but got another value"):
        pm(X, True)
    with pytest.raises(AssertionError, match="skip has been specialized to have value None"):
        pm(X, False, torch.zeros(2, 16, 16, 16))
    features = fxprune.prepare(model, (X, True))  # the other value: the other graph
    assert features(X, True).shape == (2, 16, 16, 16)


class KeywordOnly(FlagsAndOptionals):
    """The same forward with its flag and optional tensor keyword-only, and **kwargs."""

    def forward(self, x, *, return_features: bool = False, skip=None, **kwargs):
        return super().forward(x, return_features, skip)


def test_keyword_only_flags_and_optionals_are_traced_as_their_defaults():
    """break129 F2: `*, feats=False` was traced as an input (its branch refused, with advice
    to give the value in example_inputs, which no keyword-only one can be), `*, mask=None`
    took the other branch and blamed the input shapes, and `**kwargs` counted as a required
    argument ("pass ... e.g. (x,)", as given)."""
    model = KeywordOnly().eval()
    torch.manual_seed(0)
    pm, small = prune_and_check(model, X)
    assert max_relative_error(run_eval(pm, (X2,)), run_eval(small, (X2,))) <= 1e-4
    assert set(prunable(pm)) == {"a.0", "b.0"}
    with torch.no_grad():
        assert torch.equal(pm(X, return_features=False), pm(X))
    # given in example_inputs (by their place after the positional ones), a keyword-only
    # tensor is an input (review130 F2: it was fixed to its default None, and refused)
    skip = torch.randn(2, 16, 16, 16)
    given = fxprune.prepare(model, (X, False, skip))
    with torch.no_grad():
        assert torch.equal(given(X, skip=skip), model(X, skip=skip))

    class Drawn(KeywordOnly):  # and the graph check runs the model with it by name (review131
        def forward(self, x, *, return_features: bool = False, skip=None):  # F1: called
            return super().forward(x + torch.randn(1, 3, 1, 1), skip=skip)  # positionally, it
            # raised, and the check judged nothing)

    with pytest.raises(fxprune.TraceError, match="computes another output than the model"):
        fxprune.prepare(Drawn().eval(), (X, False, skip))

    class RequiredKeyword(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = cbr(3, 16)

        def forward(self, x, *, y):
            return self.a(x) + y

    with pytest.raises(fxprune.ExampleInputsError, match=r"takes 2 required argument\(s\) \(x, y\) "
                                                         r"but example_inputs has 1; .*e\.g\. \(x, y\)$"):
        fxprune.prepare(RequiredKeyword(), (X,))


def test_a_norm_subclass_calling_super_forward_is_told_the_row_that_keeps_it_prunable():
    """break27 #5: the error offered only leaf_modules (channels lost)."""
    class MyBN(nn.BatchNorm2d):
        def forward(self, x):
            return super().forward(x) + 0.1

    model = nn.Sequential(nn.Conv2d(3, 8, 3), MyBN(8), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
    with pytest.raises(fxprune.TraceError, match=r"rules=\{MyBN: fxprune\.op_table\.CHANNEL_RULES"
                                                 r"\[torch\.nn\.BatchNorm2d\]\}\) keeps it one op"):
        fxprune.prepare(model, torch.randn(1, 3, 8, 8))
    from fxprune.op_table import CHANNEL_RULES
    pm = fxprune.prepare(model, torch.randn(1, 3, 8, 8), rules={MyBN: CHANNEL_RULES[nn.BatchNorm2d]})
    assert prunable(pm) == {"0": 8}


class TappedBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return self.b(F.relu(self.a(x)))


class Tapped(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.blk, self.head = nn.Conv2d(3, 8, 3), TappedBlock(), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(F.relu(self.blk(F.relu(self.stem(x)))))


def test_hooks_on_a_traced_through_block_keep_running_and_the_models_own_are_said():
    """break43 #1, #2: a distillation tap on a block ran twice while tracing, left two torch.fx
    proxies in the user's list and never fired again; the model's own hooks were dropped
    without a word. A hooked block is now called as one op (its hooks run at each call)."""
    feats = []
    model = Tapped()
    model.blk.register_forward_hook(lambda m, i, o: feats.append(o))
    model.register_forward_hook(lambda m, i, o: o * 2)
    x = torch.randn(2, 3, 10, 10)
    with pytest.warns(UserWarning) as said:
        pm = fxprune.prepare(model, (x,))
    text = " ".join(str(w.message) for w in said)
    assert "(blk) is called as one op" in text and "register the hook on a layer module" in text
    assert "Tapped has a forward hook (<lambda>) on the model itself" in text
    assert all(isinstance(f, torch.Tensor) and not isinstance(f, fx.Proxy) for f in feats)
    feats.clear()
    pm(x)
    assert len(feats) == 1  # the tap fires at each call
    (stem,) = [g for g in fxprune.channel_groups(pm) if g.name == "stem"]
    assert not stem.prunable and "it has a forward hook (<lambda>)" in stem.reason


def test_a_pre_hook_on_a_masked_layer_is_said():
    """break43 #4: a masked layer is called as (input, mask): a pre-hook returning (x,) dropped
    the mask and the prepared model failed with an internal TypeError, unexplained."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
    model[2].register_forward_pre_hook(lambda m, args: (args[0] * 2,))
    # break141 F3: it was said, and the prepared model still failed at its first forward
    with pytest.warns(UserWarning, match=r"`2` \(Conv2d\) has a forward pre-hook \(<lambda>\): the "
                                         r"prepared model calls it as \(input, mask\)"), \
            pytest.raises(ValueError, match=r"^prepare: `2` \(Conv2d, with a forward pre-hook "
                                            r"\(<lambda>\)\) gets 1 of the 2 arguments the prepared "
                                            r"model calls it with \(input, then its masks\); a hook "
                                            r"on a masked layer sees every argument, and a pre-hook "
                                            r"must return them all"):
        fxprune.prepare(model, (torch.randn(2, 3, 8, 8),))


class _NormBetween(nn.Module):
    def __init__(self, norm):
        super().__init__()
        self.norm = norm
        self.a, self.b = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.a(x)
        if isinstance(self.norm, nn.LayerNorm):
            return self.b(self.norm(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
        return self.b(self.norm(y))


@pytest.mark.parametrize("norm", [nn.GroupNorm(2, 8), nn.LayerNorm(8)])
def test_a_pre_hook_dropping_a_masked_norms_masks_is_refused(norm):
    # review142 F1: a GroupNorm failed at the first forward, a LayerNorm silently computed its
    # statistics over every channel (finalize then differed by 0.36)
    model = _NormBetween(norm)
    model.norm.register_forward_pre_hook(lambda m, args: (args[0] * 1,))
    with pytest.warns(UserWarning, match=r"`norm` \(\w+Norm\) has a forward pre-hook"), \
            pytest.raises(ValueError, match=r"^prepare: `norm` \(\w+Norm, with a forward pre-hook "
                                            r"\(<lambda>\)\) gets 1 of the 2 arguments"):
        fxprune.prepare(model, (torch.randn(2, 3, 8, 8),))


def test_the_layer_whose_pre_hook_drops_the_mask_is_the_one_named():
    # review142 F2: the first hooked layer was named, its hook innocent
    def fine(m, args):
        return None

    def drops(m, args):
        return (args[0],)

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
                          nn.Conv2d(8, 4, 1))
    model[2].register_forward_pre_hook(fine)
    model[4].register_forward_pre_hook(drops)
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=r"^prepare: `4` \(Conv2d, with "
                                                                    r"a forward pre-hook \(drops\)\)"):
        fxprune.prepare(model, (torch.randn(2, 3, 10, 10),))


@pytest.mark.parametrize("kind", ["pre", "forward"])
def test_a_hook_that_fails_on_the_mask_is_named_with_its_layer(kind):
    # review143 F1: a pre-hook unpacking `(x,) = args` raised torch's bare "too many values to
    # unpack" (the counting hook never ran); break144 F8: a forward hook doing it, the same
    def pre(m, args):
        (x,) = args
        return (x * 0.5,)

    def forward(m, inputs, output):
        (x,) = inputs

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))
    if kind == "pre":
        model[2].register_forward_pre_hook(pre)
    else:
        model[2].register_forward_hook(forward)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=rf"^prepare: `2` \(Conv2d, with a forward "
                                             rf"{'pre-hook' if kind == 'pre' else 'hook'} "
                                             rf"\({kind}\)\) fails where the prepared model calls it "
                                             r"with \(input, then its masks\): ValueError: too many "
                                             r"values to unpack"):
            fxprune.prepare(model, (torch.randn(2, 3, 8, 8),))


def test_a_failure_outside_the_hooked_layers_is_not_blamed_on_their_hooks():
    # review142 F3: any failure of the check run was said to be the pre-hooks'
    from fxprune.passes.check_hooks import check_hooks_take_the_masks

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))
    x = torch.randn(2, 3, 8, 8)
    pm = fxprune.prepare(model, (x,))
    pm.get_submodule("2").register_forward_pre_hook(lambda m, args: None)
    pm.get_submodule("1").register_forward_pre_hook(lambda m, args: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        check_hooks_take_the_masks(pm, (x,))


@pytest.mark.parametrize("hook", [lambda m, args: (args[0] * 2, *args[1:]), lambda m, args: None])
def test_a_pre_hook_that_passes_the_mask_on_prepares_and_runs(hook):
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
    model[2].register_forward_pre_hook(hook)
    x = torch.randn(2, 3, 8, 8)
    with pytest.warns(UserWarning, match="calls it as"):
        pm = fxprune.prepare(model, (x,))
    assert pm(x).shape == (2, 4, 4, 4)


def test_reasons_for_a_namedtuple_output_and_a_list_argument_name_the_right_cause():
    """break39 #5: a namedtuple output read "no channel rule for Out; add one to ...
    CHANNEL_RULES", and prepare(Neck(), [f1, f2]) for forward(self, feats) did not show the
    ([f1, f2],) it needed."""
    import collections

    Out = collections.namedtuple("Out", "logits feats")

    class Named(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            f = torch.relu(self.a(x))
            return Out(self.b(f), f)

    pm = fxprune.prepare(Named(), (X,))
    reasons = {g.name: g.reason for g in fxprune.channel_groups(pm)}
    assert reasons["b"].startswith("packed into the namedtuple Out")
    # break120 F4: the model input itself is said as that, not as a possible barrier
    assert reasons["a.weight[1]"].startswith("conv input reads the model input `x`, whose "
                                             "channels are the data's"), reasons["a.weight[1]"]
    class Doubled(nn.Module):  # a leaf with no row: its output's channels are untracked
        def forward(self, x):
            return x * 2

    behind = fxprune.prepare(nn.Sequential(nn.Conv2d(3, 8, 3), Doubled(), nn.Conv2d(8, 4, 1)), (X,),
                             leaf_modules=[Doubled])
    reasons = {g.name: g.reason for g in fxprune.channel_groups(behind, all_groups=True)}
    # (break141 F4: the op that dropped them is named, not "the model input, or an op")
    assert reasons["2.weight[1]"].startswith("conv input reads channels fxprune does not track "
                                             "(they were dropped: no channel rule for Doubled"), reasons

    class Neck(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)

        def forward(self, feats):
            return self.a(feats[0]) + self.b(feats[1])

    with pytest.raises(fxprune.ExampleInputsError, match=r"one list of tensors gets it as one "
                                                         r"argument: \(\[a, b\],\)"):
        fxprune.prepare(Neck(), [X, X])


class Swish(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)


class SwishNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.act, self.b = nn.Conv2d(3, 8, 3), Swish(), nn.Conv2d(8, 4, 1)
        self.aux = nn.Conv2d(8, 2, 1)  # never called

    def forward(self, x):
        return self.b(self.act(self.a(x)))


class Tap:
    """A feature tap as users write them: an object whose bound method is the hook."""

    def __init__(self):
        self.feats = []

    def hook(self, module, inputs, output):
        self.feats.append(output)


def test_a_hooked_activation_says_the_way_out_and_a_copied_hook_object_is_said():
    """break44 #1: the prepared model calls a deep copy of a bound-method hook's object, so the
    user's tap stayed empty without a word (sharing the object instead broke more: a hook
    object's own parameters went untrained, break46 #1): said, with the way out; #4: a hook on a
    channel-wise activation made it a barrier without a word; #8: a hooked module the forward
    never calls was said to hide layers."""
    model = SwishNet()
    tap, aux_tap, feats = Tap(), Tap(), []
    model.act.register_forward_hook(tap.hook)
    model.act.register_forward_hook(lambda m, i, o: feats.append(o))  # a closure is shared
    model.aux.register_forward_hook(aux_tap.hook)
    with pytest.warns(UserWarning) as said:
        pm = fxprune.prepare(model, (X,))
    text = " ".join(str(w.message) for w in said)
    assert "(act) is called as one op, so that the hooks run at each call" in text
    assert "rules={Swish: fxprune.rules.Elementwise()}) keeps them prunable" in text
    assert "hide" not in text and "(aux)" not in text
    assert ("`act` has a forward hook that is a method of a Tap object: prepare (and finalize) "
            "work on a deep copy of the model") in text and "(1 more such hook)" in text
    feats.clear()
    pm(X)
    assert len(feats) == 1 and not tap.feats  # the closure's list, not the method's object
    pm.get_submodule("act").register_forward_hook(tap.hook)  # the way out it gives
    pm(X)
    assert len(tap.feats) == 1
    # the way out for the barrier: a row for it, and its hook still runs
    tap.feats.clear()  # (it holds a non-leaf output now, which no deep copy takes)
    pm = fxprune.prepare(model, (X,), rules={Swish: fxprune.rules.Elementwise()})
    assert fxprune.channel_groups(pm)[0].prunable
    feats.clear()
    pm(X)
    assert len(feats) == 1


def test_a_hooked_container_is_not_offered_a_row_for_its_class():
    """break46 #2: the way out for a hooked nn.Sequential was rules={Sequential: Elementwise()},
    which would reach every Sequential in the model."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Sequential(nn.ReLU(), nn.Identity()), nn.Conv2d(8, 4, 1))
    model[1].register_forward_hook(lambda m, i, o: None)
    with pytest.warns(UserWarning, match=r"register the hooks on a module inside it") as said:
        fxprune.prepare(model, (X,))
    assert not any("rules={Sequential" in str(w.message) for w in said)


def test_a_forward_whose_output_is_not_computed_in_the_graph_is_refused():
    """break44 #2: a model returning what hooks stored (timm features_only, feature_cls='hook')
    was prepared into a model returning [] and finalize failed in deepcopy."""

    class Stored(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.store = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 1), {}
            self.b.register_forward_hook(lambda m, i, o: self.store.__setitem__("b", o))

        def forward(self, x):
            self.b(torch.relu(self.a(x)))
            return list(self.store.values())

    with pytest.raises(fxprune.TraceError, match=r"Stored.forward, as torch.fx traces it, returns "
                                                 r"\[\] whatever its inputs"):
        fxprune.prepare(Stored(), (X,))


@pytest.mark.parametrize("op, prunable_c1", [
    (lambda y: torch.flip(input=y, dims=[1]), True),
    (lambda y: torch.cat(torch.chunk(input=y, chunks=2, dim=1), 1), True),
    (lambda y: y - torch.mean(input=y, dim=(2, 3), keepdim=True), True),
    (lambda y: torch.roll(input=y, shifts=1, dims=2), True),
    (lambda y: F.pixel_unshuffle(F.pixel_shuffle(input=y, upscale_factor=2), 2), True),
    (lambda y: y * torch.sum(input=y, dim=1, keepdim=True), False),  # a channel reduction
    (lambda y: torch.softmax(input=y, dim=1), False),
    # break124 #1: a function whose first parameter is not input keeps its keywords
    (lambda y: torch.where(condition=y > 0, input=y, other=0.1 * y), True)])
def test_a_tensor_given_by_keyword_is_read_as_the_first_argument(op, prunable_c1):
    """break122 F1: torch.flip(input=y, dims=[1]) and about 20 other calls with the tensor as
    input= crashed prepare with a bare IndexError inside the group analysis."""
    from helpers import prune_and_check

    class KeywordInput(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1)

        def forward(self, x):
            return self.c2(op(self.c1(x)))

    pm, _ = prune_and_check(KeywordInput().eval(), torch.randn(2, 3, 8, 8))
    assert ("c1" in prunable(pm)) == prunable_c1


class _WritesBuffer(nn.Module):
    """break122 F0: an activation written into a module buffer in place, then read by an op."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1)
        self.register_buffer("buf", torch.zeros(1, 8, 16, 16))

    def forward(self, x):
        y = self.c1(x)
        if self.how == "out":
            torch.add(y, 1.0, out=self.buf)
            return self.c2(self.buf * 2)
        self.buf.copy_(y)
        return self.c2(self.buf.relu())


@pytest.mark.parametrize("how", ["out", "copy"])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_a_graph_computing_another_function_than_the_model_is_refused(how, mode):
    """break122 F0: torch.fx stored `self.buf * 2` (a real tensor while tracing) as a constant:
    the prepared and the finalized model ignored their input, and finalize's check passed (the
    masked and pruned forms agreed). prepare now compares the graph with the model."""
    model = _WritesBuffer(how).train(mode == "train")
    x = torch.randn(1, 3, 16, 16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(fxprune.TraceError, match=r"^prepare: the traced graph computes another "
                                                 r"output than the model on the example inputs "
                                                 r"\(relative difference .*\) \(it holds "
                                                 r"_tensor_constant0, .*self.buf.copy_\(y\): compute "
                                                 r"into a new tensor instead\)"):
        fxprune.prepare(model, (x,))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_the_graph_check_reuses_shape_propagations_run_for_a_model_in_eval_mode(monkeypatch):
    """prepare's graph check ran the graph once more than shape propagation had (already in
    eval mode, without grad): a model in eval mode is compared with that run's output, and the
    graph is run again only where the model is in train mode or the two differ."""
    from fxprune.passes import check_trace

    runs = []
    real_run = check_trace._run
    monkeypatch.setattr(check_trace, "_run", lambda module, *a: runs.append(
        isinstance(module, torch.fx.GraphModule)) or real_run(module, *a))
    x = torch.randn(1, 3, 16, 16)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))
    fxprune.prepare(model.eval(), (x,))
    assert runs == [False]  # the model alone
    runs.clear()
    fxprune.prepare(model.train(), (x,))
    assert runs == [False, True]
    runs.clear()
    with pytest.raises(fxprune.TraceError):  # a graph that differs is run again, and refused
        fxprune.prepare(_WritesBuffer("out").eval(), (x,))
    assert runs[0] is False and True in runs


def test_models_whose_runs_differ_or_read_written_buffers_directly_still_prepare():
    """The graph check's false alarms: randomness in the forward (dropout in train mode, a
    noise draw in eval mode), a buffer read directly after an in-place write (a get_attr in
    the graph: right), and a forward branching on torch.is_grad_enabled()."""

    class Noisy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 1)
            self.register_buffer("buf", torch.zeros(1, 8, 6, 6))

        def forward(self, x):
            y = F.dropout(self.a(x), 0.5, self.training) + torch.rand(1, device=x.device)
            self.buf.copy_(y)
            out = self.b(self.buf)
            return out * 2 if torch.is_grad_enabled() else out

    x = torch.randn(1, 3, 8, 8)
    for mode in (True, False):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # (the buffer updated in place)
            pm = fxprune.prepare(Noisy().train(mode), (x,))
        assert isinstance(pm, torch.fx.GraphModule)
    class GradOnly(nn.Module):  # break124 #11: the check's runs without grad raised its error
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            if not torch.is_grad_enabled():
                raise RuntimeError("this model runs with grad only")
            return self.b(self.a(x))

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and nothing of the check's runs leaks (break124 #10)
        assert prunable(fxprune.prepare(GradOnly(), (x,))) == {"a": 8}
    from fxprune.compare import max_relative_error
    z = torch.randn(2, 3, dtype=torch.complex64)  # (the imaginary part was dropped)
    assert max_relative_error(z, z.conj()) > 0.1 and max_relative_error(z, z.clone()) == 0
    class RootHooked(nn.Module):  # review125 F1: a hook on the model itself, which prepare
        def __init__(self):  # warns the graph does not hold, was then refused as a difference
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 1)
            self.register_forward_hook(lambda m, i, o: o * 2)

        def forward(self, x):
            return self.b(self.a(x))

    with pytest.warns(UserWarning, match="hook"):
        assert prunable(fxprune.prepare(RootHooked(), (x,))) == {"a": 8}

    class DropPath(nn.Module):  # review125 F6: Python's random refused at random
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            y = self.a(x)
            return self.b(y if random.random() < 0.5 else 2 * y)

    for _ in range(4):  # the traced branch is one draw; the check's runs are seeded alike
        try:
            fxprune.prepare(DropPath(), (x,))
        except fxprune.TraceError as e:  # a graph of the other branch: said, every time alike
            assert "relative difference" in str(e)

    class EvalNormalized(nn.Module):  # review125 F2: the root's branch on self.training, and a
        def __init__(self):  # batch of one in train-mode BatchNorm: judged with its submodules
            super().__init__()  # in eval, the root in the mode it was traced in
            self.a, self.bn, self.b = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            y = self.b(self.bn(self.a(x).mean((2, 3), keepdim=True)))
            return y if self.training else F.normalize(y, dim=1)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # (the root's own self.training, said)
        assert prunable(fxprune.prepare(EvalNormalized(), (x,))) == {"a": 8}
    # a batch of one in train mode, which a BatchNorm over 1x1 maps refuses (the README's own
    # example input is a batch of one): compared in eval mode instead (bench_gpu's smoke run)
    pooled = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.BatchNorm2d(8),
                           nn.Conv2d(8, 4, 1))
    assert prunable(fxprune.prepare(pooled, (x,))) == {"0": 8}


def test_a_given_row_that_does_not_fit_its_module_names_both():
    """break47 #4: ChannelShuffle() for a module without `groups` raised a bare AttributeError
    from inside the rule, where prepare's docstring promises an FxPruneError naming the module."""

    class Perm(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.register_buffer("p", torch.randperm(c))

        def forward(self, x):
            return x[:, self.p]

    model = nn.Sequential(nn.Conv2d(3, 16, 3), Perm(16), nn.Conv2d(16, 4, 1))
    with pytest.raises(fxprune.FxPruneError, match=r"rule ChannelShuffle\(\) given in rules= cannot "
                                                   r"apply to `1` \(Perm\): AttributeError"):
        fxprune.prepare(model, (X,), rules={Perm: fxprune.rules.ChannelShuffle()})


class WrappedTransposedConv(nn.Module):
    """A user's transposed conv: a conv's attributes, weight [in, out, k, k], no `transposed`."""

    def __init__(self, i, o):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.randn(i, o, 3, 3) * 0.2), nn.Parameter(torch.randn(o))
        self.stride, self.padding, self.dilation, self.groups = (1, 1), (1, 1), (1, 1), 1
        self.kernel_size, self.output_padding, self.in_channels, self.out_channels = (3, 3), (0, 0), i, o

    def forward(self, x):
        return F.conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding,
                                  self.output_padding, self.groups, self.dilation)


def test_a_transposed_conv_row_on_a_wrapper_without_transposed_says_what_it_lacks():
    """break47 #1: the error said its weight was laid out [out, in/groups, k...] and to use
    Conv(), which prepare accepted and finalize then failed on (1.04 off)."""
    def net():
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), WrappedTransposedConv(8, 8),
                             nn.ReLU(), nn.Conv2d(8, 4, 1))

    with pytest.raises(fxprune.FxPruneError, match=r"it lacks `transposed = True`.*set "
                                                   r"WrappedTransposedConv.transposed = True"):
        fxprune.prepare(net(), (X,), rules={WrappedTransposedConv: fxprune.rules.ConvTranspose()})
    model = net()
    model[2].transposed = True  # the way out it gives: then exact
    check(model, X, X2, rules={WrappedTransposedConv: fxprune.rules.ConvTranspose()})


def test_a_channel_affine_row_on_a_4d_scale_keeps_the_channels_whole_with_the_reason():
    """break47 #2: a listed (1, C, 1, 1) scale was left unsliced and finalize failed with
    "a bug in fxprune or in a custom rule", naming neither."""

    class Scale4(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.scale = nn.Parameter(torch.rand(1, c, 1, 1))

        def forward(self, x):
            return x * self.scale

    model = nn.Sequential(nn.Conv2d(3, 8, 3), Scale4(8), nn.ReLU(), nn.Conv2d(8, 4, 1))
    pm, _ = check(model, X, X2, rules={Scale4: fxprune.rules.ChannelAffine(("scale",))})
    (g,) = [g for g in fxprune.channel_groups(pm) if g.name == "0"]
    assert not g.prunable and "`scale` of shape (1, 8, 1, 1): its ChannelAffine row slices 1-D" in g.reason


class ScaledWeightConv(nn.Module):
    """A user's conv whose weight is scaled per output channel by a tensor of its own."""

    def __init__(self, i, o):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.randn(o, i, 3, 3) * 0.2), nn.Parameter(torch.randn(o))
        self.stride, self.padding, self.dilation, self.groups, self.kernel_size = (1, 1), (1, 1), (1, 1), 1, (3, 3)
        self.wscale = nn.Parameter(torch.rand(o, 1, 1, 1) + 0.5)

    def forward(self, x):
        return F.conv2d(x, self.weight * self.wscale, self.bias, self.stride, self.padding,
                        self.dilation, self.groups)


class ChannelScale(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.a = nn.Parameter(torch.rand(c) + 0.5)

    def forward(self, x):
        return x * self.a.view(1, -1, 1, 1)


@pytest.mark.parametrize("row", ["Conv", "Elementwise"])
def test_a_row_that_leaves_a_module_tensor_unsliced_keeps_its_channels_whole(row):
    """break47 #3: a Conv() row on a conv holding a per-channel scale, or an Elementwise() row on
    a module with a per-channel parameter, was accepted; surgery sliced the row's tensors only
    and finalize failed with "a bug in fxprune or in a custom rule", naming no module."""
    first = ScaledWeightConv(3, 8) if row == "Conv" else nn.Conv2d(3, 8, 3, padding=1)
    model = nn.Sequential(first, ChannelScale(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))
    rules = ({ScaledWeightConv: fxprune.rules.Conv()} if row == "Conv"
             else {ChannelScale: fxprune.rules.Elementwise()})
    pm, _ = check(model, X, X2, rules=rules)
    (g,) = [g for g in fxprune.channel_groups(pm) if g.name == "0"]
    owner, tensor = ("0", "wscale") if row == "Conv" else ("1", "a")
    assert not g.prunable and f"holds `{tensor}`, which its {row}() row does not slice" in g.reason
    assert "a row with .slices = None skips this check" in g.reason
    assert f"`{owner}`" in g.reason
    assert prunable(pm) == {"3": 8}  # the layers elsewhere stay prunable


class SharedSlopes(nn.Module):
    """A learnable piecewise-linear activation: one set of slopes shared by every channel."""

    def __init__(self):
        super().__init__()
        self.slopes = nn.Parameter(torch.tensor([0.1, 0.5, 1.0, 1.5, 2.0]))
        self.register_buffer("knots", torch.tensor([-2.0, -1.0, 0.0, 1.0]))

    def forward(self, x):
        y = x * self.slopes[0]
        for i in range(4):
            y = y + (self.slopes[i + 1] - self.slopes[i]) * torch.relu(x - self.knots[i])
        return y


class PackedAffine(nn.Module):
    """Per-channel scale, shift and gain packed in one (3C,) parameter."""

    def __init__(self, c):
        super().__init__()
        self.packed = nn.Parameter(torch.cat([torch.rand(c) + 0.5, torch.randn(c), torch.rand(c) + 0.5]))

    def forward(self, x):
        scale, shift, gain = self.packed.chunk(3)
        return (x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)) * gain.view(1, -1, 1, 1)


def test_per_channel_values_packed_in_one_tensor_keep_the_channels_whole():
    """break53 #2: a (3C,) tensor has no dim of the channel count; under Elementwise() it was
    pruned, and finalize failed blaming "a bug in fxprune" (it kept them whole before)."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), PackedAffine(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))
    pm, _ = check(model, X, X2, rules={PackedAffine: fxprune.rules.Elementwise()})
    (g,) = [g for g in fxprune.channel_groups(pm) if g.name == "0"]
    assert not g.prunable and "holds `packed`, which its Elementwise() row does not slice" in g.reason


def test_a_row_on_a_module_whose_tensors_every_channel_shares_stays_prunable():
    """break51 #1: counting every tensor the row does not slice kept a shared-slope activation
    whole under Elementwise(), the README's own way out for a hooked activation (2 of 4 groups
    prunable before, 0 after); only a tensor with a dim of the channel count needs slicing."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), SharedSlopes(), nn.Conv2d(8, 8, 3, padding=1),
                          nn.ReLU(), nn.Conv2d(8, 4, 1))
    pm, _ = check(model, X, X2, rules={SharedSlopes: fxprune.rules.Elementwise()})
    assert prunable(pm) == {"0": 8, "2": 8}


class HalvingGate(nn.Module):
    """A gated linear unit over channels: 2C channels in, C out."""

    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        return a * torch.sigmoid(b)


def test_an_elementwise_row_on_an_op_that_changes_the_channel_count_keeps_them_whole():
    """break47 #4: Elementwise() given to a GLU passed its 16 input labels to its 8 output
    channels; the next conv failed in numpy ("objects cannot be broadcast"), naming neither."""
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), HalvingGate(), nn.Conv2d(8, 8, 3, padding=1),
                          nn.ReLU(), nn.Conv2d(8, 4, 1))
    pm, _ = check(model, X, X2, rules={HalvingGate: fxprune.rules.Elementwise()})
    (g,) = [g for g in fxprune.channel_groups(pm) if g.name == "0"]
    assert not g.prunable and "has 8 positions where its input has 16: not elementwise" in g.reason
    assert prunable(pm) == {"2": 8}


def _gate(x):
    return x * torch.sigmoid(x)


def test_a_row_for_a_function_torch_fx_traces_through_is_warned_of():
    """break47 #5: rules={gate: Barrier(...)} for a plain function did nothing (torch.fx traces
    through it), without a word; the channels the user meant to protect were pruned."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.b(_gate(self.a(x)))

    with pytest.warns(UserWarning, match=r"row for the function _gate, which the traced graph "
                                         r"never calls.*torch.fx.wrap\('_gate'\) is called at top "
                                         r"level of the module whose code calls it"):
        fxprune.prepare(Net(), (X,), rules={_gate: fxprune.rules.Barrier("mine")})
    with warnings.catch_warnings():  # a row for a torch function the model does not call: quiet
        warnings.simplefilter("error")
        fxprune.prepare(Net(), (X,), rules={F.gelu: fxprune.rules.Elementwise()})


class _Flips(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.b(torch.roll(self.a(x).flip(1), 1, 2))


@pytest.mark.parametrize("key, why", [
    ("Conv2d", r"key the row by the class Conv2d itself, not its name"),
    ("b", r"'b' is a submodule's path: key the row by its class Conv2d"),
    ("flop", r"names a Tensor method \(x.flop\(...\)\) the traced graph never calls"),
    # break124 #12: the model calls torch.flip(x, 1), not x.flip(1)
    ("roll", r"the graph calls torch.roll as a function: key the row by torch.roll")])
def test_a_string_rule_key_the_graph_never_calls_is_warned_of(key, why):
    """break111 F1: leaf_modules= takes module paths, rules= read a path or a class name as a
    Tensor method's name and did nothing, without a word."""
    with pytest.warns(UserWarning, match=rf"rules= has a row for '{key}'.*{why}"):
        pm = fxprune.prepare(_Flips(), (X,), rules={key: fxprune.rules.Barrier("mine")})
    assert prunable(pm) == {"a": 8}
    with warnings.catch_warnings():  # a method the graph calls: the row applies, quietly
        warnings.simplefilter("error")
        pm = fxprune.prepare(_Flips(), (X,), rules={"flip": fxprune.rules.Barrier("mine")})
    assert prunable(pm) == {}


class _AbsPlusOne(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 1)

    def scaled(self, x):
        return x * 2

    def forward(self, x):
        return self.b(self.scaled(abs(self.a(x)) + 1))


class _UnusedModule(nn.Module):
    def forward(self, x):
        return x


@pytest.mark.parametrize("key, why", [
    ("abs", r"row for abs, .* never calls.*the graph calls operator.abs for it: key the row by "
            r"operator.abs"),
    ("bound", r"row for scaled, .*traces through a bound method or a functools.partial"),
    ("partial", r"row for functools.partial.*traces through a bound method or a functools.partial"),
    ("int", r"row for int, .*int is a class that is no nn.Module: a key is a module class"),
    # break174 F7: a module class of the user's that the model has none of was silent
    ("Unused", r"row for _UnusedModule, .*the model has no _UnusedModule module"),
    ("Tensor.flip", r"row for flip, .*x.flip\(...\) is traced as a call of the method's name: key "
                    r"the row by the string 'flip'"),
    ("add", r"row for 'add', a string, .*the graph calls operator.add \(a Python operator\): "
            r"key the row by that")])
def test_a_rule_key_of_another_kind_the_graph_never_calls_is_warned_of(key, why):
    """break117 F11: rules={abs: ...} (traced as operator.abs), a bound method, a
    functools.partial or a class that is no module did nothing, without a word; "add" for x + 1
    was warned of with no hint that operator.add is the key."""
    model = _AbsPlusOne()
    key = {"abs": abs, "bound": model.scaled, "partial": functools.partial(torch.relu),
           "int": int, "Tensor.flip": torch.Tensor.flip, "Unused": _UnusedModule}.get(key, key)
    with pytest.warns(UserWarning, match=why):
        fxprune.prepare(model, (X,), rules={key: fxprune.rules.Barrier("mine")})
    with warnings.catch_warnings():  # the key the graph calls: the row applies, quietly
        warnings.simplefilter("error")
        pm = fxprune.prepare(model, (X,), rules={operator.abs: fxprune.rules.Barrier("mine")})
        # review123 #6: an operator the model does not use is as quiet as a torch function
        fxprune.prepare(model, (X,), rules={operator.matmul: fxprune.rules.Barrier("mine")})
        # torch's own module classes are as quiet (a shared rules dict)
        fxprune.prepare(model, (X,), rules={nn.PixelShuffle: fxprune.rules.Barrier("mine")})
    assert prunable(pm) == {}


@pytest.mark.parametrize("rules, message", [
    ({None: None}, r"rules= has the key None \(of type NoneType\); a key is a module class"),
    ([1], r"rules= is a dict \{module class, function or Tensor method name: channel rule\}, "
          r"got a list"),
    ("instance", r"rules= has a module instance as a key \(Conv2d\); rows are per class: key it "
                 r"by Conv2d")])
def test_a_rule_key_that_is_no_class_function_or_method_name_is_refused(rules, message):
    model = _Flips()
    if rules == "instance":
        rules = {model.b: fxprune.rules.Barrier("mine")}
    with pytest.raises(TypeError, match=message):
        fxprune.prepare(model, (X,), rules=rules)


class Collector(nn.Module):
    """A feature collector outside the model (a distillation helper, a LightningModule)."""

    def __init__(self):
        super().__init__()
        self.feats = []

    def hook(self, module, inputs, output):
        self.feats.append(output.shape)


def _tap(store, module, inputs, output):
    store.append(output.shape)


@pytest.mark.parametrize("how", ["module_outside", "partial"])
def test_a_hook_whose_state_a_deep_copy_copies_is_said_whatever_its_form(how):
    """break50 #2: a hook that is a method of an nn.Module outside the model, or
    functools.partial(tap, store), fed the deep copy's object: the user's got nothing, and
    prepare did not warn (it did for a method of a plain object)."""
    import functools

    def net():
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))

    model, collector, store = net(), Collector(), []
    model[0].register_forward_hook(collector.hook if how == "module_outside"
                                   else functools.partial(_tap, store))
    said = ("a method of a Collector object" if how == "module_outside"
            else "a functools.partial holding a list")
    with pytest.warns(UserWarning, match=rf"`0` has a forward hook that is {said}: prepare \(and "
                                         r"finalize\) work on a deep copy"):
        fxprune.prepare(model, (X,))
    # a method of a module inside the model is copied with the model (the copy's hook feeds
    # the copy's module, which the prepared model holds), a partial of plain values is shared
    inner = WithCollector(net())
    inner.body[0].register_forward_hook(inner.collector.hook)
    inner.body[2].register_forward_hook(functools.partial(_noop, 3, scale=0.5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fxprune.prepare(inner, (X,))


def _noop(k, module, inputs, output, scale=1.0):
    return None


class WithCollector(nn.Module):
    def __init__(self, body):
        super().__init__()
        self.body, self.collector = body, Collector()

    def forward(self, x):
        return self.body(x)


def test_a_model_that_cannot_be_copied_is_told_which_part_and_the_way_out():
    """break50 #8: the deprecated torch.nn.utils.weight_norm, torch.nn.utils.prune, a tap
    holding outputs and a buffer assigned a computed value all failed prepare with torch's
    deepcopy message, which names weight_norm for every one, and "make its attributes copyable"."""
    import torch.nn.utils.prune as torch_prune

    def net():
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))

    class Keep:
        def __init__(self):
            self.outs = []

        def hook(self, module, inputs, output):
            self.outs.append(output)

    weight_norm, pruned, tapped = net(), net(), net()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # (weight_norm's deprecation)
        nn.utils.weight_norm(weight_norm[0])
    torch_prune.l1_unstructured(pruned[2], "weight", 0.3)
    keep = Keep()
    tapped[0].register_forward_hook(keep.hook)
    tapped(X)
    # break121 #1: torch's prune and the deprecated weight_norm are refused whatever the grad
    # state (after a no_grad forward the copy went through, and finalize failed after training)
    for model, says in [(weight_norm, r"`0` uses the deprecated torch.nn.utils.weight_norm, which "
                                      r"recomputes its weight at each call; call "
                                      r"torch.nn.utils.remove_weight_norm\(module\) before prepare"),
                        (pruned, r"`2` is pruned with torch.nn.utils.prune, which recomputes its "
                                 r"weight from a mask at each call; call torch.nn.utils.prune."
                                 r"remove\(module, 'weight'\) before prepare")]:
        for grad in (True, False):
            with torch.set_grad_enabled(grad):
                model(X)
            with pytest.raises(TypeError, match=r"^fxprune cannot work on Sequential: " + says) as e:
                fxprune.prepare(model, (X,))
            assert e.value.__cause__ is None and e.value.__context__ is None  # one line
    cases = [(tapped, r"the forward hook on `0` \(Keep\) holds `outs`, tensors with autograd history")]
    # a functools.partial's store is named as a bound method's owner is (the two hook readers
    # worked the owner out each their own way: this one fell back to torch's message)
    def tap(store, module, inputs, output):
        store.outs.append(output) if hasattr(store, "outs") else store.append(output)

    in_object, in_list = net(), net()
    in_object[0].register_forward_hook(functools.partial(tap, Keep()))
    in_list[2].register_forward_hook(functools.partial(tap, []))
    in_object(X), in_list(X)
    cases += [(in_object, r"the forward hook on `0` \(Keep\) holds `outs`, tensors with autograd"),
              (in_list, r"the forward hook on `2` \(list\) holds its argument, tensors with autograd")]
    for model, says in cases:
        with pytest.raises(TypeError, match=r"cannot be deep-copied: " + says):
            fxprune.prepare(model, (X,))

    class RunningMean(nn.Module):  # assigns a computed value, not detached
        def __init__(self):
            super().__init__()
            self.register_buffer("mu", torch.zeros(8))

        def forward(self, x):
            self.mu = 0.9 * self.mu + 0.1 * x.mean((0, 2, 3))
            return x

    pm = fxprune.prepare(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), RunningMean(), nn.Conv2d(8, 4, 1)), (X,))
    pm.train()(X)  # finalize copies the prepared model, too
    with pytest.raises(TypeError, match=r"`1`.mu holds a tensor with autograd history \(computed, "
                                        r"not a leaf\): .detach\(\) it where it is set"):
        fxprune.finalize(pm)
    # break53 #3, #4: a tap on the prepared model (as the README says) is to be cleared before
    # finalize; a collector module outside the model, and a private attribute, are named too
    collector = Collector()
    pm = fxprune.prepare(net(), (X,))
    pm.get_submodule("0").register_forward_hook(lambda m, i, o: collector.feats.append(o))
    pm.get_submodule("2").register_forward_hook(collector.hook)
    pm(X)
    with pytest.raises(TypeError, match=r"the forward hook on `2` \(Collector\) holds `feats`, "
                                        r"tensors with autograd history .* before finalize"):
        fxprune.finalize(pm)


def test_a_partial_holding_settings_is_not_said_to_lose_a_store():
    """break53 #5: partials holding an Enum, a logger, a numpy int, a slice, a list of names or a
    method of a module of the model were told "yours gets nothing"; their hooks work alike."""
    import enum
    import functools
    import logging

    import numpy as np

    class Mode(enum.Enum):
        A = 1

    for arg in (Mode.A, logging.getLogger("fxprune-test"), np.int64(3), slice(1, 2), ["a", "b"]):
        model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))
        model[0].register_forward_hook(functools.partial(_noop, arg))
        model[2].register_forward_hook(functools.partial(_noop, model[0].forward))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            fxprune.prepare(model, (X,))


class _CheckpointedBlocks(nn.Module):
    """Activation checkpointing as users write it: a block, a bound method, a sequence."""

    def __init__(self, reentrant: bool):
        super().__init__()
        self.reentrant = reentrant
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blk = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.mid = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.seq = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 1))
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        from torch.utils.checkpoint import checkpoint, checkpoint_sequential

        x = checkpoint(self.blk, self.stem(x), use_reentrant=self.reentrant)
        x = checkpoint(self.mid.forward, x, use_reentrant=self.reentrant)
        x = checkpoint_sequential(self.seq, 2, x, use_reentrant=self.reentrant)
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize("reentrant", [False, True])
def test_activation_checkpointing_is_traced_through_and_said(reentrant):
    """torch.utils.checkpoint was traced away without a word: the prepared and finalized models
    store the activations a user checkpointed to save memory. The graph keeps the forward
    (exact), and prepare names what ran under it; the reentrant form's "None of the inputs have
    requires_grad" warning from tracing is gone."""
    model = _CheckpointedBlocks(reentrant)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        fxprune.prepare(model, (X,))
    texts = [str(w.message) for w in said]
    assert not any("requires_grad" in t for t in texts), texts
    assert len(texts) == 1 and texts[0].startswith("`blk`, `mid`.forward, `seq.0`, ... run under "
                                                   "torch.utils.checkpoint (activation "
                                                   "checkpointing), which a torch.fx graph does "
                                                   "not keep"), texts
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (those, and the reentrant form's own, running the model)
        pm, small = prune_and_check(model, X)
    assert n_params(small) < n_params(pm)


class _LambdaCheckpointed(nn.Module):
    def __init__(self):
        super().__init__()
        self.blk = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.c, self.h = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        from torch.utils.checkpoint import checkpoint

        x = checkpoint(self.blk, x, use_reentrant=False)
        return self.h(checkpoint(lambda t: F.relu(self.c(t)), x, use_reentrant=False))


def test_activation_checkpointing_of_a_lambda_over_the_model_is_named_as_the_lambda():
    """break113 F5: a lambda closing over the model itself was named "the model", and two
    names read "`blk`, the model run under"."""
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        fxprune.prepare(_LambdaCheckpointed(), (X,))
    texts = [str(w.message) for w in said]
    assert len(texts) == 1 and texts[0].startswith(
        "`blk` and _LambdaCheckpointed.forward.<locals>.<lambda> run under torch.utils.checkpoint"), texts


class _ExpandedAttention(nn.Module):
    """CBAM-style spatial attention: a 1-channel map repeated to the feature's channels."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.c0 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.att = nn.Conv2d(16, 1, 1)
        self.c1 = nn.Conv2d(16, 8, 3, padding=1)

    def forward(self, x):
        y = self.bn(self.c0(x))
        a = torch.sigmoid(self.att(y))
        a = {"expand_as": lambda: a.expand_as(y), "shape": lambda: a.expand(y.shape),
             "size": lambda: a.expand(-1, y.size(1), -1, -1),
             "literal": lambda: a.expand(-1, 16, -1, -1)}[self.how]()
        return self.c1(y * a + a)  # (a product and a sum with the repeated map)


@pytest.mark.parametrize("how", ["expand_as", "shape", "size"])
def test_a_map_expanded_to_the_channels_it_multiplies_follows_their_pruning(how):
    """break59 #1: ``a.expand_as(y)`` kept y's group whole ("a tensor whose channels fxprune
    does not track" at the mul), where ``y * a`` broadcast was pruned. The repeated positions
    are y's channels (every one holds the same value): pruned with them, exactly."""
    model = _ExpandedAttention(how).eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.bias.uniform_(-1, 1)
    pm, small = prune_and_check(model, X)
    assert small.c0.out_channels < 16 and small.c1.in_channels == small.c0.out_channels
    assert max_relative_error(run_eval(pm, (X2,)), run_eval(small, (X2,))) <= 1e-4


def test_a_map_expanded_to_a_literal_count_is_kept_whole_naming_the_expand():
    pm = fxprune.prepare(_ExpandedAttention("literal").eval(), (X,))
    group = next(g for g in fxprune.channel_groups(pm) if g.producers == ["c0"])
    assert not group.prunable and ("`expand`: expand of a size-1 dim to a fixed count; "
                                   "broadcasting, or expand_as(y), follows the pruning") in group.reason


def test_a_barrier_names_the_op_where_an_operands_channels_were_dropped():
    """break59 #2: ``y * softmax(w)`` (a per-channel weight normalised across channels) kept
    y's group whole naming only the mul; the reason now names the softmax that mixed them."""
    class SoftWeights(nn.Module):
        def __init__(self):
            super().__init__()
            self.c0, self.c1 = nn.Conv2d(3, 16, 3), nn.Conv2d(16, 8, 1)
            self.w = nn.Parameter(torch.randn(16))

        def forward(self, x):
            return self.c1(self.c0(x) * torch.softmax(self.w, 0).view(1, -1, 1, 1))

    pm = fxprune.prepare(SoftWeights(), (X,))
    group = next(g for g in fxprune.channel_groups(pm) if g.producers == ["c0"])
    assert not group.prunable
    assert ("whose channels fxprune does not track (they were dropped: mixed along the channel "
            "dim at `softmax`") in group.reason, group.reason


class _InPlace(nn.Module):
    def __init__(self):
        super().__init__()
        self.c0, self.c1 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 8, 3, padding=1)

    def forward(self, x):
        y = self.c0(x)
        y.masked_fill_(y > 1.5, 0.25)
        y.clamp_min_(-2.0).clamp_max_(2.0)
        y = F.leaky_relu_(y, 0.1)
        y = F.hardtanh_(y, -1.5, 1.5)
        return self.c1(F.threshold_(y, -1.0, 0.0).tanh_())


def test_in_place_forms_of_elementwise_ops_are_pruned():
    """break59 #3: masked_fill_ (and F.leaky_relu_, hardtanh_, clamp_min_...) had no row while
    their out-of-place forms did: a barrier for an in-place spelling."""
    pm, small = prune_and_check(_InPlace(), X)
    assert small.c0.out_channels < 16


_SPELLINGS = {  # (break104 F2) each keeps c0's channels whole without its row
    "torch.sigmoid_": lambda y: torch.sigmoid_(y), "torch.tanh_": lambda y: torch.tanh_(y),
    "torch.clamp_": lambda y: torch.clamp_(y, -1, 1), "torch.abs_": lambda y: torch.abs_(y),
    "Tensor.erf_": lambda y: y.erf_(), "F.logsigmoid": F.logsigmoid,
    "F.tanhshrink": F.tanhshrink, "F.softsign": F.softsign, "F.hardshrink": F.hardshrink,
    "F.softshrink": F.softshrink, "F.rrelu": F.rrelu, "nn.RReLU": nn.RReLU(),
    "Tensor.log1p": lambda y: y.abs().log1p(), "Tensor.sign": lambda y: y + y.sign(),
    "torch.nan_to_num": torch.nan_to_num, "torch.round": lambda y: torch.round(y * 4) / 4,
}


class _Spelled(nn.Module):
    def __init__(self, op):
        super().__init__()
        self.c0, self.op, self.c1 = nn.Conv2d(3, 16, 3, padding=1), op, nn.Conv2d(16, 8, 3, padding=1)

    def forward(self, x):
        return self.c1(self.op(self.c0(x)))


@pytest.mark.parametrize("spelling", list(_SPELLINGS))
def test_every_spelling_of_an_elementwise_op_is_pruned(spelling):
    """break104 F2: torch.sigmoid_(x) was a barrier where x.sigmoid_() was not, F.logsigmoid
    where nn.LogSigmoid was not, and log1p, sign, nan_to_num had no row: channels kept whole
    by how the op was spelled."""
    pm, small = prune_and_check(_Spelled(_SPELLINGS[spelling]).eval(), X)
    assert small.c0.out_channels < 16


class TokenMixing(nn.Module):
    """A conv stage, then an MLP-Mixer-style linear over the H*W tokens of b's channels (and,
    with ``over_width``, a linear over the width alone): the channels are the linear's rows."""

    def __init__(self, over_width: bool = False):
        super().__init__()
        self.over_width = over_width
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 12, 3, padding=1)
        self.tok, self.c = nn.Linear(8 if over_width else 64, 8 if over_width else 64), nn.Conv2d(12, 4, 1)

    def forward(self, x):
        y = self.b(F.relu(self.a(x)))
        n, c, h, w = y.shape
        mixed = self.tok(y) if self.over_width else self.tok(y.flatten(2)).view(n, c, h, w)
        return self.c(F.relu(y + mixed))


@pytest.mark.parametrize("over_width", [False, True])
def test_channels_as_a_linears_rows_are_kept_whole_and_flops_cost_matches_flop_counter(over_width):
    """break72 #1: a linear whose rows hold a prunable group (token mixing over H*W, a linear
    over the width) cost its dense rows whatever was kept: SMCP said 0.75 of dense, flop_counter
    put the finalized model at 0.31. Such a group is kept whole, as a conv's spatial dims; the
    others prune, and the cost a method reports is what flop_counter counts."""
    from fxprune.summary import count_flops

    torch.manual_seed(0)
    model, x = TokenMixing(over_width).eval(), torch.randn(2, 3, 8, 8)
    pm = fxprune.prepare(model, (x,))
    (b,) = [g for g in fxprune.channel_groups(pm) if g.producers == ["b"]]
    assert not b.prunable and b.reason.startswith("rows of a linear"), b.reason
    assert prunable(pm) == {"a": 8}
    pruner = fxprune.SMCP(pm, target=0.8, cost="flops", warmup=0, ramp=2, update_every=1,
                          channel_step=1)
    opt = torch.optim.SGD(pm.parameters(), lr=0.01)
    for _ in range(4):
        pm(torch.randn(4, 3, 8, 8)).square().mean().backward()
        pruner.step()
        opt.step()
        opt.zero_grad()
    pruner.finalize_masks()
    small = fxprune.finalize(pm)
    assert small.a.out_channels < 8
    assert pruner.cost() == pytest.approx(count_flops(small, (x,)) / count_flops(model, (x,)), rel=1e-6)


@pytest.mark.parametrize("norm", [nn.InstanceNorm1d(5), nn.BatchNorm1d(5)])
def test_channels_in_the_dims_a_norm_takes_statistics_over_are_kept_whole(norm):
    """break76: an InstanceNorm1d(T) on (N, T, F) normalizes over the F features a linear wrote;
    they were a prunable group, so masked training ran with zeros in the statistics and, after
    a whole SMCP run, finalize differed by 0.6 ("a bug in fxprune"). A norm's statistics dims
    keep their channels whole, as a pool's do."""
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), norm, nn.Linear(16, 4))
    x = torch.randn(3, 5, 6)
    pm = fxprune.prepare(model.train(), (x,))
    (feats,) = [g for g in fxprune.channel_groups(pm) if g.producers == ["0"]]
    assert not feats.prunable and "which takes its statistics over it" in feats.reason


def test_a_reason_names_a_module_by_its_path():
    """break81 #5: reasons said `body_1` (the graph's node name), which names nothing in the
    model, beside producers listed as `body.0`."""
    class Nested(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.LocalResponseNorm(2))
            self.head = nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.head(self.body(x))

    pm = fxprune.prepare(Nested(), (X,))
    (group,) = [g for g in fxprune.channel_groups(pm) if g.producers == ["body.0"]]
    assert not group.prunable and "at `body.1` (LocalResponseNorm)" in group.reason


class ShiftedWindows(nn.Module):
    """Swin's cyclic shift: channels-last features rolled along H and W (kept channels), and
    a roll along the channel dim and a flat roll (positions depend on the count kept)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.fc1 = nn.Linear(8, 12)
        self.fc2 = nn.Linear(12, 6)
        self.mid = nn.Conv2d(6, 10, 1)
        self.head = nn.Linear(10, 4)

    def forward(self, x):
        y = self.stem(x).permute(0, 2, 3, 1)  # B, H, W, C
        y = torch.roll(y, shifts=(-1, 2), dims=(1, 2))
        y = torch.relu(self.fc1(y)).roll(1, 2)
        y = self.fc2(y).permute(0, 3, 1, 2)
        z = self.mid(torch.roll(y, 1, dims=1))  # along the channels: kept whole
        return self.head(torch.roll(z, 3).mean((2, 3)))  # flat: kept whole


def test_a_roll_along_spatial_dims_keeps_channels_prunable():
    """Swin's shifted windows (torch.roll over H and W) had no row: a barrier for every
    channel through it (swin_s3_tiny 14/46 groups)."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 7)
    pm, small = prune_and_check(ShiftedWindows(), x)
    groups = {g.name: g for g in fxprune.channel_groups(pm)}
    assert groups["stem"].prunable and groups["fc1"].prunable
    assert not groups["fc2"].prunable and "rolled along a channel dim" in groups["fc2"].reason
    assert not groups["mid"].prunable and "rolled flat" in groups["mid"].reason
    assert small.fc1.in_features == small.stem.out_channels < 8


class SharedNorm(nn.Module):
    """One norm module called on two branches (as attention's query and key share a qk-norm):
    its weight ties the branches' channels into one group."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.a, self.b = nn.Linear(6, 8), nn.Linear(6, 8)
        self.norm = norm
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(torch.cat([self.norm(self.a(x)), self.norm(self.b(x))], -1))


@pytest.mark.parametrize("norm", [nn.LayerNorm, nn.RMSNorm, lambda c: nn.GroupNorm(2, c)],
                         ids=["layer_norm", "rms_norm", "group_norm"])
def test_norm_called_at_two_places_is_masked_once(norm):
    """prepare raised TypeError ("duplicate base class MaskedLayerNorm", an inconsistent MRO
    for RMSNorm): the second call's masked form was made from the first's. Masked once, each
    call passing its own masks; exact, and the norm shrinks with its group."""
    torch.manual_seed(0)
    model = SharedNorm(norm(8))
    pm, small = prune_and_check(model.eval(), torch.randn(4, 6))
    g = next(g for g in fxprune.channel_groups(pm) if "a" in g.producers)
    assert g.prunable and "b" in g.producers and 0 < g.kept < g.size
    assert type(small.norm) is type(model.norm)
    # (a group norm's unit is a position in each of its 2 groups)
    assert small.norm.weight.shape == (g.kept * 8 // g.size,)


def test_norm_called_with_channels_in_different_dims_keeps_them_whole():
    class TwoDims(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.norm = nn.LayerNorm((4, 4), elementwise_affine=False)
            self.head = nn.Linear(32, 3)

        def forward(self, x):
            y = self.a(x)  # its channels in dim 2, then (transposed) in dim 1
            both = [self.norm(y).flatten(1), self.norm(y.transpose(1, 2)).flatten(1)]
            return self.head(torch.cat(both, 1))

    pm = fxprune.prepare(TwoDims(), (torch.randn(2, 4, 4),))
    g = next(g for g in fxprune.channel_groups(pm) if "a" in g.producers)
    # the module's one normalized shape ties dim 2 of one call to dim 1 of the other, where
    # the first call has no channels: kept whole
    assert not g.prunable and "called at several places" in g.reason
    # a row's masked form given two calls' masks over different dims is refused in one line
    from fxprune.rules.layers import _set_mask_dims
    norm = pm.get_submodule("norm")
    _set_mask_dims(norm, pm.graph.find_nodes(op="call_module", target="norm")[0], (1,))
    with pytest.raises(fxprune.FxPruneError, match=r"`norm` .* called at several places with "
                                                   r"channels in different normalized dims"):
        _set_mask_dims(norm, pm.graph.find_nodes(op="call_module", target="norm")[1], (0,))


class OwnGroupNorm(nn.Module):
    """A norm layer of a model's own that calls ``F.group_norm`` (or ``torch.group_norm``) in
    its forward on its own parameters."""

    def __init__(self, channels, groups, fn=F.group_norm):
        super().__init__()
        self.groups, self.fn = groups, fn
        self.weight = nn.Parameter(torch.rand(channels) + 0.5)
        self.bias = nn.Parameter(torch.randn(channels))

    def forward(self, x):
        if self.fn is torch.group_norm:
            return torch.group_norm(x, self.groups, self.weight, self.bias, 1e-5, False)
        return F.group_norm(x, self.groups, self.weight, self.bias)


class GroupNormNet(nn.Module):
    def __init__(self, groups, fn=F.group_norm):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = OwnGroupNorm(8, groups, fn)
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        return self.conv2(torch.relu(self.norm(self.conv1(x))))


@pytest.mark.parametrize("groups, fn", [(2, F.group_norm), (8, F.group_norm), (2, torch.group_norm)],
                         ids=["two_groups", "per_channel", "torch_group_norm"])
def test_functional_group_norm_in_a_models_own_code_prunes(groups, fn):
    """F.group_norm called by a model's own code had no row: the channels it normalized were
    kept whole (its reason named the call). As a row it is masked like nn.GroupNorm (statistics
    per group over kept channels), its weight and bias follow the channels, and a per-channel
    group count is rewritten to the kept count. Exact in float64 too."""
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        model = GroupNormNet(groups, fn).to(dtype).eval()
        pm, small = prune_and_check(model, torch.randn(2, 3, 8, 8, dtype=dtype))
        g = next(g for g in fxprune.channel_groups(pm) if "conv1" in g.producers)
        assert g.prunable and g.size == (8 if groups == 8 else 4)
        channels = g.kept * 8 // g.size
        assert small.norm.weight.shape == (channels,) and small.conv2.in_channels == channels
        call = next(n for n in small.graph.nodes if n.target is fn)
        assert call.args[1] == (channels if groups == 8 else 2)  # a per-channel count rewritten


def test_functional_group_norm_with_an_untracked_weight_keeps_channels_whole():
    class Fixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 1)
            self.head = nn.Conv2d(8, 2, 1)

        def forward(self, x, w):  # the weight is a model input: it cannot shrink
            return self.head(F.group_norm(self.conv(x), 2, w))

    pm = fxprune.prepare(Fixed(), (torch.randn(1, 3, 4, 4), torch.ones(8)))
    g = next(g for g in fxprune.channel_groups(pm) if "conv" in g.producers)
    assert not g.prunable and "group norm weight whose channels fxprune does not track" in g.reason


class ChannelsLast(nn.Module):
    def __init__(self, norm: nn.Module):
        super().__init__()
        self.n = norm

    def forward(self, x):
        return self.n(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


PARAMETER_FREE_NORMS = {
    "layer_norm": lambda: ChannelsLast(nn.LayerNorm(8, elementwise_affine=False)),
    "rms_norm": lambda: ChannelsLast(nn.RMSNorm(8, elementwise_affine=False)),
    "group_norm_per_channel": lambda: nn.GroupNorm(8, 8, affine=False),
    "group_norm": lambda: nn.GroupNorm(2, 8, affine=False),
    "instance_norm": lambda: nn.InstanceNorm2d(8),
}


@pytest.mark.parametrize("norm", list(PARAMETER_FREE_NORMS))
def test_parameter_free_norm_on_two_branches_ties_them(norm):
    """break96 #4: one parameter-free norm module on two branches left them two groups, and
    finalize sized the module for the first (SurgeryError "a bug in fxprune"; a shared
    InstanceNorm2d warned at every forward). The module holds one size: the branches' channels
    are one group, as a weight would make them, and finalize is exact."""
    class TwoBranches(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1)
            self.c, self.d = nn.Conv2d(8, 4, 1), nn.Conv2d(8, 4, 1)
            self.norm = PARAMETER_FREE_NORMS[norm]()

        def forward(self, x):
            return self.c(self.norm(self.a(x))) + self.d(self.norm(self.b(x)))

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pm, small = prune_and_check(TwoBranches().eval(), torch.randn(2, 3, 4, 4))
        small(torch.randn(2, 3, 4, 4))  # (no size warning from the finalized norm)
    g = next(g for g in fxprune.channel_groups(pm) if "a" in g.producers)
    assert g.prunable and "b" in g.producers
    assert small.a.out_channels == small.b.out_channels < 8


@pytest.mark.parametrize("norm", list(PARAMETER_FREE_NORMS))
def test_parameter_free_norm_also_called_on_untracked_channels_keeps_them_whole(norm):
    """break96 #5: its second call normalizes a model input: the prepared model failed at once
    (TypeError: MaskedGroupNorm.forward() missing 'mask'), or finalize did. The tracked call's
    channels are kept whole, as with an affine norm."""
    class WithInput(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.c, self.d = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1), nn.Conv2d(8, 4, 1)
            self.norm = PARAMETER_FREE_NORMS[norm]()

        def forward(self, x, z):
            return self.c(self.norm(self.a(x))) + self.d(self.norm(z))

    args = (torch.randn(2, 3, 4, 4), torch.randn(2, 8, 4, 4))
    pm = fxprune.prepare(WithInput(), args)
    g = next(g for g in fxprune.channel_groups(pm) if "a" in g.producers)
    assert not g.prunable and "called at several places" in g.reason
    pm(*args)
    fxprune.finalize(pm)


def test_a_finalized_model_with_a_none_argument_loads_and_exports():
    """break95 #1: an argument traced as its default None (timm ViTs' attn_mask=None) was
    guarded by torch.fx's wrapped _assert_is_none, which the saved model's code re-registers by
    name: once loaded, torch.export, both ONNX exporters and fxprune deploy failed (KeyError:
    'torch.fx._symbolic_trace._assert_is_none'). The guard is plain ops now, and still
    refuses a value given for that argument."""
    class WithMask(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x, mask=None, flag: bool = False):
            return self.b(torch.relu(self.a(x)))

    torch.manual_seed(0)
    x = torch.randn(2, 4)
    pm, small = prune_and_check(WithMask().eval(), x)
    buffer = io.BytesIO()
    torch.save(small, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    exported = torch.export.export(loaded, (x,)).module()
    torch.testing.assert_close(exported(x), small(x))
    for model in (pm, small, loaded):
        with pytest.raises(AssertionError, match="mask has been specialized to have value None"):
            model(x, mask=torch.ones(1))


# -- squeeze() of a channel dim that pruning takes down to one channel -----------------------------

class PoolSqueeze(nn.Module):
    """``pool(y).squeeze()`` before a linear, in the forms users write (break97 F3)."""

    def __init__(self, form: str):
        super().__init__()
        self.form = form
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        y = F.adaptive_avg_pool2d(F.relu(self.c2(F.relu(self.c1(x)))), 1)
        if self.form == "method":
            y = y.squeeze()
        elif self.form == "function":
            y = torch.squeeze(y)
        else:  # each dim by itself, the channel dim last
            y = y.squeeze(-1).squeeze(-1).squeeze(1)
        return self.fc(y)


@pytest.mark.parametrize("form", ["method", "function", "dims"])
@pytest.mark.parametrize("batch", [1, 2])
def test_a_squeeze_keeps_a_channel_dim_pruned_to_one_channel(form, batch):
    torch.manual_seed(0)
    x = torch.randn(batch, 3, 8, 8)
    pm = fxprune.prepare(PoolSqueeze(form).eval(), (x,))
    for g in fxprune.channel_groups(pm):
        if g.prunable:
            g.mask[1:] = 0  # one channel left in each group
    small = fxprune.finalize(pm)  # raised "a bug in fxprune": the squeeze took the channel dim
    for other in (x, torch.randn(3, 3, 8, 8)):
        assert max_relative_error(run_eval(pm, (other,)), run_eval(small, (other,))) <= 1e-5
    assert small.c2.out_channels == 1
    if batch == 1:  # a batch of one is squeezed as the dense model squeezes it
        assert small(torch.randn(1, 3, 8, 8)).shape == PoolSqueeze(form)(torch.randn(1, 3, 8, 8)).shape


# -- flips ----------------------------------------------------------------------------------------

class Flips(nn.Module):
    """A spatial flip (test-time augmentation) and a flip of the channel dim in every form."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 6, 1)
        self.c, self.d = nn.Conv2d(6, 6, 1), nn.Conv2d(6, 4, 1)

    def forward(self, x):
        y = torch.relu(self.a(x))
        y = y + torch.flip(y, [3])  # positional dims (Roll's row read them as flat: break97 F6)
        z = torch.relu(self.b(y.flip(1)))  # the channels reversed
        z = self.c(torch.fliplr(z)) + z.flip(-1, 1)
        return self.d(torch.relu(z))


def test_flips_of_spatial_and_channel_dims_prune_exactly():
    pm, small = check(Flips(), X, X2)
    assert prunable(pm) == {"a": 8, "b": 6}  # c's output is added to b's reversed: one group
    assert small.b.in_channels == 4 and small.c.in_channels == small.c.out_channels == 3


# -- messages with the rewrite that prunes or traces (break97 F7, F10) ------------------------------

class ChannelByIndex(nn.Module):
    def __init__(self, slice_it: bool):
        super().__init__()
        self.slice_it = slice_it
        self.a, self.b, self.c = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(1, 4, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = torch.relu(self.a(x))
        one = y[:, 5:6] if self.slice_it else y[:, 5].unsqueeze(1)
        return self.b(one) + self.c(y)


def test_an_integer_channel_index_names_the_slice_that_prunes():
    pm = fxprune.prepare(ChannelByIndex(slice_it=False), X)
    (group,) = [g for g in fxprune.channel_groups(pm) if g.producers == ["a"]]
    assert not group.prunable and "y[:, i:i+1], whose bounds fxprune rewrites, prunes" in group.reason
    pm, small = check(ChannelByIndex(slice_it=True), X, X2)  # the rewrite the reason names
    assert "a" in prunable(pm)


class RankGuarded(nn.Module):
    def __init__(self, traced_assert: bool):
        super().__init__()
        self.traced_assert = traced_assert
        self.a = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        if self.traced_assert:
            torch._assert(x.dim() == 4, "NCHW input")
        else:
            assert x.dim() == 4, "NCHW input"
        return self.a(x)


def test_a_rank_guard_names_torch_assert_which_traces():
    with pytest.raises(fxprune.TraceError, match=r"torch\._assert\(cond, message\), which traces"):
        fxprune.prepare(RankGuarded(traced_assert=False), X)
    pm = fxprune.prepare(RankGuarded(traced_assert=True), X)
    with pytest.raises(AssertionError, match="NCHW input"):
        pm(torch.randn(3, 8, 8))


def test_rules_may_be_any_mapping():
    """review115 F5: a MappingProxyType (a frozen config) worked before rules= was checked."""
    import types

    rules = types.MappingProxyType({"flip": fxprune.rules.Barrier("mine")})
    assert prunable(fxprune.prepare(_Flips(), (X,), rules=rules)) == {}


class _Keyword(nn.Module):
    """Legal argument forms review134 found prepare or finalize failing on: a layer called with
    its input by keyword (F2), ``F.conv2d``'s weight by keyword (F3), ``Tensor.view(size=)``
    (F4) and ``torch.swapaxes(axis0=, axis1=)`` (F6)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.w = nn.Parameter(torch.randn(8, 8, 1, 1) / 3)
        self.lin = nn.Linear(8, 8)
        self.pool = nn.MaxPool2d(2)
        self.c = nn.Conv1d(8, 5, 1)

    def forward(self, x):
        y = self.pool(input=self.bn(input=self.a(input=x)))
        y = F.relu(F.conv2d(y, weight=self.w))
        y = torch.swapaxes(self.lin(input=torch.swapaxes(y, axis0=1, axis1=3)), axis0=1, axis1=3)
        return self.c(y.contiguous().view(size=(y.shape[0], 8, -1)))


def test_keyword_argument_forms_prune_exactly():
    pm, _ = check(_Keyword(), torch.randn(2, 3, 8, 8), torch.randn(3, 3, 12, 12))
    assert prunable(pm) == {"a": 8, "w": 8, "lin": 8}


def test_literal_view_size_by_keyword_is_rewritten():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.c = nn.Conv2d(4, 8, 3, padding=1), nn.Conv1d(8, 3, 1)

        def forward(self, x):
            return self.c(self.a(x).view(size=(x.size(0), 8, 36)))

    pm, small = prune_and_check(M().eval(), torch.randn(2, 4, 6, 6))
    assert prunable(pm) == {"a": 8}
    assert small.a.out_channels == 4


class _GroupNormOverFeatures(nn.Module):
    """A group norm over (N, T, F) with a Linear's channels in F (dim 2): its statistics run
    over them. ``form``: the module, ``F.group_norm`` with a literal group count, or with one
    computed from the shape."""

    def __init__(self, form: str):
        super().__init__()
        self.form = form
        self.l1, self.gn, self.l2 = nn.Linear(6, 16), nn.GroupNorm(2, 4), nn.Linear(16, 3)

    def forward(self, x):
        y = self.l1(x)
        if self.form == "module":
            y = self.gn(y)
        else:
            groups = y.size(1) // 2 if self.form == "computed" else 2
            y = F.group_norm(y, groups, self.gn.weight, self.gn.bias)
        return self.l2(y)


@pytest.mark.parametrize("form", ["module", "functional", "computed"])
def test_group_norm_keeps_channels_it_takes_statistics_over_whole(form):
    # review134 F1: group l1 was prunable and finalize failed ("differs ... by 0.164");
    # review135 F3: with a computed group count too ("by 0.299")
    pm = fxprune.prepare(_GroupNormOverFeatures(form).eval(), (torch.randn(2, 4, 6),))
    l1 = next(g for g in fxprune.channel_groups(pm) if g.producers == ["l1"])
    assert not l1.prunable and "takes its statistics over it" in l1.reason, l1.reason


def test_functional_batch_norm_with_an_untracked_weight_keeps_its_channels_whole():
    # review134 F5: a weight fxprune does not follow does not shrink with the channels
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.c = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            y = self.a(x)
            y = F.batch_norm(y, None, None, y.new_full((8,), 2.0), None, True)
            return self.c(y)

    pm = fxprune.prepare(M().eval(), (torch.randn(2, 3, 8, 8),))
    a = next(g for g in fxprune.channel_groups(pm) if g.producers == ["a"])
    assert not a.prunable and "does not track" in a.reason, a.reason
    fxprune.finalize(pm)


def test_a_norm_over_a_concat_reads_no_mask_from_the_device_per_forward(monkeypatch):
    # review134 F7: the gathered mask's all-ones answer was read (.item()) at every forward
    class U(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(4, 8, 3, padding=1), nn.Conv2d(4, 8, 3, padding=1)
            self.gn, self.c = nn.GroupNorm(4, 16), nn.Conv2d(16, 3, 1)

        def forward(self, x):
            return self.c(self.gn(torch.cat([self.a(x), self.b(x)], 1)))

    x = torch.randn(2, 4, 8, 8)
    pm = fxprune.prepare(U(), (x,))
    groups = [g for g in fxprune.channel_groups(pm) if g.prunable]
    assert groups
    for g in groups:
        g.mask[1] = 0
    with torch.no_grad():
        pm(x)  # reads each group's mask once
        reads = []
        item = torch.Tensor.item
        monkeypatch.setattr(torch.Tensor, "item", lambda t: reads.append(1) or item(t))
        for _ in range(3):
            pm(x)
    assert reads == []
    for g in groups:  # a changed mask is read again
        g.mask[1] = 1
    with torch.no_grad():
        pm(x)
    assert len(reads) == len(groups)


def test_a_gathered_mask_only_a_conv_reads_is_not_read_from_the_device_after_a_mask_write(monkeypatch):
    # review135 F1: the gathered mask's all-ones answer was read at every forward after a
    # mask write (CUCB writes every step), whatever read it: 62 .item() per DenseNet forward
    class Cat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(4, 8, 3, padding=1), nn.Conv2d(4, 6, 3, padding=1)
            self.c = nn.Conv2d(14, 3, 1)

        def forward(self, x):
            return self.c(torch.cat([self.a(x), self.b(x)], 1))

    x = torch.randn(2, 4, 8, 8)
    pm = fxprune.prepare(Cat(), (x,))
    assert any(n.op == "call_module" and isinstance(pm.get_submodule(n.target), fxprune.masks.MaskGather)
               for n in pm.graph.nodes)
    reads = []
    item = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda t: reads.append(1) or item(t))
    with torch.no_grad():
        for _ in range(3):
            for g in fxprune.channel_groups(pm):
                if g.prunable:
                    g.mask.copy_(g.mask)
            pm(x)
    assert reads == []


def test_a_keyword_for_a_positional_only_first_parameter_stays_a_keyword():
    # review135 F4: moved into args, it changed what the module received (TraceError)
    class Scale(nn.Module):
        def forward(self, x=None, /, **kw):
            return kw["x"] * 2 if x is None else x * 3

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.s, self.c = nn.Conv2d(3, 8, 3), Scale(), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.c(self.s(x=self.a(x)))

    x = torch.randn(2, 3, 8, 8)
    model = M().eval()
    pm = fxprune.prepare(model, (x,), leaf_modules=(Scale,))
    call = next(n for n in pm.graph.nodes if n.target == "s")
    assert call.args == () and "x" in call.kwargs
    assert torch.equal(run_eval(pm, (x,)), run_eval(model, (x,)))


class _NormWeightsFromTheShape(nn.Module):
    """break136 F1, F2: a norm's weight built from the activation's channel count follows the
    pruned count (as ones_like does); F.layer_norm's crashed prepare (a bare TypeError) and
    F.batch_norm's kept the group whole."""

    def __init__(self, norm: str):
        super().__init__()
        self.norm = norm
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        self.register_buffer("rm", torch.zeros(8))
        self.register_buffer("rv", torch.ones(8))

    def forward(self, x):
        y = self.a(x)
        if self.norm == "batch":
            return self.b(F.batch_norm(y, self.rm, self.rv, torch.ones(y.shape[1]), None))
        y = y.permute(0, 2, 3, 1)
        c = y.shape[-1]
        y = F.layer_norm(y, (c,), torch.ones(c), torch.zeros(c))
        return self.b(y.permute(0, 3, 1, 2))


@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_a_norm_weight_sized_from_the_activation_prunes_with_it(norm):
    pm, small = check(_NormWeightsFromTheShape(norm), torch.randn(2, 3, 8, 8), torch.randn(3, 3, 10, 12))
    assert prunable(pm) == {"a": 8} and small.a.out_channels == 4


def test_a_one_channel_functional_norm_on_its_own_one_element_tensors_stays_prunable():
    # break136 F3: its 1-element running_mean was called untracked and the conv kept whole
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
            self.register_buffer("rm", torch.zeros(1))
            self.register_buffer("rv", torch.ones(1))
            self.w, self.bias = nn.Parameter(torch.ones(1)), nn.Parameter(torch.zeros(1))

        def forward(self, x):
            y = self.a(x)
            first = F.batch_norm(y[:, :1], self.rm, self.rv, self.w, self.bias, False, 0.1, 1e-5)
            return self.b(torch.cat([first, y[:, 1:]], 1))

    pm, _ = check(M(), torch.randn(2, 3, 8, 8), torch.randn(3, 3, 10, 12))
    assert prunable(pm) == {"a": 8}


def test_uninitialized_lazy_layers_are_refused_with_the_way_out():
    # break136 F4: torch's "Can't access the shape of an uninitialized parameter ... load_state_dict"
    model = nn.Sequential(nn.LazyConv2d(8, 3), nn.ReLU(), nn.LazyConv2d(4, 1))
    with pytest.raises(ValueError, match=r"uninitialized lazy parameters \(0.weight\).*run the model once"):
        fxprune.prepare(model, (torch.randn(2, 3, 8, 8),))


def test_a_vector_expanded_to_a_channel_count_and_summed_keeps_the_channels_whole():
    # review138 F2: expand(y.size(1)) read the one count as a whole shape, left it unchecked,
    # and finalize failed (0.48 off): the count is a number the pruned model computes
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            y = self.a(x)
            return self.b(y * torch.ones(1).expand(y.size(1)).sum())

    pm = fxprune.prepare(M().eval(), (torch.randn(2, 3, 8, 8),))
    a = next(g for g in fxprune.channel_groups(pm) if g.producers == ["a"])
    assert not a.prunable, a.reason


class _PerChannelColumn(nn.Module):
    """review138's gap: a (C, 1, 1) tensor sized from the activation's count (a layer scale or
    bias built in forward) kept its group whole; it broadcasts along dim 1 as a parameter does."""

    def __init__(self, form: str):
        super().__init__()
        self.form = form
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.a(x)
        c = y.shape[1]
        if self.form == "ones":
            return self.b(y * torch.ones(c, 1, 1) + 0.5)
        if self.form == "full":
            return self.b(y + torch.full((c, 1, 1), 0.25))
        return self.b(y * (y.new_ones(c, 1, 1) * 2))


@pytest.mark.parametrize("form", ["ones", "full", "new_ones"])
def test_a_per_channel_column_sized_from_the_activation_prunes_with_it(form):
    pm, small = check(_PerChannelColumn(form), torch.randn(2, 3, 8, 8), torch.randn(3, 3, 10, 12))
    assert prunable(pm) == {"a": 8} and small.a.out_channels == 4


def test_a_column_sized_from_the_channels_but_broadcast_along_height_keeps_them_whole():
    # (C, 1) against (N, C, H, W) meets H, not C: the channel count does not make it per-channel
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            y = self.a(x)
            return self.b(y * torch.ones(y.shape[1], 1))

    pm, _ = check(M(), torch.randn(2, 3, 8, 8), torch.randn(3, 3, 8, 8))
    assert prunable(pm) == {}


def test_quantized_recurrent_and_embedding_layers_are_named_as_quantized():
    # review142 F5: a dynamic quantized LSTM and a quantized Embedding (packed weights, in no
    # count) were left out of the warning and the summary's "not counted"
    from fxprune.op_table import quantization_stage
    from torch.ao.nn import quantized as nnq
    from torch.ao.nn.quantized import dynamic as nnqd

    assert quantization_stage(nnqd.LSTM) == quantization_stage(nnq.Embedding) == "quantized"
    assert quantization_stage(type("MyQuantizedConv", (nnq.Conv2d,), {})) == "quantized"
    assert quantization_stage(nnq.FloatFunctional) is None
    assert quantization_stage(nn.LSTM) is None and quantization_stage(nn.Conv2d) is None


class _Leaf(nn.Module):
    def forward(self, x):
        return x * 2


@pytest.mark.parametrize("behind_a_leaf", [False, True])
def test_a_parametrized_conv_is_named_where_it_ends_tracking_after_a_leaf_or_as_the_stem(behind_a_leaf):
    # review142 F7: a barrier whose input was already untracked recorded nothing, so the
    # reader named the leaf before it, or (a stem) "the model input, or an op ..."
    from torch.nn.utils import parametrizations

    layers = [nn.Conv2d(3, 8, 3), _Leaf()] if behind_a_leaf else []
    model = nn.Sequential(*layers, nn.Conv2d(8 if behind_a_leaf else 3, 8, 1), nn.ReLU(),
                          nn.Conv2d(8, 4, 1))
    param = len(layers)
    parametrizations.weight_norm(model[param])
    pm = fxprune.prepare(model.eval(), (X,), leaf_modules=[_Leaf])
    (last,) = [g for g in fxprune.channel_groups(pm) if g.name == f"{param + 2}.weight[1]"]
    assert f"they were dropped: `{param}` (ParametrizedConv2d) computes its weight" in last.reason, last.reason


def test_a_column_meeting_the_batch_dim_is_said_so_not_blamed_on_the_stem():
    # review142 F6: "they were dropped: conv input reads the model input `x` ... at `a`"
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            y = self.a(x)
            return self.b(y * torch.ones(y.shape[1], 1, 1, 1))  # meets N (8 == the batch)

    pm = fxprune.prepare(M().eval(), (torch.randn(8, 3, 6, 6),))
    reasons = " ".join(g.reason for g in fxprune.channel_groups(pm, all_groups=True))
    assert "channels meet dim 0 of `a`, which holds none" in reasons, reasons
    assert "they were dropped" not in reasons


@pytest.mark.parametrize("how", ["fx", "eager"])
def test_a_model_prepared_for_calibration_is_refused_before_it_runs(how):
    # break144 F5: prepare_fx's observers were offered as leaf_modules, an eager one's made
    # every group "hold activation_post_process.histogram"
    from torch.ao import quantization as tq
    from torch.ao.quantization.quantize_fx import prepare_fx

    model = nn.Sequential(tq.QuantStub(), nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1),
                          tq.DeQuantStub()).eval()
    if how == "fx":
        calibrating = prepare_fx(model, tq.get_default_qconfig_mapping("x86"), (X,))
    else:
        model.qconfig = tq.get_default_qconfig("x86")
        calibrating = tq.prepare(model)
    with pytest.raises(ValueError, match=r"^prepare: `.*` is an observer of a model prepared for "
                                         r"quantization \(torch\.ao\.quantization\.observer\..*"
                                         r"prune the float model"):
        fxprune.prepare(calibrating, (X,))


@torch.fx.wrap
def _flipped(a):
    return a.flip(1)


def test_channels_dropped_before_a_concat_are_named_where_they_were_dropped():
    # break144 F2: the layer reading the concat was named ("meeting channels that are not
    # tracked at `dw`"), never the op that dropped them
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
            self.c2b = nn.Conv2d(16, 8, 1)
            self.dw = nn.Conv2d(24, 24, 3, padding=1, groups=24)
            self.c4 = nn.Conv2d(24, 8, 1)

        def forward(self, x):
            x = F.relu(self.c1(x))
            y = torch.cat([_flipped(self.c2(x)), self.c2b(x)], 1)
            return self.c4(F.relu(self.dw(y)))

    pm = fxprune.prepare(Net().eval(), (torch.randn(1, 3, 16, 16),))
    (c2b,) = [g for g in fxprune.channel_groups(pm) if g.name == "c2b"]
    assert "meeting channels that are not tracked (they were dropped: no channel rule for " in c2b.reason
    assert "_flipped" in c2b.reason, c2b.reason


def test_prepare_and_finalize_leave_the_callers_random_state_as_it_was():
    """break154 F6: shape propagation and finalize's check ran a forward that draws
    (randn_like) outside fork_rng, so the caller's next draws moved."""
    class Noisy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.c = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.c(torch.relu(self.a(x)) + 0.01 * torch.randn_like(x[:, :1]))

    x, model = torch.randn(2, 3, 8, 8), Noisy().eval()
    torch.manual_seed(0)
    ref = torch.rand(3)
    torch.manual_seed(0)
    pm = fxprune.prepare(model, (x,))
    assert torch.equal(torch.rand(3), ref)
    fxprune.channel_groups(pm)[0].mask[0] = 0
    torch.manual_seed(0)
    fxprune.finalize(pm)
    assert torch.equal(torch.rand(3), ref)
    hooked = Noisy().eval()  # a user's hook: prepare runs the model again to check it (review157 F12)
    hooked.c.register_forward_pre_hook(lambda module, args: None)
    torch.manual_seed(0)
    fxprune.prepare(hooked, (x,))
    assert torch.equal(torch.rand(3), ref)
    # break159 F5: the FLOPs count behind a method's cost and summary() ran it outside too
    from fxprune.summary import count_flops

    pm = fxprune.prepare(model, (x,))
    for call in (lambda: fxprune.SMCP(pm, target=0.5, channel_step=1), lambda: fxprune.summary(pm),
                 lambda: count_flops(pm, (x,))):
        torch.manual_seed(0)
        with contextlib.redirect_stdout(io.StringIO()):
            call()
        assert torch.equal(torch.rand(3), ref)


# ----------------------------------------------------------------------------- outputs

@dataclasses.dataclass
class _Heads:
    logits: torch.Tensor
    aux: torch.Tensor


class _DataclassOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 6, 3), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = torch.relu(self.a(x))
        return _Heads(logits=self.b(y), aux=self.c(y))


def test_a_dataclass_output_is_checked():
    """break163 F5: a forward returning a dataclass "held no values": finalize refused, its way
    out was check=False, and prepare's trace check compared nothing. Its fields are read now."""
    from fxprune.compare import flat_tensors

    x = torch.randn(2, 3, 10, 10, dtype=torch.float64)
    pm, small = prune_and_check(_DataclassOut().double(), x)
    want, got = pm.eval()(x), small.eval()(x)
    torch.testing.assert_close(got.logits, want.logits)
    torch.testing.assert_close(got.aux, want.aux)
    assert [t.shape for t in flat_tensors(want)] == [want.logits.shape, want.aux.shape]


class _StarArgs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 1)

    def forward(self, *xs):
        return self.b(torch.relu(self.a(xs[0] + xs[1])))


class _ReadsKwargs(_StarArgs):
    def forward(self, x, **kw):
        return self.b(torch.relu(self.a(x))) * kw.get("gain", 1.0)


def test_a_forward_taking_star_args_prunes_and_one_reading_kwargs_is_one_line():
    """break163 F1: forward(*xs) was refused for two inputs ("takes 0 required argument(s)",
    then an IndexError for the ([a, b],) it suggested); forward(x, **kw) reading kw got a
    list there and blamed the example inputs. torch.fx traces both."""
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    prune_and_check(_StarArgs().double(), x, x.flip(0))
    with pytest.raises(fxprune.ExampleInputsError,
                       match=r"^the model's forward reads \*\*kw, and prepare passes "
                             r"example_inputs by position, so it cannot fill keyword arguments; "
                             r"wrap the model"):
        fxprune.prepare(_ReadsKwargs().double(), (x,))


class _BranchesOnKwargs(_StarArgs):
    def forward(self, x, **options):
        y = self.a(x)
        if options.get("double"):  # a flag in **kwargs
            y = y * 2
        return self.b(y)


def test_a_forward_branching_on_a_kwargs_flag_is_told_of_the_kwargs():
    """break174 F12: `if kw.get("double"):` got the tensor-dependent control-flow message and
    advice of leaf_modules and shape guards, not the **kwargs refusal the README gives."""
    with pytest.raises(fxprune.TraceError, match=r"if options.get\(\"double\"\):[\s\S]*\nThe "
                                                r"line reads forward's \*\*options, and prepare "
                                                r"passes example_inputs by position"):
        fxprune.prepare(_BranchesOnKwargs(), (torch.randn(1, 3, 8, 8),))


class _GlobalReduction(nn.Module):
    """PointNet's shape: per-point convs, then a global reduction over the points, spelled as
    models write it, then a head; ``how="channels"`` reduces over the channels instead."""

    SPELLINGS = {
        "max": lambda y: torch.max(y, 2)[0],
        "values": lambda y: y.max(dim=2).values,
        "min_keepdim": lambda y: torch.min(y, 2, keepdim=True)[0].squeeze(2),
        "median": lambda y: torch.median(y, 2).values,
        "var_mean": lambda y: torch.var_mean(y, dim=2)[0] + torch.var_mean(y, dim=2)[1],
        "std_mean": lambda y: torch.std_mean(y, 2)[0] * torch.std_mean(y, 2)[1],
        "aminmax": lambda y: torch.aminmax(y, dim=2).max,
        "max_of_two": lambda y: torch.max(y, y.flip(2)).mean(2),
        "channels": lambda y: torch.max(y, 1)[0].sum(-1, keepdim=True).expand(-1, 32),
    }

    def __init__(self, how):
        super().__init__()
        self.how = how
        self.a, self.b, self.fc = nn.Conv1d(3, 16, 1), nn.Conv1d(16, 32, 1), nn.Linear(32, 4)

    def forward(self, x):
        return self.fc(self.SPELLINGS[self.how](self.b(torch.relu(self.a(x)))))


@pytest.mark.parametrize("how", list(_GlobalReduction.SPELLINGS))
def test_reductions_returning_two_tensors_prune_over_the_dims_they_keep(how):
    """break163 F3: torch.max(y, 2)[0] (PointNet's global feature), .values, median, var_mean,
    aminmax... kept the conv before them whole ("no channel rule"), where amax over the same
    dim pruned; a reduction over the channels stays a barrier with its reason."""
    x = torch.randn(2, 3, 10, dtype=torch.float64)
    pm, _ = prune_and_check(_GlobalReduction(how).double(), x)
    prunable = sorted(g.size for g in fxprune.channel_groups(pm) if g.prunable)
    assert prunable == ([16] if how == "channels" else [16, 32])
    if how == "channels":
        assert "reduced over (would mix channels)" in str(summary_table(pm))


class _PoolWithIndices(nn.Module):
    def __init__(self, functional):
        super().__init__()
        self.functional = functional
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        self.pool = nn.MaxPool2d(2, return_indices=True)

    def forward(self, x):
        y = torch.relu(self.a(x))
        values, _ = F.max_pool2d(y, 2, return_indices=True) if self.functional else self.pool(y)
        return self.b(values)


@pytest.mark.parametrize("functional", [False, True])
def test_a_max_pool_returning_its_indices_prunes(functional):
    """break163 F4: MaxPool2d(return_indices=True) was kept whole as "changes the number of
    dims" (it returns a pair), and F.max_pool2d(..., return_indices=True) had no rule."""
    pm, _ = prune_and_check(_PoolWithIndices(functional).double(),
                            torch.randn(2, 3, 8, 8, dtype=torch.float64))
    assert [g.size for g in fxprune.channel_groups(pm) if g.prunable] == [8]


class _SegNetStage(nn.Module):
    """SegNet's encoder-decoder step: the decoder unpools its features to the places the
    encoder's max pool took its values from."""

    def __init__(self, functional):
        super().__init__()
        self.functional = functional
        self.enc, self.mid = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.dec = nn.Conv2d(8, 4, 1)
        self.pool, self.unpool = nn.MaxPool2d(2, return_indices=True), nn.MaxUnpool2d(2)

    def forward(self, x):
        y = torch.relu(self.enc(x))
        values, indices = self.pool(y)
        z = torch.relu(self.mid(values))
        if self.functional:
            up = F.max_unpool2d(z, indices, 2, output_size=y.size())
        else:
            up = self.unpool(z, indices, output_size=y.shape)
        return self.dec(up)


@pytest.mark.parametrize("functional", [False, True])
def test_max_unpooling_ties_the_decoder_to_the_encoder_s_channels(functional):
    """MaxUnpool2d had no row (a barrier keeping both convs whole): its values and indices hold
    the same channels, so `mid`'s output channels are `enc`'s, one group of both."""
    pm, _ = prune_and_check(_SegNetStage(functional).double(),
                            torch.randn(2, 3, 8, 8, dtype=torch.float64))
    [group] = [g for g in fxprune.channel_groups(pm) if g.prunable]
    assert group.size == 8 and {p.split(".")[0] for p in group.producers} == {"enc", "mid"}
