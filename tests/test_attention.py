"""Attention's query/key and value dims as channels: the MatMul and ScaledDotProductAttention
rows (fxprune.rules.attention). Before them every channel reaching an attention was kept whole
(timm's ViTs: 13 of 39 groups prunable)."""
import math
import operator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxprune
from fxprune.masks import mask_contracted
from fxprune.summary import count_flops
from fxprune.compare import max_relative_error, run_eval

from helpers import assert_plain, prune_and_check


class Block(nn.Module):
    """A pre-norm transformer block as timm writes it: one qkv projection split into heads,
    attention fused (``F.scaled_dot_product_attention``) or spelled out (``q @ k^T``), an
    output projection, an MLP; ``qk_norm`` adds a LayerNorm over each head's dims."""

    def __init__(self, dim=24, heads=3, fused=True, qk_norm=False):
        super().__init__()
        self.heads, self.head_dim, self.fused = heads, dim // heads, fused
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def attention(self, x):
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.q_norm(k)
        if self.fused:
            x = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = (q * self.head_dim ** -0.5) @ k.transpose(-2, -1)
            x = attn.softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(b, n, self.heads * self.head_dim))

    def forward(self, x):
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.embed = nn.Linear(12, 24)
        self.blocks = nn.Sequential(Block(**kw), Block(**kw))
        self.head = nn.Linear(24, 5)

    def forward(self, x):
        return self.head(self.blocks(self.embed(x)).mean(1))


X = (2, 7, 12)


@pytest.mark.parametrize("fused", [True, False], ids=["sdpa", "matmul"])
@pytest.mark.parametrize("qk_norm", [False, True], ids=["plain", "qk_norm"])
def test_head_dims_prune_exactly(fused, qk_norm):
    torch.manual_seed(0)
    model = TinyViT(fused=fused, qk_norm=qk_norm).eval()
    pm, small = prune_and_check(model, torch.randn(*X))
    groups = {p: g for g in fxprune.channel_groups(pm) for p in g.producers}
    heads = groups["blocks.0.qkv"]
    # one unit is a head dim: its query, key and value rows in every head, and the output
    # projection's columns that read its value
    assert heads.prunable and heads.size == 8, heads
    kept = groups["blocks.0.qkv"].kept
    assert 0 < kept < 8
    assert small.get_submodule("blocks.0.qkv").out_features == 3 * 3 * kept
    assert small.get_submodule("blocks.0.proj").in_features == 3 * kept
    assert count_flops(small, (torch.randn(*X),)) < count_flops(model, (torch.randn(*X),))
    assert not any(n.target is mask_contracted for n in small.graph.nodes)


def test_pruned_attention_keeps_the_dense_scale():
    """F.scaled_dot_product_attention scales by 1/sqrt(E) of the query it is given: pruned to
    E' dims it would divide by sqrt(E') where the masked model divided by sqrt(E). Finalize
    writes the dense scale into the call (the masked check would fail otherwise)."""
    torch.manual_seed(0)
    pm, small = prune_and_check(TinyViT().eval(), torch.randn(*X))
    calls = [n for n in small.graph.nodes if n.target is F.scaled_dot_product_attention]
    assert len(calls) == 2
    assert all(n.kwargs.get("scale") == pytest.approx(1 / math.sqrt(8)) for n in calls)


def test_masked_query_dims_add_nothing_to_the_scores():
    """The masked form multiplies the query by the mask before the product: a masked dim's key
    values, however large, change nothing."""
    torch.manual_seed(0)
    model = TinyViT().eval()
    x = torch.randn(*X)
    pm = fxprune.prepare(model, (x,))
    group = next(g for g in fxprune.channel_groups(pm) if "blocks.0.qkv" in g.producers)
    mask = group.mask
    mask[:] = 1
    mask[2] = 0
    before = run_eval(pm, (x,))
    with torch.no_grad():  # dim 2's key rows of every head, and its value rows
        for h in range(3):
            pm.get_submodule("blocks.0.qkv").weight[24 + 8 * h + 2].mul_(100)
            pm.get_submodule("blocks.0.qkv").weight[48 + 8 * h + 2].mul_(100)
    assert max_relative_error(before, run_eval(pm, (x,))) < 1e-6
    assert any(n.target is mask_contracted for n in pm.graph.nodes)


def test_float64_attention_model_prunes_exactly():
    torch.manual_seed(0)
    model = TinyViT().double().eval()
    pm, small = prune_and_check(model, torch.randn(*X, dtype=torch.float64), rtol=1e-9)
    assert next(small.parameters()).dtype == torch.float64
    assert fxprune.channel_groups(pm)[0].mask.dtype == torch.float64


class ProductWithParameter(nn.Module):
    """``x @ self.w``: a linear layer spelled as a product with a parameter."""

    def __init__(self, product=operator.matmul):
        super().__init__()
        self.a = nn.Linear(6, 8)
        self.w = nn.Parameter(torch.randn(8, 4))
        self.b = nn.Linear(8, 3)
        self.product = product

    def forward(self, x):
        y = self.a(x)
        return self.product(y, self.w), self.b(y)


@pytest.mark.parametrize("product", [operator.matmul, torch.mm, lambda y, w: y.mm(w)],
                         ids=["matmul", "mm", "Tensor.mm"])
def test_product_with_a_parameter_slices_its_rows(product):
    torch.manual_seed(0)
    pm, small = prune_and_check(ProductWithParameter(product).eval(), torch.randn(2, 6))
    g = next(g for g in fxprune.channel_groups(pm) if "a" in g.producers)
    assert g.prunable and small.w.shape == (g.kept, 4)


class ProductWithInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 8)
        self.b = nn.Linear(8, 3)

    def forward(self, x, z):
        y = self.a(x)
        return y @ z, self.b(y)


def test_product_with_an_untracked_operand_keeps_the_channels_whole():
    """``y @ z`` with z a model input: z's rows would not shrink with y's channels."""
    pm = fxprune.prepare(ProductWithInput(), (torch.randn(2, 6), torch.randn(8, 4)))
    g = next(g for g in fxprune.channel_groups(pm) if "a" in g.producers)
    assert not g.prunable
    assert "summed over by a matrix product with an operand whose channels fxprune does not " \
           "track" in g.reason and "`matmul`" in g.reason


class SeparateProjections(nn.Module):
    """q, k and v from projections of their own (no reshape ties them): the value dims are
    read by the output projection; the query/key dims only by their dot product."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)
        self.o = nn.Linear(8, 8)

    def forward(self, x):
        return self.o(F.scaled_dot_product_attention(self.q(x), self.k(x), self.v(x)))


def test_query_key_dims_read_by_no_weight_are_kept_and_value_dims_prune():
    torch.manual_seed(0)
    pm, small = prune_and_check(SeparateProjections().eval(), torch.randn(2, 5, 8))
    groups = {p: g for g in fxprune.channel_groups(pm) for p in g.producers}
    assert groups["q"] is groups["k"]
    assert not groups["q"].prunable and "no layer reads these channels" in groups["q"].reason
    # the reason says who writes them and what would prune them (break101 #1)
    assert "q writes them" in groups["q"].reason and "a fused qkv projection" in groups["q"].reason
    assert groups["v"].prunable and small.get_submodule("o").in_features == groups["v"].kept


class ChannelAttention(nn.Module):
    """Attention over channels (XCiT's cross-covariance attention): the channels are the key
    positions the softmax mixes."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 8)
        self.b = nn.Linear(5, 3)

    def forward(self, x):
        y = self.a(x).transpose(1, 2)  # (B, C, N): channels as positions
        return self.b(F.scaled_dot_product_attention(y, y, y))


def test_channels_as_attention_positions_are_kept_whole():
    pm = fxprune.prepare(ChannelAttention(), (torch.randn(2, 5, 6),))
    g = next(g for g in fxprune.channel_groups(pm) if "a" in g.producers)
    assert not g.prunable and "the key positions attention mixes" in g.reason


class GroupedQuery(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.kv = nn.Linear(8, 8), nn.Linear(8, 8)
        self.o = nn.Linear(8, 8)

    def forward(self, x):
        b, n, _ = x.shape
        q = self.q(x).view(b, n, 4, 2).transpose(1, 2)
        k, v = self.kv(x).view(b, n, 2, 2, 2).permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        return self.o(y.transpose(1, 2).reshape(b, n, 8))


def test_grouped_query_attention_is_a_barrier_with_its_reason():
    pm = fxprune.prepare(GroupedQuery(), (torch.randn(2, 5, 8),))
    g = next(g for g in fxprune.channel_groups(pm) if "q" in g.producers)
    assert not g.prunable and "grouped-query attention (enable_gqa)" in g.reason


def test_smcp_trains_and_prunes_a_transformer():
    """The method's side: SMCP steps on a model with masked attention, reaches its FLOPs
    target and finalizes exactly (the head dims are priced through their projections)."""
    torch.manual_seed(0)
    model = TinyViT()
    x, y = torch.randn(16, 7, 12), torch.randint(0, 5, (16,))
    pm = fxprune.prepare(model, (x[:2],))
    pruner = fxprune.SMCP(pm, target=0.6, cost="flops", warmup=2, ramp=6, update_every=2)
    opt = torch.optim.SGD(pm.parameters(), lr=0.05)
    for _ in range(12):
        loss = F.cross_entropy(pm(x), y)
        loss.backward()
        pruner.step()
        opt.step()
        opt.zero_grad()
    pruner.finalize_masks()
    assert pruner.cost() <= 0.6 + 1e-6
    heads = next(g for g in fxprune.channel_groups(pm) if "blocks.0.qkv" in g.producers)
    small = fxprune.finalize(pm)
    assert_plain(small)
    assert max_relative_error(run_eval(pm, (x,)), run_eval(small, (x,))) < 1e-4
    assert small.get_submodule("blocks.0.qkv").out_features == 9 * heads.kept


def test_pruned_attention_exports_to_onnx():
    """The scale finalize writes into the attention call exports (opset 18, the dynamo
    exporter) and ONNX Runtime computes what the pruned model does."""
    # (ONNX Runtime is a dependency of fxprune itself: no skip, review146 F8)
    from fxprune.deploy.onnx_export import export_onnx, verify_onnx
    torch.manual_seed(0)
    _, small = prune_and_check(TinyViT().eval(), torch.randn(*X))
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        export_onnx(small, X, f"{d}/vit.onnx")
        assert verify_onnx(f"{d}/vit.onnx", small, X) < 1e-5


def test_a_query_passed_by_keyword_keeps_its_dims_whole():
    """The masked form replaces the call's first positional argument: a query given by
    keyword is kept whole, with the reason."""
    class Keyword(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv, self.o = nn.Linear(8, 24), nn.Linear(8, 8)

        def forward(self, x):
            q, k, v = self.qkv(x).chunk(3, -1)
            return self.o(F.scaled_dot_product_attention(query=q, key=k, value=v))

    pm = fxprune.prepare(Keyword(), (torch.randn(2, 5, 8),))
    g = next(g for g in fxprune.channel_groups(pm) if "qkv" in g.producers and not g.prunable)
    assert "query/key dims of attention, its left operand passed by keyword" in g.reason


class ChannelQueries(nn.Module):
    """Channels as attention's query positions (L), causal or under a mask over (L, S)."""

    def __init__(self, mode):
        super().__init__()
        self.mode = mode
        self.inp = nn.Linear(8, 24)
        self.q, self.k, self.v = nn.Linear(24, 16), nn.Linear(24, 16), nn.Linear(24, 16)
        self.proj, self.head = nn.Linear(16, 10), nn.Linear(10, 3)
        self.register_buffer("mask", torch.rand(16, 16) > 0.4)

    def forward(self, x):
        x = self.inp(x)
        q, k, v = (f(x).transpose(1, 2) for f in (self.q, self.k, self.v))  # (B, C, N)
        if self.mode == "causal":
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask)
        return self.head(self.proj(o.transpose(1, 2)))


class HeadsAsChannels(nn.Module):
    """Every conv channel a head (B, C=heads, L=H, E=W), a per-head bias as the mask."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3, padding=1)
        self.q, self.k, self.v = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1)
        self.bias = nn.Parameter(torch.randn(8, 6, 6))
        self.o = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        f = self.c(x)
        return self.o(F.scaled_dot_product_attention(self.q(f), self.k(f), self.v(f), attn_mask=self.bias))


def test_query_positions_under_a_causal_triangle_are_kept_whole():
    """break95 #5: channels as query positions were prunable under is_causal (a pruned
    position shifts the triangle): finalize failed ("a bug in fxprune"). Kept whole, with the
    reason."""
    pm = fxprune.prepare(ChannelQueries("causal"), (torch.randn(2, 6, 8),))
    g = next(g for g in fxprune.channel_groups(pm) if "q" in g.producers)
    assert not g.prunable and "the query positions of causal attention" in g.reason


def test_query_positions_slice_the_mask_rows():
    """break95 #5: under an (L, S) mask buffer, channels as query positions were pruned and the
    mask left whole: finalize failed. The mask's rows are the queries' channels, sliced with
    them."""
    torch.manual_seed(0)
    pm, small = prune_and_check(ChannelQueries("mask").eval(), torch.randn(2, 6, 8))
    g = next(g for g in fxprune.channel_groups(pm) if "q" in g.producers)
    assert g.prunable and small.mask.shape == (small.q.out_features, 16) and small.q.out_features < 16


def test_a_mask_that_does_not_shrink_keeps_the_query_positions_whole():
    class InputMask(ChannelQueries):
        def forward(self, x, mask):
            x = self.inp(x)
            q, k, v = (f(x).transpose(1, 2) for f in (self.q, self.k, self.v))
            return self.head(self.proj(F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)))

    pm = fxprune.prepare(InputMask("mask"), (torch.randn(2, 6, 8), torch.rand(16, 16) > 0.4))
    g = next(g for g in fxprune.channel_groups(pm) if "q" in g.producers)
    assert not g.prunable and "an attention mask over them that holds other channels" in g.reason


def test_a_per_head_mask_is_sliced_with_its_heads():
    """break95 #5: a per-head bias given as attn_mask was left whole while the heads (conv
    channels) were pruned: finalize failed. The bias holds the scores' channels and is sliced
    with them, as a bias added to q @ k^T is."""
    torch.manual_seed(0)
    pm, small = prune_and_check(HeadsAsChannels().eval(), torch.randn(2, 3, 6, 6))
    g = next(g for g in fxprune.channel_groups(pm) if "q" in g.producers)
    assert g.prunable and small.bias.shape == (small.q.out_channels, 6, 6) and small.q.out_channels < 8
