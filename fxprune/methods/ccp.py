"""CCP: Collaborative Channel Pruning (Peng, Wu, Chen & Huang, ICML 2019), on fxprune's masks.

    pruner = fxprune.CCP(pm, ratio=0.5, collect=50)            # the paper's per-layer ratio
    pruner = fxprune.CCP(pm, mode="adaptive", target=0.5, cost="flops")  # counts by the allocator
    for x, y in loader:
        loss = criterion(pm(x), y); loss.backward()
        pruner.step(loss)          # gathers statistics; at prune_at, selects and masks for good
        optimizer.step(); optimizer.zero_grad()
    pruner.finalize_masks()        # closes the statistics hooks; warns above the target
    small = fxprune.finalize(pm)

What it does (with fxprune's choices where its sources say nothing of a detail):

* Statistics (:class:`fxprune.importance.PairwiseTaylor`): per sample n and channel i,
  ``t_i = sum over positions of A_i * dL_n/dA_i`` with A the input of each layer reading the
  channel (where the group's mask acts), summed over those layers; ``a_i = mean t_i``,
  ``B_ij = mean t_i t_j`` per group, in float64. B is the Gauss-Newton / empirical-Fisher
  approximation of the Hessian in the mask coordinates (exact for cross-entropy with one-hot
  labels). They are gathered over the ``collect`` training steps before
  each pruning step, from the trainer's own forward/backward. With ``collect_bn="train"`` (the
  default) the batch norms are left alone: samples interact through the batch statistics, so
  ``t`` is a per-sample share of the batch gradient rather than a gradient of its own. With
  ``"eval"`` (the choice for a trained model) they run in eval mode in the
  training forwards of those steps (switched around each forward, so a validation pass
  between steps does not undo it), so ``t`` is truly per sample — but the optimizer then also
  steps on eval-mode batch norms: in the Fashion-MNIST recipe (lr 0.1, collection at 0.2 of
  the first epoch) that diverged to nan within 10 steps, while ``"train"`` trained on as the
  dense run does. Use ``"eval"`` on a trained model at a small
  learning rate. Collect >= ~10x as many samples as the widest group has channels.
* Objective. z = 1 - beta marks pruned channels. Second order:
  ``dL(z) = -sum_i z_i a_i + 1/2 z^T B z``. Keep form (what is solved here):
  ``min beta^T S beta`` s.t. ``1^T beta = p`` with ``S_ij = B_ij / 2`` (i != j) and
  ``S_ii = B_ii / 2 + a_i - sum_j B_ij`` (:func:`keep_form`); it equals ``dL`` plus a constant
  over all masks (:func:`predicted_change`). Groups are treated as independent (no cross-group
  terms): the predicted change of the whole model is the sum over groups.
* Solver per group: exhaustive search when the group has at most ``exhaustive_max`` alive
  channels (the test oracle); otherwise greedy backward elimination (remove the channel whose
  removal raises the objective least, O(n) per removal with a running ``S beta``) followed by
  local search at each count asked for: 1-swaps, and pair moves that take out two kept channels
  together (a cancelling pair, which no single-channel step removes). ``keep_one_of`` constraints (a split piece must
  keep a channel; with ``min_kept``, each layer's part its floor) are enforced by both.
* How many per group: ``mode="ratio"``: every group keeps ``ratio`` of its channels (the paper's
  preset per-layer ratio; on the ``channel_step`` grid; ``ratio=None``: the largest common ratio
  whose real cost fits ``target``); ``mode="adaptive"``: each group offers
  its best subset at every allowed count, valued by minus its predicted loss change, and
  fxprune's allocator picks the counts under ``target`` x the dense cost (FLOPs, params or a
  latency table). This adaptive version is fxprune's; the paper's CCP-AC mechanism is not
  reproduced (its details were not available).
  ``target=None`` is 0.5; a target given beside ``ratio`` in ratio mode is unused (a warning
  says so).
* Mixed precision: pass the loop's ``torch.amp.GradScaler`` as ``scaler``: the statistics
  come from activation gradients of the scaled loss, which ``scaler.unscale_`` does not reach.
* Rounds: ``rounds`` prune/re-estimate rounds ``round_every`` steps apart, the kept ratio (or
  cost target) moving linearly to its final value; pruned channels stay pruned (hard masks).
  After the last round the trainer's remaining steps fine-tune. ``rounds=1`` is one-shot.
"""
from __future__ import annotations

import itertools
import math
import numbers
import os
import time

import numpy as np
import torch
from torch import fx

from .. import distributed as fxdist
from ..errors import ArgumentError, ArgumentTypeError, DivergedError, warn
from ..allocation import (DEFAULT_MAX_RESOLVES, Allocation, GroupOptions, allocate, allocate_uniform,
                          allowed_counts, kept_from)
from ..importance import PairwiseTaylor
from ..knapsack import DEFAULT_RESOLUTION
from ..masks import MethodHook, set_straight_through
from ..units import floor_picks
from ..checks import check_bool, check_fraction, check_number
from .base import (DEFAULT_TARGET, PruningMethod, trainable_state, warn_unused_allocator_settings,
                   warn_unused_target)

__all__ = ["CCP", "keep_form", "prune_form", "predicted_change", "objective", "solve_exhaustive",
           "best_subsets", "solve"]


# ----------------------------------------------------------------------------- the quadratic

def keep_form(a: np.ndarray, B: np.ndarray) -> np.ndarray:
    """S with ``beta^T S beta = dL(1 - beta) + const`` over 0/1 ``beta`` (keep form)."""
    a, B = np.asarray(a, np.float64), np.asarray(B, np.float64)
    S = B / 2
    S[np.diag_indices_from(S)] = np.diag(B) / 2 + a - B.sum(1)
    return S


def prune_form(a: np.ndarray, B: np.ndarray) -> np.ndarray:
    """S_z with ``z^T S_z z = dL(z)`` over 0/1 ``z`` (prune form): ``B/2 - diag(a)``."""
    a, B = np.asarray(a, np.float64), np.asarray(B, np.float64)
    return B / 2 - np.diag(a)


def predicted_change(a: np.ndarray, B: np.ndarray, keep: np.ndarray) -> float:
    """Second-order predicted loss change of removing the channels ``keep`` leaves out."""
    z = (~np.asarray(keep, bool)).astype(np.float64)
    return float(-z @ a + 0.5 * z @ B @ z)


def objective(S: np.ndarray, keep: np.ndarray) -> float:
    b = np.asarray(keep, np.float64)
    return float(b @ S @ b)


def _constraint_matrix(n: int, keep_one_of, need=None) -> tuple[np.ndarray, np.ndarray]:
    """``(M, q)``: row c of the bool ``M`` marks set c of ``keep_one_of``, of which at least
    ``q[c]`` channels are kept (``need``; 1 each where None). ValueError for a ``need`` of
    another length, or a count that is not in 1..its set's size."""
    M = np.zeros((len(keep_one_of), n), dtype=bool)
    for c, positions in enumerate(keep_one_of):
        M[c, np.asarray(positions, dtype=np.int64)] = True
    q = np.ones(len(keep_one_of), dtype=np.int64) if need is None else np.asarray(need, np.int64)
    if q.shape != (len(keep_one_of),) or (q < 1).any() or (q > M.sum(1)).any():
        raise ArgumentError(f"need gives the fewest channels kept of each keep_one_of set, one "
                            f"count in 1..its size per set; got {list(np.ravel(need))} for sets of "
                            f"{M.sum(1).tolist()} channels")
    return M, q


def _floor_subset(n: int, keep_one_of=(), need=None) -> np.ndarray:
    """Few of ``n`` channels that meet every set's count (:func:`fxprune.units.floor_picks`,
    channels in fewer sets first): the smallest subset the method keeps, which adding
    channels to keeps valid."""
    M, q = _constraint_matrix(n, keep_one_of, need)
    parts = [(np.flatnonzero(row), int(c)) for row, c in zip(M, q)]
    return np.asarray(floor_picks(parts, -M.sum(0).astype(np.float64)), dtype=np.int64)


def _check_counts(n: int, counts) -> list[int]:
    """The kept counts asked of an ``n``-channel QP, each an integer in 1..n (ValueError)."""
    counts = list(counts)
    if not counts:
        raise ArgumentError("counts is empty: give the numbers of channels to keep (1..n)")
    for p in counts:
        if isinstance(p, bool) or not isinstance(p, numbers.Integral) or not 1 <= p <= n:
            raise ArgumentError(f"a count of channels to keep must be an integer in 1..{n} (the "
                                f"matrix's size), got {p!r}")
    return [int(p) for p in counts]


def solve_exhaustive(S: np.ndarray, p: int, keep_one_of=(), need=None) -> tuple[np.ndarray, float]:
    """The exact ``argmin beta^T S beta`` over all 0/1 beta with ``p`` ones satisfying every
    ``keep_one_of`` set (at least one kept from each, or ``need[c]`` from set c: a layer's
    ``min_kept`` floor). C(n, p) candidates: small n only. Raises ValueError when ``p`` is not
    in 1..n or no subset meets the constraints."""
    n = len(S)
    (p,) = _check_counts(n, [p])
    M, q = _constraint_matrix(n, keep_one_of, need)
    best, best_val = None, np.inf
    combos = np.array(list(itertools.combinations(range(n), p)), dtype=np.int64).reshape(-1, p)
    for chunk in np.array_split(combos, max(1, len(combos) // 4096)):
        beta = np.zeros((len(chunk), n))
        np.put_along_axis(beta, chunk, 1.0, axis=1)
        if len(M):
            ok = ((beta @ M.T.astype(np.float64)) >= q).all(1)
            beta = beta[ok]
            if not len(beta):
                continue
        vals = np.einsum("ci,ij,cj->c", beta, S, beta)
        j = int(np.argmin(vals))
        if vals[j] < best_val:
            best_val, best = float(vals[j]), beta[j] > 0
    if best is None:
        raise ArgumentError(f"no subset of {p} channels satisfies the keep_one_of constraints")
    return best, best_val


#: how many kept pairs (those of most negative ``S_ij``) one pair move tries
PAIR_CANDIDATES = 256


def _local_search(S: np.ndarray, beta: np.ndarray, M: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Best-improvement 1-swap (one kept channel out, one removed in) until none improves, then
    a pair move (:func:`_pair_move`); again until neither improves."""
    beta = beta.copy()
    diag = np.diag(S)
    scale = max(np.abs(S).max(), 1e-300)
    for _ in range(len(S) ** 2):
        K, O = np.flatnonzero(beta), np.flatnonzero(~beta)
        if not len(K) or not len(O):
            break
        r = S @ beta.astype(S.dtype)  # S beta: a matrix-vector product, not a K-column copy
        # the objective's change for each swap, in place on the one K x O copy of S (six
        # temporaries of that size made 85% of CCP's solve on 1280-channel groups, with the
        # K-column copy for S beta: efficientnet_b0's one pruning step took minutes, break182 F10)
        delta = S[np.ix_(K, O)]
        delta *= -2
        delta += (2 * r[O] + diag[O])[None, :]
        delta += (diag[K] - 2 * r[K])[:, None]
        if len(M):
            critical = M[M[:, beta].sum(1) <= q]  # constraints held by as few as they need
            if len(critical):
                bad = (critical[:, K][:, :, None] & ~critical[:, O][:, None, :]).any(0)
                delta = np.where(bad, np.inf, delta)
        i, j = np.unravel_index(int(np.argmin(delta)), delta.shape)
        if delta[i, j] < -1e-12 * scale:
            beta[K[i]], beta[O[j]] = False, True
            continue
        moved = _pair_move(S, beta, r, M, q, 1e-12 * scale)
        if moved is None:
            break
        beta = moved
    return beta


def _pair_move(S: np.ndarray, beta: np.ndarray, r: np.ndarray, M: np.ndarray, q: np.ndarray,
               tol: float):
    """Remove two kept channels together and put back the two removed ones that then cost
    least, if that lowers the objective: the move that takes out a cancelling pair (channels
    whose effects cancel, so that removing both costs little and either alone much: a
    strongly negative ``S_ij``), which neither backward elimination nor a 1-swap can make.
    Each kept channel's most negative ``S_ij`` partner is a candidate, the ``PAIR_CANDIDATES``
    most negative tried at once, O(n) each. Returns the improved ``beta``, or None."""
    K = np.flatnonzero(beta)
    if len(K) < 2 or len(K) > len(S) - 2:
        return None
    diag = np.diag(S)
    # each kept channel's most cancelling kept partner (a row minimum: no K^2 index arrays,
    # which made a 4096-channel group's prune step 4x slower, break87 #4)
    inner = S[np.ix_(K, K)]
    np.fill_diagonal(inner, np.inf)
    partner = inner.argmin(1)
    values = inner[np.arange(len(K)), partner]
    top = min(PAIR_CANDIDATES, len(K))
    pick = np.argpartition(values, top - 1)[:top]
    pick = pick[values[pick] < 0]  # a pair without cancellation costs at least its two singles
    if not len(pick):
        return None
    i, j = K[pick], K[partner[pick]]
    at = np.arange(len(pick))
    removal = -2 * (r[i] + r[j]) + diag[i] + diag[j] + 2 * S[i, j]
    left = r[None, :] - S[i] - S[j]  # S beta per candidate, the pair removed
    allowed = np.broadcast_to(~beta, left.shape).copy()
    allowed[at, i] = allowed[at, j] = True  # (a channel may come straight back)
    add1 = np.where(allowed, 2 * left + diag, np.inf)
    k = add1.argmin(1)
    allowed[at, k] = False
    add2 = np.where(allowed, 2 * (left + S[k]) + diag, np.inf)
    m = add2.argmin(1)
    delta = removal + add1[at, k] + add2[at, m]
    for c in np.argsort(delta, kind="stable"):
        if not delta[c] < -tol:
            return None
        trial = beta.copy()
        trial[[i[c], j[c]]] = False
        trial[[k[c], m[c]]] = True
        if not len(M) or (M[:, trial].sum(1) >= q).all():  # no keep_one_of set below its need
            return trial
    return None


def best_subsets(S: np.ndarray, counts, keep_one_of=(), need=None, *,
                 swaps: bool = True) -> dict[int, tuple[np.ndarray, float]]:
    """For every ``p`` in ``counts``: a good ``beta`` (bool) with ``p`` ones and its objective,
    by greedy backward elimination from all-kept (one pass gives every count) plus local search
    at each requested count (1-swaps and pair moves). O(n^2) for the path (its objective kept
    as it goes), O(n^2) per move. ``S`` need not be symmetric: ``beta^T S beta`` is that of
    ``(S + S^T) / 2``, which is solved. Raises ValueError when a count is not in 1..n."""
    S = np.asarray(S, np.float64)
    S = (S + S.T) / 2
    n = len(S)
    M, q = _constraint_matrix(n, keep_one_of, need)
    wanted = sorted(set(_check_counts(n, counts)), reverse=True)
    beta = np.ones(n, dtype=bool)
    r = S.sum(1)
    f = float(r.sum())
    diag = np.diag(S)
    held = M.sum(1) if len(M) else np.zeros(0, dtype=np.int64)
    out = {}
    for size in range(n, wanted[-1] - 1, -1):
        if size in wanted:  # the path's running objective, or the swapped subset's own
            if swaps and size < n:
                b = _local_search(S, beta, M, q)
                out[size] = (b, objective(S, b))
            else:
                out[size] = (beta.copy(), f)
        if size == wanted[-1]:
            break
        removable = beta.copy()
        if len(M):
            removable &= ~(M[held <= q].any(0))
        if not removable.any():
            # sets that cross (shufflenet's) can stop it above counts that meet them: those
            # grow from the floor subset instead (break213 F2)
            rest = [p for p in wanted if p < size]
            floor = _floor_subset(n, keep_one_of, need)
            if len(floor) > rest[-1]:
                # (break147 F2: a smaller set can exist where keep_one_of sets overlap, so the
                # message names the search's limit, not the constraints')
                raise ArgumentError(f"the greedy elimination cannot keep fewer than {size} "
                                    "channels under these keep_one_of constraints; "
                                    "solve_exhaustive searches every subset (CCP's exhaustive_max, "
                                    f"up to {EXHAUSTIVE_MAX_LIMIT} channels)")
            out.update(_grown(S, floor, rest, M, q, swaps))
            return out
        delta = np.where(removable, -2 * r + diag, np.inf)
        i = int(np.argmin(delta))
        beta[i] = False
        f += float(delta[i])
        r -= S[:, i]
        if len(M):
            held -= M[:, i]
    return out


def _grown(S: np.ndarray, floor: np.ndarray, counts, M: np.ndarray, q: np.ndarray,
           swaps: bool) -> dict[int, tuple[np.ndarray, float]]:
    """Subsets of each of ``counts`` (none below ``len(floor)``) grown from ``floor`` by greedy
    addition (the channel that raises the objective least, O(n) each with a running
    ``S beta``), then the local search at each count: every one holds what ``floor`` holds."""
    beta = np.zeros(len(S), dtype=bool)
    beta[floor] = True
    r = S @ beta.astype(np.float64)
    diag = np.diag(S)
    out = {}
    for size in range(int(beta.sum()), max(counts) + 1):
        if size in counts:
            b = _local_search(S, beta, M, q) if swaps else beta.copy()
            out[size] = (b, objective(S, b))
        if size == max(counts):
            break
        i = int(np.argmin(np.where(beta, np.inf, 2 * r + diag)))
        beta[i] = True
        r += S[:, i]
    return out


def solve(S: np.ndarray, p: int, keep_one_of=(), need=None, *,
          exhaustive_max: int = 12) -> tuple[np.ndarray, float]:
    """``min beta^T S beta, 1^T beta = p``: exhaustive up to ``exhaustive_max`` channels,
    greedy elimination + local search (1-swaps, pair moves) beyond."""
    if len(S) <= exhaustive_max:
        return solve_exhaustive(S, p, keep_one_of, need)
    return best_subsets(S, [p], keep_one_of, need)[p]


# ----------------------------------------------------------------------------- the method

#: a cost-targeted round leaves at most this fraction of the dense cost unused where a price
#: per kept channel can fill it (:meth:`CCP._allocate_filling`)
_FILLED = 0.01


def filling_price(options: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """The least value per unit of cost that makes every group's option values rise with the
    option's cost: ``options`` holds per group (option costs, option values), options ordered
    by kept count. 0 when they already do. With ``price * cost`` added to every option's value
    (one line for all groups), a more costly option is never worth less: the upper end of
    :meth:`CCP._allocate_filling`'s search."""
    price = 0.0
    for costs, values in options:
        # per distinct cost, the best and the worst option: each cost level's worst must beat
        # the level below's best (neighbouring levels suffice: a level's best is at least its
        # worst). Options of one cost each were compared with their neighbour in cost order
        # only, which skipped a drop across a tie (break147 F1: a cost flat over some widths
        # gave too low a price, and CCP adaptive landed far under its target)
        levels, level_of = np.unique(np.asarray(costs, dtype=np.float64), return_inverse=True)
        if len(levels) < 2:
            continue
        values = np.asarray(values, dtype=np.float64)
        best, worst = np.full(len(levels), -np.inf), np.full(len(levels), np.inf)
        np.maximum.at(best, level_of, values)
        np.minimum.at(worst, level_of, values)
        price = max(price, float(((best[:-1] - worst[1:]) / np.diff(levels)).max()))
    return price * (1 + 1e-6)  # strictly: ties go to the costlier option


#: the widest group CCP searches exhaustively (C(20, 10) = 184,756 subsets, held at once)
EXHAUSTIVE_MAX_LIMIT = 20

#: seconds of one round's channel choice after which it says so, with the
#: lever (a coarser channel_step)
SLOW_SOLVE_S = 30.0
#: and again every this many seconds while it runs
SLOW_SOLVE_AGAIN_S = 60.0


class CCP(PruningMethod):
    """CCP (Peng et al., ICML 2019): second-order pairwise statistics of the channels,
    gathered from the trainer's own steps, and a 0-1 quadratic program per group for the
    channels to keep (the module's docstring gives the objective, the solver and the loop).

    Memory: one float64 C x C matrix per group of C channels (8 * sum C^2 bytes), from
    construction (on the training device once it collects), and in :meth:`state_dict` (so in
    every checkpoint):
    62 MiB for torchvision's resnet50, 401 MiB for convnext_tiny (3.7x its weights).

    Args:
        prepared: the model :func:`fxprune.prepare` returned.
        target: fraction of the dense cost to keep (None: 0.5); unused beside ``ratio`` in
            ``mode="ratio"`` (a warning says so).
        cost: as :class:`SMCP`'s (``"flops"``, ``"params"``, a latency table...).
        mode: ``"ratio"`` (every group keeps ``ratio`` of its channels; None: the largest
            common ratio within ``target``) or ``"adaptive"`` (fxprune's allocator picks the
            counts under ``target``).
        collect: the optimizer steps whose statistics each pruning round uses.
        prune_at: the step (from 1) of the first round (None: ``collect``); rounds,
            round_every: that many rounds, that many steps apart (the ratio or target moving
            linearly to its final value; pruned channels stay pruned).
        channel_step: widths per group are multiples of it (8, as SMCP's: counts off
            multiples of 8 ran slower than dense on ONNX Runtime's blocked kernels; 1 for the
            paper's per-channel choice).
        min_kept: the share it keeps at least, in [0, 1], of every group's channels and of
            each layer's part of a group (a conv writing one piece of a concatenated group),
            each rounded up, counted in the group's positions (0.25: no layer loses more
            than 3/4 of its channels, but where a channel shuffle ties one position to several
            of a layer's input channels, as in shufflenet_v2, that input may; Torch-Pruning's
            ``max_pruning_ratio`` is ``1 - min_kept``): a floor against layer collapse,
            which a global allocation can otherwise drive to ``channel_step`` channels.
        exhaustive_max, swaps: groups of at most this many channels are solved exhaustively;
            wider ones greedily, then with 1-swaps and pair moves (``swaps=False``: greedy only).
        loss_reduction: ``"mean"`` or ``"sum"``, as the trainer's loss reduces its batch.
        collect_bn: ``"train"`` or ``"eval"``: the batch norms' mode in the collecting
            forwards.
        resolution, max_resolves: the allocator's, as :class:`SMCP`'s.
        reduce_fn: sums the statistics over processes (rank-local activation terms).
        scaler: the loop's ``torch.amp.GradScaler``, whose scale the statistics undo.

    Raises:
        ValueError: an argument out of range.
    """

    #: the cost fraction kept when ``target`` is None
    default_target = DEFAULT_TARGET
    name = "ccp"
    state_keys = ("step", "stats", "masks", "dead", "history")
    #: its statistics come from activation hooks, each process's own samples: ``reduce_fn`` (a
    #: float64 sum over processes), applied before each decision; under torch.distributed it
    #: defaults to :func:`fxprune.distributed.all_reduce_sum` (each rank decided on its own
    #: shard, and the ranks' masks differed: break24 #8)
    rank_local_statistics = True

    @trainable_state
    def __init__(self, prepared: fx.GraphModule, target: float | None = None, cost="flops", *,
                 mode: str = "ratio", ratio: float | None = None, collect: int = 20,
                 prune_at: int | None = None, rounds: int = 1, round_every: int = 100,
                 channel_step: int = 8, exhaustive_max: int = 12, swaps: bool = True,
                 loss_reduction: str = "mean", collect_bn: str = "train",
                 resolution: int = DEFAULT_RESOLUTION,
                 max_resolves: int = DEFAULT_MAX_RESOLVES, reduce_fn=None, scaler=None,
                 min_kept: float = 0.0):
        if mode not in ("ratio", "adaptive"):
            raise ArgumentError(f"mode must be 'ratio' (per-layer ratio, CCP) or 'adaptive' "
                                f"(counts by the allocator under a cost target), got {mode!r}")
        if target is not None:
            check_fraction("target", target, "the fraction of the dense cost to keep")
        if ratio is not None:
            check_fraction("ratio", ratio, "the fraction of each group's channels to keep")
        if mode == "ratio":
            warn_unused_target("CCP", target, "ratio", ratio, "adaptive")
            warn_unused_allocator_settings("CCP", "adaptive", resolution, max_resolves)
        if collect_bn not in ("eval", "train"):
            raise ArgumentError(f"collect_bn must be 'eval' (per-sample terms) or 'train', got {collect_bn!r}")
        # round_every 0 put every round on one step, and only the first ran
        for name, value in (("rounds", rounds), ("collect", collect), ("round_every", round_every),
                            ("channel_step", channel_step), ("resolution", resolution),
                            ("max_resolves", max_resolves)):
            check_number(name, value, 1, integer=True)
        check_number("exhaustive_max", exhaustive_max, 0, integer=True)
        if exhaustive_max > EXHAUSTIVE_MAX_LIMIT:  # break52 #1: 40 took all memory, unnamed
            raise ArgumentError(
                f"exhaustive_max must be <= {EXHAUSTIVE_MAX_LIMIT}, got {exhaustive_max}: the "
                f"exact search over a group of n channels enumerates up to C(n, n/2) subsets "
                f"(C({EXHAUSTIVE_MAX_LIMIT}, {EXHAUSTIVE_MAX_LIMIT // 2}) = "
                f"{math.comb(EXHAUSTIVE_MAX_LIMIT, EXHAUSTIVE_MAX_LIMIT // 2):,}; C(32, 16) = "
                f"{math.comb(32, 16):,}); wider groups use the greedy search with swaps")
        if prune_at is not None:
            check_number("prune_at", prune_at, integer=True)
            if prune_at < 1:  # step() counts from 1: step 0 never comes
                raise ArgumentError(f"prune_at is the optimizer step (from 1) of the first pruning; got "
                                    f"{prune_at}, which would never prune: give 1 or more (None: collect)")
        if rounds > 1 and round_every < collect:
            warn(f"CCP: round_every ({round_every}) < collect ({collect}): each later round "
                 f"collects over the {round_every} steps since the one before, not {collect}")
        if mode == "adaptive" and ratio is not None:  # given, it would do nothing
            warn(f"CCP: ratio={ratio:g} is not used in mode='adaptive', where the allocator"
                 " sets each group's count under target; drop ratio (a recipe: --set "
                 "prune.ratio=null) or use mode='ratio'", RuntimeWarning)
        if prune_at is not None and prune_at < collect:
            warn(f"CCP: prune_at ({prune_at}) < collect ({collect}): the first round collects "
                 f"over {prune_at} steps only")
        super().__init__(prepared, cost, channel_step, min_kept)
        self.mode, self.cost_target = mode, DEFAULT_TARGET if target is None else float(target)
        #: the cost fraction this method promises (None: a fixed ratio, no cost promise)
        self.target = None if (mode == "ratio" and ratio is not None) else self.cost_target
        if self.target is not None:  # known now, not at the first round, steps into training
            self.check_reachable(self.target)
        else:
            self._check_some_group_prunes()
        self._target_followed = self.target  # (see _follow_target)
        self.ratio = None if ratio is None else float(ratio)
        self._check_ratio_above_floor("ratio", self.ratio)
        # (ratio mode under a cost target: said at its last round, where the cost it reaches is
        # known; at construction a figure without the channels picked was 0.612 for a run that
        # reached 0.643, break105 F7)
        self.collect, self.rounds, self.round_every = int(collect), int(rounds), int(round_every)
        self.prune_at = int(prune_at if prune_at is not None else collect)
        self.exhaustive_max, self.swaps = int(exhaustive_max), bool(swaps)
        self.resolution, self.max_resolves, self._reduce_fn = resolution, max_resolves, reduce_fn
        self._rank_pending = False  # a loaded state whose rank is not known yet (load_state_dict)
        #: a ``torch.amp.GradScaler``: the activation gradients the statistics read come from
        #: the scaled loss (``unscale_`` reaches only the parameters' .grad), so each collected
        #: step divides by its scale, and a step whose terms overflowed is dropped
        if scaler is not None and not (callable(getattr(scaler, "get_scale", None))
                                       and callable(getattr(scaler, "is_enabled", None))):
            raise ArgumentTypeError(f"scaler is the loop's torch.amp.GradScaler (or None), got "
                                    f"{type(scaler).__name__}")
        check_bool("swaps", swaps)
        self.scaler = scaler
        self.collect_bn = collect_bn
        self._bns = [m for m in prepared.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        self._bn_modes: list[bool] | None = None
        self._open(loss_reduction)
        self._set_collecting(self._collecting(1))
        set_straight_through(prepared, False)  # pruned channels are gone for good: no gradient
        self.dead = np.zeros(self.index.n, dtype=bool)
        self.dropped_steps = 0  # collected steps whose terms overflowed (with a scaler)
        self.skipped_rounds = 0  # rounds with no statistics to decide on (warned of)
        self._slow_solve_said = None  # (round start, time) a long channel choice was last said
        self._dropped_at_decision = 0  # dropped_steps at the last round's decision

    @property
    def reduce_fn(self):
        """What sums the statistics over processes before a decision: the one given, else under
        torch.distributed with several processes :func:`fxprune.distributed.all_reduce_sum`
        (read when used, so a CCP built before ``init_process_group`` still sums)."""
        if self._reduce_fn is None and fxdist.is_distributed() and fxdist.world_size() > 1:
            return fxdist.all_reduce_sum  # every process steps at once under DDP
        return self._reduce_fn

    @reduce_fn.setter
    def reduce_fn(self, fn) -> None:
        self._reduce_fn = fn

    def sync_state(self) -> None:
        """Under several processes, call on every process before rank 0 saves
        :meth:`state_dict` (``fxprune train`` and the Lightning callback do): the statistics
        collected so far are summed over the processes onto rank 0, the others keeping none, so
        a checkpoint taken inside a collection window holds every process's samples and resumes
        on any number of processes. A collective inside a collection window;
        nothing to do outside one or without a ``reduce_fn``."""
        self._settle_rank()
        fn = self.reduce_fn
        # inside a window: collected, not yet decided (the same on every process)
        if (fn is None or not self._collecting(self.step_count)
                or self.step_count in self.prune_steps()):
            return
        self.stats.sync(fn)
        if fxdist.rank() != 0:  # rank 0 holds the sum; the next decision's sync adds the rest
            self.stats.reset()

    def _keep_loaded_sums_on_rank_0(self, rank: int) -> None:
        if rank != 0 and (self.reduce_fn is not None or fxdist.launched_with_several_processes()):
            self.stats.reset()

    def _settle_rank(self) -> None:
        """A state loaded before the process group existed, in a process no launcher named:
        its sums stay on rank 0 only, now that the group says which this is (else one)."""
        if self._rank_pending:
            self._rank_pending = False
            if fxdist.is_distributed():
                self._keep_loaded_sums_on_rank_0(fxdist.rank())

    def prune_steps(self) -> list[int]:
        """The optimizer steps at which the rounds are decided (``prune_at``, then every
        ``round_every``)."""
        return [self.prune_at + k * self.round_every for k in range(self.rounds)]

    def _rounds_decided(self) -> int:
        """Rounds pruned (each a history record) or skipped so far."""
        return sum(1 for r in self.history if "round" in r) + self.skipped_rounds

    def _round_due(self) -> int | None:
        """The round to decide at this step: the next undecided one, once its step is reached.
        A run resumed on another number of processes may find that step passed (the steps per
        epoch moved the schedule before the checkpoint's step: break160 F5, it never pruned
        and ended dense): decided now, said; or a decided round's step ahead (moved later:
        review161 F7, it was decided twice): not decided again."""
        decided = self._rounds_decided()
        if decided >= self.rounds or self.step_count < self.prune_steps()[decided]:
            return None
        if self.step_count > self.prune_steps()[decided]:
            self._owed = True
            warn(f"CCP: round {decided + 1} was scheduled at step {self.prune_steps()[decided]}, "
                 f"before this run's step {self.step_count} (the schedule moved since the state "
                 "was saved: another number of processes or steps per epoch): pruned now",
                 RuntimeWarning)
        return decided + 1

    def _collecting(self, step: int) -> bool:
        return any(p - self.collect < step <= p for p in self.prune_steps())

    def step(self, loss=None) -> dict | None:
        """After ``loss.backward()``: take this batch's per-sample terms if collecting; prune at
        the scheduled steps. The taps for the next batch switch on one step ahead."""
        self._settle_rank()
        self.step_count += 1
        self.check_step()
        last = self.prune_steps()[-1]
        self._follow_target(done=f"its last round (step {last})" if self.step_count > last else None,
                            fixed=f"ratio={self.ratio}")
        if self._collecting(self.step_count):
            if self.scaler is not None and self.scaler.is_enabled():
                # collection steps only (a host read each): the scale this backward ran at
                self.stats.taps.loss_scale = float(self.scaler.get_scale())
                # an overflowed step is dropped, as the scaler skips it too
                self.dropped_steps += self.stats.observe(finite_only=True)
            else:
                self.stats.observe()
        else:
            self.stats.taps.take()
        self._set_collecting(self._collecting(self.step_count + 1))
        k = self._round_due()
        if k is not None:
            record = self.prune(k)
            self._owed = False
            if k == self.rounds:  # statistics are no longer needed: the model carries no hooks
                self._close()
            return record
        return None

    @property
    def grad_scale(self) -> float | None:
        """What the trainer multiplies each micro-batch's mean loss by before ``backward``
        (:class:`~fxprune.importance.InputTaps`); None: 1/k for k micro-batches per step."""
        return self.stats.taps.grad_scale

    @grad_scale.setter
    def grad_scale(self, value: float | None) -> None:
        self.stats.taps.grad_scale = value

    def discard_step(self) -> None:
        """Drop this step's statistics: the trainer skips the step (an overflowed AMP step)."""
        self.stats.taps.take()

    def _set_collecting(self, on: bool) -> None:
        """Taps on for the next forward (and, with ``collect_bn="eval"``, eval-mode norms)."""
        self.stats.taps.enabled = on

    def _norms_to_eval(self, model, args) -> None:
        """Before a training forward that collects: batch norms in eval mode for it."""
        if self.stats.taps.enabled and model.training and self._bn_modes is None:
            self._bn_modes = [bn.training for bn in self._bns]
            for bn in self._bns:
                bn.train(False)

    def _norms_back(self, model, args, output) -> None:
        """After that forward (or its exception): the norms' own modes back."""
        if self._bn_modes is not None:
            for bn, mode in zip(self._bns, self._bn_modes):
                bn.train(mode)
            self._bn_modes = None

    def _open(self, loss_reduction: str) -> None:
        """The statistics' taps on the readers, and (``collect_bn="eval"``) the hooks that put
        the norms in eval mode around each collecting forward."""
        self.stats = PairwiseTaylor(self.prepared, self.consumers, self.index.offsets, loss_reduction)
        self._bn_hooks = []
        if self.collect_bn == "eval" and self._bns:
            # set around each forward, not once per step: a validation pass's .eval()/.train()
            # between steps would undo it, and the user's frozen norms get their modes back
            self._bn_hooks = [
                self.prepared.register_forward_pre_hook(MethodHook(self._norms_to_eval)),
                self.prepared.register_forward_hook(MethodHook(self._norms_back), always_call=True)]

    def _close(self) -> None:
        self.stats.close()
        for h in self._bn_hooks:
            h.remove()
        self._bn_hooks = []

    def finalize_masks(self) -> bool:
        """Remove the statistics hooks (a finalized model must not carry them); masks stay.
        A run that ends before the last round keeps the masks of the rounds done (warned of
        when they cost more than ``target``)."""
        # its rounds may all come early (prune_at=4): the run's end is its last chance to say
        # the prepared model never trained (break114 F2)
        self.check_training()
        self._close()
        if self.skipped_rounds:  # (ratio mode has no target to be above: this says it)
            warn(f"CCP.finalize_masks: {self.skipped_rounds} of {self.rounds} round(s) were skipped "
                 "for want of statistics (warned of then): the masks are those of the rounds done",
                 RuntimeWarning)
        self._warn_if_above_target()
        return False

    def _way_to_target(self) -> str:
        last = self.prune_steps()[-1]
        if self.stats.taps.closed and self.step_count < last:
            # (break105 F6: "train on" could not work: the rounds left have no statistics)
            return (f"finalize_masks removed CCP's statistics taps, so its rounds left (the last "
                    f"at step {last}) cannot run: call it after the last round, build a new CCP "
                    "on the model to prune further, or finalize this model knowingly")
        return super()._way_to_target()

    # -- selection ---------------------------------------------------------------------------
    def _group_problem(self, i: int):
        """Group i's keep-form S over its alive channels, their positions, and its
        constraints: ``(sets, need)``, each part a layer holds and the fewest of its alive
        channels kept (:meth:`UnitIndex.piece_floors`)."""
        a, B = self.stats.moments(i)
        if not (np.isfinite(a).all() and np.isfinite(B).all()):
            raise DivergedError(
                f"CCP: the statistics of group {self.index.groups[i].name!r} hold inf/nan at step "
                f"{self.step_count}: training diverged during collection (lower the learning rate "
                "or, with collect_bn='eval', use collect_bn='train'), or a mixed-precision step "
                "overflowed: with a GradScaler, pass it as CCP(..., scaler=scaler)")
        sl = self.index.group_slice(i)
        alive = np.flatnonzero(~self.dead[sl])
        S = keep_form(a[alive], B[np.ix_(alive, alive)])
        where = {p: j for j, p in enumerate(alive.tolist())}
        sets, need = [], []
        for positions, floor in self.index.piece_floors(i):
            inside = [where[p] for p in np.asarray(positions).tolist() if p in where]
            if inside:  # (a mask set to 0 by hand stays 0: the floor among the alive)
                sets.append(inside)
                need.append(min(floor, len(inside)))
        return S, alive, (sets, need)

    def _counts(self, i: int, alive: int, constraints) -> np.ndarray:
        g = self.index.groups[i]
        # min_kept's floor, among the channels still alive (a mask set to 0 by hand stays 0),
        # and each layer's: as few as meet its parts' floors (a piece and a slice of it need
        # no more than the piece, review212 R1; break213 F2: their sum kept shufflenet's groups
        # whole, and a target the constructor accepted failed at the pruning step)
        fewest = len(_floor_subset(alive, *constraints))
        low = max(1, min(fewest, alive), min(self.index.min_counts[i], alive))
        return allowed_counts(g.size, self.channel_step, low, alive, self.index.unit_channels[i])

    def _subsets(self, S, counts, constraints, swaps=None):
        if len(S) <= self.exhaustive_max:
            return {int(p): solve_exhaustive(S, int(p), *constraints) for p in counts}
        return best_subsets(S, counts, *constraints, swaps=self.swaps if swaps is None else swaps)

    def prune(self, round_k: int = 1) -> dict | None:
        """Decide round ``round_k`` now, from the statistics collected so far: each group's
        kept channels by the pairwise second-order selection, masks set; the round's record
        (None when it was skipped). ``step()`` calls it at :meth:`prune_steps`; called by
        hand it is one more round."""
        start = time.perf_counter()
        self.check_training()  # (break105 F4: an optimizer over the original model, unsaid)
        # per-sample terms come from activation hooks: this process's samples only; summed
        # over the processes (one all-reduce) before the decision
        self.stats.sync(self.reduce_fn)
        where = f"CCP: round {round_k} at step {self.step_count}"
        if self.stats.taps.backward_owed:  # its backward would fail on the masks set below
            warn(f"{where}: the last training forward's backward has not run, and "
                 "pruning now changes the masks its graph holds, so a loss.backward() "
                 "after this fails (an in-place error): call pruner.step() after "
                 "loss.backward()", RuntimeWarning)
        dropped, self._dropped_at_decision = (self.dropped_steps - self._dropped_at_decision,
                                              self.dropped_steps)
        # taps removed (finalize_masks): samples from before are half a window, and the
        # warning said no round runs after (break128 F3: one did, pruning 40 more channels)
        if self.stats.samples == 0 or self.stats.taps.closed:
            self.skipped_rounds += 1
            if self.stats.taps.closed:
                why = ("finalize_masks() ended them (or another pruner built on the model "
                       "did): build a new CCP on the model to prune again")
            elif getattr(self, "_owed", False):  # (review161 F6: not the loop's fault)
                self._owed = False
                why = ("the state this run resumed from held no statistics for it (its collection "
                       "window moved before the checkpoint's step); resume on the number of "
                       "processes that saved it, or from a checkpoint after its window opened")
            elif dropped:  # break51 #4: the loop was right; the loss scale was not settled
                why = (f"all {dropped} collected step(s) overflowed under the loss scaler and were "
                       "dropped (as the scaler skips them): collect over more steps, or prune "
                       "later (prune_at), once the scale has settled")
            else:
                why = ("call pruner.step() after loss.backward() and before optimizer.zero_grad(), "
                       "with grad enabled in train mode" + self._no_gradient_cause())
            what = ("its statistics taps were removed" if self.stats.taps.closed else
                    "no per-sample terms were collected")  # (review130 F4: said of 4 samples)
            warn(f"{where} skipped: {what}, so channels cannot be ranked; {why}", RuntimeWarning)
            return None
        widest = max(g.size for g in self.index.groups)
        if self.stats.samples < widest:
            # the pairwise terms of a group are a sum over samples of rank-one terms: with
            # fewer samples than its channels they are rank-deficient, and the choice among
            # its channels is noise (break193 F4: 12 samples for a 1024-channel group, unsaid)
            warn(f"{where}: statistics from {int(self.stats.samples)} samples for groups of up "
                 f"to {widest} channels: fewer samples than channels leave the pairwise terms "
                 "rank-deficient, so the channel choice is close to noise; collect over more "
                 "steps or larger batches (about 10x the widest group's channels)",
                 RuntimeWarning)
        frac = round_k / self.rounds
        before = self._kept_now()
        options, problems, predicted_by = [], [], []
        # one common ratio: the counts it picks depend on costs only, so the swaps run at the
        # picked count alone (below), not at each of a wide group's hundreds of counts
        uniform = self.mode == "ratio" and self.ratio is None
        for i, g in enumerate(self.index.groups):
            self._say_a_slow_solve(where, start, i)
            S, alive, constraints = self._group_problem(i)
            counts = self._counts(i, len(alive), constraints)
            if self.mode == "ratio" and self.ratio is not None:
                want = (1 - (1 - self.ratio) * frac) * g.size
                counts = counts[[int(np.argmin(np.abs(counts - want)))]]
            subsets = self._subsets(S, counts, constraints, swaps=False if uniform else None)
            full = objective(S, np.ones(len(S), bool))
            keep = np.zeros((len(counts), g.size), dtype=bool)
            values = np.zeros(len(counts))
            for j, p in enumerate(counts.tolist()):
                beta, val = subsets[p]
                keep[j, alive[beta]] = True
                values[j] = full - val  # minus the predicted loss change of this subset
            group = GroupOptions(counts, values, keep)
            if self.mode == "adaptive":  # the constructor's floor, valued by the same form:
                # the QP's subsets alone can cost more where a group's channels cost unequally,
                # and a target it accepted failed mid-run (review127 F2, as break36 #1 in SMCP)
                group = self._with_floor(i, group, dead=self.dead[self.index.group_slice(i)],
                                         value=lambda floor: full - objective(S, floor[alive]))
            predicted_by.append(group.values.copy())
            options.append(group)
            problems.append((S, alive, constraints, full))
        # and where the last groups took the time (review172 F4: mobilenet_v2's widest, last
        # group took 59% of its solve), said before the next round's
        self._say_a_slow_solve(where, start, len(self.index.groups))
        if self.mode == "ratio" and self.ratio is not None:
            choice = [0] * len(options)
            kept = np.concatenate([o.keep[0] for o in options])
            target = None
        elif self.mode == "ratio":  # one ratio for every group: the largest that fits the target
            target = 1 - (1 - self.cost_target) * frac
            result = allocate_uniform(options, self.budget, target, [g.size for g in self.index.groups],
                                      widths=self._widths())
            choice = result.choice
            if self.swaps:
                choice = self._swapped_uniform(options, problems, predicted_by, choice,
                                               result.rho[1], target)
            kept = kept_from(self.index.offsets, options, choice)
            if round_k == self.rounds:  # as CUCB says it (break45)
                self._warn_uniform_unused("CCP", self.budget.fraction(kept), "mode='adaptive'")
        else:
            target = 1 - (1 - self.cost_target) * frac
            result = self._allocate_filling(options, predicted_by, target, before)
            kept, choice = result.kept, result.choice
        self.index.set_masks(self.prepared, kept.astype(np.float32))
        self.dead |= ~kept
        predicted = float(-sum(v[c] for v, c in zip(predicted_by, choice)))
        samples = int(self.stats.samples)
        self.stats.reset()
        record = {"step": self.step_count, "round": round_k, "mode": self.mode, "target": target,
                  "actual": float(self.budget.fraction(kept)), "kept": int(kept.sum()),
                  "channels": self.index.n, "predicted_loss_change": predicted,
                  "samples": samples, "solve_s": time.perf_counter() - start,
                  "exhaustive_groups": int(sum(len(p[0]) <= self.exhaustive_max for p in problems))}
        self.history.append(record)
        return record

    def _swap_at(self, problem, option, c: int, values: np.ndarray) -> None:
        """Option ``c`` of a group: the subset best_subsets' swaps give at its count, in place
        of the greedy one it was priced with (groups searched exhaustively have theirs)."""
        S, alive, constraints, full = problem
        if len(S) > self.exhaustive_max:
            p = int(option.counts[c])
            beta, val = best_subsets(S, [p], *constraints)[p]
            option.keep[c] = False
            option.keep[c, alive[beta]] = True
            option.values[c] = values[c] = full - val

    def _swapped_uniform(self, options, problems, predicted_by, choice, high: float,
                         target: float) -> list[int]:
        """The common-ratio choice with each group's subset improved by swaps at its count,
        kept where it fits ``target``, and then widened while the swapped subsets still fit:
        the ratio was sized on the greedy subsets, and where a group's channels cost unequally
        (split pieces) the swapped ones cost less, which left the budget short (break193 F3:
        0.462 of dense for a 0.5 target where a wider common ratio fitted at 0.491) or more,
        above the target (review127 F3: then the greedy subsets stay). ``high``: the top of
        the ratio range that gives ``choice``."""
        limit = target * self.budget.dense * (1 + 1e-9)
        greedy = [(o.keep[c].copy(), float(o.values[c])) for o, c in zip(options, choice)]
        for problem, o, c, v in zip(problems, options, choice, predicted_by):
            self._swap_at(problem, o, c, v)
        if self.budget.total(kept_from(self.index.offsets, options, choice)) > limit:
            for (keep, value), o, c, v in zip(greedy, options, choice, predicted_by):
                o.keep[c], o.values[c], v[c] = keep, value, value
            return choice
        sizes = [g.size for g in self.index.groups]
        # the ratios above ``high`` where some group's option widens (midpoints of its counts)
        steps = sorted({float(o.counts[j] + o.counts[j + 1]) / (2 * s)
                        for o, s in zip(options, sizes) for j in range(len(o.counts) - 1)
                        if float(o.counts[j] + o.counts[j + 1]) / (2 * s) > high})
        for rho in steps:
            wider = [int(np.argmin(np.abs(o.counts - rho * s * (1 + 1e-12)))) for o, s in
                     zip(options, sizes)]
            saved = {}
            for i, (problem, o, v) in enumerate(zip(problems, options, predicted_by)):
                if wider[i] != choice[i]:
                    saved[i] = (o.keep[wider[i]].copy(), float(o.values[wider[i]]))
                    self._swap_at(problem, o, wider[i], v)
            if self.budget.total(kept_from(self.index.offsets, options, wider)) > limit:
                for i, (keep, value) in saved.items():  # this one does not fit: the last did
                    options[i].keep[wider[i]], options[i].values[wider[i]] = keep, value
                    predicted_by[i][wider[i]] = value
                break
            choice = wider
        return choice

    def _say_a_slow_solve(self, where: str, start: float, done: int) -> None:
        """A round's channel choice past :data:`SLOW_SOLVE_S`, said while it runs, with the
        lever (break170 F5: 4.5 minutes inside one step on mobilenet_v2, the progress bar
        frozen, the advice in the README only), then again every
        :data:`SLOW_SOLVE_AGAIN_S`, each time with the share of the work done, weighted by the
        groups' sizes (break193 F2: "21 of 25 groups" after 33 s read as nearly done, and the
        last, widest groups took 130 s more without a word)."""
        now = time.perf_counter()
        said = getattr(self, "_slow_solve_said", None)  # (the round's start, when last said)
        if not isinstance(said, tuple) or said[0] != start:
            said = None  # (a new round; a bool from an older pickle)
        if now - start <= SLOW_SOLVE_S or (said is not None and now - said[1] < SLOW_SOLVE_AGAIN_S):
            return
        self._slow_solve_said = (start, now)
        # the QP is solved at each count a group may keep (about size / step of them in the
        # adaptive mode, one in a ratio mode), each in time growing with the size squared
        sizes = np.array([g.size for g in self.index.groups], dtype=np.float64)
        counts = np.maximum(sizes // self.channel_step, 1) if self.mode == "adaptive" else 1.0
        work = counts * sizes ** 2
        share = float(work[:done].sum() / max(work.sum(), 1.0))
        progress = (f"{now - start:.0f} s for {done} of {len(self.index.groups)} groups, about "
                    f"{share:.0%} of the work")
        if said is not None:
            warn(f"{where}: still choosing channels: {progress}", RuntimeWarning)
            return
        widest = int(sizes.max())
        coarser = max(16, 2 * self.channel_step)
        warn(f"{where}: choosing channels has taken {progress} (the widest group has {widest} "
             f"channels; channel_step={self.channel_step}): the QP is solved at each count a "
             f"group may keep, so a coarser channel_step (a recipe: --set "
             f"prune.channel_step={coarser}) solves fewer", RuntimeWarning)

    def _allocate_filling(self, options, raw_values, target: float, before) -> Allocation:
        """The allocator's answer under ``target``, with the budget filled: where the predicted
        loss changes leave over 1% of the dense cost unused (the quadratic model predicting
        that removing channels lowers the loss: 0.18-0.26 of dense for a 0.5 target, break24
        #4), the smallest price per unit of cost (bisection, up to :func:`filling_price`) that
        fills it is added to every option's value: a Lagrange multiplier on the lower side of
        the budget. The data still ranks the models near the budget. (Clamping each group's
        values to rise with the count tied them, and a tie-break chose the model: break26 #1.)
        Where no price fills it (coarse options), the costliest answer found is kept."""
        def solve(price, costs=None):
            priced = [GroupOptions(o.counts, v if costs is None else v + price * c, o.keep)
                      for o, v, c in zip(options, raw_values, costs or raw_values)]
            return allocate(priced, self.budget, target, before, resolution=self.resolution,
                            max_resolves=self.max_resolves, widths=self._widths())

        result = solve(0.0)
        if target - result.actual <= _FILLED:
            return result
        costs, _ = self.budget.subset_costs(before, [o.keep for o in options])
        high = filling_price(list(zip(costs, raw_values)))
        if high == 0:
            return result
        filled = solve(high, costs)
        if target - filled.actual > _FILLED:  # no price fills it: coarse options
            return max(result, filled, key=lambda a: a.actual)
        low = 0.0
        for _ in range(16):
            price = (low + high) / 2
            trial = solve(price, costs)
            if target - trial.actual <= _FILLED:
                high, filled = price, trial
            else:
                low = price
        return filled

    def not_copyable(self) -> str | None:
        if self.stats.taps.closed:  # removed (finalize_masks): nothing left tied to this model
            return None  # (break128 F7: refused for taps that were gone)
        return ("its activation taps are hooks on this model's layers (a copy's would collect "
                "nothing)")

    def defining_settings(self) -> dict:
        return {"mode": str(self.mode)}  # per-layer ratio or the allocator: another method

    def run_settings(self) -> dict:
        return {"target": self.target, "ratio": self.ratio, "prune_steps": self.prune_steps(),
                "collect": self.collect, **self._allocation_settings(),
                "exhaustive_max": self.exhaustive_max, "swaps": self.swaps,
                "collect_bn": str(self.collect_bn),
                # the per-sample terms' scale (break128 F6: changed unsaid)
                "loss_reduction": self.stats.taps.loss_reduction}

    # -- resuming ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        if (self.reduce_fn is not None and self.step_count < self.prune_steps()[-1]
                and self.stats.local_samples):
            warn(
                f"CCP.state_dict at step {self.step_count} holds {self.stats.local_samples} "
                "samples of this process only, inside a collection window: call "
                "pruner.sync_state() on every process before rank 0 saves (fxprune train and "
                "the Lightning callback do), or a resumed run decides on other statistics",
                RuntimeWarning)
        return {**self.state_origin(), "step": self.step_count, "groups": self.signature(),
                "run_settings": self.run_settings(),
                "stats": self.stats.state_dict(), "masks": self.index.masks(self.prepared),
                "dead": torch.from_numpy(self.dead.copy()), "history": list(self.history),
                # what finalize_masks and the next round's cause report count (break54 #9)
                "skipped_rounds": self.skipped_rounds, "dropped_steps": self.dropped_steps,
                "dropped_at_decision": self._dropped_at_decision}

    @trainable_state
    def load_state_dict(self, state: dict) -> None:
        self._check_state(state, "masks")
        self._warn_changed_settings(state)
        self.step_count = int(state["step"])
        if self.stats.taps.closed and self.step_count < self.prune_steps()[-1]:
            # this pruner's last round (or finalize_masks) removed its taps: a state from
            # before it collects again (break105 F1: the redone round ran on 16 of 24 samples)
            grad_scale = self.grad_scale  # (review108 F6: a trainer's setting, not the state's)
            self._close()
            self._open(self.stats.taps.loss_reduction)
            self.grad_scale = grad_scale
        self.stats.load_state_dict(state["stats"])
        # rank 0's state holds every process's sums (sync_state): the others start from none.
        # Before init_process_group the launcher's RANK says which process this is (a CCP
        # loaded, then the group created: rank 1 counted rank 0's sums twice, break34 #5);
        # without one (mp.spawn) the group decides at the first step()
        self._rank_pending = not (fxdist.is_distributed() or "RANK" in os.environ)
        if not self._rank_pending:
            self._keep_loaded_sums_on_rank_0(
                fxdist.rank() if fxdist.is_distributed() else int(os.environ["RANK"] or 0))
        self.index.set_masks(self.prepared, state["masks"])
        self.dead = state["dead"].cpu().numpy().astype(bool).copy()  # (a GPU resume maps it there)
        self.history = list(state["history"])
        # (absent from states saved before they were kept: none counted)
        self.skipped_rounds = int(state.get("skipped_rounds", 0))
        self.dropped_steps = int(state.get("dropped_steps", 0))
        self._dropped_at_decision = int(state.get("dropped_at_decision", 0))
        self._set_collecting(self._collecting(self.step_count + 1))
        if self.step_count >= self.prune_steps()[-1] and self._rounds_decided() >= self.rounds:
            self._close()  # (a round still owed keeps its statistics: _missed_round)
        self._restart_training_check()  # (review108 F2: as SMCP's and CUCB's)
