"""The gateway's per-message cost on its event loop, without sockets or a load generator.

End-to-end runs (``bench/run.py`` scenario 1) move by ±15 % on a shared
machine, so a change worth 1–3 % of the message path cannot be seen there.
This bench starts a real gateway in this process (SQLite in a temporary
directory, default settings, MQTT off), connects and boots ``--chargers``
chargers over loopback, and then feeds each server-side connection the
masked frames of scenario 1's mixed load (1/3 Heartbeat, 1/3 MeterValues
with 4 sampled values, 1/3 StatusNotification, timestamps strictly
increasing) straight into its ``data_received``, with the connection's
transport swapped for one that keeps what the gateway writes. So it times
exactly what the event loop's thread does per message from websockets'
framing to the reply frame (``OcppServerConnection._frames``,
``OcppConnection._deliver`` / ``_fast``, decoding, validation, the handler,
the write-behind queue, the reply), minus the two system calls and the
loop's scheduling. The write-behind flusher runs as in the gateway (the loop
is given a turn every ``--batch`` frames); its SQLite thread is not counted.

It prints, in the same run:
- the baseline: what ``bench/bare_server.py`` does per message in Python
  (``json.loads`` of the CALL, ``json.dumps`` of its CALLRESULT), and
- pilegate: CPU time of the event loop's thread per message (median of
  ``--rounds`` rounds, and the least, which a busy machine disturbs least),
  and the msgs/s one core would give at the median.

Every frame must be answered with a CALLRESULT, and every MeterValues and
StatusNotification answered must have its row (one MeterValue element, one
status event) at the end: a CALLERROR, a missing reply or a missing row
fails the run.

    .venv/bin/python bench/message_path.py [--messages 60000] [--rounds 5] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import websockets

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from bare_server import answer  # noqa: E402
from loadgen import CLOCK, STATUSES, client_frame, mixed_frame, pile_ids  # noqa: E402

from gateway.app import Gateway  # noqa: E402
from gateway.config import load_settings  # noqa: E402
from gateway.logging import configure_logging  # noqa: E402

KEY = b"\x12\x34\x56\x78"
QUEUE_HIGH = 5_000


def mixed_texts(n: int, start_ms: int) -> list[bytes]:
    """``n`` CALLs of scenario 1's mix for one charger, built as
    bench/loadgen.py's MixedCharger builds them (``mixed_frame``), each
    timestamp 1 ms after the one before."""
    out: list[bytes] = []
    energy = 1_000
    ms = start_ms

    def stamp() -> str:
        nonlocal ms
        ms += 1
        return CLOCK.stamp(ms)

    for seq in range(1, n + 1):
        step = seq % 3
        if step == 1:
            energy += 7
        _, frame = mixed_frame(step, f"{seq:x}", energy, STATUSES[seq % len(STATUSES)], stamp)
        out.append(frame)
    return out


class KeepTransport:
    """Stands in for a connection's transport while frames are fed: keeps
    the count of frames written and whether each was a CALLRESULT."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.frames = 0
        self.not_results: list[bytes] = []

    def write(self, data: bytes) -> None:
        if data[0] != 0x81:  # not a text frame: a ping or pong (RFC 6455 §5.5)
            return
        self.frames += 1
        # A server frame's payload starts after 2 (or 4) header bytes; a
        # CALLRESULT's text starts with "[3,".
        at = 4 if data[1] == 126 else 2
        if data[at : at + 3] != b"[3,":
            self.not_results.append(data[:200])

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def baseline_ns(texts: list[bytes], rounds: int) -> float:
    """bench/bare_server.py's Python work per message: decode the CALL,
    build and encode its CALLRESULT (the websockets framing not counted)."""
    results = []
    for _ in range(rounds):
        t0 = time.thread_time_ns()
        for raw in texts:
            call = json.loads(raw)
            json.dumps([3, call[1], answer(call[2])]).encode()
        results.append((time.thread_time_ns() - t0) / len(texts))
    return statistics.median(results)


async def feed(gw: Gateway, frames: dict[str, list[bytes]], batch: int) -> tuple[float, int]:
    """Feed every connection its frames, interleaved as 100 chargers would
    send them, and wait for every reply; returns (CPU ns of this thread per
    message, from the first frame to the last reply, and the replies)."""
    conns = {pid: gw.services.registry.get(pid) for pid in frames}
    keeps: dict[str, KeepTransport] = {}
    for pid, conn in conns.items():
        assert conn is not None, f"{pid} is not connected"
        ws = conn.ws  # type: ignore[attr-defined]
        keeps[pid] = KeepTransport(ws.transport)
        ws.transport = keeps[pid]
    order = [(conns[pid].ws, frame) for pid in frames for frame in frames[pid]]  # type: ignore[union-attr]
    # Round-robin over the chargers: charger i's k-th frame after every
    # charger's (k-1)-th, as under the back-to-back load.
    n_per = len(next(iter(frames.values())))
    k = len(frames)
    order = [order[c * n_per + j] for j in range(n_per) for c in range(k)]
    try:
        writer = gw.writer
        assert writer is not None
        t0 = time.thread_time_ns()
        for at in range(0, len(order), batch):
            for ws, frame in order[at : at + batch]:
                ws.data_received(frame)
            await asyncio.sleep(0)  # the flusher and the rest of the loop
            # Frames come no faster than SQLite stores them: the write queue
            # stays near where scenario 1 keeps it (about 5,000 operations;
            # the direct path steps aside from half of 100,000). The wait
            # is idle time, not counted.
            while len(writer) > QUEUE_HIGH:
                await asyncio.sleep(0.001)
        # Frames the direct path could not answer (a full write queue) are
        # answered by their connection's receive task, after an await.
        deadline = time.monotonic() + 60
        while (written := sum(t.frames for t in keeps.values())) < len(order):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.001)
        cpu = time.thread_time_ns() - t0
        bad = [b for t in keeps.values() for b in t.not_results]
        if bad:
            raise SystemExit(f"{len(bad)} replies were not CALLRESULTs, first: {bad[0]!r}")
    finally:
        for pid, conn in conns.items():
            conn.ws.transport = keeps[pid].real  # type: ignore[union-attr]
    return cpu / len(order), written


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="pilegate-msgpath-"))
    settings = load_settings(
        {
            "database_url": f"sqlite+aiosqlite:///{tmp / 'bench.db'}",
            "dev": True,
            "api_host": "127.0.0.1",
            "api_port": 0,
            "ocpp_host": "127.0.0.1",
            "ocpp_port": 0,
            "cbp_host": "127.0.0.1",
            "cbp_port": 0,
            "log_level": "warning",
            # No pings while frames are fed (0 = never): the chargers'
            # pongs could not come back through the swapped transport.
            "ping_interval": 0,
        }
    )
    # As bench/run.py starts the gateway: warnings and errors only, JSON.
    configure_logging("warning", "json")
    gw = Gateway(settings)
    await gw.start()
    clients = []
    try:
        ids = pile_ids(args.chargers)
        for pid in ids:
            ws = await websockets.connect(
                f"ws://127.0.0.1:{gw.ocpp_port}/ocpp/{pid}",
                subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                ping_interval=None,
            )
            await ws.send(
                json.dumps(
                    [
                        2,
                        "b",
                        "BootNotification",
                        {"chargePointVendor": "B", "chargePointModel": "M"},
                    ]
                )
            )
            boot = json.loads(await ws.recv())
            assert boot[2]["status"] == "Accepted", boot
            clients.append(ws)
        per = args.messages // args.chargers
        start_ms = int(time.time() * 1000)
        rounds: list[float] = []
        written = 0
        texts0: list[bytes] = []
        sent = {"MeterValues": 0, "StatusNotification": 0}
        for r in range(args.rounds + 1):  # round 0 warms up
            texts = {
                pid: mixed_texts(per, start_ms + (r * per + i) * 10_000)
                for i, pid in enumerate(ids)
            }
            if r == 1:
                texts0 = texts[ids[0]]
            frames = {pid: [client_frame(0x1, t, KEY) for t in ts] for pid, ts in texts.items()}
            for ts in texts.values():
                for t in ts:
                    for action in sent:
                        sent[action] += f'"{action}"'.encode() in t
            prof = cProfile.Profile() if args.profile and r == args.rounds else None
            if prof is not None:
                prof.enable()
            ns, got = await feed(gw, frames, args.batch)
            if prof is not None:
                prof.disable()
                pstats.Stats(prof).sort_stats("tottime").print_stats(args.top)
            if got != per * len(ids):
                raise SystemExit(f"round {r}: {got} replies to {per * len(ids)} frames")
            if r:
                rounds.append(ns)
                written += got
        assert gw.writer is not None
        await gw.writer.barrier()
        async with gw.store.engine.connect() as c:
            readings = (await c.exec_driver_sql("SELECT count(*) FROM meter_readings")).scalar()
            statuses = (await c.exec_driver_sql("SELECT count(*) FROM gun_status_events")).scalar()
        if (readings, statuses) != (sent["MeterValues"], sent["StatusNotification"]):
            raise SystemExit(
                f"stored {readings} readings and {statuses} status events for "
                f"{sent['MeterValues']} MeterValues and {sent['StatusNotification']} "
                "StatusNotifications answered"
            )
    finally:
        for ws in clients:
            await ws.close()
        await gw.stop()
    base = baseline_ns(texts0 * max(1, 30_000 // max(1, len(texts0))), args.rounds)
    med = statistics.median(rounds)
    return {
        "messages_per_round": per * len(ids),
        "rounds_ns": rounds,
        "pilegate_ns": med,
        "pilegate_min_ns": min(rounds),
        "pilegate_msgs_per_s": 1e9 / med,
        "baseline_ns": base,
        "replies": written,
        "sent": sent,
        "meter_readings": readings,
        "gun_status_events": statuses,
        "python": sys.version.split()[0],
        "cpu": os.cpu_count(),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=60_000, help="frames per round (all chargers)")
    p.add_argument("--chargers", type=int, default=100)
    p.add_argument("--rounds", type=int, default=5, help="measured rounds (one more warms up)")
    p.add_argument("--batch", type=int, default=100, help="frames between two turns of the loop")
    p.add_argument("--profile", action="store_true", help="cProfile the last round")
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--json", help="write the figures to this file")
    args = p.parse_args()
    r = asyncio.run(run(args))
    print(
        f"baseline (bare_server.py's json.loads + json.dumps): {r['baseline_ns']:,.0f} ns/message"
    )
    print(
        f"pilegate event loop, CPU per message: {r['pilegate_ns']:,.0f} ns, "
        f"least {r['pilegate_min_ns']:,.0f} ns "
        f"(rounds: {', '.join(f'{x:,.0f}' for x in r['rounds_ns'])}) "
        f"= {r['pilegate_msgs_per_s']:,.0f} msgs/s on one core without the socket calls"
    )
    print(
        f"replies {r['replies']:,} (all CALLRESULTs); stored: meter_readings "
        f"{r['meter_readings']:,}, gun_status_events {r['gun_status_events']:,}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
