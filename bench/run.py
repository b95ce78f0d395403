"""The one command of issue 9: pilegate against the ``ocpp`` package, same run, same machine.

    .venv/bin/python bench/run.py            # every scenario, full sizes
    .venv/bin/python bench/run.py --quick    # short smoke run (small sizes)
    .venv/bin/python bench/run.py --scenarios 1 --duration 60 --profile

The server under test runs on CPU 0, the load generator (``bench/loadgen.py``,
a separate process) on CPU 1 (``taskset``); PostgreSQL, when used, is the
machine's own server and is not pinned. Scenarios:

1. throughput and latency under the mixed load (1/3 Heartbeat, 1/3
   MeterValues with 4 sampled values, 1/3 StatusNotification, back to back
   from N chargers), validation and persistence on: pilegate on SQLite, on
   PostgreSQL, and the reference server (``bench/reference_server.py``).
   For pilegate, the write-behind backlog is followed on ``/metrics`` until it
   drains, the server is stopped, and the rows in the database are counted
   against the answers the chargers got (no message lost; meter data as the
   sampled values stored in ``meter_readings``, 4 per MeterValues).
2. reconnect storm and idle memory: C chargers connect and boot at once;
   VmRSS of the server before and after, per charger. pilegate is first run
   once to register the piles (first-connect storm), then restarted on the
   same database for the measured reconnect storm.
3. offline detection over K half-open piles (pilegate; the reference too, by
   the time its websockets keepalive closes the links).
4. firmware dispatch to 10,000 piles: run ``bench/firmware_dispatch.py``.
5. cloud-board throughput: scenario 1's load in CBP/1 (``bench/cbp_loadgen.py``,
   N two-gun piles on raw TCP, cycles of 0x13 charging + 0x13 status change +
   0x03 heartbeat, the next cycle when the 0x04 arrives) against pilegate on
   SQLite and on PostgreSQL, each next to pilegate's OCPP figures of scenario 1
   on the same database, charger count and duration (reused when scenario 1
   ran in the same command, else run here); backlog drained, gateway stopped,
   rows counted against the confirmed frames. The reference server (``ocpp``
   package) has no CBP/1.

The results (markdown) go to stdout and, with the JSON of every run and the
server logs, to ``bench/results/<timestamp>/``. Every run is bounded in time
and talks only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib.metadata
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PY = sys.executable
SERVER_CPU = 0
LOADGEN_CPU = 1
PG_DB = "pilegate_bench"

# issue 9: targets for pilegate, and the reference figures quoted there
TARGET_MSGS = 27_000
TARGET_P99_MS = 20.0
TARGET_KIB_PER_CHARGER = 16.0
TARGET_STORM_S = 5.0


def say(*parts: Any) -> None:
    print("[bench]", *parts, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------
# processes
# ----------------------------------------------------------------------------


def pinned(cmd: list[str], cpu: int) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) > cpu:
        return ["taskset", "-c", str(cpu), *cmd]
    return cmd


def raise_nofile(wanted: int = 65536) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    try:  # root may raise the hard limit too; children inherit both
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(wanted, hard)))
        return wanted
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} during startup")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"server did not listen on {port} within {timeout:g} s")


def http_text(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        body: bytes = resp.read()
        return body.decode()


@dataclass
class Server:
    name: str
    kind: str  # pilegate | reference | bare
    db_url: str | None
    log: Path
    env_extra: dict[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ()  # extra command-line arguments (bare: --uvloop)
    ocpp_port: int = 0
    api_port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    stop_seconds: float | None = None
    exit_code: int | None = None
    killed: bool = False
    stop_timeout: float = 90.0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def prefix(self) -> str:
        return "/ocpp" if self.kind == "pilegate" else ""

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start(self) -> None:
        self.ocpp_port = free_port()
        env = dict(os.environ)
        env.update(SERVER_ENV)
        if self.kind == "pilegate":
            self.api_port = free_port()
            env.update(
                PILEGATE_DEV="true",
                PILEGATE_DATABASE_URL=self.db_url or "",
                PILEGATE_OCPP_HOST="127.0.0.1",
                PILEGATE_OCPP_PORT=str(self.ocpp_port),
                PILEGATE_API_HOST="127.0.0.1",
                PILEGATE_API_PORT=str(self.api_port),
                PILEGATE_LOG_LEVEL="warning",
                PILEGATE_LOG_FORMAT="json",
                PILEGATE_NODE_ID="bench",
            )
            env.update(self.env_extra)
            cmd = [PY, "-m", "gateway", "serve"]
        else:
            script = "bare_server.py" if self.kind == "bare" else "reference_server.py"
            cmd = [PY, str(BENCH / script), "--port", str(self.ocpp_port), *self.args]
        with open(self.log, "ab") as log:
            log.write(f"--- start {datetime.now(UTC).isoformat()} {self.env_extra}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                pinned(cmd, SERVER_CPU),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                # `python -m` puts the working directory first on sys.path
                cwd=SERVER_ENV.get("PYTHONPATH", ROOT),
            )
        OURS.add(self.proc.pid)
        wait_port(self.ocpp_port, self.proc)
        if self.kind == "pilegate":
            deadline = time.monotonic() + 30
            while True:
                try:
                    http_text(f"{self.api}/healthz")
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
        time.sleep(0.5)  # let start-up work settle before RSS / CPU readings

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.killed = False
        try:
            self.exit_code = self.proc.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            say(f"{self.name}: no exit {self.stop_timeout:g} s after SIGTERM; killing")
            self.killed = True
            self.proc.kill()
            self.exit_code = self.proc.wait(10)
        self.stop_seconds = time.monotonic() - t0

    def queue_depth(self) -> float | None:
        if self.kind != "pilegate":
            return None
        try:
            text = http_text(f"{self.api}/metrics")
        except OSError:
            return None
        m = re.search(r"^pilegate_storage_queue_depth(?:\{[^}]*\})? ([0-9.e+]+)$", text, re.M)
        return float(m.group(1)) if m else None


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    server.start()
    try:
        yield server
    finally:
        server.stop()


class DepthPoller:
    """Samples pilegate's write-behind queue depth once a second in a thread."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> DepthPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.wait(1.0):
            d = self.server.queue_depth()
            if d is not None:
                self.samples.append((time.monotonic() - t0, d))

    @property
    def max_depth(self) -> float:
        return max((d for _, d in self.samples), default=0.0)


def wait_drained(server: Server, timeout: float) -> tuple[float | None, float | None]:
    """(depth when called, seconds until the write-behind queue is empty or None)."""
    first = server.queue_depth()
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        d = server.queue_depth()
        if d is not None and d == 0:
            return first, time.monotonic() - t0
        time.sleep(0.25)
    return first, None


# ----------------------------------------------------------------------------
# other load on the machine (a shared machine: other people's tests and servers)
# ----------------------------------------------------------------------------

SERVER_ENV: dict[str, str] = {}  # PYTHONPATH of the HEAD snapshot, when used
OURS: set[int] = {os.getpid()}  # run.py, the servers, load generators, py-spy


def _cpu_busy() -> tuple[float, float]:
    """(busy, total) jiffies over all CPUs from /proc/stat."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:9]]
    idle = parts[3] + parts[4]
    return float(sum(parts) - idle), float(sum(parts))


def _procs() -> dict[int, tuple[float, str]]:
    """CPU seconds and command of every process."""
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[int, tuple[float, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        out[int(entry)] = ((int(fields[11]) + int(fields[12])) / ticks, cmd[:90])
    return out


def _ours(pid: int, cmd: str) -> bool:
    return pid in OURS or PG_DB in cmd  # PostgreSQL backends of the bench database


def _reaped_children_cpu() -> float:
    """CPU seconds of this process's children that have ended and been waited for."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


class LoadWatch:
    """CPU used on the machine while a measurement runs, split into ours and others'.

    A child of ours that ends inside the window (the load generator) is gone
    from /proc when the window closes: its CPU is taken from this process's
    children's rusage instead. Until 2026-12-06 it was not, and "others"
    included the load generator's CPU (docs/benchmarks.md)."""

    def __enter__(self) -> LoadWatch:
        self.t0 = time.monotonic()
        self.busy0 = _cpu_busy()
        self.procs0 = _procs()
        self.reaped0 = _reaped_children_cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        elapsed = time.monotonic() - self.t0
        busy1 = _cpu_busy()
        procs1 = _procs()
        cores = os.cpu_count() or 1
        busy = (busy1[0] - self.busy0[0]) / max(1.0, busy1[1] - self.busy0[1]) * 100 * cores
        ours = _reaped_children_cpu() - self.reaped0
        others: dict[str, float] = {}
        for pid, (cpu, cmd) in procs1.items():
            used = cpu - self.procs0.get(pid, (0.0, ""))[0]
            if used <= 0:
                continue
            if _ours(pid, cmd):
                ours += used
            else:
                key = cmd or f"pid {pid}"
                others[key] = others.get(key, 0.0) + used
        ours_pct = 100 * ours / elapsed if elapsed > 0 else 0.0
        self.result: dict[str, Any] = {
            "seconds": elapsed,
            "busy_pct": busy,  # 100 = one core
            "ours_pct": ours_pct,
            "others_pct": max(0.0, busy - ours_pct),
            "top_others": [
                (c, 100 * v / elapsed) for c, v in sorted(others.items(), key=lambda kv: -kv[1])[:4]
            ],
        }


def wait_quiet(threshold: float, max_wait: float) -> dict[str, Any]:
    """Wait (bounded) until other processes use less than ``threshold`` % of a core."""
    t0 = time.monotonic()
    while True:
        with LoadWatch() as w:
            time.sleep(2.0)
        r = w.result
        if r["others_pct"] < threshold or time.monotonic() - t0 >= max_wait:
            r["waited_s"] = time.monotonic() - t0
            if r["others_pct"] >= threshold:
                say(
                    f"machine still busy after {max_wait:g} s: others use "
                    f"{r['others_pct']:.0f} % of a core ({r['top_others'][:2]}); going on"
                )
            return r
        say(
            f"machine busy: others use {r['others_pct']:.0f} % of a core "
            f"({[c for c, _ in r['top_others'][:2]]}); waiting"
        )
        time.sleep(5.0)


def loadgen(
    args: list[str], out: Path, timeout: float, script: str = "loadgen.py"
) -> dict[str, Any]:
    cmd = pinned([PY, str(BENCH / script), *args, "--json", str(out)], LOADGEN_CPU)
    say(script.removesuffix(".py"), " ".join(args))
    with LoadWatch() as watch:
        proc = subprocess.Popen(cmd, stdout=sys.stderr, stderr=sys.stderr)
        OURS.add(proc.pid)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return {"failed": f"loadgen did not finish within {timeout:g} s"}
    try:
        result: dict[str, Any] = json.loads(out.read_text())
    except (OSError, ValueError) as exc:
        return {"failed": f"no result from loadgen: {exc}"}
    result["machine_load"] = watch.result
    return result


def log_events(path: Path, since: int = 0) -> Counter[str]:
    """Warning/error events in a server log (JSON lines for pilegate)."""
    counts: Counter[str] = Counter()
    try:
        lines = path.read_text(errors="replace").splitlines()[since:]
    except OSError:
        return counts
    for line in lines:
        if line.startswith("--- start"):
            continue
        try:
            rec = json.loads(line)
            counts[f"{rec.get('level', '?')}: {rec.get('event', '?')}"] += 1
        except ValueError:
            if "Traceback" in line or "ERROR" in line or "WARNING" in line:
                counts[line.strip()[:120]] += 1
    return counts


def log_len(path: Path) -> int:
    try:
        return len(path.read_text(errors="replace").splitlines())
    except OSError:
        return 0


# ----------------------------------------------------------------------------
# databases
# ----------------------------------------------------------------------------


def add_pg_admin_url(parser: argparse.ArgumentParser, *, skippable: bool = True) -> None:
    """``--pg-admin-url``, the same in every bench script that uses PostgreSQL."""
    parser.add_argument(
        "--pg-admin-url",
        default=os.environ.get(
            "PILEGATE_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"
        ),
        help="an existing database to CREATE/DROP the bench databases from"
        + (" ('' skips PostgreSQL)" if skippable else ""),
    )


async def _pg(admin_url: str, *statements: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_url)
    try:
        for st in statements:
            await conn.execute(st)
    finally:
        await conn.close()


def pg_recreate(admin_url: str) -> None:
    asyncio.run(
        _pg(admin_url, f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)", f"CREATE DATABASE {PG_DB}")
    )


def pg_drop(admin_url: str) -> None:
    asyncio.run(_pg(admin_url, f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)"))


# ``meter_samples``: the sampled values stored, one ``meter_readings`` row
# per OCPP MeterValue element holding its sampledValue list as JSON text
# (migration 0008; one ``meter_values`` row per sampled value before).
# json_array_length: SQLite >= 3.9 (JSON1), PostgreSQL on ``json``.
METER_SAMPLES_SQL = "SELECT coalesce(sum(json_array_length({})), 0) FROM meter_readings"
COUNT_SQL = {
    "meter_samples": METER_SAMPLES_SQL.format("samples"),
    "gun_status_events": "SELECT count(*) FROM gun_status_events",
    "presence_events": "SELECT count(*) FROM presence_events",
}
PG_COUNT_SQL = {**COUNT_SQL, "meter_samples": METER_SAMPLES_SQL.format("samples::json")}


def count_rows(db_url: str) -> dict[str, int]:
    """The stored rows the scenarios check (``meter_samples``: sampled values)."""
    if db_url.startswith("sqlite"):
        path = db_url.split(":///", 1)[1]
        con = sqlite3.connect(path)
        try:
            return {k: int(con.execute(q).fetchone()[0]) for k, q in COUNT_SQL.items()}
        finally:
            con.close()

    async def pg() -> dict[str, int]:
        import asyncpg

        conn = await asyncpg.connect(db_url.replace("postgresql+asyncpg", "postgresql"))
        try:
            return {k: int(await conn.fetchval(q)) for k, q in PG_COUNT_SQL.items()}
        finally:
            await conn.close()

    return asyncio.run(pg())


def pg_version(admin_url: str) -> str | None:
    async def q() -> str:
        import asyncpg

        conn = await asyncpg.connect(admin_url)
        try:
            return str(await conn.fetchval("SHOW server_version"))
        finally:
            await conn.close()

    try:
        return asyncio.run(q())
    except Exception as exc:  # report, do not fail the whole run
        return f"unreachable ({type(exc).__name__})"


# ----------------------------------------------------------------------------
# machine
# ----------------------------------------------------------------------------

PACKAGES = (
    "pilegate",
    "ocpp",
    "websockets",
    "orjson",
    "fastjsonschema",
    "jsonschema",
    "SQLAlchemy",
    "aiosqlite",
    "asyncpg",
    "uvloop",
    "py-spy",
)


def machine_info(pg_admin: str, with_pg: bool) -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = "not installed"

    def git(*cmd: str) -> str:
        try:
            done = subprocess.run(
                ["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False
            )
            return done.stdout.strip()
        except OSError:
            return "?"

    changed = git("status", "--porcelain", "--", "gateway", "protocol", "sessions", "pileid")
    # (reported: with --source worktree they are part of what was measured)
    return {
        "commit": git("rev-parse", "--short", "HEAD") or "?",
        "commit_full": git("rev-parse", "HEAD") or "HEAD",
        "commit_subject": git("log", "-1", "--format=%s")[:100],
        "uncommitted_server_files": len(changed.splitlines()),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "postgresql": pg_version(pg_admin) if with_pg else "not used",
        "packages": versions,
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
    }


# ----------------------------------------------------------------------------
# scenarios
# ----------------------------------------------------------------------------


@dataclass
class Ctx:
    args: argparse.Namespace
    out: Path
    tmp: Path
    pg_admin: str
    pg_used: bool = False
    results: dict[str, Any] = field(default_factory=dict)

    def pilegate(self, name: str, db: str, **env: str) -> Server:
        if db == "sqlite":
            url = f"sqlite+aiosqlite:///{self.tmp / (name + '.db')}"
        else:
            self.pg_used = True
            pg_recreate(self.pg_admin)
            base = self.pg_admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
            url = f"{base}/{PG_DB}"
        # The CBP/1 listener on loopback and a free port unless a scenario
        # says otherwise: the bench talks only to 127.0.0.1, and a busy 9010
        # must not stop the gateway from starting.
        env = {"PILEGATE_CBP_HOST": "127.0.0.1", "PILEGATE_CBP_PORT": "0", **env}
        return Server(
            name,
            "pilegate",
            url,
            self.out / f"{name}.log",
            env_extra=env,
            stop_timeout=self.args.stop_timeout,
        )

    def reference(self, name: str) -> Server:
        return Server(
            name, "reference", None, self.out / f"{name}.log", stop_timeout=self.args.stop_timeout
        )

    def bare(self, name: str, target: str) -> Server:
        """``bare`` / ``bare-uvloop``: bench/bare_server.py, the issue's bare
        websockets baseline, measured in the same run."""
        return Server(
            name,
            "bare",
            None,
            self.out / f"{name}.log",
            args=("--uvloop",) if target.endswith("-uvloop") else (),
            stop_timeout=self.args.stop_timeout,
        )


def stopped(r: dict[str, Any], server: Server) -> None:
    r["server_stop_s"] = server.stop_seconds
    r["server_exit_code"] = server.exit_code
    r["server_killed"] = server.killed


def mixed_args(ctx: Ctx, server: Server) -> list[str]:
    a = ctx.args
    return [
        "mixed",
        "--port",
        str(server.ocpp_port),
        "--prefix",
        server.prefix,
        "--chargers",
        str(a.chargers),
        "--duration",
        str(a.duration),
        "--warmup",
        str(a.warmup),
        "--server-pid",
        str(server.pid),
    ]


PILEGATE_TARGETS = (
    "pilegate-sqlite",
    "pilegate-postgresql",
    "pilegate-sqlite-uvloop",
    "pilegate-postgresql-uvloop",
)
# The issue's bare websockets server (json, no validation, no persistence):
# about 23,000 msgs/s on the issue's machine, 42,000 with uvloop. Scenario 1
# only; it calibrates a run on another machine (report_calibration).
BARE_TARGETS = ("bare", "bare-uvloop")
ISSUE_BARE_MSGS = {"bare": 23_000, "bare-uvloop": 42_000}


def event_loop_of(target: str) -> str:
    """``pilegate-...-uvloop`` targets run the gateway with ``event_loop =
    uvloop``; the others with its default (asyncio), so one run measures
    what uvloop brings."""
    return "uvloop" if target.endswith("-uvloop") else "asyncio"


def pilegate_target(ctx: Ctx, name: str, target: str) -> Server:
    """``pilegate-{sqlite,postgresql}[-uvloop]``."""
    db = "postgresql" if target.startswith("pilegate-postgresql") else "sqlite"
    return ctx.pilegate(name, db, PILEGATE_EVENT_LOOP=event_loop_of(target))


def scenario_mixed(ctx: Ctx, target: str, name: str = "") -> dict[str, Any]:
    """Scenario 1 against ``target``; ``name`` (its result key, one per
    repeat) names its log, JSON and SQLite files: each repeat starts on a
    fresh database ("#" would end a database URL's path)."""
    a = ctx.args
    name = (name or f"s1-{target}").replace("#", "-r")
    if target == "reference":
        server = ctx.reference(name)
    elif target in BARE_TARGETS:
        server = ctx.bare(name, target)
    else:
        server = pilegate_target(ctx, name, target)
    budget = a.duration + a.warmup + 120
    with running(server):
        with DepthPoller(server) as poller:
            r = loadgen(mixed_args(ctx, server), ctx.out / f"{name}.json", budget)
        if server.kind == "pilegate" and "failed" not in r:
            at_end, drain = wait_drained(server, a.drain_timeout)
            r["write_backlog_at_end"] = at_end
            r["write_backlog_max"] = poller.max_depth
            r["write_drain_s"] = drain
            if drain is not None:
                total = sum(r.get("answered_total", {}).values())
                r["sustained_msgs_per_s"] = total / (r["load_s"] + drain)
            r["write_depth_samples"] = poller.samples
    stopped(r, server)
    r["log_events"] = dict(log_events(server.log))
    if server.kind == "pilegate" and server.db_url and "failed" not in r:
        try:
            rows = count_rows(server.db_url)
        except Exception as exc:
            rows = {"error": repr(exc)}  # type: ignore[dict-item]
        answered = r.get("answered_total", {})
        r["rows"] = rows
        r["rows_expected"] = {
            "meter_samples": 4 * answered.get("MeterValues", 0),
            "gun_status_events": answered.get("StatusNotification", 0),
        }
    return r


def scenario_profile(ctx: Ctx) -> dict[str, Any]:
    """pilegate (``--profile-target``) under the mixed load with py-spy attached (CPU 1)."""
    a = ctx.args
    pyspy = shutil.which("py-spy") or str(Path(PY).with_name("py-spy"))
    if not Path(pyspy).exists():
        return {"failed": "py-spy is not installed (pip install py-spy)"}
    name = f"profile-{a.profile_target}"
    server = pilegate_target(ctx, name, a.profile_target)
    raw = ctx.out / f"{name}.raw.txt"
    with running(server):
        args = mixed_args(ctx, server)
        cmd = pinned(
            [
                pyspy,
                "record",
                "--pid",
                str(server.pid),
                "--rate",
                "200",
                "--duration",
                str(int(a.duration)),
                "--format",
                "raw",
                "--nonblocking",
                "--output",
                str(raw),
            ],
            LOADGEN_CPU,
        )

        def delayed_spy() -> None:
            time.sleep(a.warmup + 1.5)  # connect + boot + warm-up
            spy_proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=sys.stderr)
            OURS.add(spy_proc.pid)
            spy_proc.wait()

        spy = threading.Thread(target=delayed_spy)
        spy.start()
        r = loadgen(args, ctx.out / f"{name}.json", a.duration + a.warmup + 120)
        spy.join(a.duration + 60)
        wait_drained(server, a.drain_timeout)
    r["profile"] = summarize_profile(raw, a.top)
    r["profile_raw"] = str(raw)
    return r


_FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^:()]*)(?::\d+)?\)$")


def _frame_name(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    file = m.group("file")
    for marker in ("site-packages/", "/lib/python3", str(ROOT) + "/"):
        if marker in file:
            file = file.split(marker, 1)[1]
    file = re.sub(r"^\.\d+/", "", file)
    return f"{m.group('fn')} ({file})"


# Where a sample's time is charged: the first category (in this order) any
# frame of its stack matches.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("SQLite worker thread (aiosqlite → sqlite3 C code)", ("_connection_worker_thread",)),
    # SQLAlchemy's async layer runs the ORM in greenlets whose stacks start at
    # Session.execute, without the WriteBehind frames above them; under the
    # mixed load (every charger connected before it starts) the write-behind
    # flush is the only database user, so these samples are the flush.
    (
        "write-behind flush: SQLAlchemy builds, compiles and runs each batch",
        (
            "WriteBehind._flush",
            "WriteBehind._write",
            "WriteBehind._presence",
            "sqlalchemy/",
            "asyncpg/",
        ),
    ),
    (
        "schema validation (fastjsonschema)",
        ("validate_request", "Validator.", "validate (<string>)"),
    ),
    ("OCPP-J decode / encode (protocol/ocpp)", ("protocol/ocpp/",)),
    ("handlers: building write ops (gateway/ocpp/handlers.py)", ("gateway/ocpp/handlers.py",)),
    ("Prometheus metrics", ("prometheus_client/",)),
    ("structlog", ("structlog/",)),
    ("websockets: framing, recv/send, protocol", ("websockets/",)),
    ("presence tracker", ("sessions/presence.py",)),
    ("receive loop, other (gateway/ocpp)", ("gateway/ocpp/",)),
    ("ops API (uvicorn, FastAPI)", ("uvicorn/", "fastapi/", "starlette/")),
    ("event loop and socket I/O (asyncio, selectors)", ("asyncio/", "selectors.py")),
)

# Frames every sample shares (the interpreter, asyncio.run, the CLI): left out
# of the inclusive table, which would otherwise start with ten 100 % rows.
_ROOT_FRAMES = re.compile(
    r"^(<module>|main|cmd_serve|run|_run_module_as_main|_run_code|Runner\.run|BaseEventLoop\.(run_forever|run_until_complete|"
    r"_run_once)|Thread\.(run|_bootstrap|_bootstrap_inner)) "
)


def summarize_profile(raw: Path, top: int) -> dict[str, Any]:
    """Self, inclusive and per-category shares from py-spy's collapsed stacks."""
    self_t: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    cats: Counter[str] = Counter()
    total = 0
    try:
        lines = raw.read_text().splitlines()
    except OSError as exc:
        return {"failed": f"no profile: {exc}"}
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame_name(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += n
        self_t[frames[-1]] += n
        for fn in set(frames):
            if not _ROOT_FRAMES.match(fn):
                incl[fn] += n
        joined = "\n".join(frames)
        for name, needles in CATEGORIES:
            if any(x in joined for x in needles):
                cats[name] += n
                break
        else:
            cats["other"] += n
    if not total:
        return {"failed": "empty profile"}
    return {
        "samples": total,
        "categories": [(c, 100 * n / total) for c, n in cats.most_common()],
        "self": [(fn, 100 * n / total) for fn, n in self_t.most_common(top)],
        "inclusive": [(fn, 100 * n / total) for fn, n in incl.most_common(top * 2)],
    }


def storm_args(ctx: Ctx, server: Server, chargers: int, **extra: Any) -> list[str]:
    a = ctx.args
    out = [
        "storm",
        "--port",
        str(server.ocpp_port),
        "--prefix",
        server.prefix,
        "--chargers",
        str(chargers),
        "--concurrency",
        str(a.storm_concurrency),
        "--connect-timeout",
        str(a.storm_timeout),
    ]
    for k, v in extra.items():
        out += [f"--{k.replace('_', '-')}", str(v)]
    return out


PILEGATE_STORM_ENV = {"PILEGATE_BOOT_RATE_LIMIT": "1000000"}


def scenario_storm(ctx: Ctx, target: str) -> dict[str, Any]:
    a = ctx.args
    n = a.storm
    budget = a.storm_timeout + 120
    if target == "reference":
        server = ctx.reference("s2-reference")
        with running(server):
            r = loadgen(
                storm_args(ctx, server, n, server_pid=server.pid, settle=a.settle, hold=a.hold),
                ctx.out / "s2-reference.json",
                budget,
            )
        stopped(r, server)
        r["log_events"] = dict(log_events(server.log))
        return r
    db = "postgresql" if target.startswith("pilegate-postgresql") else "sqlite"
    name = f"s2-{target}"
    server = ctx.pilegate(name, db, **PILEGATE_STORM_ENV, PILEGATE_EVENT_LOOP=event_loop_of(target))
    # 1: first connect of every pile (registers it), then stop the gateway
    with running(server):
        first = loadgen(
            storm_args(ctx, server, n, settle=0, hold=0), ctx.out / f"{name}-first.json", budget
        )
        drained = wait_drained(server, a.drain_timeout)
    first["write_drain_s"] = drained[1]
    stopped(first, server)
    mark = log_len(server.log)
    # 2: a fresh gateway on the same database; every pile reconnects at once
    with running(server):
        r = loadgen(
            storm_args(ctx, server, n, server_pid=server.pid, settle=a.settle, hold=a.hold),
            ctx.out / f"{name}.json",
            budget,
        )
        # the load generator dropped its links at the end of the hold: their
        # offline events join the backlog of boot data and online events
        at_end, drain = wait_drained(server, a.drain_timeout)
        r["write_backlog_after_hold"] = at_end
        r["write_drain_s"] = drain
    stopped(r, server)
    r["first_connect"] = first
    r["boot_rate_limit"] = PILEGATE_STORM_ENV["PILEGATE_BOOT_RATE_LIMIT"]
    r["log_events"] = dict(log_events(server.log, since=mark))
    r["log_events_first_connect"] = dict(log_events(server.log) - log_events(server.log, mark))
    return r


def scenario_halfopen(ctx: Ctx, target: str) -> dict[str, Any]:
    a = ctx.args
    budget = a.detect_timeout + 180
    if target == "reference":
        server = ctx.reference("s3-reference")
        extra: list[str] = []
    else:
        server = ctx.pilegate(
            "s3-pilegate",
            "sqlite",
            PILEGATE_PING_INTERVAL=str(a.ping_interval),
            PILEGATE_PONG_TIMEOUT=str(a.pong_timeout),
            **PILEGATE_STORM_ENV,
        )
        extra = []
    with running(server):
        args = [
            "halfopen",
            "--port",
            str(server.ocpp_port),
            "--prefix",
            server.prefix,
            "--chargers",
            str(a.halfopen),
            "--detect-timeout",
            str(a.detect_timeout),
            *extra,
        ]
        if server.kind == "pilegate":
            args += ["--api", server.api]
        r = loadgen(args, ctx.out / f"{server.name}.json", budget)
    stopped(r, server)
    r["log_events"] = dict(log_events(server.log))
    if server.kind == "pilegate":
        r["ping_interval"] = a.ping_interval
        r["pong_timeout"] = a.pong_timeout
    else:
        r["ping_interval"] = 20.0  # websockets' defaults, as in the ocpp README
        r["pong_timeout"] = 20.0
    return r


def scenario_cbp(ctx: Ctx, target: str) -> dict[str, Any]:
    """Scenario 5: scenario 1's load in CBP/1 (``bench/cbp_loadgen.py``) against pilegate."""
    a = ctx.args
    name = f"s5-cbp-{target}"
    cbp_port = free_port()
    server = ctx.pilegate(
        name,
        "postgresql" if target == "pilegate-postgresql" else "sqlite",
        PILEGATE_CBP_HOST="127.0.0.1",
        PILEGATE_CBP_PORT=str(cbp_port),
    )
    budget = a.duration + a.warmup + 120
    args = [
        "--port",
        str(cbp_port),
        "--chargers",
        str(a.chargers),
        "--kind",
        a.cbp_kind,
        "--duration",
        str(a.duration),
        "--warmup",
        str(a.warmup),
    ]
    with running(server):
        assert server.proc is not None
        wait_port(cbp_port, server.proc)
        with DepthPoller(server) as poller:
            r = loadgen(
                [*args, "--server-pid", str(server.pid)],
                ctx.out / f"{name}.json",
                budget,
                script="cbp_loadgen.py",
            )
        if "failed" not in r:
            at_end, drain = wait_drained(server, a.drain_timeout)
            r["write_backlog_at_end"] = at_end
            r["write_backlog_max"] = poller.max_depth
            r["write_drain_s"] = drain
            if drain is not None:
                r["sustained_msgs_per_s"] = sum(r["answered_total"].values()) / (
                    r["load_s"] + drain
                )
            r["write_depth_samples"] = poller.samples
    stopped(r, server)
    r["log_events"] = dict(log_events(server.log))
    if server.db_url and "failed" not in r:
        try:
            r["rows"] = count_rows(server.db_url)
        except Exception as exc:
            r["rows"] = {"error": repr(exc)}
    return r


def rows_check(r: dict[str, Any]) -> tuple[str, bool]:
    """'table got/expected ✔' per expected table, and whether nothing was lost.

    Rows of CBP/1 cycles still unconfirmed at the end may or may not be stored
    (``rows_unconfirmed``): then ``expected ≤ got ≤ expected + unconfirmed``."""
    exp: dict[str, int] = r.get("rows_expected", {})
    got: dict[str, Any] = r.get("rows", {})
    extra: dict[str, int] = r.get("rows_unconfirmed", {})
    parts = []
    ok = bool(exp)
    for k, e in exp.items():
        g = got.get(k)
        hit = isinstance(g, int) and e <= g <= e + extra.get(k, 0)
        ok = ok and hit
        more = f"(+≤{extra[k]:,})" if extra.get(k) else ""
        parts.append(f"{k} {_f(g, '{:,}', '?')}/{e:,}{more}" + (" ✔" if hit else " ✘"))
    return "; ".join(parts), ok


def rows_per_s(r: dict[str, Any]) -> float | None:
    """Rows of the expected tables stored per second, load and drain included
    (meter data counted as sampled values, ``meter_samples``)."""
    got: dict[str, Any] = r.get("rows", {})
    drain: float | None = r.get("write_drain_s")
    load_s: float | None = r.get("load_s")
    if drain is None or load_s is None:
        return None
    n = sum(v for k, v in got.items() if k in r.get("rows_expected", {}) and isinstance(v, int))
    return n / (load_s + drain)


# ----------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------


def _f(v: Any, fmt: str = "{:.1f}", none: str = "n/a") -> str:
    if v is None:
        return none
    if isinstance(v, float) and v != v:  # NaN
        return none
    try:
        return fmt.format(v)
    except (ValueError, TypeError):
        return str(v)


def _others(r: dict[str, Any]) -> str:
    ml = r.get("machine_load")
    return f"{ml['others_pct']:.0f} %" if ml else "n/a"


def _mib(kib: int | None) -> str:
    return "n/a" if kib is None else f"{kib / 1024:.0f} MiB"


def calibrated(msgs: float, bare_msgs: float, bare: str) -> tuple[float, float]:
    """pilegate's msgs/s against the bare baseline of the same run: the ratio,
    and that ratio times the issue's figure for the same baseline (what the
    run would be on the issue's machine if pilegate and the baseline slowed
    down alike). The issue's target, 27,000 msgs/s against its 23,000 for
    the bare server, is a ratio of 1.17."""
    if bare_msgs <= 0:
        raise ValueError(f"bare baseline answered {bare_msgs} msgs/s")
    ratio = msgs / bare_msgs
    return ratio, ratio * ISSUE_BARE_MSGS[bare]


def runs_of(R: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every run's results, without the medians that stand for repeats."""
    return [(k, r) for k, r in R.items() if isinstance(r, dict) and "median_of" not in r]


def s1_keys(target: str, repeat: int) -> list[str]:
    """The result keys of a scenario 1 target: one per repeat (``--repeat``)."""
    if repeat == 1:
        return [f"s1-{target}"]
    return [f"s1-{target}#{k}" for k in range(1, repeat + 1)]


def median_run(runs: list[dict[str, Any]], keys: list[str]) -> dict[str, Any]:
    """The repeat with the median msgs/s (the lower one of an even count),
    standing for its target where one figure is wanted; ``median_of`` names
    the repeats and keeps the report's per-run lists from counting it twice."""
    ok = sorted((r for r in runs if "failed" not in r), key=lambda r: float(r["msgs_per_s"]))
    if not ok:
        return {**runs[0], "median_of": keys}
    return {**ok[(len(ok) - 1) // 2], "median_of": keys}


def report_calibration(R: dict[str, Any], targets: list[str], repeat: int = 1) -> list[str]:
    """The markdown lines comparing each pilegate target of scenario 1 with
    each bare baseline measured in the same run, repeat by repeat (a
    baseline and a pilegate run of one repeat ran minutes apart), and the
    median ratio over the repeats; none without a baseline."""
    bares = [b for b in BARE_TARGETS if b in targets]
    pilegates = [t for t in targets if t in PILEGATE_TARGETS]
    need = TARGET_MSGS / ISSUE_BARE_MSGS["bare"]
    rows: list[str] = []
    for target in pilegates:
        for bare in bares:
            ratios: list[float] = []
            for k, (key, bare_key) in enumerate(
                zip(s1_keys(target, repeat), s1_keys(bare, repeat), strict=True), 1
            ):
                r, b = R.get(key), R.get(bare_key)
                if not r or not b or "failed" in r or "failed" in b or b["msgs_per_s"] <= 0:
                    continue
                ratio, scaled = calibrated(r["msgs_per_s"], b["msgs_per_s"], bare)
                ratios.append(ratio)
                rows.append(
                    f"| {target} | {k if repeat > 1 else '–'} | {r['msgs_per_s']:,.0f} | {bare} | "
                    f"{b['msgs_per_s']:,.0f} | {ratio:.2f} | {scaled:,.0f} | "
                    f"{'yes' if scaled >= TARGET_MSGS else 'no'} |"
                )
            if repeat > 1 and ratios:
                mid = statistics.median(ratios)
                scaled = mid * ISSUE_BARE_MSGS[bare]
                rows.append(
                    f"| **{target}** | median of {len(ratios)} | | {bare} | | "
                    f"**{mid:.2f}** ({min(ratios):.2f}–{max(ratios):.2f}) | **{scaled:,.0f}** | "
                    f"{'yes' if scaled >= TARGET_MSGS else 'no'} |"
                )
    if not rows:
        return []
    return [
        "## Against the bare baseline of the same run\n",
        "The issue's figures were taken on another machine. Its bare websockets server "
        f"(`bench/bare_server.py`: json, no validation, no persistence) answered "
        f"{ISSUE_BARE_MSGS['bare']:,} msgs/s there ({ISSUE_BARE_MSGS['bare-uvloop']:,} with "
        f"uvloop), so the target of {TARGET_MSGS:,} is {need:.2f} × that baseline. "
        "Scaled: pilegate's ratio to the baseline measured in the same repeat, times the "
        "issue's figure for that baseline. bare-uvloop is bounded by the load generator "
        "when its CPU nears 100 %; then its ratio flatters pilegate.\n",
        "| pilegate | repeat | msgs/s | baseline | baseline msgs/s | ratio | scaled to the "
        "issue's machine | target met when scaled |",
        "|---|---|---:|---|---:|---:|---:|---|",
        *rows,
        "",
    ]


def report(ctx: Ctx, machine: dict[str, Any], command: str, elapsed: float) -> str:
    a = ctx.args
    R = ctx.results
    out: list[str] = []
    w = out.append
    w("## Machine and versions\n")
    w(f"- CPU: {machine['cpu']}, {machine['cores']} cores; memory {machine['memory']}")
    w(f"- kernel {machine['kernel']}; Python {machine['python']}; SQLite {machine['sqlite']}")
    w(f"- PostgreSQL: {machine['postgresql']} (127.0.0.1, not pinned)")
    w(
        "- packages: "
        + ", ".join(f"{k} {v}" for k, v in machine["packages"].items() if v != "not installed")
    )
    missing = [k for k, v in machine["packages"].items() if v == "not installed"]
    if missing:
        w(f"- not installed: {', '.join(missing)}")
    if a.source == "head":
        w(
            f"- pilegate: commit {machine['commit']} ({machine['commit_subject']}), run from a "
            "`git archive` snapshot of HEAD (uncommitted edits in the work tree not included)"
        )
    else:
        w(
            f"- pilegate: the work tree at commit {machine['commit']} "
            f"({machine['commit_subject']}) with {machine['uncommitted_server_files']} "
            "uncommitted files under gateway/, protocol/, sessions/, pileid/"
        )
    w(f"- server pinned to CPU {SERVER_CPU}, load generator to CPU {LOADGEN_CPU} (taskset)")
    w(f"- command: `{command}` ({elapsed / 60:.1f} min)\n")

    if "1" in a.scenario_set:
        w(
            f"## 1. Mixed load: {a.chargers} chargers back to back, {a.duration:g} s measured "
            f"after {a.warmup:g} s warm-up\n"
        )
        w(
            "| server | msgs/s answered | p50 ms | p95 ms | p99 ms | max ms | CALLERRORs "
            "| unanswered | server CPU | loadgen CPU | write backlog at end (max) "
            "| backlog drained after | msgs/s incl. drain | rows stored / expected "
            "| other load |"
        )
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
        for key in (k for t in a.targets for k in s1_keys(t, a.repeat)):
            r = R.get(key)
            label = key.removeprefix("s1-")
            if r is None:
                continue
            if "failed" in r:
                w(f"| {label} | failed: {r['failed']} |")
                continue
            lat = r["latency_ms"]
            rows = ""
            if "rows" in r:
                exp = r["rows_expected"]
                got = r["rows"]
                rows = "; ".join(
                    f"{k} {got.get(k, '?')}/{exp[k]}" + (" ✔" if got.get(k) == exp[k] else " ✘")
                    for k in exp
                )
            backlog = (
                f"{_f(r.get('write_backlog_at_end'), '{:.0f}')} "
                f"({_f(r.get('write_backlog_max'), '{:.0f}')})"
                if "write_backlog_max" in r
                else "–"
            )
            drained = (
                _f(r.get("write_drain_s"), "{:.1f} s", f"not in {a.drain_timeout:g} s")
                if "write_backlog_max" in r
                else "–"
            )
            w(
                f"| {label} | {r['msgs_per_s']:,.0f} | {lat['p50']:.1f} | {lat['p95']:.1f} | "
                f"{lat['p99']:.1f} | {lat['max']:.1f} | {sum(r['errors'].values())} | "
                f"{r['unanswered_at_end']} | {_f(r['server_cpu_pct'], '{:.0f} %')} | "
                f"{_f(r['loadgen_cpu_pct'], '{:.0f} %')} | {backlog} | {drained} | "
                f"{_f(r.get('sustained_msgs_per_s'), '{:,.0f}', '–')} | {rows or '–'} | "
                f"{_others(r)} |"
            )
        w(
            "\nmsgs/s answered: CALLRESULTs received in the measured window / window. "
            "msgs/s incl. drain: every CALLRESULT of the run / (time under load + time until "
            "pilegate's write-behind queue was empty), i.e. what was answered *and* stored. "
            "Rows: `meter_samples` = sampled values stored in `meter_readings` (one row per "
            "MeterValue element, its sampledValue list as JSON) = 4 × answered MeterValues, "
            "`gun_status_events` = answered StatusNotifications, counted after the gateway "
            "stopped."
        )
        for key in (k for t in a.targets for k in s1_keys(t, a.repeat)):
            r = R.get(key, {})
            samples = r.get("write_depth_samples")
            if samples:
                step = max(1, len(samples) // 12)
                w(
                    f"\n{key.removeprefix('s1-')} write-behind queue depth (s after start: ops): "
                    + ", ".join(f"{t:.0f}: {d:,.0f}" for t, d in samples[::step])
                )
        w("")
    if "profile" in R:
        p = R["profile"]
        w(f"### Profile of {a.profile_target} under the mixed load (py-spy)\n")
        if "failed" in p:
            w(f"failed: {p['failed']}\n")
        else:
            prof = p["profile"]
            if "failed" in prof:
                w(f"failed: {prof['failed']}\n")
            else:
                w(
                    f"{prof['samples']} samples at 200 Hz while the gateway served "
                    f"{p.get('msgs_per_s', 0):,.0f} msgs/s (py-spy on CPU 1), both threads "
                    "(event loop and the aiosqlite worker) counted; idle samples left out.\n"
                )
                w("| where (category) | % of samples |")
                w("|---|---:|")
                for cat, pct in prof["categories"]:
                    w(f"| {cat} | {pct:.1f} |")
                w("\nTop functions by self time:\n")
                w("| function (file) | self % |")
                w("|---|---:|")
                for fn, pct in prof["self"]:
                    w(f"| `{fn}` | {pct:.1f} |")
                w("\nInclusive time (function and what it calls):\n")
                w("| function (file) | inclusive % |")
                w("|---|---:|")
                for fn, pct in prof["inclusive"]:
                    w(f"| `{fn}` | {pct:.1f} |")
                w("")
    if "2" in a.scenario_set:
        w(f"## 2. Reconnect storm and idle memory: {a.storm:,} chargers\n")
        w(
            "| server | booted | time to all booted | first boot after | RSS before | RSS after "
            "| per idle charger | still connected after hold | other load |"
        )
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for target in a.storm_targets:
            r = R.get(f"s2-{target}")
            if r is None:
                continue
            if "failed" in r:
                w(f"| {target} | failed: {r['failed']} |")
                continue
            w(
                f"| {target} | {r['booted']:,}/{r['chargers']:,} | "
                f"{_f(r['time_to_all_booted_s'], '{:.2f} s', 'not all')} | "
                f"{_f(r['time_to_first_boot_s'], '{:.2f} s')} | "
                f"{_mib(r['server_rss_before_kib'])} | {_mib(r['server_rss_after_kib'])} | "
                f"{_f(r['rss_per_charger_kib'], '{:.1f} KiB')} | {r['alive_at_end_of_hold']:,} | "
                f"{_others(r)} |"
            )
        for target in a.storm_targets:
            r = R.get(f"s2-{target}", {})
            first = r.get("first_connect")
            if first and "failed" not in first:
                w(
                    f"\n{target}, first connect of every pile (each registered at its "
                    f"handshake): {first['booted']:,}/{first['chargers']:,} booted, last after "
                    f"{_f(first['time_to_last_boot_s'], '{:.2f} s')}; failures "
                    f"{first['failures'] or 'none'}; write backlog drained "
                    f"{_f(first.get('write_drain_s'), 'after {:.1f} s', 'not in time')}."
                )
            if r.get("failures"):
                w(f"\n{target} reconnect storm failures: {r['failures']}")
            if "write_backlog_after_hold" in r:
                w(
                    f"\n{target} reconnect storm: write-behind backlog "
                    f"{_f(r['write_backlog_after_hold'], '{:,.0f}')} ops when the chargers "
                    f"left ({a.settle + a.hold:g} s after the last boot), empty "
                    f"{_f(r.get('write_drain_s'), 'after {:.1f} s more', 'not in time')}."
                )
        w(
            f"\npilegate runs the storms with PILEGATE_BOOT_RATE_LIMIT="
            f"{PILEGATE_STORM_ENV['PILEGATE_BOOT_RATE_LIMIT']} (default 200 boots/s would answer "
            f"Pending by design); {a.storm_concurrency} handshakes in flight at most.\n"
        )
    if "3" in a.scenario_set:
        w(f"## 3. Offline detection of {a.halfopen:,} half-open piles\n")
        w(
            "Each pile boots, then sends nothing at all (no frame, no pong); its TCP stack "
            "still acknowledges. Seconds from the silence (boot answer received) to:\n"
        )
        w("| server | P / T | measure | detected | min | p50 | p90 | p99 | max |")
        w("|---|---|---|---:|---:|---:|---:|---:|---:|")
        for target in a.halfopen_targets:
            r = R.get(f"s3-{target}")
            if r is None:
                continue
            if "failed" in r:
                w(f"| {target} | failed: {r['failed']} |")
                continue
            pt = f"{r['ping_interval']:g} s / {r['pong_timeout']:g} s"
            for key, label in (
                ("offline_event_s", "offline event (`at`)"),
                ("api_visible_s", "`/api/piles?online=false` shows it"),
                ("server_close_s", "server closes the link"),
            ):
                d = r.get(key, {})
                if not d.get("count"):
                    continue
                w(
                    f"| {target} | {pt} | {label} | {d['count']:,}/{r['booted']:,} | "
                    f"{d['min']:.2f} | {d['p50']:.2f} | {d['p90']:.2f} | {d['p99']:.2f} | "
                    f"{d['max']:.2f} |"
                )
            if r.get("offline_reasons"):
                w(f"| {target} | | reasons | {r['offline_reasons']} | | | | | |")
        w("")
    if "4" in a.scenario_set:
        w("## 4. Firmware task dispatch to 10,000 online piles\n")
        w("pilegate: measured by `bench/firmware_dispatch.py` (docs/benchmarks.md).\n")
    if "5" in a.scenario_set:
        w(
            f"## 5. Cloud-board throughput: {a.chargers} {a.cbp_kind} chargers back to back, "
            f"{a.duration:g} s measured after {a.warmup:g} s warm-up\n"
        )
        w(
            "| server | protocol | msgs/s processed | p50 ms | p95 ms | p99 ms | max ms "
            "| unanswered | server CPU | loadgen CPU | write backlog at end (max) "
            "| backlog drained after | msgs/s incl. drain | rows stored / expected "
            "| rows/s incl. drain | other load |"
        )
        w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|")
        for target in a.cbp_targets:
            for proto, key in (("CBP/1", f"s5-cbp-{target}"), ("OCPP 1.6J", f"s1-{target}")):
                r = R.get(key)
                if r is None:
                    continue
                if "failed" in r:
                    w(f"| {target} | {proto} | failed: {r['failed']} |")
                    continue
                lat = r["latency_ms"]
                backlog = (
                    f"{_f(r.get('write_backlog_at_end'), '{:.0f}')} "
                    f"({_f(r.get('write_backlog_max'), '{:.0f}')})"
                )
                drained = _f(r.get("write_drain_s"), "{:.1f} s", f"not in {a.drain_timeout:g} s")
                w(
                    f"| {target} | {proto} | {r['msgs_per_s']:,.0f} | {lat['p50']:.1f} | "
                    f"{lat['p95']:.1f} | {lat['p99']:.1f} | {lat['max']:.1f} | "
                    f"{r['unanswered_at_end']} | {_f(r['server_cpu_pct'], '{:.0f} %')} | "
                    f"{_f(r['loadgen_cpu_pct'], '{:.0f} %')} | {backlog} | {drained} | "
                    f"{_f(r.get('sustained_msgs_per_s'), '{:,.0f}', '–')} | "
                    f"{rows_check(r)[0] or '–'} | {_f(rows_per_s(r), '{:,.0f}', '–')} | "
                    f"{_others(r)} |"
                )
        w(
            "\nCBP/1: each charger (a two-gun pile, logged in with 0x01, time sync 0x56 "
            "answered) sends cycles of three frames, each its own write: 0x13 of gun 1 "
            "charging, 0x13 of gun 2 with a status change, 0x03 heartbeat; the next cycle "
            "when the 0x04 arrives. The gateway handles a connection's frames in order, so the "
            "0x04 confirms the whole cycle. msgs/s processed: 3 × cycles confirmed in the "
            "window / window; latency: first 0x13 of the cycle written → its 0x04 received "
            "(each of the three frames waited at most that). Rows: `meter_samples` = sampled "
            "values stored in `meter_readings` (one row per 0x13), 5 (DC; 4 on AC) per "
            "charging 0x13 + 4 per status 0x13, `gun_status_events` = one "
            "per status change (the gateway stores a status when it changes; the first "
            "0x13 of each gun is one), for the confirmed cycles. OCPP 1.6J: scenario 1 on the "
            "same database, charger count and duration (one message in flight per charger; "
            "4 meter samples per MeterValues, one status row per StatusNotification). "
            "rows/s incl. drain: meter samples + status rows / (time under load + drain). "
            "The reference server (`ocpp` package) has no CBP/1.\n"
        )

    w("## Against the issue's targets (pilegate, one core)\n")
    w("| target | measured | met |")
    w("|---|---|---|")
    for target in ("pilegate-sqlite", "pilegate-postgresql"):
        r = R.get(f"s1-{target}")
        if not r or "failed" in r:
            continue
        of = f", median of {len(r['median_of'])} runs" if "median_of" in r else ""
        w(
            f"| ≥ {TARGET_MSGS:,} mixed msgs/s ({target}{of}) | {r['msgs_per_s']:,.0f} | "
            f"{'yes' if r['msgs_per_s'] >= TARGET_MSGS else 'no'} |"
        )
        p99 = r["latency_ms"]["p99"]
        w(
            f"| p99 ≤ {TARGET_P99_MS:g} ms ({target}) | {p99:.1f} ms | "
            f"{'yes' if p99 <= TARGET_P99_MS else 'no'} |"
        )
        if "rows" in r:
            ok = all(r["rows"].get(k) == v for k, v in r["rows_expected"].items())
            w(f"| no message lost ({target}) | rows {r['rows']} | {'yes' if ok else 'no'} |")
    for target in a.storm_targets:
        r = R.get(f"s2-{target}")
        if not r or "failed" in r or not target.startswith("pilegate"):
            continue
        kib = r["rss_per_charger_kib"]
        w(
            f"| ≤ {TARGET_KIB_PER_CHARGER:g} KiB per idle charger ({target}) | "
            f"{_f(kib, '{:.1f} KiB')} | "
            f"{'yes' if kib is not None and kib <= TARGET_KIB_PER_CHARGER else 'no'} |"
        )
        t = r["time_to_all_booted_s"]
        w(
            f"| {a.storm:,} chargers booted in ≤ {TARGET_STORM_S:g} s ({target}) | "
            f"{_f(t, '{:.2f} s', 'not all booted')} | "
            f"{'yes' if t is not None and t <= TARGET_STORM_S else 'no'} |"
        )
    w("")
    for line in report_calibration(R, a.targets, a.repeat):
        w(line)
    split = {key: r["server_threads_pct"] for key, r in runs_of(R) if r.get("server_threads_pct")}
    if split:
        w("## Server CPU per thread in the measured window\n")
        w(
            "From /proc/PID/task/*/stat (100 % = one core): the main thread runs the event "
            "loop; the others are aiosqlite's workers and executor threads. Unlike py-spy's "
            "default mode this does not count a thread waiting for the GIL as busy.\n"
        )
        for key, t in split.items():
            w(
                f"- {key}: event loop {t['event_loop_user_pct']:.0f} % user + "
                f"{t['event_loop_kernel_pct']:.0f} % kernel, other threads "
                f"{t['other_threads_pct']:.0f} %"
            )
        w("")
    w("## Other load on the machine during each measurement\n")
    w(
        "CPU used by processes that are not part of the benchmark (100 % = one core), "
        "from /proc while the load generator ran; the machine may be shared.\n"
    )
    for key, r in runs_of(R):
        ml = r.get("machine_load") if isinstance(r, dict) else None
        if not ml:
            continue
        top = ", ".join(f"`{c[:60]}` {p:.0f} %" for c, p in ml["top_others"][:3] if p >= 1)
        w(
            f"- {key}: others {ml['others_pct']:.0f} %, benchmark {ml['ours_pct']:.0f} %"
            + (f" (top: {top})" if top else "")
        )
    w("")
    w("## Server shutdown (SIGTERM) after each run\n")
    for key, r in runs_of(R):
        for label, rr in ((key, r), (f"{key} (first connect)", r.get("first_connect"))):
            if isinstance(rr, dict) and rr.get("server_stop_s") is not None:
                w(
                    f"- {label}: "
                    + (
                        f"did not exit within {a.stop_timeout:g} s, killed"
                        if rr.get("server_killed")
                        else f"exited with {rr.get('server_exit_code')} after "
                        f"{rr['server_stop_s']:.1f} s"
                    )
                )
    w("")
    w("## Server log warnings and errors per run\n")
    for key, r in runs_of(R):
        ev = r.get("log_events") if isinstance(r, dict) else None
        if ev:
            w(f"- {key}: " + "; ".join(f"{k} ×{v}" for k, v in sorted(ev.items())))
        first = r.get("first_connect") if isinstance(r, dict) else None
        ev1 = r.get("log_events_first_connect") if isinstance(r, dict) else None
        if first is not None and ev1:
            w(f"- {key} (first connect): " + "; ".join(f"{k} ×{v}" for k, v in sorted(ev1.items())))
    w("")
    return "\n".join(out)


# ----------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="pilegate benchmarks (issue 9): pilegate vs the ocpp package, one run"
    )
    p.add_argument("--quick", action="store_true", help="short smoke run with small sizes")
    p.add_argument("--scenarios", default="1,2,3,4,5", help="comma-separated, e.g. 1,2")
    p.add_argument(
        "--targets",
        default="pilegate-sqlite,pilegate-postgresql,reference,bare",
        help="servers of scenario 1 (also pilegate-*-uvloop, bare-uvloop)",
    )
    p.add_argument(
        "--storm-targets", default="pilegate-sqlite,reference", help="servers of scenario 2"
    )
    p.add_argument("--halfopen-targets", default="pilegate,reference", help="servers of scenario 3")
    p.add_argument(
        "--cbp-targets",
        default="pilegate-sqlite,pilegate-postgresql",
        help="servers of scenario 5 (each also measured with OCPP, scenario 1's load)",
    )
    p.add_argument(
        "--cbp-kind", choices=("DC", "AC"), default="DC", help="scenario 5 pile kind (DC: SoC)"
    )
    p.add_argument("--chargers", type=int, help="scenario 1 chargers (100)")
    p.add_argument("--duration", type=float, help="scenario 1 measured seconds (30)")
    p.add_argument("--warmup", type=float, help="scenario 1 warm-up seconds (5)")
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run scenario 1's targets this many times, every other time in reverse; "
        "the report lists every run and takes the median",
    )
    p.add_argument("--storm", type=int, help="scenario 2 chargers (10000)")
    p.add_argument("--storm-concurrency", type=int, default=1000)
    p.add_argument("--storm-timeout", type=float, default=240.0)
    p.add_argument("--settle", type=float, default=3.0, help="s after the storm before RSS")
    p.add_argument("--hold", type=float, default=6.0, help="s the storm's chargers stay idle")
    p.add_argument("--halfopen", type=int, help="scenario 3 piles (1000)")
    p.add_argument("--ping-interval", type=float, help="pilegate ping_interval P (10)")
    p.add_argument("--pong-timeout", type=float, help="pilegate pong_timeout T (10)")
    p.add_argument("--detect-timeout", type=float, help="scenario 3 give-up time (90)")
    p.add_argument(
        "--stop-timeout", type=float, default=90.0, help="s from SIGTERM to SIGKILL of a server"
    )
    p.add_argument("--drain-timeout", type=float, default=300.0, help="write backlog wait (s)")
    p.add_argument("--profile", action="store_true", help="also profile pilegate with py-spy")
    p.add_argument(
        "--profile-target",
        default="pilegate-sqlite",
        choices=PILEGATE_TARGETS,
        help="the server --profile profiles",
    )
    p.add_argument("--top", type=int, default=15, help="profile rows")
    add_pg_admin_url(p, skippable=False)
    p.add_argument(
        "--source",
        choices=("head", "worktree"),
        default="head",
        help="pilegate to run: a `git archive` snapshot of the committed HEAD (default), "
        "or the work tree as it is (uncommitted edits included)",
    )
    p.add_argument(
        "--quiet-threshold",
        type=float,
        default=15.0,
        help="before each run, wait until other processes use less than this %% of a core",
    )
    p.add_argument("--quiet-wait", type=float, default=60.0, help="longest such wait (s)")
    p.add_argument("--out", help="results folder (bench/results/<timestamp>)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    quick = a.quick
    defaults = {
        "chargers": 20 if quick else 100,
        "duration": 5.0 if quick else 30.0,
        "warmup": 2.0 if quick else 5.0,
        "storm": 500 if quick else 10_000,
        "halfopen": 50 if quick else 1_000,
        "ping_interval": 2.0 if quick else 10.0,
        "pong_timeout": 2.0 if quick else 10.0,
        "detect_timeout": 30.0 if quick else 90.0,
    }
    for k, v in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    a.scenario_set = set(a.scenarios.split(","))
    a.targets = [t for t in a.targets.split(",") if t]
    a.storm_targets = [t for t in a.storm_targets.split(",") if t]
    a.halfopen_targets = [t for t in a.halfopen_targets.split(",") if t]
    a.cbp_targets = [t for t in a.cbp_targets.split(",") if t]
    for t in a.cbp_targets:
        if t not in ("pilegate-sqlite", "pilegate-postgresql"):
            parser.error(f"unknown scenario 5 target {t!r} (the reference has no CBP/1)")
    for t in a.targets:
        if t not in (*PILEGATE_TARGETS, "reference", *BARE_TARGETS):
            parser.error(f"unknown scenario 1 target {t!r}")
    for t in a.storm_targets:
        if t not in (*PILEGATE_TARGETS, "reference"):
            parser.error(f"unknown scenario 2 target {t!r}")
    for t in a.halfopen_targets:
        if t not in ("pilegate", "reference"):
            parser.error(f"unknown scenario 3 target {t!r}")

    raise_nofile(65536)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = Path(a.out) if a.out else BENCH / "results" / stamp
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="pilegate-bench-"))
    ctx = Ctx(a, out, tmp, a.pg_admin_url)
    command = " ".join(shlex.quote(x) for x in [os.path.relpath(PY, Path.cwd()), *sys.argv])
    t0 = time.monotonic()
    say(f"results in {out}; temporary databases in {tmp}")
    uses_pg = "pilegate-postgresql" in (
        *a.targets,
        *a.storm_targets,
        *(a.cbp_targets if "5" in a.scenario_set else ()),
    )
    machine = machine_info(a.pg_admin_url, uses_pg)
    if a.source == "head":
        # The committed HEAD, extracted with `git archive` (read-only): other
        # people's uncommitted edits in the work tree do not leak into the run.
        src = tmp / "src"
        src.mkdir()
        archive = subprocess.run(
            ["git", "archive", "--format=tar", machine["commit_full"]],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
        SERVER_ENV["PYTHONPATH"] = str(src)
        say(f"pilegate from a snapshot of HEAD in {src}")

    def step(key: str, fn: Callable[[], dict[str, Any]]) -> None:
        say(key)
        quiet = wait_quiet(a.quiet_threshold, a.quiet_wait)
        try:
            r = fn()
        except Exception as exc:  # one broken run must not lose the others' figures
            say(f"{key} failed: {exc!r}")
            r = {"failed": f"{type(exc).__name__}: {exc}"}
        r["background_before"] = quiet
        ctx.results[key] = r

    try:
        if "1" in a.scenario_set:
            # --repeat: the targets again, every other time in reverse, so a
            # machine that drifts (docs/benchmarks.md) favours none of them
            for k in range(a.repeat):
                for target in a.targets if k % 2 == 0 else a.targets[::-1]:
                    key = s1_keys(target, a.repeat)[k]
                    step(key, functools.partial(scenario_mixed, ctx, target, key))
            if a.repeat > 1:
                for target in a.targets:
                    keys = s1_keys(target, a.repeat)
                    runs = [ctx.results[key] for key in keys]
                    ctx.results[f"s1-{target}"] = median_run(runs, keys)
        if a.profile:
            step("profile", functools.partial(scenario_profile, ctx))
        if "2" in a.scenario_set:
            for target in a.storm_targets:
                step(f"s2-{target}", functools.partial(scenario_storm, ctx, target))
        if "3" in a.scenario_set:
            for target in a.halfopen_targets:
                step(f"s3-{target}", functools.partial(scenario_halfopen, ctx, target))
        if "4" in a.scenario_set:
            say("scenario 4: firmware dispatch: run bench/firmware_dispatch.py")
        if "5" in a.scenario_set:
            for target in a.cbp_targets:
                # the OCPP baseline: scenario 1's run of this target, or one now
                key = f"s1-{target}"
                if key not in ctx.results:
                    step(key, functools.partial(scenario_mixed, ctx, target))
                step(f"s5-cbp-{target}", functools.partial(scenario_cbp, ctx, target))
    finally:
        if ctx.pg_used:
            with contextlib.suppress(Exception):
                pg_drop(a.pg_admin_url)
        shutil.rmtree(tmp, ignore_errors=True)
    text = report(ctx, machine, command, time.monotonic() - t0)
    (out / "results.md").write_text(text)
    (out / "results.json").write_text(
        json.dumps({"machine": machine, "command": command, "results": ctx.results}, indent=2)
    )
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
