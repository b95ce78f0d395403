"""bench/message_path.py, small: it drives a real gateway's connections and
checks every reply and stored row, so a change that breaks the bench (or the
direct path it measures) shows here rather than in the next benchmark run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_message_path_bench_answers_and_stores_every_frame(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "message_path.py"),
            "--messages", "300",
            "--chargers", "3",
            "--rounds", "2",
            "--json", str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    # 3 rounds (one warm-up) of 3 x 100 frames, each charger's 100 a rotation
    # of Heartbeat, MeterValues, StatusNotification from its first: 34
    # MeterValues and 33 StatusNotifications per charger and round
    assert r["messages_per_round"] == 300
    assert r["replies"] == 600  # the measured rounds
    assert r["sent"] == {"MeterValues": 3 * 3 * 34, "StatusNotification": 3 * 3 * 33}
    assert r["meter_readings"] == 3 * 3 * 34
    assert r["gun_status_events"] == 3 * 3 * 33
    assert r["pilegate_ns"] > 0 and r["baseline_ns"] > 0
    assert "CPU per message" in proc.stdout
