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
    assert rows == [
        "| pilegate-sqlite | – | 22,000 | bare | 18,000 | 1.22 | 28,111 | yes |",
        "| pilegate-postgresql | – | 15,000 | bare | 18,000 | 0.83 | 19,167 | no |",
    ]


def test_calibration_pairs_each_repeat_with_its_own_baseline() -> None:
    """With --repeat, a ratio is taken within a repeat (runs minutes apart),
    and the verdict is on the median ratio, not on the best run."""
    results = {
        "s1-pilegate-sqlite#1": _s1(20_000),
        "s1-bare#1": _s1(16_000),  # 1.25
        "s1-pilegate-sqlite#2": _s1(18_000),
        "s1-bare#2": _s1(20_000),  # 0.90
        "s1-pilegate-sqlite#3": _s1(21_000),
        "s1-bare#3": {"failed": "no result from loadgen"},
    }
    lines = run.report_calibration(results, ["bare", "pilegate-sqlite"], repeat=3)
    rows = [line for line in lines if "pilegate-sqlite" in line]
    assert rows == [
        "| pilegate-sqlite | 1 | 20,000 | bare | 16,000 | 1.25 | 28,750 | yes |",
        "| pilegate-sqlite | 2 | 18,000 | bare | 20,000 | 0.90 | 20,700 | no |",
        "| **pilegate-sqlite** | median of 2 | | bare | | **1.07** (0.90–1.25) | **24,725** | no |",
    ]


def test_median_run_stands_for_the_repeats() -> None:
    keys = run.s1_keys("pilegate-sqlite", 4)
    assert keys == [f"s1-pilegate-sqlite#{k}" for k in (1, 2, 3, 4)]
    assert run.s1_keys("bare", 1) == ["s1-bare"]
    runs = [_s1(3), {"failed": "x"}, _s1(1), _s1(2)]
    m = run.median_run(runs, keys)
    assert m["msgs_per_s"] == 2 and m["median_of"] == keys
    # the medians are left out of the per-run lists of the report
    results = {"s1-a#1": _s1(1), "s1-a": m}
    assert [k for k, _ in run.runs_of(results)] == ["s1-a#1"]


def test_a_child_that_ends_inside_the_window_counts_as_the_benchmark() -> None:
    """The load generator exits before the window closes: its CPU is the
    benchmark's, not "other processes'" (it used to be counted there)."""
    spin = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass"
    with run.LoadWatch() as watch:
        subprocess.run([sys.executable, "-c", spin], check=True)
    cpu_s = watch.result["ours_pct"] * watch.result["seconds"] / 100
    assert cpu_s >= 0.4
