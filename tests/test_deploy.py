"""``fxprune deploy`` end to end on tiny models with ONNX Runtime (a few seconds each)."""
from __future__ import annotations

import copy
import json
import warnings
import shutil
import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import fxprune
from fxprune.cli import main
from fxprune.deploy import DeployError, choose_backend, deploy, export_onnx, verify_onnx
from fxprune.deploy import pipeline
from fxprune.deploy.report import build_report, format_table, model_entry
from helpers import small_deploy_net

SHAPE = (1, 3, 16, 16)
QUICK = ["--iters", "5", "--warmup", "1", "--no-progress", "--backend", "onnxruntime"]
TRUST = ["--trust-model-file"]  # these test files are pickles written by the fixture


small_net = small_deploy_net


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    dense, pruned = small_net(16), small_net(8)
    pruned.fxprune_input_shape = SHAPE  # the pruned file records its input shape
    torch.save(dense, d / "dense.pt")
    torch.save(pruned, d / "pruned.pt")
    return d


def test_model_paths_expand_a_tilde_as_train_and_plot_do(saved, tmp_path, monkeypatch):
    """break45: a quoted '~/...' MODEL or --compare was "does not exist"; --out expanded it."""
    monkeypatch.setenv("HOME", str(saved))
    rc = main(["deploy", "~/pruned.pt", "--out", str(tmp_path / "out"), "--compare",
               "~/dense.pt", "--input-shape", "1,3,16,16", *QUICK, *TRUST])
    assert rc == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["dense"]["model_file"] == str((saved / "dense.pt").resolve())


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_a_timing_under_load_is_said_and_recorded(tmp_path, monkeypatch):
    """break55 #2: the same pruned resnet18 read 3.5x idle and 8.35x under load, with no word
    in the report; LatencyTable.measure and calibrate_cost already said so."""
    readings = iter([(9.0, 2), (8.5, 2)])  # a loaded 2-core machine, before and after timing
    monkeypatch.setattr(pipeline, "cpu_load", lambda: next(readings))
    lines = []
    with pytest.warns(RuntimeWarning, match=r"deploy: timed while other processes shared the CPU "
                                            r"\(load average 9\.0 before, 8\.5 after, on 2 cores\)"
                      ) as said:
        report = deploy(small_net(8), tmp_path / "out", compare=small_net(16), input_shape=SHAPE,
                        backend="onnxruntime", iters=3, warmup=1, progress=False, log=lines.append)
    assert said[0].filename == __file__  # the caller's line (break179 F9: pipeline.py's)
    assert report["timed_under_load"] is True
    assert report["load_average"] == {"before": 9.0, "after": 8.5, "cores": 2}
    assert any("timed under load (load average 9.0 -> 8.5 on 2 cores)" in line for line in lines)
    monkeypatch.setattr(pipeline, "cpu_load", lambda: (0.2, 2))
    report = deploy(small_net(8), tmp_path / "idle", input_shape=SHAPE, backend="onnxruntime",
                    iters=3, warmup=1, progress=False, log=lambda s: None)
    assert report["timed_under_load"] is False


def test_cli_end_to_end_with_compare(saved, tmp_path):
    out = tmp_path / "out"
    rc = main(["deploy", str(saved / "pruned.pt"), "--out", str(out), "--compare",
               str(saved / "dense.pt"), "--input-shape", "1,3,16,16", *QUICK, *TRUST])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["backend"] == "onnxruntime" and report["precision"] == "fp32"
    assert report["batch"] == 1 and report["input_shape"] == list(SHAPE) and report["threads"] == 2
    assert report["device"] and report["onnxruntime_version"] == ort.__version__
    assert report["params"] == n_params(small_net(8))
    assert report["dense"]["params"] == n_params(small_net(16))
    assert report["model_file"] == str((saved / "pruned.pt").resolve())  # for fxprune plot
    assert report["dense"]["model_file"] == str((saved / "dense.pt").resolve())
    from fxprune.run_io import file_sha256  # by content: fxprune plot reads a copied run
    assert report["model_sha256"] == file_sha256(saved / "pruned.pt")
    assert report["dense"]["model_sha256"] == file_sha256(saved / "dense.pt")
    assert report["onnx"]["sha256"] == file_sha256(out / "model.onnx")
    assert report["dense"]["onnx"]["sha256"] == file_sha256(out / "dense.onnx")
    for entry in (report, report["dense"]):
        lat = entry["latency_ms"]
        assert 0 < lat["median"] <= lat["p90"] and lat["runs"] == 5
        assert entry["throughput_per_s"] == pytest.approx(1000 / lat["median"])
        assert 0 <= entry["onnx_max_abs_diff"] < 1e-4
    assert report["speedup"] == pytest.approx(
        report["dense"]["latency_ms"]["median"] / report["latency_ms"]["median"])

    # The written ONNX computes what PyTorch does, also at another batch (dynamic batch dim).
    model = onnx.load(out / "model.onnx")
    assert model.opset_import[0].version >= 18
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert not (out / "model.onnx.data").exists()
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 16, 16)
    ref = torch.load(saved / "pruned.pt", weights_only=False).eval()(x).detach().numpy()
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)


def test_cli_subprocess_uses_recorded_shape_and_batch(saved, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "fxprune.cli", "deploy", str(saved / "pruned.pt"), "--out",
         str(out), "--batch", "2", "--threads", "1", *QUICK, *TRUST],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["input_shape"] == [2, 3, 16, 16] and report["threads"] == 1
    assert "dense" not in report and "speedup" not in report
    assert "latency median (ms)" in proc.stdout  # the table is printed


def test_missing_input_shape_names_the_option(saved, tmp_path, capsys):
    rc = main(["deploy", str(saved / "dense.pt"), "--out", str(tmp_path), *QUICK, *TRUST])
    assert rc == 2
    assert "--input-shape" in capsys.readouterr().err
    with pytest.raises(DeployError, match="--input-shape"):
        deploy(small_net(4), tmp_path, backend="onnxruntime")


def test_user_module_is_not_modified(tmp_path):
    model = small_net(4).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    deploy(model, tmp_path, backend="onnxruntime", precision="fp16", input_shape=SHAPE, iters=2,
           warmup=1, progress=False, log=lambda s: None)
    assert model.training
    for k, v in model.state_dict().items():
        assert v.dtype == before[k].dtype and torch.equal(v, before[k]), k


def test_verification_reports_the_max_abs_diff(tmp_path):
    path = tmp_path / "a.onnx"
    export_onnx(small_net(4), SHAPE, path, log=lambda s: None)
    with pytest.raises(DeployError, match=r"max abs diff [0-9.e+-]+ > tolerance"):
        verify_onnx(str(path), small_net(4).apply(_perturb), SHAPE)  # same weights but a bias


def _perturb(m):
    if isinstance(m, nn.Linear):
        with torch.no_grad():
            m.bias.add_(1.0)


class DataDependent(nn.Module):
    """A branch on a tensor's value: torch.export cannot trace it, TorchScript tracing can."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.conv(x)
        if y.mean() > -1e9:  # always true, but only known at run time
            y = y * 2
        return y


def fail_dynamo(monkeypatch, reason: str) -> None:
    """torch.onnx.export with the dynamo exporter raising ``reason``; TorchScript runs."""
    real_export = torch.onnx.export

    def dynamo_fails(*args, dynamo=True, **kwargs):
        if dynamo:
            raise RuntimeError(reason)
        return real_export(*args, dynamo=False, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", dynamo_fails)


def test_dynamo_failure_falls_back_to_torchscript_with_one_line(tmp_path, monkeypatch):
    # the shape of the dynamo exporter's message: generic text first
    fail_dynamo(monkeypatch, "Failed to export the model with torch.export. \x1b[96mThis is "
                "step 1/3\x1b[0m of exporting the model to ONNX. Next steps:\n- Modify the model "
                "code\n\n## Exception summary\n\n<class 'torch._dynamo.exc.Unsupported'>: an op "
                "it cannot trace\n\nThe following call raised this error:\n  File \"m.py\", "
                "line 7, in forward\n    y = op(x)\n")
    lines = []
    model = small_net(4)
    info = export_onnx(model, SHAPE, tmp_path / "fb.onnx", log=lines.append)
    assert info["exporter"] == "torchscript"
    assert lines == ["dynamo ONNX exporter failed (Unsupported: an op it cannot trace (File "
                     "\"m.py\", line 7, in forward)); retrying with dynamo=False"]
    assert verify_onnx(info["path"], model, SHAPE) < 1e-4


def test_a_branch_on_the_data_is_refused_not_traced_down_one_side(tmp_path):
    """break25 #2: the TorchScript fallback recorded the branch the example took, the check
    input took it too, and deploy timed a model with the other branch gone."""
    with pytest.raises(DeployError, match=r"the model branches on a tensor.s value \(test_deploy.py:\d+\): "
                                          r"the dynamo exporter failed \(logged above\) and the "
                                          "TorchScript exporter records only the branch") as info:
        export_onnx(DataDependent(), SHAPE, tmp_path / "dd.onnx", log=lambda s: None)
    assert "\n" not in str(info.value) and "\x1b" not in str(info.value)
    assert not (tmp_path / "dd.onnx").exists()


class SizeBranch(nn.Module):
    """A conv, then a branch of ``forward``'s (one line of source) that a subclass writes."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)


class OnBatch(SizeBranch):
    def forward(self, x):
        y = self.conv(x)
        return y * 2 if x.shape[0] > 1 else y


class OnSizes(SizeBranch):
    def forward(self, x):
        y = self.conv(x)
        if x.size(1) == 3 and x.dim() == 4 and len(x) < 99:
            y = y * 2
        return y


class OnMinSize(SizeBranch):
    def forward(self, x):
        y = self.conv(x)
        return y * 2 if min(y.shape[2:]) > 4 and max(x.size(2), x.size(3)) < 99 else y


class OnSizeInALocal(SizeBranch):  # fxprune cannot tell h from a value (break65 #4)
    def forward(self, x):
        y = self.conv(x)
        b, c, h, w = y.shape
        return y * 2 if h > 4 else y


class OnValue(SizeBranch):
    def forward(self, x):
        y = self.conv(x)
        return y * 2 if y.mean() > -1e9 else y


class OnNonzero(SizeBranch):
    def forward(self, x):
        y = self.conv(x)
        return y * 2 if (x > 9).nonzero().shape[0] == 0 else y


class OnNonzeroLen(SizeBranch):  # len() warns "Using len", not "Converting a tensor"
    def forward(self, x):
        y = self.conv(x)
        return y * 2 if len(x[x > 9]) == 0 else y


def _branch_line(cls) -> int:
    """The line of ``cls.forward`` that branches (the line the tracer's warning names)."""
    import inspect
    lines, first = inspect.getsourcelines(cls.forward)
    return first + next(i for i, line in enumerate(lines) if " if " in line)


@pytest.mark.parametrize("dynamic", [False, True])
def test_the_torchscript_fallback_exports_a_branch_on_sizes_at_the_traced_shape(
        tmp_path, monkeypatch, dynamic):
    """break61 #5: a branch on the batch size after the dynamo exporter failed was refused as
    "a branch on a tensor's value", even at a fixed batch, where the trace is that model.
    At a fixed batch it is exported; with a free batch asked for, the batch is fixed (the
    other branch runs at batch 1), said once."""
    fail_dynamo(monkeypatch, "an op it cannot export")
    for cls in (OnBatch, OnSizes, OnMinSize):
        said, model = [], cls()
        path = tmp_path / f"{cls.__name__}{dynamic}.onnx"
        info = export_onnx(model, SHAPE, path, dynamic_batch=dynamic, log=said.append)
        assert info["exporter"] == "torchscript" and not info["dynamic_batch"]
        assert verify_onnx(info["path"], model, SHAPE) < 1e-4
        fixed = [s for s in said if "batch" in s and "dynamo" not in s]
        if dynamic:
            assert fixed == [f"a free batch is not kept: the model branches on a tensor's size "
                             f"(test_deploy.py:{_branch_line(cls)}), which the TorchScript "
                             f"exporter records at the example's shape; exported at batch "
                             f"{SHAPE[0]}"], said
        else:
            assert fixed == [], said


class FilteredByValue(SizeBranch):  # a comprehension's filter reads values (break65 #1)
    def forward(self, x):
        y = self.conv(x)
        outs = [t * 2 if t.shape[1] > 2 else t for t in (y,) if t.abs().max() < 100]
        return outs[0] if outs else y


class FilteredByAnItem(SizeBranch):  # the tracer warns of the .item() only (session 25)
    def forward(self, x):
        y = self.conv(x)
        outs = [t for t in y.split(2, dim=1) if t.abs().max().item() < 100]
        return torch.cat([*outs, y], 1)


class CountedByValue(SizeBranch):  # a count read from values sizes a tensor (break65 #1)
    def forward(self, x):
        y = self.conv(x)
        k = max(1, int((y > 100).sum()))
        t = torch.topk(y.flatten(1), k, 1).values
        return y * 0 if t.shape[1] > 1 else y


@pytest.mark.parametrize("cls, what", [(OnValue, "a tensor.s value"),
                                       (OnSizeInALocal, "h"),
                                       (FilteredByValue, "a tensor.s value"),
                                       (FilteredByAnItem, "a tensor.s value"),
                                       (OnNonzero, r"a size that may come from tensor values "
                                                   r"\(nonzero in the forward\)"),
                                       (OnNonzeroLen, "a size that may come from tensor values"),
                                       (CountedByValue, r"a size that may come from tensor "
                                                        r"values \(a number read from a tensor "
                                                        r"\(.item\(\), int\(t\)\) in the "
                                                        r"forward\)")])
def test_the_torchscript_fallback_refuses_a_branch_on_values_even_through_a_size(
        tmp_path, monkeypatch, cls, what):
    """A size read from ``nonzero`` (or ``unique``, boolean indexing) is a value."""
    fail_dynamo(monkeypatch, "an op it cannot export")
    with pytest.raises(DeployError, match=rf"the model branches on {what}.* \(test_deploy.py:"
                                          rf"{_branch_line(cls)}\)"):
        export_onnx(cls(), SHAPE, tmp_path / "v.onnx",
                    dynamic_batch=False, log=lambda s: None)
    assert not (tmp_path / "v.onnx").exists()


def test_a_big_torchscript_export_gathers_its_weights_and_keeps_files_named_like_them(
        tmp_path, monkeypatch):
    """break179 F2's other half: a big model's TorchScript export wrote one file per
    initializer, named by it, beside the model: a user's file of such a name was replaced. It
    now writes in a folder of its own and gathers them into PATH.data, as the dynamo exporter
    writes them."""
    from fxprune.deploy import onnx_export

    fail_dynamo(monkeypatch, "an op it cannot export")
    monkeypatch.setattr(onnx_export, "_PROTOBUF_LIMIT", 0)  # as for a model over 2 GiB
    model = small_net(4)
    mine = {name: f"the user's {name}" for name in (*model.state_dict(), "onnx__Conv_0")}
    for name, text in mine.items():
        (tmp_path / name).write_text(text)
    info = export_onnx(model, SHAPE, tmp_path / "m.onnx", log=lambda s: None)
    assert info["exporter"] == "torchscript" and info["external_data"]
    assert {p.name for p in tmp_path.iterdir()} == {*mine, "m.onnx", "m.onnx.data"}
    assert all((tmp_path / name).read_text() == text for name, text in mine.items())
    assert verify_onnx(tmp_path / "m.onnx", model, SHAPE) < 1e-5


def test_a_refused_export_leaves_no_side_file_and_no_graph_dump(tmp_path, monkeypatch, capsys):
    """Last note's left-alone: the refusal removed model.onnx but not a big model's weights file;
    torch.export printed each failed attempt's partial graph (about 50 lines) to stderr."""
    from fxprune.deploy import onnx_export
    real_export = torch.onnx.export

    def with_weight_files(model, args, path, *, dynamo=True, **kwargs):
        real_export(model, args, path, dynamo=dynamo, **kwargs)
        if not dynamo and kwargs["external_data"]:  # TorchScript: one file per initializer
            for name in ("conv.weight", "conv.bias"):
                (Path(path).parent / name).write_bytes(b"weights")

    monkeypatch.setattr(torch.onnx, "export", with_weight_files)
    monkeypatch.setattr(onnx_export, "_PROTOBUF_LIMIT", 0)  # as for a model over 2 GiB
    (tmp_path / "mine.txt").write_text("the user's")
    with pytest.raises(DeployError, match="branches on a tensor"):
        export_onnx(DataDependent(), SHAPE, tmp_path / "dd.onnx", log=lambda s: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]
    assert "def forward" not in capsys.readouterr().err


def test_a_side_weights_file_it_did_not_write_is_not_replaced(tmp_path, monkeypatch):
    """break179 F2: a model over 2 GiB writes its weights to PATH.data, and a user's file of
    that name was replaced without a word; its own side file is replaced with overwrite=True."""
    from fxprune.deploy import onnx_export

    monkeypatch.setattr(onnx_export, "_PROTOBUF_LIMIT", 0)  # as for a model over 2 GiB
    path = tmp_path / "m.onnx"
    (tmp_path / "m.onnx.data").write_text("my notes")
    for overwrite in (False, True):
        with pytest.raises(DeployError, match=r"m.onnx.data exists, and the model's weights .* go "
                                              r"to that file beside .*m.onnx: export_onnx "
                                              r"replaces it only with overwrite=True"):
            export_onnx(small_net(4), SHAPE, path, overwrite=overwrite, log=lambda s: None)
        assert (tmp_path / "m.onnx.data").read_text() == "my notes" and not path.exists()
    (tmp_path / "m.onnx.data").unlink()
    first = export_onnx(small_net(4), SHAPE, path, log=lambda s: None)
    assert first["external_data"] and (tmp_path / "m.onnx.data").stat().st_size > 0
    export_onnx(small_net(8), SHAPE, path, overwrite=True, log=lambda s: None)  # its own: replaced
    verify_onnx(path, small_net(8), SHAPE)


def test_a_branch_on_the_batch_size_exports_at_that_batch(tmp_path):
    """break26 #7: refused as a data branch (the TorchScript trace's warning is the same); a
    dynamo export at the example's fixed batch is exact there."""
    class ShapeIf(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            y = self.conv(x)
            if x.shape[0] > 1:
                y = y * 2.0
            return y

    said, model = [], ShapeIf()
    info = export_onnx(model, SHAPE, tmp_path / "b1.onnx", log=said.append)
    assert info["exporter"] == "dynamo" and not info["dynamic_batch"]
    assert any("failed with a dynamic batch" in s or "a free batch is not kept: " in s
               for s in said), said
    assert verify_onnx(info["path"], model, SHAPE) < 1e-4


@pytest.mark.parametrize("batch, branch, said_how", [
    (1, lambda n: n > 2, "bounded the batch"), (8, lambda n: n > 5, "bounded the batch"),
    (8, lambda n: n > 1, "another output at batch 1"), (4, lambda n: n != 1, "at batch 1"),
    (2, lambda n: n == 3, "another output at batch 3"), (4, lambda n: n % 2 == 0, "at batch 1"),
    (2, lambda n: n % 8 == 0, "another output at batch 8")])
def test_a_branch_on_the_batch_size_keeps_the_file_fixed(tmp_path, batch, branch, said_how):
    """break58 #1: ``if x.shape[0] > 2`` at batch 1 was exported from an example of 2 with a
    free batch and passed both checks (batches 1 and 2), but the file doubled nothing at batch
    4; torch.export had bounded the batch to [0, 2]. break60 #1: ``> 1`` at batch 8, ``!= 1``,
    ``== 3`` and ``% 2`` leave no bound in the program; the file is run at batches 1-3 too.
    break61 #3: ``% 8`` at batch 2 passed those probes; the program's comparison of the batch
    size is read. Either way the file is written at the example's batch, fixed, and checked
    there."""
    class BatchBranch(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            y = self.conv(x)
            if branch(x.shape[0]):
                y = y * 2.0
            return y

    said, model, shape = [], BatchBranch(), (batch, 3, 16, 16)
    info = export_onnx(model, shape, tmp_path / "late.onnx", log=said.append)
    assert not info["dynamic_batch"], said
    assert any(said_how in s for s in said), said
    if said_how == "another output at batch 8":  # the wider probes are said before they run
        # (break171 F6: a ViT's took 110 of deploy's 181 s without a word)
        assert ("the exported program tests the batch size: checking the file against "
                "PyTorch at batches 1, 3, 4, 5, 6, 7, 8, 16 before keeping the batch free") in said
    assert verify_onnx(info["path"], model, shape) < 1e-4


def test_a_model_that_runs_at_multiples_of_its_frames_keeps_a_free_batch(tmp_path):
    """The batch probes are evidence only where the model itself runs: clips of 4 frames folded
    into the batch run at batches 4, 8, ... and the file keeps its free batch."""
    class Frames(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            y = self.conv(x)
            return y.reshape(-1, 4, *y.shape[1:]).mean(1)

    said, model = [], Frames()
    info = export_onnx(model, (8, 3, 16, 16), tmp_path / "frames.onnx", log=said.append)
    assert info["dynamic_batch"], said
    assert verify_onnx(info["path"], model, (8, 3, 16, 16)) < 1e-4


def test_each_output_is_checked_against_its_own_scale(tmp_path):
    """break25 #3: one tolerance from the largest output let a second output wrong by 1 pass
    beside a first of about 1e4."""
    class TwoScales(nn.Module):
        def forward(self, x):
            return 1000 * x.sum((1, 2, 3)), torch.sigmoid(x.mean((2, 3)))

    class SecondWrong(TwoScales):
        def forward(self, x):
            big, small = super().forward(x)
            return big, -small

    path = tmp_path / "two.onnx"
    export_onnx(SecondWrong(), SHAPE, path, log=lambda s: None)
    with pytest.raises(DeployError, match=r"output 1: max abs diff"):
        verify_onnx(str(path), TwoScales(), SHAPE)


def test_auto_backend_picks_onnxruntime_without_tensorrt(monkeypatch, tmp_path):
    lines = []
    monkeypatch.setattr(pipeline.trtb, "tensorrt_status", lambda: (False, "no tensorrt here"))
    assert choose_backend("auto", lines.append) == "onnxruntime"
    assert len(lines) == 1 and "ONNX Runtime" in lines[0] and "no tensorrt here" in lines[0]
    with pytest.raises(DeployError, match="not one of"):
        choose_backend("openvino")
    # deploy says why only once the inputs are checked, not before their error (break37 #9)
    lines.clear()
    with pytest.raises(DeployError, match="does not exist"):
        pipeline.deploy(tmp_path / "no_such_model.onnx", tmp_path / "out", backend="auto",
                        log=lines.append)
    assert lines == [] and not (tmp_path / "out").exists()


def test_report_table_shows_both_models():
    onnx_info = {"max_abs_diff": 1e-7}
    pruned = model_entry(label="p", params=100, times_ms=[1.0, 2.0, 3.0], batch=4,
                         onnx_info=onnx_info)
    dense = model_entry(label="d", params=400, times_ms=[4.0, 5.0, 6.0], batch=4,
                        onnx_info=onnx_info)
    report = build_report(backend="onnxruntime", device="cpu", precision="fp32",
                          input_shape=(4, 3, 8, 8), threads=2, iters=3, warmup=0,
                          versions={"onnxruntime": "x"}, pruned=pruned, dense=dense)
    # params_ratio pruned / dense, as in results.json (break56 #11: it was dense / pruned)
    assert report["speedup"] == pytest.approx(2.5) and report["params_ratio"] == 0.25
    assert report["throughput_per_s"] == pytest.approx(4 * 1000 / 2.0)
    assert report["latency_ms"]["p90"] == pytest.approx(2.8)
    text = format_table(report)
    assert "2.50x" in text and "400" in text and "dense" in text
    # break111 F16: KeyError 'backend' / AttributeError on a dict that is not a report
    with pytest.raises(DeployError, match=r"format_table takes the report .* got a dict without "
                                          r"'backend', 'device'"):
        format_table({"params": 3, "latency_ms": {}, "iters": 1, "precision": "fp32",
                      "input_shape": [1]})
    with pytest.raises(DeployError, match=r"format_table takes the report .* got NoneType"):
        format_table(None)


def test_import_is_light():
    code = ("import sys, fxprune.deploy as d; "
            "assert 'tensorrt' not in sys.modules and 'onnxruntime' not in sys.modules; "
            "d.LatencyTable; d.deploy; assert 'tensorrt' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env={**os.environ})
    assert proc.returncode == 0, proc.stderr


# ----------------------------------------------------------------------------- safety (issue 8)

class _Payload:
    """Unpickling this runs a command: what a crafted .pt file can do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_model_is_refused_without_consent_and_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"model": _Payload(marker)}, evil)
    rc = main(["deploy", str(evil), "--out", str(tmp_path / "o"), *QUICK])
    err = capsys.readouterr().err
    assert rc == 2 and "--trust-model-file" in err and "runs code" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not marker.exists()  # the payload never ran
    assert not (tmp_path / "o").exists()  # nothing written either
    with pytest.raises(DeployError, match="trust_model_file=True"):
        deploy(str(evil), tmp_path / "o2", backend="onnxruntime")
    assert not marker.exists()
    # break25 #13: a file that is no pickle at all was sent to --trust-model-file first
    (tmp_path / "junk.pt").write_bytes(b"garbage\xff\xfe")
    with pytest.raises(DeployError, match="is not a file torch.save wrote"):
        deploy(str(tmp_path / "junk.pt"), tmp_path / "o3", backend="onnxruntime")


def test_compare_file_needs_consent_too(saved, tmp_path, capsys):
    rc = main(["deploy", str(saved / "pruned.pt"), "--out", str(tmp_path / "o"), *QUICK])
    assert rc == 2 and "--trust-model-file" in capsys.readouterr().err
    onnx_path = tmp_path / "pruned.onnx"
    export_onnx(small_net(8), SHAPE, onnx_path, log=lambda s: None)
    rc = main(["deploy", str(onnx_path), "--compare", str(saved / "dense.pt"),
               "--out", str(tmp_path / "o"), *QUICK])
    assert rc == 2 and "--trust-model-file" in capsys.readouterr().err


def test_onnx_file_deploys_without_unpickling(tmp_path):
    onnx_path = tmp_path / "given.onnx"
    export_onnx(small_net(8), SHAPE, onnx_path, log=lambda s: None)
    report = deploy(str(onnx_path), tmp_path / "out", backend="onnxruntime", iters=3, warmup=1,
                    progress=False, log=lambda s: None)
    assert report["input_shape"] == list(SHAPE)  # read from the ONNX input (batch dim -> 1)
    assert report["cuda_version"] is None and report["cudnn_version"] is None  # a CPU run
    # an ONNX file's params are its weights' elements (BN is folded into the convs), not an
    # integer constant's (break106 #3: a mean's axes counted)
    inits = onnx.load(onnx_path).graph.initializer
    weights = [t for t in inits if t.data_type == onnx.TensorProto.FLOAT]
    assert report["params"] == sum(int(np.prod(t.dims)) for t in weights) > 0
    assert len(weights) < len(inits), "the export keeps an integer constant as an initializer"
    assert report["onnx"]["exporter"] == "given" and report["onnx_max_abs_diff"] is None
    assert (tmp_path / "out" / "model.onnx").read_bytes() == onnx_path.read_bytes()


def test_an_onnx_file_with_its_weights_in_a_side_file_is_deployed_with_them(tmp_path):
    """Only the .onnx was copied, so ONNX Runtime could not find ``big.onnx.data``; the copy's
    side file takes deploy's own name, for MODEL and --compare alike."""
    src = tmp_path / "src"
    src.mkdir()
    for name, width in (("big", 8), ("dense", 16)):
        export_onnx(small_net(width), SHAPE, src / f"{name}.onnx", log=lambda s: None)
        m = onnx.load(src / f"{name}.onnx")
        onnx.save_model(m, src / f"{name}.onnx", save_as_external_data=True,
                        location=f"{name}.onnx.data")  # tensors over 1 KiB
    report = deploy(str(src / "big.onnx"), tmp_path / "out", compare=str(src / "dense.onnx"),
                    backend="onnxruntime", iters=3, warmup=1, progress=False, log=lambda s: None)
    assert report["onnx"]["external_data"] is True and report["speedup"] is not None
    assert {"model.onnx.data", "dense.onnx.data"} <= set(os.listdir(tmp_path / "out"))
    # break82 F1: re-timing the folder's own files there (allowed) removed their side files as
    # files of the last deploy, and left model.onnx without its weights
    out = tmp_path / "out"
    report = deploy(str(out / "model.onnx"), out, compare=str(out / "dense.onnx"),
                    backend="onnxruntime", iters=3, warmup=1, progress=False, log=lambda s: None)
    assert report["speedup"] is not None
    assert {"model.onnx", "model.onnx.data", "dense.onnx", "dense.onnx.data"} <= set(
        os.listdir(out))


class Embed(nn.Module):
    def __init__(self):
        super().__init__()
        self.e = nn.Embedding(10, 4)

    def forward(self, x):
        return self.e(x)


def test_an_onnx_file_whose_input_is_not_float_is_one_line(tmp_path):
    """An int64 input was timed with a float tensor: a raw ONNX Runtime error."""
    path = tmp_path / "ints.onnx"
    torch.onnx.export(Embed(), (torch.zeros(1, 5, dtype=torch.long),), path, dynamo=False)
    with pytest.raises(DeployError, match="input is of type INT64: fxprune deploy times models "
                                          "whose one input is an fp32, fp16 or bf16 tensor"):
        deploy(str(path), tmp_path / "out", backend="onnxruntime", progress=False, log=lambda s: None)
    assert not (tmp_path / "out").exists()


def test_an_fp16_onnx_file_is_timed_at_fp16_and_said_to_be(tmp_path):
    """The file's input type is its precision: fp16 was refused (the error said to pass fp32)
    and, timed as fp32, reported as fp32."""
    onnx_path = tmp_path / "half.onnx"
    export_onnx(small_net(8), SHAPE, onnx_path, precision="fp16", log=lambda s: None)
    quick = dict(backend="onnxruntime", iters=3, warmup=1, progress=False, log=lambda s: None)
    with pytest.raises(DeployError, match="of precision fp16 .* pass --precision fp16"):
        deploy(str(onnx_path), tmp_path / "out32", **quick)
    report = deploy(str(onnx_path), tmp_path / "out16", precision="fp16", **quick)
    assert report["precision"] == report["onnx"]["precision"] == "fp16"


class AntialiasedResize(nn.Module):
    """A model with an op that has no half-precision CPU kernel (antialiased bilinear)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(nn.functional.interpolate(x, size=(12, 12), mode="bilinear",
                                                   antialias=True))


def test_a_model_without_half_kernels_is_refused_before_anything_is_written(tmp_path):
    """break179 F1: --precision fp16 (bf16 on the torch backend) with an op lacking a CPU
    kernel in that dtype was a traceback, exit 1, and a model.onnx left without a report."""
    quiet = dict(input_shape=(1, 3, 16, 16), iters=2, warmup=1, progress=False,
                 log=lambda s: None)
    model = AntialiasedResize().eval()
    with pytest.raises(DeployError, match=r"^AntialiasedResize runs at fp32 but "
                                          r"not at fp16 on cpu, where it is exported \(.*Half.*\); "
                                          r"pass precision='fp32' \(--precision fp32\)$"):
        deploy(model, tmp_path / "ort16", backend="onnxruntime", precision="fp16", **quiet)
    with pytest.raises(DeployError, match=r"not at bf16 on cpu, where it is timed \(.*\); pass "
                                          r"precision='fp32' \(--precision fp32\), or time it on a GPU"):
        deploy(model, tmp_path / "torch_bf16", backend="torch", device="cpu",
               precision="bf16", **quiet)
    assert not (tmp_path / "ort16").exists() and not (tmp_path / "torch_bf16").exists()
    with pytest.raises(DeployError, match=r"runs at fp32 but not at fp16 on cpu, where it is "
                                          r"exported \(.*\); pass precision='fp32' \(--precision "
                                          r"fp32\)$"):
        export_onnx(model, (1, 3, 16, 16), tmp_path / "m.onnx", precision="fp16",
                    log=lambda s: None)
    assert not (tmp_path / "m.onnx").exists()
    assert deploy(model, tmp_path / "ok", backend="onnxruntime", **quiet)["precision"] == "fp32"
    # break182 F2: a model whose outputs overflow fp16 was told of a branch on the batch size,
    # then that the export changed its behaviour
    overflow = (r"^(the model \()?BeyondHalf\)? gives inf or NaN at fp16 on cpu, where it is exported, and finite "
                r"outputs at fp32 \(largest \|output\| [\d.e+]+\): a value inside the model or "
                r"at its outputs leaves fp16's range or precision \(largest number 6\.55e\+04\); "
                r"pass precision='fp32'")
    with pytest.raises(DeployError, match=overflow):
        deploy(BeyondHalf().eval(), tmp_path / "huge", backend="onnxruntime", precision="fp16",
               **quiet)
    assert not (tmp_path / "huge").exists()
    said = []  # export_onnx says it too, before its batch probes (review183 R2)
    with pytest.raises(DeployError, match=overflow):
        export_onnx(BeyondHalf().eval(), (1, 3, 16, 16), tmp_path / "h.onnx", precision="fp16",
                    log=said.append)
    assert not (tmp_path / "h.onnx").exists() and not said, said
    # review181 F9: probed at batch 1, and a failure fp32 shares there is not the dtype's: a
    # model of pairs folded into its batch deploys at fp16 at batch 2
    report = deploy(PairsInBatch().eval(), tmp_path / "pairs",
                    **{**quiet, "input_shape": (2, 3, 16, 16)}, backend="onnxruntime",
                    precision="fp16")
    assert report["precision"] == "fp16" and report["batch"] == 2


class BeyondHalf(nn.Module):
    """Outputs past fp16's largest number (65504), as a briefly trained net's logits can be."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x) * 1e6


class PairsInBatch(nn.Module):
    """Samples come in pairs folded into the batch: it runs at even batches only."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.conv(x)
        return y.reshape(y.shape[0] // 2, -1)


def test_a_compare_file_of_another_precision_is_refused_before_model_is_exported(tmp_path):
    """break179 F5: the --compare file's precision was read after MODEL had been exported,
    checked and written, and the folder kept a model.onnx without a report."""
    dense = tmp_path / "dense32.onnx"
    export_onnx(small_net(8), SHAPE, dense, log=lambda s: None)
    said = []
    with pytest.raises(DeployError, match="dense32.onnx is an ONNX file of precision fp32"):
        deploy(small_net(4), tmp_path / "out", compare=str(dense), precision="fp16",
               input_shape=SHAPE, backend="onnxruntime", progress=False, log=said.append)
    assert not (tmp_path / "out").exists() and not any("exporting" in line for line in said)


class VarArgs(nn.Module):
    """A forward(*xs): fxprune.prepare takes example_inputs as its items."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, *xs):
        return self.conv(xs[0])


class SizeAsNumber(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4 * 16 * 16, 10)

    def forward(self, x):
        return self.fc(self.conv(x).view(int(x.size(0)), -1))


def test_a_varargs_forward_keeps_its_batch_free_and_a_fixed_batch_is_named_as_such(tmp_path):
    """break179 F3: a forward(*xs) was always written at a fixed batch (fxprune's own
    dynamic_shapes did not match its signature, and the exporter was blamed); F6: a batch the
    exporter fixed (int(x.size(0))) was called "a branch on the batch size"."""
    said, model = [], VarArgs().eval()
    for which in (model, fxprune.finalize(fxprune.prepare(VarArgs().eval(), (torch.randn(SHAPE),)),
                                          check=False)):
        info = export_onnx(which, SHAPE, tmp_path / "v.onnx", overwrite=True, log=said.append)
        assert info["dynamic_batch"] and info["exporter"] == "dynamo" and not said, said
        # checked at batch 3, which the example (1, then 2) never was
        assert verify_onnx(tmp_path / "v.onnx", which, (3, *SHAPE[1:])) < 1e-5
    info = export_onnx(SizeAsNumber().eval(), SHAPE, tmp_path / "s.onnx", log=said.append)
    assert not info["dynamic_batch"]
    assert said == ["a free batch is not kept: the dynamo exporter fixed the batch at 2 (the "
                    "model's code reads it as a number: int(x.size(0)), a reshape to it); "
                    "exported at batch 1"], said


def test_a_failed_deploy_removes_the_folders_it_created(tmp_path):
    """break179 F7: a failed deploy into a new --out a/b removed b and left a."""
    (tmp_path / "kept").mkdir()
    out = tmp_path / "kept" / "nest" / "a" / "b"
    with pytest.raises(DeployError, match="ONNX Runtime's output differs"):
        deploy(small_net(8), out, input_shape=SHAPE, atol=0, rtol=0, backend="onnxruntime",
               progress=False, log=lambda s: None)
    assert os.listdir(tmp_path / "kept") == []


def test_verify_onnx_names_the_precision_or_batch_the_file_takes(tmp_path, capfd):
    """break179 F4: a dtype the file does not take, or a batch it fixes, was blamed on "a
    reshape to batch 1", and a shape the model does not take was a raw RuntimeError; F11:
    ONNX Runtime's own red error line reached stderr before the one-line error."""
    net = small_net(4)
    half, fixed = tmp_path / "h.onnx", tmp_path / "f4.onnx"
    quiet = dict(log=lambda s: None)
    export_onnx(net, SHAPE, half, precision="fp16", **quiet)
    export_onnx(net, (4, *SHAPE[1:]), fixed, dynamic_batch=False, **quiet)
    capfd.readouterr()
    with pytest.raises(DeployError, match=r"the file's input is tensor\(float16\), fed float32: "
                                          r"pass precision='fp16' \(--precision fp16\)$"):
        verify_onnx(half, net, SHAPE)
    with pytest.raises(DeployError, match=r"the file fixes its batch at 4: run it at batch 4 "
                                          r"\(input shape \(4, 3, 16, 16\); deploy: --batch 4\)$"):
        verify_onnx(fixed, net, (2, *SHAPE[1:]))
    with pytest.raises(DeployError, match=r"input shape \(1, 1, 16, 16\) does not fit the model "
                                          r"\(Sequential\)"):
        verify_onnx(fixed, net, (1, 1, 16, 16))
    # break182 F6: fixed sizes other than the batch were "a size its inputs declare free"
    with pytest.raises(DeployError, match=r"the file's input is \(4, 3, 16, 16\): run "
                                          r"it at a shape of that form \(input_shape= in Python, "
                                          r"--input-shape with deploy\)$"):
        verify_onnx(fixed, net, (4, 3, 20, 20))
    with pytest.raises(DeployError, match=r"precision 'bf16' is not one of \['fp16', 'fp32'\]"):
        verify_onnx(half, net, SHAPE, precision="bf16")  # (break182 F7: a bare KeyError)
    assert "onnxruntime" not in capfd.readouterr().err


def _tiny_onnx(path, nodes, inputs, inits=(), out_type=None):
    from onnx import TensorProto, helper
    y = helper.make_tensor_value_info("y", out_type or TensorProto.FLOAT, [None, 4])
    graph = helper.make_graph(nodes, "g", inputs, [y],
                              initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.save(model, path)
    return str(path)


def test_an_onnx_file_that_fails_to_run_or_has_two_inputs_is_one_line(tmp_path, capfd):
    """break25 #4: a file that declares a free batch but reshapes to batch 1 died in the
    timing loop with ONNX Runtime's traceback; a second (int64) input was fed floats."""
    from onnx import TensorProto, helper, numpy_helper
    quick = dict(backend="onnxruntime", iters=3, warmup=1, progress=False, log=lambda s: None)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    fixed = _tiny_onnx(tmp_path / "fixed.onnx",
                       [helper.make_node("Reshape", ["x", "shape"], ["y"])], [x],
                       [numpy_helper.from_array(np.array([1, 4], dtype=np.int64), "shape")])
    with pytest.raises(DeployError, match=r"ONNX Runtime failed to run \S+ at input shape "
                                          r"\(4, 4\): .*pass the --batch/--input-shape") as info:
        deploy(fixed, tmp_path / "out", batch=4, **quick)
    assert "\n" not in str(info.value)
    # a kernel that fails at run time: ONNX Runtime's own red error line is not printed before
    # fxprune's one line (break179 F11, review181 F5: the input checks log nothing anyway)
    assert "[E:onnxruntime" not in capfd.readouterr().err
    assert deploy(fixed, tmp_path / "out1", batch=1, **quick)["input_shape"] == [1, 4]
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 4])
    two = _tiny_onnx(tmp_path / "two.onnx", [helper.make_node("Relu", ["x"], ["y"])], [x, ids])
    with pytest.raises(DeployError, match=r"has 2 inputs \(x, ids\); fxprune deploy times models "
                                          "of one input tensor"):
        deploy(two, tmp_path / "out2", **quick)
    # an input of unknown rank is no 0-d tensor (break26 #9); onnx.checker refuses the file
    free = _tiny_onnx(tmp_path / "free.onnx", [helper.make_node("Relu", ["x"], ["y"])],
                      [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)])
    with pytest.raises(DeployError, match="onnx.checker rejected .*'shape' of 'type' is required"):
        deploy(free, tmp_path / "out3", input_shape=(2, 4), **quick)


def test_a_bf16_onnx_file_is_told_what_would_time_it(tmp_path, capsys):
    """break25 #9: each error's advice led to the next (--precision bf16, then --backend torch,
    then --backend onnxruntime)."""
    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info("x", TensorProto.BFLOAT16, ["batch", 4])
    path = _tiny_onnx(tmp_path / "bf16.onnx", [helper.make_node("Relu", ["x"], ["y"])], [x],
                      out_type=TensorProto.BFLOAT16)
    with pytest.raises(DeployError, match="is a bf16 ONNX file, and no backend here times one"
                                          ".*--backend torch --precision bf16"):
        deploy(path, tmp_path / "out", backend="onnxruntime", iters=3, warmup=1, progress=False,
               log=lambda s: None)


@pytest.mark.parametrize("content", [b"not a protobuf \xff\xff\xff", b"PK\x03\x04 a torch.save zip", b""])
def test_a_file_that_is_not_onnx_is_one_line(tmp_path, capsys, content):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(content)
    rc = main(["deploy", str(bad), "--out", str(tmp_path / "o"), *QUICK])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and "is not a readable ONNX model" in err


def test_wrong_input_shape_shows_the_recorded_one(saved, tmp_path, capsys):
    rc = main(["deploy", str(saved / "pruned.pt"), "--input-shape", "1,1,28", "--out",
               str(tmp_path / "o"), *QUICK, *TRUST])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "input shape (1, 1, 28) does not fit" in err
    assert "records fxprune_input_shape = (1, 3, 16, 16)" in err


def test_out_naming_a_file_is_one_line_and_file_untouched(saved, tmp_path, capsys):
    target = tmp_path / "report.txt"
    target.write_bytes(b"mine\n")
    rc = main(["deploy", str(saved / "pruned.pt"), "--out", str(target), *QUICK, *TRUST])
    err = capsys.readouterr().err
    assert rc == 2 and "is a file, not a folder" in err and len(err.strip().splitlines()) == 1
    assert target.read_bytes() == b"mine\n"
    # a folder under it (break129 F7: a bare "[Errno 20] Not a directory")
    rc = main(["deploy", str(saved / "pruned.pt"), "--out", str(target / "sub"), *QUICK, *TRUST])
    err = capsys.readouterr().err
    assert rc == 2 and f"{target} is a file, not a folder; choose another --out" in err, err
    assert len(err.strip().splitlines()) == 1 and target.read_bytes() == b"mine\n"


def test_deploy_never_replaces_files_it_did_not_write(saved, tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"my own model")
    rc = main(["deploy", str(saved / "pruned.pt"), "--out", str(folder), *QUICK, *TRUST])
    assert rc == 2 and "did not record writing" in capsys.readouterr().err
    assert (folder / "model.onnx").read_bytes() == b"my own model"
    # a folder of an earlier deploy is fxprune's own: deploying again there works
    again = tmp_path / "again"
    for _ in range(2):
        assert main(["deploy", str(saved / "pruned.pt"), "--out", str(again), *QUICK,
                     *TRUST]) == 0
    # ... file by file: a file the user put there later is still theirs (the marker made the
    # whole folder deploy's, and a second deploy replaced the user's dense.onnx)
    (again / "dense.onnx").write_bytes(b"my own dense export")
    rc = main(["deploy", str(saved / "pruned.pt"), "--out", str(again), "--compare",
               str(saved / "dense.pt"), *QUICK, *TRUST])
    assert rc == 2 and "holds dense.onnx that fxprune deploy did not record writing" in capsys.readouterr().err
    assert (again / "dense.onnx").read_bytes() == b"my own dense export"
    (again / "dense.onnx").unlink()
    # break62 #5: a deploy folder copied without its times (cp -r, scp -r) is still deploy's:
    # the marker records each file's content; a file changed at the same size is not
    copied = tmp_path / "copied"
    shutil.copytree(again, copied, copy_function=shutil.copyfile)
    assert (copied / "model.onnx").stat().st_mtime_ns != (again / "model.onnx").stat().st_mtime_ns
    assert main(["deploy", str(saved / "pruned.pt"), "--out", str(copied), *QUICK, *TRUST]) == 0
    text = (copied / "report.json").read_text()
    (copied / "report.json").write_text(text.replace("1", "2", 1))
    assert main(["deploy", str(saved / "pruned.pt"), "--out", str(copied), *QUICK, *TRUST]) == 2
    assert "holds report.json that fxprune deploy did not record" in capsys.readouterr().err
    # break62 #6: MODEL inside --out, under a name deploy writes: said so, not "delete it"
    own = tmp_path / "own"
    own.mkdir()
    (own / "model.onnx").write_bytes((again / "model.onnx").read_bytes())
    assert main(["deploy", str(own / "model.onnx"), "--out", str(own), *QUICK]) == 2
    assert (f"MODEL {own / 'model.onnx'} is inside --out {own}, where deploy writes model.onnx; "
            "choose another --out") in capsys.readouterr().err
    (own / "model.onnx").rename(own / "dense.onnx")  # break179 F10: written with --compare only
    assert main(["deploy", str(own / "dense.onnx"), "--out", str(own), *QUICK]) == 2
    assert (f"MODEL {own / 'dense.onnx'} is inside --out {own}, where deploy writes dense.onnx "
            "(with --compare); choose another --out") in capsys.readouterr().err
    (again / "report.json").write_text("{}")  # one of deploy's files, changed since
    assert main(["deploy", str(saved / "pruned.pt"), "--out", str(again), *QUICK, *TRUST]) == 2
    assert "holds report.json" in capsys.readouterr().err
    # an older fxprune's text marker recorded nothing: refused, saying so
    (again / ".fxprune-deploy").write_text("fxprune deploy writes here: model.onnx, report.json\n")
    assert main(["deploy", str(saved / "pruned.pt"), "--out", str(again), *QUICK, *TRUST]) == 2
    assert "its marker records no files: an older fxprune" in capsys.readouterr().err
    # a marker that is a link or a folder is not deploy's: nothing is written through it
    outside = tmp_path / "outside.txt"
    outside.write_text("mine")
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / ".fxprune-deploy").symlink_to(outside)
    assert main(["deploy", str(saved / "pruned.pt"), "--out", str(linked), *QUICK, *TRUST]) == 2
    assert "which is not a file fxprune deploy wrote" in capsys.readouterr().err
    assert outside.read_text() == "mine" and os.listdir(linked) == [".fxprune-deploy"]
    (linked / ".fxprune-deploy").unlink()
    os.link(outside, linked / ".fxprune-deploy")  # a hard link is written through as well
    assert main(["deploy", str(saved / "pruned.pt"), "--out", str(linked), *QUICK, *TRUST]) == 2
    assert "with other hard links" in capsys.readouterr().err and outside.read_text() == "mine"
    # break25 #12: a file of the user's named like the marker was taken for an older marker
    # and replaced by deploy's
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / ".fxprune-deploy").write_text("my notes")
    assert main(["deploy", str(saved / "pruned.pt"), "--out", str(notes), *QUICK, *TRUST]) == 2
    assert "holds a .fxprune-deploy that fxprune deploy did not write" in capsys.readouterr().err
    assert os.listdir(notes) == [".fxprune-deploy"]
    assert (notes / ".fxprune-deploy").read_text() == "my notes"
    # break206 F1: a marker an older deploy left cut (interrupted, a full disk) was "not
    # written by fxprune deploy", a way out that could not work
    for cut in ("", '{\n "fxprune_deploy": 1,\n "written": {\n  "report.json": [11'):
        (notes / ".fxprune-deploy").write_text(cut)
        assert main(["deploy", str(saved / "pruned.pt"), "--out", str(notes), *QUICK,
                     *TRUST]) == 2
        assert ("holds a .fxprune-deploy left cut by an interrupted fxprune deploy, so which "
                "files there are deploy's is not known: remove .fxprune-deploy and the files "
                "there of the names deploy writes") in capsys.readouterr().err


def test_the_report_and_the_marker_are_written_whole_or_not_at_all(saved, tmp_path, capsys,
                                                                    monkeypatch):
    """break206 F1: report.json and the marker were written in place: a full disk or Ctrl-C
    left a cut report, which the marker then recorded as deploy's."""
    import errno
    import pathlib

    real = pathlib.Path.write_text

    def disk_fills(self, text, *args, **kwargs):
        if self.name.startswith(".report.json"):  # half the report, then no space
            real(self, text[: len(text) // 2], *args, **kwargs)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", disk_fills)
    out = tmp_path / "dep"
    assert main(["deploy", str(saved / "pruned.pt"), "--out", str(out), *QUICK, *TRUST]) == 2
    capsys.readouterr()
    assert not (out / "report.json").exists()
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]  # its temporary file too
    marker = json.loads((out / ".fxprune-deploy").read_text())
    assert "report.json" not in marker["written"] and "model.onnx" in marker["written"]
    monkeypatch.setattr(pathlib.Path, "write_text", real)
    assert main(["deploy", str(saved / "pruned.pt"), "--out", str(out), *QUICK, *TRUST]) == 0
    assert json.loads((out / "report.json").read_text())["model_file"] == str(saved / "pruned.pt")


def test_a_deploys_dense_export_deployed_back_into_its_folder_says_what_it_would_replace(
        saved, tmp_path, capsys):
    """break25 #12: refused as 'the dense.onnx this deploy writes', which it writes only with
    --compare; allowed, it replaced the pruned model.onnx with the dense one (break26 #2)."""
    out = tmp_path / "out"
    assert main(["deploy", str(saved / "pruned.pt"), "--compare", str(saved / "dense.pt"),
                 "--out", str(out), *QUICK, *TRUST]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix == ".onnx"}
    assert main(["deploy", str(out / "dense.onnx"), "--out", str(out), *QUICK]) == 2
    err = capsys.readouterr().err
    assert "is the dense model of the deploy in" in err and "would replace that deploy's model.onnx" in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.suffix == ".onnx"} == before
    assert main(["deploy", str(out / "dense.onnx"), "--out", str(tmp_path / "other"), *QUICK]) == 0


class FixedBatch(nn.Module):
    """``x.reshape(1, -1)``: runs at batch 1 only, so no exporter can keep the batch dynamic."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 16 * 16, 4)

    def forward(self, x):
        return self.fc(x.reshape(1, -1))


def test_a_batch_free_model_exported_at_batch_1_keeps_its_batch_free(tmp_path):
    """break55 #3: at batch 1 (the README's example) convnext, levit and efficientvit got a
    file fixed at batch 1, though their code is batch-free: torch.export's 0/1 specialisation.
    The free batch is exported from an example of 2, and checked at batch 2 too."""
    import timm

    said = []
    model = timm.create_model("test_convnext").eval()  # the zoo's own small convnext
    info = export_onnx(model, (1, 3, 64, 64), tmp_path / "t.onnx", log=said.append)
    assert info["dynamic_batch"] is True and info["exporter"] == "dynamo" and said == []
    assert verify_onnx(info["path"], model, (1, 3, 64, 64)) < 1e-4


class MaskedLogProbs(nn.Module):
    """Log-probabilities of masked logits: -inf where a logit is masked, in torch and ORT."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        z = self.conv(x).mean((2, 3))
        return z.masked_fill(z < 0, float("-inf")).log_softmax(1)


def test_infinities_in_the_same_places_are_the_same_output(tmp_path):
    """break77 F1: inf - inf is NaN, which no tolerance passes: a model whose output holds -inf
    was refused as "the export changed the model's behaviour", and export_onnx fixed its batch,
    blaming a branch on the batch size."""
    torch.manual_seed(0)
    model, said = MaskedLogProbs().eval(), []
    with torch.no_grad():
        assert torch.isinf(model(torch.randn(2, 3, 16, 16))).any()  # the case under test
    info = export_onnx(model, (2, 3, 16, 16), tmp_path / "m.onnx", log=said.append)
    assert info["dynamic_batch"] is True and said == []
    assert verify_onnx(info["path"], model, (2, 3, 16, 16)) < 1e-4


class CountsCalls(nn.Module):
    def __init__(self, reads_count, nan=False):
        super().__init__()
        self.reads_count, self.nan = reads_count, nan
        self.conv = nn.Conv2d(3, 4, 3)
        self.register_buffer("calls", torch.zeros(()))
        self.register_buffer("missing", torch.tensor([float("nan"), 1.0]))  # never written

    def forward(self, x):
        self.calls += 1
        y = self.conv(x) + (self.calls if self.reads_count else 0)
        return y * self.missing[0] if self.nan else y  # an output of NaNs


def test_a_model_whose_output_follows_a_buffer_it_updates_is_refused_as_such(tmp_path):
    """break77 F2: blamed on a branch on the batch size, then on lossy ops."""
    said = []
    with pytest.raises(DeployError, match=r"^the model updates its buffer calls in forward, in "
                                          r"eval mode, and its output moves with it"):
        export_onnx(CountsCalls(True), SHAPE, tmp_path / "c.onnx", log=said.append)
    assert said == [] and not (tmp_path / "c.onnx").exists()
    info = export_onnx(CountsCalls(False), SHAPE, tmp_path / "n.onnx", log=said.append)
    assert info["dynamic_batch"] and said == []  # a counter no output reads: exported
    # break82 F4: NaN != NaN: a buffer holding one, or an output of NaNs, read as state
    info = export_onnx(CountsCalls(False, nan=True), SHAPE, tmp_path / "nan.onnx",
                       log=said.append)
    assert info["dynamic_batch"] and said == []


class DictOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.conv(x)
        # "mean": the dynamo exporter's name for the graph's own mean (break82 F2: a key
        # equal to it made an invalid file)
        return {"mean": y.mean((2, 3)), "maps": y, "aux": [y.amax((2, 3)), y.sum()]}


def test_onnx_outputs_are_named_by_the_model_outputs_keys(tmp_path):
    """break77 F7: a dict output's keys were lost (output_0, output_1, ...)."""
    model = DictOutput().eval()
    info = export_onnx(model, SHAPE, tmp_path / "d.onnx", log=lambda s: None)
    names = ["output_mean", "output_maps", "output_aux_0", "output_aux_1"]
    assert info["outputs"] == names
    assert [o.name for o in onnx.load(info["path"]).graph.output] == names
    x = torch.randn(SHAPE)
    got = dict(zip(names, ort.InferenceSession(info["path"]).run(None, {"input": x.numpy()})))
    with torch.no_grad():
        want = model(x)
    for name, ref in [("output_mean", want["mean"]), ("output_maps", want["maps"]),
                      ("output_aux_0", want["aux"][0]), ("output_aux_1", want["aux"][1])]:
        np.testing.assert_allclose(got[name], ref.numpy(), rtol=1e-5, atol=1e-5)


def test_only_keys_that_spell_one_name_take_their_places():
    """break83 F4: keys "a.b" and "a_b" made every output of the file positional."""
    from fxprune.deploy.onnx_export import output_names_of

    t = torch.zeros(1)
    assert output_names_of({"a.b": t, "a_b": t, "c": t}) == ["output_0", "output_1", "output_c"]
    assert output_names_of({"2": t, "a.b": t, "a_b": t}) == [  # key "2" and the clash at place 2
        "output_0", "output_1", "output_2"]


def test_output_gap_counts_misplaced_infinities_as_a_difference():
    from fxprune.deploy.onnx_export import output_gap

    inf, nan = math.inf, math.nan
    assert output_gap(np.array([-inf, 1.0, nan]), np.array([-inf, 1.5, nan])) == (0.5, 1.5, 0)
    diff, scale, misplaced = output_gap(np.array([-inf, 1.0, 2.0]), np.array([0.0, 1.0, inf]))
    assert diff == inf and misplaced == 2 and scale == 1.0
    assert output_gap(np.array([inf]), np.array([-inf]))[2] == 1  # another sign
    assert output_gap(np.zeros(0), np.zeros(0)) == (0.0, 0.0, 0)


def test_export_reports_the_batch_the_file_declares(tmp_path):
    """The exporter fixes the batch silently when the code needs it; the description said
    ``dynamic_batch: true`` and ONNX Runtime failed at batch 3."""
    said = []
    info = export_onnx(FixedBatch(), (1, 3, 16, 16), tmp_path / "f.onnx", log=said.append)
    assert info["dynamic_batch"] is False
    # once, with the exporter's reason (break129 F10: then "fixed the batch at 1" again)
    fixed = [s for s in said if "batch 1" in s or "batch at 1" in s]
    assert len(fixed) == 1 and "with a dynamic batch (" in fixed[0], said
    assert fixed[0].endswith("exported at batch 1"), said
    info = export_onnx(small_net(8), (1, 3, 16, 16), tmp_path / "d.onnx", log=said.append)
    assert info["dynamic_batch"] is True


def test_export_records_the_opset_the_file_declares_and_refuses_an_older_one(tmp_path):
    """The description names the file's opset and the request. An opset below 18 was
    upgraded to 18 by torch's exporter after printing onnxscript's traceback (break111 F7):
    export_onnx refuses it with the way out, as deploy does."""
    info = export_onnx(small_net(8), (1, 3, 16, 16), tmp_path / "m.onnx", log=lambda s: None)
    declared = next(o.version for o in onnx.load(tmp_path / "m.onnx").opset_import if o.domain == "")
    assert info["opset"] == declared == 18 and info["opset_requested"] == 18
    with pytest.raises(DeployError, match=r"opset=9: torch's ONNX exporter writes opset 18 or "
                                          r"later; .*dynamo=False, opset_version=9\)"):
        export_onnx(small_net(8), (1, 3, 16, 16), tmp_path / "o.onnx", opset=9)
    with pytest.raises(DeployError, match=r"opset must be an ONNX opset from 18 to \d+"):
        export_onnx(small_net(8), (1, 3, 16, 16), tmp_path / "o.onnx", opset="18")
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("flag, value, phrase", [
    ("--iters", "0", "iters (--iters) must be an integer >= 1, got 0"),
    ("--threads", "0", "threads (--threads) must be an integer >= 1, got 0"),
    ("--warmup", "-1", "warmup (--warmup) must be an integer >= 0, got -1"),
    ("--batch", "0", "batch (--batch) must be an integer >= 1, got 0"),
])
def test_bad_counts_are_refused_before_any_work(saved, tmp_path, capsys, flag, value, phrase):
    out = tmp_path / "out"
    rc = main(["deploy", str(saved / "pruned.pt"), "--out", str(out), "--input-shape", "1,3,16,16",
               flag, value, *TRUST])
    err = capsys.readouterr().err
    assert rc == 2 and phrase in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()  # nothing exported, no folder made


@pytest.mark.parametrize("option, phrase", [
    ({"atol": -1.0}, r"atol \(--atol\) must be a finite number >= 0"),
    ({"rtol": float("nan")}, r"rtol \(--rtol\) must be a finite number >= 0"),
    ({"opset": 99}, "--opset must be an ONNX opset from 18 to"),
    # break25 #8: accepted, then written at 18 after the exporter's tracebacks
    ({"opset": 13}, r"--opset 13: torch's ONNX exporter writes opset 18 or later; .*"
                    r"dynamo=False, opset_version=13\)"),
    ({"input_shape": (1, 3, 16.7, 16)}, "must hold integers"),
    # break179 F8: an empty part or a stray letter was dropped, and 1,3,16,16 deployed
    ({"input_shape": "1,3,16,16,x"}, "is not a comma-separated list of integers"),
    ({"input_shape": "1,,3,16,16"}, "is not a comma-separated list of integers"),
])
def test_bad_tolerances_opsets_and_shapes_are_refused_before_any_work(tmp_path, option, phrase):
    """A negative atol blamed the export for the failed check; opset 99 was logged and exported
    at 18; a 16.7 dim was cut to 16."""
    with pytest.raises(DeployError, match=phrase):
        deploy(small_net(8), tmp_path / "out", backend="onnxruntime", iters=3, warmup=1,
               progress=False, log=lambda s: None, **{"input_shape": SHAPE, **option})
    assert not (tmp_path / "out").exists()


def test_numpy_numbers_and_an_array_of_dims_are_taken_as_plain_ones(tmp_path):
    """break179 F8: batch=np.int64(2) was "not an integer >= 1", an array of dims was told to
    "pass its .shape", an np.int64 opset came back unwritable as JSON, and log=None was a
    TypeError."""
    report = deploy(small_net(8), tmp_path / "out", backend="onnxruntime", iters=np.int64(3),
                    warmup=np.int32(1), threads=np.int64(1), batch=np.int64(2),
                    opset=np.int64(20), input_shape=np.array(SHAPE), progress=False, log=None)
    assert report["input_shape"] == [2, *SHAPE[1:]] and report["batch"] == 2
    json.dumps(report)
    info = export_onnx(small_net(8), torch.tensor(SHAPE), tmp_path / "m.onnx", opset=np.int64(20),
                       log=None)
    assert type(info["opset_requested"]) is int and json.dumps(info)


@pytest.mark.parametrize("call", ["export", "verify", "deploy"])
def test_an_example_tensor_passed_as_the_input_shape_is_named(tmp_path, call):
    """Session 25: export_onnx(model, x, ...) with a tensor x failed inside torch.randn with a
    TypeError listing randn's signatures (or, in deploy, with the tensor printed)."""
    model, path = small_net(8), tmp_path / "m.onnx"
    if call == "verify":
        export_onnx(model, SHAPE, path, log=lambda s: None)
    run = {"export": lambda x: export_onnx(model, x, tmp_path / "n.onnx", log=lambda s: None),
           "verify": lambda x: verify_onnx(path, model, x),
           "deploy": lambda x: deploy(model, tmp_path / "out", backend="onnxruntime", iters=3,
                                      warmup=1, progress=False, log=lambda s: None,
                                      input_shape=x)}[call]
    with pytest.raises(DeployError, match=r"^input shape must be a shape, not a Tensor of shape "
                                          r"\(1, 3, 16, 16\): pass its .shape$"):
        run(torch.randn(SHAPE))
    assert not (tmp_path / "n.onnx").exists() and not (tmp_path / "out").exists()


def test_a_float64_model_is_said_to_be_exported_at_fp32(tmp_path):
    said = []  # break25 #13: it was exported, checked and timed as fp32 with nothing logged
    export_onnx(small_net(8).double(), SHAPE, tmp_path / "m.onnx", log=said.append)
    assert "the model's float64 weights are exported at fp32" in said
    said.clear()
    export_onnx(small_net(8), SHAPE, tmp_path / "n.onnx", log=said.append)
    assert not any("weights are exported" in s for s in said)


@pytest.mark.parametrize("width, dense, says", [
    (5, 16, r"2 of its 2 convs keep a channel count that is not a multiple of 8 \(0, 3\), which "
            r"many kernels run slower than a round count; prune with channel_step=8"),
    (8, 16, r"FLOPs are a poor guide to this runtime's speed; price with a latency table"),
    # review123 #5: widths the dense model has too are not blamed
    (5, 5, r"FLOPs are a poor guide to this runtime's speed")])
def test_a_pruned_model_slower_than_dense_is_said_with_the_likely_cause(tmp_path, monkeypatch,
                                                                        width, dense, says):
    """break120 F2: mobilenet_v2 hand-masked to odd widths ran 0.71x at 29% of the FLOPs, and
    deploy printed the 0.71x without a word."""
    def timed(paths, shape, **kwargs):  # the pruned file twice as slow as the dense one
        return {name: [2.0 if name == "model" else 1.0] * 5 for name in paths}

    monkeypatch.setattr(pipeline.ortb, "time_onnx_models", timed)
    lines = []
    report = deploy(small_net(width), tmp_path / "out", compare=small_net(dense), input_shape=SHAPE,
                    backend="onnxruntime", iters=5, warmup=1, progress=False, log=lines.append)
    assert report["speedup"] == pytest.approx(0.5)
    said = [line for line in lines if line.startswith("the pruned model runs slower than dense")]
    assert len(said) == 1 and re.search(r"here \(0\.50x\): " + says, said[0]), said
    monkeypatch.setattr(pipeline.ortb, "time_onnx_models",
                        lambda paths, shape, **kw: {n: [1.0] * 5 for n in paths})
    lines.clear()
    deploy(small_net(width), tmp_path / "out2", compare=small_net(16), input_shape=SHAPE,
           backend="onnxruntime", iters=5, warmup=1, progress=False, log=lines.append)
    assert not any("slower than dense" in line for line in lines)


def test_a_batch_fixed_by_the_models_code_is_said_once_with_its_reason(tmp_path):
    """break129 F10: the dynamo exporter's reason was quoted as its heading alone ("The
    following inconsistencies were found:"), and the next line said the fixed batch again."""
    from fxprune.deploy.onnx_export import exporter_reason

    assert exporter_reason(ValueError("The following inconsistencies were found:\n"
                                      "  * batch must be 1\n")) == (
        "ValueError: The following inconsistencies were found: * batch must be 1")

    class FlatToOne(nn.Module):
        def __init__(self):
            super().__init__()
            self.c, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4 * 16 * 16, 5)

        def forward(self, x):
            return self.fc(self.c(x).reshape(1, -1))

    lines = []
    info = export_onnx(FlatToOne().eval(), SHAPE, tmp_path / "m.onnx", log=lines.append)
    assert not info["dynamic_batch"]
    said = [line for line in lines if "batch" in line and ("fixed" in line or "exported at" in line)]
    assert len(said) == 1, lines
    assert not said[0].endswith("found:); exported at batch 1"), said


def test_a_model_random_in_eval_mode_is_not_called_a_lossy_export(tmp_path):
    """break129 F12: noise drawn in eval mode (randn_like) was told "the export changed the
    model's behaviour"; the model differs from itself."""
    class Noisy(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, x):
            return self.c(x + 0.1 * torch.randn_like(x))

    model = Noisy().eval()
    export_onnx(model, SHAPE, tmp_path / "n.onnx", dynamic_batch=False, log=lambda s: None)
    said = r"own output differs between two calls on one input \(max abs diff .*: random ops in eval mode\)"
    with pytest.raises(DeployError, match=said):
        verify_onnx(str(tmp_path / "n.onnx"), model, SHAPE)
    lines = []  # and export's batch probes say it too (review131 F3: "a free batch is not kept
    (tmp_path / "b.onnx.data").write_text("the user's")  # not this small model's weights
    with pytest.raises(DeployError, match=said):  # ... a branch on the batch size")
        export_onnx(model, SHAPE, tmp_path / "b.onnx", log=lines.append)
    assert not any("free batch is not kept" in line for line in lines), lines
    assert not (tmp_path / "b.onnx").exists()  # a file it could not check is not left
    assert (tmp_path / "b.onnx.data").read_text() == "the user's"  # (break182 F1: removed)


class TinyOutputs(nn.Module):
    """Outputs near 1e-12, as an untrained mobilenet_v3_small's logits at 64 px."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        return self.c(x).mean((2, 3)) * 1e-12


def test_a_check_that_cannot_judge_outputs_below_its_atol_says_so(tmp_path):
    """break129 F3: an fp16 file whose outputs underflowed to all zeros "matched PyTorch (max
    abs diff 5.6e-12)", as any file would under atol 1e-4."""
    model = TinyOutputs().eval()
    export_onnx(model, SHAPE, tmp_path / "h.onnx", precision="fp16", log=lambda s: None)
    # said, not refused: a right fp32 file of exact zeros that PyTorch computes as rounding
    # leftovers would be refused too (review130 S2)
    with pytest.warns(RuntimeWarning, match=r"outputs are at most .* \(ONNX Runtime's are all "
                                            r"zeros: below fp16's smallest value, they underflow\), "
                                            r"within the check's tolerance 0.0001 of zero"):
        verify_onnx(str(tmp_path / "h.onnx"), model, SHAPE, precision="fp16")
    export_onnx(model, SHAPE, tmp_path / "f.onnx", log=lambda s: None)
    with pytest.warns(RuntimeWarning, match=r"outputs are at most .*, within the check's "
                                            r"tolerance 1e-06 of zero, so it cannot tell") as caught:
        assert verify_onnx(str(tmp_path / "f.onnx"), model, SHAPE) < 1e-6
    assert len(caught) == 1  # once per file, not per checked input


def test_a_check_against_pytorch_outputs_of_exact_zeros_says_it_cannot_judge(tmp_path):
    """break171 F1: a torchvision ViT at init (a zero-initialised head) "matched PyTorch (max
    abs diff 0)" with no word, while outputs of 1e-10 were said."""
    model = TinyOutputs().eval()
    with torch.no_grad():
        model.c.weight.zero_()
        model.c.bias.zero_()
    export_onnx(model, SHAPE, tmp_path / "z.onnx", log=lambda s: None)
    with pytest.warns(RuntimeWarning, match=r"^verify_onnx: the model's outputs are all zeros, "
                                            r"ONNX Runtime's too, within the check's tolerance "
                                            r"1e-06 of zero, so it cannot tell") as caught:
        assert verify_onnx(str(tmp_path / "z.onnx"), model, SHAPE) == 0
    assert len(caught) == 1

    class MinusInf(nn.Module):  # no finite value to judge: not called zeros (review172 F7)
        def forward(self, x):
            return torch.log(x.mean((2, 3)) * 0)

    export_onnx(MinusInf().eval(), SHAPE, tmp_path / "i.onnx", log=lambda s: None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert verify_onnx(str(tmp_path / "i.onnx"), MinusInf().eval(), SHAPE) == 0


def test_an_output_holding_a_non_tensor_is_refused_in_one_line_before_exporting(tmp_path):
    """break129 F8: both exporters failed, the message cut mid-word ("output 1 (3")."""
    class Counted(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, x):
            return {"feat": self.c(x), "n": 3, "skip": None}

    with pytest.raises(DeployError, match=r"^the model's output\['n'\] is 3 \(int\), not a tensor: "
                                          r"an ONNX model returns tensors only; wrap the model"):
        export_onnx(Counted().eval(), SHAPE, tmp_path / "m.onnx", log=lambda s: None)
    assert not (tmp_path / "m.onnx").exists()


def test_a_model_traced_with_its_optional_tensor_given_is_said_to_take_two_inputs(tmp_path):
    """break129 F4: prepared with (x, y) for forward(x, y=None), the finalized graph keeps the
    default for show but reads y; deploy blamed a deep copy, then the input shape. Traced
    with y left None, it is one input (the graph only guards y == None)."""
    class Optional(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(3, 16, 1), nn.Conv2d(16, 8, 1)

        def forward(self, x, y=None):
            z = self.a(x)
            return self.c(torch.relu(z if y is None else z + self.b(y)))

    x = torch.randn(SHAPE)
    both = fxprune.finalize(fxprune.prepare(Optional().eval(), (x, x)))
    for shape in (None, SHAPE):
        with pytest.raises(DeployError, match=r"^GraphModule takes 2 inputs \(x, y\); fxprune deploy "
                                              r"times single-input models"):
            deploy(both, tmp_path / "out", input_shape=shape, iters=3, warmup=1, progress=False,
                   log=lambda s: None)
    from fxprune.deploy.model_io import check_one_tensor_input
    check_one_tensor_input(fxprune.finalize(fxprune.prepare(Optional().eval(), (x,))), "one")

    class Scaled(nn.Module):  # a float default the graph reads runs as it is (review130 F1)
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, x, scale=2.0):
            return self.a(x) * scale

    check_one_tensor_input(fxprune.finalize(fxprune.prepare(Scaled().eval(), (x,))), "scaled")


def test_more_timing_threads_than_cores_are_warned_of(tmp_path, monkeypatch):
    """break129 F14: --threads 16 on 2 cores timed a p90 13x the median without a word (the
    load check allows the timing its own threads)."""
    monkeypatch.setattr(pipeline.ortb, "time_onnx_models",
                        lambda paths, shape, **kw: {n: [1.0] * 3 for n in paths})
    monkeypatch.setattr(pipeline, "cpu_load", lambda: (0.0, 2))  # (usable cores: review131 F4)
    with pytest.warns(RuntimeWarning, match=r"timing with 5 threads on 2 usable cores: .*pass "
                                            r"threads=2 \(--threads 2\)"):
        deploy(small_net(8), tmp_path / "out", input_shape=SHAPE, backend="onnxruntime", threads=5,
               iters=3, warmup=1, progress=False, log=lambda s: None)


def test_the_report_names_its_onnx_files_by_absolute_path(tmp_path, monkeypatch):
    """break129 F5: a relative --out recorded onnx.path relative to deploy's working folder
    (model_file was absolute), so a moved run plotted from one folder and was refused from
    the others."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(pipeline.ortb, "time_onnx_models",
                        lambda paths, shape, **kw: {n: [1.0] * 3 for n in paths})
    report = deploy(small_net(8), "rel", compare=small_net(16), input_shape=SHAPE,
                    backend="onnxruntime", iters=3, warmup=1, progress=False, log=lambda s: None)
    for entry in (report, report["dense"]):
        assert entry["onnx"]["path"] == str(tmp_path / "rel" / os.path.basename(entry["onnx"]["path"]))
    written = json.loads((tmp_path / "rel" / "report.json").read_text())
    assert os.path.isabs(written["onnx"]["path"]) and os.path.isabs(written["dense"]["onnx"]["path"])


def test_a_prepared_model_deployed_unfinalized_is_warned_of(tmp_path):
    """break25 #5: it was timed at full width and reported a 0.99x 'speedup', silently."""
    import fxprune
    pm = fxprune.prepare(small_net(8), torch.randn(SHAPE))
    with pytest.warns(RuntimeWarning, match="not finalized") as caught:
        deploy(pm, tmp_path / "out", backend="onnxruntime", iters=3, warmup=1, progress=False,
               log=lambda s: None, input_shape=SHAPE)
    said = [str(w.message) for w in caught if "not finalized" in str(w.message)]
    assert len(said) == 1 and "not finalized: it runs at full width" in said[0]  # once, not twice
    # break111 F7: export_onnx wrote the full-width masked model without a word
    with pytest.warns(RuntimeWarning, match=r"export_onnx got a model fxprune.prepare returned, "
                                            r"not finalized: .*export fxprune.finalize\(model\)"):
        export_onnx(pm, SHAPE, tmp_path / "p.onnx", log=lambda s: None)
    wrapped = nn.Sequential(pm, nn.Softmax(1))  # break124 #8: inside a wrapper, said too
    with pytest.warns(RuntimeWarning, match=r"export_onnx got a model whose submodule `0` is one "
                                            r"fxprune.prepare returned, not finalized"):
        export_onnx(wrapped, SHAPE, tmp_path / "w.onnx", log=lambda s: None)
    with pytest.warns(RuntimeWarning, match=r"Sequential holds `0`, which is a model "
                                            r"fxprune.prepare returned, not finalized"):
        deploy(wrapped, tmp_path / "out2", backend="onnxruntime", iters=3, warmup=1,
               progress=False, log=lambda s: None, input_shape=SHAPE)


class TwoInputs(nn.Module):
    def forward(self, x, z):
        return x + z


def test_a_model_of_two_inputs_is_told_deploy_times_one(tmp_path):
    """It was told to pass a fitting --input-shape, which no shape is."""
    with pytest.raises(DeployError, match=r"takes 2 inputs \(x, z\); fxprune deploy times "
                                          "single-input models"):
        deploy(TwoInputs(), tmp_path / "out", input_shape=SHAPE, backend="onnxruntime",
               progress=False, log=lambda s: None)
    # break106 #2: without a shape it was first sent to --input-shape, then to an ONNX file
    # of its own, which deploy refuses for the same reason
    with pytest.raises(DeployError, match=r"takes 2 inputs .* or export it with torch.onnx.export "
                                          r"and time it with ONNX Runtime directly") as info:
        deploy(TwoInputs(), tmp_path / "out", backend="onnxruntime", progress=False,
               log=lambda s: None)
    assert "deploy that file" not in str(info.value)


    class KeywordOnly(nn.Module):  # break25 #13: the same wrong advice
        def forward(self, x, *, scale):
            return x * scale

    with pytest.raises(DeployError, match=r"requires the keyword argument scale; fxprune deploy "
                                          "times single-input models"):
        deploy(KeywordOnly(), tmp_path / "out", input_shape=SHAPE, backend="onnxruntime",
               progress=False, log=lambda s: None)


class DictInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, batch):
        return self.conv(batch["image"])


class TupleInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 4)

    def forward(self, inputs):
        image, meta = inputs
        return self.conv(image) + self.fc(meta)[:, :, None, None]


class PerSample(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return torch.stack([self.conv(img.unsqueeze(0))[0] for img in x])


@pytest.mark.parametrize("model, says", [
    (DictInput, r"^DictInput's forward reads its input as a container \(it indexes it by the "
                r"key 'image'\); fxprune deploy times models that take one tensor"),
    # iterating: a tuple unpacked, or a loop over the samples (break82 F6: told "a container"
    # where only the shape was wrong); the message names both
    (TupleInput, r"^input shape .* does not fit TupleInput \(.*\), whose forward iterates over "
                 r"its input: if it unpacks a tuple or list input \(a, b = inputs\), no shape "
                 r"fits: wrap it"),
])
def test_a_model_reading_a_dict_or_tuple_is_told_deploy_times_one_tensor(tmp_path, model, says):
    """break77 F3: told to pass a fitting --input-shape, which no shape is."""
    with pytest.raises(DeployError, match=says):
        deploy(model(), tmp_path / "out", input_shape=SHAPE, backend="onnxruntime",
               progress=False, log=lambda s: None)
    assert not (tmp_path / "out").exists()


class FlattensToAFixedSize(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 16 * 16, 10)

    def forward(self, x):
        return self.fc(self.c(x).view(x.size(0), 4 * 16 * 16))


class DictOfTwoConvs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 3)

    def forward(self, batch):
        return self.b(torch.relu(self.a(batch["image"])))


def test_a_traced_model_refused_at_a_wrong_shape_or_for_a_dict_input_is_one_line(tmp_path, capsys):
    """break171 F3: torch.fx printed its generated code's traceback (27-63 lines) to stderr
    from each of deploy's probe calls before the one-line error; break171 F4: a finalized
    dict-input model was told a deep copy had lost its shape."""
    torch.manual_seed(0)
    pm = fxprune.prepare(FlattensToAFixedSize().eval(), (torch.randn(1, 3, 16, 16),))
    fxprune.channel_groups(pm)[0].mask[:2] = 0
    torch.save(fxprune.finalize(pm), tmp_path / "view.pt")
    pm = fxprune.prepare(DictOfTwoConvs().eval(), ({"image": torch.randn(1, 3, 16, 16)},))
    fxprune.channel_groups(pm)[0].mask[:2] = 0
    torch.save(fxprune.finalize(pm), tmp_path / "dict.pt")
    capsys.readouterr()
    for model, shape, says in [
            ("view.pt", ["--input-shape", "1,3,32,32"], "input shape (1, 3, 32, 32) does not fit"),
            ("dict.pt", ["--input-shape", "1,3,16,16"], "reads its input as a container (it "
                                                        "indexes it by the key 'image')"),
            ("dict.pt", [], "reads its input as a container (it indexes it by the key 'image')")]:
        rc = main(["deploy", str(tmp_path / model), "--out", str(tmp_path / "o"), *shape, *QUICK,
                   *TRUST])
        err = capsys.readouterr().err
        assert rc == 2 and len(err.strip().splitlines()) == 1 and says in err, err
        assert "deepcopy" not in err
    assert not (tmp_path / "o").exists()


def test_a_per_sample_loop_with_a_wrong_shape_is_told_the_shape(tmp_path):
    with pytest.raises(DeployError, match=r"^input shape \(2, 4, 16, 16\) does not fit "
                                          r"PerSample \(.*pass a fitting --input-shape"):
        deploy(PerSample(), tmp_path / "out", input_shape=(2, 4, 16, 16), backend="onnxruntime",
               progress=False, log=lambda s: None)
    report = deploy(PerSample(), tmp_path / "ok", input_shape=SHAPE, backend="onnxruntime",
                    iters=2, warmup=1, progress=False, log=lambda s: None)
    assert report["batch"] == SHAPE[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize("backend", [[], ["--backend", "torch"]])
def test_cuda_device_without_cuda_is_refused_before_export(saved, tmp_path, capsys, backend):
    """break199 F6: without --backend, auto chose ONNX Runtime and the advice to pass
    --backend torch led to "no CUDA device" only on the second try."""
    out = tmp_path / "out"
    rc = main(["deploy", str(saved / "pruned.pt"), "--out", str(out), "--input-shape", "1,3,16,16",
               *backend, "--device", "cuda", *TRUST])
    err = capsys.readouterr().err
    way = "pass --device cpu" if backend else "drop --device (ONNX Runtime runs on the CPU)"
    assert rc == 2 and f"--device cuda: torch sees no CUDA device here; {way}" in err, err
    assert not out.exists()


@pytest.mark.parametrize("extra, phrase", [
    (["--backend", "onnxruntime", "--device", "cpu"], "--device cpu applies to the torch backend"),
    (["--backend", "torch", "--device", "gpu"], "--device 'gpu' is not a torch device"),
])
def test_device_that_would_be_ignored_or_is_not_a_device_is_refused(saved, tmp_path, capsys, extra, phrase):
    out = tmp_path / "out"
    rc = main(["deploy", str(saved / "pruned.pt"), "--out", str(out), "--input-shape", "1,3,16,16",
               *extra, *TRUST])
    err = capsys.readouterr().err
    assert rc == 2 and phrase in err, err
    assert not out.exists()


def test_a_given_file_this_deploy_would_overwrite_is_refused(saved, tmp_path, capsys):
    """Deploy the dense model into d, then the pruned one into d comparing d/model.onnx: the
    pruned export would replace that file before it is read (the pruned model timed as dense)."""
    d = tmp_path / "d"
    assert main(["deploy", str(saved / "dense.pt"), "--out", str(d), "--input-shape", "1,3,16,16",
                 *QUICK, *TRUST]) == 0
    dense_onnx = (d / "model.onnx").read_bytes()
    rc = main(["deploy", str(saved / "pruned.pt"), "--out", str(d), "--compare",
               str(d / "model.onnx"), *QUICK, *TRUST])
    err = capsys.readouterr().err
    assert rc == 2 and "is the model.onnx this deploy writes" in err, err
    assert (d / "model.onnx").read_bytes() == dense_onnx
    link = tmp_path / "link"  # the same folder under another name
    link.symlink_to(d, target_is_directory=True)
    rc = main(["deploy", str(saved / "pruned.pt"), "--out", str(link), "--compare",
               str(d / "model.onnx"), *QUICK, *TRUST])
    assert rc == 2 and "this deploy writes" in capsys.readouterr().err
    assert (d / "model.onnx").read_bytes() == dense_onnx
    # a file at its own destination is used in place: MODEL d/model.onnx works
    assert main(["deploy", str(d / "model.onnx"), "--out", str(d), *QUICK]) == 0
    # ... also through the symlinked folder (a copy onto itself was a bare SameFileError)
    assert main(["deploy", str(link / "model.onnx"), "--out", str(d), *QUICK]) == 0


def test_params_of_a_module_and_an_onnx_file_are_counted_the_same_way(tmp_path):
    """A model compared with its own ONNX export: both sides counted from the ONNX files
    (BatchNorm folded), so the ratio is 1, not module parameters over initializers."""
    net = small_net(8)
    net.fxprune_input_shape = SHAPE
    export_onnx(net, SHAPE, tmp_path / "same.onnx", log=lambda s: None)
    report = deploy(net, tmp_path / "out", compare=str(tmp_path / "same.onnx"),
                    backend="onnxruntime", iters=3, warmup=1, progress=False, log=lambda s: None)
    assert report["params_counted"] == "ONNX floating-point initializer elements"
    assert report["params"] == report["dense"]["params"] and report["params_ratio"] == 1.0
    assert "params (ONNX)" in format_table(report)
    report = deploy(net, tmp_path / "out2", compare=small_net(16), backend="onnxruntime",
                    iters=3, warmup=1, progress=False, log=lambda s: None)
    assert report["params_counted"] == "module parameters"
    assert (report["params"], report["dense"]["params"]) == (n_params(net), n_params(small_net(16)))
    # FLOPs at the timed input, batch included, as fxprune.count_flops counts them (break205
    # F8: in fxprune train's results only); an ONNX file's are not counted
    x = (torch.randn(*SHAPE),)
    flops = (fxprune.count_flops(net, x), fxprune.count_flops(small_net(16), x))
    assert (report["flops"], report["dense"]["flops"]) == flops
    assert report["flops_ratio"] == pytest.approx(flops[0] / flops[1])
    assert f"FLOPs (batch {SHAPE[0]})" in format_table(report)
    four = deploy(net, tmp_path / "out4", compare=small_net(16), backend="onnxruntime",
                  input_shape=(4, *SHAPE[1:]), iters=3, warmup=1, progress=False,
                  log=lambda s: None)  # one image's count times the batch (review208 R5)
    assert four["flops"] == fxprune.count_flops(net, (torch.randn(4, *SHAPE[1:]),))
    first = deploy(net, tmp_path / "out3", compare=str(tmp_path / "same.onnx"),
                   backend="onnxruntime", iters=3, warmup=1, progress=False, log=lambda s: None)
    assert "flops" not in first and "flops_ratio" not in first and "FLOPs" not in format_table(first)


def test_an_onnx_file_with_fixed_dims_at_another_shape_is_one_line(tmp_path, capsys):
    fixed = tmp_path / "fixed.onnx"
    torch.onnx.export(small_net(8).eval(), (torch.zeros(SHAPE),), str(fixed), dynamo=False)
    out = tmp_path / "o"
    rc = main(["deploy", str(fixed), "--out", str(out), "--batch", "4", *QUICK])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "input shape (4, 3, 16, 16) does not fit" in err and "(1, 3, 16, 16)" in err
    assert not out.exists()  # refused before anything is written


@pytest.mark.parametrize("extra, phrase", [
    (["--max-batch", "8"], "max_batch (--max-batch) applies to the tensorrt backend"),
    (["--workspace-mib", "64"], "workspace (bytes; --workspace-mib in MiB) applies to the tensorrt backend"),
    (["--workspace-mib", "-5"], "--workspace-mib must be an integer >= 1, got -5"),
])
def test_tensorrt_only_flags_are_not_silently_ignored(saved, tmp_path, capsys, extra, phrase):
    out = tmp_path / "out"
    rc = main(["deploy", str(saved / "pruned.pt"), "--out", str(out), *extra, *QUICK, *TRUST])
    err = capsys.readouterr().err
    assert rc == 2 and phrase in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_python_callers_are_told_the_argument_not_only_the_flag(tmp_path):
    """break174 F9: deploy(..., workspace=2**20) said "--workspace-mib applies ...", a flag the
    caller did not pass, in MiB where the argument is in bytes."""
    with pytest.raises(DeployError, match=r"^workspace \(bytes; --workspace-mib in MiB\) applies to "
                                          r"the tensorrt backend.*pass backend='tensorrt'"):
        deploy(small_net(8), tmp_path / "o", backend="onnxruntime", workspace=2 ** 20,
               input_shape=SHAPE)
    with pytest.raises(DeployError, match=r"^iters \(--iters\) must be an integer >= 1, got 0"):
        deploy(small_net(8), tmp_path / "o", backend="onnxruntime", iters=0, input_shape=SHAPE)
    assert not (tmp_path / "o").exists()


def test_a_deploy_that_fails_leaves_no_folder_it_made_for_nothing(tmp_path, monkeypatch):
    onnx_path = tmp_path / "given.onnx"
    export_onnx(small_net(8), SHAPE, onnx_path, log=lambda s: None)
    import fxprune.deploy.pipeline as pipeline

    def fail(*args, **kwargs):
        raise DeployError("cannot convert this file")

    monkeypatch.setattr(pipeline, "_given_onnx", fail)
    for out in (tmp_path / "new", tmp_path / "existing"):
        if out.name == "existing":
            out.mkdir()
        with pytest.raises(DeployError, match="cannot convert"):
            deploy(str(onnx_path), out, backend="onnxruntime", iters=3, warmup=1,
                   progress=False, log=lambda s: None)
    assert not (tmp_path / "new").exists()  # made by the deploy, nothing in it but its mark
    assert (tmp_path / "existing").is_dir()  # the user's folder stays (with the mark)


class ReadsAValue(nn.Module):
    """Per-batch input normalisation through a Python number read out of the input."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return torch.softmax(self.conv(x / float(x.abs().amax())).flatten(1), 1)


class ReadsASize(nn.Module):
    """Attention's scale written as most write it: a number read from a size."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.conv(x)
        return y / math.sqrt(y.size(1))


def test_a_value_read_from_the_input_fails_the_check_and_a_size_read_passes(tmp_path, monkeypatch):
    """break48 #1: when the dynamo exporter failed, the TorchScript trace recorded
    float(x.abs().amax()) of the example input as a constant, and the check on one random input
    passed: the file was another model (17x deploy's tolerance on inputs in [0, 1]). break51 #3:
    refusing every such TracerWarning refused size reads too (math.sqrt(q.size(-1))), which are
    right at the exported shape: the check's second input, at another scale, tells them apart."""
    fail_dynamo(monkeypatch, "aten_amax: Required parameter 'dim' is not provided")
    reads_a_value, reads_a_size = ReadsAValue(), ReadsASize()
    with pytest.warns(torch.jit.TracerWarning, match="Converting a tensor to a Python float"):
        export_onnx(reads_a_value, SHAPE, tmp_path / "rv.onnx", log=lambda s: None)
    with pytest.raises(DeployError, match="ONNX Runtime's output differs from PyTorch's"):
        verify_onnx(str(tmp_path / "rv.onnx"), reads_a_value, SHAPE)
    info = export_onnx(reads_a_size, SHAPE, tmp_path / "rs.onnx", log=lambda s: None)
    assert info["exporter"] == "torchscript"
    assert verify_onnx(info["path"], reads_a_size, SHAPE) < 1e-5


class BakesTheBatch(nn.Module):
    """A flatten written with the batch read as a number: the TorchScript trace records it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.conv(x)
        return y.reshape(int(y.size(0)), -1)


def test_a_file_declaring_a_free_batch_is_checked_at_another_batch(tmp_path, monkeypatch):
    """The TorchScript fallback wrote int(y.size(0)) as the example's batch into a file that
    declares its batch free; the check ran at the exported batch only and passed, and the file
    gave batch 3's input a (2, 1176) output. Checked at twice the batch: a model whose batch
    must be a multiple of it (pairs, frames folded into the batch) runs there (break57 #1: at
    batch + 1 it crashed with torch's traceback); a value the trace baked is named as the
    batch's, not a lossy op (break57 #3)."""
    fail_dynamo(monkeypatch, "dynamo cannot")
    model, shape = BakesTheBatch(), (2, 3, 16, 16)
    with pytest.warns(torch.jit.TracerWarning, match="Python integer"):
        info = export_onnx(model, shape, tmp_path / "b.onnx", log=lambda s: None)
    assert info["dynamic_batch"]
    with pytest.raises(DeployError, match=r"b.onnx declares a free batch but does not hold at "
                                          r"batch 4 \(exported at 2\): output 0 has shape "
                                          r"\(2, 1568\), PyTorch gives \(4, 784\).*"
                                          r"export_onnx\(\.\.\., dynamic_batch=False\)"):
        verify_onnx(info["path"], model, shape)
    fixed = export_onnx(model, shape, tmp_path / "f.onnx", dynamic_batch=False, log=lambda s: None)
    assert verify_onnx(fixed["path"], model, shape) < 1e-5  # declared fixed: checked at 2 only

    class BakesAValue(nn.Module):  # the same shape at any batch, the batch baked in a value
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(x).sum(0, keepdim=True) / int(x.size(0))

    class Pairs(nn.Module):  # the batch holds pairs: it runs at even batches only
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            y = self.conv(x).flatten(1)
            return y.view(-1, 2, y.shape[1]).sum(1)

    bakes_a_value = BakesAValue()
    with pytest.warns(torch.jit.TracerWarning, match="Python integer"):
        info = export_onnx(bakes_a_value, shape, tmp_path / "v.onnx", log=lambda s: None)
    with pytest.raises(DeployError, match=r"v.onnx declares a free batch but does not hold at "
                                          r"batch 4 \(exported at 2\): output 0 differs"):
        verify_onnx(info["path"], bakes_a_value, shape)
    pairs = Pairs()
    info = export_onnx(pairs, shape, tmp_path / "p.onnx", log=lambda s: None)
    assert verify_onnx(info["path"], pairs, shape) < 1e-5


def test_the_onnx_check_holds_a_small_output_to_its_own_scale(tmp_path):
    """break48 #2: fp16's absolute tolerance 1e-2 exceeded a 1000-class softmax's whole output
    (max 0.003), so verify_onnx passed the file against any model of that shape."""
    def softmax_net(seed):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 14 * 14, 1000),
                             nn.Softmax(dim=1))

    path = tmp_path / "s.onnx"
    export_onnx(softmax_net(0), SHAPE, path, precision="fp16", log=lambda s: None)
    assert verify_onnx(str(path), softmax_net(0), SHAPE, precision="fp16") < 1e-4
    with pytest.raises(DeployError, match="ONNX Runtime's output differs from PyTorch's"):
        verify_onnx(str(path), softmax_net(1), SHAPE, precision="fp16")


def test_export_onnx_keeps_an_existing_file_expands_a_tilde_and_names_a_missing_folder(tmp_path, monkeypatch):
    """break48 #4: export_onnx replaced any file at its path, left '~' as a folder name, and a
    missing folder read as a dynamo failure, then a raw FileNotFoundError naming '<cwd>/~'."""
    mine = tmp_path / "x.onnx"
    mine.write_bytes(b"the user's own")
    with pytest.raises(DeployError, match=r"x.onnx exists: export_onnx replaces it only with overwrite=True"):
        export_onnx(small_net(4), SHAPE, mine, log=lambda s: None)
    assert mine.read_bytes() == b"the user's own"
    # break111 F7: overwrite=True replaced any file, a user's notes too; it replaces ONNX files
    with pytest.raises(DeployError, match=r"x.onnx exists and is not an ONNX model: export_onnx "
                                          r"replaces only an ONNX file, even with overwrite=True"):
        export_onnx(small_net(4), SHAPE, mine, overwrite=True, log=lambda s: None)
    assert mine.read_bytes() == b"the user's own"
    mine.unlink()
    export_onnx(small_net(8), SHAPE, mine, log=lambda s: None)
    export_onnx(small_net(4), SHAPE, mine, overwrite=True, log=lambda s: None)
    onnx.checker.check_model(str(mine))
    assert verify_onnx(str(mine), small_net(4), SHAPE) < 1e-4  # the new model's file
    monkeypatch.setenv("HOME", str(tmp_path))
    info = export_onnx(small_net(4), SHAPE, "~/y.onnx", log=lambda s: None)
    assert info["path"] == str(tmp_path / "y.onnx") and (tmp_path / "y.onnx").exists()
    lines = []
    with pytest.raises(DeployError, match=r"folder .*nowhere does not exist: create it"):
        export_onnx(small_net(4), SHAPE, tmp_path / "nowhere" / "z.onnx", log=lines.append)
    assert lines == []  # no exporter ran


def test_a_model_whose_class_lives_in_the_saving_script_names_that_cause(tmp_path, capsys):
    """break48 #3: `class Net` in train.py, torch.save(model, 'dense.pt'): fxprune deploy said
    "is it a file written by torch.save(module, path)?", which it was."""
    script = tmp_path / "train.py"
    script.write_text("import torch\nfrom torch import nn\n"
                      "class Net(nn.Module):\n"
                      "    def __init__(self):\n        super().__init__(); self.c = nn.Conv2d(3, 4, 3)\n"
                      "    def forward(self, x):\n        return self.c(x)\n"
                      f"torch.save(Net(), {str(tmp_path / 'dense.pt')!r})\n")
    subprocess.run([sys.executable, str(script)], check=True, cwd=tmp_path)
    rc = main(["deploy", str(tmp_path / "dense.pt"), "--out", str(tmp_path / "out"),
               "--input-shape", "1,3,16,16", *QUICK, *TRUST])
    err = capsys.readouterr().err
    assert rc != 0 and "pickles class Net from the script that saved it (__main__)" in err, err
    assert "move the class into a module on PYTHONPATH" in err and "is it a file written" not in err


def test_a_model_whose_class_module_is_not_importable_names_that_module(tmp_path, capsys):
    """break97 F4: the class in the user's models.py, saved from its folder; the fxprune command
    (no current folder on sys.path) said "is it a file written by torch.save(module, path)?"."""
    (tmp_path / "mynets.py").write_text(
        "from torch import nn\nclass Net(nn.Module):\n"
        "    def __init__(self):\n        super().__init__(); self.c = nn.Conv2d(3, 4, 3)\n"
        "    def forward(self, x):\n        return self.c(x)\n")
    subprocess.run([sys.executable, "-c", "import torch, mynets; torch.save(mynets.Net(), 'dense.pt')"],
                   check=True, cwd=tmp_path)
    rc = main(["deploy", str(tmp_path / "dense.pt"), "--out", str(tmp_path / "out"),
               "--input-shape", "1,3,16,16", *QUICK, *TRUST])
    err = capsys.readouterr().err
    assert rc != 0 and "whose class is in module 'mynets', which cannot be imported here" in err, err
    assert "PYTHONPATH" in err and "is it a file written" not in err


class BranchesOnAnItem(nn.Module):
    """A branch on a number read out of a tensor: no "Python boolean" in the tracer's warning."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.conv(x)
        if y.mean().item() > -1e9:  # always true here, known only at run time
            y = y * 2
        return y


def test_a_branch_on_a_number_read_from_a_tensor_is_refused_too(tmp_path):
    """break53 #1: `if x.mean().item() > 0:` warns "Converting a tensor to a Python number",
    not "Python boolean"; refusing branches by the latter only exported one branch, and both
    check inputs took it."""
    with pytest.raises(DeployError, match=r"the model branches on a tensor.s value \(test_deploy.py:\d+\)"):
        export_onnx(BranchesOnAnItem(), SHAPE, tmp_path / "bi.onnx", log=lambda s: None)
    assert not (tmp_path / "bi.onnx").exists()


def test_a_failed_or_stopped_redeploy_leaves_no_report_of_other_files(saved, tmp_path, capsys,
                                                                      monkeypatch):
    """break66 #1: a re-deploy of another model into a used --out that failed its ONNX check
    (or was stopped while timing) left its model.onnx beside the last run's report.json, which
    named the other model and its speedup, and the next deploy accepted both."""
    out = tmp_path / "out"
    assert main(["deploy", str(saved / "pruned.pt"), "--out", str(out), "--compare",
                 str(saved / "dense.pt"), *QUICK, *TRUST]) == 0
    capsys.readouterr()
    # the check fails: the file that failed it is removed, and the old report with it
    assert main(["deploy", str(saved / "dense.pt"), "--out", str(out), "--input-shape",
                 "1,3,16,16", "--atol", "0", "--rtol", "0", *QUICK, *TRUST]) == 2
    assert "ONNX" in capsys.readouterr().err
    # (break77 F6: the first deploy's dense.onnx stayed, beside a report not of it)
    assert sorted(os.listdir(out)) == [".fxprune-deploy"]
    # stopped while timing (Ctrl-C, or SIGTERM, which the CLI turns into one)
    def stopped(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(pipeline.ortb, "time_onnx_models", stopped)
    assert main(["deploy", str(saved / "pruned.pt"), "--out", str(out), *QUICK, *TRUST]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "(the ONNX files there, model.onnx" in err, err
    assert "report.json" not in os.listdir(out)
    monkeypatch.undo()
    assert main(["deploy", str(saved / "pruned.pt"), "--out", str(out), *QUICK, *TRUST]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["model_file"] == str(saved / "pruned.pt")
    assert sorted(os.listdir(out)) == [".fxprune-deploy", "model.onnx", "report.json"]
    import hashlib
    assert report["onnx"]["sha256"] == hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest()


def test_a_deploy_into_a_folder_another_run_writes_is_refused(saved, tmp_path, capsys):
    """break66 #2: two deploys into one --out both exited 0, the report of one beside the
    other's model.onnx (with a matching hash); deploy holds the folder's lock, as train does."""
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, os, sys, time
        fd = os.open({str(out)!r}, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX)
        print("locked", flush=True)
        time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["deploy", str(saved / "pruned.pt"), "--out", str(out), *QUICK, *TRUST]) == 2
        err = capsys.readouterr().err
        assert f"--out {out} is in use: another fxprune deploy or train is writing there" in err
        assert os.listdir(out) == []
        # break69 F1: the running deploy's model.onnx, not yet in its marker, was called not
        # deploy's, and the user told to delete it; in use is said first
        (out / "model.onnx").write_bytes(b"being written")
        assert main(["deploy", str(saved / "pruned.pt"), "--out", str(out), *QUICK, *TRUST]) == 2
        err = capsys.readouterr().err
        assert "is in use: another fxprune deploy" in err and "delete" not in err, err
        assert (out / "model.onnx").read_bytes() == b"being written"
    finally:
        holder.kill()
        holder.wait()
    (out / "model.onnx").unlink()
    assert main(["deploy", str(saved / "pruned.pt"), "--out", str(out), *QUICK, *TRUST]) == 0


@pytest.mark.parametrize("args, phrase", [
    (["--out", "", "--backend", "onnxruntime"],
     "--out is empty: give the folder to write model.onnx and report.json to"),
    (["--out", "OUT", "--backend", "torch", "--device", "mps"],
     "--device mps: the torch backend times on 'cpu' or 'cuda', not 'mps'"),
])
def test_an_empty_out_or_an_unsupported_torch_device_is_refused_before_any_work(
        saved, tmp_path, capsys, args, phrase):
    """break66 #4: --out "" gave a bare errno message; --device mps was refused after the
    model had been exported and checked, leaving model.onnx in --out."""
    args = [str(tmp_path / "out") if a == "OUT" else a for a in args]
    assert main(["deploy", str(saved / "pruned.pt"), *args, "--iters", "2", "--warmup", "0",
                 "--no-progress", *TRUST]) == 2
    err = capsys.readouterr().err
    assert phrase in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_an_exported_program_or_an_onnx_file_under_another_name_is_named(tmp_path, capsys):
    """break66 #4: a torch.export.save file was "a pickle" without --trust-model-file and
    "corrupted" with it; an ONNX file named .pt was "not a file torch.save wrote"."""
    model = small_net(8).eval()
    torch.export.save(torch.export.export(model, (torch.randn(SHAPE),)), tmp_path / "ep.pt2")
    export_onnx(model, SHAPE, tmp_path / "m.onnx", log=lambda s: None)
    shutil.copyfile(tmp_path / "m.onnx", tmp_path / "m.pt")
    for name, said in [("ep.pt2", "is a torch.export program (torch.export.save), not a module: "
                                  "load it with torch.export.load(path).module()"),
                       ("m.pt", "is an ONNX file under another name: name it .onnx")]:
        for trust in ([], TRUST):
            assert main(["deploy", str(tmp_path / name), "--out", str(tmp_path / "out"),
                         "--input-shape", "1,3,16,16", *QUICK, *trust]) == 2
            err = capsys.readouterr().err
            assert said in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_an_input_shape_larger_than_memory_is_one_line(tmp_path):
    """break106 #1: the first allocation was caught, the probe's second one raised a traceback
    ("can't allocate memory: you tried to allocate 119999997600000012 bytes"), exit 1."""
    with pytest.raises(DeployError, match=r"^input shape \(1, 3, 99999999, 99999999\) needs .* GiB "
                                          r"for one fp32 tensor, more than the .* GiB this machine "
                                          r"has available; pass a smaller batch \(--batch; "
                                          r"batch= in Python\) or --input-shape$"):
        deploy(nn.Conv2d(3, 4, 3), tmp_path / "out", input_shape=(1, 3, 99999999, 99999999),
               backend="onnxruntime", progress=False, log=lambda s: None)


class _RunsOutOfMemoryFrom(nn.Module):
    """A conv that fails as torch's CPU allocator does from batch ``limit`` on."""

    def __init__(self, limit):
        super().__init__()
        self.conv, self.limit = nn.Conv2d(3, 4, 3), limit

    def forward(self, x):
        if x.shape[0] >= self.limit:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: "
                               "can't allocate memory: you tried to allocate 1048576000 bytes. "
                               "Error code 12 (Cannot allocate memory)")
        return self.conv(x)


def test_a_batch_that_runs_out_of_memory_is_not_called_a_shape_that_does_not_fit(tmp_path):
    """break186 F1: an out-of-memory at --batch 8000 was "input shape ... does not fit the
    model", "the model records no input shape", "pass a fitting --input-shape"."""
    from fxprune.deploy.model_io import check_input_fits
    from fxprune.deploy.onnx_export import _compare

    model = _RunsOutOfMemoryFrom(8)
    check_input_fits(model, (4, 3, 8, 8), "model")  # fits
    with pytest.raises(DeployError, match=r"^running model at input shape \(8, 3, 8, 8\) ran out "
                                          r"of memory \(can't allocate memory: you tried to "
                                          r"allocate 1048576000 bytes\); pass a smaller batch "
                                          r"\(--batch; batch= in Python\), or free memory$"):
        check_input_fits(model, (8, 3, 8, 8), "model")
    # a file with a free batch is checked at twice the batch: the memory is named there too,
    # not the code's dependence on the batch
    with pytest.raises(DeployError, match=r"^running the model \(_RunsOutOfMemoryFrom\) at input "
                                          r"shape \(8, 3, 8, 8\) \(deploy checks a file whose "
                                          r"batch is free at twice --batch 4 too\) ran out of "
                                          r"memory"):
        _compare(None, model, torch.zeros(8, 3, 8, 8), "m.onnx", (4, 3, 8, 8), "fp32", 1e-5, 1e-5)


def test_a_model_of_integer_input_is_not_told_to_change_the_shape(tmp_path):
    """break66 #4: an embedding front end got "pass a fitting --input-shape", which no shape
    could satisfy (deploy feeds float inputs)."""
    model = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(20, 2))
    with pytest.raises(DeployError, match=r"^Sequential takes an integer input \(it runs on a "
                                          r"torch.long tensor of shape \(2, 5\), not on a float "
                                          r"one\): fxprune deploy times models of one float input"):
        deploy(model, tmp_path / "out", input_shape=(2, 5), backend="onnxruntime", iters=2,
               warmup=0, progress=False, log=lambda s: None)
    assert not (tmp_path / "out").exists()


class Inverts(nn.Module):
    """torch.linalg.inv: neither ONNX exporter has it (torch 2.14)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 16)

    def forward(self, x):
        y = self.lin(x).view(-1, 4, 4)
        return torch.linalg.inv(y @ y.transpose(1, 2) + torch.eye(4))


def test_a_failed_export_prints_no_ir_graph_and_leaves_torchs_onnx_log_as_it_was(tmp_path,
                                                                                  capfd):
    """break66 #4: torch's TorchScript exporter turned its ONNX log on (and left it on), so the
    failed export printed its IR graph, tens of lines, before fxprune's one-line error."""
    for was in (True, False):  # (on: as an earlier TorchScript export leaves it)
        torch._C._jit_set_onnx_log_enabled(was)
        with pytest.raises(DeployError, match="ONNX export failed with both exporters"):
            export_onnx(Inverts(), (2, 4), tmp_path / "m.onnx", log=lambda s: None)
        out, err = capfd.readouterr()
        assert "Torch IR graph" not in out + err and "aten::" not in out + err
        assert torch._C._jit_is_onnx_log_enabled() == was


def test_sigterm_stops_a_deploy_as_ctrl_c_does(saved, tmp_path):
    """break66 #3: SIGTERM (kill, timeout, a scheduler) ended deploy where it stood: a
    truncated model.onnx mid-export, a traceback-free but unrecorded folder. The CLI turns it
    into Ctrl-C's clean stop (fxprune.run_io.stop_on_sigterm, as train's)."""
    import signal

    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fxprune", "deploy", str(saved / "pruned.pt"), "--out", str(out),
         "--iters", "100000000", "--warmup", "0", "--no-progress", "--backend", "onnxruntime",
         *TRUST], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # timing has started: model.onnx is written and checked
        if line.startswith("timing on"):
            break
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "fxprune deploy: interrupted" in err
    assert sorted(os.listdir(out)) == [".fxprune-deploy", "model.onnx"]  # checked, recorded
    assert main(["deploy", str(saved / "pruned.pt"), "--out", str(out), *QUICK, *TRUST]) == 0


def test_an_interrupt_before_the_folder_is_made_says_so(saved, tmp_path, capsys, monkeypatch):
    """break158 F8: the fixed text spoke of "checked ONNX files" in a folder never made."""
    from fxprune.deploy import pipeline as pipeline_mod

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(pipeline_mod, "deploy", stopped)
    out = tmp_path / "never"
    assert main(["deploy", str(saved / "pruned.pt"), "--out", str(out), *QUICK, *TRUST]) == 130
    assert capsys.readouterr().err == (f"fxprune deploy: interrupted; {out} was not created; "
                                       "run it again to time the model\n")


def test_a_reader_that_goes_away_does_not_stop_a_deploy(saved, tmp_path):
    """break158 F1: `fxprune deploy ... | head -1` stopped with "error: Broken pipe" (2) before
    report.json; the console's rest is dropped and the deploy ends as it would."""
    r, w = os.pipe()
    os.close(r)  # every write to w fails with EPIPE
    out = tmp_path / "out"
    try:
        proc = subprocess.run([sys.executable, "-m", "fxprune", "deploy", str(saved / "pruned.pt"),
                               "--out", str(out), *QUICK, *TRUST], stdout=w, stderr=w,
                              timeout=300)
    finally:
        os.close(w)
    assert proc.returncode == 0
    assert json.loads((out / "report.json").read_text())["model_file"] == str(saved / "pruned.pt")


def test_the_input_check_runs_at_the_copys_dtype_whatever_torchs_default():
    """The fp32 copy was fed torch.zeros at the default dtype: under
    torch.set_default_dtype(torch.float64) a fitting shape was called unfitting."""
    from fxprune.deploy.model_io import check_input_fits

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    model(torch.zeros(1, 3, 8, 8))
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        check_input_fits(model, (1, 3, 8, 8), "model")
    finally:
        torch.set_default_dtype(before)


def test_a_model_finalized_in_python_deploys_without_input_shape(tmp_path, capsys):
    """break98 F6: only fxprune train's models recorded their input shape; one finalized in
    Python needed --input-shape, although prepare was given its example input."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 16, 16)
    pm = fxprune.prepare(small_net(8), (x,))
    fxprune.channel_groups(pm)[0].mask[:4] = 0
    small = fxprune.finalize(pm)
    assert small.fxprune_input_shape == (1, 3, 16, 16)
    # break111 F4: a deep copy (one kept before fine-tuning) loses it, which deploy says
    with pytest.raises(DeployError, match=r"input shape is unknown \(copy.deepcopy of a finalized "
                                          r"model does not keep its fxprune_input_shape: set it on "
                                          r"the copy\)"):
        deploy(copy.deepcopy(small), tmp_path / "copy", backend="onnxruntime")
    torch.save(small, tmp_path / "small.pt")
    rc = main(["deploy", str(tmp_path / "small.pt"), "--out", str(tmp_path / "out"), *QUICK, *TRUST])
    assert rc == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["input_shape"] == [1, 3, 16, 16], report


class _RgbDepth(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, rgb, depth):
        return self.conv(rgb) + depth


@pytest.mark.parametrize("module, shape, message", [
    (None, (1, 3, 8, 8), r"export_onnx takes the nn.Module to export, got NoneType"),
    (_RgbDepth(), (1, 3, 8, 8), r"the model \(_RgbDepth\) takes 2 inputs \(rgb, depth\)"),
    (nn.Conv2d(3, 4, 1), (1, 4, 8, 8), r"input shape \(1, 4, 8, 8\) does not fit the model "
                                       r"\(Conv2d\) \(Given groups=1")])
def test_export_onnx_answers_what_it_cannot_export_in_one_line(tmp_path, module, shape, message):
    """break111 F7, break112 F2: export_onnx, called alone, let None's AttributeError, a
    two-input forward's TypeError and a wrong shape's conv traceback through, where deploy
    says each in one line."""
    with pytest.raises(DeployError, match=message):
        export_onnx(module, shape, tmp_path / "m.onnx", log=lambda line: None)
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("model, compare, message", [
    (None, None, r"deploy's model is an nn.Module or the path of a .pt or .onnx file, got NoneType"),
    ("conv", 5, r"deploy's compare \(--compare\) is an nn.Module or the path of a .pt or .onnx "
                r"file, got int")])
def test_deploy_names_a_model_argument_that_is_no_model_or_path(tmp_path, model, compare, message):
    """break111 F8: deploy(None, out) raised a bare KeyError: 'model'."""
    model = nn.Conv2d(3, 4, 1) if model == "conv" else model
    with pytest.raises(DeployError, match=message):
        deploy(model, tmp_path / "out", backend="onnxruntime", compare=compare)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("tolerance", [{"atol": float("nan")}, {"rtol": -1}, {"atol": "1e-4"}])
def test_verify_onnx_refuses_a_tolerance_that_is_no_number_at_least_zero(tmp_path, tolerance):
    """break111 F9: a NaN or negative tolerance was blamed on the export ("the export changed
    the model's behaviour")."""
    model = nn.Conv2d(3, 4, 1)
    export_onnx(model, (1, 3, 8, 8), tmp_path / "m.onnx", log=lambda line: None)
    name = next(iter(tolerance))
    with pytest.raises(DeployError, match=rf"{name} must be a finite number >= 0"):
        verify_onnx(tmp_path / "m.onnx", model, (1, 3, 8, 8), **tolerance)
    assert verify_onnx(tmp_path / "m.onnx", model, (1, 3, 8, 8), atol=1e-5) < 1e-5


def test_a_model_compared_with_itself_is_warned_of_and_not_blamed_on_flops(saved, tmp_path,
                                                                          monkeypatch):
    """break151 F5: --compare naming MODEL's own file timed it against itself without a word,
    and a 0.90x read from the noise got "FLOPs are a poor guide to this runtime's speed"."""
    import shutil

    # the noise as it fell then, every time (review153 F7: a real timing reads either side)
    monkeypatch.setattr(pipeline.ortb, "time_onnx_models", lambda paths, *a, **k: {
        "model": [1.0] * 3, "dense": [0.9] * 3})

    copy = tmp_path / "copy.pt"
    shutil.copy(saved / "pruned.pt", copy)
    for compare, how in ((saved / "pruned.pt", "the same file"),
                         (copy, "a file of the same content")):
        lines = []
        with pytest.warns(RuntimeWarning, match=f"--compare is {how} as MODEL: the speedup "
                                                "measures timing noise only"):
            report = deploy(saved / "pruned.pt", tmp_path / how.replace(" ", "_"),
                            compare=compare, input_shape=SHAPE, backend="onnxruntime", iters=3,
                            warmup=1, progress=False, log=lines.append, trust_model_file=True)
        assert report["speedup"] == pytest.approx(0.9)
        assert not any("poor guide" in line for line in lines)
        # recorded, for `fxprune plot` (review153 F8: it drew the 0.9x as a speedup)
        assert report["compare_is_model"] == how
        assert any(f"(--compare is {how} as MODEL: timing noise)" in line for line in lines)
        on_disk = json.loads((tmp_path / how.replace(" ", "_") / "report.json").read_text())
        assert on_disk["compare_is_model"] == how
    net = small_net(8)
    with pytest.warns(RuntimeWarning, match="--compare is the same module as MODEL"):
        deploy(net, tmp_path / "module", compare=net, input_shape=SHAPE, backend="onnxruntime",
               iters=3, warmup=1, progress=False, log=lambda s: None)
    lines = []
    with warnings.catch_warnings():  # another model: no word, and the advice where slower
        warnings.filterwarnings("error", message="--compare is")
        other = deploy(small_net(8), tmp_path / "other", compare=small_net(16), input_shape=SHAPE,
                       backend="onnxruntime", iters=3, warmup=1, progress=False, log=lines.append)
    assert any("poor guide" in line for line in lines)
    assert "compare_is_model" not in other


@pytest.mark.parametrize("kept", [0.5, 0.9])
def test_a_model_file_cut_short_is_called_damaged_with_or_without_trust(tmp_path, capsys, kept):
    """break187: the first half of a saved module was "not loaded: ... --trust-model-file" (the
    user asked to let a broken file run code), then torch.load's "Invalid argument"."""
    torch.save(nn.Conv2d(3, 4, 3), tmp_path / "full.pt")
    whole = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(whole[:int(len(whole) * kept)])
    for trust in ([], TRUST):
        assert main(["deploy", str(tmp_path / "cut.pt"), "--out", str(tmp_path / "out"),
                     "--input-shape", "1,3,8,8", *QUICK, *trust]) == 2
        err = capsys.readouterr().err
        assert "cut.pt' is damaged: its zip index does not read" in err, err
        assert "trust" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_path_onnx_cannot_open_is_refused_in_one_line_before_any_export(tmp_path, capsys):
    """break187 F9: a Latin-1 file name (not UTF-8) was refused by onnx's pybind11 binding in
    four lines, "onnx.checker rejected", after a second export "at batch 1" for --out."""
    torch.save(nn.Conv2d(3, 4, 3), tmp_path / "m.pt")
    latin1 = tmp_path / os.fsdecode(b"d\xff")
    assert main(["deploy", str(tmp_path / "m.pt"), "--out", str(latin1), "--input-shape",
                 "1,3,8,8", *QUICK, *TRUST]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "is not a UTF-8 path" in err and len(err.strip().splitlines()) == 1
    assert not latin1.exists()
    onnx_file = tmp_path / os.fsdecode(b"m\xff.onnx")
    onnx_file.write_bytes(b"not read")
    assert main(["deploy", str(onnx_file), "--out", str(tmp_path / "out"), *QUICK]) == 2
    err = capsys.readouterr().err
    assert "the model file" in err and "is not a UTF-8 path" in err, err
    assert not (tmp_path / "out").exists()


def test_a_file_of_a_dict_is_told_apart_from_a_module_in_a_dict(tmp_path, capsys):
    """break187 F6: {'model': module} was said to "look like a state_dict", and a state_dict
    "holds a OrderedDict"."""
    model = nn.Conv2d(3, 4, 3)
    torch.save({"model": model}, tmp_path / "wrapped.pt")
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    said = {}
    for name in ("wrapped", "sd"):
        assert main(["deploy", str(tmp_path / f"{name}.pt"), "--out", str(tmp_path / name),
                     "--input-shape", "1,3,8,8", *QUICK, *TRUST]) == 2
        said[name] = capsys.readouterr().err
    assert "holds a dict, not an nn.Module (it holds a module under key 'model': save that " \
           "module itself, torch.save(d['model'], path))" in said["wrapped"], said["wrapped"]
    assert "holds an OrderedDict, not an nn.Module (it looks like a state_dict" in said["sd"], said["sd"]


def test_deploy_without_an_out_folder_is_named(tmp_path):
    """break187 F5: deploy(model, None) was a bare TypeError from os.fspath."""
    with pytest.raises(DeployError, match=r"^deploy's out_dir is the folder to write model.onnx "
                                          r"and report.json to \(a str or path\), got NoneType$"):
        deploy(nn.Conv2d(3, 4, 3), None, input_shape=(1, 3, 8, 8), progress=False)


def test_an_interrupted_deploy_says_a_report_it_wrote_is_there(tmp_path):
    """break206 F1: "holds no report.json of this deploy" beside one (a deploy removes the
    last report first, so one there is this deploy's, written whole)."""
    from fxprune.deploy.cli import _left_behind

    (tmp_path / "model.onnx").write_bytes(b"x")
    assert _left_behind(tmp_path) == (f"{tmp_path} holds no report.json of this deploy (the "
                                      "ONNX files there, model.onnx, stay)")
    (tmp_path / "report.json").write_text("{}")
    assert _left_behind(tmp_path, 0) == (f"{tmp_path} holds this deploy's report.json, written "
                                         "before it stopped")
    # review208 R4: one older than this deploy is the last deploy's, not this one's
    later = (tmp_path / "report.json").stat().st_mtime_ns + 1
    assert "holds no report.json of this deploy" in _left_behind(tmp_path, later)


def test_a_full_disk_or_read_only_folder_is_said_with_the_way_out(saved, tmp_path, capsys,
                                                                  monkeypatch):
    """break206 F7: a full disk during export was "ONNX export failed with both exporters",
    and a read-only folder the system's words alone."""
    import errno

    from fxprune.deploy import onnx_export

    tried = []

    def disk_full(model, x, path, **kwargs):
        tried.append("dynamo")
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(onnx_export, "_dynamo_export", disk_full)
    monkeypatch.setattr(onnx_export.torch.onnx, "export",
                        lambda *a, **k: tried.append("torchscript"))
    out = tmp_path / "dep"
    assert main(["deploy", str(saved / "pruned.pt"), "--out", str(out), *QUICK, *TRUST]) == 2
    err = capsys.readouterr().err
    assert tried == ["dynamo"]  # a file system's error is not retried as an exporter's
    assert err == (f"fxprune deploy: error: writing {out / 'model.onnx'}: no space left on "
                   "device; free space there, then deploy again\n"), err
    monkeypatch.undo()
    from fxprune import run_io

    def read_only(path, text):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(run_io, "atomic_write_text", read_only)
    assert main(["deploy", str(saved / "pruned.pt"), "--out", str(out), *QUICK, *TRUST]) == 2
    assert capsys.readouterr().err == (f"fxprune deploy: error: writing {out / 'report.json'}: "
                                       "read-only file system; choose an --out you can write\n")
    # review208 R3: a permission refused on an input is no write in --out: the system's words
    from fxprune.deploy.cli import _file_system_said

    too_large = OSError(errno.EFBIG, "File too large", str(out / "model.onnx"))  # (break209 F7)
    assert _file_system_said(too_large, out) == (f"writing {out / 'model.onnx'}: file too large; "
                                                 "choose an --out on a file system that takes "
                                                 "files this large")
    denied = OSError(errno.EACCES, "Permission denied", str(tmp_path / "model.pt"))
    assert _file_system_said(denied, out) is None
    denied.filename = str(out / "report.json")
    assert _file_system_said(denied, out) == (f"writing {out / 'report.json'}: permission "
                                              "denied; choose an --out you can write")


class _Clips(nn.Module):
    """Reshapes the batch into clips of 4 images (TSN-style): no forward at batch 1 or 2."""

    def __init__(self):
        super().__init__()
        self.c, self.fc = nn.Conv2d(3, 8, 3), nn.Linear(32, 4)

    def forward(self, x):
        return self.fc(self.c(x).mean((2, 3)).reshape(-1, 4, 8).flatten(1))


class _Similarity(nn.Module):
    """Mixes the samples (a batch x batch product): FLOPs grow as the batch squared."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3)

    def forward(self, x):
        f = self.c(x).flatten(1)
        return f @ f.T


def test_deploys_flops_are_the_whole_batchs_where_the_forward_depends_on_it():
    """break209 F3: one image's count times the batch lost the row of a model that reshapes
    the batch into clips, and under-counted one that mixes samples."""
    from fxprune.deploy.pipeline import _flops

    for model in (_Clips(), _Similarity(), small_net(8)):
        x = torch.randn(8, 3, 16, 16)
        assert _flops(model, (8, 3, 16, 16)) == fxprune.count_flops(model.eval(), (x,))
