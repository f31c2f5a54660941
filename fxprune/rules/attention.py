"""Ops that contract channels without a weight: matrix products and scaled dot-product attention.

In attention (Vaswani et al. 2017, eq. 1: ``softmax(Q K^T / sqrt(d_k)) V``) the query and key
dims a head's dot product sums over are channels a projection wrote; so are the value dims it
passes on to the output projection. Pruning a query/key dim removes a term of every dot
product, exactly as pruning an input channel of a linear layer removes a term of every output;
so the masked form multiplies the query (the product's left operand) by the group's mask
before the product, and finalize removes that multiply with the channels.

What the methods see of it: a head dim is scored through the weights that read it (the
output projection's columns, its value path); the query/key product adds no importance term,
and cost models price the projections, not the attention products (which shrink too).
"""
from __future__ import annotations

import math

from torch import fx

from .base import ChannelRule, node_arg, set_node_arg


def _batch_labels(ctx, operands: list, out_ndim: int, what: str) -> dict:
    """Labels of the leading (batch) dims of a product's output, broadcast from its operands'
    leading dims (each operand's last two dims are the matrix): operands that meet at a batch
    dim with channels hold the same channels there."""
    out = {}
    for d in range(out_ndim - 2):
        present = []
        for a in operands:
            shape, labels = ctx.shape(a), ctx.labels(a)
            ad = d - (out_ndim - len(shape))
            if 0 <= ad < len(shape) - 2 and not (shape[ad] == 1 and ctx.out_shape()[d] != 1):
                present.append(labels.get(ad))
        labelled = [p for p in present if p is not None]
        if len(labelled) < len(present):
            for p in labelled:
                ctx.untracked(p, f"{what} with an operand whose channels fxprune does not track")
            continue
        for other in labelled[1:]:
            ctx.unify(labelled[0], other, what)
        if labelled:
            out[d] = labelled[0]
    return out


def _with_rows_and_columns(out: dict, nd: int, rows, columns) -> dict:
    """A product's output labels: ``out``'s batch dims, then the left operand's rows and the
    right one's columns (labels or None) as its last two dims."""
    for d, ids in ((nd - 2, rows), (nd - 1, columns)):
        if ids is not None:
            out[d] = ids
    return out


class _MasksLeftOperand(ChannelRule):
    """The masked form of a product over channels: ``node``'s first argument times the mask
    along its last dim (:func:`fxprune.masks.mask_contracted`), a node of its own that
    finalize erases again."""

    def contract(self, ctx, left, left_ids, right_ids, last: int, what: str) -> None:
        """The two dims a product sums over (``left``'s ``last``, labels ``left_ids``, and the
        other operand's, ``right_ids``) hold one set of channels: unified, and ``left`` masked
        there; it must be the node's first positional argument, which the masked form
        replaces. Channels in one of them alone are kept whole (the other would not shrink)."""
        if left_ids is None or right_ids is None:
            for ids in (left_ids, right_ids):
                if ids is not None:
                    ctx.untracked(ids, f"{what} with an operand whose channels fxprune does not track")
            return
        ctx.unify(left_ids, right_ids, what)
        if ctx.node.args and ctx.node.args[0] is left:
            ctx.stat_site((last,), (0,), self)
        else:
            ctx.untracked(left_ids, f"{what}, its left operand passed by keyword")

    def mask_statistics(self, node, gm, masks, mask_dims):
        from fxprune.masks import mask_contracted
        with gm.graph.inserting_before(node):
            masked = gm.graph.call_function(mask_contracted, (node.args[0], masks[0]))
        node.args = (masked, *node.args[1:])

    def unmask_statistics(self, node, gm):
        from fxprune.masks import mask_contracted
        first = node.args[0]
        if isinstance(first, fx.Node) and first.op == "call_function" and first.target is mask_contracted:
            node.args = (first.args[0], *node.args[1:])
            if not first.users:
                gm.graph.erase_node(first)


class MatMul(_MasksLeftOperand):
    """``a @ b`` (``torch.matmul``, ``torch.bmm``, ``torch.mm``) of operands with at least two dims: the
    product sums over ``a``'s last dim and ``b``'s second-to-last, so channels there are one
    set (pruned together, ``a`` masked); ``a``'s rows and ``b``'s columns become the output's
    last two dims; the leading dims broadcast. A vector operand keeps its channels whole."""

    kind = "contracts channels (matrix product)"
    slices = ()

    def propagate(self, ctx):
        node = ctx.node
        a = node_arg(node, 0, "input")
        b = node_arg(node, 1, "mat2" if "mat2" in node.kwargs else "other")
        shapes = [ctx.shape(t) if isinstance(t, fx.Node) else None for t in (a, b)]
        out_shape = ctx.out_shape()
        if out_shape is None or any(s is None or len(s) < 2 for s in shapes) or len(out_shape) < 2:
            ctx.untracked_inputs("a matrix product with a vector or an operand of unknown shape")
            return None
        la, lb = ctx.labels(a), ctx.labels(b)
        nda, ndb, nd = len(shapes[0]), len(shapes[1]), len(out_shape)
        out = _batch_labels(ctx, [a, b], nd, "matrix product's batch dims")
        self.contract(ctx, a, la.get(nda - 1), lb.get(ndb - 2), nda - 1, "summed over by a matrix product")
        return _with_rows_and_columns(out, nd, la.get(nda - 2), lb.get(ndb - 1))


class ScaledDotProductAttention(_MasksLeftOperand):
    """``F.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal, scale)``:
    ``q`` (..., L, E), ``k`` (..., S, E), ``v`` (..., S, Ev) give (..., L, Ev).

    The query/key dims E are one set of channels (each score sums over them; ``q`` is masked),
    the value dims Ev are the output's last dim, the query positions L pass through, and the
    leading dims (batch, heads) broadcast. The key/value positions S are mixed by the softmax
    and kept whole if they hold channels, as are query positions under ``is_causal`` and
    grouped-query attention (``enable_gqa``); an attention mask holds the scores' channels
    (sliced with them) or keeps them whole. The default scale is ``1 / sqrt(E)``: finalize
    writes the dense E's scale into the call, so the pruned model divides as the masked one
    did."""

    kind = "attention (contracts query/key channels)"
    slices = ()

    def propagate(self, ctx):
        node = ctx.node
        q, k, v = (node_arg(node, i, n, None) for i, n in enumerate(("query", "key", "value")))
        attn_mask = node_arg(node, 3, "attn_mask", None)
        shapes = [ctx.shape(t) if isinstance(t, fx.Node) else None for t in (q, k, v)]
        out_shape = ctx.out_shape()
        if out_shape is None or any(s is None or len(s) < 2 for s in shapes):
            ctx.untracked_inputs("attention over operands of unknown shape")
            return None
        if ctx.value(node_arg(node, 7, "enable_gqa", False)):
            ctx.untracked_inputs("grouped-query attention (enable_gqa): key/value heads are "
                                 "repeated to the query heads, which fxprune does not follow")
            return None
        lq, lk, lv = (ctx.labels(t) for t in (q, k, v))
        nq, nk, nv, nd = len(shapes[0]), len(shapes[1]), len(shapes[2]), len(out_shape)
        for labels, nx, what in ((lk, nk, "key"), (lv, nv, "value")):
            if nx - 2 in labels:
                ctx.untracked(labels[nx - 2], f"the {what} positions attention mixes")
        if ctx.value(node_arg(node, 5, "is_causal", False)) and nq - 2 in lq:
            # query i sees keys 0..i: a pruned query position would shift the triangle
            ctx.untracked(lq[nq - 2], "the query positions of causal attention")
        out = _batch_labels(ctx, [q, k, v], nd, "attention's batch dims")
        if isinstance(attn_mask, fx.Node):
            scores = {d: ids for d, ids in out.items()}  # (..., L, S): S holds no channels here
            if nq - 2 in lq:
                scores[nd - 2] = lq[nq - 2]
            self.biased_by(ctx, attn_mask, scores, nd)
        self.contract(ctx, q, lq.get(nq - 1), lk.get(nk - 1), nq - 1, "query/key dims of attention")
        return _with_rows_and_columns(out, nd, lq.get(nq - 2), lv.get(nv - 1))

    @staticmethod
    def biased_by(ctx, attn_mask, scores: dict, nd: int) -> None:
        """The attention mask is added to (or masks) the scores (..., L, S), broadcasting: where
        both hold channels they are the same ones (the mask is sliced with them, as a bias
        added to ``q @ k^T`` is); where only one does, they are kept whole."""
        shape, labels = ctx.shape(attn_mask), ctx.labels(attn_mask)
        labels = labels if isinstance(labels, dict) else {}
        if shape is None:
            for ids in (*scores.values(), *labels.values()):
                ctx.untracked(ids, "an attention mask of unknown shape")
            return
        for d in range(nd):
            md = d - (nd - len(shape))
            broadcast = md < 0 or shape[md] == 1
            a, b = scores.get(d), None if md < 0 else labels.get(md)
            if a is not None and b is not None:
                ctx.unify(a, b, "an attention mask over the scores")
            elif a is not None and not broadcast:
                ctx.untracked(a, "an attention mask over them that holds other channels")
            elif b is not None:
                ctx.untracked(b, "an attention mask holding channels the scores do not")

    def rewrite(self, node, ctx):
        q = node_arg(node, 0, "query")
        labels, shape = ctx.labels(q), ctx.shape(q)
        e = len(shape) - 1
        if e in labels and node_arg(node, 6, "scale", None) is None and \
                ctx.pruned_size(q, e) != shape[e]:
            set_node_arg(node, 6, "scale", 1.0 / math.sqrt(shape[e]))
