"""End to end on the real Fashion-MNIST files: the SMCP recipe trains, prunes to its FLOPs
target, finalizes exactly, and the saved model deploys on ONNX Runtime."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fxprune.cli import main as cli_main
from fxprune.data import find_fashion_mnist
from fxprune.train import load_config, train

ROOT = Path(__file__).resolve().parents[1]


def _have_fashion_mnist() -> bool:
    try:
        find_fashion_mnist(None, "train")
        return True
    except FileNotFoundError:
        return False


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not _have_fashion_mnist(),
                       reason="Fashion-MNIST not installed: apt-get install -y dataset-fashion-mnist"),
]


def test_quick_recipe_prunes_and_deploys(tmp_path):
    cfg = load_config(ROOT / "configs" / "fashion_mnist_quick.yaml", [
        f"out={tmp_path / 'run'}", "data.subset_train=6000", "data.subset_test=2000",
        "optim.epochs=3", "prune.update_every=10", "log.progress=false", "log.tensorboard=false"])
    results = train(cfg)
    assert results["flops_ratio"] <= 0.5 + 1e-6  # the FLOPs target, by the flop counter
    assert results["finalize_mismatched_samples"] == 0  # finalize changed no prediction
    assert results["accuracy"] > 0.5  # 6k images, 3 short epochs: far above chance (0.10)
    model_path = Path(results["model"])
    assert model_path.is_file()
    metrics = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert len(metrics) == 1 + 3 and "cost" in metrics[0]

    out = tmp_path / "deploy"
    # the run's own model file is a pickle: deploying it is an explicit choice
    assert cli_main(["deploy", str(model_path), "--out", str(out), "--backend", "onnxruntime",
                     "--iters", "20", "--warmup", "3", "--no-progress"]) == 2
    assert cli_main(["deploy", str(model_path), "--out", str(out), "--backend", "onnxruntime",
                     "--iters", "20", "--warmup", "3", "--no-progress",
                     "--trust-model-file"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["backend"] == "onnxruntime" and report["latency_ms"]["median"] > 0
    assert report["onnx_max_abs_diff"] < 1e-3
