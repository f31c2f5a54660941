"""``fxprune train`` data-parallel: the per-process data slices, the distributed code path in one
process, and ``torchrun --nproc-per-node 2 -m fxprune train`` end to end on the CPU (gloo).
"""
from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import yaml

from fxprune.data import BatchLoader, load_split
from fxprune import distributed as fxdist
from fxprune.train import ConfigError, evaluate, load_config, resolve_config, train
from helpers import TINY_RECIPE

TINY = {
    **TINY_RECIPE,
    "prune": {"method": "smcp", "target": 0.5, "warmup_epochs": 0.5, "ramp_epochs": 1,
              "cooldown_epochs": 0.5, "update_every": 2, "channel_step": 1},
}


def read_csv(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- sharding

def id_loader(n: int, batch_size: int, *, shuffle=True, augment=False) -> BatchLoader:
    """Image i is filled with the value i (n <= 256), so a batch tells which samples it holds."""
    images = torch.arange(n, dtype=torch.uint8)[:, None, None].expand(n, 6, 6).contiguous()
    return BatchLoader(images, torch.arange(n), batch_size=batch_size, shuffle=shuffle,
                       augment=augment, seed=7, mean=0.0, std=1.0)


def epoch_batches(loader: BatchLoader, epoch: int) -> list[torch.Tensor]:
    loader.set_epoch(epoch)
    return [y for _, y in loader]


@pytest.mark.parametrize("world", [2, 3])
def test_shards_are_disjoint_cover_the_epoch_and_reshuffle(world):
    n, batch = 103, 10
    whole = id_loader(n, batch)
    shards = [id_loader(n, batch) for _ in range(world)]
    for r, loader in enumerate(shards):
        loader.shard(r, world)
    orders = []
    for epoch in (0, 1):
        per_rank = [epoch_batches(loader, epoch) for loader in shards]
        assert len({len(b) for b in per_rank}) == 1  # every process runs the same steps
        taken = torch.cat([torch.cat(b) for b in per_rank])
        assert len(taken) == len(set(taken.tolist())) == n  # disjoint, covering
        # batch i of every process together is batch i of one process
        for i, full in enumerate(epoch_batches(whole, epoch)):
            assert sorted(torch.cat([b[i] for b in per_rank]).tolist()) == sorted(full.tolist())
        orders.append(torch.cat(per_rank[0]))
    assert not torch.equal(orders[0], orders[1])  # reshuffled per epoch


def test_processes_that_read_other_data_or_recipes_are_refused_before_training(monkeypatch):
    """break160 F1/F2: one machine's copy of the data with fewer images hung the job in a
    collective until gloo's timeout; other labels or another optim.lr trained on silently.
    Every process compares its recipe and flags (first thing: review161 F1, --resume on one
    process hung) and its data with process 0's (one all-gather each, faked here for a world
    of 3) and raises the same one-line ConfigError."""
    from fxprune import train as fxtrain

    cfg = {"seed": 0, "out": "runs/a", "device": "cpu", "num_threads": 2,
           "data": {"root": "/data/a", "batch_size": 128, "num_workers": 0},
           "optim": {"lr": 0.1}, "log": {"progress": True, "every_steps": 50}}
    data = {"train": {"samples": 2048, "labels_sha256": "l", "images_sha256": "i"},
            "test": {"samples": 1000, "labels_sha256": "t", "images_sha256": "j"}}
    gathered = []

    def gather(out, mine):  # every process sends what the first call recorded, this one third
        gathered.append(mine)
        out[:] = [gathered[0], gathered[0], mine]

    monkeypatch.setattr(fxtrain.dist, "all_gather_object", gather)
    monkeypatch.setattr(fxtrain.fxdist, "world_size", lambda: 3)

    def recipe(cfg, resume=False):
        fxtrain._refuse_processes_that_differ("recipe", {"recipe": fxtrain._shared_recipe(cfg),
                                                         "resume": resume}, "the same command")

    recipe(cfg)  # the reference: every process the same
    # each machine's own root, threads, workers, device, progress and output folder: accepted
    recipe({**cfg, "out": "runs/b", "device": "cuda", "num_threads": 8,
            "log": {"progress": False, "every_steps": 50},
            "data": {**cfg["data"], "root": "/mnt/copy", "num_workers": 4}})
    for other in ({**cfg, "optim": {"lr": 0.01}}, {**cfg, "log": {"progress": True, "every_steps": 10}}):
        with pytest.raises(ConfigError, match=r"^process 2 of the job reads other recipe than process 0; "
                                              r"the same command$"):
            recipe(other)
    with pytest.raises(ConfigError, match="process 2 of the job reads other recipe"):
        recipe(cfg, resume=True)
    gathered.clear()
    fxtrain._refuse_processes_that_differ("data", data, "the same copy", "2048 / 1000")
    fewer = {**data, "train": {**data["train"], "samples": 1500, "images_sha256": "k"}}
    with pytest.raises(ConfigError, match=r"^process 2 of the job reads other data than process 0 "
                                          r"\(process 0: 2048 / 1000; process 2: 1500 / 1000\); the same copy$"):
        fxtrain._refuse_processes_that_differ("data", fewer, "the same copy", "1500 / 1000")


def test_shard_slices_the_augmented_global_batch():
    """A sample gets the same crop and flip whatever the number of processes."""
    whole, a, b = (id_loader(64, 16, augment=True) for _ in range(3))
    a.shard(0, 2)
    b.shard(1, 2)
    for (x, y), (xa, ya), (xb, yb) in zip(whole, a, b):
        assert torch.equal(x[0::2], xa) and torch.equal(x[1::2], xb)
        assert torch.equal(y[0::2], ya) and torch.equal(y[1::2], yb)


def test_small_last_batch_dropped_in_training_kept_in_evaluation():
    train_shards, test_shards = [id_loader(101, 10) for _ in range(2)], []
    for r, loader in enumerate(train_shards):
        loader.shard(r, 2)
    for r in range(2):
        loader = id_loader(101, 10, shuffle=False)
        loader.shard(r, 2, drop_small_last=False)
        test_shards.append(loader)
    assert [len(s) for s in train_shards] == [10, 10]  # 1 sample left over: no step for it
    seen = torch.cat([torch.cat(epoch_batches(s, 0)) for s in test_shards])
    assert sorted(seen.tolist()) == list(range(101))  # evaluation sees every sample
    with pytest.raises(ValueError, match="smaller than the 3 processes"):
        id_loader(10, 2).shard(0, 3)
    # break160 F6: an evaluation batch smaller than the processes was refused too (under
    # data.batch_size's name); some processes get empty slices, which evaluate() skips
    evaluation = []
    for r in range(3):
        loader = id_loader(7, 2, shuffle=False)
        loader.shard(r, 3, drop_small_last=False)
        evaluation.append(torch.cat(epoch_batches(loader, 0)))
    assert sorted(torch.cat(evaluation).tolist()) == list(range(7))


# ----------------------------------------------------------------------------- one process

@contextmanager
def one_process_group():
    """A gloo process group of one process: the distributed code path, in this process."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_distributed_path_with_one_process_equals_plain_run(tmp_path):
    plain = train(resolve_config(TINY, [f"out={tmp_path / 'plain'}"]))
    with one_process_group():
        ddp = train(resolve_config(TINY, [f"out={tmp_path / 'ddp'}", "train.check_masks=true"]))
    a = torch.load(tmp_path / "plain" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)
    for key, value in a["model"].items():  # DDP over one process averages nothing: bit-equal
        assert torch.equal(value, b["model"][key]), key
    assert plain["params"] == ddp["params"] and plain["flops"] == ddp["flops"]
    assert plain["accuracy"] == ddp["accuracy"]
    assert ddp["world_size"] == 1 and ddp["images_per_s"] > 0


ROOT = Path(__file__).resolve().parents[1]
SMALL = ["data.name=synthetic", "data.synthetic_train=256", "data.synthetic_test=64",
         "data.batch_size=32", "model.widths=[8,16,16]", "optim.epochs=2", "num_threads=1",
         "log.progress=false", "log.tensorboard=false", "device=cpu"]
METHODS = {
    "cucb": ["prune.warmup_epochs=0.25", "prune.explore_epochs=1.5", "prune.execution=masked"],
    "ccp": ["prune.collect_epochs=0.5", "prune.prune_at_epochs=1", "prune.rounds=2",
            "prune.round_every_epochs=0.5"],
}


def test_cucb_gathered_execution_is_refused_under_ddp(tmp_path):
    """Its sub-network runs outside the DDP wrapper: gradients would not be averaged."""
    cfg = load_config(ROOT / "configs" / "fashion_mnist_cucb.yaml",
                      [*SMALL, *METHODS["cucb"][:2], f"out={tmp_path / 'r'}"])
    with one_process_group(), pytest.raises(ConfigError, match="prune.execution=masked"):
        train(cfg)
    assert not (tmp_path / "r").exists()  # refused before any write


def test_ccp_statistics_go_through_the_reduction_under_ddp(tmp_path, monkeypatch):
    calls = []
    real = fxdist.all_reduce_sum

    def counted(t):
        calls.append(t.numel())
        return real(t)

    monkeypatch.setattr(fxdist, "all_reduce_sum", counted)
    cfg = load_config(ROOT / "configs" / "fashion_mnist_ccp.yaml",
                      [*SMALL, *METHODS["ccp"], f"out={tmp_path / 'r'}"])
    with one_process_group():
        results = train(cfg)
    assert len(calls) == 2  # one sum per pruning round, before its decision
    assert results["finalize_mismatched_samples"] == 0


def test_sync_bn_on_cpu_is_a_config_error(tmp_path):
    with one_process_group(), pytest.raises(ConfigError, match="train.sync_bn"):
        train(resolve_config(TINY, [f"out={tmp_path / 'r'}", "device=cpu", "train.sync_bn=true"]))
    assert not (tmp_path / "r").exists()  # refused before any write


def test_sync_batchnorm_swap_is_undone_before_finalize():
    """SyncBatchNorm itself needs CUDA; the swap and its undo are checked here."""
    import fxprune
    from fxprune.distributed import use_sync_batchnorm
    from fxprune.models import build_model

    torch.manual_seed(0)
    pm = fxprune.prepare(build_model("resnet_fmnist", widths=[4, 8, 8], blocks=[1, 1, 1]),
                         (torch.randn(1, 1, 28, 28),))
    bns = {n: m for n, m in pm.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    undo = use_sync_batchnorm(pm)
    swapped = {n: m for n, m in pm.named_modules() if isinstance(m, torch.nn.SyncBatchNorm)}
    assert set(swapped) == set(bns) and bns
    for name, sync in swapped.items():  # trained in place of the originals
        assert sync.weight is bns[name].weight and sync.running_mean is bns[name].running_mean
    undo()
    assert {n: m for n, m in pm.named_modules() if isinstance(m, torch.nn.BatchNorm2d)} == bns
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in pm.modules())
    pm.eval()
    x = torch.randn(4, 1, 28, 28)
    assert torch.allclose(fxprune.finalize(pm)(x), pm(x), atol=1e-5)


def test_sync_bn_alone_in_one_process_is_nothing(tmp_path):
    """Without torchrun there is nothing to synchronise: the key is accepted and changes nothing."""
    results = train(resolve_config(TINY, [f"out={tmp_path / 'r'}", "device=cpu",
                                          "train.sync_bn=true", "optim.epochs=1",
                                          "prune.cooldown_epochs=0.25", "prune.ramp_epochs=0.5",
                                          "prune.warmup_epochs=0.25"]))
    assert results["world_size"] == 1


# ----------------------------------------------------------------------------- torchrun

def torchrun(nproc: int, *args: str) -> subprocess.CompletedProcess:
    # torch.distributed.run is what the torchrun script runs; --standalone: a local rendezvous
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={nproc}", "-m", "fxprune", "train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)


@pytest.mark.slow
def test_torchrun_two_processes_end_to_end_then_resume_on_one(tmp_path):
    recipe = tmp_path / "tiny.yaml"
    # the freeze point in steps (where the cool-down of 0.5 epochs puts it): a cool-down in
    # epochs counts from the end, so the longer resumes below would be refused
    prune = {k: v for k, v in TINY["prune"].items() if k != "cooldown_epochs"}
    recipe.write_text(yaml.safe_dump({**TINY, "prune": {**prune, "freeze_after": 9}}))
    out = tmp_path / "run"
    done = torchrun(2, str(recipe), "--set", "device=cpu", "--set", "train.check_masks=true",
                    "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]

    # rank 0 alone wrote and printed: one row per step/epoch, one summary
    steps = [int(r["step"]) for r in read_csv(out / "steps.csv")]
    # 192 / 32 = 6 steps per epoch, 2 epochs, a row every 4 and at each epoch's end
    assert steps == [4, 6, 8, 12]
    metrics = read_csv(out / "metrics.csv")
    assert [r["epoch"] for r in metrics] == ["1", "2"]
    assert all(float(r["images_per_s"]) > 0 for r in metrics)
    assert done.stdout.count("epoch 2/2:") == 1 and done.stdout.count("throughput") == 1
    results = json.loads((out / "results.json").read_text())
    assert results["world_size"] == 2 and results["images_per_s"] > 0
    assert sorted(p.name for p in out.iterdir() if p.name.endswith(".tmp")) == []

    # the saved pruned model is what results.json reports, on the whole test split here
    model = torch.load(out / "model_pruned.pt", weights_only=False)
    assert sum(p.numel() for p in model.parameters()) == results["params"]
    cfg = resolve_config(TINY)
    x, y = load_split(cfg["data"], "test", seed=cfg["seed"])
    test = BatchLoader(x, y, batch_size=64, shuffle=False, augment=False)
    loss, acc = evaluate(model, test, torch.device("cpu"))
    assert acc == results["accuracy"]
    assert loss == pytest.approx(results["test_loss"], rel=1e-5)
    assert results["finalize_mismatched_samples"] == 0

    # the checkpoint of 2 processes resumes in 1, one more epoch
    resumed = subprocess.run(
        [sys.executable, "-m", "fxprune", "train", str(recipe), "--set", "device=cpu",
         "--set", "optim.epochs=3", "--out", str(out), "--resume"],
        capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [r["epoch"] for r in read_csv(out / "metrics.csv")] == ["1", "2", "3"]
    results = json.loads((out / "results.json").read_text())
    # break70 #2: the throughput spans both counts, and results.json said 1 process alone
    assert results["world_size"] == 1 and results["process_counts"] == [
        {"from_epoch": 0, "world_size": 2}, {"from_epoch": 2, "world_size": 1}]
    assert "training images/s on 2 then 1 processes" in resumed.stdout

    # ... and that one resumes in 2 again (rank 0 reads the checkpoint and sends it)
    again = torchrun(2, str(recipe), "--set", "device=cpu", "--set", "optim.epochs=4",
                     "--set", "train.check_masks=true", "--out", str(out), "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    assert [r["epoch"] for r in read_csv(out / "metrics.csv")] == ["1", "2", "3", "4"]
    assert [int(r["step"]) for r in read_csv(out / "steps.csv")] == [4, 6, 8, 12, 16, 18, 20, 24]
    assert torch.load(out / "checkpoint.pt", weights_only=True)["world_size"] == 2
    assert json.loads((out / "results.json").read_text())["process_counts"] == [
        {"from_epoch": 0, "world_size": 2}, {"from_epoch": 2, "world_size": 1},
        {"from_epoch": 3, "world_size": 2}]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ccp", "cucb"])
def test_torchrun_two_processes_keep_masks_equal(method, tmp_path):
    """CCP decides on statistics summed over the processes, CUCB (masked execution) on averaged
    gradients with an identically seeded generator: every step the processes compare their masks
    with rank 0's (train.check_masks), and the finalized models too."""
    out = tmp_path / "run"
    done = torchrun(2, str(ROOT / "configs" / f"fashion_mnist_{method}.yaml"),
                    *[a for o in [*SMALL, *METHODS[method], "train.check_masks=true"]
                      for a in ("--set", o)], "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["world_size"] == 2 and results["finalize_mismatched_samples"] == 0
    assert results["flops_ratio"] <= 0.5 + 1e-6


def test_fewer_training_images_than_processes_is_refused_not_trained_for_zero_steps(
        tmp_path, monkeypatch):
    """break173 F2: 1 training image on 2 processes left every epoch without a step (a batch
    smaller than the process count is dropped): a dense run saved an untrained model and
    exited 0, a pruning run was told of its schedule."""
    cfg = resolve_config({**TINY, "prune": {"method": "none"}},
                         [f"out={tmp_path / 'r'}", "data.name=synthetic", "data.synthetic_train=1"])
    with one_process_group():
        monkeypatch.setattr(fxdist, "world_size", lambda: 2)  # (a second process, pretended)
        import fxprune.train as train_mod
        monkeypatch.setattr(train_mod, "_refuse_processes_that_differ", lambda *a, **k: None)
        with pytest.raises(ConfigError, match=r"^the 1 training image\(s\) give no training step "
                                              r"on 2 processes .*; use more training data"):
            train(cfg)
    assert not (tmp_path / "r" / "model_dense.pt").exists()
    # review177 F6: nor a warning before it that every step is one batch of all the images
    from fxprune.data import make_loaders

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_loaders(cfg["data"], processes=2)
    with pytest.warns(UserWarning, match="every step is one batch of all 1"):
        make_loaders(cfg["data"])
