"""Back-to-back load generator for CBP/1 (cloud-board) gateways: scenario 5.

The CBP/1 twin of ``bench/loadgen.py mixed``: a separate process, N chargers
(default 100) on raw TCP (``asyncio.Protocol``), frames built and read with
the project's codec (``protocol.cloudboard``). Each charger is a two-gun pile
that logs in (0x01 → 0x02 accepted), answers what the gateway asks (0x56 time
sync → 0x55 echoing the SEQ bytes, 0x48 → 0x47, 0x44 → 0x43, 0x12 → 0x13,
0x92 / 0x94 / 0x34 / 0x36 refused) and, once every charger has logged in,
sends *cycles* back to back:

1. 0x13 real-time data of gun 1, charging (a SERIAL made by the charger,
   growing energy register): stored as 5 meter samples on a DC pile
   (voltage, current, power, energy register, SoC; 4 on an AC pile), one
   ``meter_readings`` row holding them;
2. 0x13 real-time data of gun 2 with a status change (Available ↔
   Preparing, alternately): stored as one gun status event, plus its 4 meter
   samples (SoC unknown: no car yet);
3. 0x03 heartbeat, answered by 0x04.

0x13 has no reply, so the heartbeat closes the cycle: the gateway handles a
connection's frames one after the other, in arrival order, so its 0x04 proves
that both 0x13 before it were handled (their rows handed to the write-behind
queue). The next cycle is sent as soon as that 0x04 arrives: at most 3 frames
per charger in flight, one round trip per 3 frames. Each frame is its own
``write`` (its own TCP segment when the socket is idle).

Figures: frames processed per second (3 × cycles whose 0x04 arrived in the
measured window / window); cycle latency (first byte of the cycle's first
0x13 written → its 0x04 received; an upper bound of each of the three frames'
latency); the rows the gateway must have stored for the cycles it confirmed
(``rows_expected``: ``meter_samples``, the sampled values stored in
``meter_readings``, and ``gun_status_events``, by the gateway's
rule that a gun's status is stored when it or the fault code changes), and
for the cycles still unconfirmed at the end (``rows_unconfirmed``: stored or
not). ``bench/run.py`` compares them with the database after the drain.

    .venv/bin/python bench/cbp_loadgen.py --port 9010 [--chargers 100] [--duration 30]

``--json FILE`` writes the figures as JSON (``bench/run.py`` reads them).
Every run is bounded in time and stops by itself; traffic goes only to
``--host`` (127.0.0.1 by default).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from loadgen import distribution, measured_window, pile_ids, raise_nofile, threads_text

from protocol.cloudboard import (
    BadFrame,
    CbpDecoder,
    Display,
    FirmwareUpdate,
    FirmwareUpdateReply,
    FirmwareUpdateResult,
    FrameReceived,
    GarbageSkipped,
    GunStatus,
    Heartbeat,
    HeartbeatAck,
    Kind,
    Login,
    LoginReply,
    LoginResult,
    Message,
    Network,
    PileState,
    ReadRealtime,
    RealtimeData,
    Reboot,
    RebootReply,
    RebootResult,
    RemoteStart,
    RemoteStartRejectReason,
    RemoteStartReply,
    RemoteStartResult,
    RemoteStop,
    RemoteStopRejectReason,
    RemoteStopReply,
    RemoteStopResult,
    TimeSync,
    TimeSyncReply,
    TooManyBadFrames,
    WhitelistUpdate,
    WhitelistUpdateReply,
    WhitelistUpdateResult,
    WhitelistVersionQuery,
    WhitelistVersionReply,
    encode_message,
    encode_reply_message,
    make_serial,
)

LOCAL = timedelta(hours=8)  # the charger's clock: UTC+8 (CBP/1 §2)
_EPOCH = datetime(1970, 1, 1)
FRAMES = ("RealtimeCharging", "RealtimeStatus", "Heartbeat")
STATUS_TOGGLE = (GunStatus.AVAILABLE, GunStatus.PREPARING)


def cbp_pile_ids(count: int, kind: str, product: int = 0) -> list[str]:
    """loadgen.py's pile IDs (region 442000, operator 0001, product 00/01,
    serial 1..count) with the kind digits of ``kind``: 01 AC, 02 DC."""
    code = "02" if kind == "DC" else "01"
    return [pid[:13] + code + pid[15:] for pid in pile_ids(count, product=product)]


def local_time(ms_epoch: int) -> datetime:
    """The charger's naive local time (UTC+8) of a UTC millisecond timestamp."""
    return _EPOCH + timedelta(milliseconds=ms_epoch) + LOCAL


@dataclass
class CbpStats:
    phase: str = "warmup"  # warmup | measure | drain
    latencies: array[float] = field(default_factory=lambda: array("d"))
    cycles_in_window: int = 0
    confirmed: Counter[str] = field(default_factory=Counter)  # frames, whole run, by kind
    sent: Counter[str] = field(default_factory=Counter)
    logins: Counter[str] = field(default_factory=Counter)
    server_requests: Counter[str] = field(default_factory=Counter)
    rows_expected: Counter[str] = field(default_factory=Counter)  # confirmed cycles
    closed_links: int = 0
    protocol_errors: Counter[str] = field(default_factory=Counter)


class CbpCharger(asyncio.Protocol):
    """One two-gun pile over raw TCP, driven by the codec."""

    def __init__(
        self, pile: str, kind: str, stats: CbpStats, ready: Callable[[], None], serial_no: int
    ) -> None:
        self.pile = pile
        self.kind = kind
        self.stats = stats
        self._ready = ready
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.decoder = CbpDecoder()
        self.seq = 0
        self.logged_in = False
        self.closed = False
        self.stopping = False
        self.outstanding = False  # a cycle waits for its 0x04
        self.hb_seq = b""
        self.sent_at = 0.0
        self.cycle_rows: tuple[int, int] = (0, 0)  # (meter samples, status events) of the cycle
        self.last_ms = 0
        self.energy_wh = random.randint(100_000, 10_000_000)
        self.g2_meter_wh = random.randint(100_000, 10_000_000)
        self.g2_step = 0
        self.last_status: dict[int, tuple[GunStatus, int]] = {}  # the gateway's rule, mirrored
        self.serial = make_serial(pile, 1, local_time(int(time.time() * 1000)), serial_no % 10_000)
        self.login_seq = b""
        self.idle: asyncio.Future[None] = self.loop.create_future()
        self.connected: asyncio.Future[None] = self.loop.create_future()

    # --- asyncio.Protocol -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        login = Login(
            pile=self.pile,
            kind=Kind.DC if self.kind == "DC" else Kind.AC,
            gun_count=2,
            protocol_version=10,
            firmware_version="BENCH_CBP_1.0.0",
            model=f"BENCH-{self.kind}2",
            network=Network.ETHERNET,
            iccid=None,
            display=Display.TOUCH_SCREEN,
            auth_key="",
        )
        data = self._frame(login)
        self.login_seq = data[2:4]
        transport.write(data)
        if not self.connected.done():
            self.connected.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.stats.closed_links += 1
        if not self.connected.done():
            self.connected.set_exception(ConnectionError(f"connection lost: {exc!r}"))
        if not self.idle.done():
            self.idle.set_result(None)

    def data_received(self, data: bytes) -> None:
        for event in self.decoder.feed(data):
            if isinstance(event, FrameReceived):
                self._on_frame(event.frame.seq_bytes, event.message)
            elif isinstance(event, BadFrame):
                self.stats.protocol_errors[f"bad_frame:{event.reason.value}"] += 1
            elif isinstance(event, GarbageSkipped):
                self.stats.protocol_errors["garbage"] += 1
            elif isinstance(event, TooManyBadFrames):
                self.stats.protocol_errors["too_many_bad_frames"] += 1

    # --- frames -----------------------------------------------------------------------------
    def _frame(self, message: Message) -> bytes:
        self.seq = (self.seq + 1) & 0xFFFF
        return encode_message(self.seq, message)

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _sample_time(self) -> datetime:
        ms = int(time.time() * 1000)
        if ms <= self.last_ms:  # strictly increasing per charger: distinct samples
            ms = self.last_ms + 1
        self.last_ms = ms
        return local_time(ms)

    def _expect(self, m: RealtimeData) -> tuple[int, int]:
        """(meter samples, status events) the gateway stores for this 0x13
        (the samples in one ``meter_readings`` row)."""
        key = (m.status, m.fault_code)
        changed = self.last_status.get(m.gun) != key
        self.last_status[m.gun] = key
        return 4 + (m.soc is not None), int(changed)

    def _realtime(self, gun: int) -> RealtimeData:
        dc = self.kind == "DC"
        if gun == 1:
            self.energy_wh += 17
            return RealtimeData(
                pile=self.pile,
                gun=1,
                status=GunStatus.CHARGING,
                serial=self.serial,
                voltage_dv=4000 if dc else 2300,
                current_da=1500 if dc else 318,
                power_w=60_000 if dc else 7_300,
                meter_wh=self.energy_wh,
                session_energy_wh=self.energy_wh % 100_000,
                soc=(self.energy_wh // 100) % 100 if dc else None,
                fault_code=0,
                sample_time=self._sample_time(),
            )
        self.g2_step += 1
        return RealtimeData(
            pile=self.pile,
            gun=2,
            status=STATUS_TOGGLE[self.g2_step % 2],
            serial=None,
            voltage_dv=4000 if dc else 2300,
            current_da=0,
            power_w=0,
            meter_wh=self.g2_meter_wh,
            session_energy_wh=0,
            soc=None,
            fault_code=0,
            sample_time=self._sample_time(),
        )

    def send_cycle(self) -> None:
        if self.stopping or self.closed:
            self.outstanding = False
            if not self.idle.done():
                self.idle.set_result(None)
            return
        stats = self.stats
        charging = self._realtime(1)
        status = self._realtime(2)
        samples_c, ev_c = self._expect(charging)
        samples_s, ev_s = self._expect(status)
        self.cycle_rows = (samples_c + samples_s, ev_c + ev_s)
        self.outstanding = True
        self.sent_at = time.perf_counter()
        self._write(self._frame(charging))
        self._write(self._frame(status))
        hb = self._frame(Heartbeat(self.pile, PileState.NORMAL))
        self.hb_seq = hb[2:4]
        self._write(hb)
        stats.sent["RealtimeCharging"] += 1
        stats.sent["RealtimeStatus"] += 1
        stats.sent["Heartbeat"] += 1

    def _on_frame(self, seq_bytes: bytes, m: Message) -> None:
        stats = self.stats
        if isinstance(m, HeartbeatAck):
            if not self.outstanding or seq_bytes != self.hb_seq:
                stats.protocol_errors["unexpected_heartbeat_ack"] += 1
                return
            now = time.perf_counter()
            self.outstanding = False
            for kind in FRAMES:
                stats.confirmed[kind] += 1
            meter_samples, status_events = self.cycle_rows
            stats.rows_expected["meter_samples"] += meter_samples
            stats.rows_expected["gun_status_events"] += status_events
            if stats.phase == "measure":
                stats.cycles_in_window += 1
                stats.latencies.append(now - self.sent_at)
            self.send_cycle()
            return
        if isinstance(m, LoginReply):
            if seq_bytes != self.login_seq:
                stats.protocol_errors["unexpected_login_reply"] += 1
                return
            if m.result == LoginResult.ACCEPTED:
                stats.logins["accepted"] += 1
                self.logged_in = True
                self._ready()  # the load starts once every charger has logged in
            else:
                stats.logins[f"rejected:{m.reason.name.lower()}"] += 1
                if self.transport is not None:
                    self.transport.close()
            return
        stats.server_requests[type(m).__name__] += 1
        reply = self._answer(m)
        if reply is None:
            stats.protocol_errors[f"unexpected:{type(m).__name__}"] += 1
            return
        self._write(encode_reply_message(seq_bytes, reply))

    def _answer(self, m: Message) -> Message | None:
        """What the gateway asks, answered like ``simulators/cbp.py`` does."""
        if isinstance(m, TimeSync):
            return TimeSyncReply(self.pile, m.time)
        if isinstance(m, WhitelistVersionQuery):
            return WhitelistVersionReply(self.pile, 0, 0, 1000)
        if isinstance(m, WhitelistUpdate):
            return WhitelistUpdateReply(
                self.pile, m.version, m.part, WhitelistUpdateResult.ACCEPTED
            )
        if isinstance(m, ReadRealtime) and m.gun in (1, 2):
            # Stored too (context Trigger): counted with the cycle's rows if it
            # comes while a cycle is out, else right away (it is handled in order).
            data = self._realtime(m.gun)
            samples, events = self._expect(data)
            self.stats.rows_expected["meter_samples"] += samples
            self.stats.rows_expected["gun_status_events"] += events
            return data
        if isinstance(m, Reboot):
            return RebootReply(self.pile, RebootResult.REJECTED)
        if isinstance(m, FirmwareUpdate):
            return FirmwareUpdateReply(
                self.pile, m.task_id, FirmwareUpdateResult.REJECTED_UNSUPPORTED
            )
        if isinstance(m, RemoteStart):
            return RemoteStartReply(
                self.pile, m.gun, RemoteStartResult.REJECTED, RemoteStartRejectReason.GUN_BUSY
            )
        if isinstance(m, RemoteStop):
            return RemoteStopReply(
                self.pile, m.gun, RemoteStopResult.REJECTED, RemoteStopRejectReason.UNKNOWN_SERIAL
            )
        return None

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


async def run_cbp_mixed(args: argparse.Namespace) -> dict[str, Any]:
    stats = CbpStats()
    ids = cbp_pile_ids(args.chargers, args.kind, product=args.product)
    ready = 0
    all_ready = asyncio.Event()
    loop = asyncio.get_running_loop()

    def one_ready() -> None:
        nonlocal ready
        ready += 1
        if ready == len(ids):
            all_ready.set()

    chargers: list[CbpCharger] = []
    sem = asyncio.Semaphore(50)

    async def open_one(i: int, pid: str) -> None:
        async with sem:
            _, proto = await loop.create_connection(
                lambda: CbpCharger(pid, args.kind, stats, one_ready, i), args.host, args.port
            )
            assert isinstance(proto, CbpCharger)
            chargers.append(proto)
            await proto.connected

    t0 = time.perf_counter()
    await asyncio.wait_for(
        asyncio.gather(*(open_one(i, p) for i, p in enumerate(ids))), args.connect_timeout
    )
    try:
        await asyncio.wait_for(all_ready.wait(), args.connect_timeout)
    except TimeoutError as exc:
        raise TimeoutError(
            f"{ready}/{len(ids)} chargers logged in within {args.connect_timeout:g} s; "
            f"logins {dict(stats.logins)}"
        ) from exc
    login_s = time.perf_counter() - t0
    # the gateway's first request (0x56 time sync) follows each login: let it
    # pass before the load, as OCPP's boot does before scenario 1's load
    await asyncio.sleep(0.5)
    print(f"cbp: {len(chargers)} chargers connected and logged in in {login_s:.2f} s", flush=True)
    load_t0 = time.perf_counter()
    for c in chargers:
        c.send_cycle()

    window, cpu_me, cpu_srv, rss, threads = await measured_window(args, stats)
    for c in chargers:
        c.stopping = True
    load_s = time.perf_counter() - load_t0
    # cycles still in flight: wait for their 0x04 (bounded), then count the rest
    pending = [c.idle for c in chargers if c.outstanding and not c.closed]
    if pending:
        await asyncio.wait(pending, timeout=args.drain_timeout)
    unconfirmed = [c for c in chargers if c.outstanding]
    rows_unconfirmed: Counter[str] = Counter()
    for c in unconfirmed:
        rows_unconfirmed["meter_samples"] += c.cycle_rows[0]
        rows_unconfirmed["gun_status_events"] += c.cycle_rows[1]
    closed_before_end = stats.closed_links
    for c in chargers:
        c.close()
    await asyncio.sleep(0.5)

    lat = sorted(stats.latencies)
    frames = 3 * stats.cycles_in_window
    return {
        "mode": "cbp-mixed",
        "protocol": "cbp1",
        "kind": args.kind,
        "chargers": len(chargers),
        "warmup_s": args.warmup,
        "window_s": window,
        "login_s": login_s,
        "cycles": stats.cycles_in_window,
        "messages": frames,
        "msgs_per_s": frames / window if window > 0 else 0.0,
        "latency_ms": {k: v * 1000 for k, v in distribution(lat).items() if k != "count"},
        "load_s": load_s,
        # frames the gateway confirmed (their cycle's 0x04 arrived), whole run
        "answered_total": dict(stats.confirmed),
        "sent_total": dict(stats.sent),
        "errors": {},  # CBP/1 has no CALLERROR; protocol_errors below
        "logins": dict(stats.logins),
        "server_calls": dict(stats.server_requests),
        "unanswered_at_end": len(unconfirmed),
        "links_closed_by_server": closed_before_end,
        "protocol_errors": dict(stats.protocol_errors),
        "rows_expected": dict(stats.rows_expected),
        "rows_unconfirmed": dict(rows_unconfirmed),
        "loadgen_cpu_pct": 100 * cpu_me / window if window > 0 else None,
        "server_cpu_pct": 100 * cpu_srv / window if cpu_srv is not None and window > 0 else None,
        "server_rss_kib": rss,
        "server_threads_pct": threads,
    }


def print_human(r: dict[str, Any]) -> None:
    lat = r["latency_ms"]
    print(
        f"cbp-mixed: {r['chargers']} {r['kind']} chargers, {r['window_s']:.1f} s window: "
        f"{r['msgs_per_s']:.0f} frames/s ({r['cycles']} cycles); cycle latency ms "
        f"p50 {lat['p50']:.2f} p95 {lat['p95']:.2f} p99 {lat['p99']:.2f} max {lat['max']:.2f}; "
        f"unconfirmed cycles {r['unanswered_at_end']}, links closed by server "
        f"{r['links_closed_by_server']}, protocol errors {r['protocol_errors'] or 'none'}; "
        f"rows expected {r['rows_expected']}; loadgen CPU {r['loadgen_cpu_pct']:.0f}%"
        + (f", server CPU {r['server_cpu_pct']:.0f}%" if r["server_cpu_pct"] is not None else "")
        + threads_text(r.get("server_threads_pct"), "; ")
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9010, help="the gateway's CBP/1 port")
    p.add_argument("--chargers", type=int, default=100)
    p.add_argument("--kind", choices=("DC", "AC"), default="DC", help="pile kind (DC: SoC)")
    p.add_argument(
        "--product", type=int, default=0, choices=(0, 1), help="product code of the pile IDs"
    )
    p.add_argument("--duration", type=float, default=30.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds before measuring")
    p.add_argument("--drain-timeout", type=float, default=10.0)
    p.add_argument("--connect-timeout", type=float, default=120.0)
    p.add_argument("--server-pid", type=int, help="read this process's CPU time and VmRSS")
    p.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    raise_nofile(max(args.chargers + 1000, 4096))
    try:
        result = asyncio.run(run_cbp_mixed(args))
    except (OSError, TimeoutError) as exc:
        print(f"cbp_loadgen: failed: {exc!r}", file=sys.stderr)
        result = {"mode": "cbp-mixed", "failed": repr(exc)}
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
