"""``pilegate sim ...``: run QA scenarios, check scenario files, load mode.

``register(sub)`` is called by ``gateway.cli`` to add the ``sim`` command
group to the ``pilegate`` parser.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from .config import PROTOCOLS, Protocol
from .scenario import Scenario, ScenarioError, load_scenario, shipped_scenarios, with_protocol


def register(sub: Any) -> None:
    """Add the ``sim`` command group to the ``pilegate`` parser."""
    sim = sub.add_parser(
        "sim",
        help="simulated chargers, QA scenarios and load",
        description="Simulated OCPP 1.6J and cloud-board CBP/1 chargers: QA scenarios "
        "(docs/simulator.md) and load.",
    )
    simsub = sim.add_subparsers(dest="sim_command", required=True, metavar="ACTION")

    run = simsub.add_parser(
        "run",
        help="run scenario files against a gateway (exit 0 only when every expectation passes)",
        description="Run scenario files against a running gateway and report pass/fail per "
        "expectation. Exit status 0 only when every expectation of every scenario passed.",
    )
    run.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="scenario YAML files ('shipped' = every scenario that comes with pilegate)",
    )
    run.add_argument(
        "--gateway-url",
        default="ws://127.0.0.1:9000/ocpp",
        help="OCPP-J URL prefix; chargers connect to URL/{pileId} (default %(default)s)",
    )
    run.add_argument(
        "--cbp-url",
        default="tcp://127.0.0.1:9010",
        help="the gateway's cloud-board (CBP/1) listener, for chargers that "
        "speak cbp1 (default %(default)s)",
    )
    run.add_argument(
        "--protocol",
        choices=list(PROTOCOLS),
        default=None,
        help="make every charger of every scenario speak this protocol "
        "(default: as each scenario says; 'ocpp1.6' unless it says cbp1)",
    )
    run.add_argument(
        "--api-url", default="http://127.0.0.1:8080", help="ops API base URL (default %(default)s)"
    )
    run.add_argument(
        "--api-token", default=None, help="ops API bearer token (default: $PILEGATE_API_TOKEN)"
    )
    run.add_argument("--junit", metavar="PATH", help="also write a JUnit XML report")
    run.add_argument("--quiet", action="store_true", help="no progress line")
    run.set_defaults(func=cmd_run)

    check = simsub.add_parser("check", help="validate scenario files without running them")
    check.add_argument("files", nargs="+", metavar="FILE")
    check.set_defaults(func=cmd_check)

    lst = simsub.add_parser("list", help="list the scenarios that come with pilegate")
    lst.set_defaults(func=cmd_list)

    load = simsub.add_parser(
        "load",
        help="connect many chargers to any OCPP 1.6J server and measure it",
        description="Connect COUNT simulated chargers at RAMP per second to an OCPP 1.6J "
        "server, keep them busy for DURATION seconds (a share of them charging), print "
        "connects, messages per second, latency percentiles and errors, then stop.",
    )
    load.add_argument(
        "--url",
        required=True,
        help="OCPP-J URL prefix, e.g. ws://127.0.0.1:9000/ocpp (chargers connect to URL/{pileId})",
    )
    load.add_argument("--count", type=int, required=True, help="number of chargers")
    load.add_argument(
        "--ramp",
        type=float,
        default=50.0,
        help="chargers connected per second (default %(default)s)",
    )
    load.add_argument(
        "--duration",
        type=float,
        required=True,
        help="seconds from the first connect until the run stops",
    )
    load.add_argument(
        "--charging-share",
        type=float,
        default=0.2,
        help="share of chargers that charge, 0..1 (default %(default)s)",
    )
    load.add_argument("--kind", choices=["AC", "DC"], default="AC")
    load.add_argument(
        "--id-format",
        default=None,
        help="charger IDs from a format, e.g. 'CP{n:05d}' (default: valid 20-digit pile IDs)",
    )
    load.add_argument(
        "--first-serial",
        type=int,
        default=1,
        help="serial of the first generated pile ID (default %(default)s)",
    )
    load.add_argument(
        "--operator",
        default="0099",
        help="operator code of generated pile IDs (default %(default)s)",
    )
    load.add_argument(
        "--meter-interval",
        type=float,
        default=10.0,
        help="seconds between meter samples of a charging charger (default %(default)s)",
    )
    load.add_argument(
        "--charge-seconds",
        type=float,
        default=60.0,
        help="length of each charge (default %(default)s)",
    )
    load.add_argument(
        "--idle-seconds",
        type=float,
        default=20.0,
        help="pause between charges (default %(default)s)",
    )
    load.add_argument(
        "--heartbeat-interval",
        type=float,
        default=None,
        help="override the heartbeat interval the server gives at boot",
    )
    load.add_argument(
        "--password", default=None, help="HTTP Basic password of every charger (security profile 1)"
    )
    load.add_argument(
        "--protocol",
        choices=["ocpp1.6", "cbp1"],
        default="ocpp1.6",
        help="protocol of the chargers (default %(default)s); cbp1: cloud-board "
        "chargers over TCP, --url tcp://HOST:PORT",
    )
    load.add_argument(
        "--json", metavar="PATH", default=None, help="also write the final figures as JSON"
    )
    load.set_defaults(func=cmd_load)


# --- progress line ------------------------------------------------------------------------
class LiveLine:
    """One status line, redrawn in place on a terminal; plain lines otherwise."""

    def __init__(self, stream: TextIO, enabled: bool = True) -> None:
        self.stream = stream
        self.enabled = enabled
        self.tty = stream.isatty()
        self.text = ""
        self.prefix = ""
        self.started = time.monotonic()

    def update(self, text: str) -> None:
        if not self.enabled:
            return
        self.text = text
        if self.tty:
            self.redraw()
        else:
            print(f"{self.prefix}{text}", file=self.stream, flush=True)

    def redraw(self) -> None:
        if self.enabled and self.tty and self.text:
            elapsed = time.monotonic() - self.started
            line = f"{elapsed:6.1f} s  {self.prefix}{self.text}"
            width = 0
            with contextlib.suppress(OSError, ValueError):
                width = os.get_terminal_size(self.stream.fileno()).columns
            if width < 40:
                width = 120  # unknown (0) or silly: do not cut the line to nothing
            self.stream.write("\r\x1b[K" + line[: width - 1])
            self.stream.flush()

    def clear(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


# --- run ---------------------------------------------------------------------------------------
def _expand(files: Sequence[str]) -> list[Path]:
    out: list[Path] = []
    for f in files:
        if f == "shipped":
            out.extend(shipped_scenarios())
        else:
            out.append(Path(f))
    return out


def load_all(
    files: Sequence[str], err: TextIO, protocol: Protocol | None = None
) -> list[Scenario] | None:
    scenarios: list[Scenario] = []
    failed = False
    for path in _expand(files):
        try:
            scenarios.append(with_protocol(load_scenario(path), protocol))
        except ScenarioError as exc:
            print(f"pilegate sim: {exc}", file=err)
            failed = True
    return None if failed else scenarios


async def run_scenarios(
    scenarios: Sequence[Scenario],
    *,
    gateway_url: str,
    api_url: str,
    api_token: str | None,
    cbp_url: str | None = None,
    junit: str | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
    progress: bool = True,
) -> int:
    """Run scenarios one after the other; print the report; 0 when all passed."""
    from .runner import ScenarioRunner, format_report, junit_xml

    out = out or sys.stdout
    err = err or sys.stderr
    live = LiveLine(err, enabled=progress)
    results = []
    for i, sc in enumerate(scenarios, 1):
        if sc.gateway.settings:
            settings = ", ".join(f"{k}={v}" for k, v in sc.gateway.settings.items())
            print(f"note: {sc.name!r} expects the gateway configured with {settings}", file=err)
        live.prefix = f"[{i}/{len(scenarios)}] "
        live.started = time.monotonic()
        try:
            runner = ScenarioRunner(
                sc,
                gateway_url=gateway_url,
                api_url=api_url,
                api_token=api_token,
                progress=live.update,
                cbp_url=cbp_url,
            )
        except ScenarioError as exc:
            print(f"pilegate sim: {exc}", file=err)
            return 2
        ticker = asyncio.create_task(_redraw(live)) if live.tty and progress else None
        try:
            results.append(await runner.run())
        finally:
            if ticker is not None:
                ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticker
            live.clear()
    print(format_report(results), file=out)
    if junit:
        await asyncio.to_thread(Path(junit).write_text, junit_xml(results), encoding="utf-8")
        print(f"JUnit report: {junit}", file=err)
    return 0 if results and all(r.passed for r in results) else 1


async def _redraw(live: LiveLine) -> None:
    while True:
        await asyncio.sleep(0.5)
        live.redraw()


def cmd_run(args: argparse.Namespace) -> int:
    scenarios = load_all(args.files, sys.stderr, args.protocol)
    if scenarios is None:
        return 2
    token = args.api_token or os.environ.get("PILEGATE_API_TOKEN")
    return asyncio.run(
        run_scenarios(
            scenarios,
            gateway_url=args.gateway_url,
            api_url=args.api_url,
            api_token=token,
            cbp_url=args.cbp_url,
            junit=args.junit,
            progress=not args.quiet,
        )
    )


def cmd_check(args: argparse.Namespace) -> int:
    scenarios = load_all(args.files, sys.stderr)
    if scenarios is None:
        return 2
    for sc in scenarios:
        print(
            f"ok  {sc.source}: {sc.name!r}, {len(sc.chargers)} charger(s), "
            f"{len(sc.steps)} steps, {len(sc.expectations)} expectations"
        )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    for path in shipped_scenarios():
        try:
            sc = load_scenario(path)
        except ScenarioError as exc:
            print(f"{path}: INVALID: {exc}")
            continue
        print(f"{path}\n    {sc.name}")
    return 0


# --- load ---------------------------------------------------------------------------
def cmd_load(args: argparse.Namespace) -> int:
    from .load import LoadOptions, report_dict, run_load

    try:
        opts = LoadOptions(
            url=args.url,
            count=args.count,
            ramp=args.ramp,
            duration=args.duration,
            charging_share=args.charging_share,
            kind=args.kind,
            id_format=args.id_format,
            first_serial=args.first_serial,
            operator=args.operator,
            meter_interval=args.meter_interval,
            charge_seconds=args.charge_seconds,
            idle_seconds=args.idle_seconds,
            heartbeat_interval=args.heartbeat_interval,
            password=args.password,
            protocol=args.protocol,
        )
        if opts.protocol == "cbp1":
            from .cbp_charger import parse_tcp_url

            parse_tcp_url(opts.url)
        opts.pile_id(0)
        opts.pile_id(opts.count - 1)
    except (ValueError, KeyError, IndexError) as exc:
        print(f"pilegate sim load: {exc}", file=sys.stderr)
        return 2
    report = asyncio.run(run_load(opts, lambda line: print(line, flush=True)))
    if args.json:
        Path(args.json).write_text(json.dumps(report_dict(report), indent=2), encoding="utf-8")
    return 0 if report.chargers_connected_once == report.count else 1
