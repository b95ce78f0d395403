"""Simulated cloud-board (CBP/1) chargers (the unified driver with the CBP/1
model) and CBP/1 load mode against a test gateway."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main
from simulators.cbp_charger import CbpCharger, parse_tcp_url
from simulators.config import ChargerConfig
from simulators.driver import SimulatedCharger
from simulators.load import LoadOptions, report_dict, run_load
from tests.support.gateway import api_client, flushed, running_gateway

PILE = "44200000010000100001"


async def _poll(check: Any, timeout: float = 10.0) -> Any:
    async with asyncio.timeout(timeout):
        while True:
            value = await check()
            if value:
                return value
            await asyncio.sleep(0.05)


def test_tcp_urls_and_cli_checks(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_tcp_url("tcp://127.0.0.1:9010") == ("127.0.0.1", 9010)
    with pytest.raises(ValueError):
        parse_tcp_url("ws://127.0.0.1:9000/ocpp")
    assert (
        main(
            [
                "sim",
                "load",
                "--protocol",
                "cbp1",
                "--url",
                "ws://127.0.0.1:1/ocpp",
                "--count",
                "1",
                "--duration",
                "1",
            ]
        )
        == 2
    )
    assert "tcp://HOST:PORT" in capsys.readouterr().err


async def test_a_simulated_charger_charges_remotely(database_url: str) -> None:
    async with running_gateway(database_url, cbp_heartbeat_interval=5) as gw:
        cfg = ChargerConfig(
            pile_id=PILE, protocol="cbp1", power_kw=7.0, time_scale=60.0, meter_interval=15
        )
        charger = SimulatedCharger(cfg, f"tcp://127.0.0.1:{gw.cbp_port}")
        model = charger.model
        assert isinstance(model, CbpCharger)
        charger.start()
        try:
            await charger.wait_until(lambda: model.online, 10, "login")
            assert model.heartbeat_interval == 5
            await _poll(lambda: _true(any("TimeSync" in t for _, t in model.trace or ())))
            async with api_client(gw) as api:

                async def pile() -> Any:
                    await flushed(gw)
                    r = await api.get(f"/api/piles/{PILE}")
                    return r.status_code == 200 and r.json().get("online") and r.json()

                await _poll(pile)
                charger.plug(1)  # CBP/1 §3 0x33: a gun not plugged in refuses
                r = await api.post(
                    f"/api/piles/{PILE}/commands/RemoteStartTransaction",
                    json={"payload": {"idTag": "APP1", "connectorId": 1}},
                )
                assert r.status_code == 200, r.text
                assert r.json()["response"] == {"status": "Accepted"}

                async def active() -> Any:
                    await flushed(gw)
                    txs = (await api.get("/api/transactions", params={"pile": PILE})).json()
                    return [t for t in txs if t["status"] == "active"]

                [tx] = await _poll(active)
                assert tx["id_tag"] == "APP1"
                await asyncio.sleep(0.6)  # a few 0x13 at 60x: 7 kW for about 36 s
                r = await api.post(
                    f"/api/piles/{PILE}/commands/RemoteStopTransaction",
                    json={"payload": {"transactionId": tx["id"]}},
                )
                assert r.json()["response"] == {"status": "Accepted"}, r.text
                await _poll(
                    lambda: _true(bool(model.confirmed) and not model.queued_transaction_messages())
                )

                async def stopped() -> Any:
                    await flushed(gw)
                    txs = (await api.get("/api/transactions", params={"pile": PILE})).json()
                    return [t for t in txs if t["status"] != "active"]

                [done] = await _poll(stopped)
                assert done["id"] == tx["id"]
                assert done["energy_wh"] > 0, done
                assert done["stop_reason"] == "Remote"
                assert model.stats.error_count == 0, model.stats.errors
                assert {"Login", "TransactionRecord"} <= set(model.stats.latency_by_action)
                assert done["external_id"] == model.confirmed[-1]  # the SERIAL
        finally:
            await charger.close()


async def _true(value: bool) -> bool:
    return value


async def test_cbp_load_fifty_chargers_for_three_seconds(tmp_path: Path) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}"
    async with running_gateway(db, cbp_heartbeat_interval=5) as gw:
        lines: list[str] = []
        opts = LoadOptions(
            url=f"tcp://127.0.0.1:{gw.cbp_port}",
            count=50,
            ramp=100,
            duration=3,
            charging_share=0.5,
            meter_interval=0.5,
            charge_seconds=1.0,
            idle_seconds=0.3,
            heartbeat_interval=1.0,
            report_every=1.0,
            protocol="cbp1",
        )
        report = await run_load(opts, lines.append)
        stats = report.stats
        assert report.chargers_connected_once == 50 and report.connected_max == 50
        assert report.charging == 25
        assert stats.connect_failures == 0 and stats.error_count == 0, stats.errors
        p = report.percentiles()
        assert p["p50"] is not None and p["p99"] is not None and p["p50"] <= p["p99"]
        assert {"Login", "Heartbeat", "TransactionRecord"} <= set(stats.latency_by_action)
        assert lines[0].startswith("load: 50 chargers (25 charging) at 100/s for 3 s")
        assert sum(line.startswith("t=") for line in lines) >= 2
        assert any(line.startswith("errors: 0") for line in lines)
        assert report_dict(report)["connected_once"] == 50
        async with api_client(gw) as api:
            await flushed(gw)
            listed = (await api.get("/api/piles", params={"limit": 1000})).json()
            assert listed["total"] == 50
            txs = (await api.get("/api/transactions", params={"limit": 1000})).json()
        assert len({t["pile_id"] for t in txs}) == 25


FAULTS = """\
name: every network fault on a cloud-board charger
gateway:
  settings: {cbp_heartbeat_interval: 1, watchdog_min_silence: 1}
chargers:
  cb:
    pile_id: "44200000010000100071"
    protocol: cbp1
    call_timeout: 3
steps:
  - connect: cb
  - disconnect: {charger: cb, mode: clean}
  - expect: {event: cb, online: false, reason: closed_clean, latest: true, within: 5}
  - restore: cb
  - disconnect: {charger: cb, mode: abrupt}
  - expect: {event: cb, online: false, reason: closed_abnormal, latest: true, within: 5}
  - restore: cb
  - expect: {pile: cb, online: true}
  - latency: {charger: cb, seconds: 0.4}
  - expect: {pile: cb, online: true, hold: 2.5, title: "a slow link stays online"}
  - latency: {charger: cb, seconds: 0}
  - flap: {charger: cb, times: 2, down: 0.3, up: 0.5, mode: clean}
  - expect: {event: cb, online: true, reason: connected, count: 5}
  - power_cycle: {charger: cb, off_seconds: 0.5}
  - expect: {event: cb, online: true, reason: connected, count: 6}
  - expect: {charger: cb, links: 6, login_refusals: 0}
"""


async def test_network_faults_on_a_cloud_board_charger(database_url: str) -> None:
    import yaml

    from simulators.runner import ScenarioRunner, format_report
    from simulators.scenario import parse_scenario
    from tests.support.gateway import TOKEN

    sc = parse_scenario(yaml.safe_load(FAULTS), "faults.yaml")
    async with running_gateway(database_url, **sc.gateway.settings) as gw:
        runner = ScenarioRunner(
            sc,
            gateway_url=f"ws://127.0.0.1:{gw.ocpp_port}/ocpp",
            cbp_url=f"tcp://127.0.0.1:{gw.cbp_port}",
            api_url=f"http://127.0.0.1:{gw.api_port}",
            api_token=TOKEN,
        )
        result = await runner.run()
        stats = runner.drivers["cb"].model.stats
    assert result.passed, format_report([result])
    # The 0.4 s of latency showed in the heartbeat round trips.
    assert stats.latency_by_action["Heartbeat"].max >= 0.4
