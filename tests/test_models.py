"""The Fashion-MNIST ResNet and the model registry."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fxprune.models import ResNetFMNIST, available_models, build_model


def expected_params(widths, blocks, in_channels=1, num_classes=10):
    """Count by hand: 3x3 convs without bias, BN (weight + bias), 1x1 shortcuts, linear head."""
    total = 9 * in_channels * widths[0] + 2 * widths[0]
    prev = widths[0]
    for stage, (width, n) in enumerate(zip(widths, blocks)):
        for b in range(n):
            cin = prev if b == 0 else width
            total += 9 * cin * width + 2 * width + 9 * width * width + 2 * width
            if b == 0 and (stage > 0 or cin != width):  # stride 2 or new width
                total += cin * width + 2 * width
        prev = width
    return total + widths[-1] * num_classes + num_classes


@pytest.mark.parametrize("widths, blocks", [((16, 32, 64), (1, 1, 1)), ((8, 16), (2, 3)),
                                            ((16, 16, 32), (1, 2, 1))])
def test_shapes_and_parameter_count(widths, blocks):
    model = build_model("resnet_fmnist", widths=widths, blocks=blocks)
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert sum(p.numel() for p in model.parameters()) == expected_params(widths, blocks)


def test_default_architecture_and_flops():
    model = build_model("resnet_fmnist").eval()
    assert model.widths == (16, 32, 64) and model.blocks == (1, 1, 1)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 2 * 3 + 2  # stem, two per block, two shortcuts
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 1, 28, 28))
    # 3x3 convs at 28x28/14x14/7x7 with widths 16/32/64: about 18.7 MFLOPs an image.
    assert 15e6 < counter.get_total_flops() < 25e6
    # Stages downsample 28 -> 14 -> 7 before pooling.
    shapes = []
    model.layer3.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)) and None)
    model(torch.zeros(2, 1, 28, 28))
    assert shapes == [(2, 64, 7, 7)]


def test_zero_init_residual_starts_blocks_as_identity():
    model = build_model("resnet_fmnist", zero_init_residual=True)
    for stage in (model.layer1, model.layer2, model.layer3):
        for block in stage:
            assert torch.count_nonzero(block.bn2.weight) == 0
    plain = build_model("resnet_fmnist")  # torchvision's default: off
    assert torch.count_nonzero(plain.layer1[0].bn2.weight) > 0


def test_symbolic_trace_matches_eager():
    model = build_model("resnet_fmnist", widths=(8, 16, 16), blocks=(2, 1, 1)).eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(traced(x), model(x), atol=1e-6)
    targets = {n.target for n in traced.graph.nodes if n.op == "call_module"}
    assert {"conv1", "layer1.0.conv1", "layer2.0.downsample.0", "fc"} <= targets


def test_torchvision_model_by_name():
    model = build_model("resnet18", num_classes=7)
    assert model.fc.out_features == 7
    assert "resnet18" in available_models() and "resnet_fmnist" in available_models()


@pytest.mark.parametrize("name, kwargs, error, match", [
    ("resnet_fmnsit", {}, ValueError, "unknown model 'resnet_fmnsit'"),
    ("resnet_fmnist", {"width": (8,)}, TypeError, r"does not take \['width'\]"),
    ("resnet_fmnist", {"widths": (8, 16), "blocks": (1,)}, ValueError, "equal length"),
    ("resnet_fmnist", {"widths": (8, 0), "blocks": (1, 1)}, ValueError, "widths >= 1"),
    ("resnet18", {"widths": (8,)}, TypeError, "model.widths=null"),
])
def test_bad_arguments_are_clear_errors(name, kwargs, error, match):
    with pytest.raises(error, match=match):
        build_model(name, **kwargs)


def test_class_is_exported_and_configurable_input_channels():
    model = ResNetFMNIST(widths=(8,), blocks=(1,), in_channels=3, num_classes=4)
    assert model(torch.randn(1, 3, 28, 28)).shape == (1, 4)


def test_inner_widths_build_the_architecture_pruning_leaves():
    """A model pruned inside its blocks and the model built with those widths from scratch have
    the same parameters, name by name and shape by shape (the control of Liu et al. 2019)."""
    import fxprune

    pm = fxprune.prepare(build_model("resnet_fmnist"), (torch.zeros(1, 1, 28, 28),))
    keep = {"conv1": 12, "layer1.0.conv1": 8, "layer2.0.conv1": 16, "layer3.0.conv1": 40}
    for g in fxprune.channel_groups(pm):
        if g.name in keep:
            g.mask[keep[g.name]:] = 0
    pruned = fxprune.finalize(pm)
    scratch = build_model("resnet_fmnist", widths=(12, 32, 64), inner_widths=(8, 16, 40))
    assert scratch.inner_widths == (8, 16, 40)
    shapes = {n: tuple(p.shape) for n, p in scratch.named_parameters()}
    assert shapes == {n: tuple(p.shape) for n, p in pruned.named_parameters()}
    assert shapes["layer3.0.conv2.weight"] == (64, 40, 3, 3)
    two = build_model("resnet_fmnist", widths=(8, 16), blocks=(2, 2), inner_widths=(4, 12))
    assert two(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert [b.conv1.out_channels for s in (two.layer1, two.layer2) for b in s] == [4, 4, 12, 12]


@pytest.mark.parametrize("kwargs, match", [
    ({"widths": (8, 16), "blocks": (1, 1), "inner_widths": (4,)}, "equal length"),
    ({"widths": (8, 16), "blocks": (1, 1), "inner_widths": (4, 0)}, "widths >= 1"),
])
def test_bad_inner_widths_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_model("resnet_fmnist", **kwargs)


def test_conv_init_choices_set_the_conv_weights_scale():
    """kaiming_fan_out: N(0, 2/fan_out) (torchvision's ResNet); torch_default: nn.Conv2d's own
    U(+-1/sqrt(fan_in)); the two differ ~2.5x in scale for a 3x3 conv of equal widths."""
    import math

    torch.manual_seed(0)
    tv = build_model("resnet_fmnist", widths=(64,), blocks=(1,))
    torch.manual_seed(0)
    pt = build_model("resnet_fmnist", widths=(64,), blocks=(1,), conv_init="torch_default")
    assert tv.conv_init == "kaiming_fan_out" and pt.conv_init == "torch_default"
    w_tv, w_pt = tv.layer1[0].conv2.weight, pt.layer1[0].conv2.weight  # 64 -> 64, 3x3
    fan = 64 * 9
    assert abs(w_tv.std().item() - math.sqrt(2 / fan)) < 0.05 * math.sqrt(2 / fan)
    assert abs(w_pt.std().item() - 1 / math.sqrt(3 * fan)) < 0.05 / math.sqrt(3 * fan)
    # every conv of a three-stage model: stride-2, 1x1 downsample and inner_widths' own convs
    full = build_model("resnet_fmnist", inner_widths=(8, 16, 40), conv_init="torch_default")
    convs = [m for m in [*pt.modules(), *full.modules()] if isinstance(m, torch.nn.Conv2d)]
    assert sum(m.kernel_size == (1, 1) for m in convs) == 2 and len(convs) == 3 + 9
    for m in convs:
        fan_in = m.weight[0].numel()
        assert m.weight.abs().max().item() <= 1 / math.sqrt(fan_in) + 1e-7
    # null in a recipe (None) is the default, and the default draws the same weights as naming it
    states = []
    for ci in ({}, {"conv_init": None}, {"conv_init": "kaiming_fan_out"}):
        torch.manual_seed(0)
        states.append(build_model("resnet_fmnist", inner_widths=(8, 16, 40), **ci).state_dict())
    for other in states[1:]:
        assert all(torch.equal(states[0][k], other[k]) for k in states[0])
    with pytest.raises(ValueError, match=r"conv_init must be one of \('kaiming_fan_out', "
                                         r"'torch_default'\), got 'xavier'"):
        build_model("resnet_fmnist", conv_init="xavier")
