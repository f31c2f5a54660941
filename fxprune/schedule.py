"""When to prune and how much: warm-up, a ramp of the cost target, a frozen cool-down.

SMCP ramps the pruned fraction exponentially, ``r(t) = r * (1 - exp(-a t)) / (1 - exp(-a T))``
(ImageNet: a = 0.05 per epoch over T = 55 epochs, so ``a*T = 2.75``): it prunes fast at first,
when most channels are redundant, and slowly near the target.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass

from .errors import ArgumentError, ArgumentTypeError


__all__ = ["PruningSchedule"]


@dataclass
class PruningSchedule:
    """Step counts are optimizer steps (calls of ``pruner.step()``).

    warmup: steps of dense training before the ramp starts (the target is 1.0 there).
    ramp: steps over which the cost target goes from 1.0 to the final target.
    update_every: masks are re-solved every this many steps from the end of warm-up: the first
    update is at step ``warmup + update_every``.
    freeze_after: after this step masks stay as they are (cool-down; an update at the step
    itself still runs); None: never frozen.
    shape: "exp" (SMCP) or "linear". With ``t`` the fraction of the ramp done, the budget is
    ``1 - (1 - target) * p(t)``, where ``p(t) = t`` (linear) or
    ``p(t) = (1 - exp(-s t)) / (1 - exp(-s))`` (exp): SMCP's ImageNet schedule (Humble et al.,
    ECCV 2022, after HALP) prunes a ratio ``r (1 - exp(-a e)) / (1 - exp(-a T))`` at epoch ``e``
    of a ``T``-epoch ramp, with ``a = 0.05`` and ``T = 55``. sharpness: ``s = a T`` (2.75 by
    default: that schedule's); a small ``s`` tends to the linear ramp, a large one prunes most
    of the way early.
    """

    warmup: int = 0
    ramp: int = 1000
    update_every: int = 100
    freeze_after: int | None = None
    shape: str = "exp"
    sharpness: float = 2.75

    def __setattr__(self, name: str, v) -> None:
        # checked at every assignment, not only when built (break111 F5: `s.warmup = 2.5`
        # afterwards gave a schedule that never updated)
        if name == "shape":
            if v not in ("exp", "linear"):
                raise ArgumentError(f"schedule shape must be 'exp' or 'linear', got {v!r}")
            v = str(v)  # (break117 F8: a numpy str did not load with weights_only=True)
        low = {"warmup": 0, "ramp": 0, "update_every": 1, "freeze_after": 0}.get(name)
        if low is not None and not (name == "freeze_after" and v is None):
            # step counts: a float warm-up (0.1 * total steps) never met `step == ...` and the
            # schedule never pruned; kept as plain ints (a state holding numpy ones does not
            # load with weights_only=True)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low:
                raise ArgumentError(f"schedule {name} is a count of optimizer steps, an integer >= "
                                    f"{low}; got {v!r} (round a computed one: int(0.1 * steps))")
            v = int(v)
        if name == "sharpness":
            if (isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v)
                    or v <= 0):
                raise ArgumentError(f"schedule sharpness must be a number > 0, got {v!r}")
            v = float(v)
        object.__setattr__(self, name, v)

    def __post_init__(self):
        """Nothing left to do (each field is checked as it is set); kept for subclasses that
        call ``super().__post_init__()`` (review115 F3)."""

    def progress(self, step: int) -> float:
        """Fraction of the ramp done at ``step`` (0 before warm-up ends, 1 after the ramp)."""
        if isinstance(step, bool) or not isinstance(step, numbers.Real) or math.isnan(step):
            raise ArgumentTypeError(f"schedule progress: step is the number of optimizer steps taken "
                                    f"(an int), got {step!r}")
        if step <= self.warmup:
            return 0.0
        if self.ramp == 0:
            return 1.0
        t = min((step - self.warmup) / self.ramp, 1.0)
        if self.shape == "linear":
            return t
        # expm1: exact for a tiny sharpness (the ramp tends to linear), where 1 - exp(-s) is 0
        return math.expm1(-self.sharpness * t) / math.expm1(-self.sharpness)

    def target(self, step: int, final: float) -> float:
        """Cost budget (fraction of dense) at ``step`` when the final target is ``final``, a
        fraction in (0, 1]."""
        if isinstance(final, bool) or not isinstance(final, numbers.Real) or not 0 < final <= 1:
            raise ArgumentError(f"schedule target: the final target is a fraction of the dense cost "
                                f"in (0, 1], got {final!r}")
        return 1.0 - (1.0 - final) * self.progress(step)

    @property
    def ramp_end(self) -> int:
        """The first step whose budget is the final target (an update there reaches it):
        ``warmup + ramp``, and ``warmup + 1`` for ``ramp=0``, as no update comes at or before
        the warm-up's last step."""
        return self.warmup + max(self.ramp, 1)

    def updates_at(self, step: int) -> bool:
        """Every ``update_every`` steps after warm-up until frozen; also at the step the ramp
        ends when no regular update falls between it and the freeze (or nothing freezes), so
        the final target is reached whatever ``update_every``."""
        if step <= self.warmup or (self.freeze_after is not None and step > self.freeze_after):
            return False
        if (step - self.warmup) % self.update_every == 0:
            return True
        end = self.ramp_end
        if step != end:
            return False
        if self.freeze_after is None:
            return True
        next_regular = self.warmup + math.ceil((end - self.warmup) / self.update_every) * self.update_every
        return next_regular > self.freeze_after

    def state(self) -> dict:
        return asdict(self)
