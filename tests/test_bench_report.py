"""bench/run.py's bookkeeping that docs/benchmarks.md relies on: the bare
baseline's calibration of a run and the split of the machine's CPU into the
benchmark's and other processes'."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import run


def test_calibration_scales_by_the_issue_figure_of_the_same_baseline() -> None:
    ratio, scaled = run.calibrated(22_416, 18_243, "bare")
    assert ratio == pytest.approx(22_416 / 18_243)
    assert scaled == pytest.approx(ratio * 23_000)
    _, scaled_uv = run.calibrated(22_416, 22_330, "bare-uvloop")
    assert scaled_uv == pytest.approx(22_416 / 22_330 * 42_000)
    with pytest.raises(ValueError, match="bare baseline answered 0"):
        run.calibrated(1_000, 0, "bare")


def _s1(msgs: float) -> dict[str, object]:
    return {"msgs_per_s": msgs, "latency_ms": {"p99": 10.0}}


def test_calibration_table_rows_and_verdicts() -> None:
    results = {
        "s1-pilegate-sqlite": _s1(22_000),
        "s1-pilegate-postgresql": _s1(15_000),
        "s1-reference": _s1(2_500),
        "s1-bare": _s1(18_000),
        "s1-bare-uvloop": {"failed": "loadgen did not finish"},
    }
    targets = ["pilegate-sqlite", "pilegate-postgresql", "reference", "bare", "bare-uvloop"]
    lines = run.report_calibration(results, targets)
    rows = [line for line in lines if line.startswith("| pilegate-")]
    # one row per pilegate target and working baseline; the reference and
    # the failed baseline get none
    assert len(rows) == 2
    assert rows[0].startswith("| pilegate-sqlite | 22,000 | bare | 18,000 | 1.22 | 28,111 |")
    assert rows[0].endswith("| yes |")
    assert rows[1].startswith("| pilegate-postgresql | 15,000 | bare | 18,000 | 0.83 | 19,167 |")
    assert rows[1].endswith("| no |")


def test_no_calibration_without_a_baseline_in_the_run() -> None:
    results = {"s1-pilegate-sqlite": _s1(22_000)}
    assert run.report_calibration(results, ["pilegate-sqlite", "reference"]) == []


def test_a_child_that_ends_inside_the_window_counts_as_the_benchmark() -> None:
    """The load generator exits before the window closes: its CPU is the
    benchmark's, not "other processes'" (it used to be counted there)."""
    spin = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass"
    with run.LoadWatch() as watch:
        subprocess.run([sys.executable, "-c", spin], check=True)
    cpu_s = watch.result["ours_pct"] * watch.result["seconds"] / 100
    assert cpu_s >= 0.4
