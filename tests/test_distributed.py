"""Pruning under DDP: 2 processes, gloo, CPU, float64, each rank on its half of a fixed batch.

The ranks' results travel back through ``torch.save`` files (tensors sent through a queue
break once the child exits).
"""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import fxprune
from fxprune import distributed as fxdist
from fxprune.cost import WithFixedCost, layer_keys
from fxprune.deploy.latency_table import LatencyTable

WORLD = 2
BATCH = 16
STEPS = 12
SMCP_ARGS = dict(target=0.5, cost="flops", warmup=3, ramp=9, update_every=3, channel_step=1)


class NoBNNet(nn.Module):
    """Residual conv net without BatchNorm (train-mode BN would normalise per rank)."""

    def __init__(self, w=8):
        super().__init__()
        self.stem = nn.Conv2d(1, w, 3, padding=1)
        self.c1 = nn.Conv2d(w, 2 * w, 3, padding=1)
        self.c2 = nn.Conv2d(2 * w, 2 * w, 3, padding=1)
        self.short = nn.Conv2d(w, 2 * w, 1)
        self.c3 = nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1)
        self.fc = nn.Linear(2 * w, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = F.relu(self.c2(F.relu(self.c1(x))) + self.short(x))
        x = F.relu(self.c3(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def batches():
    """STEPS fixed batches of BATCH images (float64), the same in every process."""
    g = torch.Generator().manual_seed(123)
    return [(torch.randn(BATCH, 1, 8, 8, generator=g, dtype=torch.float64),
             torch.randint(0, 10, (BATCH,), generator=g)) for _ in range(STEPS)]


def make_pruner():
    g = torch.Generator().manual_seed(0)  # the same initial model in every process
    model = NoBNNet().double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)
    pm = fxprune.prepare(model, (torch.zeros(1, 1, 8, 8, dtype=torch.float64),))
    return pm, fxprune.SMCP(pm, **SMCP_ARGS)


def flat_masks(pm):
    return torch.cat([g.mask.detach().clone() for g in fxprune.channel_groups(pm, all_groups=True)
                      if g.prunable])


def train(model, pm, pruner, data, sync):
    """SGD over ``data``; after every step, the accumulated importance; after every update, the
    masks. ``sync``: the documented DDP protocol (broadcast rank 0's masks, checked)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    log = {"importance": [], "masks": [], "kept": []}
    for x, y in data:
        F.cross_entropy(model(x), y).backward()
        record = pruner.step()
        if record is not None:
            if sync:
                fxdist.broadcast_masks(pm, check=True)
            log["masks"].append(flat_masks(pm))
            log["kept"].append(record["kept"])
        state = pruner.importance.state_dict()
        log["importance"].append((state["total"].clone(), state["count"]))
        opt.step()
        opt.zero_grad()
    return log, opt


def _worker(rank, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        pm, pruner = make_pruner()
        seed = 1000 + rank  # ranks seeded differently: nothing in pruning may depend on it
        torch.manual_seed(seed), np.random.seed(seed), random.seed(seed)
        ddp = DDP(pm)
        half = BATCH // WORLD
        mine = [(x[rank * half:(rank + 1) * half], y[rank * half:(rank + 1) * half]) for x, y in batches()]
        log, _ = train(ddp, pm, pruner, mine, sync=True)
        out = {"log": log, "final_masks": flat_masks(pm)}

        if fxdist.is_main_process():  # a checkpoint written once
            torch.save({"model": pm.state_dict(), "pruner": pruner.state_dict()}, f"{out_dir}/ckpt.pt")
        fxdist.barrier_if_distributed()

        # debug mode: one rank's tampered mask is named, on every rank
        groups = [g for g in fxprune.channel_groups(pm, all_groups=True) if g.prunable]
        if rank == 1:
            g = groups[2]
            g.mask[int(g.mask.nonzero()[0])] = 0
        try:
            fxdist.check_masks_equal(ddp)
        except fxdist.MaskMismatchError as exc:
            out["mismatch"] = str(exc)
        out["tampered_group"] = groups[2].key
        fxdist.broadcast_masks(ddp)  # rank 0's masks again everywhere
        fxdist.check_masks_equal(ddp)
        out["repaired_masks"] = flat_masks(pm)

        # the sync hook of rank-local statistics: sums and counts, float64
        total, count = fxdist.all_reduce_sum_count(torch.full((3,), rank + 1.0), rank + 1)
        out["reduced"] = (total, count)
        out["on_main"] = fxdist.compute_on_main(lambda: {"measured_by": rank})
        # a latency table timed once, on rank 0 (each rank's timer would answer differently)
        table = fxdist.compute_on_main(lambda: LatencyTable.measure(
            pm, step=4, timer=lambda layer, ci, co: float(ci * co * (rank + 1)), progress=False,
            log=lambda line: None))
        out["latency"] = table.layer_cost(fxprune.layer_specs(pm)[1], 4, 8)
        # and its fitted constant ("latency+fixed"), rank 0's, valid for every rank's model
        keys = layer_keys(fxprune.layer_specs(pm))
        fitted = fxdist.compute_on_main(lambda: WithFixedCost(table, 10.0 * (rank + 1), keys))
        out["fixed"] = fitted.fixed_cost_for(fxprune.layer_specs(pm))
        # latency_cost called on every rank: timed by rank 0 only (break76 LAT-2)
        timed_by = []
        real_measure = LatencyTable.measure
        LatencyTable.measure = classmethod(lambda cls, *a, **k: timed_by.append(rank) or table)
        try:
            pm2 = fxprune.prepare(NoBNNet().double(), (torch.zeros(1, 1, 8, 8, dtype=torch.float64),))
            smcp = fxprune.SMCP(pm2, target=0.5, channel_step=4, cost=fxprune.deploy.latency_cost(
                pm2, "latency", channel_step=4))
        finally:
            LatencyTable.measure = real_measure
        out["method_timed_by"] = timed_by
        out["method_latency"] = smcp.budget.model.layer_cost(fxprune.layer_specs(pm)[1], 4, 8)
        try:
            fxdist.compute_on_main(lambda: 1 / 0)
        except Exception as exc:  # noqa: BLE001 - every rank must raise, none may hang
            out["main_failed"] = f"{type(exc).__name__}: {exc}"

        # finalize the unwrapped module on every rank, wrap anew, fine-tune one step
        small = fxprune.finalize(pm)
        model, opt = fxdist.rewrap_after_finalize(small, {}, lambda m: torch.optim.SGD(m.parameters(), lr=0.1))
        x, y = mine[0]
        F.cross_entropy(model(x), y).backward()
        opt.step()
        out["finetuned"] = [p.detach().clone() for p in small.parameters()]
        torch.save(out, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(str(out / "rendezvous"), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)], out


@pytest.fixture(scope="module")
def single():
    pm, pruner = make_pruner()
    log, _ = train(pm, pm, pruner, batches(), sync=False)
    return log


def test_importance_equals_one_process_on_the_whole_batch(ranks, single):
    results, _ = ranks
    observed = [c for _, c in single["importance"]]
    assert max(observed) >= 2 and any(t.abs().sum() > 0 for t, _ in single["importance"])
    for r in results:
        assert len(r["log"]["importance"]) == STEPS
        for (t, c), (t1, c1) in zip(r["log"]["importance"], single["importance"]):
            assert c == c1
            torch.testing.assert_close(t, t1, rtol=1e-10, atol=1e-14)


def test_masks_identical_on_every_rank_after_every_update(ranks, single):
    results, _ = ranks
    n_updates = len(single["masks"])
    assert n_updates == 3 and single["kept"][-1] < single["masks"][0].numel()  # channels pruned
    for r in results:
        assert len(r["log"]["masks"]) == n_updates
        for a, b, ref in zip(r["log"]["masks"], results[0]["log"]["masks"], single["masks"]):
            assert torch.equal(a, b)
            assert torch.equal(a, ref)  # and the decision one process takes on the whole batch


def test_check_masks_equal_names_the_tampered_group(ranks):
    results, _ = ranks
    key = results[0]["tampered_group"]
    for r in results:
        assert "mismatch" in r, "check_masks_equal did not raise"
        assert key in r["mismatch"] and "rank(s) [1]" in r["mismatch"]
        assert torch.equal(r["repaired_masks"], results[0]["final_masks"])


def test_checkpoint_written_once_resumes_on_one_process(ranks):
    results, out = ranks
    ckpt = torch.load(out / "ckpt.pt", weights_only=False)
    pm, pruner = make_pruner()
    pm.load_state_dict(ckpt["model"])
    pruner.load_state_dict(ckpt["pruner"])
    assert torch.equal(flat_masks(pm), results[0]["final_masks"])
    assert torch.equal(flat_masks(pm), results[1]["final_masks"])
    assert pruner.step_count == STEPS


def test_reduce_broadcast_and_rewrap(ranks):
    results, _ = ranks
    assert results[0]["main_failed"] == "ZeroDivisionError: division by zero"
    assert results[1]["main_failed"] == "RuntimeError: rank 0 failed in compute_on_main: " \
                                        "ZeroDivisionError: division by zero"
    for r in results:
        total, count = r["reduced"]
        assert total.dtype == torch.float64 and torch.equal(total, torch.full((3,), 3.0, dtype=torch.float64))
        assert count == 3 and isinstance(count, int)
        assert r["on_main"] == {"measured_by": 0}
        assert r["latency"] == 4 * 8  # rank 0's timing (rank 1's timer says 64)
        assert r["fixed"] == 10.0
        assert r["method_latency"] == 4 * 8  # rank 0's table on every rank
    assert results[0]["method_timed_by"] == [0] and results[1]["method_timed_by"] == []
    # the new wrapper averages the finalized model's gradients: ranks stay equal after a step
    for a, b in zip(results[0]["finetuned"], results[1]["finetuned"]):
        assert torch.equal(a, b)


def test_cpu_sums_are_reduced_on_the_gpu_under_nccl(monkeypatch):
    """break31 #2: the trainer's loss and accuracy sums are CPU tensors, which an NCCL process
    group cannot reduce ("No backend type associated with device type cpu")."""
    monkeypatch.setattr(fxdist.dist, "get_backend", lambda *a: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert fxdist.reduce_device(torch.zeros(2)) == torch.device("cuda", 1)
    monkeypatch.setattr(fxdist.dist, "get_backend", lambda *a: "gloo")
    assert fxdist.reduce_device(torch.zeros(2)) == torch.device("cpu")
    monkeypatch.setattr(fxdist, "is_distributed", lambda: True)
    seen = []
    monkeypatch.setattr(fxdist, "reduce_device", lambda t: seen.append(t.device) or t.device)
    monkeypatch.setattr(fxdist.dist, "all_reduce", lambda t, op=None: t.mul_(2))
    total, count = fxdist.all_reduce_sum_count(torch.tensor([1.0, 3.0]), 5)
    assert seen == [torch.device("cpu")] and total.tolist() == [2.0, 6.0] and count == 10


def test_identity_without_a_process_group():
    pm, _ = make_pruner()
    before = flat_masks(pm)
    fxdist.broadcast_masks(pm, check=True)
    fxdist.check_masks_equal(pm)
    fxdist.barrier_if_distributed()
    assert torch.equal(flat_masks(pm), before)
    assert fxdist.is_main_process() and fxdist.broadcast_object("x") == "x"
    assert fxdist.compute_on_main(lambda: 7) == 7
    total, count = fxdist.all_reduce_sum_count(torch.ones(2, dtype=torch.float32), 5)
    assert total.dtype == torch.float64 and count == 5
    small = fxprune.finalize(pm)
    model, opt = fxdist.rewrap_after_finalize(small, None, lambda m: torch.optim.SGD(m.parameters(), lr=0.1))
    assert model is small and opt.param_groups[0]["params"][0] is next(small.parameters())
    with pytest.raises(TypeError, match="prepared model"):
        fxdist.rewrap_after_finalize(pm, None, lambda m: None)


# --------------------------------------------------------------------- CCP and CUCB under DDP

def make_method(name, reduce_fn=None):
    """A prepared NoBNNet with CCP (its statistics summed over processes by ``reduce_fn``) or
    CUCB (masked execution: rewards from DDP's averaged gradients, no reduction needed)."""
    pm, _ = make_pruner()
    if name == "ccp":
        return pm, fxprune.methods.get_method("ccp").build(
            pm, target=0.5, cost="flops", mode="adaptive", collect=4, prune_at=6,
            reduce_fn=reduce_fn)
    return pm, fxprune.methods.get_method("cucb").build(
        pm, target=0.5, cost="flops", warmup=2, explore=8, execution="masked", seed=0)


def run_method(model, pm, method, data, sync, checkpoint_at=None):
    """``checkpoint_at``: after that step every rank resumes from rank 0's state_dict, taken
    after sync_state() (a checkpoint inside CCP's collection window, steps 3-6)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    masks = []
    for step, (x, y) in enumerate(data, 1):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        method.step(loss.detach())
        if step == checkpoint_at:
            method.sync_state()
            state = fxdist.broadcast_object(method.state_dict() if fxdist.is_main_process() else None)
            method.load_state_dict(state)
        if sync:
            fxdist.broadcast_masks(pm, check=True)  # raises if a rank decided otherwise
        masks.append(flat_masks(pm))
        opt.step()
        opt.zero_grad()
    return masks


def _method_worker(rank, init_file, out_dir):
    torch.set_num_threads(1)
    early = make_method("ccp")  # built before the process group exists (break31 #7)
    early_gathered = fxprune.CUCB(make_pruner()[0], target=0.5, execution="gathered")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        out = {}
        half = BATCH // WORLD
        mine = [(x[rank * half:(rank + 1) * half], y[rank * half:(rank + 1) * half]) for x, y in batches()]
        for name in ("ccp", "cucb", "ccp_default", "ccp_resumed", "ccp_early"):
            # ccp_default: no reduce_fn given, as in a loop of the user's own (break24 #8)
            reduce_fn = None if name in ("ccp_default", "ccp_resumed") else (
                lambda t: fxdist.all_reduce_sum_count(t, 0)[0])
            pm, method = early if name == "ccp_early" else make_method(
                name.split("_")[0], reduce_fn=reduce_fn)
            seed = 1000 + rank  # ranks seeded differently: nothing in pruning may depend on it
            torch.manual_seed(seed), np.random.seed(seed), random.seed(seed)
            out[name] = run_method(DDP(pm), pm, method, mine, sync=True,
                                   checkpoint_at=4 if name == "ccp_resumed" else None)
        try:  # its sub-network would train outside DDP: refused, not left to drift
            fxprune.CUCB(make_pruner()[0], target=0.5, execution="gathered")
            out["gathered"] = "built"
        except ValueError as exc:
            out["gathered"] = str(exc)
        try:  # built before the group (break64 B): refused where its sub-network would run
            early_gathered.train_forward
            out["gathered_early"] = "ran"
        except ValueError as exc:
            out["gathered_early"] = str(exc)
        torch.save(out, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def method_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_methods")
    mp.spawn(_method_worker, args=(str(out / "rendezvous"), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.parametrize("name", ["ccp", "cucb", "ccp_default", "ccp_resumed", "ccp_early"])
def test_ccp_and_cucb_decide_on_every_rank_as_one_process_on_the_whole_batch(method_ranks, name):
    """ccp_resumed (break31 #1): every rank resumed mid-collection from rank 0's state, which
    held rank 0's samples only; ccp_early: a CCP built before init_process_group summed
    nothing (break31 #7)."""
    pm, method = make_method(name.split("_")[0])
    single = run_method(pm, pm, method, batches(), sync=False)
    for r in range(WORLD):
        got = method_ranks[r][name]
        assert len(got) == len(single) == STEPS
        for step, (a, b) in enumerate(zip(got, single)):
            assert torch.equal(a, b), f"{name}: rank {r} masks differ from one process at step {step}"
    assert not bool(single[-1].all())  # something was pruned: the comparison is not vacuous


def test_cucb_gathered_execution_is_refused_under_several_processes(method_ranks):
    for r in range(WORLD):
        assert "use execution='masked' under torch.distributed" in method_ranks[r]["gathered"]
        assert ("(the process group began after this CUCB was built); use execution='masked'"
                in method_ranks[r]["gathered_early"])
