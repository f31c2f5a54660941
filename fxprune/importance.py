"""Channel importance strategies, one score (or statistic) per prunable channel.

Channels are numbered as in :class:`fxprune.units.UnitIndex` (flat, group by group). Every
strategy has ``observe(...)`` (called by its method after ``loss.backward()``), ``reset()``,
``scores()``, ``state_dict()``/``load_state_dict()`` and ONE synchronisation point,
``sync(reduce_fn)``: ``reduce_fn(t)`` returns the element-wise sum of a float64 tensor over all
processes (e.g. ``torch.distributed.all_reduce`` on a copy). Without it (``None``) ``sync`` does
nothing, which is what a single process needs. A strategy puts everything it accumulates (sums
and counts) into one tensor per call, so a data-parallel run costs one all-reduce per sync.

* :class:`WeightTaylor` (SMCP): for every layer reading channel i through weight W,
  ``s_i = sum over its kept output channels o and kernel positions of W[o, i] * dL/dW[o, i]``;
  the channel's score is ``|sum of s_i over those layers|`` (sum first, abs last). It is computed
  on the unmasked W with the straight-through gradient, so a masked-out channel keeps a meaningful
  score and can come back. Accumulated ``mean`` over the steps between updates (each update sees
  evidence under the current masks only) or as an exponential ``momentum`` average.
* :class:`WeightMagnitude`: the L2 norm of the weights that read the channel (data-free baseline).
* :class:`ActivationTaylor` (Molchanov et al., ICLR 2017): ``|mean over samples of t_i|`` with
  ``t_i = sum over positions of A_i * dL/dA_i``, A the input of a layer reading the channel
  (the activation the group's mask acts on), summed over every such layer.
* :class:`PairwiseTaylor` (CCP, Peng et al., ICML 2019): per-sample ``t_i`` as above, and their
  first and second moments ``a_i = mean t_i``, ``B_ij = mean t_i t_j`` per group in float64.
* :class:`BanditStats` (CUCB, Chen, Wang & Yuan 2013; Spasov & Lio 2019): per channel the number
  of times it was active ``T_i`` and its mean reward ``mu_i`` (rewards in [0, 1]).

For a channel of a mask that is 1, ``sum_i`` of the weight form and ``t_i`` summed over the
batch are the same number, ``dL/dm_i`` (the mask's own gradient): the weight form needs no
hooks, the activation form gives per-sample terms.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from .errors import ArgumentError, FxPruneError
from .groups import state_of
from .masks import MethodHook
from .units import ConsumerWeight, host_to_device

ReduceFn = Callable[[torch.Tensor], torch.Tensor]


class ImportanceStrategy:
    """The protocol (see the module docstring). Subclasses override what they need."""

    def observe(self, *args, **kwargs) -> None:
        pass

    def reset(self) -> None:
        pass

    def scores(self) -> np.ndarray:
        raise NotImplementedError

    def sync(self, reduce_fn: ReduceFn | None = None) -> None:
        """Sum the accumulated statistics over processes (no-op without ``reduce_fn``)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def close(self) -> None:
        """Remove hooks this strategy installed."""


# ----------------------------------------------------------------------------- weight based

class _ConsumerStrategy(ImportanceStrategy):
    """Strategies computed from the weights that read prunable channels."""

    kind = ""

    def __init__(self, consumers: list[ConsumerWeight], n: int):
        self.consumers, self.n = consumers, n
        # Where each consumer's input positions add up: position -> flat channel, and the
        # positions no prunable group owns (-1) -> a spill slot n. A boolean selection would
        # size its result from the data: a device-to-host sync per layer per step on a GPU.
        self._targets = [torch.where(c.in_flat >= 0, c.in_flat, n) for c in consumers]
        device = consumers[0].param.device if consumers else torch.device("cpu")
        self.total = torch.zeros(n, dtype=torch.float64, device=device)
        self.count = 0  # steps observed (a host-side int: counting costs no device sync)
        # Device-side counters: steps averaged in, and steps skipped for inf/nan gradients.
        self._finite = torch.zeros((), dtype=torch.int64, device=device)
        self._skipped = torch.zeros((), dtype=torch.int64, device=device)

    def follow_model(self) -> None:
        """Move the running state and the consumers' index tensors to where the weights are:
        the model may have moved to a GPU (or back) after the pruner was built."""
        for i, c in enumerate(self.consumers):
            if c.in_flat.device != c.param.device:
                c.in_flat, c.out_flat = c.in_flat.to(c.param.device), c.out_flat.to(c.param.device)
            if self._targets[i].device != c.param.device:
                self._targets[i] = self._targets[i].to(c.param.device)
        device = self.consumers[0].param.device if self.consumers else self.total.device
        if self.total.device != device:
            self.total = self.total.to(device)
            self._finite, self._skipped = self._finite.to(device), self._skipped.to(device)

    @property
    def skipped(self) -> int:
        """Steps skipped for non-finite gradients since the last reset (reading it syncs)."""
        return int(self._skipped)

    @property
    def finite_steps(self) -> int:
        """Steps whose scores are in the average (mean: since the last reset; reading it syncs)."""
        return int(self._finite)

    def step_counts(self) -> tuple[int, int]:
        """(:attr:`finite_steps`, :attr:`skipped`) in one device read: a mask update reads the
        host a fixed number of times, not once per counter (break166 F4)."""
        finite, skipped = torch.stack([self._finite, self._skipped]).tolist()
        return finite, skipped


class WeightTaylor(_ConsumerStrategy):
    kind = "taylor"

    def __init__(self, consumers: list[ConsumerWeight], n: int, accumulate: str = "mean",
                 momentum: float = 0.9):
        if accumulate not in ("mean", "momentum"):
            raise ArgumentError(f"accumulate must be 'mean' or 'momentum', got {accumulate!r}")
        super().__init__(consumers, n)
        self.accumulate, self.momentum = accumulate, momentum

    @torch.no_grad()
    def step_scores(self, flat_masks: torch.Tensor) -> torch.Tensor | None:
        """This step's |Taylor| per channel from the current gradients, on the weights' device
        (None: no gradient). Non-finite where a gradient held inf/nan."""
        if not self.n or not self.consumers:
            return None
        self.follow_model()
        # (without a wait: CUCB's masks come from the host every step, review140 F4)
        ext = torch.cat([host_to_device(flat_masks, self.total.device, torch.float64),
                         self.total.new_ones(1)])
        spill = self.total.new_zeros(self.n + 1)  # [n]: positions outside every prunable group
        seen = False
        for c, target in zip(self.consumers, self._targets):
            g = c.param.grad
            if g is None:
                continue
            seen = True
            # W*g in the weights' dtype (a full pass over the weights: keep it single precision;
            # half-precision weights are widened so the products do not round to 0);
            # the per-channel sums it reduces to are accumulated in double.
            w = c.param.detach()
            if w.element_size() < 4:
                w, g = w.float(), g.float()
            s = (w * g).movedim((c.out_dim, c.dim), (0, 1))
            s = s.sum(dim=tuple(range(2, s.ndim))) if s.ndim > 2 else s  # (C_out, C_in)
            out_kept = ext[c.out_flat].to(s.dtype)  # -1 picks the trailing 1: always kept
            per_input = (out_kept @ s).double()
            spill.index_add_(0, target, per_input)
        return spill[: self.n].abs() if seen else None

    @torch.no_grad()
    def observe(self, flat_masks: torch.Tensor) -> None:
        """Add one step's Taylor scores from the current gradients.

        A step whose gradients hold inf or nan (a loss-scaler overflow under mixed precision)
        is not averaged in, and is counted in :attr:`skipped`; the decision is made on the
        device (``torch.where`` on a finite flag), so no step waits for the GPU."""
        step = self.step_scores(flat_masks)
        if step is None:
            return
        finite = torch.isfinite(step).all()
        step = torch.where(finite, step, 0.0)
        if self.accumulate == "mean":
            self.total += step
        else:
            decayed = self.total * self.momentum + step * (1 - self.momentum)
            self.total = torch.where(finite, decayed, self.total)
        self._finite += finite
        self._skipped += ~finite
        self.count += 1

    @torch.no_grad()
    def scores(self) -> np.ndarray:
        self.follow_model()
        if self.accumulate == "mean":
            return (self.total / self._finite.clamp(min=1)).cpu().numpy()
        return self.total.cpu().numpy()

    def sync(self, reduce_fn: ReduceFn | None = None) -> None:
        if reduce_fn is None:
            return
        # mean: sums and counts add up; momentum: every process keeps the mean of the averages
        weight = self._finite.double() if self.accumulate == "mean" else self.total.new_ones(())
        packed = reduce_fn(torch.cat([self.total, weight.reshape(1).to(self.total.device)]))
        if self.accumulate == "mean":
            self.total.copy_(packed[:-1])
            self._finite.fill_(int(round(float(packed[-1]))))
            self.count = int(self._finite)
        else:
            self.total.copy_(packed[:-1] / packed[-1])

    def reset(self) -> None:
        # momentum: the average carries over, but the steps since the last update start from
        # none, or an update with no gradient since went unnoticed (break36 #2)
        self._skipped.zero_()
        self._finite.zero_()
        self.count = 0
        if self.accumulate == "mean":
            self.total.zero_()

    def state_dict(self) -> dict:
        # CPU tensors and ints: a checkpoint saved on a GPU loads on the CPU and the reverse.
        return {"total": self.total.detach().cpu().clone(), "count": self.count,
                "finite": int(self._finite), "skipped": int(self._skipped)}

    def load_state_dict(self, state: dict) -> None:
        self.total.copy_(state["total"].to(self.total.device))
        self.count = int(state["count"])
        self._finite.fill_(int(state.get("finite", self.count)))
        self._skipped.fill_(int(state.get("skipped", 0)))


class WeightMagnitude(_ConsumerStrategy):
    """A channel's L2 norm over the input columns ``W[:, i]`` of every layer that reads it
    (where SMCP's masks sit), not over the producing filter's row as filter-norm pruning
    (Li et al. 2017; Torch-Pruning's and NNI's norm pruners) takes it."""

    kind = "magnitude"

    @torch.no_grad()
    def scores(self) -> np.ndarray:
        self.follow_model()
        sq = torch.zeros(self.n + 1, dtype=torch.float64, device=self.total.device)
        for c, target in zip(self.consumers, self._targets):
            w2 = c.param.double().pow(2)
            per_input = w2.sum(dim=tuple(d for d in range(w2.ndim) if d != c.dim))
            sq.index_add_(0, target, per_input)
        return sq[: self.n].sqrt().cpu().numpy()

    def state_dict(self) -> dict:
        return {"total": self.total.detach().cpu().clone(), "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.count = int(state.get("count", 0))


def ImportanceAccumulator(consumers: list[ConsumerWeight], n: int, kind: str = "taylor",
                          accumulate: str = "mean", momentum: float = 0.9) -> ImportanceStrategy:
    """SMCP's importance by name: ``taylor`` (:class:`WeightTaylor`) or ``magnitude``."""
    if kind == "taylor":
        return WeightTaylor(consumers, n, accumulate, momentum)
    if kind == "magnitude":
        if accumulate not in ("mean", "momentum"):
            raise ArgumentError(f"accumulate must be 'mean' or 'momentum', got {accumulate!r}")
        return WeightMagnitude(consumers, n)
    raise ArgumentError(f"importance must be one of ('taylor', 'magnitude'), got {kind!r}")


ImportanceAccumulator.KINDS = ("taylor", "magnitude")


# ----------------------------------------------------------------------------- activation based

class InputTaps:
    """Per-sample ``t_i = sum over positions of A_i * dL/dA_i`` at every layer reading prunable
    channels (A its input), summed per flat channel. Shape of each batch's result: (N, n).

    A forward pre-hook hands each reader a fresh alias of its input, so the alias's gradient is
    the contribution through that reader only (a residual stream read by several layers and the
    skip path gets the sum over its masked readers, which is what zeroing the channel removes).
    ``loss_reduction="mean"`` (the trainer's loss): per-sample gradients are N times the
    batch loss's, so t is scaled by N.

    Gradient accumulation: each forward of the model (a pre-hook on the model itself counts
    them) keeps its own terms, summed over its readers only; :meth:`take` stacks the forwards
    since the last take along the sample dim. ``grad_scale`` is what the trainer multiplied
    each micro-batch's mean loss by before ``backward`` (Lightning: the AMP loss scale over
    ``accumulate_grad_batches``); the terms are divided by it, giving the per-sample terms of
    the samples' own losses, as with one batch. None (the default) takes the usual loop, whose
    gradient is one batch's: with k micro-batches since the last take, each mean loss divided
    by k, each summed loss (``loss_reduction="sum"``) not divided (break64 A: it was taken as
    divided by k too, and the terms came out k times too large).
    """

    def __init__(self, prepared: nn.Module, consumers: list[ConsumerWeight], n: int,
                 loss_reduction: str = "mean"):
        if loss_reduction not in ("mean", "sum"):
            raise ArgumentError(f"loss_reduction must be 'mean' or 'sum', got {loss_reduction!r}")
        self.n, self.loss_reduction, self.enabled = n, loss_reduction, True
        self.forwards = 0  # forwards of the model so far: which micro-batch a gradient is from
        self.batch: int | None = None  # the samples of the latest forward
        self.grad_scale: float | None = None
        self.loss_scale: float | None = None  # an AMP loss scale over the micro-batches' 1/k
        self.pending: dict[int, torch.Tensor] = {}  # per forward, its (N, n) terms
        #: the last forward tapped, and the last whose gradients arrived: a tapped forward
        #: whose backward has not run yet holds the masks in its graph (see CCP.prune)
        self.last_tapped, self.last_backward = 0, 0
        self.handles = [prepared.register_forward_pre_hook(MethodHook(self._count_forward),
                                                           with_kwargs=True)]
        # the input's channel dim by the layer's kind (fxprune.cost.LAYER_KINDS): a user's row
        # on a conv-like module was read as channels-last here, its statistics summed across
        # the wrong dim (break200 F1); a layer no spec names, by its torch class
        channel_dims = {layer.spec.name: layer.spec.layer_kind.channel_dim
                        for layer in state_of(prepared).channels.layers}
        seen = set()
        for c in consumers:
            if c.module in seen:
                continue
            seen.add(c.module)
            module = prepared.get_submodule(c.module)
            channel_dim = channel_dims.get(c.module)
            if channel_dim is None:
                channel_dim = 1 if isinstance(module, nn.modules.conv._ConvNd) else -1
            # a MethodHook: copies and pickles of the model do not carry the taps
            self.handles.append(module.register_forward_pre_hook(
                MethodHook(self._pre_hook(c.in_flat, channel_dim, c.module))))

    def _pre_hook(self, in_flat: torch.Tensor, channel_dim: int, name: str):
        # on the host (read once, here): a model built on the GPU has its index there, and the
        # bool selection below was a device wait per layer at the first backward (review169 F5)
        in_flat = in_flat.cpu()
        valid_cpu = in_flat >= 0
        positions = valid_cpu.numel()
        # the positions that are prunable channels, as integers (None: all of them): a bool
        # mask indexing the terms was a nonzero(), a device sync per reader per backward
        # (review140 F3)
        kept_cpu = None if bool(valid_cpu.all()) else valid_cpu.nonzero().flatten()
        per_device: dict = {}  # index tensors on the activations' device, made once

        def indices(device):
            if device not in per_device:
                per_device[device] = (host_to_device(in_flat[valid_cpu], device),  # (no wait)
                                      None if kept_cpu is None else host_to_device(kept_cpu, device))
            return per_device[device]

        def pre(module, args):
            x = args[0]
            if not (self.enabled and torch.is_grad_enabled() and x.is_floating_point()):
                return None
            batch = self.batch
            # an input that needs no gradient (a frozen stem's output) gets a leaf that does:
            # dL/dA through this reader is what the terms are made of
            alias = x.view_as(x) if x.requires_grad else x.detach().requires_grad_()
            saved = x.detach()
            forward = self.forwards
            # a training forward's graph is what a backward follows; a recomputation inside a
            # backward (activation checkpointing) or an eval-mode metric pass is not one
            # (break51 #5: both read as "the backward has not run")
            if module.training and torch._C._current_graph_task_id() == -1:
                self.last_tapped = forward

            def on_grad(g):
                with torch.no_grad():
                    # half-precision factors widened first, as WeightTaylor does: their product
                    # rounds in bfloat16 and overflows float16 under a loss scale (review140 F8)
                    prod = ((saved.float() * g.float()) if saved.element_size() < 4
                            else saved * g).double()
                    dim = channel_dim % prod.ndim
                    others = tuple(d for d in range(1, prod.ndim) if d != dim)
                    per = prod.sum(dim=others) if others else prod  # (N, C_in)
                    if batch and per.shape[0] != batch:
                        # rows that are not one per sample: windows folded into the leading
                        # dim (Swin: B * windows, break87 #3), views concatenated along it, a
                        # table every sample shares (swinv2's position-bias MLP, break88 F4).
                        # Which rows are whose cannot be read off the shapes (summing adjacent
                        # rows was wrong for a concatenation, break88 F1b): refused by name,
                        # where the terms of other shapes crashed the backward
                        raise FxPruneError(
                            f"CCP: `{name}` reads pruned channels in {per.shape[0]} rows for a "
                            f"batch of {batch} samples (windows or views folded into the batch "
                            "dim, or an input every sample shares), so its per-sample terms "
                            "cannot be formed; use SMCP or CUCB for this model")
                    flat, kept = indices(per.device)
                    if per.shape[1] != positions:
                        # a grouped conv's weight reads C_in / groups positions, each standing
                        # for one channel of every group (channel c is position c % positions)
                        per = per.reshape(per.shape[0], -1, positions).sum(1)
                    if self.loss_reduction == "mean":
                        per = per * per.shape[0]
                    t = per.new_zeros(per.shape[0], self.n)
                    t.index_add_(1, flat, per if kept is None else per.index_select(1, kept))
                    self.last_backward = max(self.last_backward, forward)
                    mine = self.pending.get(forward)
                    self.pending[forward] = t if mine is None else mine + t
                return None

            alias.register_hook(on_grad)
            return (alias, *args[1:])

        return pre

    def _count_forward(self, module, args, kwargs):
        self.forwards += 1
        # the samples of this forward, which every tapped layer must read one row each of:
        # the largest leading dim of the model's tensor inputs, positional or keyword
        dims = [t.shape[0] for t in (*args, *kwargs.values())
                if isinstance(t, torch.Tensor) and t.ndim]
        self.batch = max(dims) if dims else None
        return None

    def take(self) -> torch.Tensor | None:
        """The (N, n) float64 per-sample terms of the backwards since the last take, the
        micro-batches' stacked (N their total; see the class docstring), or None if none ran."""
        if not self.pending:
            return None
        parts = [self.pending[k] for k in sorted(self.pending)]
        self.pending = {}
        t = parts[0] if len(parts) == 1 else torch.cat(parts)
        if self.grad_scale is not None:
            return t / self.grad_scale
        if len(parts) > 1 and self.loss_reduction == "mean":
            t = t * len(parts)  # each mean loss was divided by k; a summed one needs no divisor
        return t / self.loss_scale if self.loss_scale is not None else t

    @property
    def backward_owed(self) -> bool:
        """A forward was tapped and its backward has not run (yet)."""
        return self.last_tapped > self.last_backward

    @property
    def closed(self) -> bool:
        return not self.handles

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
        self.enabled, self.pending = False, {}  # (a method's own hooks read ``enabled``)


def close_live_taps(prepared: nn.Module) -> int:
    """Close the :class:`InputTaps` an earlier pruner left on ``prepared`` (its hooks hold it:
    ``del pruner`` frees nothing, and it kept appending each step's float64 terms: break49
    #5); returns how many had tapped a forward (closing one that never did changes nothing
    anyone saw: a pruner built only to read a state)."""
    from .masks import MethodHook

    tapped = 0
    for hook in list(prepared._forward_pre_hooks.values()):
        owner = getattr(hook.fn, "__self__", None) if isinstance(hook, MethodHook) else None
        if isinstance(owner, InputTaps) and not owner.closed:
            tapped += owner.last_tapped > 0
            owner.close()
    return tapped


class ActivationTaylor(ImportanceStrategy):
    """|mean over samples of t_i| (first-order Taylor on activations), accumulated over steps."""

    def __init__(self, prepared, consumers, n, loss_reduction: str = "mean"):
        self.taps = InputTaps(prepared, consumers, n, loss_reduction)
        self.n = n
        self.sum_t = torch.zeros(n, dtype=torch.float64)
        self.samples = 0

    def observe(self, *_args) -> None:
        t = self.taps.take()
        if t is None:
            return
        if self.sum_t.device != t.device:
            self.sum_t = self.sum_t.to(t.device)
        self.sum_t += t.sum(0)
        self.samples += t.shape[0]

    def scores(self) -> np.ndarray:
        return (self.sum_t / max(self.samples, 1)).abs().cpu().numpy()

    def reset(self) -> None:
        self.sum_t.zero_()
        self.samples = 0

    def sync(self, reduce_fn: ReduceFn | None = None) -> None:
        if reduce_fn is None:
            return
        packed = reduce_fn(torch.cat([self.sum_t, self.sum_t.new_tensor([float(self.samples)])]))
        self.sum_t.copy_(packed[:-1])
        self.samples = int(round(float(packed[-1])))

    def state_dict(self) -> dict:
        return {"sum_t": self.sum_t.cpu().clone(), "samples": self.samples}

    def load_state_dict(self, state: dict) -> None:
        self.sum_t.copy_(state["sum_t"].to(self.sum_t.device))
        self.samples = int(state["samples"])

    def close(self) -> None:
        self.taps.close()


class PairwiseTaylor(ImportanceStrategy):
    """CCP's statistics per group: ``a = mean t`` (n,) and ``B_g = mean t_g t_g^T`` per group,
    from per-sample ``t`` (:class:`InputTaps`), accumulated in float64 (sums and a count)."""

    def __init__(self, prepared, consumers, offsets: np.ndarray, loss_reduction: str = "mean"):
        self.offsets = np.asarray(offsets, dtype=np.int64)
        n = int(self.offsets[-1])
        self.taps = InputTaps(prepared, consumers, n, loss_reduction)
        self.n = n
        self.sum_t = torch.zeros(n, dtype=torch.float64)
        self.sum_tt = [torch.zeros(int(b - a), int(b - a), dtype=torch.float64)
                       for a, b in zip(self.offsets[:-1], self.offsets[1:])]
        self.samples = 0
        #: samples added since the last sync: this process's own (0 once summed)
        self.local_samples = 0

    def observe(self, *_args, finite_only: bool = False) -> bool:
        """Take this backward's per-sample terms and accumulate them. With ``finite_only`` a
        step whose terms hold inf/nan (a loss-scaler overflow) is dropped, at one host read.

        Returns:
            True when a step's terms were dropped, else False (also when no terms were taken).
        """
        t = self.taps.take()
        if t is None:
            return False
        if finite_only and not bool(torch.isfinite(t).all()):
            return True
        self.add(t)
        return False

    def add(self, t: torch.Tensor) -> None:
        """Accumulate per-sample terms ``t`` (N, n), on ``t``'s device (no host copy per step)."""
        t = t.double()
        if self.sum_t.device != t.device:
            self.sum_t = self.sum_t.to(t.device)
            self.sum_tt = [m.to(t.device) for m in self.sum_tt]
        self.sum_t += t.sum(0)
        for g, (a, b) in enumerate(zip(self.offsets[:-1], self.offsets[1:])):
            tg = t[:, int(a):int(b)]
            self.sum_tt[g] += tg.T @ tg
        self.samples += t.shape[0]
        self.local_samples += t.shape[0]

    def moments(self, g: int) -> tuple[np.ndarray, np.ndarray]:
        """Group ``g``'s ``a`` (size,) and ``B`` (size, size), float64."""
        a, b = int(self.offsets[g]), int(self.offsets[g + 1])
        s = max(self.samples, 1)
        return (self.sum_t[a:b] / s).cpu().numpy(), (self.sum_tt[g] / s).cpu().numpy()

    def scores(self) -> np.ndarray:
        """Single-channel second-order loss change of removing channel i alone:
        ``-a_i + B_ii / 2`` (for comparison; CCP itself uses the pairwise form)."""
        s = max(self.samples, 1)
        diag = torch.cat([m.diagonal() for m in self.sum_tt]) if self.sum_tt else self.sum_t
        return ((-self.sum_t + diag / 2) / s).cpu().numpy()

    def reset(self) -> None:
        self.sum_t.zero_()
        for m in self.sum_tt:
            m.zero_()
        self.samples = self.local_samples = 0

    def sync(self, reduce_fn: ReduceFn | None = None) -> None:
        if reduce_fn is None:
            return
        parts = [self.sum_t, *[m.flatten() for m in self.sum_tt], self.sum_t.new_tensor([float(self.samples)])]
        packed = reduce_fn(torch.cat(parts))
        pos = 0
        for m in [self.sum_t, *self.sum_tt]:
            m.copy_(packed[pos:pos + m.numel()].view_as(m))
            pos += m.numel()
        self.samples = int(round(float(packed[-1])))
        self.local_samples = 0

    def state_dict(self) -> dict:
        return {"sum_t": self.sum_t.cpu().clone(), "sum_tt": [m.cpu().clone() for m in self.sum_tt],
                "samples": self.samples}

    def load_state_dict(self, state: dict) -> None:
        self.sum_t.copy_(state["sum_t"].to(self.sum_t.device))
        for m, s in zip(self.sum_tt, state["sum_tt"]):
            m.copy_(s.to(m.device))
        self.samples = int(state["samples"])
        self.local_samples = 0

    def close(self) -> None:
        self.taps.close()


# ----------------------------------------------------------------------------- bandit

class BanditStats(ImportanceStrategy):
    """CUCB's arm statistics: ``T`` (times active) and ``mu`` (mean reward in [0, 1]).

    ``observe(saliency, active)`` scales each active channel's saliency into [0, 1] by its
    group's *running maximum* of all saliencies seen so far (not the current batch's maximum,
    which would make one arm's reward depend on which other arms were drawn with it) and adds it
    to a pending sum; ``sync`` folds the pending sums and counts into ``T`` and ``mu`` (after an
    optional cross-process sum; the running maximum is each process's own).
    """

    def __init__(self, offsets: np.ndarray):
        self.offsets = np.asarray(offsets, dtype=np.int64)
        n = int(self.offsets[-1])
        self.n = n
        self.group_of = torch.from_numpy(np.repeat(np.arange(len(self.offsets) - 1),
                                                   np.diff(self.offsets)))
        self.T = torch.zeros(n, dtype=torch.float64)
        self.mu = torch.zeros(n, dtype=torch.float64)
        self.running_max = torch.zeros(len(self.offsets) - 1, dtype=torch.float64)
        self.pending_sum = torch.zeros(n, dtype=torch.float64)
        self.pending_count = torch.zeros(n, dtype=torch.float64)

    @torch.no_grad()
    def observe(self, saliency: torch.Tensor, active: torch.Tensor) -> bool:
        """Add one step's rewards; False (nothing added) when an active saliency is not finite."""
        s = saliency.detach().double().cpu()
        active = torch.as_tensor(active, dtype=torch.bool).cpu()
        if not torch.isfinite(s[active]).all():
            return False  # a non-finite step says nothing about the arms
        masked = torch.where(active, s, torch.zeros_like(s))
        group_max = torch.zeros_like(self.running_max).scatter_reduce(
            0, self.group_of, masked, reduce="amax")
        self.running_max = torch.maximum(self.running_max, group_max)
        scale = self.running_max[self.group_of]
        reward = torch.where(scale > 0, masked / scale.clamp_min(1e-300), torch.zeros_like(s))
        self.pending_sum += torch.where(active, reward, torch.zeros_like(reward))
        self.pending_count += active.double()
        return True

    def sync(self, reduce_fn: ReduceFn | None = None) -> None:
        """Fold pending rewards into ``T``/``mu``; with ``reduce_fn``, everyone's pending ones."""
        packed = torch.cat([self.pending_sum, self.pending_count])
        if reduce_fn is not None:
            packed = reduce_fn(packed)
        reward_sum, count = packed[: self.n], packed[self.n:]
        new_T = self.T + count
        self.mu = torch.where(new_T > 0, (self.mu * self.T + reward_sum) / new_T.clamp_min(1), self.mu)
        self.T = new_T
        self.pending_sum.zero_()
        self.pending_count.zero_()

    def index(self, t: int, c: float = 1.0) -> torch.Tensor:
        """The CUCB index ``mu + c sqrt(3 ln t / (2 T))`` per channel; +inf where ``T == 0``."""
        bonus = c * torch.sqrt(1.5 * np.log(max(t, 1)) / self.T.clamp_min(1))
        return torch.where(self.T > 0, self.mu + bonus, torch.full_like(self.mu, float("inf")))

    def scores(self) -> np.ndarray:
        return self.mu.numpy().copy()

    def reset(self) -> None:
        for x in (self.T, self.mu, self.running_max, self.pending_sum, self.pending_count):
            x.zero_()

    def state_dict(self) -> dict:
        return {k: getattr(self, k).clone() for k in ("T", "mu", "running_max", "pending_sum", "pending_count")}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            getattr(self, k).copy_(v)
