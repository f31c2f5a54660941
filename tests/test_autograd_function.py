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
from fxprune.passes.autograd_function import KEY, apply_function, function_key, resolve
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
    assert len(applied) == 1 and resolve(applied[0].kwargs[KEY]) is function
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


@pytest.mark.parametrize("row", [Elementwise(tensor_args=(0,)), "spatial"])
def test_a_row_reads_the_functions_own_arguments(row):
    """review157 F1: the class's key came first among the node's arguments, so a row reading
    its first argument as the input got a string (Spatial: a bare TypeError at prepare)."""
    from fxprune.op_table import SPATIAL

    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    model = Net(SwishFn).double()
    pm = fxprune.prepare(model, (x,), rules={SwishFn: SPATIAL if row == "spatial" else row})
    group = next(g for g in fxprune.channel_groups(pm) if g.size == 16)
    assert group.prunable, group.reason
    group.mask[[0, 3]] = 0
    torch.testing.assert_close(fxprune.finalize(pm)(x), pm(x), rtol=1e-12, atol=1e-12)


def test_a_function_class_made_at_each_call_of_a_helper_is_one_op_of_both_traces():
    """review157 F3: a class defined inside a function, made again at each call, got a key of
    its id, so the train- and eval-mode traces differed: a false "reads self.training"."""
    def gated(x):
        class Gate(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                return x * 2

            @staticmethod
            def backward(ctx, g):
                return g * 2

        return Gate.apply(x)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.c(gated(self.a(x)))

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pm = fxprune.prepare(nn.Sequential(Block()), (torch.randn(2, 3, 4, 4),))
    keys = {n.kwargs[KEY] for n in pm.graph.nodes if n.target is apply_function}
    assert len(keys) == 1 and "@" in next(iter(keys))
    assert not any(isinstance(m, Block) for m in pm.modules())  # traced through, not a leaf


class FusedBiasAct(torch.autograd.Function):  # StyleGAN2's fused bias + leaky ReLU: bias[C]
    @staticmethod
    def forward(ctx, x, bias):
        return torch.nn.functional.leaky_relu(x + bias.view(1, -1, 1, 1), 0.2)

    @staticmethod
    def backward(ctx, g):
        return g, g.sum((0, 2, 3))


class _FusedNet(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, c, 3, padding=1), nn.Conv2d(c, 4, 1)
        self.bias = nn.Parameter(torch.randn(c))

    def forward(self, x):
        return self.b(FusedBiasAct.apply(self.a(x), self.bias))


def test_an_elementwise_row_on_an_op_whose_argument_does_not_broadcast_keeps_its_channels():
    """break176 F4: Elementwise() on a Function taking a bias[C] (not broadcastable to the
    output) left the conv's channels prunable, and finalize failed after the training."""
    pm = fxprune.prepare(_FusedNet(), (torch.randn(2, 3, 10, 10),),
                         rules={FusedBiasAct: Elementwise()})
    (group,) = [g for g in fxprune.channel_groups(pm) if g.name == "a"]
    assert not group.prunable
    assert ("Elementwise row on an op whose argument of shape (8,) does not broadcast to its "
            "output (2, 8, 10, 10)") in group.reason


class BlurFn(torch.autograd.Function):  # a fused blur: a (3, 3) kernel, one per channel
    @staticmethod
    def forward(ctx, x, kernel):
        c = x.shape[1]
        return torch.nn.functional.conv2d(x, kernel.expand(c, 1, 3, 3), padding=1, groups=c)

    @staticmethod
    def backward(ctx, g):
        return g, None


class _BlurNet(_FusedNet):
    def __init__(self):
        super().__init__()
        self.register_buffer("kernel", torch.full((3, 3), 1 / 9))

    def forward(self, x):
        return self.b(BlurFn.apply(self.a(x), self.kernel))


def test_an_elementwise_row_on_an_op_with_a_kernel_argument_still_prunes_exactly():
    """review178 F3: the refusal above must not take a blur's (3, 3) kernel, which holds no
    channels, for a misplaced per-channel tensor: its channels were pruned exactly before."""
    x = torch.randn(2, 3, 10, 10)
    pm = fxprune.prepare(_BlurNet().eval(), (x,), rules={BlurFn: Elementwise()})
    (group,) = [g for g in fxprune.channel_groups(pm) if g.name == "a"]
    assert group.prunable
    group.mask[::2] = 0
    with torch.no_grad():
        want = pm(x)
        got = fxprune.finalize(pm)(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


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


def test_torch_compile_traces_the_call_without_a_graph_break():
    """review157 F2: each call resolved its class through importlib, which dynamo does not
    trace: two graph breaks per Function call in the prepared and the finalized model."""
    import torch._dynamo

    x = torch.randn(2, 3, 8, 8)
    pm = fxprune.prepare(Net(SwishFn), (x,), rules={SwishFn: Elementwise()})
    torch._dynamo.reset()
    explained = torch._dynamo.explain(pm)(x)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)
