"""Every tensor follows the prepared model's device and dtype.

A model prepared in float32 on the CPU and then cast to float64 fails wherever fxprune makes a
tensor of its own without following the model (stored example inputs, masks, index tensors,
importance state) in the same way as a model moved to a GPU does, so the CPU float64 case
catches the kind without a GPU. The same tests run on CUDA (marked ``cuda``) where one exists.
"""
from __future__ import annotations

import statistics

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxprune
from fxprune.compare import max_relative_error, run_eval
from fxprune.summary import summary_table
from helpers import random_masks

HAVE_CUDA = torch.cuda.is_available()
cuda = pytest.mark.cuda
needs_cuda = pytest.mark.skipif(not HAVE_CUDA, reason="no CUDA device")

# (device, dtype) the prepared model is moved to after a float32 CPU prepare
PLACES = [
    pytest.param("cpu", torch.float64, id="cpu-float64"),
    pytest.param("cuda", torch.float32, id="cuda-float32", marks=[cuda, needs_cuda]),
    pytest.param("cuda", torch.float64, id="cuda-float64", marks=[cuda, needs_cuda]),
]


class Net(nn.Module):
    """Conv/BN with a residual, a channels-last LayerNorm + Linear block (as ConvNeXt), a head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.c1 = nn.Sequential(nn.Conv2d(16, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU())
        self.c2 = nn.Sequential(nn.Conv2d(24, 16, 3, padding=1), nn.BatchNorm2d(16))
        self.norm = nn.LayerNorm(16)
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 16)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.c2(self.c1(x)))
        y = x.permute(0, 2, 3, 1)
        y = self.fc2(F.gelu(self.fc1(self.norm(y))))
        x = x + y.permute(0, 3, 1, 2)
        return self.head(x.mean((2, 3)))


def batch(seed, device, dtype, n=8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 12, 12, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return x.to(device, dtype), y.to(device)


def prepared(seed=0):
    torch.manual_seed(seed)
    return fxprune.prepare(Net(), (torch.randn(1, 3, 12, 12),))


def train(pm, pruner, steps, device, dtype, first=0):
    opt = torch.optim.SGD(pm.parameters(), lr=0.05, momentum=0.9)
    for step in range(first, first + steps):
        x, y = batch(step, device, dtype)
        F.cross_entropy(pm(x), y).backward()
        pruner.step()
        opt.step()
        opt.zero_grad()


def smcp(pm):
    return fxprune.SMCP(pm, target=0.5, warmup=2, ramp=6, update_every=2, channel_step=4,
                        masked_decay=2e-4)


def assert_on(module, device, dtype):
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        assert t.device.type == device, name
        if t.is_floating_point():
            assert t.dtype == dtype, name


@pytest.mark.parametrize("device,dtype", PLACES)
def test_smcp_trains_finalizes_and_summarizes_on_the_models_device_and_dtype(device, dtype):
    pm = prepared().to(device, dtype)
    pruner = smcp(pm)  # its FLOPs count runs the stored float32 CPU inputs through the model
    train(pm, pruner, 10, device, dtype)
    updates = pruner.history  # steps 4, 6, 8, 10
    assert len(updates) == 4 and updates[-1]["kept"] < updates[-1]["channels"]
    assert all(h["skipped_steps"] == 0 for h in updates)
    assert pruner.cost() <= 0.5 + 1e-9
    small = fxprune.finalize(pm)  # its check runs the stored inputs on the model's device/dtype
    assert_on(small, device, dtype)
    x, _ = batch(99, device, dtype)
    assert max_relative_error(run_eval(pm, (x,)), run_eval(small, (x,))) <= 1e-6
    text = summary_table(pm)
    assert "FLOPs" in text and "->" in text  # pruned figures were computed


@pytest.mark.parametrize("device,dtype", PLACES)
def test_pruner_built_before_the_model_moves_follows_it(device, dtype):
    """As the recipe does: prepare and build the pruner on the CPU, then move the model."""
    pm = prepared()
    pruner = smcp(pm)
    pm.to(device, dtype)
    train(pm, pruner, 6, device, dtype)
    assert pruner.history and pruner.importance.total.device.type == device
    fxprune.finalize(pm)


@pytest.mark.parametrize("device,dtype", PLACES)
def test_checkpoint_resumes_across_devices_and_dtypes(device, dtype, tmp_path):
    """Saved from the moved model, loaded with map_location into a CPU float32 run (and back)
    the masks and the update history match an uninterrupted run."""
    def run(split):
        pm = prepared(seed=1).to(device, dtype)
        pruner = smcp(pm)
        train(pm, pruner, 5, device, dtype)
        if split:
            torch.save({"model": pm.state_dict(), "pruner": pruner.state_dict()}, tmp_path / "c.pt")
            # resume on the CPU in float32: everything must come from the checkpoint
            cpu = prepared(seed=7)
            cpu_pruner = smcp(cpu)
            ckpt = torch.load(tmp_path / "c.pt", map_location="cpu")
            cpu.load_state_dict(ckpt["model"])
            cpu_pruner.load_state_dict(ckpt["pruner"])
            torch.save({"model": cpu.state_dict(), "pruner": cpu_pruner.state_dict()}, tmp_path / "d.pt")
            # and back to the original device/dtype
            pm = prepared(seed=9).to(device, dtype)
            pruner = smcp(pm)
            ckpt = torch.load(tmp_path / "d.pt", map_location=device)
            pm.load_state_dict(ckpt["model"])
            pruner.load_state_dict(ckpt["pruner"])
        state = pruner.state_dict()
        assert all(t.device.type == "cpu" for t in (state["masks"], state["dead"],
                                                     state["importance"]["total"]))
        train(pm, pruner, 5, device, dtype, first=5)
        return pruner.index.masks(pm), [h["kept"] for h in pruner.history]

    masks_a, kept_a = run(False)
    masks_b, kept_b = run(True)
    assert torch.equal(masks_a, masks_b) and kept_a == kept_b


@pytest.mark.parametrize("device,dtype", PLACES)
def test_prepare_a_model_already_on_its_device(device, dtype):
    torch.manual_seed(0)
    model = Net().to(device, dtype)
    pm = fxprune.prepare(model, (torch.randn(1, 3, 12, 12),))  # CPU float32 example is moved
    assert_on(pm, device, dtype)
    random_masks(pm, 0.5)
    small = fxprune.finalize(pm)
    assert_on(small, device, dtype)


def test_bfloat16_finalize_is_checked_at_its_precision():
    pm = prepared()
    random_masks(pm, 0.5)
    pm = pm.to(torch.bfloat16)
    small = fxprune.finalize(pm)  # default tolerance follows the dtype (fxprune.api.DEFAULT_RTOL)
    assert_on(small, "cpu", torch.bfloat16)
    x, _ = batch(3, "cpu", torch.bfloat16)
    assert max_relative_error(run_eval(pm, (x,)), run_eval(small, (x,))) <= 5e-2


class ScaledInput(nn.Module):
    """A bfloat16 net with a learned input scale kept in float32 (as a norm or a temperature
    often is): its input is bfloat16."""

    def __init__(self):
        super().__init__()
        self.in_scale = nn.Parameter(torch.ones(1, 3, 1, 1))
        self.c1, self.c2 = nn.Conv2d(3, 12, 3, padding=1), nn.Conv2d(12, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = x * self.in_scale.to(x.dtype)
        return self.head(self.c2(F.relu(self.c1(x))).mean((2, 3)))


def test_a_mixed_precision_model_runs_its_example_inputs_as_given():
    """break104 F1: prepare cast the bfloat16 example to the first parameter's float32, which
    the bfloat16 convs refused ("check that example_inputs match"); no input could prepare it.
    An input of a dtype the model holds is kept (one it holds none of goes to the dtype most of
    it holds: test_prepare_a_model_already_on_its_device), and finalize checks at bfloat16's
    tolerance, the lowest precision in it."""
    torch.manual_seed(0)
    model = ScaledInput().to(torch.bfloat16)
    model.in_scale.data = model.in_scale.data.float()
    pm = fxprune.prepare(model, (torch.randn(2, 3, 8, 8, dtype=torch.bfloat16),))
    random_masks(pm, 0.5)
    small = fxprune.finalize(pm)
    assert small.c1.weight.dtype == torch.bfloat16 and small.in_scale.dtype == torch.float32
    assert small.c1.out_channels < 12
    y = torch.randn(3, 3, 8, 8, dtype=torch.bfloat16)
    assert max_relative_error(run_eval(pm, (y,)), run_eval(small, (y,))) <= 5e-2


def test_a_float32_example_reaches_a_bfloat16_model_whose_norms_stay_float32_as_bfloat16():
    """review108 F1: the rule above, first written as "keep a dtype the model holds", kept a
    float32 example for a bfloat16 model with float32 norms (apex O2's keep_batchnorm_fp32),
    and summary and finalize failed on the bfloat16 conv it reached."""
    torch.manual_seed(0)
    pm = prepared()  # float32, its example float32
    pm.to(torch.bfloat16)
    for m in pm.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.float()
    fxprune.summary(pm)
    random_masks(pm, 0.5)
    assert fxprune.finalize(pm).get_submodule(next(
        n for n, m in pm.named_modules() if isinstance(m, nn.Conv2d))).weight.dtype == torch.bfloat16


def test_step_copies_nothing_to_the_host_between_updates(monkeypatch):
    """SMCP.step() outside update steps reads no mask off the device (on a GPU every such
    read waits for all queued work)."""
    pm = prepared().to(torch.float64)
    pruner = fxprune.SMCP(pm, target=0.5, warmup=0, ramp=4, update_every=4, channel_step=4,
                          masked_decay=2e-4)
    train(pm, pruner, 5, "cpu", torch.float64)  # one update: some channels are masked now
    assert not pruner._kept_host.all()
    # (the first forward after an update checks the new LayerNorm masks once; later ones not)

    def no_host_copy(*args, **kwargs):
        raise AssertionError("a host copy of the masks in a step without an update")

    monkeypatch.setattr(pruner.index, "masks", no_host_copy)
    monkeypatch.setattr(torch.Tensor, "item", no_host_copy)
    monkeypatch.setattr(torch.Tensor, "__bool__", no_host_copy)
    x, y = batch(5, "cpu", torch.float64)
    F.cross_entropy(pm(x), y).backward()
    assert pruner.step() is None  # importance window, masked decay, LayerNorm masks: no copy


@pytest.mark.cuda
@pytest.mark.skipif(not HAVE_CUDA, reason="no CUDA device")
def test_cuda_step_between_updates_never_synchronizes():
    pm = prepared().cuda()
    pruner = fxprune.SMCP(pm, target=0.5, warmup=0, ramp=4, update_every=4, channel_step=4,
                          masked_decay=2e-4)
    train(pm, pruner, 5, "cuda", torch.float32)  # an update, then a forward with its masks
    x, y = batch(5, "cuda", torch.float32)
    torch.cuda.set_sync_debug_mode("error")  # any sync (a read, a blocking copy) raises
    try:  # the forward and backward too (review140: the step alone was checked)
        F.cross_entropy(pm(x), y).backward()
        assert pruner.step() is None
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.cuda
@pytest.mark.skipif(not HAVE_CUDA, reason="no CUDA device")
def test_cuda_ccp_collecting_steps_never_synchronize():
    # review140 F3: a bool-mask index (a nonzero) in every reader's gradient hook
    from fxprune.methods.ccp import CCP

    pm = prepared().cuda()
    pruner = CCP(pm, target=0.5, collect=4, prune_at=4, channel_step=4)
    train(pm, pruner, 1, "cuda", torch.float32)  # the first makes its index tensors there
    x, y = batch(1, "cuda", torch.float32)
    torch.cuda.set_sync_debug_mode("error")
    try:
        F.cross_entropy(pm(x), y).backward()
        assert pruner.step() is None
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("accumulate", ["mean", "momentum"])
def test_steps_with_non_finite_gradients_are_skipped_and_counted(accumulate):
    """A step whose gradients hold inf/nan (a GradScaler overflow) leaves the importance as if
    it had never been observed, and is counted."""
    def scores(observe, poison=None):
        pm = prepared()
        pruner = fxprune.SMCP(pm, target=0.5, warmup=0, ramp=100, update_every=100,
                              accumulate=accumulate)
        for step in range(3):
            x, y = batch(step, "cpu", torch.float32)
            F.cross_entropy(pm(x), y).backward()
            if step == poison:
                pm.get_submodule("fc1").weight.grad[0, 0] = float("inf")
                pm.get_submodule("c2.0").weight.grad[1, 2, 0, 0] = float("nan")
            if step in observe:
                pruner.step()
            pm.zero_grad()
        return torch.as_tensor(pruner.importance.scores()), pruner.importance.skipped

    poisoned, skipped = scores(observe=(0, 1, 2), poison=1)
    left_out, none_skipped = scores(observe=(0, 2))
    clean, _ = scores(observe=(0, 1, 2))
    assert skipped == 1 and none_skipped == 0
    assert torch.isfinite(poisoned).all()
    assert torch.allclose(poisoned, left_out, rtol=1e-12, atol=0)
    assert not torch.allclose(poisoned, clean)  # step 1 did carry evidence when clean


def test_update_record_counts_skipped_steps():
    pm = prepared()
    pruner = fxprune.SMCP(pm, target=0.5, warmup=0, ramp=4, update_every=3, channel_step=4)
    for step in range(3):
        x, y = batch(step, "cpu", torch.float32)
        F.cross_entropy(pm(x), y).backward()
        if step == 0:
            pm.get_submodule("fc2").weight.grad.fill_(float("nan"))
        record = pruner.step()
        pm.zero_grad()
    assert record is not None and record["skipped_steps"] == 1
    assert pruner.importance.skipped == 0  # reset with the window


# -- masked LayerNorm: no host read per forward, a lean exact path, autocast ----------------------

def _weighted_reference(x, weight, bias, eps, mask):
    """The definition: statistics weighted by the mask, in float64."""
    x, w = x.double(), mask.double()
    mean = (x * w).sum(-1, keepdim=True) / w.sum()
    var = ((x - mean) ** 2 * w).sum(-1, keepdim=True) / w.sum()
    return (x - mean) / torch.sqrt(var + eps) * weight.double() + bias.double()


@pytest.mark.parametrize("soft", [False, True])
def test_masked_layer_norm_matches_the_definition_with_gradients(soft):
    from fxprune.masks import layer_norm_weighted, masked_layer_norm

    torch.manual_seed(0)
    x = torch.randn(2, 5, 5, 24, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(24, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(24, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(24, dtype=torch.float64)
    mask[::3] = 0
    if soft:
        mask[1] = 0.5  # a soft mask weights the statistics
    y = masked_layer_norm(x, (24,), weight, bias, 1e-6, (0,), mask)
    g = torch.randn_like(y)
    grads = torch.autograd.grad((y * g).sum(), (x, weight, bias))
    for ref in (_weighted_reference(x, weight, bias, 1e-6, mask),
                layer_norm_weighted(x, (24,), weight, bias, 1e-6, (0,), (mask,))):
        assert torch.allclose(y, ref, rtol=0, atol=1e-12)
        ref_grads = torch.autograd.grad((ref * g).sum(), (x, weight, bias))
        for a, b in zip(grads, ref_grads):
            assert torch.allclose(a, b, rtol=0, atol=1e-10)


def test_masked_layer_norm_reads_the_mask_once_per_change(monkeypatch):
    from fxprune import masks as masks_module

    x = torch.randn(2, 4, 4, 16)
    ln = nn.LayerNorm(16)
    mask = torch.ones(16)
    reads = []
    real = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda t: reads.append(1) or real(t))
    for _ in range(3):
        masks_module.masked_layer_norm(x, (16,), ln.weight, ln.bias, 1e-5, (0,), mask)
    assert len(reads) == 1
    mask[3] = 0  # an in-place write: a new version, read once more
    for _ in range(3):
        masks_module.masked_layer_norm(x, (16,), ln.weight, ln.bias, 1e-5, (0,), mask)
    assert len(reads) == 2


def test_masked_layer_norm_under_bfloat16_autocast_computes_in_float32():
    from fxprune.masks import masked_layer_norm

    torch.manual_seed(0)
    x = torch.randn(2, 3, 3, 64) * 3 + 5
    ln = nn.LayerNorm(64)
    mask = torch.ones(64)
    mask[::2] = 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = masked_layer_norm(x.bfloat16(), (64,), ln.weight, ln.bias, 1e-5, (0,), mask)
        plain = F.layer_norm(x.bfloat16(), (64,), ln.weight, ln.bias, 1e-5)
    assert y.dtype == plain.dtype  # what F.layer_norm gives under autocast (bf16 on the CPU)
    # a float32 input: the dtype torch's norms give it there (float32 in torch 2.14, where the
    # masked norms returned the autocast dtype, break88 F5), group norm too
    from fxprune.masks import masked_group_norm
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert masked_layer_norm(x, (64,), ln.weight, ln.bias, 1e-5, (0,), mask).dtype == \
            F.layer_norm(x, (64,), ln.weight, ln.bias, 1e-5).dtype
        x4 = x.permute(0, 3, 1, 2)
        assert masked_group_norm(x4, 4, None, None, 1e-5, mask).dtype == F.group_norm(x4, 4).dtype
    ref = _weighted_reference(x.bfloat16().float(), ln.weight, ln.bias, 1e-5, mask)
    # statistics in float32: only the final rounding to bfloat16 remains
    assert torch.allclose(y.double(), ref, rtol=1e-2, atol=1e-2)


# -- the recipe: only the device changes ------------------------------------------------------------

RECIPE = {
    "seed": 3, "num_threads": 1,
    "data": {"name": "synthetic", "synthetic_train": 192, "synthetic_test": 64,
             "batch_size": 32, "test_batch_size": 64},
    "model": {"widths": [8, 16, 16], "blocks": [1, 1, 1]},
    "optim": {"epochs": 1, "lr": 0.05},
    "prune": {"method": "smcp", "target": 0.5, "warmup": 1, "ramp": 3, "update_every": 2,
              "channel_step": 4, "masked_decay": 2e-4},
    "log": {"every_steps": 4, "progress": False, "tensorboard": False},
}


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[cuda, needs_cuda])])
def test_recipe_trains_on_the_device_and_resumes_on_the_cpu(device, tmp_path):
    from fxprune.train import resolve_config, train

    threads = torch.get_num_threads()
    try:
        out = tmp_path / "run"
        first = train(resolve_config(RECIPE, [f"out={out}", f"device={device}"]))
        assert first["finalize_mismatched_samples"] == 0 and first["flops_ratio"] <= 0.5 + 1e-6
        # the checkpoint written on `device` continues on the CPU
        resumed = train(resolve_config(RECIPE, [f"out={out}", "device=cpu", "optim.epochs=2"]),
                        resume=True)
        assert resumed["epochs"] == 2 and resumed["finalize_mismatched_samples"] == 0
        assert torch.load(resumed["model"], weights_only=False).training is False
    finally:
        torch.set_num_threads(threads)


class NormNet(nn.Module):
    """conv -> GroupNorm (its mask gathered in the forward) -> conv -> channels-last LayerNorm."""

    def __init__(self, c=16):
        super().__init__()
        self.c1, self.gn = nn.Conv2d(3, c, 3, padding=1), nn.GroupNorm(4, c)
        self.c2, self.ln, self.fc = nn.Conv2d(c, c, 3, padding=1), nn.LayerNorm(c), nn.Linear(c, 10)

    def forward(self, x):
        x = self.c2(F.relu(self.gn(self.c1(x)))).permute(0, 2, 3, 1)
        return self.fc(F.gelu(self.ln(x))).mean((1, 2))


def _half_masked(model, x):
    pm = fxprune.prepare(model, (x,))
    for g in fxprune.channel_groups(pm):
        if g.mask is not None:
            g.mask[::2] = 0
    return pm


def test_inference_mode_evaluates_prepares_and_finalizes_trainable_models():
    """break43 #3: a gathered GroupNorm mask made under torch.inference_mode (Lightning's
    validate/test default) has no version counter, and the prepared model raised; #7: prepare
    and finalize under it returned inference tensors, which cannot be trained."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    pm = _half_masked(NormNet(), x).eval()
    with torch.no_grad():
        expected = pm(x)
    with torch.inference_mode():
        assert torch.equal(pm(x), expected)
        small = fxprune.finalize(pm)
        again = fxprune.prepare(NormNet(), (x,))
    for model in (small.train(), again.train()):
        assert not any(p.is_inference() for p in model.parameters())
        F.cross_entropy(model(x), torch.tensor([1, 2])).backward()  # trainable


def test_finalize_inside_an_autocast_region_checks_in_the_models_dtype():
    """break43 #5: finalize's check ran under the caller's bfloat16 autocast with float32's
    tolerance (masked LayerNorm statistics in float32, the plain one's in bfloat16: 1.3e-3) and
    blamed a bug in fxprune."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 16, 16)
    pm = _half_masked(NormNet(), x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        small = fxprune.finalize(pm)
    torch.testing.assert_close(small.eval()(x), pm.eval()(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["smcp", "taylor", "cucb", "ccp"])
def test_a_method_built_and_loaded_under_inference_mode_trains(method):
    """break50 #1: a pruner built in a set-up function decorated @torch.inference_mode() made
    inference tensors of its state, and its first step() failed with torch's "Inplace update to
    inference tensor outside InferenceMode", naming neither cause nor fix."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8)
    settings = {"ccp": {"collect": 2, "mode": "adaptive"}, "cucb": {"mode": "budget", "execution": "masked"}}.get(method, {})

    def build(pm):
        return fxprune.get_method(method).build(pm, target=0.6, **settings)

    with torch.inference_mode():
        pm = fxprune.prepare(NormNet(), (x,))
        pruner = build(pm)
    state = None
    for step in range(3):
        F.cross_entropy(pm.train()(x), torch.tensor([1, 2, 0, 1])).backward()
        pruner.step()
        pm.zero_grad()
        if step == 1:
            state = pruner.state_dict()
    resumed = build(fxprune.prepare(NormNet(), (x,)))
    with torch.inference_mode():
        resumed.load_state_dict(state)  # (a resume inside an inference-mode set-up, too)
    F.cross_entropy(resumed.prepared.train()(x), torch.tensor([1, 2, 0, 1])).backward()
    resumed.step()


def test_a_methods_warning_points_at_the_users_line_through_the_registry():
    """break50 #9: a fixed stacklevel pointed CCP's warnings into fxprune/methods/base.py when
    the method was built through fxprune.get_method(...).build (the trainer, Lightning)."""
    pm = fxprune.prepare(NormNet(), (torch.randn(2, 3, 8, 8),))
    for build in (lambda: fxprune.get_method("ccp").build(pm, target=0.5, collect=3, prune_at=2),
                  lambda: fxprune.CCP(pm, target=0.5, collect=3, prune_at=2)):
        with pytest.warns(UserWarning, match="prune_at") as said:
            build()
        assert {w.filename for w in said} == {__file__}, [(w.filename, str(w.message)[:60]) for w in said]


def test_exactness_checks_run_in_ieee_float32():
    """On an H200, finalize of resnet50 failed its exactness check by 2.6e-4: cuDNN's default
    TF32 convolutions round differently for the masked and the pruned shapes. Checks run with
    TF32 off, and the caller's settings come back."""
    from fxprune.compare import run_eval

    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append((torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()))
            return x

    saved = (torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision())
    try:
        torch.backends.cudnn.allow_tf32 = True
        torch.set_float32_matmul_precision("high")
        run_eval(Probe(), (torch.randn(1, 2),))
        assert seen == [(False, "highest")]
        assert (torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()) == (True, "high")
    finally:
        torch.backends.cudnn.allow_tf32 = saved[0]
        torch.set_float32_matmul_precision(saved[1])


def test_exactness_checks_use_the_tf32_api_the_process_uses():
    """break61 #2: after ``torch.backends.cuda.matmul.fp32_precision = "tf32"`` (torch's API
    since 2.9), finalize and SMCP raised RuntimeError: the check wrote the legacy settings,
    and torch refuses a mix of the two. Run apart: the mix would outlive this test."""
    code = """
import torch, fxprune
from fxprune.compare import run_eval
torch.backends.cuda.matmul.fp32_precision = "tf32"
torch.backends.cudnn.conv.fp32_precision = "tf32"
seen = []
class Probe(torch.nn.Module):
    def forward(self, x):
        seen.append((torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision))
        return x
run_eval(Probe(), (torch.randn(1, 2),))
assert seen == [("ieee", "ieee")], seen
assert (torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision) == ("tf32", "tf32")
model = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3), torch.nn.ReLU(), torch.nn.Conv2d(32, 4, 1))
pm = fxprune.prepare(model, (torch.randn(1, 3, 8, 8),))
fxprune.SMCP(pm, target=0.9)
fxprune.finalize(pm, check=True)
print("ok")
"""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


# -- review175: what differs on CUDA, checked where the CPU can stand in -------------------------------

def test_the_masked_and_finalized_predictions_are_compared_in_ieee_float32():
    """review175 F4: with TF32 (cuDNN's default for convolutions) a near-tie sample could flip
    between two exact models and count as a mismatch; finalize's own check ran in IEEE."""
    from fxprune.train import prediction_differences

    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(torch.backends.cudnn.allow_tf32)
            return x.flatten(1)

    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = True
    try:
        loader = [(torch.randn(4, 3), torch.zeros(4)), (torch.randn(2, 3), torch.zeros(2))]
        assert prediction_differences(Probe(), Probe(), loader, torch.device("cpu")) == 0
        assert seen == [False] * 4 and torch.backends.cudnn.allow_tf32 is True
    finally:
        torch.backends.cudnn.allow_tf32 = before


def test_torch_backend_timing_makes_its_cuda_device_the_current_one(monkeypatch):
    """review175 F1: events record on, and a CUDA graph captures from, the current device's
    stream: timing cuda:1 while cuda:0 was current timed an empty graph, or the host."""
    import contextlib

    from fxprune.deploy import torch_backend as tb

    entered = []

    @contextlib.contextmanager
    def current(device):
        entered.append(torch.device(device))
        yield

    monkeypatch.setattr(torch.cuda, "device", current)
    with tb.timing_settings(torch.device("cuda", 1), None):
        assert entered == [torch.device("cuda", 1)]
    with tb.timing_settings(torch.device("cpu"), 1):
        assert entered == [torch.device("cuda", 1)]  # the CPU: no CUDA device touched


def test_a_saved_torch_table_is_compared_with_the_gpu_it_was_timed_on(monkeypatch):
    """review175 F7: a table timed on cuda:1 was compared with the current GPU (cuda:0), so on
    a node of two kinds of GPU the "another machine's timings" warning could be wrong."""
    from fxprune.deploy import torch_backend as tb
    from fxprune.deploy.latency_table import LatencyTable, _this_machine

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(tb, "device_name", lambda d: f"GPU {d.index}")
    monkeypatch.setattr(tb, "runtime_version", lambda d, **kw: "v")
    table = LatencyTable("torch", "GPU 1", 1, "v", 8, "float32")
    table.torch_settings = {"torch_device": "cuda:1", "cuda_graphs": True, "channels_last": True}
    assert _this_machine(table) == ("GPU 1", "v")
    table.torch_settings["torch_device"] = "cuda:5"  # an index this machine lacks: the current
    assert _this_machine(table) == ("GPU 0", "v")


def test_the_checkpoint_keeps_the_training_devices_generator_only():
    """review175 F2: every visible GPU's state was saved and restored by index, so a checkpoint
    written where more GPUs were visible failed to resume with an IndexError."""
    from fxprune.run_io import rng_state, set_rng_state

    state = rng_state("cpu")
    assert "cuda" not in state and "cuda_device" not in state
    # one written before, with eight GPUs' states, resumes on the CPU without touching CUDA
    set_rng_state({**state, "cuda": [torch.zeros(16, dtype=torch.uint8)] * 8}, "cpu")
    if not HAVE_CUDA:
        return
    state = rng_state("cuda")
    assert set(state) >= {"torch", "cuda_device"}
    first = torch.randn(3, device="cuda")
    set_rng_state(state, "cuda")
    assert torch.equal(torch.randn(3, device="cuda"), first)
    extra = [torch.cuda.get_rng_state()] * (torch.cuda.device_count() + 3)
    set_rng_state({k: v for k, v in state.items() if k != "cuda_device"} | {"cuda": extra}, "cuda")


def test_batches_are_pinned_for_a_cuda_device():
    """review175 F3: a non_blocking copy from pageable memory is staged through a host copy,
    so the training loop's copies did not overlap the GPU's work."""
    from fxprune.data import make_loaders

    cfg = {"name": "synthetic", "synthetic_train": 16, "synthetic_test": 8, "batch_size": 8}
    for pin in (False, True):
        train, test = make_loaders(cfg, pin_memory=pin)
        assert train._loader.pin_memory is pin and test._loader.pin_memory is pin


@cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_a_model_timed_on_the_second_gpu_is_timed_there():
    """review175 F1 on a machine with two GPUs: cuda:1's time is a GPU time like cuda:0's (an
    empty graph, or events on the idle current device, read near zero)."""
    from fxprune.deploy import torch_backend as tb

    model = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1))
    ms = {d: statistics.median(tb.time_models({"m": model}, (64, 64, 56, 56), device=d,
                                              iters=10)["m"]) for d in ("cuda:0", "cuda:1")}
    assert torch.cuda.current_device() == 0
    assert ms["cuda:1"] > ms["cuda:0"] / 3 and ms["cuda:0"] > ms["cuda:1"] / 3, ms


def test_a_cuda_graph_is_captured_on_a_stream_of_the_models_device(monkeypatch):
    """review177 F1: torch.cuda.graph's default capture stream is one per process, made on the
    device current at its first capture: after a capture on cuda:0, cuda:1's kernels went to a
    stream that was not capturing. (torch.cuda stood in for on the CPU.)"""
    import contextlib
    import types

    from fxprune.deploy import torch_backend as tb

    class Stream:
        def __init__(self, device=None):
            self.device = torch.device(device)

        def wait_stream(self, other):
            pass

    captured = []
    fake = {"Stream": Stream, "current_stream": lambda device=None: Stream(device),
            "stream": lambda s: contextlib.nullcontext(), "synchronize": lambda device=None: None,
            "device": lambda d: contextlib.nullcontext(),
            "CUDAGraph": lambda: types.SimpleNamespace(replay=lambda: None),
            "graph": lambda g, stream=None, **kw: (captured.append(stream),
                                                   contextlib.nullcontext())[1]}
    for name, value in fake.items():
        monkeypatch.setattr(torch.cuda, name, value)
    x = types.SimpleNamespace(device=torch.device("cuda", 1))
    tb.make_runner(lambda x: None, x)
    assert len(captured) == 1 and captured[0] is not None
    assert captured[0].device == torch.device("cuda", 1)


def test_train_asks_the_loaders_to_pin_for_cuda_only(tmp_path, monkeypatch):
    """review177 F10: the loaders' pin_memory was tested, not that train passes it."""
    import fxprune.train as train_mod
    from fxprune.train import resolve_config, train

    asked = []
    real = train_mod.make_loaders

    def spy(cfg, seed=0, **kwargs):
        asked.append(kwargs.get("pin_memory", "not given"))
        return real(cfg, seed, **kwargs)
    monkeypatch.setattr(train_mod, "make_loaders", spy)
    threads = torch.get_num_threads()
    try:
        train(resolve_config({**RECIPE, "prune": {"method": "none"}},
                             [f"out={tmp_path / 'run'}", "device=cpu"]))
    finally:
        torch.set_num_threads(threads)
    assert asked == [False]
