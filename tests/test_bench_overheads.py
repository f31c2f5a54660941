"""benchmarks/bench_overheads.py: bad sizes are one-line errors."""
from __future__ import annotations

import pytest

from helpers import load_benchmark


def test_one_image_whose_last_map_is_1x1_is_refused_in_one_line(tmp_path, capsys):
    """break56 #15: --mask-batch 1 --mask-size 32 ended in torch's BatchNorm traceback."""
    bench = load_benchmark("bench_overheads")
    with pytest.raises(SystemExit) as exited:
        bench.main(["--masks-only", "--mask-size", "32", "--mask-batch", "1", "--mask-steps", "1",
                    "--threads", "1", "--out", str(tmp_path / "ov")])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--mask-batch 1 at --mask-size 32" in err and "raise --mask-batch or --mask-size" in err
    assert not list(tmp_path.iterdir())  # nothing written
