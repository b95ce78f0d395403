"""Load mode: many chargers against a test gateway, briefly."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import pileid
from gateway.cli import main
from simulators.load import LoadOptions, report_dict, run_load
from tests.support.gateway import api_client, flushed, running_gateway


def test_load_options_are_checked_and_ids_are_valid_and_distinct() -> None:
    opts = LoadOptions(url="ws://x/ocpp", count=300, ramp=10, duration=1)
    ids = [opts.pile_id(n) for n in range(opts.count)]
    assert len(set(ids)) == 300
    assert all(pileid.parse_pile_id(i).kind.label == "AC" for i in ids)
    dc = LoadOptions(url="ws://x/ocpp", count=1, ramp=1, duration=1, kind="DC")
    assert pileid.parse_pile_id(dc.pile_id(0)).kind.label == "DC"
    assert LoadOptions(url="u", count=2, ramp=1, duration=1, id_format="CP{n:05d}").pile_id(7) == (
        "CP00007"
    )
    bad_options: list[dict[str, Any]] = [
        {"count": 0},
        {"ramp": 0},
        {"duration": 0},
        {"charging_share": 1.5},
        {"count": 100_000},
    ]
    for bad in bad_options:
        with pytest.raises(ValueError):
            base: dict[str, Any] = {"url": "u", "count": 1, "ramp": 1, "duration": 1}
            LoadOptions(**(base | bad))


def test_the_cli_refuses_bad_load_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["sim", "load", "--url", "ws://127.0.0.1:1/ocpp", "--count", "0", "--duration", "1"])
        == 2
    )
    assert "count must be at least 1" in capsys.readouterr().err


async def test_fifty_chargers_for_three_seconds(tmp_path: Path) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}"
    async with running_gateway(db) as gw:
        lines: list[str] = []
        opts = LoadOptions(
            url=f"ws://127.0.0.1:{gw.ocpp_port}/ocpp",
            count=50,
            ramp=100,
            duration=3,
            charging_share=0.5,
            meter_interval=0.5,
            charge_seconds=1.0,
            idle_seconds=0.3,
            report_every=1.0,
        )
        report = await run_load(opts, lines.append)
        stats = report.stats
        assert report.chargers_connected_once == 50 and report.connected_max == 50
        assert report.charging == 25
        assert stats.connect_failures == 0 and stats.error_count == 0, stats.errors
        assert stats.calls_sent - stats.call_results <= 50  # at most one in flight each
        p = report.percentiles()
        assert p["p50"] is not None and p["p95"] is not None and p["p99"] is not None
        assert p["p50"] <= p["p95"] <= p["p99"]
        assert {
            "BootNotification",
            "StatusNotification",
            "StartTransaction",
            "MeterValues",
            "StopTransaction",
        } <= set(stats.latency_by_action)
        assert lines[0].startswith("load: 50 chargers (25 charging) at 100/s for 3 s")
        assert sum(line.startswith("t=") for line in lines) >= 2
        assert any(line.startswith("latency (CALL to answer): p50") for line in lines)
        figures = report_dict(report)
        assert figures["connected_once"] == 50 and figures["messages"] == report.messages > 0
        # The gateway saw 50 piles and their charges, and sees them leave.
        async with api_client(gw) as api:
            for _ in range(100):
                await flushed(gw)
                listed = (await api.get("/api/piles", params={"limit": 1000})).json()
                if not any(p["online"] for p in listed["items"]):
                    break
                await asyncio.sleep(0.05)
            assert listed["total"] == 50
            assert not any(p["online"] for p in listed["items"])
            txs = (await api.get("/api/transactions", params={"limit": 1000})).json()
        assert {t["pile_id"] for t in txs} <= {p["pile_id"] for p in listed["items"]}
        assert len({t["pile_id"] for t in txs}) == 25
