"""CUCB (gathered execution) and CCP on a CUDA device: statistics, masks and gathered indices
follow the model's device, and the gathered step matches the masked one there too."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fxprune
from fxprune.methods.ccp import CCP
from fxprune.methods.cucb import CUCB
from fxprune.models import build_model
from fxprune.compare import ieee_float32

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")]


def setup():
    torch.manual_seed(0)
    model = build_model("resnet_fmnist", widths=[8, 16, 16])
    x = torch.randn(16, 1, 28, 28)
    pm = fxprune.prepare(model, (x[:1],))
    return pm, x.cuda(), torch.randint(0, 10, (16,)).cuda()


def test_cucb_gathered_on_cuda_matches_masked():
    pm, x, y = setup()
    pruner = CUCB(pm, rho=0.5, warmup=0, channel_step=1, cost="params")
    pm.cuda()  # after the pruner, as `fxprune train` does (review140 F1: the indices stayed on
    # the CPU, and this test had moved them by hand)
    with ieee_float32():  # as fxprune's own checks: TF32 rounds the two shapes' convs apart
        loss_masked = F.cross_entropy(pm(x), y)
        loss_gathered = F.cross_entropy(pruner.train_forward(x), y)
    assert all(i is None or i.is_cuda for i in pruner.gathered.indices.values())
    torch.testing.assert_close(loss_gathered, loss_masked, rtol=1e-4, atol=1e-5)
    opt = torch.optim.SGD(pm.parameters(), lr=0.1, momentum=0.9)
    pruner.attach_optimizer(opt)
    for _ in range(3):
        loss = F.cross_entropy(pruner.train_forward(x), y)
        loss.backward()
        pruner.step(loss)
        opt.step()
        opt.zero_grad()
    assert pruner.stats.T.sum() > 0 and all(p.is_cuda for p in pm.parameters())


def test_ccp_collects_on_cuda():
    pm, x, y = setup()
    pruner = CCP(pm, target=0.5, mode="adaptive", collect=2, channel_step=4)
    pm.cuda()
    for _ in range(2):
        loss = F.cross_entropy(pm(x), y)
        loss.backward()
        record = pruner.step(loss)
        pm.zero_grad()
    assert record is not None and record["actual"] <= 0.5 + 1e-9
    small = fxprune.finalize(pm.cpu())
    assert small is not None
