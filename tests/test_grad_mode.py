"""Grad-mode and autocast regions of a forward survive tracing (passes/grad_mode.py; break97
F1, F2: torch.fx dropped them, and a stop-gradient branch was trained through)."""
from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

import fxprune
from fxprune.errors import SurgeryError
from fxprune.passes.grad_mode import GRAD_ENABLED, keep_no_grad_regions


class StopGradient(nn.Module):
    """A BYOL/SimSiam-style target branch computed without grad."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Conv2d(3, 16, 3, padding=1)
        self.target = nn.Conv2d(16, 16, 1)
        self.pred = nn.Conv2d(16, 16, 1)

    def forward(self, x):
        f = F.relu(self.backbone(x))
        with torch.no_grad():
            t = self.target(f)
        return self.pred(f), t


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    @torch.no_grad()
    def forward(self, x):
        return F.relu(self.conv(x))


class FrozenEncoder(nn.Module):
    """A frozen encoder (``@torch.no_grad()`` on its forward, traced through) and a statement
    form (``torch.set_grad_enabled``) around a second layer."""

    def __init__(self):
        super().__init__()
        self.encoder = Encoder()
        self.mid = nn.Conv2d(8, 8, 1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.encoder(x)
        torch.set_grad_enabled(False)
        y = self.mid(y) + 1
        torch.set_grad_enabled(True)
        return self.head(y)


def _loaded(model):
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def _grads(model, x):
    model.zero_grad(set_to_none=True)
    out = model(x)
    loss = sum(o.float().pow(2).mean() for o in (out if isinstance(out, tuple) else (out,)))
    if loss.requires_grad:
        loss.backward()
    return {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_no_grad_branch_gets_no_gradient_in_the_prepared_finalized_and_loaded_models(dtype):
    torch.manual_seed(0)
    model = StopGradient().to(dtype)
    x = torch.randn(2, 3, 8, 8, dtype=dtype)
    pm = fxprune.prepare(model, (x[:1],))
    want = _grads(model, x)
    got = _grads(pm, x)
    assert got["target.weight"] is None and want["target.weight"] is None
    torch.testing.assert_close(got["backbone.weight"], want["backbone.weight"])  # not through t
    fxprune.channel_groups(pm)[0].mask[:8] = 0
    small = fxprune.finalize(pm)
    for m in (small, _loaded(small)):
        p, t = m(x)
        assert p.requires_grad and not t.requires_grad
        assert _grads(m, x)["target.weight"] is None


def test_the_callers_grad_mode_is_restored_after_a_no_grad_region():
    pm = fxprune.prepare(StopGradient(), (torch.randn(1, 3, 8, 8),))
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        p, _ = pm(x)
        assert not torch.is_grad_enabled() and not p.requires_grad  # not turned on after it
    pm(x)
    assert torch.is_grad_enabled()


def test_a_frozen_encoder_and_set_grad_enabled_statements_are_kept():
    torch.manual_seed(0)
    model = FrozenEncoder()
    x = torch.randn(2, 3, 8, 8)
    pm = fxprune.prepare(model, (x[:1],))
    want, got = _grads(model, x), _grads(pm, x)
    assert {n for n, g in want.items() if g is None} == {"encoder.conv.weight", "encoder.conv.bias",
                                                           "mid.weight", "mid.bias"}
    assert {n for n, g in got.items() if g is None} == {n for n, g in want.items() if g is None}
    fxprune.channel_groups(pm)[0].mask[:4] = 0
    small = fxprune.finalize(pm)
    assert _grads(small, x)["encoder.conv.weight"] is None
    assert _grads(small, x)["head.weight"] is not None


class Float32Head(nn.Module):
    """A head kept in float32 under the caller's autocast, and a body run in bfloat16."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = F.relu(self.c1(x))
        with torch.autocast("cpu", enabled=False):
            return self.head(y.float())


def test_autocast_regions_are_kept_in_the_prepared_finalized_and_loaded_models():
    torch.manual_seed(0)
    model = Float32Head()
    x = torch.randn(2, 3, 8, 8)
    pm = fxprune.prepare(model, (x[:1],))
    with torch.no_grad():
        torch.testing.assert_close(pm(x), model(x), rtol=0, atol=0)  # the body ran in bfloat16
    fxprune.channel_groups(pm)[0].mask[:8] = 0
    small = fxprune.finalize(pm)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x).dtype == torch.float32
        for m in (pm, small, _loaded(small)):
            assert m(x).dtype == torch.float32, type(m)


def test_keep_no_grad_regions_brackets_each_run_of_nodes_made_without_grad():
    graph = fx.Graph()
    x = graph.placeholder("x")
    a = graph.call_function(torch.relu, (x,))
    b = graph.call_function(torch.neg, (a,))
    c = graph.call_function(torch.exp, (b,))
    d = graph.call_function(torch.neg, (c,))
    graph.output(d)
    for node in (a, b, d):
        node.meta[GRAD_ENABLED] = False
    assert keep_no_grad_regions(graph) == 2
    targets = [n.target for n in graph.nodes if n.op == "call_function"]
    assert targets == [torch.is_grad_enabled, torch._C._set_grad_enabled, torch.relu, torch.neg,
                       torch._C._set_grad_enabled, torch.exp, torch.is_grad_enabled,
                       torch._C._set_grad_enabled, torch.neg, torch._C._set_grad_enabled]
    gm = fx.GraphModule(nn.Module(), graph)
    x = torch.randn(3, requires_grad=True)
    assert not gm(x).requires_grad  # the last op ran without grad
    assert torch.is_grad_enabled()


class MomentumTeacher(nn.Module):
    """MoCo: the key encoder follows the query encoder by a momentum update in forward."""

    def __init__(self, m=0.5):
        super().__init__()
        self.m = m
        self.encoder_q = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))
        self.encoder_k = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))
        self.encoder_k.requires_grad_(False)

    @torch.no_grad()
    def _momentum_update(self):
        for q, k in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            k.data = k.data * self.m + q.data * (1.0 - self.m)

    def forward(self, x):
        q = self.encoder_q(x)
        with torch.no_grad():
            self._momentum_update()
            k = self.encoder_k(x)
        return q, k


def test_a_parameter_update_in_forward_is_warned_of_and_undone_in_the_prepared_model():
    """break99 F2: the update ran once, while tracing, on prepare's copy: the prepared
    teacher started from other weights, and nothing said the update was gone."""
    torch.manual_seed(0)
    model = MomentumTeacher()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.warns(UserWarning, match=r"forward changes parameter `encoder_k.0.weight` \(3 more\) "
                                         r"while it runs .* make that update outside forward"):
        pm = fxprune.prepare(model, (torch.randn(2, 3, 8, 8),))
    for name, value in state.items():
        assert torch.equal(pm.state_dict()[name], value), name
        assert torch.equal(model.state_dict()[name], value), name  # the user's model untouched


class Bfloat16Body(nn.Module):
    def __init__(self, width=128, depth=6):
        super().__init__()
        self.a = nn.Conv2d(3, width, 3, padding=1)
        self.body = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1) for _ in range(depth))
        self.out = nn.Conv2d(width, 8, 1)

    def forward(self, x):
        y = F.relu(self.a(x))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            for conv in self.body:
                y = F.relu(conv(y)) + y
            y = self.out(y)
        return y.float()


def test_finalize_checks_a_bfloat16_autocast_region_at_bfloat16_s_tolerance(monkeypatch):
    """break99 F4: bfloat16 rounding in the region (0.0035 apart) was called a bug in fxprune.
    The check runs at bfloat16's tolerance, and at an explicit rtol where one is given. (How
    far apart the two models land is the host's: 0.0035 on an AVX-512 host, equal at the
    example input on an AVX2 one; the tolerance the check is handed is asserted, not that.)"""
    from fxprune import api

    torch.manual_seed(0)
    pm = fxprune.prepare(Bfloat16Body(), (torch.randn(1, 3, 16, 16),))
    g = torch.Generator().manual_seed(1)
    for group in fxprune.channel_groups(pm):
        if group.prunable:
            group.mask[torch.randperm(group.size, generator=g)[: group.size // 2]] = 0
    checked = []
    real = api.verify
    monkeypatch.setattr(api, "verify", lambda *a: checked.append(a[-1]) or real(*a))
    small = fxprune.finalize(pm)
    assert small.a.out_channels == 64
    # the check still runs: an explicit rtol is kept, which the region's bfloat16 rounding
    # meets on an AVX2 host and not on an AVX-512 one (0.0035 apart; ci138 ran on one)
    try:
        fxprune.finalize(pm, rtol=1e-4)
    except SurgeryError as exc:
        assert "(relative; allowed 0.0001)" in str(exc), exc
    assert checked == [api.DEFAULT_RTOL[torch.bfloat16], 1e-4]
    x = torch.randn(4, 3, 16, 16)
    scale = pm(x).abs().max()
    assert (pm(x) - small(x)).abs().max() <= api.DEFAULT_RTOL[torch.bfloat16] * scale


class FailingInsideRegions(nn.Module):
    """A linear head under no_grad and bfloat16 autocast, which fails on another image size."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 8 * 8, 4)

    def forward(self, x):
        y = F.relu(self.c1(x))
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            z = self.fc(y.flatten(1))
        return z.float()


def test_an_error_inside_a_region_leaves_the_caller_s_modes_as_they_were():
    """break99 F1: the graph's region calls ran to the op that raised, and the caller was left
    without grad and under bfloat16 autocast (the model's own `with` statements restore them)."""
    x = torch.randn(1, 3, 8, 8)
    pm = fxprune.prepare(FailingInsideRegions(), (x,))
    fxprune.channel_groups(pm)[0].mask[:4] = 0
    small = fxprune.finalize(pm)
    from fxprune.passes.gathered import gathered_module  # CUCB's execution (break100 F3)

    gathered = gathered_module(pm)
    gathered.set_active(np.ones(sum(g.size for g in fxprune.channel_groups(pm)), dtype=bool))
    for m in (FailingInsideRegions(), pm, small, _loaded(small), _loaded(pm), gathered.gm):
        with pytest.raises(RuntimeError):
            m(torch.randn(1, 3, 6, 6))  # the linear fails inside both regions
        assert torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu"), type(m)
        # autocast's nesting depth back at 0, where leaving clears its cache of cast weights
        # (break100 F1: the cache was never cleared again, and later steps read stale casts)
        assert torch.autocast_increment_nesting() == 1, type(m)
        torch.autocast_decrement_nesting()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
            with pytest.raises(RuntimeError):
                m(torch.randn(1, 3, 6, 6))
            assert not torch.is_grad_enabled() and torch.is_autocast_enabled("cpu")
            assert torch.get_autocast_dtype("cpu") == torch.float16


class NoGradBlock(nn.Module):
    """A block computed without grad, its weights still requiring it."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.c, self.d = nn.Conv2d(16, 16, 1), nn.Conv2d(16, 4, 1)

    def forward(self, x):
        y = F.relu(self.a(x))
        with torch.no_grad():
            z = self.c(F.relu(self.b(y)))
        return self.d(y + z)


def test_smcp_says_when_layers_reading_prunable_channels_run_without_grad():
    """break99 F3: their channels score 0 under Taylor importance and went first, unsaid
    (layers frozen by requires_grad=False were said)."""
    pm = fxprune.prepare(NoGradBlock(), (torch.randn(2, 3, 8, 8),))
    with pytest.warns(RuntimeWarning, match=r"frozen weights \(run under torch.no_grad\(\) in "
                                            r"forward: b, c\)"):
        fxprune.SMCP(pm, target=0.5, warmup=0, ramp=4, update_every=2)


class CudaAutocast(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = F.relu(self.c1(x))
        with torch.autocast("cuda", dtype=torch.float16):
            return self.c2(y).float()


def test_a_cuda_autocast_region_is_recorded_as_written_on_a_host_without_cuda():
    """break100 F5: autocast("cuda") turns itself off where CUDA is missing, and was recorded
    off, so a model prepared on a CPU host never autocast once moved to the GPU."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "CUDA is not available": as it says
        pm = fxprune.prepare(CudaAutocast(), (torch.randn(1, 3, 8, 8),))
    (enter,) = pm.graph.find_nodes(op="call_function", target=torch.amp._enter_autocast)
    assert enter.args[:3] == ("cuda", torch.float16, True)


class TrainsOnlyInTrainMode(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        with torch.set_grad_enabled(self.training and torch.is_grad_enabled()):
            return F.relu(self.c(x))


class WithModeDependentEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.e = TrainsOnlyInTrainMode()
        self.c1, self.fc = nn.Conv2d(8, 8, 1), nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.c1(self.e(x)).mean((2, 3)))


@pytest.mark.parametrize("prepared_in", ["train", "eval"])
def test_a_region_a_submodule_opens_in_one_mode_follows_the_mode(prepared_in):
    """break100 F6: prepared in eval mode, the encoder never trained again (the region frozen),
    and the warning named the model's own forward."""
    model = WithModeDependentEncoder()
    model.train(prepared_in == "train")
    x = torch.randn(2, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # e is called as one op: said as such
        pm = fxprune.prepare(model, (x,))
    for mode in (True, False):
        model.train(mode), pm.train(mode)
        assert (_grads(pm, x)["e.c.weight"] is None) == (_grads(model, x)["e.c.weight"] is None) == (not mode)


class DefaultAutocast(nn.Module):
    """``torch.autocast("cpu")``: no dtype, so the caller's autocast dtype at each call."""

    def __init__(self):
        super().__init__()
        self.a, self.c = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        y = F.relu(self.a(x))
        with torch.autocast("cpu"):
            return self.c(y).float()


def test_an_autocast_dtype_left_out_is_the_caller_s_at_each_call():
    """review102 #1: the dtype at prepare (bfloat16) was recorded, so under the caller's
    float16 the region ran in bfloat16 (and a second call failed on mixed types)."""
    torch.manual_seed(0)
    model = DefaultAutocast()
    x = torch.randn(2, 3, 8, 8)
    pm = fxprune.prepare(model, (x[:1],))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        want = model(x)
        torch.testing.assert_close(pm(x), want, rtol=0, atol=0)
        torch.testing.assert_close(model(x), want, rtol=0, atol=0)


def test_another_thread_s_autocast_is_not_recorded_while_tracing():
    """review102 #2: torch.autocast is patched on its class while tracing; another thread's
    region went into the graph of a model that has none."""
    import threading

    stop = threading.Event()

    def busy():
        while not stop.is_set():
            with torch.autocast("cpu"):
                pass

    thread = threading.Thread(target=busy)
    thread.start()
    try:
        for _ in range(5):
            pm = fxprune.prepare(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), (torch.randn(1, 3, 8, 8),))
            assert "autocast" not in pm.code and "set_grad_enabled" not in pm.code
    finally:
        stop.set()
        thread.join()
    assert torch.amp.autocast.__enter__.__qualname__ == "autocast.__enter__"  # unpatched


class TooSmallInsideRegion(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 5)

    def forward(self, x):
        y = F.relu(self.a(x))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.b(y).float()


def test_a_failed_prepare_leaves_the_callers_autocast_as_it_was():
    """review102 #3: shape propagation runs the graph node by node; the region's exit never ran
    when a node failed, and autocast's nesting depth stayed raised."""
    with pytest.raises(fxprune.ExampleInputsError):
        fxprune.prepare(TooSmallInsideRegion(), (torch.randn(1, 3, 6, 6),))  # 4x4 < 5x5
    assert torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")
    assert torch.autocast_increment_nesting() == 1
    torch.autocast_decrement_nesting()


class InPlaceMomentumTeacher(MomentumTeacher):
    """The momentum update written in place through ``.data``: no version counter sees it."""

    @torch.no_grad()
    def _momentum_update(self):
        for q, k in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            k.data.mul_(self.m).add_(q.data * (1.0 - self.m))


@pytest.mark.parametrize("cls", [MomentumTeacher, InPlaceMomentumTeacher])
def test_prepare_copies_the_weights_once_and_a_forward_writing_them_leaves_them_as_they_were(
        cls, monkeypatch):
    """review125 F3: prepare's graph check ran a second copy of every weight (at prepare's
    peak, on the GPU too); it now shares the graph's, and what the model's forward writes into
    them while the check runs it (ci104) is put back from the user's model."""
    torch.manual_seed(0)
    model = cls().eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    copied = []
    deepcopy = nn.Parameter.__deepcopy__
    monkeypatch.setattr(nn.Parameter, "__deepcopy__", lambda p, memo: copied.append(1) or deepcopy(p, memo))
    with pytest.warns(UserWarning, match="forward changes parameter"):
        pm = fxprune.prepare(model, (torch.randn(2, 3, 8, 8),))
    assert len(copied) == len(list(model.parameters()))
    for name, value in state.items():
        assert torch.equal(pm.state_dict()[name], value), name
        assert torch.equal(model.state_dict()[name], value), name


class WritesABufferItReads(nn.Module):
    """break122 F0's graph that computes another function (a buffer written in place, then read
    back), with a buffer holding NaN that the check's put-back compares (review135 F5: a complex
    NaN counted as a change at every run, and the check judged nothing)."""

    def __init__(self, extra: torch.Tensor):
        super().__init__()
        self.a, self.c = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        self.register_buffer("buf", torch.zeros(2, 8, 8, 8))
        self.register_buffer("extra", extra)

    def forward(self, x):
        y = self.a(x)
        self.buf.copy_(y)
        out = self.c(self.buf.relu())
        scale = torch.nan_to_num(out.mean((1, 2, 3)).to(self.extra.dtype) * 0 + self.extra).abs().float()
        return out * scale.view(-1, 1, 1, 1)


@pytest.mark.parametrize("extra", [torch.tensor([float("nan"), 1.0]), torch.tensor([complex(float("nan"), 0.0), 1j])],
                         ids=["float", "complex"])
def test_the_graph_check_still_judges_a_model_holding_nan(extra):
    torch.manual_seed(0)
    with pytest.raises(fxprune.TraceError, match="computes another output"):
        fxprune.prepare(WritesABufferItReads(extra).eval(), (torch.randn(2, 3, 8, 8),))
