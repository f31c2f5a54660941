"""Channel importance, one score per prunable channel (see :class:`fxprune.units.UnitIndex`).

``taylor`` (SMCP): for every layer reading channel i through weight W,
``s_i = sum over its kept output channels o and kernel positions of W[o, i] * dL/dW[o, i]``;
the channel's score is ``|sum of s_i over those layers|`` (sum first, abs last). It is computed
on the unmasked W with the straight-through gradient, so a masked-out channel keeps a meaningful
score and can come back. Scores are accumulated over the steps between mask updates: ``mean``
(default: each update sees evidence gathered under the current masks only, not stale scores
from before the last re-solve) or an exponential ``momentum`` average that carries over.

``magnitude``: the L2 norm of the weights that read the channel (a data-free baseline).
"""
from __future__ import annotations

import numpy as np
import torch

from .units import ConsumerWeight


class ImportanceAccumulator:
    KINDS = ("taylor", "magnitude")

    def __init__(self, consumers: list[ConsumerWeight], n: int, kind: str = "taylor",
                 accumulate: str = "mean", momentum: float = 0.9):
        if kind not in self.KINDS:
            raise ValueError(f"importance must be one of {self.KINDS}, got {kind!r}")
        if accumulate not in ("mean", "momentum"):
            raise ValueError(f"accumulate must be 'mean' or 'momentum', got {accumulate!r}")
        self.consumers, self.n, self.kind = consumers, n, kind
        self.accumulate, self.momentum = accumulate, momentum
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

    @torch.no_grad()
    def observe(self, flat_masks: torch.Tensor) -> None:
        """Add one step's Taylor scores from the current gradients (no-op for magnitude).

        A step whose gradients hold inf or nan (a loss-scaler overflow under mixed precision)
        is not averaged in, and is counted in :attr:`skipped`; the decision is made on the
        device (``torch.where`` on a finite flag), so no step waits for the GPU."""
        if self.kind != "taylor" or not self.n or not self.consumers:
            return
        self.follow_model()
        ext = torch.cat([flat_masks.to(self.total.device, torch.float64), self.total.new_ones(1)])
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
        if not seen:
            return
        step = spill[: self.n]
        finite = torch.isfinite(step).all()
        step = torch.where(finite, step.abs(), 0.0)
        if self.accumulate == "mean":
            self.total += step
        else:
            decayed = self.total * self.momentum + step * (1 - self.momentum)
            self.total = torch.where(finite, decayed, self.total)
        self._finite += finite
        self._skipped += ~finite
        self.count += 1

    @property
    def skipped(self) -> int:
        """Steps skipped for non-finite gradients since the last reset (reading it syncs)."""
        return int(self._skipped)

    @torch.no_grad()
    def scores(self) -> np.ndarray:
        self.follow_model()
        if self.kind == "magnitude":
            sq = torch.zeros(self.n, dtype=torch.float64, device=self.total.device)
            for c in self.consumers:
                w2 = c.param.double().pow(2)
                per_input = w2.sum(dim=tuple(d for d in range(w2.ndim) if d != c.dim))
                valid = c.in_flat >= 0
                sq.index_add_(0, c.in_flat[valid], per_input[valid])
            return sq.sqrt().cpu().numpy()
        if self.accumulate == "mean":
            return (self.total / self._finite.clamp(min=1)).cpu().numpy()
        return self.total.cpu().numpy()

    def reset(self) -> None:
        self._skipped.zero_()
        if self.accumulate == "mean":
            self.total.zero_()
            self._finite.zero_()
            self.count = 0

    def state_dict(self) -> dict:
        # CPU tensors and ints: a checkpoint saved on a GPU loads on the CPU and the reverse.
        return {"total": self.total.detach().cpu().clone(), "count": self.count,
                "finite": int(self._finite), "skipped": int(self._skipped)}

    def load_state_dict(self, state: dict) -> None:
        self.total.copy_(state["total"].to(self.total.device))
        self.count = int(state["count"])
        self._finite.fill_(int(state.get("finite", self.count)))
        self._skipped.fill_(int(state.get("skipped", 0)))
