"""Models for the recipes: a small ResNet for 1x28x28 images, plus torchvision's zoo by name.

``resnet_fmnist`` is torchvision's ResNet recipe (``BasicBlock`` residual stages, BN, a 1x1
conv + BN shortcut where the shape changes, global average pooling, one linear head) scaled
down for 28x28 inputs: a 3x3 stem with no max-pool, since at 28x28 every early downsampling
costs accuracy, and stride-2 transitions between stages. It exercises everything channel
pruning has to get right on real networks (residual adds tying channels across blocks,
shortcut convs, BN after every conv, the head) while training in about a minute an epoch on
two CPU cores.
"""
from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Callable

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

__all__ = ["ResNetFMNIST", "build_model", "available_models"]

DEFAULT_WIDTHS = (16, 32, 64)
DEFAULT_BLOCKS = (1, 1, 1)
# ResNetFMNIST's own arguments, which a torchvision model refuses (build_model and the recipe
# check both name them from here)
RESNET_FMNIST_ONLY = ("widths", "blocks", "inner_widths", "in_channels", "conv_init")
# How the 3x3/1x1 convs start: torchvision ResNet's kaiming normal over fan-out (He et al.,
# 2015), or PyTorch's own nn.Conv2d default (kaiming uniform with a=sqrt(5): U(+-1/sqrt(fan_in)))
CONV_INITS = ("kaiming_fan_out", "torch_default")


class ResNetFMNIST(nn.Module):
    """A torchvision-style ResNet for small grayscale images.

    ``widths[i]`` is the channel count of stage ``i`` and ``blocks[i]`` its number of
    ``BasicBlock``\\ s; every stage after the first halves the spatial size. At 28x28 the
    three default stages run at 28x28, 14x14 and 7x7. ``inner_widths[i]`` (default
    ``widths``) is the width between the two 3x3 convs of stage ``i``'s blocks: the channels
    channel pruning removes inside a block (one value per stage: every block of the stage gets
    it), so a pruned model's architecture can be trained from scratch (the control of Liu et
    al., ICLR 2019), e.g. ``widths=(12, 32, 64), inner_widths=(8, 16, 40)``.

    ``conv_init``: ``"kaiming_fan_out"`` (torchvision's ResNet init, N(0, 2/fan_out)) or
    ``"torch_default"`` (``nn.Conv2d``'s own, U(+-1/sqrt(fan_in)): ~2.5x smaller weights for a 3x3
    conv of equal widths). Behind BatchNorm a conv's scale does not change its output but sets
    its effective step size (lr / ||W||^2 for scale-invariant weights, van Laarhoven 2017).
    On the Fashion-MNIST recipe SMCP at 50% FLOPs did better from ``"torch_default"`` and dense
    from ``"kaiming_fan_out"`` (benchmarks/results/recipe_conv_init.md). ``None``: the default.
    Raises ``ValueError`` for another name.
    """

    def __init__(
        self,
        widths: Sequence[int] = DEFAULT_WIDTHS,
        blocks: Sequence[int] = DEFAULT_BLOCKS,
        num_classes: int = 10,
        in_channels: int = 1,
        zero_init_residual: bool = False,
        inner_widths: Sequence[int] | None = None,
        conv_init: str | None = "kaiming_fan_out",
    ) -> None:
        super().__init__()
        conv_init = "kaiming_fan_out" if conv_init is None else conv_init
        if conv_init not in CONV_INITS:
            raise ValueError(f"conv_init must be one of {CONV_INITS}, got {conv_init!r}")
        widths, blocks = tuple(int(w) for w in widths), tuple(int(b) for b in blocks)
        inner = widths if inner_widths is None else tuple(int(w) for w in inner_widths)
        if not widths or len(widths) != len(blocks) or len(inner) != len(widths):
            raise ValueError(
                f"widths {widths}, blocks {blocks} and inner_widths {inner} must be non-empty "
                "and of equal length (one entry per stage)")
        if min(widths) < 1 or min(blocks) < 1 or min(inner) < 1:
            raise ValueError(f"every stage needs widths >= 1 and at least one block; got "
                             f"widths={widths}, inner_widths={inner}, blocks={blocks}")
        self.widths, self.blocks, self.inner_widths = widths, blocks, inner
        self.conv_init = conv_init

        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages = []
        in_width = widths[0]
        for i, (width, n_blocks, mid) in enumerate(zip(widths, blocks, inner)):
            stride = 1 if i == 0 else 2
            stages.append(self._make_stage(in_width, width, n_blocks, stride, mid))
            in_width = width
        # Named layer1..layerN like torchvision so module paths read the same in reports.
        for i, stage in enumerate(stages, start=1):
            self.add_module(f"layer{i}", stage)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_width, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d) and conv_init == "kaiming_fan_out":
                # "torch_default": the init nn.Conv2d gave itself when built
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            # Each block starts as the identity (Goyal et al.): helps large-batch ImageNet; off
            # by default like torchvision, as it slowed the first epoch here.
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    @staticmethod
    def _make_stage(in_width: int, width: int, n_blocks: int, stride: int,
                    inner: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or in_width != width:
            downsample = nn.Sequential(
                nn.Conv2d(in_width, width, 1, stride=stride, bias=False), nn.BatchNorm2d(width))
        layers = [BasicBlock(in_width, width, stride, downsample)]
        layers += [BasicBlock(width, width) for _ in range(n_blocks - 1)]
        if inner != width:  # torchvision's BasicBlock has one width: narrow its middle
            for block in layers:
                block.conv1 = nn.Conv2d(block.conv1.in_channels, inner, 3, stride=block.stride,
                                        padding=1, bias=False)
                block.bn1 = nn.BatchNorm2d(inner)
                block.conv2 = nn.Conv2d(inner, width, 3, padding=1, bias=False)
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(1, len(self.widths) + 1):
            x = getattr(self, f"layer{i}")(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


_BUILDERS: dict[str, Callable[..., nn.Module]] = {"resnet_fmnist": ResNetFMNIST}


def _torchvision_names() -> list[str]:
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


#: a recipe's ``model.name`` for a timm model: ``timm:NAME`` (any name ``timm.list_models()``
#: gives, built with ``pretrained=False``: nothing is downloaded)
TIMM_PREFIX = "timm:"


def timm_name(name: str) -> str | None:
    """The timm architecture a ``timm:NAME`` model name names; None for other names."""
    return name[len(TIMM_PREFIX):] if name.startswith(TIMM_PREFIX) else None


def check_timm_model(name: str) -> None:
    """ValueError where ``timm:NAME`` cannot be built here: timm is not installed, or NAME is
    not one of its architectures."""
    arch = timm_name(name)
    try:
        import timm
    except ImportError:
        raise ValueError(f"{name!r} names a timm model, and the timm package is not installed: "
                         "pip install timm") from None
    if not arch or not timm.is_model(arch):
        import difflib

        close = difflib.get_close_matches(arch, timm.list_models(), n=5) if arch else []
        like = f"; e.g. {', '.join(close)}" if close else ""
        raise ValueError(f"{name!r} is not a timm model (timm {timm.__version__}: "
                         f"timm.list_models() lists them{like})")


def available_models() -> list[str]:
    """Names ``build_model`` accepts: fxprune's own, then torchvision's classification models."""
    return sorted(_BUILDERS) + _torchvision_names()


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a model by name, randomly initialised.

    ``"resnet_fmnist"`` takes ``widths``, ``blocks``, ``inner_widths``, ``num_classes``,
    ``in_channels``, ``conv_init`` and ``zero_init_residual`` (see :class:`ResNetFMNIST`). Any torchvision
    classification model name (``"resnet18"``, ``"mobilenet_v2"``, ...) is built with
    ``torchvision.models.get_model`` and the given keyword arguments (``num_classes`` and the
    like); those models expect 3-channel inputs, so they do not train on Fashion-MNIST as they
    are. ``"timm:NAME"`` builds timm's ``NAME`` with ``timm.create_model(NAME,
    pretrained=False, **kwargs)`` (``num_classes``, ``in_chans``: timm adapts its stem to
    1-channel images).

    Raises:
        ValueError: an unknown name (or timm not installed, for ``timm:NAME``).
        TypeError: keyword arguments the model does not take.
    """
    if name in _BUILDERS:
        builder = _BUILDERS[name]
        params = inspect.signature(builder).parameters
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise TypeError(f"model {name!r} does not take {unknown}; it takes "
                            f"{sorted(params)}")
        return builder(**kwargs)
    if timm_name(name) is not None:
        check_timm_model(name)
        import timm

        _refuse_resnet_only(name, "timm", kwargs)
        return timm.create_model(timm_name(name), pretrained=False, **kwargs)
    tv_names = _torchvision_names()
    if name not in tv_names:
        raise ValueError(f"unknown model {name!r}; choose 'resnet_fmnist', 'timm:NAME' (a timm "
                         f"model) or a torchvision classification model: {', '.join(tv_names)}")
    import torchvision.models as tvm

    _refuse_resnet_only(name, "torchvision", kwargs)
    return tvm.get_model(name, weights=None, **kwargs)


def _refuse_resnet_only(name: str, kind: str, kwargs: dict) -> None:
    """TypeError where ``kwargs`` set one of ResNetFMNIST's own keys for the ``kind``
    ("torchvision", "timm") model ``name``."""
    stray = sorted(k for k in RESNET_FMNIST_ONLY if kwargs.get(k) is not None)
    if stray:
        raise TypeError(f"{stray} only apply to 'resnet_fmnist'; the {kind} model {name!r} "
                        f"takes its own keyword arguments (e.g. num_classes). In a config, set "
                        f"them to null: --set model.{stray[0]}=null")
