"""Networks the benchmarks train on 1x28x28 Fashion-MNIST images (not part of the library)."""
from __future__ import annotations

import torch
from torch import nn


def conv_bn(c_in: int, c_out: int, k: int = 3, stride: int = 1, relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False), nn.BatchNorm2d(c_out)]
    return nn.Sequential(*layers, *([nn.ReLU(inplace=True)] if relu else []))


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.a = conv_bn(c_in, c_out, 3, stride)
        self.b = conv_bn(c_out, c_out, 3, 1, relu=False)
        self.short = (nn.Identity() if stride == 1 and c_in == c_out
                      else conv_bn(c_in, c_out, 1, stride, relu=False))

    def forward(self, x):
        return torch.relu(self.b(self.a(x)) + self.short(x))


class ConcatResNet(nn.Module):
    """A small residual CNN with a concat branch: stem (w1, 28x28), a residual block, a 3x3
    and a 1x1 strided branch concatenated to w2 channels (14x14), a residual block, a strided
    residual block to w3 (7x7), global pooling, a linear classifier."""

    def __init__(self, widths=(16, 32, 64), num_classes: int = 10):
        super().__init__()
        w1, w2, w3 = widths
        self.stem = conv_bn(1, w1)
        self.block1 = BasicBlock(w1, w1)
        self.branch3 = conv_bn(w1, w2 // 2, 3, 2)
        self.branch1 = conv_bn(w1, w2 - w2 // 2, 1, 2)
        self.block2 = BasicBlock(w2, w2)
        self.block3 = BasicBlock(w2, w3, 2)
        self.fc = nn.Linear(w3, num_classes)

    def forward(self, x):
        x = self.block1(self.stem(x))
        x = torch.cat([self.branch3(x), self.branch1(x)], 1)
        x = self.block3(self.block2(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))
