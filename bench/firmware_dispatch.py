"""Scenario 4 of issue 9: time to dispatch a firmware task to N online piles.

Starts ``pilegate serve`` (SQLite in a temporary directory, server pinned to
CPU 0 when taskset exists), connects and boots N chargers with the load
generator's raw WebSocket client (this process, CPU 1), uploads an image,
creates one task over every pile (no canary, one wave, max concurrent = N)
and measures, per pile, the time from the task's creation until its
UpdateFirmware CALL arrives at the charger. The chargers answer Accepted and
report nothing more, so the figure is the dispatch alone. Bounded: it stops
by itself after ``--timeout`` seconds.

    .venv/bin/python bench/firmware_dispatch.py --chargers 10000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import (
    BOOT_PAYLOAD,
    BootingCharger,
    connect_and_boot,
    distribution,
    pile_ids,
    proc_rss_kib,
    raise_nofile,
)

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class FirmwareCharger(BootingCharger):
    """Boots, then answers UpdateFirmware with Accepted ({}) and notes when it came."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.update_at: float | None = None

    def on_text(self, payload: bytes) -> None:
        msg = orjson.loads(payload)
        if msg[0] == 2 and msg[2] == "UpdateFirmware":
            if self.update_at is None:
                self.update_at = time.perf_counter()
            self.send_text(orjson.dumps([3, msg[1], {}]))
            return
        super().on_text(payload)


def api(
    base: str,
    method: str,
    path: str,
    body: Any = None,
    data: bytes | None = None,
    content_type: str = "application/json",
) -> Any:
    if body is not None:
        data = json.dumps(body).encode()
    req = urllib.request.Request(
        base + path,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": content_type},
    )
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.loads(r.read())


async def run(args: argparse.Namespace) -> dict[str, Any]:
    raise_nofile(args.chargers + 2000)
    tmp = Path(tempfile.mkdtemp(prefix="pilegate-fw-bench-"))
    ocpp_port, api_port = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PILEGATE_")},
        "PILEGATE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp / 'gw.db'}",
        "PILEGATE_API_TOKEN": TOKEN,
        "PILEGATE_OCPP_HOST": "127.0.0.1",
        "PILEGATE_OCPP_PORT": str(ocpp_port),
        "PILEGATE_API_PORT": str(api_port),
        "PILEGATE_CBP_PORT": str(free_port()),
        "PILEGATE_BOOT_RATE_LIMIT": "1000000",
        "PILEGATE_FIRMWARE_DIR": str(tmp / "images"),
        "PILEGATE_LOG_LEVEL": "warning",
        "PILEGATE_LOG_FORMAT": "json",
    }
    cmd = [sys.executable, "-m", "gateway", "serve"]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", "0", *cmd]
        os.sched_setaffinity(0, {1})
    log = (tmp / "gateway.log").open("wb")
    # Popen returns at once; the readiness poll below is the wait.
    proc = subprocess.Popen(  # noqa: ASYNC220
        cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{api_port}"
    result: dict[str, Any] = {"chargers": args.chargers}
    chargers: list[BootingCharger] = []
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                await asyncio.to_thread(urllib.request.urlopen, base + "/readyz", None, 2)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("gateway did not start") from None
                await asyncio.sleep(0.2)
        ids = pile_ids(args.chargers)
        counters: Counter[str] = Counter()
        ns = argparse.Namespace(
            host="127.0.0.1",
            port=ocpp_port,
            concurrency=1000,
            connect_timeout=args.timeout,
            retries=3,
            retry_delay=1.0,
            source_addresses=4,
        )
        chargers, failures, boot_s, _ = await connect_and_boot(
            ns,
            ids,
            lambda pid: FirmwareCharger("127.0.0.1", ocpp_port, f"/ocpp/{pid}", 5.0, counters),
        )
        result["booted"] = len(chargers)
        result["boot_seconds"] = round(boot_s, 2)
        result["connect_failures"] = dict(failures)
        await asyncio.sleep(2)  # let the write-behind queue record the boots
        image = await asyncio.to_thread(
            api,
            base,
            "POST",
            f"/api/firmware/images?version=BENCH_AC7_261125001&model={BOOT_PAYLOAD['chargePointModel']}"
            "&filename=fw.bin",
            data=os.urandom(64 * 1024),
            content_type="application/octet-stream",
        )
        t0 = time.perf_counter()
        task = await asyncio.to_thread(
            api,
            base,
            "POST",
            "/api/firmware/tasks",
            {
                "image_id": image["id"],
                "targets": [c.path.rsplit("/", 1)[1] for c in chargers],
                "rollout": {"canary": 0, "max_concurrent": args.chargers, "failure_threshold": 1.0},
            },
        )
        created_s = time.perf_counter() - t0
        result["task_id"] = task.get("id")
        result["create_seconds"] = round(created_s, 2)
        end = time.perf_counter() + args.timeout
        while time.perf_counter() < end:
            if all(getattr(c, "update_at", None) is not None for c in chargers):
                break
            await asyncio.sleep(0.2)
        got = [c.update_at - t0 for c in chargers if getattr(c, "update_at", None) is not None]
        result["dispatched"] = len(got)
        result["dispatch_seconds"] = distribution(sorted(got)) if got else {}
        result["all_dispatched_after_s"] = round(max(got), 2) if got else None
        result["server_rss_kib"] = proc_rss_kib(proc.pid)
    finally:
        for c in chargers:
            c.abort()
        proc.terminate()
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--chargers", type=int, default=10_000)
    parser.add_argument("--timeout", type=float, default=300.0, help="bound of each phase (s)")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print(json.dumps(result, indent=2))
    ok = result.get("dispatched") == result.get("booted") == args.chargers
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
