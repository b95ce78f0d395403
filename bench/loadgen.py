"""Load generator for OCPP 1.6J central systems (any server, not only pilegate).

Each simulated charger is a hand-written WebSocket client (``asyncio.Protocol``,
RFC 6455 framing, masked client frames) so the generator itself stays far
below the server's cost per message; every charger sends BootNotification
first. Three modes:

``mixed``  N chargers (default 100), each sending back to back (the next CALL
           right after the previous answer) a mix of 1/3 Heartbeat, 1/3
           MeterValues with 4 sampled values and 1/3 StatusNotification for
           D seconds after a warm-up. Prints msgs/s, p50/p95/p99/max latency,
           CALLERRORs, unanswered calls and closed links.
``storm``  connect and boot C chargers (default 10,000) as fast as possible
           with bounded concurrency; report the time until all are booted,
           then stay idle for a few seconds (pongs answered) so the server's
           memory can be read. With ``--server-pid``, VmRSS of that process
           is read before the storm and after it (settled).
``halfopen``  open K WebSockets (default 1,000), boot them and go silent: no
           frame and no pong any more, while the TCP stack still acknowledges
           (what a charger whose application hung, or a NAT that dropped the
           flow on one side, looks like to the server). Measures per pile the
           time from the silence to the server closing the link and, with
           ``--api`` (pilegate's ops API), to the offline event (its ``at``)
           and to the moment ``/api/piles?online=false`` shows it.

    .venv/bin/python bench/loadgen.py mixed --port 9000 [--chargers 100] [--duration 30]
    .venv/bin/python bench/loadgen.py storm --port 9000 [--chargers 10000] [--server-pid PID]
    .venv/bin/python bench/loadgen.py halfopen --port 9000 --api http://127.0.0.1:8080

``--json FILE`` writes the figures as JSON (``bench/run.py`` reads them).
Every run is bounded in time and stops by itself; traffic goes only to
``--host`` (127.0.0.1 by default).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import random
import resource
import socket
import struct
import sys
import time
import urllib.error
import urllib.request
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson

_c_apply_mask: Callable[[bytes, bytes], bytes] | None
try:  # the C helper shipped with websockets; plain Python otherwise
    from websockets.speedups import apply_mask as _c_apply_mask
except ImportError:  # pragma: no cover
    _c_apply_mask = None

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# ----------------------------------------------------------------------------
# pile IDs
# ----------------------------------------------------------------------------


def pile_ids(count: int, product: int = 0, start: int = 1) -> list[str]:
    """Valid 20-digit pilegate pile IDs: region 442000, operator 0001,
    reserved 0, product ``product`` (00 or 01), kind 01 (AC), serial 5 digits.
    Product 00 and 01 give two disjoint ranges of 99,999 IDs each."""
    if count + start - 1 > 99_999:
        raise ValueError("at most 99,999 pile IDs per product code")
    return [f"44200000010{product:02d}01{n:05d}" for n in range(start, start + count)]


# ----------------------------------------------------------------------------
# RFC 6455 client framing
# ----------------------------------------------------------------------------


def _mask(data: bytes, key: bytes) -> bytes:
    if _c_apply_mask is not None:
        result: bytes = _c_apply_mask(data, key)
        return result
    n = len(data)
    if n == 0:
        return data
    keys = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(keys, "big")).to_bytes(n, "big")


def client_frame(opcode: int, payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + key + _mask(payload, key)


class HandshakeError(Exception):
    pass


class RawWs(asyncio.Protocol):
    """Minimal WebSocket client over one TCP connection.

    Subclasses implement ``on_text``; ``answer_pings`` decides whether pings
    get their pong (False in the half-open mode).
    """

    answer_pings = True

    def __init__(self, host: str, port: int, path: str, subprotocol: str = "ocpp1.6") -> None:
        self.host = host
        self.port = port
        self.path = path
        self.subprotocol = subprotocol
        self.transport: asyncio.Transport | None = None
        self.key = os.urandom(4)
        self._ws_key = base64.b64encode(os.urandom(16))
        self._buf = bytearray()
        self._frag: bytearray | None = None
        self.upgraded = False
        self.closed = False
        self.closed_at: float | None = None  # time.time() when the link ended
        self.close_code: int | None = None
        self.loop = asyncio.get_running_loop()
        self.handshake_done: asyncio.Future[None] = self.loop.create_future()

    # --- asyncio.Protocol -----------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        request = (
            f"GET {self.path} HTTP/1.1\r\n"
            f"Host: {self.host}:{self.port}\r\n"
            "Upgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {self._ws_key.decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Protocol: {self.subprotocol}\r\n"
            "\r\n"
        )
        transport.write(request.encode())

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.closed_at is None:
            self.closed_at = time.time()
        if not self.handshake_done.done():
            self.handshake_done.set_exception(
                HandshakeError(f"connection lost during handshake: {exc!r}")
            )
        self.on_closed()

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > 65536:
                    self._fail_handshake("response head too long")
                return
            head = bytes(buf[:end]).decode("latin-1")
            del buf[: end + 4]
            status_line, _, rest = head.partition("\r\n")
            parts = status_line.split(" ", 2)
            if len(parts) < 2 or parts[1] != "101":
                self._fail_handshake(f"HTTP {status_line!r}")
                return
            headers = {}
            for line in rest.split("\r\n"):
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            expected = base64.b64encode(hashlib.sha1(self._ws_key + WS_GUID).digest()).decode()
            if headers.get("sec-websocket-accept") != expected:
                self._fail_handshake("bad Sec-WebSocket-Accept")
                return
            self.upgraded = True
            self.handshake_done.set_result(None)
            self.on_open()
        self._parse_frames()

    # --- framing ------------------------------------------------------------------
    def _parse_frames(self) -> None:
        buf = self._buf
        while len(buf) >= 2 and not self.closed:
            b0 = buf[0]
            b1 = buf[1]
            n = b1 & 0x7F
            pos = 2
            if n == 126:
                if len(buf) < 4:
                    return
                n = (buf[2] << 8) | buf[3]
                pos = 4
            elif n == 127:
                if len(buf) < 10:
                    return
                n = struct.unpack_from("!Q", buf, 2)[0]
                pos = 10
            mask_key = b""
            if b1 & 0x80:  # servers must not mask, but be tolerant
                if len(buf) < pos + 4:
                    return
                mask_key = bytes(buf[pos : pos + 4])
                pos += 4
            if len(buf) < pos + n:
                return
            payload = bytes(buf[pos : pos + n])
            del buf[: pos + n]
            if mask_key:
                payload = _mask(payload, mask_key)
            opcode = b0 & 0x0F
            fin = b0 & 0x80
            if opcode in (1, 2):
                if fin:
                    self.on_text(payload)
                else:
                    self._frag = bytearray(payload)
            elif opcode == 0 and self._frag is not None:
                self._frag += payload
                if fin:
                    whole, self._frag = bytes(self._frag), None
                    self.on_text(whole)
            elif opcode == 9:
                if self.answer_pings:
                    self.write_frame(0xA, payload)
            elif opcode == 8:
                self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                if self.closed_at is None:
                    self.closed_at = time.time()
                self.write_frame(0x8, payload[:2])
                if self.transport is not None:
                    self.transport.close()
                self.closed = True

    def write_frame(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(opcode, payload, self.key))

    def send_text(self, payload: bytes) -> None:
        self.write_frame(0x1, payload)

    def close(self, code: int = 1000) -> None:
        self.write_frame(0x8, struct.pack("!H", code))

    def abort(self) -> None:
        """Drop the link with a RST (no TIME_WAIT left behind for the next storm)."""
        t = self.transport
        if t is None:
            return
        sock = t.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        t.abort()

    def _fail_handshake(self, why: str) -> None:
        if not self.handshake_done.done():
            self.handshake_done.set_exception(HandshakeError(why))
        if self.transport is not None:
            self.transport.close()

    # --- hooks --------------------------------------------------------------------
    def on_open(self) -> None:
        pass

    def on_text(self, payload: bytes) -> None:
        pass

    def on_closed(self) -> None:
        pass


# ----------------------------------------------------------------------------
# OCPP message builders
# ----------------------------------------------------------------------------

BOOT_PAYLOAD = {
    "chargePointVendor": "BenchVendor",
    "chargePointModel": "Bench-AC7",
    "chargePointSerialNumber": "SN-BENCH",
    "firmwareVersion": "1.0.0",
}


def boot_frame(uid: str) -> bytes:
    return orjson.dumps([2, uid, "BootNotification", BOOT_PAYLOAD])


class Clock:
    """RFC 3339 millisecond timestamps, cached per second (cheap per message)."""

    def __init__(self) -> None:
        self._sec = -1
        self._prefix = ""

    def stamp(self, ms_epoch: int) -> str:
        sec, ms = divmod(ms_epoch, 1000)
        if sec != self._sec:
            self._sec = sec
            self._prefix = datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._prefix}.{ms:03d}Z"


CLOCK = Clock()
STATUSES = ("Available", "Preparing", "Charging", "SuspendedEV", "Finishing")
ACTIONS = ("Heartbeat", "MeterValues", "StatusNotification")


def _sv(measurand: str, value: str, unit: str, phase: str | None = None) -> bytes:
    d: dict[str, str] = {
        "value": value,
        "context": "Sample.Periodic",
        "measurand": measurand,
        "location": "Outlet",
        "unit": unit,
    }
    if phase:
        d["phase"] = phase
    return orjson.dumps(d)


def mixed_frame(
    step: int, uid: str, energy: int, status: str, stamp: Callable[[], str]
) -> tuple[str, bytes]:
    """Scenario 1's CALL at ``step`` of its rotation (0 Heartbeat, 1
    MeterValues with 4 sampled values, 2 StatusNotification) and its action;
    ``stamp`` is called for a timestamp only by the two that carry one.
    bench/message_path.py feeds the gateway the same frames."""
    if step == 0:
        return "Heartbeat", b'[2,"' + uid.encode() + b'","Heartbeat",{}]'
    if step == 1:
        svs = b",".join(
            (
                _sv("Energy.Active.Import.Register", str(energy), "Wh"),
                _sv("Current.Import", "31.8", "A", "L1"),
                _sv("Voltage", "229.7", "V", "L1-N"),
                _sv("Power.Active.Import", "7.30", "kW"),
            )
        )
        return "MeterValues", (
            b'[2,"' + uid.encode() + b'","MeterValues",{"connectorId":1,"meterValue":'
            b'[{"timestamp":"' + stamp().encode() + b'","sampledValue":[' + svs + b"]}]}]"
        )
    payload = {"connectorId": 1, "errorCode": "NoError", "status": status, "timestamp": stamp()}
    return "StatusNotification", orjson.dumps([2, uid, "StatusNotification", payload])


# ----------------------------------------------------------------------------
# statistics
# ----------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, int(-(-q * len(sorted_values) // 100)) - 1))
    return sorted_values[k]


def distribution(values: Sequence[float]) -> dict[str, float | int]:
    s = sorted(values)
    if not s:
        return {"count": 0}
    return {
        "count": len(s),
        "min": s[0],
        "p50": percentile(s, 50),
        "p90": percentile(s, 90),
        "p95": percentile(s, 95),
        "p99": percentile(s, 99),
        "max": s[-1],
        "mean": sum(s) / len(s),
    }


def proc_rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class Window(NamedTuple):
    """What ``measured_window`` measured."""

    seconds: float
    cpu_me: float  # this process's CPU seconds
    cpu_srv: float | None  # the server's CPU seconds (all threads)
    rss: int | None  # the server's VmRSS, KiB
    threads: dict[str, float] | None  # thread_split of the server


async def measured_window(args: argparse.Namespace, stats: Any) -> Window:
    """Warm up, then the measured window (``stats.phase`` "measure", then
    "drain"): its length, this process's CPU seconds, and when
    ``--server-pid`` is given the server's CPU seconds, VmRSS (KiB) and CPU
    per thread. Shared with ``bench/cbp_loadgen.py``."""
    await asyncio.sleep(args.warmup)
    pid = args.server_pid
    cpu_srv0 = proc_cpu_seconds(pid) if pid else None
    threads0 = thread_cpu_seconds(pid) if pid else None
    cpu_me0 = time.process_time()
    stats.phase = "measure"
    w0 = time.perf_counter()
    await asyncio.sleep(args.duration)
    stats.phase = "drain"
    window = time.perf_counter() - w0
    cpu_me = time.process_time() - cpu_me0
    cpu_srv1 = proc_cpu_seconds(pid) if pid else None
    threads1 = thread_cpu_seconds(pid) if pid else None
    cpu_srv = cpu_srv1 - cpu_srv0 if cpu_srv0 is not None and cpu_srv1 is not None else None
    rss = proc_rss_kib(pid) if pid else None
    split = (
        thread_split(pid, threads0, threads1, window)
        if threads0 is not None and threads1 is not None and window > 0
        else None
    )
    return Window(window, cpu_me, cpu_srv, rss, split)


def thread_cpu_seconds(pid: int) -> dict[int, tuple[float, float]] | None:
    """(user, kernel) CPU seconds of each thread of a process, by thread id."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[int, tuple[float, float]] = {}
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended meanwhile
        out[int(tid)] = (int(fields[11]) / ticks, int(fields[12]) / ticks)
    return out


def thread_split(
    pid: int,
    before: dict[int, tuple[float, float]],
    after: dict[int, tuple[float, float]],
    window: float,
) -> dict[str, float]:
    """The server's CPU in the window by thread, in % of one core: the main
    thread (thread id = pid, the event loop) in user and kernel time, and
    every other thread together (aiosqlite's workers, the executor's).

    py-spy's default mode counts a thread as busy while it waits for the
    GIL, which overstates the database thread; the kernel's own accounting
    does not. A thread started in the window counts from zero; one that
    ended in it is missing from ``after`` and its time is not counted."""
    main_user = main_sys = others = 0.0
    for tid, (user, kernel) in after.items():
        user0, kernel0 = before.get(tid, (0.0, 0.0))
        if tid == pid:
            main_user, main_sys = user - user0, kernel - kernel0
        else:
            others += (user - user0) + (kernel - kernel0)
    return {
        "event_loop_user_pct": 100 * main_user / window,
        "event_loop_kernel_pct": 100 * main_sys / window,
        "other_threads_pct": 100 * others / window,
    }


def proc_cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (all its threads), in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def raise_nofile(wanted: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    target = wanted
    if hard != resource.RLIM_INFINITY and hard < wanted:
        try:  # root may raise the hard limit
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
        except (ValueError, OSError):
            target = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


@dataclass
class MixedStats:
    phase: str = "warmup"  # warmup | measure | drain
    latencies: array[float] = field(default_factory=lambda: array("d"))
    by_action_lat: dict[str, array[float]] = field(
        default_factory=lambda: {a: array("d") for a in ACTIONS}
    )
    answered_total: Counter[str] = field(default_factory=Counter)  # CALLRESULTs, whole run
    errors: Counter[str] = field(default_factory=Counter)  # CALLERROR codes, whole run
    errors_in_window: int = 0
    server_calls: Counter[str] = field(default_factory=Counter)
    boots: Counter[str] = field(default_factory=Counter)
    closed_links: int = 0
    protocol_errors: int = 0


# ----------------------------------------------------------------------------
# mode: mixed
# ----------------------------------------------------------------------------


class MixedCharger(RawWs):
    def __init__(
        self,
        host: str,
        port: int,
        path: str,
        stats: MixedStats,
        seq0: int,
        ready: Callable[[], None],
    ) -> None:
        super().__init__(host, port, path)
        self.stats = stats
        self.seq = 0
        self.step = seq0  # which of the three actions comes next
        self.uid = ""
        self.action = ""
        self.sent_at = 0.0
        self.booted = False
        self.stopping = False
        self.outstanding = False
        self.energy = random.randint(0, 1_000_000)
        self.last_ms = 0
        self._ready = ready
        self.idle: asyncio.Future[None] = self.loop.create_future()

    def on_open(self) -> None:
        self.uid = "b0"
        self.action = "BootNotification"
        self.outstanding = True
        self.sent_at = time.perf_counter()
        self.send_text(boot_frame(self.uid))

    def _stamp(self) -> str:
        ms = int(time.time() * 1000)
        if ms <= self.last_ms:  # strictly increasing per charger: distinct samples
            ms = self.last_ms + 1
        self.last_ms = ms
        return CLOCK.stamp(ms)

    def send_next(self) -> None:
        if self.stopping or self.closed:
            self.outstanding = False
            if not self.idle.done():
                self.idle.set_result(None)
            return
        self.seq += 1
        uid = f"{self.seq:x}"
        step = self.step
        self.step = (step + 1) % 3
        if step == 1:
            self.energy += 7
        action, frame = mixed_frame(
            step, uid, self.energy, STATUSES[self.seq % len(STATUSES)], self._stamp
        )
        self.uid = uid
        self.action = action
        self.outstanding = True
        self.sent_at = time.perf_counter()
        self.send_text(frame)

    def on_text(self, payload: bytes) -> None:
        now = time.perf_counter()
        stats = self.stats
        try:
            msg = orjson.loads(payload)
            kind = msg[0]
        except (orjson.JSONDecodeError, IndexError, TypeError, KeyError):
            stats.protocol_errors += 1
            return
        if kind == 2:  # a CALL from the server: answer NotImplemented (a plain test charger)
            stats.server_calls[str(msg[2]) if len(msg) > 2 else "?"] += 1
            self.send_text(orjson.dumps([4, msg[1], "NotImplemented", "bench charger", {}]))
            return
        if not self.outstanding or msg[1] != self.uid:
            stats.protocol_errors += 1
            return
        self.outstanding = False
        action = self.action
        if not self.booted:
            status = msg[2].get("status") if kind == 3 and isinstance(msg[2], dict) else "error"
            stats.boots[str(status)] += 1
            if status != "Accepted":
                interval = msg[2].get("interval", 1) if kind == 3 else 1
                self.loop.call_later(min(float(interval), 2.0), self.on_open)
                return
            self.booted = True
            self._ready()  # the load starts once every charger has booted
            return
        if kind == 3:
            stats.answered_total[action] += 1
            if stats.phase == "measure":
                lat = now - self.sent_at
                stats.latencies.append(lat)
                stats.by_action_lat[action].append(lat)
        else:
            code = str(msg[2]) if len(msg) > 2 else "?"
            stats.errors[f"{action}:{code}"] += 1
            if stats.phase == "measure":
                stats.errors_in_window += 1
        self.send_next()

    def on_closed(self) -> None:
        self.stats.closed_links += 1
        if not self.idle.done():
            self.idle.set_result(None)


async def _connect(
    factory: Callable[[], RawWs], host: str, port: int, local_addr: str | None = None
) -> RawWs:
    loop = asyncio.get_running_loop()
    kwargs: dict[str, Any] = {}
    if local_addr:
        kwargs["local_addr"] = (local_addr, 0)
    _, proto = await loop.create_connection(factory, host, port, **kwargs)
    assert isinstance(proto, RawWs)
    await proto.handshake_done
    return proto


async def run_mixed(args: argparse.Namespace) -> dict[str, Any]:
    stats = MixedStats()
    ids = pile_ids(args.chargers, product=args.product)
    ready = 0
    all_ready = asyncio.Event()

    def one_ready() -> None:
        nonlocal ready
        ready += 1
        if ready == len(ids):
            all_ready.set()

    chargers: list[MixedCharger] = []
    sem = asyncio.Semaphore(50)

    async def open_one(i: int, pid: str) -> None:
        async with sem:
            proto = await _connect(
                lambda: MixedCharger(
                    args.host, args.port, f"{args.prefix}/{pid}", stats, i % 3, one_ready
                ),
                args.host,
                args.port,
            )
            assert isinstance(proto, MixedCharger)
            chargers.append(proto)

    t0 = time.perf_counter()
    await asyncio.wait_for(
        asyncio.gather(*(open_one(i, p) for i, p in enumerate(ids))), args.connect_timeout
    )
    await asyncio.wait_for(all_ready.wait(), args.connect_timeout)
    boot_s = time.perf_counter() - t0
    print(f"mixed: {len(chargers)} chargers connected and booted in {boot_s:.2f} s", flush=True)
    load_t0 = time.perf_counter()
    for c in chargers:
        c.send_next()

    window, cpu_me, cpu_srv, rss, threads = await measured_window(args, stats)
    for c in chargers:
        c.stopping = True
    load_s = time.perf_counter() - load_t0
    # answers still in flight: wait for them (bounded), then count the rest
    pending = [c.idle for c in chargers if c.outstanding and not c.closed]
    if pending:
        await asyncio.wait(pending, timeout=args.drain_timeout)
    unanswered = sum(1 for c in chargers if c.outstanding and not c.closed)
    closed_before_end = stats.closed_links
    for c in chargers:
        c.close(1000)
    await asyncio.sleep(0.5)
    for c in chargers:
        if not c.closed:
            c.abort()

    lat = sorted(stats.latencies)
    n = len(lat)
    result: dict[str, Any] = {
        "mode": "mixed",
        "chargers": len(chargers),
        "warmup_s": args.warmup,
        "window_s": window,
        "messages": n,
        "msgs_per_s": n / window if window > 0 else 0.0,
        "latency_ms": {k: v * 1000 for k, v in distribution(lat).items() if k != "count"},
        "latency_ms_by_action": {
            a: {
                k: v * 1000
                for k, v in distribution(stats.by_action_lat[a]).items()
                if k in ("p50", "p99", "max")
            }
            for a in ACTIONS
        },
        "load_s": load_s,
        "answered_total": dict(stats.answered_total),
        "errors": dict(stats.errors),
        "errors_in_window": stats.errors_in_window,
        "boots": dict(stats.boots),
        "server_calls": dict(stats.server_calls),
        "unanswered_at_end": unanswered,
        "links_closed_by_server": closed_before_end,
        "protocol_errors": stats.protocol_errors,
        "loadgen_cpu_pct": 100 * cpu_me / window if window > 0 else None,
        "server_cpu_pct": 100 * cpu_srv / window if cpu_srv is not None and window > 0 else None,
        "server_rss_kib": rss,
        "server_threads_pct": threads,
    }
    return result


# ----------------------------------------------------------------------------
# mode: storm
# ----------------------------------------------------------------------------


class BootingCharger(RawWs):
    """Connects, boots (retrying Pending after min(interval, cap)), then idles."""

    def __init__(
        self, host: str, port: int, path: str, pending_cap: float, counters: Counter[str]
    ) -> None:
        super().__init__(host, port, path)
        self.pending_cap = pending_cap
        self.counters = counters
        self.booted: asyncio.Future[float] = self.loop.create_future()
        self.boot_answer_at = 0.0  # time.time() of the Accepted answer
        self._n = 0

    def on_open(self) -> None:
        self._n += 1
        self.send_text(boot_frame(f"boot-{self._n}"))

    def on_text(self, payload: bytes) -> None:
        try:
            msg = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self.counters["protocol_errors"] += 1
            return
        if msg[0] == 2:
            self.send_text(orjson.dumps([4, msg[1], "NotImplemented", "bench charger", {}]))
            return
        if self.booted.done():
            return
        if msg[0] == 3 and isinstance(msg[2], dict) and msg[2].get("status") == "Accepted":
            self.counters["Accepted"] += 1
            self.boot_answer_at = time.time()
            self.booted.set_result(time.perf_counter())
            return
        status = msg[2].get("status", "?") if msg[0] == 3 and isinstance(msg[2], dict) else "error"
        self.counters[str(status)] += 1
        interval = msg[2].get("interval", 1) if msg[0] == 3 and isinstance(msg[2], dict) else 1
        self.loop.call_later(min(float(interval), self.pending_cap), self._retry)

    def _retry(self) -> None:
        if not self.closed and not self.booted.done():
            self.on_open()

    def on_closed(self) -> None:
        if not self.booted.done():
            self.booted.set_exception(HandshakeError("closed before boot"))
            self.booted.exception()  # retrieved here: nobody may be waiting any more


async def connect_and_boot(
    args: argparse.Namespace, ids: list[str], factory: Callable[[str], BootingCharger]
) -> tuple[list[BootingCharger], Counter[str], float, float]:
    """Connect and boot every ID with ``args.concurrency`` in flight.

    Returns the chargers that booted, the failure counters, the time until
    the last boot and the time of the first (s since start).
    """
    sem = asyncio.Semaphore(args.concurrency)
    booted: list[BootingCharger] = []
    failures: Counter[str] = Counter()
    retried: Counter[str] = Counter()
    sources = [f"127.0.0.{i}" for i in range(1, 1 + max(1, args.source_addresses))]
    t0 = time.perf_counter()
    first: list[float] = []
    deadline = t0 + args.connect_timeout

    async def one(i: int, pid: str) -> None:
        attempt = 0
        while True:
            attempt += 1
            async with sem:
                left = deadline - time.perf_counter()
                if left <= 0:
                    failures["timeout"] += 1
                    return
                proto: RawWs | None = None
                try:
                    proto = await asyncio.wait_for(
                        _connect(
                            lambda: factory(pid),
                            args.host,
                            args.port,
                            sources[i % len(sources)] if args.host.startswith("127.") else None,
                        ),
                        left,
                    )
                    assert isinstance(proto, BootingCharger)
                    done_at = await asyncio.wait_for(proto.booted, deadline - time.perf_counter())
                except TimeoutError:
                    failures["timeout"] += 1
                    if proto is not None:
                        proto.abort()
                    return
                except (OSError, HandshakeError) as exc:
                    why = type(exc).__name__ + ": " + str(exc)[:80]
                    if attempt > args.retries:
                        failures[why] += 1
                        return
                    retried[why] += 1
                    if proto is not None:
                        proto.abort()
                else:
                    if not first:
                        first.append(done_at - t0)
                    booted.append(proto)
                    return
            # like a charger: wait, then dial again (outside the concurrency bound)
            await asyncio.sleep(args.retry_delay * random.uniform(0.5, 1.5))

    await asyncio.gather(*(one(i, p) for i, p in enumerate(ids)))
    last = max((c.booted.result() for c in booted), default=t0) - t0
    for why, n in retried.items():
        failures[f"retried after {why}"] += n
    return booted, failures, last, first[0] if first else float("nan")


async def run_storm(args: argparse.Namespace) -> dict[str, Any]:
    raise_nofile(args.chargers + 1000)
    ids = pile_ids(args.chargers, product=args.product)
    counters: Counter[str] = Counter()
    rss_before = proc_rss_kib(args.server_pid) if args.server_pid else None
    cpu0 = proc_cpu_seconds(args.server_pid) if args.server_pid else None

    def factory(pid: str) -> BootingCharger:
        return BootingCharger(
            args.host, args.port, f"{args.prefix}/{pid}", args.pending_cap, counters
        )

    booted, failures, last_s, first_s = await connect_and_boot(args, ids, factory)
    cpu_storm = (
        proc_cpu_seconds(args.server_pid) - cpu0  # type: ignore[operator]
        if args.server_pid and cpu0 is not None
        else None
    )
    print(
        f"storm: {len(booted)}/{len(ids)} booted in {last_s:.2f} s "
        f"(boot answers {dict(counters)}, failures {dict(failures)})",
        flush=True,
    )
    await asyncio.sleep(args.settle)
    rss_after = proc_rss_kib(args.server_pid) if args.server_pid else None
    alive = sum(1 for c in booted if not c.closed)
    hold_left = max(0.0, args.hold - args.settle)
    await asyncio.sleep(hold_left)
    still_alive = sum(1 for c in booted if not c.closed)
    for c in booted:
        c.abort()
    per_charger = (
        (rss_after - rss_before) / alive
        if rss_after is not None and rss_before is not None and alive
        else None
    )
    return {
        "mode": "storm",
        "chargers": len(ids),
        "booted": len(booted),
        "time_to_all_booted_s": last_s if len(booted) == len(ids) else None,
        "time_to_last_boot_s": last_s,
        "time_to_first_boot_s": first_s,
        "boot_answers": dict(counters),
        "failures": dict(failures),
        "concurrency": args.concurrency,
        "server_rss_before_kib": rss_before,
        "server_rss_after_kib": rss_after,
        "alive_at_rss_sample": alive,
        "alive_at_end_of_hold": still_alive,
        "rss_per_charger_kib": per_charger,
        "server_cpu_s_during_storm": cpu_storm,
    }


# ----------------------------------------------------------------------------
# mode: halfopen
# ----------------------------------------------------------------------------


class SilentCharger(BootingCharger):
    """Boots, then never sends a byte again: no frames, no pongs."""

    answer_pings = False

    def on_text(self, payload: bytes) -> None:
        if self.booted.done():
            return  # silent: reads (the kernel would ACK anyway) but never answers
        super().on_text(payload)


def _http_json(url: str, token: str | None, timeout: float = 10.0) -> Any:
    req = urllib.request.Request(url, headers={"Accept": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def _parse_at(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def run_halfopen(args: argparse.Namespace) -> dict[str, Any]:
    raise_nofile(args.chargers + 1000)
    ids = pile_ids(args.chargers, product=args.product)
    counters: Counter[str] = Counter()
    by_pile: dict[str, SilentCharger] = {}

    def factory(pid: str) -> BootingCharger:
        c = SilentCharger(args.host, args.port, f"{args.prefix}/{pid}", args.pending_cap, counters)
        by_pile[pid] = c
        return c

    booted, failures, last_s, _ = await connect_and_boot(args, ids, factory)
    booted_ids = [pid for pid, c in by_pile.items() if c.booted.done() and not c.booted.exception()]
    silent_at = {pid: by_pile[pid].boot_answer_at for pid in booted_ids}
    print(
        f"halfopen: {len(booted_ids)}/{len(ids)} booted in {last_s:.2f} s, now silent",
        flush=True,
    )
    loop = asyncio.get_running_loop()
    pool = ThreadPoolExecutor(max_workers=8)
    api_seen: dict[str, float] = {}
    api_errors: Counter[str] = Counter()
    deadline = time.time() + args.detect_timeout
    want = set(booted_ids)

    async def api(url: str) -> Any:
        return await loop.run_in_executor(pool, _http_json, url, args.api_token)

    last_total = -1
    await asyncio.sleep(min(1.0, args.poll))  # let "connected" events reach the database
    while time.time() < deadline:
        all_closed = all(by_pile[p].closed for p in booted_ids)
        if args.api:
            try:
                head = await api(f"{args.api}/api/piles?online=false&limit=1")
                total = int(head["total"])
                if total != last_total:
                    last_total = total
                    now = time.time()
                    offset = 0
                    while offset < total:
                        page = await api(
                            f"{args.api}/api/piles?online=false&limit=1000&offset={offset}"
                        )
                        for item in page["items"]:
                            pid = item["pile_id"]
                            if pid in want and pid not in api_seen:
                                api_seen[pid] = now
                        offset += 1000
                        if not page["items"]:
                            break
            except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
                api_errors[type(exc).__name__] += 1
            if all_closed and len(api_seen) >= len(want):
                break
        elif all_closed:
            break
        await asyncio.sleep(args.poll)

    closed_lat = [
        by_pile[p].closed_at - silent_at[p]  # type: ignore[operator]
        for p in booted_ids
        if by_pile[p].closed_at is not None
    ]
    api_lat = [api_seen[p] - silent_at[p] for p in api_seen]
    event_lat: list[float] = []
    reasons: Counter[str] = Counter()
    if args.api and api_seen:

        def events_of(pid: str) -> tuple[str, Any]:
            try:
                return pid, _http_json(f"{args.api}/api/piles/{pid}/events?limit=5", args.api_token)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                return pid, exc

        for pid, evs in await asyncio.gather(
            *(loop.run_in_executor(pool, events_of, p) for p in api_seen)
        ):
            if isinstance(evs, Exception):
                api_errors[type(evs).__name__] += 1
                continue
            offline = [e for e in evs if not e["online"] and _parse_at(e["at"]) >= silent_at[pid]]
            if offline:
                first = min(offline, key=lambda e: _parse_at(e["at"]))
                event_lat.append(_parse_at(first["at"]) - silent_at[pid])
                reasons[first["reason"]] += 1
    pool.shutdown(wait=False)
    for c in booted:
        if not c.closed:
            c.abort()
    return {
        "mode": "halfopen",
        "piles": len(ids),
        "booted": len(booted_ids),
        "failures": dict(failures),
        "boot_answers": dict(counters),
        "detected_by_close": len(closed_lat),
        "detected_by_api": len(api_seen),
        "detect_timeout_s": args.detect_timeout,
        "server_close_s": distribution(closed_lat),
        "offline_event_s": distribution(event_lat),
        "api_visible_s": distribution(api_lat),
        "offline_reasons": dict(reasons),
        "api_errors": dict(api_errors),
    }


# ----------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------


def threads_text(split: dict[str, float] | None, prefix: str = "") -> str:
    """thread_split as text ("" without one)."""
    if not split:
        return ""
    return (
        f"{prefix}server threads: event loop {split['event_loop_user_pct']:.0f} % user + "
        f"{split['event_loop_kernel_pct']:.0f} % kernel, others "
        f"{split['other_threads_pct']:.0f} %"
    )


def _fmt_ms(v: float) -> str:
    return f"{v:.2f}"


def print_human(r: dict[str, Any]) -> None:
    if r["mode"] == "mixed":
        lat = r["latency_ms"]
        print(
            f"mixed: {r['chargers']} chargers, {r['window_s']:.1f} s window: "
            f"{r['msgs_per_s']:.0f} msgs/s; latency ms p50 {_fmt_ms(lat['p50'])} "
            f"p95 {_fmt_ms(lat['p95'])} p99 {_fmt_ms(lat['p99'])} max {_fmt_ms(lat['max'])}; "
            f"CALLERRORs {sum(r['errors'].values())}, unanswered {r['unanswered_at_end']}, "
            f"links closed by server {r['links_closed_by_server']}; "
            f"loadgen CPU {r['loadgen_cpu_pct']:.0f}%"
            + (
                f", server CPU {r['server_cpu_pct']:.0f}%"
                if r["server_cpu_pct"] is not None
                else ""
            )
            + threads_text(r.get("server_threads_pct"), "; ")
        )
    elif r["mode"] == "storm":
        print(
            f"storm: {r['booted']}/{r['chargers']} booted, last boot after "
            f"{r['time_to_last_boot_s']:.2f} s; RSS per charger "
            + (
                f"{r['rss_per_charger_kib']:.1f} KiB"
                if r["rss_per_charger_kib"] is not None
                else "n/a"
            )
        )
    else:
        print(
            f"halfopen: {r['booted']} silent piles; server closed {r['detected_by_close']}, "
            f"API showed offline {r['detected_by_api']}"
        )
        for name in ("server_close_s", "offline_event_s", "api_visible_s"):
            d = r[name]
            if d.get("count"):
                print(
                    f"  {name}: n={d['count']} min {d['min']:.2f} p50 {d['p50']:.2f} "
                    f"p90 {d['p90']:.2f} p99 {d['p99']:.2f} max {d['max']:.2f}"
                )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="mode", required=True)

    def common(sp: argparse.ArgumentParser, chargers: int) -> None:
        sp.add_argument("--host", default="127.0.0.1")
        sp.add_argument("--port", type=int, default=9000)
        sp.add_argument("--prefix", default="/ocpp", help="URL path before /{pileId}")
        sp.add_argument("--chargers", type=int, default=chargers)
        sp.add_argument(
            "--product", type=int, default=0, choices=(0, 1), help="product code of the pile IDs"
        )
        sp.add_argument("--server-pid", type=int, help="read this process's CPU time and VmRSS")
        sp.add_argument("--json", metavar="FILE", help="write the figures as JSON")
        sp.add_argument("--connect-timeout", type=float, default=120.0)

    m = sub.add_parser("mixed", help="throughput and latency under the mixed load")
    common(m, 100)
    m.add_argument("--duration", type=float, default=30.0, help="measured seconds")
    m.add_argument("--warmup", type=float, default=5.0, help="seconds before measuring")
    m.add_argument("--drain-timeout", type=float, default=10.0)

    for name, n, helptext in (
        ("storm", 10_000, "connect and boot many chargers at once"),
        ("halfopen", 1_000, "offline-detection latency of silent links"),
    ):
        sp = sub.add_parser(name, help=helptext)
        common(sp, n)
        sp.add_argument("--concurrency", type=int, default=1000, help="handshakes+boots in flight")
        sp.add_argument(
            "--pending-cap", type=float, default=2.0, help="longest wait before re-booting (s)"
        )
        sp.add_argument(
            "--retries", type=int, default=3, help="redials after a failed connect or handshake"
        )
        sp.add_argument("--retry-delay", type=float, default=1.0, help="mean s before a redial")
        sp.add_argument(
            "--source-addresses",
            type=int,
            default=4,
            help="spread connections over 127.0.0.1..N (more ephemeral ports)",
        )
        if name == "storm":
            sp.add_argument(
                "--settle", type=float, default=3.0, help="s after the storm to read RSS"
            )
            sp.add_argument("--hold", type=float, default=5.0, help="s to stay connected and idle")
        else:
            sp.add_argument("--api", help="pilegate ops API base URL, e.g. http://127.0.0.1:8080")
            sp.add_argument("--api-token")
            sp.add_argument("--poll", type=float, default=0.2, help="API poll period (s)")
            sp.add_argument("--detect-timeout", type=float, default=90.0, help="give up after (s)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    raise_nofile(max(getattr(args, "chargers", 100) + 1000, 4096))
    runner = {"mixed": run_mixed, "storm": run_storm, "halfopen": run_halfopen}[args.mode]
    try:
        result = asyncio.run(runner(args))
    except (OSError, HandshakeError, TimeoutError) as exc:
        print(f"loadgen {args.mode}: failed: {exc!r}", file=sys.stderr)
        result = {"mode": args.mode, "failed": repr(exc)}
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
        return 1
    print_human(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
