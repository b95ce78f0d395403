"""The shipped QA scenarios, each against a gateway started by the test (SQLite
and PostgreSQL), and the scenario runner's failure reporting and CLI."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from simulators.cli import load_all, run_scenarios
from simulators.config import PROTOCOLS, Protocol
from simulators.runner import ScenarioResult, ScenarioRunner, format_report
from simulators.scenario import Scenario, load_scenario, shipped_scenarios, with_protocol
from tests.support.gateway import TOKEN, running_gateway

SHIPPED = shipped_scenarios()
# Every gateway in these tests detects a dead link within ~2-3 s: OCPP by
# ping/pong, CBP/1 (no pings) by 3 missed heartbeats of 1 s.
FAST_PRESENCE = {
    "ping_interval": 1,
    "pong_timeout": 1,
    "cbp_heartbeat_interval": 1,
    "watchdog_min_silence": 1,
}


async def _run(sc: Scenario, database_url: str, protocol: Protocol | None = None) -> ScenarioResult:
    sc = with_protocol(sc, protocol)
    async with running_gateway(database_url, **{**FAST_PRESENCE, **sc.gateway.settings}) as gw:
        runner = ScenarioRunner(
            sc,
            gateway_url=f"ws://127.0.0.1:{gw.ocpp_port}/ocpp",
            cbp_url=f"tcp://127.0.0.1:{gw.cbp_port}",
            api_url=f"http://127.0.0.1:{gw.api_port}",
            api_token=TOKEN,
        )
        return await runner.run()


def test_the_issue_scenarios_are_shipped() -> None:
    names = {p.stem for p in SHIPPED}
    assert {
        "pileid_16_digits",
        "kind_mismatch",
        "online_offline_online",
        "half_open",
        "billing_dispute_curve",
        "duplicate_takeover",
        "six_minute_autostop",
    } <= names


def _runs() -> list[tuple[Path, Protocol | None]]:
    """Each single-protocol scenario with OCPP chargers and with cloud-board
    ones; a mixed-fleet scenario as written (forcing one protocol would make
    it a single-protocol one)."""
    runs: list[tuple[Path, Protocol | None]] = []
    for path in SHIPPED:
        protocols = {c.protocol for c in load_scenario(path).chargers.values()}
        runs.extend((path, p) for p in (PROTOCOLS if len(protocols) == 1 else (None,)))
    return runs


RUNS = _runs()


def test_the_mixed_fleet_scenario_mixes_protocols() -> None:
    sc = load_scenario(next(p for p in SHIPPED if p.stem == "mixed_fleet"))
    assert {c.protocol for c in sc.chargers.values()} == set(PROTOCOLS)


@pytest.mark.parametrize(
    ("path", "protocol"), RUNS, ids=[f"{p.stem}-{proto or 'mixed'}" for p, proto in RUNS]
)
async def test_shipped_scenario_passes(
    path: Path, protocol: Protocol | None, database_url: str
) -> None:
    """Every shipped scenario, with OCPP chargers and with cloud-board ones."""
    sc = load_scenario(path)
    result = await _run(sc, database_url, protocol)
    report = format_report([result])
    assert result.passed, report
    assert len(result.expectations) == len(sc.expectations), report
    assert all(not c.skipped for c in result.checks), report


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


FAILING = """\
    name: impossible detection bound
    chargers:
      cut:
        pile_id: "44200000010000100091"
        call_timeout: 30
    steps:
      - connect: cut
      - expect: {pile: cut, online: true}
      - disconnect: {charger: cut, mode: half_open}
      - expect: {pile: cut, online: false, within: 0.3}
      - expect: {event: cut, reason: ping_timeout, within: 5}
"""

BROKEN_STEP = """\
    name: password on a pile without a screen
    chargers:
      plain:
        pile_id: "44200000010000100092"
        touch_screen: false
    steps:
      - connect: plain
      - plug: plain
      - present_password: {charger: plain, password: "1234"}
      - expect: {transaction: plain, auth_method: password}
"""


async def test_a_failing_expectation_is_reported_and_exits_1(tmp_path: Path) -> None:
    path = _write(tmp_path, "failing.yaml", FAILING)
    err = io.StringIO()
    scenarios = load_all([str(path)], err)
    assert scenarios is not None, err.getvalue()
    out = io.StringIO()
    junit = tmp_path / "report.xml"
    db = f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}"
    async with running_gateway(db, **FAST_PRESENCE) as gw:
        code = await run_scenarios(
            scenarios,
            gateway_url=f"ws://127.0.0.1:{gw.ocpp_port}/ocpp",
            api_url=f"http://127.0.0.1:{gw.api_port}",
            api_token=TOKEN,
            junit=str(junit),
            out=out,
            err=err,
            progress=False,
        )
    report = out.getvalue()
    assert code == 1, report
    lines = report.splitlines()
    assert lines[0].startswith("FAIL  impossible detection bound")
    # The fast bound fails, the real detection (ping_timeout) still passes.
    assert any(
        line.strip().startswith("FAIL  pile cut: online = False within 0.3 s") for line in lines
    ), report
    assert any(
        line.strip().startswith("ok    event cut: reason = 'ping_timeout'") for line in lines
    ), report
    assert "observed: online = True" in report
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    assert suite.get("tests") == "3" and suite.get("failures") == "1"
    failures = [c for c in suite.iter("testcase") if c.find("failure") is not None]
    assert [c.get("name") for c in failures] == ["pile cut: online = False within 0.3 s"]


async def test_a_failing_step_stops_the_scenario_and_skips_what_follows(tmp_path: Path) -> None:
    sc = load_scenario(_write(tmp_path, "broken.yaml", BROKEN_STEP))
    result = await _run(sc, f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}")
    assert not result.passed
    step, skipped = result.checks
    assert step.kind == "step" and not step.passed
    assert "no touch screen" in step.detail
    assert "charger trace:" in step.detail  # what the charger did, for the QA engineer
    assert skipped.skipped and not skipped.passed
    report = format_report([result])
    assert "SKIP" in report and "FAIL  step 3: present_password plain" in report


async def test_connecting_to_nothing_fails_the_connect_step(tmp_path: Path) -> None:
    sc = load_scenario(
        _write(
            tmp_path,
            "nothing.yaml",
            """\
        name: no gateway
        chargers:
          lonely: {pile_id: "44200000010000100093"}
        steps:
          - connect: {charger: lonely, timeout: 0.5}
          - expect: {charger: lonely, online: true}
    """,
        )
    )
    db = f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}"
    async with running_gateway(db) as gw:
        runner = ScenarioRunner(
            sc,
            gateway_url="ws://127.0.0.1:9/ocpp",  # discard port: nothing listens
            api_url=f"http://127.0.0.1:{gw.api_port}",
            api_token=TOKEN,
        )
        result = await runner.run()
    assert not result.passed
    assert "boot accepted not within 0.5 s" in result.checks[0].detail
