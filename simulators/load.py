"""Load mode: many simulated chargers against any OCPP 1.6J server.

Only standard OCPP 1.6J messages are sent (BootNotification, Heartbeat,
StatusNotification, StartTransaction, MeterValues, StopTransaction), so it
measures any central system. Each charger is one task (its driver loop) and
a few kilobytes of model state; all chargers share one :class:`Stats`.

A charging charger runs the model's autopilot in free-vend mode: plug in
(which starts a charge with the idTag ``LOADTEST``, no authorization, so it
works whatever the server knows or pushes to local lists), charge, stop,
unplug, idle, again.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

import pileid
from pileid import Kind

from .config import Autopilot, ChargerConfig
from .driver import SimulatedCharger
from .stats import LatencyHistogram, Stats

DEFAULT_REGION = "440308"
DEFAULT_OPERATOR = "0099"


@dataclass(frozen=True, slots=True)
class LoadOptions:
    url: str
    count: int
    ramp: float  # chargers started per second
    duration: float  # seconds from the first connect to the end
    charging_share: float = 0.2
    kind: Literal["AC", "DC"] = "AC"
    id_format: str | None = None  # e.g. "CP{n:05d}"; default: valid 20-digit pile IDs
    first_serial: int = 1
    region: str = DEFAULT_REGION
    operator: str = DEFAULT_OPERATOR
    meter_interval: float = 10.0
    charge_seconds: float = 60.0
    idle_seconds: float = 20.0
    heartbeat_interval: float | None = None  # None: the server's
    call_timeout: float = 30.0
    report_every: float = 1.0
    password: str | None = None
    protocol: Literal["ocpp1.6", "cbp1"] = "ocpp1.6"

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError("count must be at least 1")
        if self.ramp <= 0:
            raise ValueError("ramp must be > 0 chargers per second")
        if self.duration <= 0:
            raise ValueError("duration must be > 0 seconds")
        if not 0 <= self.charging_share <= 1:
            raise ValueError("charging share must be between 0 and 1")
        if self.id_format is None and self.first_serial + self.count - 1 > 99999:
            raise ValueError(
                "at most 99999 pile IDs per region/operator/kind; use --first-serial, "
                "--operator or --id-format"
            )

    def pile_id(self, n: int) -> str:
        if self.id_format is not None:
            return self.id_format.format(n=n)
        kind = Kind.AC if self.kind == "AC" else Kind.DC
        return pileid.build_pile_id(self.region, self.operator, kind, self.first_serial + n).text


@dataclass(slots=True)
class LoadReport:
    count: int
    seconds: float
    stats: Stats
    connected_max: int
    connected_end: int
    chargers_connected_once: int
    charging: int
    rss_mb: float
    lines: list[str] = field(default_factory=list)

    @property
    def messages(self) -> int:
        return self.stats.frames_in + self.stats.frames_out

    def percentiles(self, hist: LatencyHistogram | None = None) -> dict[str, float | None]:
        h = hist or self.stats.latency
        return {f"p{p}": h.percentile(p) for p in (50, 95, 99)} | {
            "max": h.max if h.total else None
        }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}ms"


def _raise_fd_limit(needed: int) -> str | None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return None
    target = hard if hard != resource.RLIM_INFINITY else needed
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(target, max(needed, soft)), hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft < needed:
        return (
            f"open-file limit is {soft}, {needed} needed for {needed - 100} chargers "
            "(raise it with ulimit -n)"
        )
    return None


def _rss_mb() -> float:
    # ru_maxrss is KiB on Linux, bytes on macOS.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def charger_config(opts: LoadOptions, n: int, charging: bool) -> ChargerConfig:
    power = 7.0 if opts.kind == "AC" else 60.0
    return ChargerConfig(
        pile_id=opts.pile_id(n),
        protocol=opts.protocol,
        kind=opts.kind,
        power_kw=power,
        vendor="PILESIM",
        model=f"LOAD-{opts.kind}",
        firmware_version="LOAD_1.0.0",
        meter_interval=opts.meter_interval,
        heartbeat_interval=opts.heartbeat_interval or 60.0,
        force_heartbeat_interval=opts.heartbeat_interval,
        call_timeout=opts.call_timeout,
        reconnect_delay=1.0,
        reconnect_delay_max=30.0,
        # Free vend: a plug-in starts the charge, whatever lists the server
        # manages, and it runs whatever the server answers.
        free_vend_id_tag="LOADTEST" if charging else None,
        stop_transaction_on_invalid_id=False,
        password=opts.password,
        autopilot=Autopilot(
            charge_seconds=opts.charge_seconds,
            idle_seconds=opts.idle_seconds,
            first_delay=1.0,
        )
        if charging
        else None,
    )


async def run_load(opts: LoadOptions, out: Callable[[str], None] = print) -> LoadReport:
    """Run the load, printing a progress line every ``report_every`` seconds;
    returns the final figures."""
    warning = _raise_fd_limit(opts.count + 100)
    if warning:
        out(f"warning: {warning}")
    stats = Stats()
    share = opts.charging_share
    drivers: list[SimulatedCharger] = []
    charging = 0
    for n in range(opts.count):
        is_charging = int((n + 1) * share) > int(n * share)
        charging += is_charging
        d = SimulatedCharger(
            charger_config(opts, n, is_charging),
            opts.url,
            stats=stats,
            trace=False,
            open_timeout=30,
        )
        drivers.append(d)
    label = " (CBP/1)" if opts.protocol == "cbp1" else ""
    return await drive(opts, out, drivers, stats, charging, lambda d: d.model.online, label)


class LoadUnit(Protocol):
    """A simulated charger as load mode drives it (any protocol)."""

    def start(self) -> object: ...

    async def close(self, timeout: float = ...) -> None: ...


U = TypeVar("U", bound=LoadUnit)


async def drive(
    opts: LoadOptions,
    out: Callable[[str], None],
    units: list[U],
    stats: Stats,
    charging: int,
    is_online: Callable[[U], bool],
    label: str,
) -> LoadReport:
    """Ramp the chargers up, print a progress line every ``report_every``
    seconds, stop after ``duration``, close them and return the figures.
    Shared by the OCPP and CBP/1 load modes."""
    out(
        f"load: {opts.count} chargers ({charging} charging) at {opts.ramp:g}/s for "
        f"{opts.duration:g} s against {opts.url}{label}"
    )
    t0 = time.monotonic()
    end = t0 + opts.duration
    connected_max = 0
    ever: set[int] = set()
    last_frames = 0
    last_counts = list(stats.latency.counts)
    last_t = t0
    report = LoadReport(opts.count, 0.0, stats, 0, 0, 0, charging, 0.0)

    def tick(final: bool = False) -> None:
        nonlocal connected_max, last_frames, last_counts, last_t
        now = time.monotonic()
        online = 0
        for i, u in enumerate(units):
            if is_online(u):
                online += 1
                ever.add(i)
        connected_max = max(connected_max, online)
        report.connected_end = online
        frames = stats.frames_in + stats.frames_out
        rate = (frames - last_frames) / max(1e-9, now - last_t)
        window = LatencyHistogram()
        window.counts = [a - b for a, b in zip(stats.latency.counts, last_counts, strict=True)]
        window.total = sum(window.counts)
        window.max = stats.latency.max
        last_frames, last_counts, last_t = frames, list(stats.latency.counts), now
        if not final:
            out(
                f"t={now - t0:6.1f}s  online {online:>6}/{opts.count}  "
                f"connects {stats.connects} failed {stats.connect_failures}  "
                f"msgs/s {rate:8.0f}  p50 {_ms(window.percentile(50))} "
                f"p95 {_ms(window.percentile(95))} p99 {_ms(window.percentile(99))}  "
                f"errors {stats.error_count}"
            )

    async def ramp() -> None:
        for n, u in enumerate(units):
            target = t0 + n / opts.ramp
            delay = target - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if time.monotonic() >= end:
                return
            u.start()

    ramp_task = asyncio.create_task(ramp())
    try:
        next_report = t0 + opts.report_every
        while True:
            now = time.monotonic()
            if now >= end:
                break
            await asyncio.sleep(max(0.0, min(next_report, end) - now))
            if time.monotonic() >= next_report:
                tick()
                next_report += opts.report_every
    finally:
        ramp_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ramp_task
        tick(final=True)
        report.seconds = time.monotonic() - t0
        report.connected_max = connected_max
        report.chargers_connected_once = len(ever)
        report.rss_mb = _rss_mb()
        await asyncio.gather(*(u.close(timeout=5) for u in units), return_exceptions=True)
    report.lines = summary(report)
    for line in report.lines:
        out(line)
    return report


def summary(r: LoadReport) -> list[str]:
    s = r.stats
    p = r.percentiles()
    lines = [
        f"chargers: {r.count} ({r.charging} charging), online at the end {r.connected_end}, "
        f"max online {r.connected_max}, connected at least once {r.chargers_connected_once}",
        f"connects: {s.connects} ok, {s.connect_failures} failed; disconnects {s.disconnects}",
        f"messages: {r.messages} in {r.seconds:.1f} s ({r.messages / max(r.seconds, 1e-9):.0f}/s;"
        f" {s.frames_out} sent, {s.frames_in} received; {s.calls_sent} CALLs, "
        f"{s.call_results} answered, {s.call_timeouts} timed out)",
        f"latency (CALL to answer): p50 {_ms(p['p50'])}  p95 {_ms(p['p95'])}  "
        f"p99 {_ms(p['p99'])}  max {_ms(p['max'])}",
    ]
    for action in sorted(s.latency_by_action):
        h = s.latency_by_action[action]
        lines.append(
            f"  {action:<27} n={h.total:<8} p50 {_ms(h.percentile(50))}  "
            f"p95 {_ms(h.percentile(95))}  p99 {_ms(h.percentile(99))}"
        )
    errors = ", ".join(f"{k} {v}" for k, v in s.errors.most_common()) or "none"
    lines.append(f"errors: {s.error_count} ({errors})")
    lines.append(
        f"load process peak RSS: {r.rss_mb:.0f} MB "
        f"({r.rss_mb * 1024 / max(r.count, 1):.0f} KiB per charger, all included)"
    )
    return lines


def report_dict(r: LoadReport) -> dict[str, Any]:
    """Machine-readable figures (``--json``)."""
    s = r.stats
    return {
        "count": r.count,
        "charging": r.charging,
        "seconds": round(r.seconds, 3),
        "online_end": r.connected_end,
        "online_max": r.connected_max,
        "connected_once": r.chargers_connected_once,
        "connects": s.connects,
        "connect_failures": s.connect_failures,
        "disconnects": s.disconnects,
        "messages": r.messages,
        "messages_per_second": round(r.messages / max(r.seconds, 1e-9), 1),
        "calls": s.calls_sent,
        "answers": s.call_results,
        "timeouts": s.call_timeouts,
        "latency_seconds": r.percentiles(),
        "latency_by_action": {
            a: r.percentiles(h) | {"n": h.total} for a, h in s.latency_by_action.items()
        },
        "errors": dict(s.errors),
        "rss_mb": round(r.rss_mb, 1),
    }
