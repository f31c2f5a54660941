"""The public API's promises: errors that explain, inputs left alone, plain portable results."""
from __future__ import annotations

import copy
import io
import itertools
import json
import re
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import fxprune
from fxprune.masks import MaskedConv2d
from fxprune.compare import max_relative_error, run_eval
from fxprune.summary import count_flops
from helpers import assert_plain, random_masks


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent: torch.fx cannot trace this
            return self.conv(x)
        return x


class WithBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = Branchy()
        self.head = nn.Conv2d(8, 4, 1)
        self.mid = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        return self.head(self.mid(self.block(self.stem(x))))


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


X = torch.randn(2, 3, 32, 32)


def test_untraceable_model_names_module_line_and_leaf_modules():
    with pytest.raises(fxprune.TraceError) as err:
        fxprune.prepare(WithBranch(), (X,))
    msg = str(err.value)
    assert "`block`" in msg and "Branchy" in msg
    assert "if x.sum() > 0" in msg and "test_api.py" in msg
    assert "leaf_modules" in msg


class ZeroesChannel(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        y[:, 0] = 0
        return y


def test_item_assignment_names_the_out_of_place_forms():
    with pytest.raises(fxprune.TraceError) as err:
        fxprune.prepare(ZeroesChannel(), (X,))
    msg = str(err.value)
    assert "y[:, 0] = 0" in msg and "no in-place item assignment" in msg and "torch.where" in msg


def test_leaf_module_is_traced_whole_and_becomes_a_barrier():
    torch.manual_seed(0)
    model = WithBranch().eval()
    pm = fxprune.prepare(model, (X,), leaf_modules=[Branchy])
    groups = {g.name: g for g in fxprune.channel_groups(pm)}
    assert not groups["stem"].prunable and "Branchy" in groups["stem"].reason
    assert groups["mid"].prunable
    assert max_relative_error(run_eval(model, (X,)), run_eval(pm, (X,))) <= 1e-6


def test_wrong_example_inputs_are_explained(resnet18):
    with pytest.raises(fxprune.ExampleInputsError, match="example_inputs.*conv1"):
        fxprune.prepare(resnet18, (torch.randn(1, 1, 32, 32),))  # 1 channel, model wants 3
    # break89 F5: a video model given an image was told to pass an image's shape
    video = nn.Sequential(nn.Conv3d(3, 4, 3), nn.ReLU(), nn.Conv3d(4, 2, 1))
    with pytest.raises(fxprune.ExampleInputsError, match=r"its first layer, `0` \(Conv3d\), reads "
                                                         r"\(N, 3, T, H, W\): e.g. \(torch.randn\(1, 3, T, H, W\),\)\.$"):
        fxprune.prepare(video, (X,))
    with pytest.raises(fxprune.ExampleInputsError, match="1 required argument"):
        fxprune.prepare(resnet18, (X, X))
    with pytest.raises(fxprune.ExampleInputsError, match="tuple"):
        fxprune.prepare(resnet18, {"x": X})
    with pytest.raises(TypeError, match="nn.Module"):
        fxprune.prepare(lambda x: x, (X,))


def test_wrong_example_inputs_name_the_models_own_line(resnet18):
    with pytest.raises(fxprune.ExampleInputsError) as info:
        fxprune.prepare(resnet18, (torch.randn(1, 4, 32, 32),))
    origin = next(line for line in str(info.value).splitlines() if "from:" in line)
    # torchvision's forward, not the tracer's frames inside torch.fx or fxprune
    assert "torchvision/models/resnet.py" in origin and "self.conv1(x)" in origin, origin


class SizeAsserted(nn.Module):
    """A size check as timm writes it: an f-string of a traced size, frozen at trace time."""

    def __init__(self):
        super().__init__()
        self.conv, self.size = nn.Conv2d(3, 8, 3), 56

    def forward(self, x):
        height = x.shape[2]
        torch._assert(height == self.size, f"Input height ({height}) doesn't match model ({self.size}).")
        return self.conv(x)


def test_a_traced_value_in_the_models_own_message_is_shown_as_it_ran():
    """break101 #4: the message read "Input height (Proxy(getitem_2)) doesn't match model (56)"."""
    with pytest.raises(fxprune.ExampleInputsError,
                       match=r"AssertionError: Input height \(64\) doesn't match model \(56\)\."):
        fxprune.prepare(SizeAsserted(), (torch.randn(1, 3, 64, 64),))


def test_example_inputs_that_cannot_check_the_surgery_are_refused(resnet18):
    with pytest.raises(fxprune.ExampleInputsError, match=r"example_inputs\[0\] is empty"):
        fxprune.prepare(resnet18, (torch.randn(0, 3, 32, 32),))
    with pytest.raises(fxprune.ExampleInputsError, match="only NaN or inf"):
        fxprune.prepare(resnet18, (torch.full_like(X, float("nan")),))


def test_an_empty_or_infinite_input_beside_real_ones_is_fine():
    class Attend(nn.Module):  # an additive causal mask holds -inf; an empty cache has no rows
        def __init__(self):
            super().__init__()
            self.q, self.fc, self.out = nn.Linear(8, 8), nn.Linear(8, 16), nn.Linear(16, 8)

        def forward(self, x, mask, cache):
            a = torch.softmax(self.q(x) @ x.transpose(1, 2) + mask, -1) @ x
            return self.out(torch.relu(self.fc(a))), torch.cat([cache, x[:, :0]], 1)

    torch.manual_seed(0)
    mask = nn.Transformer.generate_square_subsequent_mask(5)
    inputs = (torch.randn(2, 5, 8), mask, torch.zeros(2, 0, 8))
    pm = fxprune.prepare(Attend().eval(), inputs)
    assert [g.name for g in fxprune.channel_groups(pm) if g.prunable] == ["fc"]
    random_masks(pm, 0.5, 0)
    fxprune.finalize(pm)


def test_a_nan_difference_never_passes_the_check():
    ones, inf, nan = torch.ones(3), float("inf"), float("nan")
    assert max_relative_error(ones, torch.tensor([1.0, nan, 1.0])) == inf
    assert max_relative_error(ones, torch.tensor([1.0, inf, 1.0])) == inf
    assert max_relative_error(ones, ones.clone()) == 0.0
    # non-finite values must sit at the same places; the finite rest is compared
    masked = torch.tensor([-inf, 2.0, nan])
    assert max_relative_error(masked, torch.tensor([-inf, 2.0, nan])) == 0.0
    assert max_relative_error(masked, torch.tensor([-inf, 1.0, nan])) == pytest.approx(0.5)
    assert max_relative_error(masked, torch.tensor([inf, 2.0, nan])) == inf
    assert max_relative_error(masked, torch.tensor([-inf, 2.0, 0.0])) == inf


def test_finalize_check_refuses_an_output_without_finite_values_and_wraps_a_crash():
    from fxprune.passes.surgery import verify

    torch.manual_seed(0)
    pm = fxprune.prepare(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)), (X,))

    class Fails(nn.Module):
        def forward(self, x):
            raise RuntimeError("shape mismatch")

    with pytest.raises(fxprune.SurgeryError, match="pruned model fails.*shape mismatch"):
        verify(pm, Fails(), (X,), 1e-4)
    with torch.no_grad():
        pm.get_submodule("0").bias.fill_(float("nan"))  # a diverged run
    with pytest.raises(fxprune.SurgeryError, match="no finite value"):
        fxprune.finalize(pm)
    assert fxprune.finalize(pm, check=False) is not None


def test_finalize_says_its_check_cannot_judge_a_model_whose_output_is_all_zeros():
    """break171 F2: a wrong custom rule passed finalize's check against a zero-initialised
    head (a torchvision ViT at init), and the two models differed once the head had weights."""
    from fxprune.passes.surgery import verify

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
    with torch.no_grad():
        model[2].weight.zero_()
        model[2].bias.zero_()
    pm = fxprune.prepare(model, (X,))

    class Wrong(nn.Module):  # any model matches zeros
        def forward(self, x):
            return torch.zeros(len(x), 4, 28, 28)

    with pytest.warns(RuntimeWarning, match=r"^finalize: the masked model's output on the example "
                                            r"inputs is all zeros .*cannot tell a right pruned "
                                            r"model from a wrong one"):
        assert verify(pm, Wrong(), (X,), 1e-4) == 0
    pm2 = fxprune.prepare(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)), (X,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (nothing pruned: said)
        pruned = fxprune.finalize(pm2, check=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a model with outputs: no word
        verify(pm2, pruned, (X,), 1e-4)


class _MeanOfInstanceNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.gn, self.pw = nn.Conv2d(1, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.Conv2d(8, 6, 1)
        self.inorm, self.fc = nn.InstanceNorm2d(6), nn.Linear(6, 3)

    def forward(self, x):
        f = self.inorm(self.pw(self.gn(self.c1(x)))).mean((2, 3))  # 0 but for rounding
        return self.fc(f), f


def test_an_output_of_rounding_noise_alone_is_judged_in_float64():
    """break110 F1: the spatial mean of an InstanceNorm's output is 0 in exact arithmetic and
    about 1e-8 of float32 noise, rounded differently by the masked and pruned models: relative
    to its own scale they differed by 0.6, and finalize called a right model a bug. A wrong
    pruned model is still refused."""
    from fxprune.passes.surgery import verify

    torch.manual_seed(0)
    x = torch.randn(2, 1, 4, 4)
    pm = fxprune.prepare(_MeanOfInstanceNorm().eval(), (x,))
    fxprune.channel_groups(pm)[0].mask[0] = 0
    small = fxprune.finalize(pm)
    assert verify(pm, small, (x,), 1e-4) <= 1e-4
    with torch.no_grad():
        small.fc.bias.add_(1e-2)  # a real difference, in every precision
    with pytest.raises(fxprune.SurgeryError, match="This is a bug in fxprune"):
        verify(pm, small, (x,), 1e-4)


def test_a_single_tensor_is_accepted_as_example_inputs(resnet18):
    pm = fxprune.prepare(resnet18, X)
    assert len(fxprune.channel_groups(pm)) > 0


def test_user_model_is_never_modified(resnet18):
    before = {k: v.clone() for k, v in resnet18.state_dict().items()}
    pm = fxprune.prepare(resnet18, (X,))
    random_masks(pm, 0.5)
    with torch.no_grad():
        for p in pm.parameters():
            p.add_(1.0)  # training the prepared model must not touch the original
    fxprune.finalize(pm, check=False)
    after = resnet18.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p is q for p in pm.parameters() for q in resnet18.parameters())
    assert all(type(m).__module__.startswith("torch") or m is resnet18 for m in resnet18.modules())


def test_groups_expose_live_masks(resnet18):
    pm = fxprune.prepare(resnet18, (X,))
    g = next(g for g in fxprune.channel_groups(pm) if g.prunable)
    assert g.mask.shape == (g.size,) and g.mask.dtype == torch.float32
    assert g.mask.data_ptr() == getattr(pm.fxprune_masks, g.key).data_ptr()
    before = run_eval(pm, (X,))
    g.mask[: g.size // 2] = 0
    assert fxprune.channel_groups(pm)[0].kept <= g.size
    assert not torch.allclose(before, run_eval(pm, (X,)))  # the mask is what the graph reads
    assert g.producers and g.consumers and isinstance(g.reason, str)
    barrier = [g for g in fxprune.channel_groups(pm) if not g.prunable]
    assert barrier and all(g.reason and g.mask is None for g in barrier)


def test_a_group_listed_before_a_dtype_change_still_writes_into_the_model():
    """break27 #1: .double()/.half()/.to(device) replace the buffers; a group listed before kept
    the old tensor, writes to it were lost and finalize returned the dense model, silently."""
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
    pm = fxprune.prepare(net, torch.randn(1, 3, 8, 8))
    (group,) = [g for g in fxprune.channel_groups(pm) if g.prunable]
    pm = pm.double()
    group.mask[:4] = 0
    assert group.mask.dtype == torch.float64 and group.kept == 4
    assert fxprune.finalize(pm).get_submodule("0").out_channels == 4
    with pytest.raises(AttributeError, match=r"would rebind this view.*g.mask\[:\] = values"):
        group.mask = torch.zeros(8)
    # break198 F9: a group kept whole was told to write g.mask[:], which then failed on None
    whole = next(g for g in fxprune.channel_groups(pm) if not g.prunable)
    with pytest.raises(AttributeError, match=rf"^group {whole.key} \(.*\) is not prunable "
                                             r"\(.+\): it has no mask to set; fxprune.summary"):
        whole.mask = torch.zeros(whole.size)


def test_an_averaged_copy_s_masks_are_flagged_and_copy_masks_mends_them():
    """break24 #3: AveragedModel(use_buffers=True) and timm's ModelEmaV2 average the mask
    buffers, so the EMA model's pruned channels had masks of 0.56-0.99 and finalized dense,
    silently."""
    from torch.optim.swa_utils import AveragedModel

    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
    pm = fxprune.prepare(net, torch.randn(1, 3, 8, 8))
    ema = AveragedModel(pm, use_buffers=True)
    (group,) = [g for g in fxprune.channel_groups(pm) if g.mask is not None]
    ema.update_parameters(pm)  # the first update copies
    with torch.no_grad():
        group.mask[:4] = 0
    ema.update_parameters(pm)
    with pytest.warns(RuntimeWarning, match=r"4 of 8 channel masks are neither 0 nor 1.*"
                                            r"fxprune.copy_masks\(trained, ema_copy\)"):
        dense_again = fxprune.finalize(ema.module)
    assert dense_again.get_submodule("0").out_channels == 8
    fxprune.copy_masks(pm, ema)  # the wrapper stands for its .module
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        small = fxprune.finalize(ema.module)
    assert small.get_submodule("0").out_channels == 4
    other = fxprune.prepare(nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 4, 3)),
                            torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="hold different channel masks"):
        fxprune.copy_masks(pm, other)
    import copy
    on_meta = copy.deepcopy(pm).to("meta")  # break26: torch's "Cannot copy out of meta tensor"
    with pytest.raises(ValueError, match="source model's masks are on the meta device"):
        fxprune.copy_masks(on_meta, pm)
    with pytest.raises(ValueError, match="target model's masks are on the meta device"):
        fxprune.copy_masks(pm, on_meta)  # copying into it would keep nothing


def test_an_averaged_copy_of_a_model_with_a_masked_norm_is_told_of_copy_masks():
    """break90 F8: with a LayerNorm over the channels, finalize of an EMA copy raised (its
    statistics cannot be folded at fractional masks) without the copy_masks way out the
    warning above gives, and "set those masks to 0 or 1" read as "round them by hand"."""
    from torch.optim.swa_utils import AveragedModel

    class Normed(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.ln, self.b = nn.Conv2d(3, 8, 3), nn.LayerNorm(8), nn.Conv2d(8, 4, 3)

        def forward(self, x):
            return self.b(self.ln(self.a(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2))

    pm = fxprune.prepare(Normed(), torch.randn(1, 3, 8, 8))
    ema = AveragedModel(pm, use_buffers=True)
    (group,) = [g for g in fxprune.channel_groups(pm) if g.mask is not None]
    ema.update_parameters(pm)
    with torch.no_grad():
        group.mask[:4] = 0
    ema.update_parameters(pm)
    with pytest.raises(fxprune.SurgeryError, match=r"norm `ln` normalizes over channels whose masks "
                                                   r"are not 0/1.*fxprune.copy_masks\(trained, ema_copy\)"):
        fxprune.finalize(ema.module)
    fxprune.copy_masks(pm, ema)
    assert fxprune.finalize(ema.module).ln.normalized_shape == (4,)


def test_finalize_of_masks_all_one_warns_of_nothing_with_tied_units():
    """break28 #3: the warning counted the mask bank's integer maps of tied units (a residual
    read by a grouped conv) as masks: every finalize said 6 of 12 were neither 0 nor 1."""
    class ResidualThenGrouped(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
            self.g = nn.Conv2d(8, 8, 3, padding=1, groups=2)

        def forward(self, x):
            y = self.a(x)
            return self.g(y + self.b(y))

    pm = fxprune.prepare(ResidualThenGrouped(), torch.randn(1, 3, 8, 8))
    assert any(not b.is_floating_point() for b in pm.fxprune_masks.buffers())  # the case
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", "finalize: no channel mask is 0")  # the one below
        fxprune.finalize(pm)


def test_a_finalize_that_removes_nothing_says_so_once():
    """A finalize with every mask 1 (before a method's finalize_masks, or a prepare's plain
    model) returned the dense model without a word, as if it were the pruned one."""
    pm = fxprune.prepare(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)),
                         torch.randn(1, 3, 8, 8))
    with pytest.warns(RuntimeWarning, match=r"finalize: no channel mask is 0, so no channel is "
                                            r"removed .* nothing was pruned \(a target of 1") as caught:
        fxprune.finalize(pm)
    assert [w.filename for w in caught] == [__file__]  # the user's line
    fxprune.channel_groups(pm)[0].mask[:2] = 0.5  # an EMA copy's averages: that warning alone
    with pytest.warns(RuntimeWarning) as caught:
        fxprune.finalize(pm)
    assert [str(w.message)[:40] for w in caught] == ["finalize: 2 of 8 channel masks are neith"]
    fxprune.channel_groups(pm)[0].mask[:2] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fxprune.finalize(pm).get_submodule("0").out_channels == 6


def test_finalize_leaves_prepared_untouched_and_returns_plain_module(resnet18):
    pm = fxprune.prepare(resnet18, (X,))
    random_masks(pm, 0.5)
    masks = {k: v.clone() for k, v in pm.state_dict().items() if k.startswith("fxprune_masks")}
    small = fxprune.finalize(pm)
    assert isinstance(pm.conv1, nn.Conv2d) and isinstance(pm.get_submodule("layer1.0.conv1"), MaskedConv2d)
    assert all(torch.equal(v, pm.state_dict()[k]) for k, v in masks.items())
    assert_plain(small)
    assert not hasattr(small, "fxprune_masks")
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in resnet18.parameters())


def test_finalize_folds_fractional_masks_exactly(resnet18):
    pm = fxprune.prepare(resnet18, (X,))
    for g in fxprune.channel_groups(pm):
        if g.prunable:
            g.mask.uniform_(0.2, 1.0)
            g.mask[::3] = 0
    small = fxprune.finalize(pm)
    assert max_relative_error(run_eval(pm, (X,)), run_eval(small, (X,))) <= 1e-4


def test_a_float64_models_fractional_masks_fold_at_float64():
    """break27 #7: the masks went through float32 first: 3e-9 off where 1e-16 is due."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3)).double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    pm = fxprune.prepare(net, x)
    (group,) = [g for g in fxprune.channel_groups(pm) if g.prunable]
    group.mask.copy_(torch.rand(8, dtype=torch.float64) * 0.9 + 0.05)
    group.mask[:3] = 0
    small = fxprune.finalize(pm)
    assert max_relative_error(run_eval(pm, (x,)), run_eval(small, (x,))) < 1e-13


def test_finalize_refuses_an_empty_group(resnet18):
    pm = fxprune.prepare(resnet18, (X,))
    g = next(g for g in fxprune.channel_groups(pm) if g.prunable)
    g.mask.zero_()
    with pytest.raises(fxprune.SurgeryError, match=f"every channel of group {g.key}"):
        fxprune.finalize(pm)


def test_finalized_model_saves_and_loads_without_fxprune(resnet18, tmp_path):
    pm = fxprune.prepare(resnet18, (X,))
    random_masks(pm, 0.5)
    small = fxprune.finalize(pm)
    path = tmp_path / "small.pt"
    # a copy, as fxprune train saves it (break45 #1: the graph's tracer class came back with it)
    torch.save(copy.deepcopy(small), path)
    torch.save(X, tmp_path / "x.pt")
    expected = run_eval(small, (X,))
    torch.save(expected, tmp_path / "y.pt")
    script = textwrap.dedent(f"""
        import sys, torch
        sys.modules["fxprune"] = None  # importing fxprune now fails: the file must not need it
        m = torch.load({str(path)!r}, weights_only=False).eval()
        x, y = torch.load({str(tmp_path / 'x.pt')!r}), torch.load({str(tmp_path / 'y.pt')!r})
        with torch.no_grad():
            assert torch.allclose(m(x), y, atol=1e-6), "output changed"
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.stdout.strip() == "ok", result.stderr


def test_finalized_model_exports_to_onnx_and_runs(resnet18, tmp_path):
    import onnxruntime as ort

    pm = fxprune.prepare(resnet18, (X,))
    random_masks(pm, 0.5)
    small = fxprune.finalize(pm)
    path = tmp_path / "small.onnx"
    torch.onnx.export(small, (X,), str(path), dynamo=True, external_data=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: X.numpy()})
    np.testing.assert_allclose(out, run_eval(small, (X,)).numpy(), rtol=1e-3, atol=1e-4)


def test_prepared_model_deepcopies_and_pickles(resnet18, tmp_path):
    pm = fxprune.prepare(resnet18, (X,))
    random_masks(pm, 0.5)
    twin = copy.deepcopy(pm)
    assert max_relative_error(run_eval(pm, (X,)), run_eval(twin, (X,))) == 0
    fxprune.finalize(twin)  # the analysis travels with the copy
    state = pm.state_dict()
    assert any(k.startswith("fxprune_masks.") for k in state)
    # whole-module pickling keeps the analysis too (fxprune/serialization.py)
    torch.save(pm, tmp_path / "pm.pt")
    loaded = torch.load(tmp_path / "pm.pt", weights_only=False)
    assert max_relative_error(run_eval(pm, (X,)), run_eval(loaded, (X,))) == 0
    fxprune.finalize(loaded)


def test_a_prepared_model_of_many_nodes_saves(tmp_path):
    # its graph pickles as flat node records: the linked nodes recursed once per node and hit
    # the recursion limit at about 500 (torchvision's densenet121, 669 nodes)
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 4, 1)] + [m for _ in range(300) for m in (nn.Conv2d(4, 4, 1), nn.ReLU())]
    x = torch.randn(1, 3, 4, 4)
    pm = fxprune.prepare(nn.Sequential(*layers, nn.Conv2d(4, 2, 1)), (x,))
    assert len(pm.graph.nodes) > 600
    random_masks(pm, 0.5)
    torch.save(pm, tmp_path / "pm.pt")
    loaded = torch.load(tmp_path / "pm.pt", weights_only=False)
    assert [n.name for n in loaded.graph.nodes] == [n.name for n in pm.graph.nodes]
    assert max_relative_error(run_eval(pm, (x,)), run_eval(loaded, (x,))) == 0
    fxprune.finalize(loaded)



class MyConv(nn.Conv2d):
    """Subclasses keep their base's forward: fxprune makes their masked classes at run time."""


class MyLN(nn.LayerNorm):
    pass


class MyBN(nn.BatchNorm2d):
    pass


class SubclassNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.bn, self.norm, self.b = MyConv(3, 8, 3, padding=1), MyBN(8), MyLN(8), MyConv(8, 4, 1)

    def forward(self, x):
        y = self.norm(torch.relu(self.bn(self.a(x))).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.b(y)


def test_a_prepared_model_of_layer_subclasses_saves(tmp_path):
    """torch.save failed with a PicklingError: the masked classes made at run time for a
    subclass (MaskedLayerNorm_MyLN, Masked_MyConv) have no module attribute pickle can find
    (break23 #6). They pickle as the recipe that makes them."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    pm = fxprune.prepare(SubclassNet(), (x,))
    fxprune.SMCP(pm, target=0.5, channel_step=1, bn_rescale="kept_fraction")  # a rescaled MyBN too
    random_masks(pm, 0.5)
    torch.save(pm, tmp_path / "pm.pt")
    loaded = torch.load(tmp_path / "pm.pt", weights_only=False)
    assert type(loaded.get_submodule("norm")) is type(pm.get_submodule("norm"))
    assert type(loaded.get_submodule("bn")) is type(pm.get_submodule("bn"))
    assert max_relative_error(run_eval(pm, (x,)), run_eval(loaded, (x,))) == 0
    small = fxprune.finalize(loaded)
    assert type(small.get_submodule("norm")) is MyLN and type(small.get_submodule("a")) is MyConv
    assert_plain(small)
    # the shapes prepare recorded are the dense model's: not left on the finalized graph
    assert not any("fxprune_value" in n.meta for n in small.graph.nodes)


class FunctionalMaxPools(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.c = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = F.max_pool2d(self.a(x), 2)
        return self.c(F.adaptive_max_pool2d(y, 2))


def test_a_prepared_model_calling_torchs_dispatched_functions_saves(tmp_path):
    """F.max_pool2d & co. are local closures (torch's boolean_dispatch) pickle cannot name:
    they are saved by their public name."""
    x = torch.randn(2, 3, 8, 8)
    pm = fxprune.prepare(FunctionalMaxPools(), (x,))
    random_masks(pm, 0.5)
    torch.save(pm, tmp_path / "pm.pt")
    loaded = torch.load(tmp_path / "pm.pt", weights_only=False)
    targets = [n.target for n in loaded.graph.nodes if n.op == "call_function"]
    assert F.max_pool2d in targets and F.adaptive_max_pool2d in targets
    assert max_relative_error(run_eval(pm, (x,)), run_eval(loaded, (x,))) == 0
    fxprune.finalize(loaded)

def test_layer_specs_add_up_to_the_flop_counter(resnet18):
    pm = fxprune.prepare(resnet18, (X,))
    specs = fxprune.layer_specs(pm)
    n_layers = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in resnet18.modules())
    assert len(specs) == n_layers
    assert sum(s.flops() for s in specs) == count_flops(resnet18, (X,))


def test_summary_lists_groups_and_savings(resnet18, capsys):
    pm = fxprune.prepare(resnet18, (X,))
    random_masks(pm, 0.5)
    fxprune.summary(pm)
    out = capsys.readouterr().out
    assert "layer1.0.conv1" in out and "prunable" in out
    assert "params" in out and "FLOPs" in out and "->" in out


def test_summary_counts_the_pruned_params_and_flops_worked_out_by_hand():
    from fxprune.summary import summary_table

    # review146 F3: a summary reporting the dense figures as the pruned ones passed every test.
    # 3 -> 8 (3x3, padding 1) -> 4 (1x1), no biases, a 4x4 input: 216 + 32 params, and per
    # output position 8 * 27 + 4 * 8 multiply-adds (torch's flop counter: 2 FLOPs each)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU(),
                          nn.Conv2d(8, 4, 1, bias=False))
    pm = fxprune.prepare(model, (torch.randn(1, 3, 4, 4),))
    (group,) = [g for g in fxprune.channel_groups(pm) if g.prunable]
    group.mask[::2] = 0  # 4 of 8 channels kept
    table = summary_table(pm)
    assert "params 248 -> 124 (50.0%)" in table, table
    assert f"FLOPs  {2 * 16 * (8 * 27 + 4 * 8):,} -> {2 * 16 * (4 * 27 + 4 * 4):,} (50.0%)" in table
    # the batch the FLOPs are of is said, masks or none (break186 F4: 8x the per-image FLOPs
    # at batch 8, unsaid with every channel kept)
    eight = fxprune.prepare(model, (torch.randn(8, 3, 4, 4),))
    assert (f"FLOPs {8 * 2 * 16 * (8 * 27 + 4 * 8):,} at input [(8, 3, 4, 4)] (all channels "
            "kept)") in summary_table(eight), summary_table(eight)


def test_summary_shows_the_groups_of_masks_finalize_would_refuse(resnet18, capsys):
    """break81 #2: a whole group masked made summary raise finalize's SurgeryError, and no
    table was printed, when the table is what a user wants to see."""
    pm = fxprune.prepare(resnet18, (X,))
    group = next(g for g in fxprune.channel_groups(pm) if g.prunable)
    group.mask.zero_()
    fxprune.summary(pm)
    out = capsys.readouterr().out
    assert "prunable groups:" in out and f"{group.key}" in out
    assert "the current masks cannot be finalized, so no pruned figures: every channel of " \
           f"group {group.key}" in out


def test_already_prepared_or_unprepared_inputs_are_rejected(resnet18):
    pm = fxprune.prepare(resnet18, (X,))
    with pytest.raises(ValueError, match="already prepared"):
        fxprune.prepare(pm, (X,))
    with pytest.raises(fxprune.NotPreparedError, match="fxprune.prepare"):
        fxprune.finalize(resnet18)
    with pytest.raises(fxprune.NotPreparedError):
        fxprune.channel_groups(torch.fx.symbolic_trace(resnet18))


def test_wrapped_models_and_a_bad_tolerance_name_the_way_out(resnet18):
    with pytest.raises(TypeError, match=r"DataParallel wrapper; pass the model it wraps \(model.module\)"):
        fxprune.prepare(torch.nn.DataParallel(resnet18), (X,))
    # (break163 F7: a plain TypeError, which `except fxprune.FxPruneError` missed)
    with pytest.raises(fxprune.UnsupportedModelError,
                       match=r"torch.compile'd model; pass .*\(model._orig_mod\)") as raised:
        fxprune.prepare(torch.compile(resnet18), (X,))
    assert isinstance(raised.value, (fxprune.FxPruneError, TypeError, ValueError))
    with pytest.raises(fxprune.FxPruneError, match="uninitialized lazy parameters"):
        fxprune.prepare(nn.Sequential(nn.LazyConv2d(4, 1)), (X,))
    # break79 F3: torch.fx's own "traced_func_name=forward doesn't exist", then advice for
    # data-dependent code
    for scripted in (torch.jit.script(nn.Sequential(nn.Conv2d(3, 4, 1))),
                     torch.jit.trace(nn.Sequential(nn.Conv2d(3, 4, 1)), X)):
        with pytest.raises(TypeError, match=r"^prepare got a TorchScript module \(torch.jit.script "
                                            r"or trace\); .* pass the model before scripting"):
            fxprune.prepare(scripted, (X,))
    # break121 #6: an exported (ATen) graph was accepted with every op kept whole, and rules
    # for ATen ops named as the way out
    small = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 1)).eval()
    exported = torch.export.export(small, (X,)).module()
    with pytest.raises(TypeError, match=r"^prepare got a graph whose layers are ATen ops "
                                        r"\(aten.conv2d: torch.export\(...\).module\(\), .*pass "
                                        r"the nn.Module before torch.export"):
        fxprune.prepare(exported, (X,))
    fxprune.prepare(torch.fx.symbolic_trace(small), (X,))  # a torch.fx graph is the model's own
    with pytest.raises(TypeError, match=r"ATen ops \(aten.conv2d in `0`: "):  # break124 #7
        fxprune.prepare(nn.Sequential(exported, nn.ReLU()), (X,))
    # review125 F4: one the user made a leaf is called as one op, kept whole
    fxprune.prepare(nn.Sequential(exported, nn.ReLU()), (X,), leaf_modules=["0"])

    class OwnOp(nn.Module):  # review123 #1: a user's graph with a torch.ops call of its own
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 1)

        def forward(self, x):
            return self.b(torch.ops.aten.relu(self.a(x)))

    fxprune.prepare(torch.fx.symbolic_trace(OwnOp().eval()), (X,))
    pm = fxprune.prepare(resnet18, (X,))
    for rtol in (-1, 0, float("nan"), "1e-4", True):  # -1 was taken, then 'a bug in fxprune'
        with pytest.raises(ValueError, match="rtol is the relative tolerance"):
            fxprune.finalize(pm, rtol=rtol)


def test_demo_prunes_a_torchvision_model_and_refuses_bad_arguments(capsys):
    from fxprune.cli import main

    assert main(["demo", "--model", "resnet18", "--size", "32"]) == 0
    assert "FLOPs x" in capsys.readouterr().out
    for argv, message in [(["--model", "nope"], "not a torchvision classification model"),
                          (["--model", "fcn_resnet50"], "not a torchvision classification model"),
                          (["--size", "0"], "--size must be a positive"),
                          # (break102 F3: 0 pruned nothing and warned as a training run would)
                          (["--fraction", "0"], r"^fxprune demo: error: --fraction must be in \(0, 1\)"),
                          (["--model", "squeezenet1_0", "--size", "8"],
                           r"^fxprune demo: error: squeezenet1_0 does not run on a 8x8 input "
                           r"\(RuntimeError: .*\); "
                           r"try --size 224$")]:
        assert main(["demo", *argv]) == 2  # an error, as every fxprune command's
        err = capsys.readouterr().err
        assert re.search(message, err.strip()) and err.count("\n") == 1, err


def test_a_demo_size_out_of_memory_is_one_line(capsys, monkeypatch):
    """break186 F2, break187 F3: --size 100000 ended in a 20-line allocation traceback, exit 1."""
    import fxprune.demo as demo
    from fxprune.cli import main

    def out_of_memory(args):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: "
                           "can't allocate memory: you tried to allocate 120000000000 bytes.")

    monkeypatch.setattr(demo, "_run", out_of_memory)
    assert main(["demo", "--size", "100000"]) == 2
    assert capsys.readouterr().err == (
        "fxprune demo: error: resnet18 at 100000x100000 ran out of memory (can't allocate "
        "memory: you tried to allocate 120000000000 bytes); try a smaller --size (e.g. 224)\n")

    def other(args):  # another RuntimeError stays a traceback (a bug to see)
        raise RuntimeError("something else")

    monkeypatch.setattr(demo, "_run", other)
    with pytest.raises(RuntimeError, match="something else"):
        main(["demo"])


def test_a_demo_size_out_of_memory_inside_prepare_is_named_as_memory(capsys, monkeypatch):
    """review189 R1: prepare runs the model first, so a large --size ran out of memory there,
    and demo called it a size the model "does not run on"."""
    from fxprune.cli import main

    def refuse(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate "
                           "2304000000 bytes.")

    monkeypatch.setattr(torch.nn.Conv2d, "_conv_forward", refuse)
    assert main(["demo", "--model", "resnet18", "--size", "64"]) == 2
    assert capsys.readouterr().err == (
        "fxprune demo: error: resnet18 at 64x64 ran out of memory (can't allocate memory: you "
        "tried to allocate 2304000000 bytes); try a smaller --size (e.g. 224)\n")


def test_an_interrupted_demo_says_so_in_one_line(capsys, monkeypatch):
    """break88 F6: Ctrl-C printed a 42-line traceback where train and deploy print one line."""
    import fxprune.demo as demo
    from fxprune.cli import main

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "_run", interrupted)
    assert main(["demo", "--model", "resnet18"]) == 130
    assert capsys.readouterr().err == "fxprune demo: interrupted; it writes no file\n"
    # break162 F3: Ctrl-C while the command loads (torch takes seconds) killed the process by
    # SIGINT (-2 to a Python caller), with a traceback
    import fxprune.cli as cli

    real_import = cli.importlib.import_module
    monkeypatch.setattr(cli.importlib, "import_module", lambda name: interrupted(name)
                        if name == "fxprune.demo" else real_import(name))
    assert main(["demo", "--model", "resnet18"]) == 130
    assert capsys.readouterr().err == "fxprune demo: interrupted while starting; nothing was done\n"
    monkeypatch.undo()
    import fxprune.methods.cli as methods_cli  # a command without a handler of its own

    monkeypatch.setattr(methods_cli, "run", interrupted)
    assert main(["methods"]) == 130
    assert capsys.readouterr().err == "fxprune methods: interrupted\n"


def test_a_warning_on_the_command_line_shows_no_launcher_line(tmp_path):
    """break62 #11: the console script (``sys.exit(main())``) was taken for the user's code,
    so fxprune demo's finalize warning printed that line and its file. (Any fxprune warning
    at the command line: plot's for a run priced by timings taken under load is the cheapest;
    demo's on googlenet took a minute.)"""
    run = tmp_path / "run"
    run.mkdir()
    (run / ".fxprune-run").write_text("run\n")
    (run / "results.json").write_text(json.dumps({"method": "smcp", "accuracy": 0.8,
                                                  "flops": 4e6, "cost_timed_under_load": 3}))
    launcher = "import sys; from fxprune.cli import program; sys.exit(program())"  # pip's script
    done = subprocess.run([sys.executable, "-c", launcher, "plot", str(run), "--x", "flops",
                           "--out", str(tmp_path / "p.png")], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.startswith("warning: ") and "timings taken while other processes" in done.stderr
    assert "<string>" not in done.stderr and "RuntimeWarning" not in done.stderr


def test_ctrl_c_while_the_command_line_loads_torch_is_one_line():
    """review165 F1: `import fxprune` loaded torch before the command line's handler was
    installed, so Ctrl-C in the first seconds was a traceback and death by SIGINT (-2 to a
    Python caller). The package loads its parts on first use now."""
    import signal
    import time

    code = "import sys, fxprune, fxprune.cli; print('torch' in sys.modules)"
    light = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert light.stdout.strip() == "False", light.stderr
    # as the console script: the interpreter up, then the command line (light) imported. A
    # terminal's Ctrl-C handler first: a job started in the background by a non-interactive
    # shell (CI's) inherits SIGINT ignored, and so would this child
    launcher = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                "print('started', flush=True); from fxprune.cli import program; sys.exit(program())")
    proc = subprocess.Popen([sys.executable, "-c", launcher, "demo", "--model", "resnet18",
                             "--size", "32"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline() == "started\n"
    time.sleep(0.5)  # in main: loading torch (seconds), or later, in demo's own handler
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, err
    assert err.startswith("fxprune demo: interrupted") and err.count("\n") == 1, err


def test_demo_size_hint_reads_torchvision_weight_metadata():
    from fxprune.demo import trained_size

    assert trained_size("inception_v3") == 299 and trained_size("efficientnet_b3") == 300
    assert trained_size("resnet18") == 224
    # a ViT runs at its own image_size only, whatever its weights were evaluated at (518)
    assert trained_size("vit_h_14") == 518
    assert trained_size("vit_h_14", type("ViT", (), {"image_size": 224})()) == 224


class AlwaysDropping(torch.nn.Module):
    """``F.dropout(x, 0.5)`` drops in eval mode too (``training`` defaults to True)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.b(torch.nn.functional.dropout(self.a(x), 0.5))


def test_a_model_random_in_eval_mode_is_named_as_the_cause_not_fxprune():
    """finalize's check failed with 'a bug in fxprune' for the model's own randomness."""
    pm = fxprune.prepare(AlwaysDropping(), (torch.randn(2, 3, 8, 8),))
    fxprune.channel_groups(pm)[0].mask[:4] = 0  # the dropout draws over fewer channels then
    with pytest.raises(fxprune.SurgeryError, match="gives other outputs each run in eval mode"):
        fxprune.finalize(pm)


class NoiseInjection(torch.nn.Module):
    """StyleGAN-style noise injection: samples in eval mode by design, one noise map per pixel
    (its shape does not follow the channels)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.Conv2d(16, 3, 3, padding=1)
        self.w = torch.nn.Parameter(torch.full((1, 16, 1, 1), 0.1))

    def forward(self, x):
        y = self.a(x)
        y = y + self.w * torch.randn(y.shape[0], 1, y.shape[2], y.shape[3], device=y.device)
        return self.b(F.leaky_relu(y, 0.2))


def test_a_model_sampling_in_eval_mode_is_checked_from_one_random_state():
    """break97 F5: such a model could never pass finalize's check, though exact under one seed."""
    x = torch.randn(1, 3, 16, 16)
    pm = fxprune.prepare(NoiseInjection().eval(), (x,))
    fxprune.channel_groups(pm)[0].mask[:8] = 0
    small = fxprune.finalize(pm)
    assert small.a.out_channels == 8
    torch.manual_seed(3)
    want = pm(x)
    torch.manual_seed(3)
    torch.testing.assert_close(small(x), want)


def test_a_compiled_or_wrapped_prepared_model_is_named_as_such():
    """break30 #10: torch.compile(pm) given to finalize/SMCP was told to call prepare first."""
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
    pm = fxprune.prepare(net, torch.randn(1, 3, 8, 8))
    compiled = torch.compile(pm)
    with pytest.raises(fxprune.NotPreparedError, match=r"a torch.compile'd model \(OptimizedModule\) "
                                                       r"around a prepared model; pass the prepared "
                                                       r"model itself \(\._orig_mod\)"):
        fxprune.finalize(compiled)
    with pytest.raises(fxprune.NotPreparedError, match=r"\(\.module\)"):
        fxprune.SMCP(nn.parallel.DataParallel(pm), target=0.5)


def test_finalize_reads_masks_written_behind_the_version_counter():
    """break30 #4: after a forward with all-ones masks, zeros written through .data left a masked
    LayerNorm on its cached all-ones answer, and finalize blamed fxprune."""
    class LN(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.norm, self.b = nn.Conv2d(3, 16, 3), nn.GroupNorm(1, 16), nn.Conv2d(16, 4, 3)

        def forward(self, x):
            return self.b(self.norm(self.a(x)))

    pm = fxprune.prepare(LN(), torch.randn(1, 3, 8, 8))
    run_eval(pm, (X[:, :, :8, :8],))  # caches "all ones"
    (group,) = [g for g in fxprune.channel_groups(pm) if g.prunable]
    group.mask.data[:8] = 0
    small = fxprune.finalize(pm)
    assert small.get_submodule("a").out_channels == 8


def test_finalize_keeps_a_channels_last_models_weight_layout():
    """break30 #11: sliced weights came back NCHW beside unsliced channels_last ones."""
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
    pm = fxprune.prepare(net.to(memory_format=torch.channels_last), torch.randn(1, 3, 8, 8))
    (group,) = [g for g in fxprune.channel_groups(pm) if g.prunable]
    group.mask[:4] = 0
    small = fxprune.finalize(pm)
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last)
               for m in small.modules() if isinstance(m, nn.Conv2d))


def test_string_annotations_leave_no_string_global_in_the_generated_code():
    """A model written under ``from __future__ import annotations`` (as this file is) annotates
    ``x: torch.Tensor`` with a string; torch.fx made it a str global of the generated code, and
    torch 2.11 then failed to pickle the finalized model (a recipe run on an H200)."""
    class Annotated(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c0, self.c1 = torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.c1(self.c0(x))

    pm = fxprune.prepare(Annotated(), (torch.randn(2, 3, 8, 8),))
    with torch.no_grad():
        next(g for g in fxprune.channel_groups(pm) if g.prunable).mask[:4] = 0
    small = fxprune.finalize(pm)
    for gm in (pm, small):
        assert not [v for v in gm.graph.python_code("self").globals.values() if isinstance(v, str)]


class CustomAct(nn.Module):
    def forward(self, x):
        return F.relu(x)


class ActChain(nn.Module):
    """c1 -> a user activation -> c2 -> c3 -> c4 -> head, all 16 wide: whether the activation
    passes channels (a rule the user gives) moves every later group's key by one."""

    def __init__(self):
        super().__init__()
        self.c1, self.act = nn.Conv2d(3, 16, 3, padding=1), CustomAct()
        self.c2, self.c3, self.c4 = (nn.Conv2d(16, 16, 3, padding=1) for _ in range(3))
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.act(self.c1(x))
        for c in (self.c2, self.c3, self.c4):
            x = F.relu(c(x))
        return self.fc(x.mean((2, 3)))


def test_saved_masks_load_only_onto_the_groups_they_were_saved_for():
    """break68 #1: masks are keyed by the analysis' numbering (g0, g2...); with other rules a
    key named another layer's group, and load_state_dict(strict=False) put c4's mask on c3
    silently (finalize's check compares with the wrongly masked model, so it passed)."""
    from fxprune.rules import Barrier, Elementwise
    x = torch.randn(2, 3, 8, 8)
    model = ActChain()
    saved_pm = fxprune.prepare(model, (x,), rules={CustomAct: Elementwise()})
    for g in fxprune.channel_groups(saved_pm):
        if g.prunable:
            g.mask[{"c1": 4, "c2": 8, "c3": 12, "c4": 14}[g.name]:] = 0
    saved = saved_pm.state_dict()
    assert saved["fxprune_masks._extra_state"].dtype == torch.uint8  # tensors only
    # break84 F1: torch.save/torch.load of the prepared model rebuilt its mask bank as a plain
    # container: its state had no record, and the masks loaded onto other groups silently
    buffer = io.BytesIO()
    torch.save(saved_pm, buffer)
    buffer.seek(0)
    reloaded = torch.load(buffer, weights_only=False)
    assert type(reloaded.fxprune_masks) is type(saved_pm.fxprune_masks)
    assert set(reloaded.state_dict()) == set(saved)
    reloaded.load_state_dict(saved)  # (a fresh state into the reloaded model: strict keys)
    other = fxprune.prepare(model, (x,), rules={CustomAct: Barrier("custom")})
    keys = {g.name: g.key for g in fxprune.channel_groups(other) if g.prunable}
    assert keys["c3"] == {g.name: g.key for g in fxprune.channel_groups(saved_pm)}["c4"]
    for strict, state in itertools.product((True, False), (saved, reloaded.state_dict())):
        with pytest.raises(RuntimeError, match=r"the saved masks belong to other channel groups "
                                               r"than this prepared model's \(g\d is 'c4' \(16 "
                                               r"channels\) in the saved state, 'c3' \(16\) here\)"):
            other.load_state_dict(state, strict=strict)
        assert all(bool(g.mask.all()) for g in fxprune.channel_groups(other) if g.prunable)
    # the same analysis loads them (strictly), and a state saved before the record still loads
    same = fxprune.prepare(model, (x,), rules={CustomAct: Elementwise()})
    for state in (saved, {k: v for k, v in saved.items() if not k.endswith("_extra_state")}):
        fxprune.channel_groups(same)[0].mask.fill_(1)
        same.load_state_dict(state)
        assert [g.kept for g in fxprune.channel_groups(same)] == [
            g.kept for g in fxprune.channel_groups(saved_pm)]


def _train_steps(pm, pruner, opt, steps: int, *, batch: int) -> None:
    """``steps`` optimizer steps of an ActChain on seeded random batches, the pruner stepping
    after each backward."""
    for i in range(steps):
        x = torch.randn(batch, 3, 8, 8, generator=torch.Generator().manual_seed(i))
        pm(x).square().mean().backward()
        pruner.step()
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize("method", ["smcp", "cucb"])
def test_a_pruner_follows_parameters_replaced_after_it_was_built(method):
    """break68 #2: load_state_dict(assign=True) after the pruner was built left it reading the
    old Parameter objects: SMCP saw no gradient again (warning to fix the training loop) and
    kept the model dense; CUCB's final selection was random."""
    from fxprune.rules import Elementwise
    x = torch.randn(8, 3, 8, 8)

    def run(assign):
        torch.manual_seed(0)
        pm = fxprune.prepare(ActChain(), (x,), rules={CustomAct: Elementwise()})
        checkpoint = copy.deepcopy(pm.state_dict())
        pruner = (fxprune.SMCP(pm, target=0.5, cost="flops", warmup=1, ramp=3, update_every=1,
                               channel_step=1) if method == "smcp"
                  else fxprune.CUCB(pm, rho=0.5, warmup=1, explore=3, execution="masked"))
        if assign:
            pm.load_state_dict(checkpoint, assign=True)
        _train_steps(pm, pruner, torch.optim.SGD(pm.parameters(), lr=0.05), 6, batch=8)
        pruner.finalize_masks()
        return [g.kept for g in fxprune.channel_groups(pm) if g.prunable]

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run(assign=True) == run(assign=False)
    assert run(assign=False) != [16, 16, 16, 16]


def test_the_mask_bank_takes_the_models_mode():
    """break68 #5: after preparing an eval-mode model, fxprune_masks alone was in training mode."""
    pm = fxprune.prepare(ActChain().eval(), torch.randn(2, 3, 8, 8))
    assert not any(m.training for m in pm.modules())
    # review143 F3: a concat's gathered mask (a module of the bank since break141 F1) too
    cat = nn.Sequential(Cat2(), nn.ReLU(), nn.Conv2d(12, 4, 1)).eval()
    pm = fxprune.prepare(cat, torch.randn(2, 3, 8, 8))
    assert any(isinstance(m, fxprune.masks.MaskGather) for m in pm.modules())
    assert not any(m.training for m in pm.modules())


class Cat2(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], 1)


def test_masks_copy_between_banks_whose_gather_indices_differ_in_name():
    # review143 F4: copy_masks compared every bank buffer, the index tensors too, so a model
    # pickled before they were renamed (index0 -> gather0.index) was refused
    model = nn.Sequential(Cat2(), nn.ReLU(), nn.Conv2d(12, 4, 1))
    x = torch.randn(2, 3, 8, 8)
    old, new = fxprune.prepare(model, x), fxprune.prepare(model, x)
    old.fxprune_masks.register_buffer("index0", torch.zeros(3, dtype=torch.int64), persistent=False)
    for g in fxprune.channel_groups(old):
        if g.prunable:
            g.mask[:2] = 0
    fxprune.copy_masks(old, new)
    assert [g.kept for g in fxprune.channel_groups(new)] == [g.kept for g in fxprune.channel_groups(old)]


def test_the_first_prepared_model_of_a_process_is_freed_when_dropped():
    # break145 F3: torch.overrides' tables of torch functions, built (once per process) while
    # the trace's wrappers stood in for torch.zeros..., kept the tracer and the first prepared
    # model alive for good (resnet152: 310 MB). A fresh process: the tables are built once.
    code = textwrap.dedent("""
        import gc, weakref
        import torch, fxprune
        from torch import nn
        class Net(nn.Module):  # a torch function on a traced value (torch.cat)
            def __init__(self):
                super().__init__()
                self.a, self.b = nn.Conv2d(3, 8, 3), nn.Conv2d(3, 4, 3)

            def forward(self, x):
                return torch.cat([self.a(x), self.b(x)], 1)

        pm = fxprune.prepare(Net(), torch.randn(1, 3, 8, 8))
        alive = weakref.ref(pm)
        del pm
        gc.collect()
        assert alive() is None, "the prepared model is still referenced"
        assert torch.zeros in torch.overrides.get_ignored_functions()
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_model_holding_a_prepared_model_is_refused_in_one_line():
    # review143 F6: its masked layers were offered as leaf_modules, fxprune's internals named
    x = torch.randn(2, 3, 8, 8)
    pm = fxprune.prepare(nn.Sequential(Cat2(), nn.ReLU(), nn.Conv2d(12, 4, 1)), x)
    with pytest.raises(ValueError, match=r"^prepare: the model holds a prepared model \(its masks "
                                         r"at `0.fxprune_masks`\); finalize that one first"):
        fxprune.prepare(nn.Sequential(pm, nn.Identity()), x)


def test_a_model_on_the_meta_device_is_refused_in_one_line():
    """break68 #3: prepare failed mid-trace with torch's aten::equal NotImplementedError."""
    with torch.device("meta"):
        model = ActChain()
    with pytest.raises(ValueError, match=r"^prepare: the model's tensors are on the meta device "
                                         r"\(c1.weight\): .* materialize the model first"):
        fxprune.prepare(model, torch.randn(2, 3, 8, 8))


def test_a_prepared_model_made_on_the_meta_device_then_loaded_gathers_its_masks_right():
    # review143 F8: the route prepare's meta-device error names (to_empty, then load_state_dict)
    # left a concat's gather index (a non-persistent buffer) holding garbage
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    pm = fxprune.prepare(nn.Sequential(Cat2(), nn.ReLU(), nn.Conv2d(12, 4, 1)), x)
    for g in fxprune.channel_groups(pm):
        if g.prunable:
            g.mask[1::2] = 0
    with torch.no_grad():
        expected = pm(x)
    # (deterministic mode fills empty memory, so the garbage is not what the freed block held:
    # review149 F7, the test passed without the fix 3 runs in 20)
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        again = copy.deepcopy(pm).to("meta").to_empty(device="cpu")
    finally:
        torch.use_deterministic_algorithms(deterministic)
    again.load_state_dict(pm.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(again(x), expected, rtol=0, atol=0)
    assert torch.equal(fxprune.finalize(again)(x), fxprune.finalize(pm)(x))
    # review149 F6: load_state_dict(assign=True) into the meta model left the index on meta
    assigned = copy.deepcopy(pm).to("meta")
    assigned.load_state_dict(pm.state_dict(), assign=True)
    with torch.no_grad():
        torch.testing.assert_close(assigned(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("how", ["torch_prune", "orthogonal", "weight_norm"])
def test_a_weight_torch_reparametrizes_after_the_pruner_was_built_does_not_break_it(how):
    """break69 F2: with the weight read at each use, torch.nn.utils.prune (or a
    parametrization) applied after SMCP was built made it fail with a bare KeyError: 'weight'
    (the weight is no Parameter of the layer's then); the weight of the build is read, as
    before, where the model still trains it (torch's prune keeps it as weight_orig, a
    parametrization as its original). break71 #1: weight_norm trains two new tensors, so the
    build's weight got no gradient and the layer's scores were left out silently: refused."""
    from fxprune.errors import FxPruneError
    from fxprune.rules import Elementwise
    torch.manual_seed(0)
    pm = fxprune.prepare(ActChain(), torch.randn(4, 3, 8, 8), rules={CustomAct: Elementwise()})
    pruner = fxprune.SMCP(pm, target=0.5, warmup=1, ramp=3, update_every=1, channel_step=1)
    if how == "torch_prune":
        import torch.nn.utils.prune as torch_prune
        torch_prune.l1_unstructured(pm.c3, "weight", amount=0.3)
    elif how == "orthogonal":
        torch.nn.utils.parametrizations.orthogonal(pm.c3, "weight")
    else:
        torch.nn.utils.parametrizations.weight_norm(pm.c3, "weight")
    opt = torch.optim.SGD(pm.parameters(), lr=0.01)

    def train():
        _train_steps(pm, pruner, opt, 5, batch=4)

    if how == "weight_norm":
        with pytest.raises(FxPruneError, match=r"^the weight of `c3` is no longer a parameter "
                                               r"the model trains \(a parametrization such as "
                                               r"weight_norm"):
            train()
        return
    train()
    pruner.finalize_masks()
    assert pruner.cost() <= 0.5
    if how == "torch_prune":  # break121 #1, #2: refused up front, in one line, with the way out
        with pytest.raises(TypeError, match=r"`c3` is pruned with torch.nn.utils.prune, .*call "
                                            r"torch.nn.utils.prune.remove\(module, 'weight'\) "
                                            r"before finalize"):
            fxprune.finalize(pm)
        torch_prune.remove(pm.c3, "weight")
    else:  # break121 #2: "a bug in fxprune", and check=False returned a model that failed
        from fxprune.errors import SurgeryError
        with pytest.raises(SurgeryError, match=r"`c3` computes its weight with a parametrization "
                                               r"\(_Orthogonal\) added after prepare: .*call torch."
                                               r"nn.utils.parametrize.remove_parametrizations\("):
            fxprune.finalize(pm, check=False)
        torch.nn.utils.parametrize.remove_parametrizations(pm.c3, "weight")
    x = torch.randn(4, 3, 8, 8)
    small = fxprune.finalize(pm)
    torch.testing.assert_close(small.eval()(x), pm.eval()(x), rtol=1e-4, atol=1e-5)


def test_a_parametrization_added_to_a_layer_keeping_its_channels_is_named_by_finalize():
    """break124 #4: weight_norm on a prepared layer that loses no channel: finalize turns its
    masked class into the plain one, which the parametrization did not survive ("a bug in
    fxprune"; check=False returned a model with no weight)."""
    from fxprune.errors import SurgeryError
    pm = fxprune.prepare(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)),
                         torch.randn(2, 3, 8, 8))
    torch.nn.utils.parametrizations.weight_norm(pm.get_submodule("2"), "weight")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # (no channel mask is 0)
        for check in (True, False):
            with pytest.raises(SurgeryError, match=r"^`2` computes its weight with a parametrization "
                                                   r"\(_WeightNorm\) added after prepare"):
                fxprune.finalize(pm, check=check)


def test_copy_masks_refuses_models_whose_same_keys_name_other_groups():
    """break69 F3: copy_masks compared mask names and shapes only, which two models can share
    while their keys name other layers' groups (another model, or other rules)."""
    x = torch.randn(2, 3, 8, 8)

    def chain(first, second):
        return nn.Sequential(OrderedDict([(first, nn.Conv2d(3, 8, 3)), ("relu", nn.ReLU()),
                                          (second, nn.Conv2d(8, 8, 3))]))

    from collections import OrderedDict
    a = fxprune.prepare(chain("stem", "body"), (x,))
    b = fxprune.prepare(chain("body", "stem"), (x,))
    assert ({k: v.shape for k, v in a.fxprune_masks.named_buffers()}
            == {k: v.shape for k, v in b.fxprune_masks.named_buffers()})
    with pytest.raises(ValueError, match="copy_masks: the two models hold different channel masks"):
        fxprune.copy_masks(a, b)
    c = fxprune.prepare(chain("stem", "body"), (x,))
    fxprune.channel_groups(a)[0].mask[:3] = 0
    fxprune.copy_masks(a, c)
    assert fxprune.channel_groups(c)[0].kept == 5


def test_another_tracer_keeps_the_masked_layers_and_functions_as_single_calls():
    """break90 F5: torch.fx.symbolic_trace(pm) and torchvision's create_feature_extractor went
    into the masked layers' forwards and failed there with "'Proxy' object does not support
    item assignment". break92 F1/F2: with leaf masked layers only, the masked functional
    norms were traced into, recording a plain norm while every mask was 1 (later mask changes
    silently ignored) and failing with torch's message once one was 0. Refused in one line
    naming the way out, which works: the features are the prepared model's own, and follow
    later mask changes."""
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    class Functional(nn.Module):  # F.layer_norm, F.rms_norm and F.conv2d on its own weights
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding=1)
            self.w = nn.Parameter(torch.randn(6, 8, 1, 1))
            self.g = nn.Parameter(torch.rand(8) + 0.5)

        def forward(self, x):
            y = F.layer_norm(self.a(x).permute(0, 2, 3, 1), (8,)).permute(0, 3, 1, 2)
            y = F.rms_norm(y.permute(0, 2, 3, 1), (8,), self.g).permute(0, 3, 1, 2)
            return F.conv2d(torch.relu(y), self.w)

    class CatFlat(nn.Module):  # break141 F1: a concat and a flatten into a linear (each
        # read through a gathered mask) failed: "a torch.fx tracer went into ... gather_mask"
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, stride=2), nn.Conv2d(3, 6, 3, stride=2)
            self.c = nn.Conv2d(14, 4, 1)
            self.fc = nn.Linear(4 * 15 * 15, 5)

        def forward(self, x):
            y = self.c(torch.relu(torch.cat([self.a(x), self.b(x)], 1)))
            return self.fc(torch.flatten(torch.relu(y), 1))

    torch.manual_seed(0)
    for model in (torchvision.models.resnet18(num_classes=10), Functional(), CatFlat()):
        pm = fxprune.prepare(model, (X,)).eval()
        with pytest.raises(fxprune.FxPruneError, match=r"a torch.fx tracer went into fxprune's .*"
                                                       r"tracer_kwargs=fxprune.tracer_kwargs\(pm\)"):
            torch.fx.symbolic_trace(pm)
        names = get_graph_node_names(pm, tracer_kwargs=fxprune.tracer_kwargs(pm))[1]
        features = create_feature_extractor(pm, {names[-1]: "out"},
                                            tracer_kwargs=fxprune.tracer_kwargs(pm)).eval()
        for group in (g for g in fxprune.channel_groups(pm) if g.prunable):
            group.mask[: group.size // 2] = 0  # after the features were traced
        with torch.no_grad():
            torch.testing.assert_close(features(X)["out"], pm(X))
        assert fxprune.tracer_kwargs(fxprune.finalize(pm)) == {"leaf_modules": [], "autowrap_functions": []}


def test_subpackages_are_reachable_after_import_fxprune_alone():
    """break159 F7: ``fxprune.methods.method_names()``, as the README writes it, raised
    AttributeError until something had imported the subpackage; so did the pass an error
    message names (``fxprune.passes.bn_rescale.insert_bn_rescale``)."""
    code = ("import fxprune; assert 'smcp' in fxprune.methods.method_names(); "
            "assert callable(fxprune.passes.bn_rescale.insert_bn_rescale)\n"
            "try:\n    fxprune.passes.no_such_pass\nexcept AttributeError as e:\n    print(e)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "module 'fxprune.passes' has no attribute 'no_such_pass'"


def _rescaled_run():
    """A conv-BN net whose SMCP (bn_rescale="kept_fraction") pruned half of its inner group."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))
    with torch.no_grad():
        for bn in (net[1], net[4]):
            bn.weight.uniform_(0.5, 1.5), bn.running_var.uniform_(0.5, 2.0)
    pm = fxprune.prepare(net, torch.randn(1, 3, 8, 8))
    fxprune.SMCP(pm, target=0.5, channel_step=2, bn_rescale="kept_fraction")
    for group in fxprune.channel_groups(pm):
        if group.mask is not None:
            group.mask[: group.size // 2] = 0
    return net, pm.eval()


def test_a_state_saved_with_bn_rescale_rescales_the_model_it_is_loaded_into():
    """break159 F1: SMCP's kept-fraction rescale is the BatchNorm's class, not a tensor, so the
    README's weights-only route (prepare, load_state_dict, finalize) finalized to another
    model (outputs off by 7.5 on a scale of 0.8) with its check passing. The state_dict's
    metadata names the rescaled BatchNorms (review161 F2: not a tensor, which broke timm's EMA)
    and the load rescales them, strict or not; a pruner built after the load (the Lightning
    callback's order) sets its own."""
    net, pm = _rescaled_run()
    x = torch.randn(2, 3, 8, 8)
    want = fxprune.finalize(pm)(x)
    saved = pm.state_dict()
    assert saved._metadata["fxprune_masks"]["fxprune_bn_rescale"] == ["4"]
    assert len(saved) == len(fxprune.prepare(net, torch.randn(1, 3, 8, 8)).state_dict())
    for strict in (True, False):
        fresh = fxprune.prepare(net, torch.randn(1, 3, 8, 8))
        fresh.load_state_dict(saved, strict=strict)
        torch.testing.assert_close(fxprune.finalize(fresh.eval())(x), want)
    buffer = io.BytesIO()  # through a file, and a pickled prepared model
    torch.save(saved, buffer)
    buffer.seek(0)
    fresh = copy.deepcopy(fxprune.prepare(net, torch.randn(1, 3, 8, 8)))
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    torch.testing.assert_close(fxprune.finalize(fresh.eval())(x), want)
    # the reverse: a state without the rescale into a model with it is said
    plain = fxprune.prepare(net, torch.randn(1, 3, 8, 8))
    with pytest.warns(RuntimeWarning, match=r"rescaled other BatchNorms by the kept fraction than "
                                             r"this one does \(4: SMCP's bn_rescale\)"):
        fresh.load_state_dict(plain.state_dict())
    # a state without the metadata (safetensors, or saved before it) loads as before
    bare = fxprune.prepare(net, torch.randn(1, 3, 8, 8))
    bare.load_state_dict(dict(saved))
    assert not [m for m in bare.modules() if type(m).__name__.startswith("Rescaled")]


def test_a_timm_ema_made_before_smcp_with_bn_rescale_updates():
    """review161 F2: the record of rescaled BatchNorms in the masks' extra-state tensor made
    it longer than an EMA copy's, and timm's ModelEmaV2/V3 (which zip the two state_dicts'
    tensors) failed at their first update."""
    timm = pytest.importorskip("timm")
    net = _rescaled_run()[0]
    pm = fxprune.prepare(net, torch.randn(1, 3, 8, 8))
    ema = timm.utils.ModelEmaV3(pm, decay=0.9)
    fxprune.SMCP(pm, target=0.5, channel_step=2, bn_rescale="kept_fraction")
    ema.update(pm)
    fxprune.copy_masks(pm, ema.module)
    assert [type(m).__name__ for m in ema.module.modules() if "BatchNorm" in type(m).__name__] == [
        type(m).__name__ for m in pm.modules() if "BatchNorm" in type(m).__name__]


def test_copy_masks_gives_a_copy_made_before_the_pruner_its_bn_rescale():
    """break159 F1: an EMA copy made right after prepare (before SMCP swapped the BatchNorms)
    took the masks from copy_masks but not the rescale, and finalized to another model."""
    net, pm = _rescaled_run()
    plain = fxprune.prepare(net, torch.randn(1, 3, 8, 8))
    copy = torch.optim.swa_utils.AveragedModel(plain)
    copy.module.load_state_dict({k: v for k, v in pm.state_dict().items() if "fxprune_masks" not in k},
                                strict=False)
    fxprune.copy_masks(pm, copy)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(fxprune.finalize(copy.module.eval())(x), fxprune.finalize(pm)(x))
    fxprune.copy_masks(plain.eval(), copy)  # and back: a source without it turns it off
    torch.testing.assert_close(fxprune.finalize(copy.module)(x), fxprune.finalize(plain)(x))


def test_a_finalized_state_dict_loaded_into_a_prepared_model_is_refused_in_one_line():
    """break90 F9: a finalized model's state_dict loaded into a freshly prepared one gave one
    size-mismatch line per layer (103 lines for resnet18) and no way out: one line names the
    route. A plain model's weights (the original's) load, the masks as they are."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
    pm = fxprune.prepare(net, torch.randn(1, 3, 8, 8))
    (group,) = [g for g in fxprune.channel_groups(pm) if g.mask is not None]
    with torch.no_grad():
        group.mask[:4] = 0
    saved = pm.state_dict()
    small = fxprune.finalize(pm)
    fresh = fxprune.prepare(net, torch.randn(1, 3, 8, 8))
    for strict in (True, False):
        with pytest.raises(RuntimeError) as raised:
            fresh.load_state_dict(small.state_dict(), strict=strict)
        lines = str(raised.value).splitlines()
        assert len(lines) == 2 and re.match(r"\s+the state_dict has no fxprune_masks\.\* and 3 tensors "
                                            r"narrower than this prepared model's \(0.weight, 0.bias, "
                                            r"2.weight\): a finalized .*README, Safety\)$", lines[1]), lines
    wider = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 6, 3))  # another head
    with pytest.raises(RuntimeError, match=r"size mismatch for 2.weight: .*\[6, 8, 3, 3\]"):
        fresh.load_state_dict(wider.state_dict())  # (break92 F6: said as "a finalized model's?")
    fresh.load_state_dict(net.state_dict())  # the original's weights: the masks stay
    assert fresh.fxprune_masks.g0.eq(1).all()
    fresh.load_state_dict(saved)  # the route the message names
    again = fxprune.finalize(fresh)
    again.load_state_dict(small.state_dict())
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(again(x), small(x))
    # break121 #5: pruning again, the first prepare's state_dict loaded into the finalized
    # model's prepare gave torch's line per layer; one line names the cause
    second = fxprune.prepare(small, torch.randn(1, 3, 8, 8))
    for strict in (True, False):
        with pytest.raises(RuntimeError) as raised:
            second.load_state_dict(saved, strict=strict)
        lines = str(raised.value).splitlines()
        assert len(lines) == 2 and re.match(r"\s+the saved masks are of a wider model with the same "
                                            r"channel groups \(g0 is '0' \(8 channels\) in the saved "
                                            r"state, '0' \(4\) here\): a state_dict of the model "
                                            r"before an earlier finalize\?", lines[1]), lines
    second.load_state_dict(second.state_dict())


def test_flops_count_attention_and_recurrent_layers():
    """break91 F1: in an eval forward nn.MultiheadAttention takes its fused fast path,
    F.scaled_dot_product_attention its flash kernel and nn.LSTM oneDNN's fused RNN, which
    torch's flop counter has no formula for: each counted 0 FLOPs (torchvision's vit_b_16 22.5
    GFLOPs of 33.7; a 0.5 FLOPs target kept 0.67). Counted as their matrix products (2 per
    multiply-accumulate), the backend flags as they were after."""
    from fxprune.summary import count_flops

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = nn.MultiheadAttention(16, 2, batch_first=True)

        def forward(self, x):
            q = x.view(1, 5, 2, 8).transpose(1, 2)
            return self.mha(x, x, x, need_weights=False)[0], F.scaled_dot_product_attention(q, q, q)

    class Recurrent(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(8, 16, batch_first=True)

        def forward(self, x):
            return self.lstm(x)[0]

    before = (torch.backends.mha.get_fastpath_enabled(), torch.backends.mkldnn.enabled,
              torch.backends.cudnn.enabled)
    projections, products = 4 * 16 * 16 * 5 * 2, 2 * (2 * 5 * 5 * 8 * 2)  # qkv + out; qk^T, av
    assert count_flops(Attention(), (torch.randn(1, 5, 16),)) == projections + 2 * products
    steps = 5 * (4 * 16 * 8 * 2 + 4 * 16 * 16 * 2)  # the input and recurrent products per step
    assert count_flops(Recurrent(), (torch.randn(1, 5, 8),)) == steps
    assert (torch.backends.mha.get_fastpath_enabled(), torch.backends.mkldnn.enabled,
            torch.backends.cudnn.enabled) == before


def test_flops_count_a_parameter_passed_to_a_submodule():
    """PiT and CaiT pass a view of their class-token parameter (``self.cls_token.expand(...)``)
    to a block: torch's flop counter hooks the gradient of such an argument even without grad,
    and raised an AssertionError ("Expected gradient function to be set") from count_flops,
    on the dense model as on the finalized one. Counted, and every parameter still trains."""
    from fxprune.summary import count_flops

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x, token):
            return self.fc(torch.cat([token, x], 1))

    class TokenNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
            self.block = Block()

        def forward(self, x):
            return self.block(x, self.cls_token.expand(x.shape[0], -1, -1))

    model = TokenNet()
    model.block.fc.bias.requires_grad_(False)  # one frozen: it stays frozen
    assert count_flops(model, (torch.randn(2, 3, 8),)) == 2 * 2 * 4 * 8 * 8
    assert [p.requires_grad for p in model.parameters()] == [True, True, False]


def test_another_tracer_keeps_prepares_own_leaves_as_single_calls():
    """break94 #2: tracer_kwargs named fxprune's masked classes only, so another tracer went
    into the modules prepare itself calls as one op: timm's BatchNormAct2d (traced in train
    mode, the re-traced model kept batch statistics after .eval(): 0.32 off), a leaf_modules
    class with data-dependent control flow (create_feature_extractor failed with torch's
    TraceError) and a hooked module (its hook ran on proxies while tracing, never after).
    Their classes are leaves now; the features equal the prepared model's in both modes."""
    from timm.layers import BatchNormAct2d
    from torchvision.models.feature_extraction import create_feature_extractor

    class Clip(nn.Module):  # data-dependent control flow: a leaf for prepare
        def forward(self, x):
            return x.clamp(max=1) if x.max() > 1 else x

    class Hooked(nn.Module):
        def forward(self, x):
            return x * 2

    class Scaled(nn.Module):
        def forward(self, x):
            return x * 3

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.bn = nn.Conv2d(3, 16, 3, padding=1), BatchNormAct2d(16)
            self.clip, self.hooked = Clip(), Hooked()
            self.seq = nn.Sequential(Scaled())  # hooked too (break96 #6)
            self.c2, self.fc = nn.Conv2d(16, 8, 1), nn.Linear(8, 5)

        def forward(self, x):
            y = self.seq(self.hooked(self.clip(self.bn(self.c1(x)))))
            return self.fc(self.c2(y).mean((2, 3)))

    torch.manual_seed(0)
    model = Net()
    with torch.no_grad():  # running statistics unlike a batch's
        model.bn.running_mean.fill_(0.5)
        model.bn.running_var.fill_(3.0)
    calls = []
    model.hooked.register_forward_hook(lambda m, args, out: calls.append(type(out).__name__))
    model.seq.register_forward_hook(lambda m, args, out: calls.append(type(out).__name__))
    x = torch.randn(4, 3, 8, 8)
    with pytest.warns(UserWarning, match="hooks"):
        pm = fxprune.prepare(model, (x,), leaf_modules=(Clip,))
    kwargs = fxprune.tracer_kwargs(pm)
    assert {BatchNormAct2d, Clip, Hooked, nn.Sequential} <= set(kwargs["leaf_modules"])
    pm.train()
    calls.clear()
    features = create_feature_extractor(pm, {"fc": "out"}, tracer_kwargs=kwargs)
    assert calls == []  # not run while tracing
    for mode in ("train", "eval"):
        getattr(pm, mode)()
        getattr(features, mode)()
        with torch.no_grad():
            torch.testing.assert_close(features(x)["out"], pm(x))
    assert len(calls) == 8 and set(calls) == {"Tensor"}  # both hooks, 4 forwards


def test_every_error_fxprune_raises_on_purpose_is_an_fxprune_error():
    """break111 F3: `except fxprune.FxPruneError` missed an infeasible target, an unmeasured
    layer and every deploy failure, though the base class's docstring promised them."""
    from fxprune.deploy import DeployError, UnmeasuredLayerError

    for error, builtin in ((DeployError, RuntimeError), (UnmeasuredLayerError, LookupError),
                           (fxprune.InfeasibleBudget, ValueError)):
        assert issubclass(error, fxprune.FxPruneError) and issubclass(error, builtin)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))
    pm = fxprune.prepare(model, (torch.randn(1, 3, 8, 8),))
    with pytest.raises(fxprune.FxPruneError, match="below the narrowest model"):
        fxprune.SMCP(pm, target=1e-6, channel_step=2)


def test_layer_specs_are_copies_whose_meta_edits_change_no_pricing():
    """break111 F2: the specs shared their meta dict with the prepared model; marking one as a
    repeated call made ParamsCost price the model as dense and SMCP refuse its target."""
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.ReLU(),
                          nn.Conv2d(16, 4, 1))
    pm = fxprune.prepare(model, (torch.randn(1, 3, 12, 12),))
    before = fxprune.SMCP(pm, cost="params", channel_step=4).cost()
    for spec in fxprune.layer_specs(pm):
        spec.meta["repeated_call"] = True
    assert all(not spec.meta for spec in fxprune.layer_specs(pm))
    assert fxprune.SMCP(pm, cost="params", channel_step=4).cost() == before


@pytest.mark.parametrize("method", ["SMCP", "CCP", "CUCB"])
@pytest.mark.parametrize("given", [None, "plain"])
def test_a_method_built_over_what_is_not_a_prepared_model_says_so(method, given):
    """break111 F11: SMCP(None) raised an AttributeError from inside importance.py."""
    model = nn.Conv2d(3, 4, 1) if given == "plain" else None
    with pytest.raises(fxprune.NotPreparedError, match=r"expected the GraphModule returned by "
                                                       r"fxprune.prepare\(model, example_inputs\)"):
        getattr(fxprune, method)(model)


@pytest.mark.parametrize("rtol", [-1, float("nan"), 0, "1e-4"])
def test_the_surgery_passes_verify_refuses_a_tolerance_that_is_no_number_above_zero(rtol):
    """break111 F10: verify (the pass finalize runs) with rtol=-1 or NaN reported "the masked
    model gives other outputs each run ... by 0 between two runs"."""
    from fxprune.passes import surgery

    pm = fxprune.prepare(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)),
                         (torch.randn(1, 3, 8, 8),))
    small = fxprune.finalize(pm, check=False)
    with pytest.raises(ValueError, match="verify: rtol is a relative tolerance, a number > 0"):
        surgery.verify(pm, small, (torch.randn(1, 3, 8, 8),), rtol)
    assert surgery.verify(pm, small, (torch.randn(1, 3, 8, 8),), 1e-4) <= 1e-4


def test_wrong_types_at_the_public_entry_points_get_one_line_errors(tmp_path):
    """break111 F16: raw Python errors with no way out ('NoneType' object is not iterable,
    unhashable type: 'list', 'int' object is not iterable), and a saved table's layers "c1"
    loaded as ['c', '1']."""
    from fxprune.deploy import DeployError, LatencyTable, resolve_input_shape

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))
    x = torch.randn(1, 3, 8, 8)
    pm = fxprune.prepare(model, (x,), leaf_modules=None)  # None: no leaf modules
    assert [g.size for g in fxprune.channel_groups(pm) if g.prunable] == [8]
    with pytest.raises(TypeError, match=r"^prepare: leaf_modules= is a list of module classes or "
                                        r"module paths \(str\), got int$"):
        fxprune.prepare(model, (x,), leaf_modules=3)  # ('int' object is not iterable)
    # one path alone is that path (a string was read as its characters: 'conv' as c, o, n, v)
    pm = fxprune.prepare(model, (x,), leaf_modules="2")
    assert [g.size for g in fxprune.channel_groups(pm) if g.prunable] == [8]
    with pytest.raises(TypeError, match="tracer_kwargs takes the prepared or finalized model, got "
                                        "NoneType"):
        fxprune.tracer_kwargs(None)
    with pytest.raises(ValueError, match=r"a pruning method's name is a str, got \['smcp'\]; "
                                         r"registered: .*smcp"):
        fxprune.get_method(["smcp"])
    with pytest.raises(DeployError, match="input shape 5 is not a shape: give every dim"):
        resolve_input_shape(model, 5)
    table = LatencyTable.measure(fxprune.layer_specs(pm), step=4, progress=False,
                                 timer=lambda spec, ci, co: 0.01 * (ci + co))
    data = table.to_dict()
    key = next(iter(data["grids"]))
    data["grids"][key]["layers"] = "c1"
    with pytest.raises(DeployError, match=r"is malformed \(TypeError: grid .*: layers is 'c1', not a "
                                          r"list of names\)"):
        LatencyTable.from_dict(data)


def test_scripting_the_prepared_model_says_to_script_the_finalized_one():
    """break113 F4: TorchScript's own "Module 'MaskedConv2d' has no attribute
    '_fxprune_in_dim'" named neither the problem nor the way out."""
    pm = fxprune.prepare(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)),
                         (torch.randn(1, 3, 8, 8),))
    with pytest.raises(TypeError, match=r"MaskedConv2d is one of fxprune's masked layers, which do "
                                        r"not script: script the finalized model"):
        torch.jit.script(pm)
    fxprune.channel_groups(pm)[0].mask[:2] = 0
    scripted = torch.jit.script(fxprune.finalize(pm))
    x = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(scripted(x), pm.eval()(x), rtol=1e-5, atol=1e-6)


class _Flipping(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 1)

    def forward(self, x, flip: bool = False):
        y = torch.relu(self.a(x))
        return self.b(y.flip(3) if flip else y)


@pytest.mark.parametrize("flip", [False, True])
def test_a_finalized_model_with_a_bool_argument_scripts_and_keeps_its_guard(flip):
    """break163 F2: a forward with `flip: bool = False` scripted, its finalized model did not
    ("Expected a default value of type Tensor" for flip: torch.fx dropped the annotation of an
    argument it traced as a value)."""
    x = torch.randn(1, 3, 8, 8)
    pm = fxprune.prepare(_Flipping(), (x, flip))
    fxprune.channel_groups(pm)[0].mask[:3] = 0
    small = fxprune.finalize(pm)
    scripted = torch.jit.script(small)
    torch.testing.assert_close(scripted(x, flip), pm.eval()(x, flip), rtol=1e-5, atol=1e-6)
    with pytest.raises(Exception, match="flip has been specialized to have value"):
        scripted(x, not flip)  # traced as one value: another is refused, scripted too


def test_a_warning_points_past_torch_s_frames_at_the_user_s_line():
    """break119 #3: a warning said inside an optimizer's step(closure) (Lightning's loop)
    pointed at torch/optim/sgd.py's `loss = closure()`, not at the user's line."""
    namespace = {"__name__": "fxprune.fake_loop"}  # (fxprune's or Lightning's closure)
    exec("from fxprune.errors import warn\n"
         "def closure():\n"
         "    warn('said from a method', RuntimeWarning)\n", namespace)
    weight = nn.Parameter(torch.ones(1))
    opt = torch.optim.SGD([weight], lr=0.1)
    with pytest.warns(RuntimeWarning, match="said from a method") as said:
        opt.step(namespace["closure"])  # this line is the user's
    assert said[0].filename == __file__, said[0].filename


def test_the_public_names_are_listed_once_and_the_passes_are_discoverable():
    """break174 F10: fxprune.__all__ named 12 of its names twice, and dir(fxprune.passes) was
    empty, so the passes the README's table lists could not be found from Python."""
    import fxprune.passes

    assert len(fxprune.__all__) == len(set(fxprune.__all__))
    assert all(getattr(fxprune, name) is not None for name in fxprune.__all__)
    listed = dir(fxprune.passes)
    assert {"trace", "shape_prop", "insert_masks", "surgery", "bn_rescale"} <= set(listed)
    assert all(getattr(fxprune.passes, name).__name__ == f"fxprune.passes.{name}"
               for name in listed if not name.startswith("_"))


class _ChannelFlip(torch.nn.Module):  # reverses the channels: not elementwise
    def forward(self, x):
        return x.flip(1)


class _FlipNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.flip, self.b = torch.nn.Conv2d(3, 8, 3), _ChannelFlip(), torch.nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.b(self.flip(self.a(x)))


def test_a_failed_check_names_the_rows_the_user_gave():
    """break176 F8: an Elementwise() row on an op that reorders channels was found by finalize
    as "a bug in fxprune or in a custom rule", naming neither the row nor the op."""
    from fxprune.rules import Elementwise

    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    pm = fxprune.prepare(_FlipNet().eval(), (x,), rules={_ChannelFlip: Elementwise()},
                         leaf_modules=[_ChannelFlip])
    (group,) = [g for g in fxprune.channel_groups(pm) if g.name == "a"]
    group.mask[:4] = 0
    with pytest.raises(fxprune.SurgeryError, match=r"The rows given in rules= \(_ChannelFlip: "
                                                   r"Elementwise\(\)\) are the likeliest cause"):
        fxprune.finalize(pm)


def test_prepare_out_of_memory_names_memory_not_the_shapes(monkeypatch):
    """break186 F6: an example input too large for memory was told to "check that
    example_inputs match what the model expects", though the shapes fit."""
    class Hungry(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(x)

    def refuse(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate "
                           "999 bytes.")

    model = Hungry()
    monkeypatch.setattr(torch.nn.Conv2d, "_conv_forward", refuse)
    with pytest.raises(fxprune.ExampleInputsError, match=r"ran out of memory at node `conv` "
                                                         r"\(can't allocate memory: .*\); give a "
                                                         r"smaller example input: one sample "
                                                         r"\(batch 1\) is enough") as e:
        fxprune.prepare(model, (torch.randn(2, 3, 8, 8),))
    assert "Check that example_inputs match" not in str(e.value)
    # one sample already (review189 R1): the size is what is left
    with pytest.raises(fxprune.ExampleInputsError, match=r"give a smaller example input: a "
                                                         r"smaller input size$"):
        fxprune.prepare(model, (torch.randn(1, 3, 8, 8),))


def test_fxprune_without_a_command_is_a_usage_error_on_stderr(capsys):
    """break187 F8: `fxprune` alone printed the whole help on stdout and exited 2 with nothing
    on stderr; every other usage error is the usage and one line there."""
    from fxprune.cli import main

    assert main([]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("usage: fxprune")
    assert captured.err.splitlines()[-1] == ("fxprune: error: a command is required (demo, train, "
                                             "deploy, plot, methods); fxprune --help describes them")


def test_an_example_input_on_the_meta_device_is_named():
    """break187 F5: torch's "Cannot copy out of meta tensor; no data!" from inside prepare."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))
    with pytest.raises(fxprune.ExampleInputsError, match=r"^example_inputs\[0\] is on the meta "
                                                         r"device \(a shape without data\)"):
        fxprune.prepare(model, (torch.randn(1, 3, 8, 8, device="meta"),))


def test_out_of_memory_quotes_whole_sentences_of_the_allocators_words():
    """review189 R8: CUDA's one ~500-character line was cut at 200 characters, mid-word."""
    from fxprune.errors import out_of_memory

    cuda = torch.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB "
        "of which 1.06 GiB is free. Including non-PyTorch memory, this process has 78.12 GiB "
        "memory in use. Of the allocated memory 77.00 GiB is allocated by PyTorch, and 500.00 MiB "
        "is reserved by PyTorch but unallocated. If reserved but unallocated memory is large try "
        "setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.")
    assert out_of_memory(cuda) == ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a "
                                   "total capacity of 79.19 GiB of which 1.06 GiB is free.")
    cpu = RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't "
                       "allocate memory: you tried to allocate 1048576000 bytes. Error code 12")
    assert out_of_memory(cpu) == "can't allocate memory: you tried to allocate 1048576000 bytes"
    full = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 512.00 bytes. GPU 0 has a "
                                  "total capacity of 79.19 GiB of which 0 bytes is free. Including "
                                  "non-PyTorch memory, this process has 79.18 GiB memory in use.")
    assert out_of_memory(full) == ("CUDA out of memory. Tried to allocate 512.00 bytes. GPU 0 has "
                                   "a total capacity of 79.19 GiB of which 0 bytes is free.")
    assert out_of_memory(MemoryError("Unable to allocate 8.00 TiB")) == "Unable to allocate 8.00 TiB"
    assert out_of_memory(RuntimeError("shapes do not match")) is None


class _Uncopyable(torch.nn.Module):
    def __init__(self):
        super().__init__()
        import threading

        self.conv, self.lock = torch.nn.Conv2d(3, 4, 3), threading.Lock()

    def forward(self, x):
        return self.conv(x)


def test_the_apis_deliberate_errors_are_fxprune_errors_of_their_builtin_kind():
    """review194 M4: FxPruneError's docstring promised the base of every deliberate error, but
    a bad argument (SMCP's target=2, prepare's rules=[...]), a quantization-prepared model
    and solve_mckp's infeasible budget raised plain ValueError/TypeError, which
    ``except fxprune.FxPruneError`` missed."""
    from fxprune.knapsack import solve_mckp

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1))
    x = torch.randn(1, 3, 8, 8)
    pm = fxprune.prepare(model, (x,))
    cases = [
        (lambda: fxprune.SMCP(pm, target=2.0), fxprune.ArgumentError, ValueError),
        (lambda: fxprune.SMCP(pm, target=0.5, hysteresis=-1), fxprune.ArgumentError, ValueError),
        (lambda: fxprune.CUCB(pm, target=0.5, warmup=-1), fxprune.ArgumentError, ValueError),
        (lambda: fxprune.prepare(model, (x,), rules=[1]), fxprune.ArgumentTypeError, TypeError),
        (lambda: fxprune.SMCP(pm, target=0.5, cost=3), fxprune.ArgumentTypeError, TypeError),
        (lambda: solve_mckp([np.array([1.0])], [np.array([5.0])], 1.0), fxprune.InfeasibleBudget,
         ValueError),
        # break196 F3: refusals the first pass left as built-in errors
        (lambda: fxprune.prepare(model, (x,), leaf_modules=["nope"]), fxprune.ArgumentError,
         ValueError),
        (lambda: fxprune.prepare(model, (x,), leaf_modules=[123]), fxprune.ArgumentTypeError,
         TypeError),
        (lambda: fxprune.deploy.calibrate_cost("flops", pm), fxprune.ArgumentTypeError, TypeError),
        (lambda: fxprune.LatencyTable.measure([1, 2]), fxprune.ArgumentTypeError, TypeError),
        (lambda: fxprune.deploy.latency_cost(pm, cache=123), fxprune.ArgumentTypeError, TypeError),
        (lambda: fxprune.distributed.rewrap_after_finalize(pm, {}, lambda m: None),
         fxprune.ArgumentTypeError, TypeError),
        (lambda: fxprune.prepare(_Uncopyable(), (x,)), fxprune.UnsupportedModelError, TypeError),
    ]
    for call, kind, builtin in cases:
        with pytest.raises(kind) as info:
            call()
        assert isinstance(info.value, fxprune.FxPruneError) and isinstance(info.value, builtin)


def test_flops_and_parameter_counts_are_at_the_top_level_where_summary_points():
    """review194 L3: README and summary()'s error sent users to `from fxprune.summary import
    count_flops`, while `import fxprune.summary` gives the function summary."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(), torch.nn.Linear(8 * 36, 2))
    assert {"count_flops", "count_params"} <= set(fxprune.__all__)
    assert fxprune.count_params(model) == sum(p.numel() for p in model.parameters())
    # 2 per multiply-add: the conv's 8*3*9 per output pixel (36 of them), the linear's 288*2
    assert fxprune.count_flops(model, (torch.randn(1, 3, 8, 8),)) == 2 * (8 * 3 * 9 * 36 + 288 * 2)
    with pytest.raises(fxprune.NotPreparedError, match=r"fxprune.count_flops\(model, inputs\) "
                                                       r"and fxprune.count_params\(model\)$"):
        fxprune.summary(model)


def test_flags_and_callables_are_checked_where_they_are_given():
    """break196 F5: CCP(scaler=1) failed at its first step with an AttributeError, swaps="no"
    and finalize(check="no") read as True, deploy(log=1) and measure(timer=1) failed later as
    "'int' object is not callable"."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(), torch.nn.Conv2d(16, 4, 1))
    pm = fxprune.prepare(model, (torch.randn(1, 3, 8, 8),))
    for call, says in [
            (lambda: fxprune.CCP(pm, scaler=1), r"^scaler is the loop's torch.amp.GradScaler"),
            (lambda: fxprune.CCP(pm, swaps="no"), r"^swaps is True or False, got 'no'$"),
            (lambda: fxprune.finalize(pm, check="no"), r"^check is True or False, got 'no'$"),
            (lambda: fxprune.deploy.latency_cost(pm, progress="no"),
             r"^progress is True or False, got 'no'$")]:
        with pytest.raises(fxprune.ArgumentTypeError, match=says):
            call()
    from fxprune.deploy import DeployError
    for call, says in [(lambda: fxprune.LatencyTable.measure(pm, timer=1), r"^timer is called as"),
                       (lambda: fxprune.LatencyTable.measure(pm, log=1), r"^log is called with"),
                       (lambda: fxprune.deploy.deploy(model, "unused", log=1), r"^log takes each")]:
        with pytest.raises(DeployError, match=says):
            call()


class _GroupedToLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 64, 3, padding=1)
        self.g = nn.Conv2d(64, 64, 3, padding=1, groups=4)
        self.fc = nn.Linear(64 * 4 * 4, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.g(torch.relu(self.a(x)))).flatten(1))


def test_a_groups_positions_say_which_rows_and_columns_each_mask_entry_removes():
    """break205 F9: which weight rows or columns a mask entry stands for (a grouped conv's
    position j of every conv group, flatten -> linear's H*W columns) was not public."""
    torch.manual_seed(0)
    model = _GroupedToLinear().eval()
    x = torch.randn(2, 3, 4, 4)
    pm = fxprune.prepare(model, (x,))
    groups = {g.name: g for g in fxprune.channel_groups(pm)}
    a, g = groups["a"], groups["g"]
    assert a.positions()["a.weight:0"].tolist() == list(range(16)) * 4
    assert g.positions()["fc.weight:1"].tolist() == [j for j in range(16) for _ in range(4 * 4)] * 4
    a.mask[0] = 0
    g.mask[[1, 2]] = 0
    small = fxprune.finalize(pm)

    def kept(group, tensor):  # the rows or columns the masks keep, by the positions
        return torch.from_numpy(group.mask.numpy()[group.positions()[tensor]] != 0).nonzero().flatten()

    torch.testing.assert_close(small.a.weight, model.a.weight.index_select(0, kept(a, "a.weight:0")))
    torch.testing.assert_close(small.g.weight, model.g.weight.index_select(
        0, kept(g, "g.weight:0")).index_select(1, kept(a, "g.weight:1")))
    torch.testing.assert_close(small.fc.weight, model.fc.weight.index_select(
        1, kept(g, "fc.weight:1")))
    assert groups["fc"].positions()["fc.weight:0"].tolist() == list(range(10))
