"""CPU convolution kernels that fail on some layouts, and the layers that would meet them.

oneDNN (torch's CPU convolutions) computes the weight gradient of a strided 1x1 convolution on
NHWC input by first copying every stride-th pixel into a workspace; with fewer input channels
than its channel block (8 with AVX2, 16 with AVX-512) that copy writes past the workspace
(uxlfoundation/oneDNN#6035, open). Seen with torch 2.14.1 on an AVX2 CPU: a segmentation
fault, ``double free or corruption`` or a hang in ``backward`` (input channels 2-7, batch > 1);
the report also has silently wrong gradients. NCHW input, stride 1 and the forward pass are
not affected.
"""
from __future__ import annotations

from torch import nn

__all__ = ["strided_pointwise", "nhwc_weight_grad_fault"]

# The widest channel block oneDNN uses for f32 (AVX-512); AVX2's is 8.
ONEDNN_CHANNEL_BLOCK = 16


def strided_pointwise(conv: nn.modules.conv._ConvNd) -> bool:
    """A 1x1 (1, 1x1x1) convolution with a stride above 1 and no padding: the same as the
    stride-1 convolution of every stride-th pixel."""
    # padding is a tuple or "valid" ("same" cannot have a stride)
    unpadded = conv.padding == "valid" or not isinstance(conv.padding, str) and not any(conv.padding)
    return all(k == 1 for k in conv.kernel_size) and any(s > 1 for s in conv.stride) and unpadded


def nhwc_weight_grad_fault(conv: nn.Module) -> bool:
    """Whether training ``conv`` on NHWC (channels_last) input on the CPU can meet the fault
    above: a strided unpadded 1x1 ``nn.Conv2d`` with 2..15 input channels per group."""
    return (isinstance(conv, nn.Conv2d) and strided_pointwise(conv)
            and 1 < conv.in_channels // conv.groups < ONEDNN_CHANNEL_BLOCK)
