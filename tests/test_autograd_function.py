"""A custom ``torch.autograd.Function`` in a forward is one call in the prepared and finalized
models, its backward kept; its channels follow its class's row or stop at a barrier that says
how to give one (passes/autograd_function.py; break154 F1)."""
from __future__ import annotations

import io
import warnings

import pytest
import torch
from torch import nn

import fxprune
from fxprune.passes.autograd_function import apply_function, function_key, resolve
from fxprune.rules import Elementwise


class SwishFn(torch.autograd.Function):  # as efficientnet_pytorch's MemoryEfficientSwish
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * torch.sigmoid(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(x)
        return g * (s * (1 + x * (1 - s)))


class RoundSTE(torch.autograd.Function):  # a straight-through estimator: round, gradient 1
    @staticmethod
    def forward(ctx, x):
        return torch.round(x * 4) / 4

    @staticmethod
    def backward(ctx, g):
        return g


class GradReverse(torch.autograd.Function):  # DANN: identity forward, negated gradient
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return -g


class Net(nn.Module):
    def __init__(self, function):
        super().__init__()
        self.function = function
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.c = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.c(self.function.apply(self.a(x))).mean((2, 3))


def _grads(model, x):
    model.zero_grad()
    model(x).pow(2).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("function", [SwishFn, RoundSTE, GradReverse])
def test_the_functions_backward_reaches_every_layer_before_it(function):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    model = Net(function).double()
    pm = fxprune.prepare(model, (x,), rules={function: Elementwise()})
    applied = [n for n in pm.graph.nodes if n.target is apply_function]
    assert len(applied) == 1 and resolve(applied[0].args[0]) is function
    # its own backward: before, the forward's ops ran without grad (a.weight got none), and a
    # plain trace through them would have lost RoundSTE's and GradReverse's gradients
    want = _grads(model, x)
    got = _grads(pm, x)
    assert set(got) == set(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-12, atol=1e-12)

    group = next(g for g in fxprune.channel_groups(pm) if g.size == 16)
    assert group.prunable  # the row lets channels through the Function
    group.mask[[1, 5, 9]] = 0
    masked = pm(x)
    small = fxprune.finalize(pm)
    assert small.a.out_channels == 13 and small.c.in_channels == 13
    torch.testing.assert_close(small(x), masked, rtol=1e-12, atol=1e-12)
    small.zero_grad()
    small(x).pow(2).sum().backward()
    assert small.a.weight.grad is not None and small.a.weight.grad.abs().sum() > 0


def test_a_function_without_a_row_is_a_barrier_saying_how_to_give_one():
    x = torch.randn(2, 3, 8, 8)
    pm = fxprune.prepare(Net(SwishFn), (x,))
    group = next(g for g in fxprune.channel_groups(pm) if g.size == 16)
    assert not group.prunable
    assert ("no channel rule for the custom autograd Function test_autograd_function.SwishFn "
            "(called as one op, its backward kept); if it acts element by element, pass "
            "rules={SwishFn: fxprune.rules.Elementwise()}") in group.reason


def test_a_function_defined_in_a_function_and_a_saved_model_keep_their_backward(tmp_path):
    class Negate(torch.autograd.Function):  # not importable by its name: found in-process
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            return -g

    assert "@" in function_key(Negate) and resolve(function_key(Negate)) is Negate
    assert function_key(GradReverse) == "test_autograd_function:GradReverse"
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    model = Net(Negate).double()
    pm = fxprune.prepare(model, (x,), rules={Negate: Elementwise()})
    torch.testing.assert_close(_grads(pm, x)["a.weight"], _grads(model, x)["a.weight"])

    class Saved(nn.Module):  # a model that pickles: no class among its attributes
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 16, 3, padding=1)
            self.c = nn.Conv2d(16, 4, 1)

        def forward(self, x):
            return self.c(GradReverse.apply(self.a(x))).mean((2, 3))

    Saved.__module__, Saved.__qualname__ = __name__, "Saved"
    globals()["Saved"] = Saved  # pickled by its name, as a model of a module
    try:
        model = Saved().double()
        pm = fxprune.prepare(model, (x,), rules={GradReverse: Elementwise()})
        want = _grads(model, x)
        buffer = io.BytesIO()
        torch.save(pm, buffer)  # a prepared model pickles its own graph
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
        torch.testing.assert_close(_grads(loaded, x)["a.weight"], want["a.weight"])
        next(g for g in fxprune.channel_groups(loaded) if g.size == 16).mask[2] = 0
        want = _grads(loaded, x)
        small = fxprune.finalize(loaded)
        buffer = io.BytesIO()
        torch.save(small, buffer)  # a finalized one is re-traced from its code when loaded
        buffer.seek(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            again = torch.load(buffer, weights_only=False)
        assert any(n.target is apply_function for n in again.graph.nodes)
        kept = [i for i in range(16) if i != 2]  # the masked model's kept rows
        torch.testing.assert_close(_grads(again, x)["a.weight"], want["a.weight"][kept])
    finally:
        del globals()["Saved"]


def test_a_key_that_names_nothing_importable_is_one_line():
    with pytest.raises(RuntimeError, match=r"the model applies the custom autograd Function "
                                           r"nowhere_module:Fn, which cannot be imported here: "
                                           r"define it at module level"):
        resolve("nowhere_module:Fn@1234")


def test_timms_memory_efficient_activations_have_rows():
    timm = pytest.importorskip("timm", reason="timm is in the dev extra")
    from timm.layers.activations_me import HardMishMe, SwishMe

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), HardMishMe(), nn.Conv2d(8, 8, 3), SwishMe(),
                          nn.Conv2d(8, 4, 1))
    x = torch.randn(2, 3, 10, 10)
    pm = fxprune.prepare(model, (x,))
    assert timm is not None
    assert [g.prunable for g in fxprune.channel_groups(pm) if g.size == 8] == [True, True]
    want, got = _grads(model, x), _grads(pm, x)
    for name in want:  # every layer trains (break154 F1: 60 of resnet18's 62 got no gradient)
        torch.testing.assert_close(got[name], want[name])
