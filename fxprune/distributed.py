"""Pruning under ``torch.distributed`` (DDP launched by ``torchrun``): where each call goes.

Every function here is a no-op (or the identity) when ``torch.distributed`` is not initialised,
so the same training loop runs on one process and on many.

**The rule.** A pruning method reads importance from ``.grad`` after ``loss.backward()`` has
returned on a *synchronised* step. DDP has then already averaged the gradients: they are
bit-identical on every rank and equal to one process on the whole (concatenated) batch, so the
importance needs no communication of its own and every rank takes the same decision::

    pm = fxprune.prepare(model, (x,))          # on every rank, before the wrap
    pruner = fxprune.SMCP(pm, ...)             # on every rank, same arguments
    ddp = DistributedDataParallel(pm, device_ids=[local_rank])
    for x, y in loader:                        # a DistributedSampler gives each rank its slice
        criterion(ddp(x), y).backward()        # gradients averaged here
        if pruner.step() is not None:          # same step on every rank: the schedule is global
            broadcast_masks(pm)        # from fxprune.distributed: rank 0's masks win
        optimizer.step(); optimizer.zero_grad()

- "The same decision" holds to the last bit on the CPU. On CUDA the importance sums per
  channel with ``index_add_``, whose atomics add in any order, so two ranks' scores can differ
  in the last bit and a near tie can go either way: ``broadcast_masks`` after each update is
  what makes every rank keep rank 0's channels.
- Under gradient accumulation, micro-steps inside ``ddp.no_sync()`` hold *rank-local* partial
  gradients: call ``pruner.step()`` once per optimizer step, after the last (synchronised)
  backward, never after a ``no_sync`` micro-step.
- Never collect importance from tensor hooks (``Tensor.register_hook``,
  ``register_post_accumulate_grad_hook``) or activation hooks: they see each rank's local values.
  Statistics that are rank-local by nature go through :func:`all_reduce_sum_count` (sum and
  count in float64; ``ReduceOp.AVG`` is NCCL-only) once, before a decision.
- Do not hang ``pruner.step()`` on ``optimizer.register_step_pre_hook``: with
  ``optimizer.step(closure)`` it fires before the closure's backward.
- Train-mode BatchNorm normalises with each rank's own batch statistics, so importance differs
  from one process on the whole batch; use ``nn.SyncBatchNorm`` on GPUs when that matters.

**Why broadcast the masks** when every rank already computes the same ones: DDP does not keep
them equal, it hides divergence. A mask buffer changed on one rank only is overwritten by rank 0's
copy at the next forward (``broadcast_buffers=True``) while that rank's pruner state (e.g. hard
masks' pruned-for-good set) keeps the other decision. Broadcasting after each update makes the
masks equal by construction (one flat tensor of ``sum(group sizes)`` entries, cheap next to one
step's gradient all-reduce); :func:`check_masks_equal` (``broadcast_masks(..., check=True)``)
is the debug mode that finds where ranks disagree. No wrapper class is needed: the two lines
above are the whole protocol, and any method with ``step()`` returning a record on an update
fits it.

**After ``finalize``.** Surgery replaces parameters. A parameter replaced after the DDP wrap
raises nothing, but its gradients are no longer averaged: ranks silently drift apart. Finalize the
*unwrapped* module on every rank (``fxprune.finalize(ddp.module)``; masks and weights are equal, so
every rank builds the same model) and wrap it anew with a new optimizer:
:func:`rewrap_after_finalize`.

**I/O.** Write checkpoints, logs and ``model_pruned.pt`` only where :func:`is_main_process`;
measure a latency table once with :func:`compute_on_main` (rank 0 measures or reads its cache,
the others receive it; ``fxprune.deploy.latency_cost`` does this itself, so call it on every
rank). A pruner's state holds means and counts of averaged quantities, so a
checkpoint written by rank 0 resumes on any number of ranks.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import fx, nn

from .errors import ArgumentTypeError, FxPruneError
from .groups import mask_bank, state_of


class MaskMismatchError(FxPruneError, RuntimeError):
    """Ranks hold different masks (raised by :func:`check_masks_equal` on every rank)."""


def is_distributed() -> bool:
    """True inside an initialised ``torch.distributed`` process group."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """True on global rank 0, and in a process without ``torch.distributed``: the one that
    writes checkpoints, logs and the pruned model."""
    return rank() == 0


def launched_with_several_processes() -> bool:
    """True when ``torchrun`` (or any launcher setting ``WORLD_SIZE``) started more than one
    process for this job."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_rank() -> int:
    """This process's index on its machine (``LOCAL_RANK``; 0 without a launcher): its GPU."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def local_world_size() -> int:
    """Processes on this machine (``LOCAL_WORLD_SIZE``; 1 without a launcher)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def init_from_env(device: torch.device) -> bool:
    """Join the job ``torchrun`` started: ``init_process_group`` from its environment
    (``env://``: ``MASTER_ADDR``/``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``), NCCL when ``device``
    is CUDA (set as this process's current device first), gloo on the CPU.

    Returns True when it created the process group (the caller ends it with
    ``dist.destroy_process_group()``); False with a single process or when a group already
    exists (e.g. Lightning made it).
    """
    if is_distributed() or not launched_with_several_processes():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    return True


@torch.no_grad()
def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (masks, BatchNorm running statistics) to every rank.

    DDP sends rank 0's buffers at the start of each forward, but the last training forward then
    updates each rank's BatchNorm statistics with its own batch: call this before evaluating,
    finalizing or saving so that every rank holds rank ``src``'s model.
    """
    if not is_distributed():
        return
    for b in module.buffers():
        dist.broadcast(b, src=src)


def use_sync_batchnorm(module: nn.Module) -> Callable[[], None]:
    """Swap every BatchNorm of ``module`` for ``nn.SyncBatchNorm`` (batch statistics over all
    processes; CUDA only), in place; returns ``undo()``, which puts the original modules back.

    The SyncBatchNorm modules share the originals' parameters and running statistics (that is
    how ``nn.SyncBatchNorm.convert_sync_batchnorm`` builds them), so after ``undo()`` the
    originals hold everything trained. Call ``undo()`` before ``fxprune.finalize``: surgery
    knows BatchNorm, and the saved model should not need a process group. ``module`` itself
    must not be a BatchNorm.
    """
    originals = [(name, m) for name, m in module.named_modules()
                 if isinstance(m, nn.modules.batchnorm._BatchNorm) and name]
    plain = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    other = next((f"{name} ({type(m).__name__})" for name, m in originals
                  if type(m) not in plain), None)
    if other is not None:  # the conversion would drop what the subclass adds
        raise TypeError(f"use_sync_batchnorm: {other} is not a plain BatchNorm; "
                        "SyncBatchNorm would replace its behaviour: set train.sync_bn=false")
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if converted is not module:
        raise ArgumentTypeError("use_sync_batchnorm: pass the model, not a BatchNorm layer")

    def undo() -> None:
        for name, original in originals:
            parent, _, leaf = name.rpartition(".")
            setattr(module.get_submodule(parent) if parent else module, leaf, original)

    return undo


def barrier_if_distributed() -> None:
    """``dist.barrier()`` when distributed (e.g. the others wait until rank 0 wrote a file)."""
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``src``'s ``obj`` on every rank (pickled; for small objects such as a latency table).

    Under NCCL the current CUDA device must be set (``torch.cuda.set_device(local_rank)``)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def compute_on_main(fn: Callable[[], Any]) -> Any:
    """Run ``fn()`` on rank 0 only and return its result on every rank.

    For work done once per job, e.g. ``compute_on_main(lambda: LatencyTable.measure(pm))``
    (rank 0 measures, or reads its cache). If ``fn`` raises on rank 0, every rank raises
    (instead of the others waiting forever in the broadcast). The others wait inside a
    collective: keep ``fn`` within the process group's timeout (``init_process_group(timeout=)``,
    10 minutes by default under NCCL) or measure before launching.
    """
    if not is_distributed():
        return fn()
    if not is_main_process():
        ok, payload = broadcast_object(None)
        if not ok:
            raise RuntimeError(f"rank 0 failed in compute_on_main: {payload}")
        return payload
    try:
        result = fn()
    except Exception as exc:
        broadcast_object((False, f"{type(exc).__name__}: {exc}"))  # release the others, then raise
        raise
    broadcast_object((True, result))
    return result


def all_reduce_sum_count(total: torch.Tensor, count) -> tuple[torch.Tensor, Any]:
    """Sum ``total`` and ``count`` over all ranks, in float64, with one all-reduce.

    The synchronisation point for rank-local statistics (a rank's own loss, per-sample
    matrices, activation hooks): reduce the sum and the number of samples, then divide, so the
    mean is the one over every rank's samples even when ranks saw different numbers.

    Args:
        total: a tensor of sums of any shape, on any device (a CPU tensor is reduced on the
            current CUDA device under NCCL, which reduces CUDA tensors only, and comes back).
        count: an int/float, or a tensor of counts (e.g. per channel).

    Returns:
        ``(total_sum, count_sum)``: ``total_sum`` a float64 tensor of ``total``'s shape
        (``total`` itself, converted, when not distributed);
        ``count_sum`` of ``count``'s kind (int stays int, a tensor comes back as float64).
    """
    if not is_distributed():
        return total.to(torch.float64), count
    count_t = torch.as_tensor(count, dtype=torch.float64, device=total.device)
    packed = torch.cat([total.detach().reshape(-1).to(torch.float64), count_t.reshape(-1)])
    packed = packed.to(reduce_device(packed))
    dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    packed = packed.to(total.device)
    summed = packed[: total.numel()].view(total.shape)
    counts = packed[total.numel():]
    if isinstance(count, torch.Tensor):
        return summed, counts.view(count.shape)
    value = counts.item()  # one host sync, once per decision
    return summed, int(value) if isinstance(count, int) else value


def reduce_device(t: torch.Tensor) -> torch.device:
    """Where the default process group can reduce ``t``: NCCL reduces CUDA tensors only, so a
    CPU tensor (a loss sum, a count) goes to the current CUDA device; anything else stays."""
    if t.device.type == "cpu" and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return t.device


# -- masks ------------------------------------------------------------------------------------

def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """The element-wise float64 sum of ``t`` over every process: a method's ``reduce_fn`` for
    statistics gathered in hooks (rank-local values, e.g. CCP's activation terms)."""
    return all_reduce_sum_count(t, 0)[0]


def _unwrap(model: nn.Module) -> fx.GraphModule:
    """The prepared GraphModule inside a DDP wrapper (or the model itself)."""
    while isinstance(model, nn.parallel.DistributedDataParallel) or (
            not isinstance(model, fx.GraphModule) and isinstance(getattr(model, "module", None), nn.Module)):
        model = model.module
    return model


def _mask_buffers(prepared: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(group description, mask buffer) of every prunable group, in a fixed order."""
    gm = _unwrap(prepared)
    state = state_of(gm)
    bank = mask_bank(gm)
    return [(f"{g.key} ({g.name!r})", getattr(bank, g.key)) for g in state.channels.groups if g.prunable]


def _flat(buffers: list[tuple[str, torch.Tensor]]) -> torch.Tensor:
    return torch.cat([b.detach().reshape(-1) for _, b in buffers])


@torch.no_grad()
def broadcast_masks(prepared: nn.Module, src: int = 0, *, check: bool = False) -> None:
    """Copy rank ``src``'s mask of every prunable group to every rank, in place.

    One broadcast of one flat tensor (``sum(group sizes)`` entries) on the masks' device.
    ``prepared``: the model ``fxprune.prepare`` returned, or a DDP wrapper around it. With
    ``check`` (a debug mode), first :func:`check_masks_equal`: raise if the ranks disagreed,
    instead of silently adopting ``src``'s masks. Call it on every rank at the same step.
    """
    if not is_distributed():
        return
    if check:
        check_masks_equal(prepared, src)
    buffers = _mask_buffers(prepared)
    if not buffers:
        return
    flat = _flat(buffers)
    dist.broadcast(flat, src=src)
    start = 0
    for _, b in buffers:
        b.copy_(flat[start:start + b.numel()].view_as(b))
        start += b.numel()


@torch.no_grad()
def check_masks_equal(prepared: nn.Module, src: int = 0) -> None:
    """Raise :class:`MaskMismatchError` on every rank if any rank's masks differ from ``src``'s.

    The message names the first differing group (in channel-group order) and the ranks that
    differ there. Every rank raises together, so none is left waiting in a later collective.
    Costs a broadcast of the masks and an all-gather of one flag per group: a debug mode.
    """
    if not is_distributed():
        return
    buffers = _mask_buffers(prepared)
    if not buffers:
        return
    mine = _flat(buffers)
    theirs = mine.clone()
    dist.broadcast(theirs, src=src)
    flags, start = [], 0
    for _, b in buffers:
        n = b.numel()
        flags.append(not torch.equal(mine[start:start + n], theirs[start:start + n]))
        start += n
    local = torch.tensor(flags, dtype=torch.int32, device=mine.device)
    gathered = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(gathered, local)
    differ = torch.stack(gathered).cpu()  # (world, groups)
    bad_groups = differ.any(dim=0).nonzero().flatten().tolist()
    if bad_groups:
        g = bad_groups[0]
        ranks = differ[:, g].nonzero().flatten().tolist()
        raise MaskMismatchError(
            f"masks differ across ranks: group {buffers[g][0]} on rank(s) {ranks} differs from "
            f"rank {src} ({len(bad_groups)} of {len(buffers)} groups differ). Something decided "
            f"on rank-local data or unseeded randomness; read importance from .grad after a "
            f"synchronised backward (see fxprune.distributed)")


@torch.no_grad()
def check_models_equal(module: nn.Module, what: str = "model", src: int = 0) -> None:
    """Raise :class:`MaskMismatchError` on every rank unless every rank's ``module`` has rank
    ``src``'s state (names, shapes, values): e.g. the finalized model, which every rank builds
    from its own masks and weights. A debug check: rank ``src``'s state is pickled to all."""
    if not is_distributed():
        return
    mine = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    theirs = broadcast_object(mine, src=src)
    first = next((k for k in sorted(set(mine) | set(theirs))
                  if k not in mine or k not in theirs or mine[k].shape != theirs[k].shape
                  or not torch.equal(mine[k], theirs[k])), None)
    flag = torch.tensor([0 if first is None else 1], dtype=torch.int32)
    if dist.get_backend() == "nccl":
        flag = flag.cuda()
    dist.all_reduce(flag)
    if int(flag.item()):
        where = f"; here it differs at {first!r}" if first is not None else ""
        raise MaskMismatchError(f"the {what} differs across ranks ({int(flag.item())} rank(s) "
                                f"differ from rank {src}){where}")


# -- after finalize -------------------------------------------------------------------------

def rewrap_after_finalize(finalized: nn.Module, ddp_kwargs: dict | None,
                          optimizer_factory: Callable[[nn.Module], torch.optim.Optimizer]):
    """A new DDP wrapper and optimizer for the finalized (smaller) model, for fine-tuning.

    Call on every rank with ``fxprune.finalize(ddp.module)`` (finalize the *unwrapped* prepared
    model: a parameter replaced under a live DDP wrapper stops being averaged, without an
    error). The old wrapper and optimizer refer to the old parameters: drop them.

    Args:
        finalized: the plain module ``fxprune.finalize`` returned (not a DDP wrapper).
        ddp_kwargs: keyword arguments of ``DistributedDataParallel`` (e.g. ``device_ids``).
        optimizer_factory: builds the optimizer from the finalized module, e.g.
            ``lambda m: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)``
            (its learning-rate schedule starts afresh; carry the step count yourself).

    Returns:
        ``(model, optimizer)``: the DDP-wrapped model (``finalized`` itself when not
        distributed) and the optimizer over ``finalized``'s parameters.
    """
    if isinstance(finalized, nn.parallel.DistributedDataParallel):
        raise ArgumentTypeError("rewrap_after_finalize expects the finalized plain module, got a "
                        "DistributedDataParallel wrapper; pass fxprune.finalize(ddp.module)")
    if isinstance(finalized, fx.GraphModule) and "fxprune" in finalized.meta:
        raise ArgumentTypeError("this model still has fxprune masks (it is the prepared model); "
                        "pass fxprune.finalize(prepared), the smaller plain model")
    model = finalized
    if is_distributed():
        # DDP's constructor checks parameter shapes across ranks and broadcasts rank 0's
        # parameters and buffers, so the ranks start fine-tuning from one model.
        model = nn.parallel.DistributedDataParallel(finalized, **(ddp_kwargs or {}))
    return model, optimizer_factory(finalized)


__all__ = ["MaskMismatchError", "is_distributed", "rank", "world_size", "is_main_process",
           "launched_with_several_processes", "local_rank", "local_world_size", "init_from_env",
           "broadcast_buffers", "use_sync_batchnorm",
           "barrier_if_distributed", "broadcast_object", "compute_on_main", "all_reduce_sum_count",
           "broadcast_masks", "check_masks_equal", "check_models_equal", "rewrap_after_finalize"]
