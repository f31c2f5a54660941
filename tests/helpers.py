"""Shared checks for the pass's tests."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

import fxprune
from fxprune.masks import FXPRUNE_CLASSES
from fxprune.methods import PruningMethod
from fxprune.compare import max_relative_error, run_eval


def random_masks(pm, fraction: float = 0.5, seed: int = 0) -> None:
    """Zero a random ``fraction`` of every prunable group's mask, keeping one channel of each
    split piece the group feeds (``ChannelGroup.keep_one_of``)."""
    gen = torch.Generator().manual_seed(seed)
    for g in fxprune.channel_groups(pm):
        if g.prunable:
            g.mask[torch.randperm(g.size, generator=gen)[: int(g.size * fraction)]] = 0
            for positions in g.keep_one_of:
                if not g.mask[positions].any():
                    g.mask[positions[0]] = 1


def with_signal(model: nn.Module, x: torch.Tensor, batches: int = 1) -> nn.Module:
    """``model`` (changed in place, returned in eval mode) made to depend on its features, so
    an exactness check can fail: a random-init model's output often hardly does (break27 #3:
    zero-initialised heads and layer scales, signals lost through BatchNorm's default running
    statistics; masking half of every group moved googlenet's output by 3.5e-4, ViT's by 0).
    Near-zero parameters are redrawn and the BatchNorm statistics averaged over random batches
    of ``x``'s shape."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             and m.track_running_stats]
    momenta = [m.momentum for m in norms]
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point() and p.numel() and float(p.abs().max()) < 1e-3:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a plain average of the batches
        model.eval()
        for m in norms:  # only the norms: train-mode heads (inception's aux) need other sizes
            m.train()
        for _ in range(batches if norms else 0):  # a model without BN needs no batch
            model(torch.randn((2, *x.shape[1:]), generator=gen))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return model.eval()


def sensitivity(model: nn.Module, pm, inputs: tuple):
    """``(moved, masked)``: how far the masks move the output (the relative difference between
    the model and its masked prepared copy; an exactness check at ``rtol`` can only fail where
    this exceeds it) and the masked model's output, for the check (one forward less)."""
    masked = run_eval(pm, inputs)
    return max_relative_error(run_eval(model, inputs), masked), masked


def stamps(module: nn.Module) -> list:
    """Each tensor of ``module``'s state: where it is and its version counter (an in-place write
    changes one), to see that a call left the module as it was, with no copy of the weights."""
    return [(name, t.data_ptr(), t._version) for name, t in module.state_dict(keep_vars=True).items()
            if isinstance(t, torch.Tensor) and not name.endswith("_extra_state")]  # (made per call)


_HOOK_TABLES = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
                "_backward_pre_hooks", "_state_dict_hooks", "_state_dict_pre_hooks",
                "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks")


def _fxprune_function(hook) -> bool:
    fn = getattr(hook, "hook", hook)  # (load pre-hooks are wrapped in _WrappedHook)
    fn = getattr(fn, "__func__", fn)
    return (getattr(fn, "__module__", "") or "").startswith("fxprune")


def assert_plain(module: nn.Module) -> None:
    """No fxprune class or function left in a finalized model: its modules, graph and hook
    tables (a hook of prepare's left behind needs fxprune to unpickle the model)."""
    for name, m in module.named_modules():
        assert not isinstance(m, FXPRUNE_CLASSES), name
        assert not type(m).__module__.startswith("fxprune"), (name, type(m))
        for table in _HOOK_TABLES:
            hooks = list((getattr(m, table, None) or {}).values())
            assert not any(_fxprune_function(h) for h in hooks), (name, table, hooks)
    if hasattr(module, "graph"):
        for node in module.graph.nodes:
            mod = getattr(node.target, "__module__", "") or ""
            assert not mod.startswith("fxprune"), node.format_node()
            assert "fxprune" not in str(node.target), node.format_node()


def prune_and_check(model: nn.Module, *inputs, fraction=0.5, seed=0, rtol=1e-4, **prepare_kw):
    """prepare -> all-ones equality -> random masks -> finalize -> exact and smaller."""
    pm = fxprune.prepare(model, inputs, **prepare_kw)
    ref = run_eval(model, inputs)
    assert max_relative_error(ref, run_eval(pm, inputs)) <= 1e-5
    random_masks(pm, fraction, seed)
    small = fxprune.finalize(pm, rtol=rtol)
    assert max_relative_error(run_eval(pm, inputs), run_eval(small, inputs)) <= rtol
    assert_plain(small)
    # smaller: a surgery that only folded the masks into the weights passed (review146 F4)
    if any(g.prunable and g.kept < g.size for g in fxprune.channel_groups(pm)):
        assert n_params(small) < n_params(model), (n_params(small), n_params(model))
    return pm, small


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def small_deploy_net(width: int) -> nn.Module:
    """conv-bn-relu x2, pool, linear: a model small enough to export and time in seconds."""
    torch.manual_seed(width)
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, 10))


# The smallest recipe that trains, prunes and finalizes in seconds (synthetic images).
TINY_RECIPE = {
    "seed": 3,
    "num_threads": 1,
    "data": {"name": "synthetic", "synthetic_train": 192, "synthetic_test": 64,
             "batch_size": 32, "test_batch_size": 64},
    "model": {"widths": [4, 8, 8], "blocks": [1, 1, 1]},
    "optim": {"epochs": 2, "lr": 0.05},
    "log": {"every_steps": 4, "progress": False, "tensorboard": False},
}


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    """The script ``benchmarks/NAME.py`` as a module (the benchmarks are not a package)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class DeviceTensor(torch.Tensor):
    """A stand-in for a CUDA tensor on a machine without one: ``numpy()`` refuses it as torch
    refuses a CUDA tensor's, ``cpu()`` gives a plain tensor (a state loaded with
    ``map_location`` a GPU, read back)."""

    def numpy(self, *args, **kwargs):
        raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to "
                        "copy the tensor to host memory first.")

    def cpu(self, *args, **kwargs):
        return self.as_subclass(torch.Tensor).clone()


def on_device(obj):
    """``obj`` (a state: nested dicts, lists, tuples) with every tensor a :class:`DeviceTensor`."""
    if isinstance(obj, torch.Tensor):
        return obj.as_subclass(DeviceTensor)
    if isinstance(obj, dict):
        return {k: on_device(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(on_device(v) for v in obj)
    return obj


class NoScheduleMethod:
    """A plug-in method of the bare protocol with a ``target`` it never reaches and no schedule
    (neither ``schedule`` nor ``prune_steps()``): it prunes nothing."""

    def __init__(self, prepared, target=0.5):
        self.prepared, self.target, self.history, self.step_count = prepared, target, [], 0

    def step(self, loss=None):
        self.step_count += 1
        return None

    def cost(self, cost_model=None):
        return 1.0

    def state_dict(self):
        return {"step_count": self.step_count}

    def load_state_dict(self, state):
        self.step_count = state["step_count"]

    def finalize_masks(self):
        return False


class NumpyStateAtStart(fxprune.SMCP):
    """A plug-in whose state holds a numpy array from the start (torch.load(weights_only=True)
    refuses it)."""

    def state_dict(self):
        import numpy as np

        return {**super().state_dict(), "extra": np.arange(3)}


class NumpyStateLater(fxprune.SMCP):
    """One whose state gains a numpy array once it has stepped."""

    def state_dict(self):
        import numpy as np

        state = super().state_dict()
        return {**state, "extra": np.arange(3)} if self.history or self.step_count else state


class UniformOneShot(PruningMethod):
    """A plug-in method written as ``PruningMethod``'s docstring shows: at step ``at_step``
    every group keeps ``keep`` of its channels (``step_args``: the recipe takes its epoch and
    fraction forms)."""

    step_args = ("at_step",)

    def __init__(self, prepared, target=0.9, cost="flops", channel_step=1, at_step=3, keep=0.5):
        super().__init__(prepared, cost, channel_step)
        self.target, self.at_step, self.keep = target, at_step, keep

    def step(self, loss=None):
        from fxprune.allocation import uniform_kept

        self.check_step()
        self.step_count += 1
        if self.step_count == self.at_step:
            self.check_training()
            self.index.set_masks(self.prepared, uniform_kept(self.index, self.keep, self.channel_step))
            return {"step": self.step_count, "cost": self.cost()}
        return None

    def prune_steps(self):
        return [self.at_step]

    def state_dict(self):
        return {"step_count": self.step_count}

    def load_state_dict(self, state):
        self.step_count = int(state["step_count"])
