"""Which convolutions meet oneDNN's strided 1x1 NHWC weight-gradient fault (fxprune.cpu_kernels)."""
from __future__ import annotations

import pytest
from torch import nn

from fxprune.cpu_kernels import nhwc_weight_grad_fault, strided_pointwise


@pytest.mark.parametrize("conv, faulty", [
    (nn.Conv2d(4, 8, 1, stride=2), True),
    (nn.Conv2d(15, 8, 1, stride=(1, 2)), True),
    (nn.Conv2d(16, 8, 1, stride=2), False),      # a whole channel block
    (nn.Conv2d(1, 8, 1, stride=2), False),       # one channel: another kernel
    (nn.Conv2d(4, 8, 1, stride=1), False),       # no stride: no pixel copy
    (nn.Conv2d(4, 8, 3, stride=2), False),
    (nn.Conv2d(4, 8, 1, stride=2, padding=1), False),
    (nn.Conv2d(8, 8, 1, stride=2, groups=8), False),  # depthwise: 1 channel per group
    (nn.Conv2d(8, 8, 1, stride=2, groups=2), True),
    (nn.Conv1d(4, 8, 1, stride=2), False),
    (nn.ConvTranspose2d(4, 8, 1, stride=2), False),
    (nn.Linear(4, 8), False),
])
def test_nhwc_weight_grad_fault(conv, faulty):
    assert nhwc_weight_grad_fault(conv) is faulty


def test_strided_pointwise_covers_every_dimension_and_valid_padding():
    assert strided_pointwise(nn.Conv1d(4, 8, 1, stride=2))
    assert strided_pointwise(nn.Conv3d(4, 8, 1, stride=(1, 1, 2)))
    assert strided_pointwise(nn.Conv2d(4, 8, 1, stride=2, padding="valid"))
    assert not strided_pointwise(nn.Conv2d(4, 8, 1, stride=1, padding="same"))
    assert not strided_pointwise(nn.Conv2d(4, 8, (1, 3), stride=2))
