"""The analysis pass's array algorithms, alone: connected components by min-label propagation
(the union-find the walk's unifications go through) and the order groups are numbered in."""
from __future__ import annotations

import networkx as nx
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fxprune.passes.group_analysis import _components_in_order, min_label_components


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_min_label_components_are_networkx_components_labelled_by_their_smallest_node(data):
    n = data.draw(st.integers(0, 40))
    edges = data.draw(st.lists(st.tuples(st.integers(0, max(n - 1, 0)), st.integers(0, max(n - 1, 0))),
                               max_size=60)) if n else []
    # the pairs come in batches of arrays, as the walk records them
    cut = data.draw(st.integers(0, len(edges)))
    pairs = [(np.array([a for a, _ in part], dtype=np.int64), np.array([b for _, b in part], dtype=np.int64))
             for part in (edges[:cut], edges[cut:]) if part]
    label = min_label_components(n, pairs)
    g = nx.Graph()
    g.add_nodes_from(range(n))
    g.add_edges_from(edges)
    expected = np.empty(n, dtype=np.int64)
    for component in nx.connected_components(g):
        expected[list(component)] = min(component)
    assert label.dtype == np.int64 and label.shape == (n,)
    assert np.array_equal(label, expected)


def test_min_label_components_of_a_long_chain_in_reverse_order():
    # the worst order for naive propagation: each edge joins the next-smaller node
    n = 1000
    label = min_label_components(n, [(np.arange(n - 1, 0, -1), np.arange(n - 2, -1, -1))])
    assert np.array_equal(label, np.zeros(n, dtype=np.int64))


def test_components_in_order_follow_first_members():
    # nodes 0..5; classes {0, 3}, {1, 4, 5}, {2}; seen in the order 4, 2, 0, 5, 3, 1
    label = np.array([0, 1, 2, 0, 1, 1])
    first_seen = np.array([2, 5, 1, 4, 0, 3])
    got = [c.tolist() for c in _components_in_order(label, first_seen)]
    assert got == [[4, 5, 1], [2], [0, 3]]
    assert _components_in_order(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)) == []


def test_unit_kept_reads_each_groups_mask_at_its_units_positions():
    # break145 F5: unit_kept looked each group up in the list and scanned every unit per group
    # (quadratic in the groups, at every CUCB step); the grouped lookup gives the same answer
    import torch
    import torchvision

    import fxprune
    from fxprune.groups import state_of

    pm = fxprune.prepare(torchvision.models.densenet121(num_classes=10), torch.randn(1, 3, 32, 32))
    ch = state_of(pm).channels
    rng = np.random.default_rng(0)
    masks = {g.key: (rng.random(g.size) < 0.5).astype(np.float32) for g in ch.groups if g.prunable}
    kept = ch.unit_kept(masks)
    for key, m in masks.items():
        g = [info.key for info in ch.groups].index(key)
        units = np.flatnonzero(ch.unit_group == g)
        assert np.array_equal(kept[units], m[ch.unit_pos[units]] != 0)
    others = ~np.isin(ch.unit_group, [[info.key for info in ch.groups].index(k) for k in masks])
    assert kept[others].all() and len(masks) > 50 and not kept.all()
