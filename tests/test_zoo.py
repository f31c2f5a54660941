"""Every torchvision classification and segmentation model: prepare, prune half of every
prunable group at random, finalize; the pruned model must compute what the masked one does."""
from __future__ import annotations

import gc

import pytest
import torch
import torchvision
from torchvision.models import segmentation

import fxprune
from fxprune.compare import max_relative_error, run_eval
from fxprune.summary import count_flops
from helpers import assert_plain, random_masks, sensitivity, stamps, with_signal

CLASSIFICATION = torchvision.models.list_models(module=torchvision.models)
SEGMENTATION = torchvision.models.list_models(module=segmentation)
# The ViTs take their resolution at construction (a multiple of the patch): at about half of
# 224 they run the same layers on a quarter of the tokens (vit_h_14 at 224 was a minute of the
# suite). maxvit_t's attention partitions need 224; the rest run at 64x64 (inception_v3 needs
# at least 75) to keep the sweep fast on 2 CPU cores.
VIT_SIZE = {"vit_b_16": 112, "vit_l_16": 112, "vit_h_14": 112, "vit_b_32": 128, "vit_l_32": 128}
INPUT_SIZE = {"inception_v3": 96, "maxvit_t": 224, **VIT_SIZE}
# Over ~7 s each here: still run in CI, skipped locally with -m "not slow".
HEAVY = {"vit_h_14", "vit_l_16", "vit_l_32", "regnet_y_128gf", "regnet_y_32gf", "efficientnet_v2_l",
         "efficientnet_v2_m", "efficientnet_b4", "efficientnet_b5", "efficientnet_b6",
         "efficientnet_b7", "convnext_large", "convnext_base", "densenet161", "densenet201",
         "swin_b", "swin_v2_b", "swin_v2_s", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn", "vgg13",
         "vgg13_bn", "wide_resnet50_2", "wide_resnet101_2", "resnext101_32x8d", "resnext101_64x4d"}

# Prunable groups of a few models, so a rule that loses prunability shows here and not only in
# ``any(g.prunable)`` (ShuffleNetV2 once lost 3 of its 21 groups to a split rule)
PRUNABLE_GROUPS = {"shufflenet_v2_x0_5": 21, "shufflenet_v2_x1_0": 21, "resnet18": 12,
                   "mobilenet_v3_small": 27, "googlenet": 57, "squeezenet1_0": 25,
                   "efficientnet_b0": 40, "regnet_y_400mf": 53, "convnext_tiny": 22, "swin_t": 12}


# Left out of the sweep: the widest of a family swept here, the same kinds of block as the twin
# that is (a test below checks that), 57 s of the suite on 2 CPU cores (where their time goes is
# copying and checking ~1e9 weights, not any rule the twin does not exercise).
WIDER_TWIN = {"regnet_y_128gf": "regnet_y_32gf", "vit_h_14": "vit_l_16"}


def build(name: str) -> torch.nn.Module:
    kwargs = {}
    if name in SEGMENTATION:
        kwargs = {"weights_backbone": None, "aux_loss": False}
    elif name in ("inception_v3", "googlenet"):
        kwargs = {"init_weights": False}  # scipy-based truncated-normal init is slow and irrelevant
    elif name in VIT_SIZE:
        kwargs = {"image_size": VIT_SIZE[name]}
    return torchvision.models.get_model(name, weights=None, **kwargs).eval()


def params(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in names]


@pytest.mark.parametrize("name", params([n for n in CLASSIFICATION + SEGMENTATION if n not in WIDER_TWIN]))
def test_prune_half_of_every_group(name):
    torch.manual_seed(0)
    size = INPUT_SIZE.get(name, 64)
    x = torch.randn(1, 3, size, size)
    model = with_signal(build(name), x)
    pm = fxprune.prepare(model, (x,))
    groups = fxprune.channel_groups(pm)
    assert any(g.prunable for g in groups)
    if name in PRUNABLE_GROUPS:
        assert sum(g.prunable for g in groups) == PRUNABLE_GROUPS[name]
    random_masks(pm, 0.5, seed=0)
    moved, masked_out = sensitivity(model, pm, (x,))
    print(f"{name}: masking moves the output by {moved:.2g}")
    assert moved > 1e-4, moved  # the masks change the output, so the check below can fail
    before = stamps(pm)  # (the masked output above is compared after finalize: it left pm alone)
    small = fxprune.finalize(pm, rtol=1e-3)  # finalize itself refuses outputs that differ
    assert stamps(pm) == before
    assert max_relative_error(masked_out, run_eval(small, (x,))) <= min(1e-3, moved / 100)
    dense_flops, pruned_flops = count_flops(pm, (x,)), count_flops(small, (x,))
    assert pruned_flops <= 0.9 * dense_flops, (dense_flops, pruned_flops)
    assert_plain(small)
    del model, pm, small
    gc.collect()


def _kinds_of_block(name: str) -> set:
    """Each module's class with the set of its children's classes (depth and width aside), and
    whether a conv is grouped or depthwise: what decides the channel rules a model meets.
    Built without initialising its ~1e9 weights (structure is all that is read)."""
    inits = {n: f for n, f in vars(torch.nn.init).items() if n.endswith("_") and not n.startswith("_")}
    try:
        for n in inits:
            setattr(torch.nn.init, n, lambda t, *a, **k: t)
        model = build(name)
    finally:
        for n, f in inits.items():
            setattr(torch.nn.init, n, f)
    return {(type(m).__name__, frozenset(type(c).__name__ for c in m.children()),
             isinstance(m, torch.nn.Conv2d) and m.groups > 1,
             isinstance(m, torch.nn.Conv2d) and m.groups == m.in_channels > 1)
            for m in model.modules()}


@pytest.mark.parametrize("name", sorted(WIDER_TWIN))
def test_a_model_left_out_of_the_sweep_has_only_its_twins_kinds_of_block(name):
    twin = WIDER_TWIN[name]
    assert twin in CLASSIFICATION + SEGMENTATION and twin in HEAVY  # swept, in CI
    assert _kinds_of_block(name) == _kinds_of_block(twin)
