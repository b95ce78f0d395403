"""bench/loadgen.py's server CPU per thread (the event loop's thread against
the others), which docs/benchmarks.md uses instead of py-spy's share of the
database thread."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from loadgen import thread_cpu_seconds, thread_split, threads_text


def test_split_separates_the_main_thread_from_the_others() -> None:
    before = {100: (10.0, 2.0), 101: (1.0, 0.5), 102: (3.0, 0.0)}
    # 103 started in the window (counts from zero); 102 ended (not counted)
    after = {100: (16.0, 4.0), 101: (2.0, 1.0), 103: (0.25, 0.25)}
    split = thread_split(100, before, after, window=10.0)
    assert split == pytest.approx(
        {"event_loop_user_pct": 60.0, "event_loop_kernel_pct": 20.0, "other_threads_pct": 20.0}
    )
    assert threads_text(split) == (
        "server threads: event loop 60 % user + 20 % kernel, others 20 %"
    )
    assert threads_text(None) == ""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_a_busy_worker_thread_is_counted_as_another_thread() -> None:
    pid = os.getpid()
    before = thread_cpu_seconds(pid)
    assert before is not None and pid in before
    stop = time.monotonic() + 0.8

    def spin() -> None:
        while time.monotonic() < stop:
            pass

    worker = threading.Thread(target=spin)
    started = time.monotonic()
    worker.start()
    time.sleep(0.6)  # the main thread sleeps while the worker spins
    during = thread_cpu_seconds(pid)
    window = time.monotonic() - started
    worker.join()
    assert during is not None and worker.native_id in during
    split = thread_split(pid, before, during, window)
    # The worker's CPU time is charged to the other threads, the sleeping
    # main thread's is not (clock ticks are 10 ms; the worker had ~600 ms).
    assert split["other_threads_pct"] > 20
    assert (
        split["event_loop_user_pct"] + split["event_loop_kernel_pct"] < split["other_threads_pct"]
    )
    assert thread_cpu_seconds(2**22 + 12345) is None  # no such process
