"""Gathered execution (CUCB's active sub-network): same loss and gradients as the masked
full-width network, and inactive weights, optimizer state and BN statistics untouched."""
from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxprune
from fxprune.masks import _InputMasked, set_straight_through
from fxprune.models import build_model
from fxprune.passes.gathered import gathered_module
from fxprune.units import UnitIndex


def setup(dtype=torch.float64, seed=0, channels_last=False):
    torch.manual_seed(seed)
    model = build_model("resnet_fmnist", widths=[8, 16, 16]).to(dtype)
    x = torch.randn(16, 1, 28, 28, dtype=dtype)
    y = torch.randint(0, 10, (16,))
    pm = fxprune.prepare(model, (x[:1],))
    if channels_last:
        pm = pm.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    for m in pm.modules():
        if isinstance(m, _InputMasked):
            m.fxprune_straight_through = False  # CUCB's hard masks
    index = UnitIndex(pm)
    rng = np.random.default_rng(seed)
    active = np.zeros(index.n, dtype=bool)
    for i, g in enumerate(index.groups):
        order, _ = index.ranking(i, rng.random(g.size))
        active[index.group_slice(i).start + order[: g.size // 2]] = True
    index.set_masks(pm, active.astype(np.float32))
    gathered = gathered_module(pm)
    gathered.set_active(active)
    return pm, gathered, x, y, active


def grads(pm):
    return {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for n, p in pm.named_parameters()}


def test_same_loss_and_gradients_as_the_masked_network():
    pm, gathered, x, y, _ = setup()
    loss_masked = F.cross_entropy(pm(x), y)
    loss_masked.backward()
    g_masked = grads(pm)
    pm.zero_grad(set_to_none=True)  # (train-mode BN normalises by batch statistics: the masked
    # forward's update of the running ones does not change the gathered forward)
    loss_gathered = F.cross_entropy(gathered(x), y)
    loss_gathered.backward()
    g_gathered = grads(pm)
    torch.testing.assert_close(loss_gathered, loss_masked, rtol=1e-12, atol=1e-12)
    for n in g_masked:
        torch.testing.assert_close(g_gathered[n], g_masked[n], rtol=1e-10, atol=1e-12, msg=n)
    assert any(bool((g != 0).any()) for g in g_gathered.values())


def _channels_last_gradients():
    """float32 NHWC, half of every group active: layer2's strided 1x1 shortcut sees 4 input
    channels, the case where oneDNN's own strided 1x1 weight gradient corrupts the heap."""
    torch.set_num_threads(1)  # where that kernel crashed most reliably (2 threads: a hang)
    pm, gathered, x, y, _ = setup(torch.float32, channels_last=True)
    assert len(gathered.indices["layer2.0.downsample.0.weight:1"]) == 4
    for _ in range(3):
        pm.zero_grad(set_to_none=True)
        F.cross_entropy(pm(x), y).backward()
        g_masked = grads(pm)
        pm.zero_grad(set_to_none=True)
        F.cross_entropy(gathered(x), y).backward()
        for n, g in grads(pm).items():
            torch.testing.assert_close(g, g_masked[n], rtol=1e-4, atol=1e-5, msg=n)


def test_channels_last_float32_gradients_match_the_masked_network():
    # in a child process: the failure this guards against is a crash or a hang of the process
    import subprocess
    import sys

    code = f"import runpy; runpy.run_path({__file__!r})['_channels_last_gradients']()"
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail("a gathered NHWC step hung (oneDNN's strided 1x1 weight gradient)")
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"


def test_a_step_leaves_inactive_weights_optimizer_state_and_bn_statistics_bit_identical():
    pm, gathered, x, y, active = setup(torch.float32)
    opt = torch.optim.SGD(pm.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    gathered.protect(opt)
    for step in range(3):
        before = {n: p.detach().clone() for n, p in pm.named_parameters()}
        buffers = {n: b.clone() for n, b in pm.named_buffers()}
        momentum = {p: opt.state[p]["momentum_buffer"].clone() for p in pm.parameters()
                    if "momentum_buffer" in opt.state.get(p, {})}
        F.cross_entropy(gathered(x), y).backward()
        opt.step()
        opt.zero_grad()
        keeps = gathered.element_masks(gathered.indices)
        changed_active = False
        for n, p in pm.named_parameters():
            keep = keeps.get(p)
            if keep is None:
                continue
            inactive = ~keep.expand_as(p)
            assert torch.equal(p.detach()[inactive], before[n][inactive]), n
            changed_active |= not torch.equal(p.detach()[~inactive], before[n][~inactive])
            if p in momentum:
                assert torch.equal(opt.state[p]["momentum_buffer"][inactive], momentum[p][inactive]), n
            else:  # created at this step: nothing for inactive elements
                assert not opt.state[p]["momentum_buffer"][inactive].any(), n
        assert changed_active
        for name in ("bn1", "layer1.0.bn1", "layer2.0.bn2"):
            bn = pm.get_submodule(name)
            idx = gathered.indices[f"{name}.weight:0"]
            off = torch.ones(bn.running_mean.numel(), dtype=torch.bool)
            off[idx] = False
            for stat in ("running_mean", "running_var"):
                now, then = getattr(bn, stat), buffers[f"{name}.{stat}"]
                assert torch.equal(now[off], then[off]), (name, stat)
                assert not torch.equal(now[~off], then[~off]), (name, stat)


def test_a_full_width_step_after_building_the_module_is_not_rolled_back():
    # building runs a checking forward: the step after a full-width forward (CUCB in a loop
    # that calls the prepared model, Lightning) must train every element with a gradient
    pm, gathered, x, y, _ = setup(torch.float32, seed=1)  # active set != the check's (seed 0)
    opt = torch.optim.SGD(pm.parameters(), lr=0.1)
    gathered.protect(opt)
    before = {n: p.detach().clone() for n, p in pm.named_parameters()}
    F.cross_entropy(pm(x), y).backward()
    grads = {n: p.grad.clone() for n, p in pm.named_parameters()}
    opt.step()
    for n, p in pm.named_parameters():
        stuck = (grads[n] != 0) & (p.detach() == before[n])
        assert not stuck.any(), f"{n}: {int(stuck.sum())} elements with a gradient did not move"


def test_unsupported_graphs_are_refused_with_a_reason():
    from torch import nn
    from fxprune.errors import SurgeryError

    class WithLayerNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.ln, self.fc2 = nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2)

        def forward(self, x):
            return self.fc2(self.ln(self.fc1(x)))

    pm = fxprune.prepare(WithLayerNorm(), (torch.randn(1, 4),))
    with pytest.raises(SurgeryError, match="masked execution"):
        gathered_module(pm)


class _DropConnectConv(nn.Conv2d):
    """A conv with a forward of its own: a random weight mask in training."""

    def forward(self, x):
        w = F.dropout(self.weight, 0.5, self.training)
        return self._conv_forward(x, w, self.bias)


def test_a_users_conv_with_its_own_forward_is_not_gathered_as_a_plain_conv():
    """break200 F5: a row-given conv subclass's own forward (DropConnect) was replaced by a
    plain conv in gathered execution, which trained without it, unsaid (the construction's
    check runs in eval mode, where the two agree)."""
    from fxprune.errors import SurgeryError
    from fxprune.rules import Conv

    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), _DropConnectConv(8, 8, 3), nn.ReLU(),
                        nn.Conv2d(8, 4, 1))
    pm = fxprune.prepare(net, (torch.randn(1, 3, 10, 10),), rules={_DropConnectConv: Conv()})
    with pytest.raises(SurgeryError, match=r"^gathered execution does not run _DropConnectConv's "
                                           r"own forward \(2\): it would call the plain layer "
                                           r"instead; use masked execution"):
        gathered_module(pm)


def test_grouped_convs_gather_and_a_graph_it_cannot_gather_is_refused():
    from torch import nn
    from fxprune.errors import SurgeryError

    class Grouped(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 12, 3, padding=1, groups=4)
            self.h = nn.Conv2d(12, 3, 1)

        def forward(self, x):
            return self.h(F.relu(self.b(F.relu(self.a(x)))))

    class ChannelBuffer(nn.Module):  # a channel-sized buffer the gathered graph reads whole
        def __init__(self):
            super().__init__()
            self.a, self.h = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 3, 1)
            self.register_buffer("scale", torch.linspace(0.5, 1.5, 8).view(1, 8, 1, 1))

        def forward(self, x):
            return self.h(self.a(x) * self.scale)

    x = torch.randn(2, 3, 8, 8)
    pm = fxprune.prepare(Grouped(), (x,))
    assert gathered_module(pm).check(pm) <= 1e-4  # (construction checked it once already)
    # the message names the node and the tensors it reads (it named no op: break34 #10)
    with pytest.raises(SurgeryError, match=r"fails on the example inputs at node mul \(\S*mul "
                                           r"reading scale\).*use masked execution"):
        gathered_module(fxprune.prepare(ChannelBuffer(), (x,)))
    with pytest.warns(UserWarning, match="gathered execution unavailable"):
        pruner = fxprune.CUCB(fxprune.prepare(ChannelBuffer(), (x,)), rho=0.5, channel_step=1)
    assert pruner.gathered is None


def test_a_frozen_batch_norm_and_a_dropout_keep_their_own_modes():
    """break30 #2: the gathered BN took the step's mode, so a BN frozen by the user (eval in a
    train()-ed model) normalised with batch statistics and moved its running ones; reading
    train_forward set every shared module (a Dropout in eval) back to train mode."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8),
                                torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.Conv2d(8, 4, 3))
    x = torch.randn(4, 3, 8, 8)
    pm = fxprune.prepare(model, (x[:1],))
    pruner = fxprune.CUCB(pm, rho=0.5, warmup=3, explore=10, channel_step=1)
    pm.train()
    bn, drop = pm.get_submodule("1"), pm.get_submodule("3")
    bn.eval()
    drop.eval()
    stats = bn.running_mean.clone(), int(bn.num_batches_tracked)
    with torch.no_grad():
        expected = pm(x)
        got = pruner.train_forward(x)
    assert torch.allclose(got, expected, atol=1e-6)
    assert not drop.training and not bn.training
    assert torch.equal(bn.running_mean, stats[0]) and int(bn.num_batches_tracked) == stats[1]


def test_the_gathered_network_reads_buffers_the_model_replaced_since():
    """break30 #8: .to(dtype) replaces buffers; the gathered graph kept the old ones (float32
    constants in a float64 model, a dtype error in bfloat16)."""
    class Normalised(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("mean", torch.full((1, 3, 1, 1), 0.5))
            self.a, self.b = torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 4, 3)

        def forward(self, x):
            return self.b(self.a(x - self.mean).relu())

    x = torch.randn(2, 3, 8, 8)
    pm = fxprune.prepare(Normalised(), (x[:1],))
    pruner = fxprune.CUCB(pm, rho=0.5, warmup=3, explore=10, channel_step=1)
    pm = pm.to(torch.bfloat16)
    with torch.no_grad():
        got = pruner.train_forward(x.bfloat16())
        assert got.dtype == torch.bfloat16
        assert torch.equal(got, pm(x.bfloat16()))


def test_the_gathered_network_takes_keyword_arguments_as_the_model_does():
    """break33 #6: pruner.train_forward(x, aux=y) was a TypeError (positional only)."""
    class TwoInputs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 4, 3)

        def forward(self, x, aux):
            return self.b(self.a(x + aux).relu())

    x = torch.randn(2, 3, 8, 8)
    pm = fxprune.prepare(TwoInputs(), (x[:1], x[:1]))
    pruner = fxprune.CUCB(pm, rho=0.5, warmup=3, explore=10, channel_step=1)
    with torch.no_grad():
        assert torch.equal(pruner.train_forward(x, aux=2 * x), pruner.train_forward(x, 2 * x))
        assert torch.equal(pruner.train_forward(x, aux=2 * x), pm(x, aux=2 * x))


def test_timms_batchnormact_and_elementwise_activation_modules_run_gathered():
    """break33 #4/#5: BatchNormAct2d ran as a plain BN (its activation and dropout dropped;
    with an activation the construction check fell back, blaming a literal channel count),
    and nn.LeakyReLU / nn.Hardsigmoid modules forced masked execution."""
    timm_layers = pytest.importorskip("timm.layers")

    class Net(torch.nn.Module):
        def __init__(self, act, drop):
            super().__init__()
            self.c1 = torch.nn.Conv2d(3, 16, 3, padding=1)
            self.bn = timm_layers.BatchNormAct2d(16, act_layer=act, drop_layer=drop)
            self.c2 = torch.nn.Conv2d(16, 8, 3)
            self.leaky, self.gate = torch.nn.LeakyReLU(), torch.nn.Hardsigmoid()

        def forward(self, x):
            return self.gate(self.leaky(self.c2(self.bn(self.c1(x)))))

    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    torch.manual_seed(0)
    pm = fxprune.prepare(Net(torch.nn.SiLU, None).double(), (x[:1],))
    pruner = fxprune.CUCB(pm, rho=0.5, warmup=2, explore=10, channel_step=1)
    assert pruner.execution == "gathered"
    pm.train()
    torch.testing.assert_close(pruner.train_forward(x), pm(x), rtol=1e-12, atol=1e-12)

    torch.manual_seed(0)
    pm = fxprune.prepare(Net(None, torch.nn.Dropout).double(), (x[:1],))
    pruner = fxprune.CUCB(pm, rho=0.5, warmup=2, explore=10, channel_step=1)
    assert pruner.execution == "gathered"
    pm.train()
    first, second = pruner.train_forward(x), pruner.train_forward(x)
    assert not torch.equal(first, second)  # the dropout drops (it was skipped)
    pm.eval()
    with torch.no_grad():
        torch.testing.assert_close(pruner.train_forward(x), pm(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("act", ["hardswish", "relu"])
def test_a_batchnormact_whose_channels_are_all_active_applies_its_activation_once(act):
    """break152 F2: with no gather index (a group kept whole, or every channel active) a
    training step ran the BatchNormAct2d itself, activation included, and then its activation
    again: hardswish's forward was 0.05 off the masked model's, and timm's in-place ReLU
    failed the backward ("modified by an inplace operation"); eval mode was right."""
    timm_layers = pytest.importorskip("timm.layers")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = torch.nn.Conv2d(3, 16, 3, padding=1, bias=False)
            self.bn1 = timm_layers.BatchNormAct2d(16, act_layer=act)
            self.c2 = torch.nn.Conv2d(16, 16, 3, padding=1, bias=False)
            self.bn2 = timm_layers.BatchNormAct2d(16, act_layer=act)  # read by the output: whole

        def forward(self, x):
            return self.bn2(self.c2(self.bn1(self.c1(x)))).mean((2, 3))

    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    torch.manual_seed(0)
    pm = fxprune.prepare(Net().double(), (x[:1],))
    for rho in (0.5, 1.0):  # bn2 kept whole; then every channel of bn1 active too
        pruner = fxprune.CUCB(pm, rho=rho, warmup=2, explore=10, channel_step=1)
        assert pruner.execution == "gathered"
        pm.train()
        reference = copy.deepcopy(pm)  # the masked model, its running statistics as they are
        out = pruner.train_forward(x)
        torch.testing.assert_close(out, reference(x), rtol=1e-12, atol=1e-12)
        out.sum().backward()
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(pm.bn2, name), getattr(reference.bn2, name))
        pruner.finalize_masks()
        pm.zero_grad()


def test_a_split_by_a_literal_channel_count_falls_back_to_masked_execution(capfd):
    """break34 #1: CSP blocks (x.split(C // 2, 1)) reached the construction check, whose
    IndexError escaped CUCB's constructor with torch.fx's traceback block on stderr."""
    class CSP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Conv2d(3, 16, 1), torch.nn.Conv2d(8, 8, 3, padding=1)
            self.act, self.head = torch.nn.LeakyReLU(), torch.nn.Conv2d(16, 4, 1)

        def forward(self, x):
            xs, xb = self.act(self.a(x)).split(8, dim=1)
            return self.head(torch.cat([xs, self.b(xb)], 1))

    pm = fxprune.prepare(CSP(), (torch.randn(1, 3, 8, 8),))
    # named by the split, not the getitem of its piece (break38 #6), before any run (break72)
    with pytest.warns(UserWarning, match=r"gathered execution cannot follow `split` "
                                         r"\(Tensor.split\): its arguments spell channel"):
        pruner = fxprune.CUCB(pm, rho=0.5, warmup=2, explore=10, channel_step=1)
    assert pruner.execution == "masked"
    assert "HERE" not in capfd.readouterr().err


class Gate(torch.nn.Module):
    """A one-channel gate sliced out of the group at a literal position."""

    def __init__(self):
        super().__init__()
        self.a, self.c = torch.nn.Conv2d(3, 24, 3, padding=1), torch.nn.Conv2d(24, 4, 3, padding=1)

    def forward(self, x):
        y = self.a(x)
        return self.c(y * torch.sigmoid(y[:, 1:2]))


class ChunkHeads(torch.nn.Module):
    """One conv's output chunked in two halves, each read by its own conv (two groups)."""

    def __init__(self, pieces: int = 2):
        super().__init__()
        self.a = torch.nn.Conv2d(3, 8 * pieces, 3, padding=1)
        self.heads = torch.nn.ModuleList(torch.nn.Conv2d(8, 4, 1) for _ in range(pieces))

    def forward(self, x):
        return sum(h(p) for h, p in zip(self.heads, self.a(x).chunk(len(self.heads), dim=1)))


@pytest.mark.parametrize("model, node", [(Gate, "getitem"), (ChunkHeads, "chunk"),
                                         (lambda: ChunkHeads(3), "chunk")])
def test_a_call_spelling_channel_positions_is_refused_whatever_the_check_draws(model, node):
    """break72 #2, #3: the gathered graph kept ``y[:, 1:2]`` and ``chunk(2)`` as written. Where
    the active set moved channel 1 (or split the halves unevenly) the gate read another channel,
    silently, and the chunk failed at a random step; the construction check, one random half of
    each group, let both through by chance. Such a call is refused before any run."""
    from fxprune.errors import SurgeryError

    x = torch.randn(1, 3, 8, 8)
    pm = fxprune.prepare(model(), (x,))
    with pytest.raises(SurgeryError, match=rf"cannot follow `{node}` .*spell channel positions "
                                           r"or counts.*use masked execution"):
        gathered_module(pm)
    with pytest.warns(UserWarning, match="gathered execution unavailable"):
        pruner = fxprune.CUCB(pm, rho=0.5, warmup=1, explore=4, channel_step=1)
    assert pruner.execution == "masked"
    for _ in range(4):  # masked training runs every active set the bandit draws
        loss = pruner.train_forward(torch.randn(4, 3, 8, 8)).square().mean()
        loss.backward()
        pruner.step(loss)


def test_spatial_padding_and_a_read_channel_count_still_gather():
    """The refusal is of spelled channel positions, not of every call a row rewrites: F.pad on
    the spatial dims and a view whose sizes are read from the tensor run gathered, exactly."""
    class Padded(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 4, 3)

        def forward(self, x):
            y = F.relu(self.a(x))
            n, c, h, w = y.shape
            y = y.reshape(n, c, h * w).reshape(n, c, h, w)
            return self.b(F.pad(y, (1, 1, 1, 1)))

    x = torch.randn(2, 3, 8, 8)
    pm = fxprune.prepare(Padded(), (x,))
    assert gathered_module(pm).check(pm) <= 1e-4


def test_a_chunk_whose_pieces_are_tied_channel_by_channel_still_gathers():
    """A chunk is refused only where its pieces can differ: halves added channel by channel
    (one unit, one channel in each half) stay equal at every active set, and run gathered."""
    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.c = torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.Conv2d(8, 4, 1)

        def forward(self, x):
            p, q = self.a(x).chunk(2, dim=1)
            return self.c(F.relu(p + q))

    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    pm = fxprune.prepare(Tied().double(), (x,))
    gathered = gathered_module(pm)
    index = UnitIndex(pm)
    rng = np.random.default_rng(0)
    for _ in range(5):  # several active sets of several sizes, not the check's one half
        active = np.zeros(index.n, dtype=bool)
        active[rng.permutation(index.n)[:rng.integers(1, index.n + 1)]] = True
        index.set_masks(pm, active.astype(np.float64))
        gathered.set_active(active)
        with torch.no_grad():
            assert torch.allclose(gathered(x), pm(x), rtol=0, atol=1e-12)


def test_channelwise_modules_without_parameters_run_gathered():
    """break72 #5: Dropout2d, Upsample and a plain InstanceNorm on pruned channels made CUCB
    train masked at full width; each acts on every channel alone, so they gather (exactly: the
    check compares with the masked model in eval mode)."""
    from torch import nn

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.InstanceNorm2d(8), nn.Dropout2d(0.2),
                          nn.Upsample(scale_factor=2), nn.AdaptiveMaxPool2d(4),
                          nn.Conv2d(8, 4, 1))
    pm = fxprune.prepare(model, (torch.randn(2, 3, 8, 8),))
    assert gathered_module(pm).check(pm) <= 1e-4
    affine = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.InstanceNorm2d(8, affine=True),
                           nn.Conv2d(8, 4, 1))  # a weight per channel: not gathered (yet)
    from fxprune.errors import SurgeryError
    with pytest.raises(SurgeryError, match="does not support InstanceNorm2d"):
        gathered_module(fxprune.prepare(affine, (torch.randn(2, 3, 8, 8),)))


def test_max_unpooling_runs_gathered():
    """review169 F6: with MaxUnpool2d's row, a SegNet-style stage is prunable, but the module
    was not among the channelwise ones and CUCB trained it masked at full width."""
    from torch import nn

    class SegNetStage(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc, self.mid = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
            self.dec = nn.Conv2d(8, 4, 1)
            self.pool, self.unpool = nn.MaxPool2d(2, return_indices=True), nn.MaxUnpool2d(2)

        def forward(self, x):
            values, indices = self.pool(torch.relu(self.enc(x)))
            return self.dec(self.unpool(torch.relu(self.mid(values)), indices))

    pm = fxprune.prepare(SegNetStage(), (torch.randn(2, 3, 8, 8),))
    assert any(g.prunable for g in fxprune.channel_groups(pm))
    assert gathered_module(pm).check(pm) <= 1e-4


def test_a_functional_layer_norm_on_pruned_channels_is_refused_up_front():
    """break154 F5: timm's LayerNorm2d (F.layer_norm) passed the check the module form gets,
    failed later on a size mismatch and was said as "an op it cannot gather"."""
    from torch import nn
    import torch.nn.functional as F
    from fxprune.errors import SurgeryError

    class Channels(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
            self.w, self.bias = nn.Parameter(torch.ones(8)), nn.Parameter(torch.zeros(8))

        def forward(self, x):
            y = self.a(x).permute(0, 2, 3, 1)
            y = F.layer_norm(y, (8,), self.w, self.bias).permute(0, 3, 1, 2)
            return self.b(y)

    pm = fxprune.prepare(Channels(), (torch.randn(2, 3, 8, 8),))
    with pytest.raises(SurgeryError, match=r"gathered execution does not support the functional "
                                           r"layer_norm \(`layer_norm`\) on pruned channels; use "
                                           r"masked execution"):
        gathered_module(pm)


def test_a_slice_of_the_whole_channel_dim_still_gathers():
    """break75 #4: ghostnet's `cat([x1, x2], 1)[:, :16]` on 16 channels, rewritten to `:15`
    when one is dropped, was refused although it selects every kept channel either way."""
    class Ghost(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p, self.q = torch.nn.Conv2d(3, 8, 1), torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.h = torch.nn.Conv2d(16, 4, 1)

        def forward(self, x):
            a = self.p(x)
            return self.h(torch.cat([a, self.q(a)], 1)[:, :16])

    x = torch.randn(2, 3, 8, 8)
    pm = fxprune.prepare(Ghost(), (x,))
    assert gathered_module(pm).check(pm) <= 1e-4
    from fxprune.errors import SurgeryError
    with pytest.raises(SurgeryError, match="cannot follow `getitem`"):  # a part of it: refused
        gathered_module(fxprune.prepare(Gate(), (x,)))


def test_torchvisions_stochastic_depth_runs_gathered_drawing_as_the_masked_model():
    """efficientnet's and convnext's StochasticDepth drops whole samples: gathered (CUCB fell
    back to full width on it), with the same draws as the masked model in training."""
    from torch import nn
    from torchvision.ops import StochasticDepth

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
            self.drop, self.h = StochasticDepth(0.5, "row"), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            y = torch.relu(self.a(x))
            return self.h(y + self.drop(self.b(y)))

    torch.manual_seed(0)
    x = torch.randn(6, 3, 8, 8, dtype=torch.float64)
    pm = fxprune.prepare(Block().double(), (x,))
    for m in pm.modules():
        if isinstance(m, _InputMasked):
            m.fxprune_straight_through = False
    gathered = gathered_module(pm)
    index = UnitIndex(pm)
    active = np.zeros(index.n, dtype=bool)
    active[::2] = True
    index.set_masks(pm, active.astype(np.float64))
    gathered.set_active(active)
    pm.train(), gathered.train()
    torch.manual_seed(1)
    masked = pm(x)
    torch.manual_seed(1)
    assert torch.allclose(gathered(x), masked, rtol=0, atol=1e-12)


class OwnForwardLinear(torch.nn.Linear):
    """timm's Linear: its own forward, F.linear on its own parameters (traced through)."""

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class OwnForwardConv(torch.nn.Conv2d):
    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)


class FunctionalLayers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.mid = OwnForwardConv(8, 12, 3, padding=1)
        self.head = OwnForwardLinear(12, 10)

    def forward(self, x):
        x = F.relu(self.mid(F.relu(self.stem(x))))
        return self.head(x.mean((2, 3)))


def test_parameters_read_by_functional_layers_are_gathered():
    """ghostnet (timm): its classifier, a Linear with its own forward, traced as F.linear on
    classifier.weight, read the whole weight beside the active inputs: CUCB fell back to
    masked execution ("mat1 and mat2 shapes cannot be multiplied")."""
    torch.manual_seed(0)
    x, y = torch.randn(8, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (8,))
    pm = fxprune.prepare(FunctionalLayers().double(), (x[:1],))
    set_straight_through(pm, False)  # CUCB's hard masks
    index = UnitIndex(pm)
    assert index.n == 8 + 12  # both groups are prunable, read through F.conv2d / F.linear
    active = np.zeros(index.n, dtype=bool)
    active[[0, 3, 5, 8, 9, 13, 19]] = True
    index.set_masks(pm, active.astype(np.float64))
    gathered = gathered_module(pm)  # its check: gathered == masked on the example input
    gathered.set_active(active)
    assert tuple(gathered.indices["head.weight:1"].tolist()) == (0, 1, 5, 11)
    F.cross_entropy(pm(x), y).backward()
    g_masked = grads(pm)
    pm.zero_grad(set_to_none=True)
    opt = torch.optim.SGD(pm.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    gathered.protect(opt)
    before = {n: p.detach().clone() for n, p in pm.named_parameters()}
    F.cross_entropy(gathered(x), y).backward()
    for n, g in grads(pm).items():
        torch.testing.assert_close(g, g_masked[n], rtol=1e-10, atol=1e-12, msg=n)
    opt.step()
    keeps = gathered.element_masks(gathered.indices)
    for name in ("mid.weight", "head.weight"):
        p = pm.get_parameter(name)
        inactive = ~keeps[p].expand_as(p)
        assert inactive.any() and torch.equal(p.detach()[inactive], before[name][inactive])
        assert not torch.equal(p.detach()[~inactive], before[name][~inactive])


@pytest.mark.parametrize("method", ["cucb", "ccp", "hard", "smcp"])
def test_hard_masks_stop_the_gradient_through_functional_layers_too(method):
    """CUCB, CCP and SMCP's hard masks turned the straight-through estimator off in the masked
    layer classes only: a layer with its own forward (F.linear on its weight, timm's Linear)
    still passed gradient to its masked-out input columns. SMCP's soft masks keep it."""
    from fxprune.methods.registration import get_method

    torch.manual_seed(0)
    x, y = torch.randn(8, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (8,))
    pm = fxprune.prepare(FunctionalLayers().double(), (x[:1],))
    kwargs = {"execution": "masked"} if method == "cucb" else {}
    get_method(method).build(pm, target=0.8, **kwargs)
    index = UnitIndex(pm)
    kept = np.ones(index.n)
    kept[[8, 9, 10]] = 0  # three of mid's output channels, read by head (F.linear)
    index.set_masks(pm, kept)
    F.cross_entropy(pm(x), y).backward()
    through = pm.get_parameter("head.weight").grad[:, :3]
    assert bool((through != 0).any()) is (method == "smcp")


class _ScaledHead(nn.Module):
    """A bfloat16 net whose output scale stays float32."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.fc = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1), nn.Linear(16, 10)
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        f = torch.relu(self.c2(torch.relu(self.c1(x)))).mean((2, 3))
        return self.fc(f) * self.scale.to(f.dtype)


def test_a_bfloat16_model_with_a_float32_parameter_runs_gathered():
    """break109 F1: the gathered network's check cast the bfloat16 example to the dtype of the
    one tensor it holds itself (the float32 scale), failed on a bfloat16 conv, and CUCB fell
    back to masked execution, blaming an op it cannot gather."""
    torch.manual_seed(0)
    net = _ScaledHead().to(torch.bfloat16)
    net.scale.data = net.scale.data.float()
    pm = fxprune.prepare(net, (torch.randn(1, 3, 8, 8, dtype=torch.bfloat16),))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*gathered execution unavailable")
        pruner = fxprune.CUCB(pm, rho=0.5, warmup=2, explore=10)
    assert pruner.execution == "gathered"


@pytest.mark.parametrize("dtype, runs_gathered", [(torch.float16, True), (torch.float32, False)])
def test_the_gathered_check_allows_a_half_precision_model_finalize_s_tolerance(dtype, runs_gathered,
                                                                               monkeypatch):
    """break159 F3: the check compared with float32's 1e-4 whatever the dtype, so a float16
    model fell back to masked execution at random (1 seed in 8: 1.7e-4), blaming an op it
    cannot gather. A difference of 5e-3 is a float16 model's rounding, not a float32 one's."""
    from fxprune.passes import gathered

    monkeypatch.setattr(gathered, "max_relative_error", lambda expected, got: 5e-3)
    torch.manual_seed(0)
    pm = fxprune.prepare(_ScaledHead().to(dtype), (torch.randn(1, 3, 8, 8, dtype=dtype),))
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        pruner = fxprune.CUCB(pm, rho=0.5, warmup=2, explore=10)
    assert (pruner.execution == "gathered") == runs_gathered
    assert runs_gathered or any("differs from the masked model by 0.005" in str(w.message) for w in said)


def test_a_transposed_conv_is_refused_with_its_own_reason_alone():
    """break116 #1: the refusal added a guess about literal channel counts to a reason of
    its own (transposed convs are not gathered)."""
    from fxprune.errors import SurgeryError

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.ConvTranspose2d(8, 8, 2, stride=2), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    pm = fxprune.prepare(model, (torch.randn(2, 3, 8, 8),))
    with pytest.raises(SurgeryError) as refused:
        gathered_module(pm)
    message = str(refused.value)
    assert "does not support transposed convs" in message and "literal channel" not in message


@pytest.mark.parametrize("act", [nn.Threshold(0.1, 0.0), nn.Hardshrink(), nn.Softshrink(), nn.RReLU()])
def test_more_elementwise_activation_modules_run_gathered(act):
    """break116 #5: Threshold, Hardshrink (and Softshrink, RReLU) made CUCB train at full width."""
    _assert_cucb_runs_gathered(act)


def _assert_cucb_runs_gathered(layer, **prepare_kwargs):
    """CUCB on conv -> ``layer`` -> conv trains gathered, with no fallback warning, and its
    sub-network computes the masked model's output."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), layer, nn.Conv2d(8, 4, 1)).double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    pm = fxprune.prepare(model, (x,), **prepare_kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback to masked execution, said by a warning
        pruner = fxprune.CUCB(pm, rho=0.5, warmup=2, explore=10, channel_step=1)
    assert pruner.execution == "gathered"
    pm.eval()
    with torch.no_grad():
        torch.testing.assert_close(pruner.train_forward(x), pm(x), rtol=1e-12, atol=1e-12)


def test_optimizer_state_of_another_shape_than_its_weight_is_warned_of():
    """break116 #2: Adafactor's factored moments of inactive channels changed at every step,
    unsaid, where the README promised their state bit-identical."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 4, (4,))
    pm = fxprune.prepare(model, (x,))
    pruner = fxprune.CUCB(pm, rho=0.5, warmup=50, channel_step=1)
    opt = torch.optim.Adafactor(pm.parameters(), lr=1e-2)
    pruner.attach_optimizer(opt)
    with pytest.warns(RuntimeWarning, match=r"CUCB: Adafactor's state '\w+' has shape .*, not its "
                                            r"weight's .* \(factored moments\)"):
        for _ in range(2):
            F.cross_entropy(pruner.train_forward(x), y).backward()
            pruner.step()
            opt.step()
            opt.zero_grad()


class _UserAct(nn.Module):
    """A user's activation fxprune has no row for."""

    def forward(self, x):
        return x * torch.tanh(x)


@pytest.mark.parametrize("layer", [_UserAct(), nn.LPPool2d(2, 1), nn.ReflectionPad2d(1),
                                   nn.PReLU()])
def test_a_module_whose_row_says_it_runs_as_it_is_runs_gathered(layer):
    """review194 M2: gathered execution kept a second list of channel-agnostic modules, so a
    user's row (rules={MyAct: Elementwise()}) and op-table rows it lacked (LPPool, spatial
    pads) made CUCB train at full width; the row now says (ChannelRule.gathers_as_is)."""
    from fxprune.rules import Elementwise

    _assert_cucb_runs_gathered(layer, rules={_UserAct: Elementwise()}, leaf_modules=[_UserAct])


def test_a_module_with_a_count_of_channels_or_a_tensor_per_channel_is_not_gathered():
    """A row that says no: a PReLU of one slope per channel holds a tensor of that count."""
    from fxprune.errors import SurgeryError

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.PReLU(8), nn.Conv2d(8, 4, 1))
    pm = fxprune.prepare(model, (torch.randn(2, 3, 8, 8),))
    assert fxprune.channel_groups(pm)
    with pytest.raises(SurgeryError, match="does not support PReLU"):
        gathered_module(pm)
