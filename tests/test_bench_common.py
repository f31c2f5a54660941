"""benchmarks/bench_common.py: where every benchmark writes its results."""
from __future__ import annotations

from pathlib import Path

import pytest

from helpers import load_benchmark


def test_a_smoke_run_without_out_never_writes_the_published_results():
    """Every benchmark names its results through bench_common.results_stem: a smoke run's
    default is NAME_smoke, beside (not over) the published NAME."""
    common = load_benchmark("bench_common")
    published = common.RESULTS / "table_calibration"
    assert common.results_stem("table_calibration") == published
    assert common.results_stem("table_calibration", smoke=True) == published.with_name(
        "table_calibration_smoke")
    assert common.results_stem("table_calibration", "/tmp/x", smoke=True) == Path("/tmp/x")
    # what a user may type for --out: an extension is dropped, a folder or nothing refused
    assert common.results_stem("gpu", "/tmp/x.json") == common.results_stem("gpu", "/tmp/x.md")
    assert common.results_stem("gpu", "/tmp/x.json") == Path("/tmp/x")


@pytest.mark.parametrize("out, says", [("", "--out is empty"), (".", "is a folder"),
                                       ("newdir/", "is a folder")])
def test_an_out_that_names_no_file_is_a_usage_error(out, says, capsys):
    common = load_benchmark("bench_common")
    with pytest.raises(SystemExit) as e:
        common.results_stem("gpu", out)
    assert e.value.code == 2 and says in capsys.readouterr().err
