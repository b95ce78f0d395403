"""The real ``pilegate serve`` process: starts, answers, stops cleanly on signals."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_healthy(port: int, proc: subprocess.Popen[bytes], deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited early with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError("gateway did not become healthy in time")


@pytest.mark.parametrize(
    ("sig", "event_loop", "loop_module", "gc_setting", "gc_threshold"),
    [
        (signal.SIGTERM, "uvloop", "uvloop", None, [50_000, 20, 100]),
        (signal.SIGINT, "asyncio", "asyncio", "0", [700, 10, 10]),
    ],
)
def test_serve_starts_and_stops_gracefully(
    tmp_path: Path,
    sig: signal.Signals,
    event_loop: str,
    loop_module: str,
    gc_setting: str | None,
    gc_threshold: list[int],
) -> None:
    port = _free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PILEGATE_")},
        "PILEGATE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}",
        "PILEGATE_API_PORT": str(port),
        "PILEGATE_DEV": "true",
        "PILEGATE_LOG_FORMAT": "json",
        "PILEGATE_EVENT_LOOP": event_loop,
        **({"PILEGATE_GC_THRESHOLD": gc_setting} if gc_setting is not None else {}),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_healthy(port, proc, time.monotonic() + 30)
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
        # dev mode without a token: /api is open
        assert httpx.get(f"http://127.0.0.1:{port}/api/piles").json()["total"] == 0
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err.decode()
    lines = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    events = [line["event"] for line in lines]
    assert "ops API listening" in events and events[-1] == "gateway stopped"
    (loop_line,) = [line for line in lines if line["event"] == "event loop"]
    assert loop_line["event_loop"] == loop_module
    # gc_threshold: the default tunes the collector and freezes startup
    # objects; 0 leaves Python's own settings.
    assert loop_line["gc_threshold"] == gc_threshold
    assert (loop_line["gc_frozen_objects"] > 0) is (gc_setting != "0")
    assert (tmp_path / "gw.db").exists()


def test_event_loop_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvloop

    from gateway.cli import loop_factory
    from gateway.config import ConfigError

    assert loop_factory("asyncio") is None
    assert loop_factory("auto") is uvloop.new_event_loop
    assert loop_factory("uvloop") is uvloop.new_event_loop
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if not installed
    assert loop_factory("auto") is None
    with pytest.raises(ConfigError, match="uvloop is not installed"):
        loop_factory("uvloop")


def test_gc_threshold_setting_is_checked() -> None:
    from gateway.config import ConfigError, load_settings

    assert load_settings({"dev": True}).gc_threshold == 50_000
    with pytest.raises(ConfigError, match="gc_threshold"):
        load_settings({"dev": True, "gc_threshold": -1})


def test_serve_without_token_refuses_to_start(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PILEGATE_")}
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--api-port", "0"],
        env=env,
        capture_output=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert b"api_token is required" in proc.stderr


def test_db_upgrade_command(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PILEGATE_")}
    cur = subprocess.run(
        [sys.executable, "-m", "gateway", "db", "current", "--database-url", url],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert cur.returncode == 1 and b"(empty)" in cur.stdout
    up = subprocess.run(
        [sys.executable, "-m", "gateway", "db", "upgrade", "--database-url", url],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert up.returncode == 0 and b"up to date" in up.stdout, up.stderr
