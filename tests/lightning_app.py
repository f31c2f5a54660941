"""The LightningModule, data and recorder the Lightning tests share; run as a script it is the
2-process DDP run (Lightning's own launcher starts rank 1 by running this file again)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # rank 1 starts from this file

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset  # noqa: E402

import fxprune  # noqa: E402
from fxprune.integrations.lightning import PruningCallback  # noqa: E402
from test_distributed import NoBNNet, flat_masks  # noqa: E402

N, BATCH = 64, 16  # 4 optimizer steps per epoch
SMCP_ARGS = dict(target=0.5, warmup=2, ramp=4, update_every=2, channel_step=1)  # updates at 4, 6, 8
CCP_ARGS = dict(ratio=0.5, collect=2, rounds=2, round_every=3, channel_step=1)  # rounds at 2 and 5
METHOD_ARGS = {"smcp": SMCP_ARGS, "ccp": CCP_ARGS}


def dataset():
    g = torch.Generator().manual_seed(7)
    return TensorDataset(torch.randn(N, 1, 8, 8, generator=g, dtype=torch.float64),
                         torch.randint(0, 10, (N,), generator=g))


class Classifier(pl.LightningModule):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        net = NoBNNet().double()
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)
        self.model = fxprune.prepare(net, (torch.zeros(1, 1, 8, 8, dtype=torch.float64),))

    def training_step(self, batch, _):
        x, y = batch
        return F.cross_entropy(self.model(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


class RecordMasks(pl.Callback):
    """The masks after every optimizer step, per rank, written with torch.save at the end."""

    def __init__(self, path=None):
        self.path, self.masks = path, []

    def on_fit_start(self, trainer, pl_module):
        self.masks, self.labels = [], []
        self.at_start = flat_masks(pl_module.model)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.masks.append(flat_masks(pl_module.model))
        self.labels.append(batch[1].clone())  # which samples this rank trained on

    def on_train_end(self, trainer, pl_module):
        if self.path is not None:
            torch.save({"masks": self.masks, "labels": self.labels, "rank": trainer.global_rank,
                        "world": trainer.world_size}, f"{self.path}/masks_rank{trainer.global_rank}.pt")


def trainer(tmp_path, epochs, callbacks, **kw):
    kw = {"accelerator": "cpu", "devices": 1, **kw}
    return pl.Trainer(max_epochs=epochs, callbacks=callbacks, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path, precision="64-true", **kw)


def loader(batch=BATCH):
    return DataLoader(dataset(), batch_size=batch, shuffle=False)



class ShardedClassifier(Classifier):
    """Each rank takes every other sample, in order: rank 0 and 1 together train on each batch
    of the 1-process run. (Lightning's own sampler always reshuffles the training set.)"""

    def train_dataloader(self):
        sampler = DistributedSampler(dataset(), num_replicas=self.trainer.world_size,
                                     rank=self.trainer.global_rank, shuffle=False)
        return DataLoader(dataset(), batch_size=BATCH // self.trainer.world_size, sampler=sampler)


if __name__ == "__main__":  # python lightning_app.py OUT_DIR [METHOD]: Lightning DDP, 2 CPU processes, gloo
    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    method = sys.argv[2] if len(sys.argv) > 2 else "smcp"
    prune = PruningCallback(method, save_path=out / "pruned.pt", check_masks=True, **METHOD_ARGS[method])
    t = trainer(out, 2, [prune, RecordMasks(out)], devices=2, strategy="ddp", enable_checkpointing=False,
                use_distributed_sampler=False)
    t.fit(ShardedClassifier())
    # every rank runs this after fit(): rank 0's saved model is there (break107 F2)
    small = torch.load(out / "pruned.pt", weights_only=False)
    (out / f"loaded_rank{t.global_rank}.txt").write_text(str(sum(p.numel() for p in small.parameters())))
