"""Property test: random small CNNs assembled from the supported blocks prune exactly."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from helpers import prune_and_check

BLOCKS = ["conv", "grouped", "depthwise", "residual", "squeeze_excite", "concat", "chunk",
          "channels_last", "pool", "group_norm"]


class Block(nn.Module):
    def __init__(self, kind: str, c: int, width: int):
        super().__init__()
        self.kind = kind
        if kind == "conv":
            self.f = nn.Sequential(nn.Conv2d(c, width, 3, padding=1, bias=True), nn.BatchNorm2d(width), nn.ReLU())
            self.out = width
        elif kind == "grouped":
            g = 2 if c % 2 == 0 and width % 2 == 0 else 1
            self.f = nn.Sequential(nn.Conv2d(c, width, 3, padding=1, groups=g), nn.BatchNorm2d(width), nn.SiLU())
            self.out = width
        elif kind == "depthwise":
            self.f = nn.Sequential(nn.Conv2d(c, 2 * c, 3, padding=1, groups=c), nn.BatchNorm2d(2 * c),
                                   nn.Hardswish(), nn.Conv2d(2 * c, width, 1))
            self.out = width
        elif kind == "residual":
            self.f = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
                                   nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c))
            self.out = c
        elif kind == "squeeze_excite":
            self.f1, self.f2 = nn.Conv2d(c, max(c // 4, 1), 1), nn.Conv2d(max(c // 4, 1), c, 1)
            self.out = c
        elif kind == "concat":
            self.a, self.b = nn.Conv2d(c, width, 1), nn.Conv2d(c, width, 3, padding=1)
            self.out = c + 2 * width
        elif kind == "chunk":
            self.f = nn.Conv2d(c, 2 * width, 1)
            self.g = nn.Conv2d(width, width, 3, padding=1)
            self.out = 2 * width
        elif kind == "channels_last":
            self.norm, self.fc1, self.fc2 = nn.LayerNorm(c), nn.Linear(c, 2 * c), nn.Linear(2 * c, c)
            self.out = c
        elif kind == "pool":
            self.f = nn.Sequential(nn.Conv2d(c, width, 1), nn.MaxPool2d(2, ceil_mode=True), nn.ReLU())
            self.out = width
        elif kind == "group_norm":
            w = 2 * max(width // 2, 1)
            self.f = nn.Sequential(nn.Conv2d(c, w, 3, padding=1), nn.GroupNorm(2, w), nn.GELU())
            self.out = w

    def forward(self, x):
        k = self.kind
        if k == "residual":
            return F.relu(x + self.f(x))
        if k == "squeeze_excite":
            return x * torch.sigmoid(self.f2(F.relu(self.f1(x.mean((2, 3), keepdim=True)))))
        if k == "concat":
            return torch.cat([x, self.a(x), F.relu(self.b(x))], dim=1)
        if k == "chunk":
            u, v = self.f(x).chunk(2, dim=1)
            return torch.cat([self.g(u), v], dim=1)
        if k == "channels_last":
            y = x.permute(0, 2, 3, 1)
            return x + self.fc2(F.gelu(self.fc1(self.norm(y)))).permute(0, 3, 1, 2)
        return self.f(x)


class RandomNet(nn.Module):
    def __init__(self, kinds, widths, head_flatten):
        super().__init__()
        c, blocks = 8, []
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        for kind, w in zip(kinds, widths):
            blocks.append(Block(kind, c, w))
            c = blocks[-1].out
        self.blocks = nn.ModuleList(blocks)
        self.head_flatten = head_flatten
        self.pool = nn.AdaptiveAvgPool2d(2 if head_flatten else 1)
        self.fc = nn.Linear(c * (4 if head_flatten else 1), 5)

    def forward(self, x):
        x = self.stem(x)
        for b in self.blocks:
            x = b(x)
        return self.fc(torch.flatten(self.pool(x), 1))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kinds=st.lists(st.sampled_from(BLOCKS), min_size=1, max_size=6),
       widths=st.lists(st.sampled_from([4, 6, 8, 12, 16]), min_size=6, max_size=6),
       head_flatten=st.booleans(), fraction=st.sampled_from([0.25, 0.5, 0.75]),
       seed=st.integers(0, 1000))
def test_random_cnn_prunes_exactly(kinds, widths, head_flatten, fraction, seed):
    torch.manual_seed(seed)
    model = RandomNet(kinds, widths, head_flatten).eval()
    for m in model.modules():  # non-trivial running stats, so a wrong BN slice would show
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    prune_and_check(model, torch.randn(2, 3, 12, 12), fraction=fraction, seed=seed)
