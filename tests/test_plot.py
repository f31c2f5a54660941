"""``fxprune plot``: points come from the inputs, the PNG is written and valid, errors are one
line, and a file plot did not write is never replaced."""
from __future__ import annotations

import json
import re
import warnings

import pytest

from PIL import Image  # matplotlib (in the dev extra) depends on Pillow

from fxprune.cli import main
from fxprune.plot import PlotError, load_points, plot_points


def _run(folder, accuracy, flops, deploys=(), method="smcp"):
    """A fake finished recipe run, with deploy reports at the given (batch, median ms)."""
    folder.mkdir()
    (folder / ".fxprune-run").write_text("run\n")
    (folder / "results.json").write_text(json.dumps(
        {"method": method, "accuracy": accuracy, "flops": flops, "params": 10}))
    for batch, ms in deploys:
        d = folder / f"deploy_b{batch}"
        d.mkdir()
        (d / ".fxprune-deploy").write_text("deploy\n")
        (d / "report.json").write_text(json.dumps({"batch": batch, "latency_ms": {"median": ms},
                                                   "params": 10}))
    return folder


def _deployed(run, model, median=1.5):
    """``model`` written (a stand-in file) and deployed into ``run/deploy_b1`` at batch 1."""
    model.write_bytes(b"x")
    d = run / "deploy_b1"
    d.mkdir()
    (d / ".fxprune-deploy").write_text("deploy\n")
    (d / "report.json").write_text(json.dumps(
        {"batch": 1, "latency_ms": {"median": median}, "model_file": str(model)}))


def _deploy_of(where, name, batch, timed, *, median=None, hashed=True):
    """``where/name``: a deploy folder as fxprune deploy writes it, having timed the file
    ``where/timed`` at ``batch`` (median ``batch`` ms unless given), with its ONNX export and
    the export's path; the content hashes too unless ``hashed`` is False (an earlier fxprune's)."""
    from fxprune.run_io import file_sha256

    d, timed = where / name, where / timed
    d.mkdir()
    (d / ".fxprune-deploy").write_text("deploy\n")
    (d / "model.onnx").write_bytes(b"the export of " + timed.read_bytes())
    onnx = {"path": str((d / "model.onnx").resolve())}
    report = {"batch": batch, "latency_ms": {"median": float(batch if median is None else median)},
              "model_file": str(timed.resolve()), "onnx": onnx}
    if hashed:
        report["model_sha256"], onnx["sha256"] = file_sha256(timed), file_sha256(d / "model.onnx")
    (d / "report.json").write_text(json.dumps(report))
    return d


def _bench(path):
    path.write_text(json.dumps({"machine": {"batch": 1}, "rows": [
        {"label": "tp-taylor", "accuracy": 0.80, "accuracy_std": 0.01, "flops": 4e6,
         "latency_ms": {"1": 0.9, "64": 20.0}},
        {"label": "tp-mag", "accuracy": 0.79, "flops": 4.5e6, "latency_ms": 1.1},
        {"note": "a row without accuracy is not a point"}]}))
    return path


def _software(png):
    with Image.open(png) as im:
        im.verify()
    with Image.open(png) as im:
        return im.format, im.size, im.info.get("Software")


def test_runs_scored_on_different_test_sets_are_refused_naming_both(tmp_path):
    """break158 F2: a synthetic run, one scored on 50 images and Fashion-MNIST runs shared an
    accuracy axis without a word."""
    fmnist = {"name": "fashion_mnist", "samples": 1000, "images_sha256": "a" * 64,
              "labels_sha256": "b" * 64}

    def run(name, test_data=None, **older):
        folder = _run(tmp_path / name, 0.8, 4e6)
        results = json.loads((folder / "results.json").read_text())
        results.update(older, **({"test_data": test_data} if test_data else {}))
        (folder / "results.json").write_text(json.dumps(results))
        return folder

    a, b = run("a", fmnist), run("b", fmnist)
    old = run("old", test_samples=1000)  # an older results.json: its count only
    bench = _bench(tmp_path / "bench.json")  # rows say nothing of their test set
    assert len(plot_points(load_points([a, b, old, bench]), tmp_path / "ok.png", x="flops")
               ["points"]) == 5
    cases = {
        "synthetic": ({**fmnist, "name": "synthetic", "samples": 64},
                      "a on fashion_mnist (1000 test images), synthetic on synthetic (64 test images)"),
        "fewer": ({**fmnist, "samples": 50}, "a on fashion_mnist (1000 test images), fewer on "
                                             "fashion_mnist (50 test images)"),
        "other_images": ({**fmnist, "images_sha256": "c" * 64},
                         "a on fashion_mnist (1000 test images), images sha256 aaaaaaaaaaaa, "
                         "other_images on fashion_mnist (1000 test images), images sha256 cccccccccccc"),
    }
    for name, (test_data, said) in cases.items():
        with pytest.raises(PlotError, match=re.escape(
                f"the accuracies were scored on different test sets: {said}; plot runs scored "
                "on one test set")):
            plot_points(load_points([a, old, run(name, test_data)]), tmp_path / f"{name}.png",
                        x="flops")
    with pytest.raises(PlotError, match=r"old on 1000 test images, few on 50 test images"):
        plot_points(load_points([old, run("few", test_samples=50)]), tmp_path / "few.png",
                    x="flops")
    # break174 F1: a benchmark row that records its test images is compared too
    scored = tmp_path / "scored.json"
    scored.write_text(json.dumps({"rows": [{"label": "dense", "accuracy": 0.9, "flops": 8e6,
                                            "test_samples": 10000}]}))
    with pytest.raises(PlotError, match=r"a on fashion_mnist \(1000 test images\), dense on "
                                        r"10000 test images"):
        plot_points(load_points([a, scored]), tmp_path / "scored.png", x="flops")


def test_points_come_from_inputs(tmp_path):
    dense = _run(tmp_path / "dense", 0.90, 8e6, [(1, 2.0), (64, 40.0)])
    smcp = _run(tmp_path / "smcp50", 0.89, 4e6, [(1, 1.2)])
    bench = _bench(tmp_path / "bench.json")
    points = load_points([dense, smcp / "results.json", bench])
    assert [p.label for p in points] == ["dense", "smcp50", "tp-taylor", "tp-mag"]
    assert points[0].latency_ms == {1: 2.0, 64: 40.0}
    assert points[1].latency_ms == {1: 1.2}  # results.json inside a run folder finds its deploys
    assert points[2].accuracy_std == 0.01 and points[3].latency_ms == {1: 1.1}

    out = tmp_path / "lat.png"
    drawn = plot_points(points, out, x="latency", batch=64)
    assert drawn["batch"] == 64
    assert drawn["points"] == [("dense", 40.0, 0.90), ("tp-taylor", 20.0, 0.80)]
    assert drawn["skipped"] == ["smcp50", "tp-mag"]
    fmt, size, software = _software(out)
    assert fmt == "PNG" and size[0] > 100 and software == "fxprune plot"

    drawn = plot_points(points, tmp_path / "flops.png", x="flops")
    assert [(label, x) for label, x, _ in drawn["points"]] == [
        ("dense", 8.0), ("smcp50", 4.0), ("tp-taylor", 4.0), ("tp-mag", 4.5)]
    # default batch: the smallest measured
    assert plot_points(points, tmp_path / "b1.png")["batch"] == 1


def test_rows_of_several_networks_get_a_panel_each_and_a_colour_per_method_family(tmp_path):
    rows = [{"net": net, "label": f"{net}:{m}", "method": m, "accuracy": acc, "flops": 1e6,
             "latency_ms": {"64": ms}}
            for net in ("concat", "resnet")
            for m, acc, ms in (("dense", 0.9, 20.0), ("tp-taylor-r8", 0.89, 15.0), ("smcp-flops", 0.895, 14.0))]
    bench = tmp_path / "vs.json"
    bench.write_text(json.dumps({"rows": rows}))
    points = load_points([bench])
    assert [(p.panel, p.label, p.family) for p in points[:3]] == [
        ("concat", "dense", "dense"), ("concat", "tp-taylor-r8", "tp"), ("concat", "smcp-flops", "smcp")]
    drawn = plot_points(points, tmp_path / "vs.png", batch=64)
    assert drawn["panels"] == ["concat", "resnet"] and len(drawn["points"]) == 6
    fmt, (width, _), _ = _software(tmp_path / "vs.png")
    assert fmt == "PNG" and width > 1.4 * 7 * 120  # two panels side by side
    # without a net key, one panel, as before
    assert plot_points(load_points([_bench(tmp_path / "b.json")]), tmp_path / "one.png")["panels"] == [""]


def test_baseline_rows_of_one_trainer_get_their_own_colour_and_a_label_per_target(tmp_path, capsys):
    # bench_fashion_mnist.py's rows: "hard masks" and "magnitude" run SMCP's trainer (method
    # smcp) but are baselines; each row kind runs at two targets (break56 #13)
    rows = [{"row": "dense", "method": "none", "target": None, "accuracy": 0.92, "flops": 18e6}]
    rows += [{"row": kind, "method": "smcp", "target": t, "accuracy": acc, "flops": t * 18e6}
             for kind, acc in (("SMCP", 0.91), ("hard masks", 0.905), ("magnitude", 0.9))
             for t in (0.5, 0.3)]
    bench = tmp_path / "fashion_mnist.json"
    bench.write_text(json.dumps({"meta": {}, "rows": rows}))
    points = load_points([bench], latencies=False)
    assert [p.label for p in points] == ["dense", "SMCP 50%", "SMCP 30%", "hard masks 50%",
                                         "hard masks 30%", "magnitude 50%", "magnitude 30%"]
    assert [p.family for p in points[::2]] == ["dense", "SMCP", "hard masks", "magnitude"]
    # a multi-net file's printout names each point's net
    vs = tmp_path / "vs.json"
    vs.write_text(json.dumps({"rows": [{"net": net, "label": "dense", "method": "dense",
                                        "accuracy": 0.9, "flops": 1e6} for net in ("a", "b")]}))
    assert main(["plot", str(vs), "--x", "flops", "--out", str(tmp_path / "vs.png")]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("a: dense ") and "\nb: dense " in printed


def test_cli_writes_png_and_replaces_only_its_own(tmp_path, capsys):
    run = _run(tmp_path / "r", 0.9, 8e6, [(1, 2.0)])
    out = tmp_path / "pareto.png"
    assert main(["plot", str(run), "--out", str(out)]) == 0
    assert "r " in capsys.readouterr().out and _software(out)[2] == "fxprune plot"
    assert main(["plot", str(run), "--out", str(out), "--x", "flops"]) == 0  # its own: replaced

    foreign = tmp_path / "photo.png"
    from PIL import Image as PILImage
    PILImage.new("RGB", (4, 4)).save(foreign)
    before = foreign.read_bytes()
    assert main(["plot", str(run), "--out", str(foreign)]) == 2
    err = capsys.readouterr().err.strip()
    assert "did not write it" in err and "\n" not in err
    assert foreign.read_bytes() == before
    # a link, to a plot of its own or to nothing, is the user's: it stayed a file (break151 F3)
    for name, target in (("to_own.png", out), ("dangling.png", tmp_path / "none.png")):
        link = tmp_path / name
        link.symlink_to(target)
        assert main(["plot", str(run), "--out", str(link)]) == 2
        err = capsys.readouterr().err.strip()
        assert "is a symbolic link, which fxprune plot would replace" in err and "\n" not in err
        assert link.is_symlink() and not (tmp_path / "none.png").exists()


def test_runs_in_folders_of_one_name_are_told_apart_and_out_needs_its_folder(tmp_path, capsys):
    """break37 #5: r1/run and r2/run were both labelled "run"; #6: --out made missing folders."""
    (tmp_path / "r1").mkdir(), (tmp_path / "r2").mkdir()
    a, b = _run(tmp_path / "r1" / "run", 0.9, 8e6), _run(tmp_path / "r2" / "run", 0.8, 4e6)
    c = _run(tmp_path / "other", 0.85, 6e6)
    assert [p.label for p in load_points([a, b / "results.json", c])] == ["r1/run", "r2/run", "other"]
    out = tmp_path / "typo" / "p.png"
    assert main(["plot", str(a), "--x", "flops", "--out", str(out)]) == 2
    assert "the folder" in capsys.readouterr().err and not out.parent.exists()


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("not_json", "is not JSON"),
    ("foreign_json", "is not the results.json of an fxprune train run"),
    ("empty_dir", "not an fxprune train --out folder"),
    ("unfinished", "run that has not finished"),
    ("percent", "not a fraction"),
    ("no_latency", "no input has a measured latency"),
    ("bad_suffix", "must be a file name ending in .png"),
    ("batch_with_flops", "FLOPs are per image"),
    ("batch_zero", "--batch must be a positive batch size"),
    ("negative_std", "accuracy_std -0.01 is not a fraction in [0, 1]"),
    ("std_in_points", "accuracy_std 5 is not a fraction in [0, 1]"),  # break106 #5
    ("negative_flops", "flops must not be negative"),
    ("twice", "is given twice"),
])
def test_errors_are_one_line(tmp_path, capsys, case, message):
    out = tmp_path / ("p.jpg" if case == "bad_suffix" else "p.png")
    if case == "missing":
        target = tmp_path / "nope.json"
    elif case == "not_json":
        target = tmp_path / "x.json"
        target.write_text("{not json")
    elif case == "foreign_json":
        target = tmp_path / "x.json"
        target.write_text(json.dumps({"hello": 1}))
    elif case == "empty_dir":
        target = tmp_path / "d"
        target.mkdir()
        (target / "a.txt").write_text("x")
    elif case == "unfinished":
        target = tmp_path / "d"
        target.mkdir()
        (target / ".fxprune-run").write_text("run\n")
    elif case == "percent":
        target = tmp_path / "b.json"
        target.write_text(json.dumps({"rows": [{"accuracy": 91.5, "flops": 1}]}))
    elif case in ("negative_std", "std_in_points", "negative_flops"):  # a matplotlib traceback before
        target = tmp_path / "b.json"
        bad = {"negative_std": {"accuracy_std": -0.01}, "std_in_points": {"accuracy_std": 5},
               "negative_flops": {"flops": -1}}[case]
        target.write_text(json.dumps({"rows": [{"accuracy": 0.9, "flops": 1, **bad}]}))
    else:
        target = _run(tmp_path / "r", 0.9, 8e6)  # no deploy report: no latency
    extra = {"batch_with_flops": ["--x", "flops", "--batch", "1"], "batch_zero": ["--batch", "0"]}
    inputs = [str(target)] + ([str(target / "results.json")] if case == "twice" else [])
    assert main(["plot", *inputs, "--out", str(out), *extra.get(case, [])]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err, err
    assert not out.exists()


def test_missing_matplotlib_names_the_install(tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_matplotlib(name, *a, **k):
        if name.split(".")[0] == "matplotlib":
            raise ImportError("no matplotlib")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    run = _run(tmp_path / "r", 0.9, 8e6)
    with pytest.raises(PlotError, match=r"pip install 'fxprune\[plot\]'"):
        plot_points(load_points([run]), tmp_path / "p.png", x="flops")


def test_deploy_reports_must_time_the_model_of_the_run(tmp_path):
    import os

    run = _run(tmp_path / "run", 0.9, 8e6)
    results = json.loads((run / "results.json").read_text())
    (run / "results.json").write_text(json.dumps({**results, "model": str(run / "model_pruned.pt")}))
    for name in ("model_pruned.pt", "other_model.pt"):
        (run / name).write_bytes(b"x")
    d = run / "deploy_b1"
    d.mkdir()
    (d / ".fxprune-deploy").write_text("deploy\n")
    (d / "model.onnx").write_bytes(b"onnx")

    def report(model_file, batch=1, where=d):
        (where / "report.json").write_text(json.dumps(
            {"batch": batch, "latency_ms": {"median": 1.5}, "model_file": str(model_file)}))

    report(run / "model_pruned.pt")
    assert load_points([run])[0].latency_ms == {1: 1.5}  # the run's own model: counted
    # deploy's export of the run's model, deployed again at another batch: counted
    d64 = run / "deploy_b64"
    d64.mkdir()
    (d64 / ".fxprune-deploy").write_text("deploy\n")
    report(d / "model.onnx", batch=64, where=d64)
    assert load_points([run])[0].latency_ms == {1: 1.5, 64: 1.5}
    # ... but not a deploy folder's model.onnx that another model was exported to
    report(run / "other_model.pt")
    report(d / "model.onnx", batch=64, where=d64)
    (d / "report.json").unlink()
    with pytest.raises(PlotError, match="deploy_b64/report.json timed .*model.onnx, not the model"):
        load_points([run])
    # ... nor one written after its folder's report (a later deploy there that failed)
    report(run / "model_pruned.pt")
    report(d / "model.onnx", batch=64, where=d64)
    later = (d / "report.json").stat().st_mtime + 5
    os.utime(d / "model.onnx", (later, later))
    with pytest.raises(PlotError, match="deploy_b64/report.json timed .*model.onnx, not the model"):
        load_points([run])
    # ... nor one written after the report that names it (it timed what was there before)
    report(run / "model_pruned.pt")
    report(d / "model.onnx", batch=64, where=d64)
    now = (d64 / "report.json").stat().st_mtime
    os.utime(d / "model.onnx", (now + 5, now + 5))  # redeployed in d after d64 timed it
    os.utime(d / "report.json", (now + 10, now + 10))
    with pytest.raises(PlotError, match="deploy_b64/report.json timed .*model.onnx, not the model"):
        load_points([run])
    import shutil
    shutil.rmtree(d64)

    for other in (run / "other_model.pt", tmp_path / "elsewhere" / "m.pt"):
        report(other)
        with pytest.raises(PlotError, match="timed .*, not the model of the run"):
            load_points([run])
    report(d / "gone" / "model.onnx")
    (d / "gone").mkdir()
    (d / "gone" / ".fxprune-deploy").write_text("deploy\n")
    report(run / "model_pruned.pt", where=d / "gone")
    with pytest.raises(PlotError, match="the file is gone"):
        load_points([run])
    shutil.rmtree(d / "gone")  # a deploy folder at any depth counts
    # an ONNX file of the user's inside the run may be any model (their dense export)
    (run / "dense_export.onnx").write_bytes(b"onnx")
    report(run / "dense_export.onnx")
    with pytest.raises(PlotError, match="timed .*dense_export.onnx, not the model of the run"):
        load_points([run])

    # a run redone after the deploy (train --overwrite keeps deploy folders): the report is stale
    report(run / "model_pruned.pt")
    old = (d / "report.json").stat().st_mtime - 60
    os.utime(d / "report.json", (old, old))
    with pytest.raises(PlotError, match="older than the run's results.json"):
        load_points([run])
    # break56 #12: a FLOPs plot reads no deploy report, so a stale one does not refuse the run
    assert load_points([run], latencies=False)[0].latency_ms == {}
    assert main(["plot", str(run), "--x", "flops", "--out", str(tmp_path / "f.png")]) == 0

    # a report written into the run folder itself counts too (deploy --out RUN)
    (d / "report.json").unlink()
    (run / ".fxprune-deploy").write_text("deploy\n")
    report(run / "model_pruned.pt", batch=64, where=run)
    assert load_points([run])[0].latency_ms == {64: 1.5}

    # a module deployed from Python names no file: counted only with the run's parameter count
    # (the dense model's report was plotted as the pruned run's latency)
    for params, counted in ((10, True), (40, False), (None, False)):
        (run / "report.json").write_text(json.dumps(
            {"batch": 64, "latency_ms": {"median": 2.5}, "params": params}))
        if counted:
            assert load_points([run])[0].latency_ms == {64: 2.5}
        else:
            with pytest.raises(PlotError, match=f"names no model file .* its {params} parameters "
                                                "are not the run's 10"):
                load_points([run])


def test_reports_with_content_hashes_judge_the_model_by_content_not_time(tmp_path):
    """break62 #3: a run copied file by file in sorted order (an object store's listing) has
    its deploy report a few ms older than results.json, and plot called it a report of an
    earlier run. A report records the hashes of the model it timed and of the ONNX file it
    exported; those decide."""
    import os
    from fxprune.run_io import file_sha256

    run = _run(tmp_path / "run", 0.9, 8e6)
    model = run / "model_pruned.pt"
    results = json.loads((run / "results.json").read_text())
    (run / "results.json").write_text(json.dumps({**results, "model": str(model)}))
    model.write_bytes(b"the pruned model")
    d, d64 = run / "deploy_b1", run / "deploy_b64"
    for folder in (d, d64):
        folder.mkdir()
        (folder / ".fxprune-deploy").write_text("deploy\n")
    (d / "model.onnx").write_bytes(b"its export")
    (d / "report.json").write_text(json.dumps(
        {"batch": 1, "latency_ms": {"median": 1.5}, "model_file": str(model),
         "model_sha256": file_sha256(model),
         "onnx": {"path": str(d / "model.onnx"), "sha256": file_sha256(d / "model.onnx")}}))
    (d64 / "report.json").write_text(json.dumps(
        {"batch": 64, "latency_ms": {"median": 9.0}, "model_file": str(d / "model.onnx"),
         "model_sha256": file_sha256(d / "model.onnx")}))
    later = (run / "results.json").stat().st_mtime + 60
    for f in (run / "results.json", model):  # copied last: newer than everything else
        os.utime(f, (later, later))
    os.utime(d / "model.onnx", (later + 5, later + 5))
    assert load_points([run])[0].latency_ms == {1: 1.5, 64: 9.0}
    model.write_bytes(b"a run redone there")  # same times, other content: stale
    os.utime(model, (later, later))
    with pytest.raises(PlotError, match="deploy_b1/report.json timed another model_pruned.pt "
                                        "than the one in .* now"):
        load_points([run])
    (d / "report.json").unlink()  # the export's source gone: b64 timed no model of the run
    with pytest.raises(PlotError, match="deploy_b64/report.json timed .*model.onnx, not the model"):
        load_points([run])


def test_speedup_axis_uses_each_rows_speedup_over_its_own_dense(tmp_path, capsys):
    # two sessions: the second's dense ran slower (2.0 vs 1.0 ms), so its 1.25x row has more
    # milliseconds than the first session's dense; by speedup it is where it belongs
    rows = [{"net": "n", "method": "dense", "accuracy": 0.90, "latency_ms": {"1": 1.0}, "speedup": {"1": 1.0}},
            {"net": "n", "method": "tp-a", "accuracy": 0.88, "latency_ms": {"1": 0.9}, "speedup": {"1": 1.1}},
            {"net": "n", "method": "smcp-b", "accuracy": 0.89, "latency_ms": {"1": 1.6}, "speedup": {"1": 1.25}}]
    bench = tmp_path / "vs.json"
    bench.write_text(json.dumps({"rows": rows}))
    run = _run(tmp_path / "r", 0.9, 8e6, [(1, 2.0)])  # a recipe run has no speedup: skipped
    drawn = plot_points(load_points([bench, run]), tmp_path / "s.png", x="speedup")
    assert drawn["batch"] == 1 and drawn["skipped"] == ["r"]
    assert [(label, x) for label, x, _ in drawn["points"]] == [("dense", 1.0), ("tp-a", 1.1), ("smcp-b", 1.25)]
    assert main(["plot", str(run), "--out", str(tmp_path / "t.png"), "--x", "speedup"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no input has a measured speedup" in err and "\n" not in err
    with pytest.raises(PlotError, match="no input has a speedup at batch 64"):
        plot_points(load_points([bench]), tmp_path / "u.png", x="speedup", batch=64)


def test_a_speedup_over_the_model_itself_is_not_drawn(tmp_path):
    """review153 F8: deploy warned that --compare was MODEL, and the plot drew the noise as
    the run's speedup without a word."""
    run = _run(tmp_path / "r", 0.9, 8e6, [(1, 2.0), (64, 30.0)])
    for batch, itself in ((1, "the same file"), (64, None)):
        report = run / f"deploy_b{batch}" / "report.json"
        data = json.loads(report.read_text())
        data["speedup"] = 0.97 if itself else 1.4
        if itself:
            data["compare_is_model"] = itself
        report.write_text(json.dumps(data))
    points = load_points([run])
    assert points[0].speedup == {64: 1.4}
    assert points[0].latency_ms == {1: 2.0, 64: 30.0}
    with pytest.warns(RuntimeWarning, match=r"deploy_b1/report.json timed the model against the "
                                            r"same file as --compare: its speedup measures "
                                            r"timing noise, not drawn"):
        plot_points(points, tmp_path / "b1.png", batch=1)
    bench = _bench(tmp_path / "bench.json")  # review177 F3: and where it is why r is not drawn
    with open(bench) as f:
        rows = json.load(f)
    rows["rows"][0]["speedup"] = {"1": 1.3}
    bench.write_text(json.dumps(rows))
    with pytest.warns(RuntimeWarning, match=r"deploy_b1/report.json timed the model against"):
        drawn = plot_points([*points, *load_points([bench])], tmp_path / "s1.png", x="speedup",
                            batch=1)
    assert drawn["skipped"][0] == "r"
    with warnings.catch_warnings():  # break174 F6: not said where batch 1 is not drawn
        warnings.simplefilter("error")
        plot_points(points, tmp_path / "b64.png", batch=64)
        plot_points(points, tmp_path / "flops.png", x="flops")


@pytest.mark.parametrize("data, message", [
    ({"batch": "one", "rows": [{"accuracy": 0.9, "speedup": 1.2}]}, "the file's batch must be a batch size"),
    ({"batch": [1, 64], "rows": [{"accuracy": 0.9, "speedup": 1.2}]}, "the file's batch must be a batch size"),
    ({"batch": 1.7, "rows": [{"accuracy": 0.9, "speedup": 1.2}]}, "the file's batch must be a batch size"),
    ({"meta": [1], "rows": [{"accuracy": 0.9, "speedup": 1.2}]}, "states no batch"),
    ({"rows": [{"accuracy": 0.9, "speedup": {"1": 0}}]}, "speedup[1] must be positive"),
    ({"rows": [{"accuracy": 0.9, "speedup": {"-1": 1.2}}]}, "a speedup key must be a batch size"),
    ({"rows": [{"accuracy": 0.9, "speedup": [1.2]}]}, "must be a number or a"),
    ({"rows": [{"accuracy": 0.9, "latency_ms": {"1": -2.0}}]}, "latency_ms[1] must be positive"),
    ({"rows": [{"accuracy": 0.9, "latency_ms": {"1": 2.0}}]}, "no input has a measured speedup"),
    # break81 #3: the repository's own files were "not the results.json of an fxprune train
    # run" (an older bench_methods.py's, no rows) or "rows must be a list" (the ablation's)
    ({"meta": {}, "summary": {}, "runs": []}, "is a benchmark results file without rows of "
                                              "result points (it holds meta, summary, runs)"),
    ({"meta": {}, "rows": {"dense": {"summary": {}}}}, "its rows are a summary per row name"),
])
def test_bad_benchmark_batches_and_speedups_are_one_line_errors(tmp_path, capsys, data, message):
    bench = tmp_path / "b.json"
    bench.write_text(json.dumps(data))
    assert main(["plot", str(bench), "--x", "speedup", "--out", str(tmp_path / "p.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err, err


def test_the_shipped_method_results_the_readme_cites_plot(tmp_path):
    """break158 F9: methods_1epoch.json and the other bench_methods files predated `rows` and
    were refused; their rows are now derived from their own summary and runs
    (bench_methods.plot_rows), as the benchmark writes them today."""
    from pathlib import Path

    results = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    files = sorted(p for p in results.glob("methods_*.json") if "replication" not in p.name)
    assert len(files) >= 6
    for path in files:
        data = json.loads(path.read_text())
        points = load_points([path])
        assert len(points) == len(data["summary"]) and all(  # (the label names the target)
            p.label.startswith(s["row"]) for p, s in zip(points, data["summary"])), path
        drawn = plot_points(points, tmp_path / f"{path.stem}.png", x="flops")
        assert len(drawn["points"]) == len(data["summary"])
    one_epoch = load_points([results / "methods_1epoch.json"])
    assert [round(p.accuracy, 4) for p in one_epoch if p.label.startswith("CCP adaptive")] == [0.8313]


def test_two_reports_at_one_batch_are_named(tmp_path):
    """break62 #7: "holds two deploy reports at batch 1; keep one" named neither."""
    run = _run(tmp_path / "run", 0.9, 8e6, deploys=[(1, 1.5)])
    (run / ".fxprune-deploy").write_text("deploy\n")
    (run / "report.json").write_text(json.dumps({"batch": 1, "latency_ms": {"median": 2.0},
                                                 "params": 10}))
    with pytest.raises(PlotError, match=rf"holds two deploy reports at batch 1 "
                                        rf"\({run / 'report.json'}, "
                                        rf"{run / 'deploy_b1' / 'report.json'}\); move one out "
                                        rf"of the run$"):
        load_points([run])


def test_a_run_deployed_on_two_backends_at_one_batch_plots_the_one_picked(tmp_path, capsys):
    """break151 F4: ONNX Runtime and torch timings of a run at one batch refused the run, and
    the way out was to delete a valid measurement."""
    run = _run(tmp_path / "run", 0.9, 8e6)
    for backend, ms in (("onnxruntime", 1.5), ("torch", 2.5)):
        d = run / f"deploy_{backend}"
        d.mkdir()
        (d / ".fxprune-deploy").write_text("deploy\n")
        (d / "report.json").write_text(json.dumps({"batch": 64, "latency_ms": {"median": ms},
                                                   "params": 10, "backend": backend}))
    with pytest.raises(PlotError, match=r"holds two deploy reports at batch 64 .*; move one out "
                                        r"of the run, or pass --backend onnxruntime or torch to "
                                        r"plot one backend's$"):
        load_points([run])
    for backend, ms in (("onnxruntime", 1.5), ("torch", 2.5)):
        assert load_points([run], backend=backend)[0].latency_ms == {64: ms}
        assert main(["plot", str(run), "--backend", backend, "--batch", "64",
                     "--out", str(tmp_path / f"{backend}.png")]) == 0
        assert f"{ms:12.4g}" in capsys.readouterr().out
    # review153 F5: a backend no report is of is named, not "deploy the runs" alone
    with pytest.warns(RuntimeWarning, match=r"its deploy reports are of onnxruntime, torch, "
                                            r"not --backend tensorrt: it has no latency"):
        assert main(["plot", str(run), "--backend", "tensorrt",
                     "--out", str(tmp_path / "none.png")]) == 2
    assert main(["plot", str(run), "--backend", "torch", "--x", "flops",
                 "--out", str(tmp_path / "flops.png")]) == 0
    assert "--backend torch is not used with --x flops" in capsys.readouterr().err


def test_a_relative_model_path_and_a_deploys_dense_copy(tmp_path, monkeypatch):
    """results.json records the model path as `fxprune train --out` got it (relative to where
    it ran): it names the run's file from anywhere. The dense.onnx a `deploy --compare` wrote
    beside its export is the dense model, not the run's."""
    run = _run(tmp_path / "run", 0.9, 8e6)
    results = json.loads((run / "results.json").read_text())
    (run / "results.json").write_text(json.dumps({**results, "model": "run/model_pruned.pt"}))
    (run / "model_pruned.pt").write_bytes(b"x")
    d = run / "deploy_b1"
    d.mkdir()
    (d / ".fxprune-deploy").write_text("deploy\n")
    (d / "dense.onnx").write_bytes(b"onnx")
    (d / "report.json").write_text(json.dumps(
        {"batch": 1, "latency_ms": {"median": 1.5}, "model_file": str(run / "model_pruned.pt")}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # not the folder `fxprune train` ran in
    assert load_points([run])[0].latency_ms == {1: 1.5}

    b8 = run / "deploy_b8"  # the dense model of the batch-1 deploy, timed at batch 8
    b8.mkdir()
    (b8 / ".fxprune-deploy").write_text("deploy\n")
    (b8 / "report.json").write_text(json.dumps(
        {"batch": 8, "latency_ms": {"median": 9.0}, "model_file": str(d / "dense.onnx")}))
    with pytest.raises(PlotError, match="dense.onnx, not the model of the run"):
        load_points([run])


def test_a_deploy_report_deeper_in_the_run_counts(tmp_path):
    """break25 #13: RUN/deploys/b1 was passed over, and the error said to deploy the run."""
    run = _run(tmp_path / "run", 0.9, 8e6)
    d = run / "deploys" / "b1"
    d.mkdir(parents=True)
    (d / ".fxprune-deploy").write_text("deploy\n")
    (d / "report.json").write_text(json.dumps({"batch": 1, "latency_ms": {"median": 2.5},
                                               "params": 10}))
    assert load_points([run])[0].latency_ms == {1: 2.5}


def test_a_deploy_report_timed_under_load_is_said_to_be(tmp_path):
    """break58 #8: deploy flags a latency timed while the CPU was shared; plot drew it as any
    other, without a word."""
    run = _run(tmp_path / "run", 0.9, 8e6, [(1, 2.0)])
    report = run / "deploy_b1" / "report.json"
    data = json.loads(report.read_text())
    report.write_text(json.dumps({**data, "timed_under_load": True,
                                  "load_average": {"before": 3.5, "after": 5.4306640625,
                                                   "cores": 2}}))
    points = load_points([run])
    assert points[0].latency_ms == {1: 2.0}
    with pytest.warns(RuntimeWarning, match=r"deploy_b1/report.json was timed while other "
                                            r"processes shared the CPU \(load average 3.50 -> "
                                            r"5.43 on 2 cores\).*deploy the run again on an idle"):
        plot_points(points, tmp_path / "p.png")


def test_the_temporary_file_is_never_a_users_file(tmp_path):
    run = _run(tmp_path / "r", 0.9, 8e6, [(1, 2.0)])
    mine = tmp_path / "pareto.png.tmp"
    mine.write_text("my notes")
    plot_points(load_points([run]), tmp_path / "pareto.png")
    assert mine.read_text() == "my notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pareto.png", "pareto.png.tmp", "r"]


def test_a_moved_run_keeps_its_deploy_reports(tmp_path):
    """results.json and the deploy report name absolute paths inside the run's old folder
    (`train --out /abs/run`, deployed there): moved elsewhere, the run still plots."""
    old = _run(tmp_path / "old", 0.9, 8e6)
    results = json.loads((old / "results.json").read_text())
    (old / "results.json").write_text(json.dumps({**results, "model": str(old / "model_pruned.pt")}))
    _deployed(old, old / "model_pruned.pt")
    new = old.rename(tmp_path / "new")
    assert load_points([new])[0].latency_ms == {1: 1.5}


def test_dollars_in_labels_and_titles_are_drawn_as_written(tmp_path, capsys):
    """A ``$`` started matplotlib's mathtext: a bad formula in a label or --title ended the plot
    with a parser traceback."""
    bench = tmp_path / "b.json"
    bench.write_text(json.dumps({"rows": [
        {"label": "$\\frac$ 50%", "accuracy": 0.9, "flops": 1e6},
        {"label": "cost $5", "accuracy": 0.8, "flops": 2e6}]}))
    out = tmp_path / "p.png"
    assert main(["plot", str(bench), "--x", "flops", "--title", "$\\badcmd$", "--out", str(out)]) == 0
    assert "$\\frac$ 50%" in capsys.readouterr().out
    _software(out)


@pytest.mark.parametrize("report, message", [
    ({"batch": 0, "latency_ms": {"median": 1.0}}, "batch must be a batch size"),
    ({"batch": 2.7, "latency_ms": {"median": 1.0}}, "batch must be a batch size"),
    ({"batch": 1, "latency_ms": {"median": -5}}, "latency_ms.median must be positive"),
    ({"batch": 1, "latency_ms": {"median": "7"}}, "latency_ms.median must be a finite number"),
    ({"batch": 1, "latency_ms": {"median": 10 ** 400}}, "latency_ms.median must be a finite number"),
    ({"batch": 1, "latency_ms": {"median": 1.0}, "model_file": 5}, "model_file must be a path"),
])
def test_a_deploy_reports_numbers_are_checked_like_a_benchmarks(tmp_path, capsys, report, message):
    """A batch of 0 or 2.7 (cut to 2) or a negative median were plotted; a huge integer or a
    model_file that is not a path were tracebacks (break pass 18)."""
    run = _run(tmp_path / "r", 0.9, 8e6, deploys=[(1, 1.0)])
    (run / "deploy_b1" / "report.json").write_text(json.dumps({**report, "params": 10}))
    assert main(["plot", str(run), "--out", str(tmp_path / "p.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err, err


def test_a_results_file_without_its_model_plots_the_one_model_the_run_saved(tmp_path):
    """Last note's left-alone (break25 #13): a results.json edited without "model" made plot
    refuse the run's own deploy, advising to deploy what was deployed."""
    run = _run(tmp_path / "run", 0.9, 8e6)  # its results.json names no model
    _deployed(run, run / "model_pruned.pt")
    assert load_points([run])[0].latency_ms == {1: 1.5}
    (run / "model_dense.pt").write_bytes(b"y")  # two models: which one is the run's is unknown
    with pytest.raises(PlotError, match="not the model of the run"):
        load_points([run])


def test_deploy_reports_timed_differently_do_not_share_a_latency_axis(tmp_path):
    """break32 #3: one model deployed on ONNX Runtime (2 threads) and on torch (1 thread) was
    drawn 3.7x apart on one axis; #10: a report's speedup over --compare places the run."""
    def timed(run, **setting):
        report = run / "deploy_b1" / "report.json"
        report.write_text(json.dumps({**json.loads(report.read_text()), **setting}))
        return run

    ort = timed(_run(tmp_path / "ort", 0.9, 4e6, [(1, 0.3)]), backend="onnxruntime",
                device="cpu", precision="fp32", threads=2, speedup=1.8)
    torch_run = timed(_run(tmp_path / "torch", 0.9, 4e6, [(1, 1.1)]), backend="torch",
                      device="cpu", precision="fp32", threads=1)
    points = load_points([ort, torch_run])
    with pytest.raises(PlotError, match="timed differently: ort with backend onnxruntime, "
                                        "torch with backend torch"):
        plot_points(points, tmp_path / "lat.png", x="latency")
    drawn = plot_points(points, tmp_path / "speed.png", x="speedup")
    assert drawn["points"] == [("ort", 1.8, 0.9)] and drawn["skipped"] == ["torch"]
    alike = timed(_run(tmp_path / "alike", 0.8, 2e6, [(1, 0.2)]), backend="onnxruntime",
                  device="cpu", precision="fp32", threads=2)
    assert len(plot_points(load_points([ort, alike]), tmp_path / "ok.png")["points"]) == 2
    # break52: the dense run, timed without --compare, is the 1.0x the others are over
    dense = timed(_run(tmp_path / "dense", 0.91, 8e6, [(1, 0.5)], method="none"),
                  backend="onnxruntime", device="cpu", precision="fp32", threads=2)
    drawn = plot_points(load_points([ort, dense]), tmp_path / "speed2.png", x="speedup")
    assert drawn["points"] == [("ort", 1.8, 0.9), ("dense", 1.0, 0.91)]


def test_latencies_of_another_input_size_or_machine_do_not_share_an_axis(tmp_path):
    """break34 #6: the input size was not compared, nor benchmark files (the project's AVX2 and
    AVX-512 head-to-head files drew on one latency axis)."""
    def report(run, shape):
        path = run / "deploy_b1" / "report.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "backend": "onnxruntime",
                                    "input_shape": shape, "onnxruntime_version": "1.32.0"}))
        return run

    small = report(_run(tmp_path / "at32", 0.9, 4e6, [(1, 0.3)]), [1, 3, 32, 32])
    large = report(_run(tmp_path / "at224", 0.9, 4e6, [(1, 5.0)]), [1, 3, 224, 224])
    with pytest.raises(PlotError, match="at32 with input 3x32x32, at224 with input 3x224x224"):
        plot_points(load_points([small, large]), tmp_path / "a.png")

    def bench(path, cpu):
        path.write_text(json.dumps({"meta": {"machine": {"cpu": cpu, "threads": 1,
                                                         "onnxruntime": "1.32.0"}},
                                    "rows": [{"label": f"dense {cpu}", "accuracy": 0.9,
                                              "latency_ms": {"1": 0.3}}]}))
        return path

    mixed = load_points([bench(tmp_path / "avx2.json", "EPYC (AVX2)"),
                         bench(tmp_path / "avx512.json", "EPYC (AVX-512)")])
    with pytest.raises(PlotError, match=r"with device EPYC \(AVX2\), .* with device EPYC \(AVX-512\)"):
        plot_points(mixed, tmp_path / "b.png")
    assert len(plot_points(mixed[:1] + load_points([small]), tmp_path / "c.png")["points"]) == 2


def test_a_run_skipped_at_the_batch_says_where_it_was_measured(tmp_path, capsys):
    """break45: "not drawn (no latency): b" for a run measured at another batch only."""
    from fxprune.cli import main

    a = _run(tmp_path / "a", 0.9, 8e6, [(8, 2.0)])
    b = _run(tmp_path / "b", 0.8, 4e6, [(64, 9.0)])
    assert main(["plot", str(a), str(b), "--out", str(tmp_path / "p.png")]) == 0
    assert ("not drawn (no latency at batch 8): b (measured at batch 64: --batch N)"
            in capsys.readouterr().out)


@pytest.mark.parametrize("second", ["a_b1", "z_b1"])
def test_a_moved_run_trained_with_a_relative_out_still_plots_by_content(tmp_path, monkeypatch,
                                                                         second):
    """break70 #1: the quick recipe's out (runs/quick) is relative, so results.json names no
    folder; its deploy report names the model's absolute path then. A copy of the run was
    refused as a report that "timed another model", although the model is byte-identical.
    break71 #2: a second deploy (of the first's export) sorted before the first was read before
    the run's old folder was known, and refused."""
    import shutil

    from fxprune.run_io import file_sha256

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    run = _run(tmp_path / "runs" / "quick", 0.9, 8e6)
    model = run / "model_pruned.pt"
    model.write_bytes(b"the pruned model")
    results = json.loads((run / "results.json").read_text())
    (run / "results.json").write_text(json.dumps({**results, "model": "runs/quick/model_pruned.pt"}))
    d = _deploy_of(run, "deploy_b64", 64, "model_pruned.pt", median=9.0)
    e = run / second  # a deploy of deploy_b64's export, at batch 1
    e.mkdir()
    (e / ".fxprune-deploy").write_text("deploy\n")
    (e / "report.json").write_text(json.dumps(
        {"batch": 1, "latency_ms": {"median": 1.0}, "model_file": str((d / "model.onnx").resolve()),
         "model_sha256": file_sha256(d / "model.onnx")}))
    assert load_points([run])[0].latency_ms == {64: 9.0, 1: 1.0}
    copy = tmp_path / "archive" / "quick"
    shutil.copytree(run, copy)
    assert load_points([copy])[0].latency_ms == {64: 9.0, 1: 1.0}
    (copy / "model_pruned.pt").write_bytes(b"another model")  # not the one the report timed
    # (which report is read first says it: the one of the changed file, or the one of its export)
    with pytest.raises(PlotError, match=r"timed (another model_pruned.pt than the one in .* now "
                                        r"\(its content changed since|.*, not the model of the run)"):
        load_points([copy])


def test_a_run_deployed_in_two_places_still_plots_after_a_copy_or_a_move(tmp_path, monkeypatch):
    """break174 F2: a run deployed, copied, and deployed again in the copy holds reports written
    at two places; every later copy or move of it was refused, though each report's hash is
    the run model's."""
    import shutil

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    run = _run(tmp_path / "runs" / "a", 0.9, 8e6)
    model = run / "model_pruned.pt"
    model.write_bytes(b"the pruned model")
    results = json.loads((run / "results.json").read_text())
    (run / "results.json").write_text(json.dumps({**results, "model": "runs/a/model_pruned.pt"}))

    def deploy(where, batch, timed="model_pruned.pt"):
        _deploy_of(where, f"deploy_b{batch}", batch, timed)

    deploy(run, 1)
    copy = tmp_path / "B"
    shutil.copytree(run, copy)
    deploy(copy, 2)
    # review177 F2: and a deploy of the first place's export, made at the second
    deploy(copy, 8, timed="deploy_b1/model.onnx")
    assert load_points([copy])[0].latency_ms == {1: 1.0, 2: 2.0, 8: 8.0}
    again = tmp_path / "C"
    shutil.copytree(copy, again)
    assert load_points([again])[0].latency_ms == {1: 1.0, 2: 2.0, 8: 8.0}
    copy.rename(tmp_path / "D")
    assert load_points([tmp_path / "D"])[0].latency_ms == {1: 1.0, 2: 2.0, 8: 8.0}
    (again / "model_pruned.pt").write_bytes(b"another model")  # not the one they timed
    with pytest.raises(PlotError, match=r"timed another model_pruned.pt than the one in .* now \(its content "
                                        r"changed since"):
        load_points([again])


def test_a_run_given_from_inside_its_folder_is_labelled_by_the_folder(tmp_path, monkeypatch):
    """break174 F3: `fxprune plot . ../ccp` or `results.json` from inside the run labelled it
    "results.json", and its colour group was "", so the legend left it out."""
    import matplotlib.pyplot as plt

    smcp = _run(tmp_path / "smcp50", 0.89, 4e6)
    ccp = _run(tmp_path / "ccp", 0.88, 5e6)
    monkeypatch.chdir(smcp)
    assert [p.label for p in load_points([".", "../ccp"])] == ["smcp50", "ccp"]
    assert [p.label for p in load_points(["results.json"])] == ["smcp50"]
    (tmp_path / "best").symlink_to(smcp)  # review177 F5: a link is labelled by its own name
    assert [p.label for p in load_points([tmp_path / "best"])] == ["best"]
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure to read its legend
    plot_points(load_points(["results.json", ccp]), tmp_path / "p.png", x="flops")
    legend = figures[0].axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["smcp50", "ccp"]


def test_points_that_share_a_label_are_told_apart(tmp_path):
    """break174 F4: two rows of one file both labelled "A", and a run beside a row of its
    name, were drawn and listed by the same label."""
    dups = tmp_path / "dups.json"
    dups.write_text(json.dumps({"rows": [{"label": "A", "accuracy": 0.8, "flops": 2e6},
                                         {"label": "A", "accuracy": 0.85, "flops": 3e6},
                                         {"label": "dense", "accuracy": 0.9, "flops": 8e6}]}))
    dense = _run(tmp_path / "dense", 0.91, 8e6)
    labels = [p.label for p in load_points([dups, dense])]
    assert labels == ["A #1", "A #2", "dense (dups.json)", "dense"]
    drawn = plot_points(load_points([dups, dense]), tmp_path / "p.png", x="flops")
    assert len({label for label, _, _ in drawn["points"]}) == 4


def test_a_damaged_deploy_report_in_a_run_says_to_deploy_again(tmp_path):
    """break174 F5: a corrupt report.json inside a run said "pass a run folder, its
    results.json or ...", which the user had done."""
    run = _run(tmp_path / "run", 0.9, 8e6, [(1, 2.0)])
    (run / "deploy_b1" / "report.json").write_text('{"batch": 1, "latency')
    with pytest.raises(PlotError, match=r"deploy_b1/report.json is not JSON \(.*\); deploy the run "
                                        r"there again, or move \S*deploy_b1 out of the run$"):
        load_points([run])


def test_out_paths_that_cannot_be_a_png_say_so(tmp_path, capsys, monkeypatch):
    """break174 F11: /proc/x.png named plot's temporary file with no way out; `.png` was told
    it "must be a .png file"; `a.png/` wrote a.png."""
    run = _run(tmp_path / "r", 0.9, 8e6)
    cases = {str(tmp_path / "a.png") + "/": "ends in a slash, as a folder does",
             ".png": "must be a file name ending in .png",
             "/proc/x.png": "could not be written (No such file or directory); give a path in "
                            "a folder you can write to"}
    monkeypatch.chdir(tmp_path)
    for out, said in cases.items():
        assert main(["plot", str(run), "--x", "flops", "--out", out]) == 2
        err = capsys.readouterr().err
        assert said in err and err.count("\n") == 1 and ".tmp" not in err, err
    assert not (tmp_path / "a.png").exists() and not (tmp_path / ".png").exists()


def test_a_report_without_a_hash_copied_from_another_run_is_not_read_where_its_path_says(tmp_path):
    """review178 F2: a report of an earlier fxprune (no model_sha256) copied from run A into
    run B with fresh times was mapped by its ONNX path onto B's model and plotted as B's."""
    import shutil

    runs = {}
    for name in ("A", "B"):
        run = _run(tmp_path / name, 0.9, 8e6)
        (run / "model_pruned.pt").write_bytes(f"model {name}".encode())
        results = json.loads((run / "results.json").read_text())
        (run / "results.json").write_text(json.dumps(
            {**results, "model": str((run / "model_pruned.pt").resolve())}))
        runs[name] = run
    d = _deploy_of(runs["A"], "deploy_b1", 1, "model_pruned.pt", median=3.0, hashed=False)
    shutil.copytree(d, runs["B"] / "deploy_b1")  # fresh times: newer than B's results
    with pytest.raises(PlotError, match="timed .*A/model_pruned.pt, not the model of the run"):
        load_points([runs["B"]])


def test_the_dense_run_is_drawn_at_the_latency_deploy_compare_timed_it(tmp_path):
    """break185 F4: a pruned run deployed with --compare DENSE_RUN/model_dense.pt holds the
    dense model's latency; the dense run, given too, was "not drawn (no latency at batch 1)"."""
    from fxprune.run_io import file_sha256

    dense = _run(tmp_path / "dense", 0.92, 8e6, method="none")
    (dense / "model_dense.pt").write_bytes(b"the dense weights")
    pruned = _run(tmp_path / "pruned", 0.90, 4e6)
    (pruned / "model_pruned.pt").write_bytes(b"the pruned weights")
    d = _deploy_of(pruned, "deploy", 1, "model_pruned.pt", median=0.25)
    report = json.loads((d / "report.json").read_text())
    report.update(backend="onnxruntime", threads=1, speedup=2.0,
                  dense={"latency_ms": {"median": 0.5},
                         "model_file": str(dense / "model_dense.pt"),
                         "model_sha256": file_sha256(dense / "model_dense.pt")})
    (d / "report.json").write_text(json.dumps(report))

    points = {p.label: p for p in load_points([pruned, dense])}
    assert points["dense"].latency_ms == {1: 0.5} and points["dense"].speedup == {1: 1.0}
    assert points["dense"].timing[1]["backend"] == "onnxruntime"
    drawn = plot_points(list(points.values()), tmp_path / "lat.png")
    assert drawn["points"] == [("pruned", 0.25, 0.90), ("dense", 0.5, 0.92)]
    assert drawn["skipped"] == []
    # by content: another dense file of the same name, changed since, is not that model
    (dense / "model_dense.pt").write_bytes(b"retrained since")
    points = {p.label: p for p in load_points([pruned, dense])}
    assert points["dense"].latency_ms == {}
    # a report that compared the model with itself times no dense model
    report["compare_is_model"] = str(pruned / "model_pruned.pt")
    report["dense"]["model_sha256"] = file_sha256(dense / "model_dense.pt")
    (d / "report.json").write_text(json.dumps(report))
    assert {p.label: p for p in load_points([pruned, dense])}["dense"].latency_ms == {}


def test_a_dense_run_timed_by_several_reports_is_drawn_alike_in_any_order(tmp_path):
    """break190 F4: two pruned runs deployed against one dense file drew the dense point at the
    first input's report's timing (3.4 or 6.4 ms by the order), without a word."""
    from fxprune.run_io import file_sha256

    dense = _run(tmp_path / "dense", 0.92, 8e6, method="none")
    (dense / "model_dense.pt").write_bytes(b"the dense weights")
    pruned = []
    for name, dense_ms in (("p1", 0.5), ("p2", 1.0)):
        run = _run(tmp_path / name, 0.90, 4e6)
        (run / "model_pruned.pt").write_bytes(name.encode())
        d = _deploy_of(run, "deploy", 1, "model_pruned.pt", median=0.25)
        report = json.loads((d / "report.json").read_text())
        report["dense"] = {"latency_ms": {"median": dense_ms},
                           "model_sha256": file_sha256(dense / "model_dense.pt")}
        (d / "report.json").write_text(json.dumps(report))
        pruned.append(run)
    for order in ([*pruned, dense], [pruned[1], pruned[0], dense]):
        points = {p.label: p for p in load_points(order)}
        assert points["dense"].latency_ms == {1: 0.75}
        assert "timed it 2 times at batch 1, 0.5 to 1 ms" in points["dense"].notes[1][0]
