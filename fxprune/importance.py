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
        device = consumers[0].param.device if consumers else torch.device("cpu")
        self.total = torch.zeros(n, dtype=torch.float64, device=device)
        self.count = 0

    @torch.no_grad()
    def observe(self, flat_masks: torch.Tensor) -> None:
        """Add one step's Taylor scores from the current gradients (no-op for magnitude)."""
        if self.kind != "taylor" or not self.n:
            return
        ext = torch.cat([flat_masks.to(self.total.device, torch.float64), self.total.new_ones(1)])
        step = torch.zeros_like(self.total)
        seen = False
        for c in self.consumers:
            g = c.param.grad
            if g is None:
                continue
            seen = True
            # W*g in the weights' dtype (a full pass over the weights: keep it single precision);
            # the per-channel sums it reduces to are accumulated in double.
            s = (c.param.detach() * g).movedim((c.out_dim, c.dim), (0, 1))
            s = s.sum(dim=tuple(range(2, s.ndim))) if s.ndim > 2 else s  # (C_out, C_in)
            out_kept = ext[c.out_flat].to(s.dtype)  # -1 picks the trailing 1: always kept
            per_input = (out_kept @ s).double()
            valid = c.in_flat >= 0
            step.index_add_(0, c.in_flat[valid], per_input[valid])
        if not seen:
            return
        step = step.abs()
        if self.accumulate == "mean":
            self.total += step
        else:
            self.total.mul_(self.momentum).add_(step, alpha=1 - self.momentum)
        self.count += 1

    @torch.no_grad()
    def scores(self) -> np.ndarray:
        if self.kind == "magnitude":
            sq = torch.zeros(self.n, dtype=torch.float64, device=self.total.device)
            for c in self.consumers:
                w2 = c.param.double().pow(2)
                per_input = w2.sum(dim=tuple(d for d in range(w2.ndim) if d != c.dim))
                valid = c.in_flat >= 0
                sq.index_add_(0, c.in_flat[valid], per_input[valid])
            return sq.sqrt().cpu().numpy()
        if self.accumulate == "mean":
            return (self.total / max(self.count, 1)).cpu().numpy()
        return self.total.cpu().numpy()

    def reset(self) -> None:
        if self.accumulate == "mean":
            self.total.zero_()
            self.count = 0

    def state_dict(self) -> dict:
        return {"total": self.total.clone().cpu(), "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.total.copy_(state["total"].to(self.total.device))
        self.count = int(state["count"])
