"""The direct receive path (gateway/ocpp/wsconn.py, OcppConnection._deliver):
hot messages answered inside data_received, everything else by the receive
task in order, websockets' own path for what the direct path does not take."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import select

from gateway.app import Gateway
from gateway.ocpp import handlers as handlers_module
from gateway.ocpp.connection import INBOX_HIGH, OcppConnection
from gateway.ocpp.wsconn import OcppServerConnection
from gateway.storage.meter import samples_of
from gateway.storage.models import MeterReading
from tests.support.gateway import flushed, running_gateway
from tests.support.ocpp_client import ChargePoint, now_iso

AC = "44200000010000100001"


@contextlib.asynccontextmanager
async def booted_charger(database_url: str) -> AsyncIterator[tuple[Gateway, ChargePoint]]:
    """A gateway and one booted charger, closed at the end."""
    async with running_gateway(database_url) as gw:
        cp = await ChargePoint.connect(gw.ocpp_port, AC)
        try:
            await cp.boot()
            yield gw, cp
        finally:
            await cp.close()


def connection(gw: Gateway) -> OcppConnection:
    assert gw.services is not None
    conn = gw.services.registry.get(AC)
    assert isinstance(conn, OcppConnection)
    return conn


@pytest.fixture
def fast_count(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Actions answered by the direct path (``_fast`` returned True)."""
    answered: list[str] = []
    original = OcppConnection._fast

    def counting(self: OcppConnection, raw: str, now: datetime) -> bool:
        done = original(self, raw, now)
        if done:
            answered.append(json.loads(raw)[2])
        return done

    monkeypatch.setattr(OcppConnection, "_fast", counting)
    return answered


def status(n: int = 1, state: str = "Available") -> dict[str, Any]:
    return {"connectorId": n, "errorCode": "NoError", "status": state, "timestamp": now_iso()}


def meter(wh: float) -> dict[str, Any]:
    return {
        "connectorId": 1,
        "meterValue": [
            {
                "timestamp": now_iso(),
                "sampledValue": [
                    {"value": f"{wh:.1f}", "measurand": "Energy.Active.Import.Register"}
                ],
            }
        ],
    }


async def stored_meter(gw: Gateway) -> tuple[int, list[tuple[str, int, str, str]]]:
    """The number of stored meter readings (MeterValue elements) and their
    sampled values (pile, connector, measurand, value)."""
    assert gw.store is not None
    async with gw.store.sessions() as s:
        rows = (
            await s.execute(
                select(MeterReading.pile_id, MeterReading.connector_id, MeterReading.samples)
            )
        ).all()
    samples = [
        (pile_id, connector, x.measurand, x.value)
        for pile_id, connector, text in rows
        for x in samples_of(text)
    ]
    return len(rows), samples


async def replies(cp: ChargePoint, n: int) -> list[Any]:
    return [await cp.next_raw() for _ in range(n)]


async def test_hot_messages_are_answered_directly_and_stored(
    database_url: str, fast_count: list[str]
) -> None:
    async with booted_charger(database_url) as (gw, cp):
        conn = connection(gw)
        assert isinstance(conn.ws, OcppServerConnection) and conn.ws.sink is not None
        assert "currentTime" in await cp.call("Heartbeat", {})
        assert await cp.call("StatusNotification", status(1, "Preparing")) == {}
        assert await cp.call("MeterValues", meter(1234.5)) == {}
        assert fast_count == ["Heartbeat", "StatusNotification", "MeterValues"]
        # A schema violation is not for the direct path: the receive task
        # answers it with the same CALLERROR as ever.
        await cp.send_raw(json.dumps([2, "bad", "StatusNotification", {"connectorId": 1}]))
        answer = (await replies(cp, 5))[-1]  # boot, three answers, then this one
        assert answer[:3] == [4, "bad", "OccurenceConstraintViolation"]  # OCPP 1.6 spelling
        assert fast_count == ["Heartbeat", "StatusNotification", "MeterValues"]
        await flushed(gw)
        assert gw.store is not None
        guns = await gw.store.guns(AC)
        assert [(g.connector_id, g.status) for g in guns] == [(1, "Preparing")]
        assert await stored_meter(gw) == (1, [(AC, 1, "Energy.Active.Import.Register", "1234.5")])


async def test_frames_behind_a_waiting_one_keep_their_order(
    database_url: str, fast_count: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    release = asyncio.Event()
    original = handlers_module.HANDLERS["Authorize"]

    async def held(self: Any, p: dict[str, Any]) -> dict[str, Any]:
        await release.wait()
        return await original(self, p)

    monkeypatch.setitem(handlers_module.HANDLERS, "Authorize", held)
    async with booted_charger(database_url) as (gw, cp):
        await replies(cp, 1)  # the boot's answer, also seen by next_raw
        conn = connection(gw)
        count = INBOX_HIGH + 24
        await cp.send_raw(json.dumps([2, "auth", "Authorize", {"idTag": "NOBODY"}]))
        for i in range(count):
            await cp.send_raw(json.dumps([2, f"hb{i}", "Heartbeat", {}]))
        # The receive task waits on Authorize; the heartbeats queue behind it
        # and reading stops once INBOX_HIGH of them wait.
        for _ in range(500):
            if conn._reading_paused:
                break
            await asyncio.sleep(0.01)
        assert conn._reading_paused and not conn.ws.transport.is_reading()
        release.set()
        got = await replies(cp, count + 1)
        assert [m[1] for m in got] == ["auth"] + [f"hb{i}" for i in range(count)]
        assert got[0][2]["idTagInfo"]["status"] == "Invalid"
        assert fast_count == []  # none overtook the waiting frame
        assert not conn._reading_paused and conn.ws.transport.is_reading()
        assert conn._inbox is None
        # Idle again: the next heartbeat takes the direct path.
        await cp.call("Heartbeat", {})
        assert fast_count == ["Heartbeat"]


async def test_fragmented_message_hands_the_connection_back_to_websockets(
    database_url: str, fast_count: list[str]
) -> None:
    async with booted_charger(database_url) as (gw, cp):
        await replies(cp, 1)
        conn = connection(gw)
        text = json.dumps([2, "frag", "Heartbeat", {}])
        await cp.ws.send([text[:5], text[5:12], text[12:]])  # three fragments
        await cp.send_raw(json.dumps([2, "next", "StatusNotification", status()]))
        got = await replies(cp, 2)
        assert [m[:2] for m in got] == [[3, "frag"], [3, "next"]]
        assert conn.ws.sink is None and conn._recv_mode
        assert fast_count == []


async def test_binary_message_is_handled_by_websockets_path(
    database_url: str, fast_count: list[str]
) -> None:
    async with booted_charger(database_url) as (_gw, cp):
        await replies(cp, 1)
        await cp.send_raw(json.dumps([2, "bin", "Heartbeat", {}]).encode())
        await cp.send_raw(json.dumps([2, "txt", "Heartbeat", {}]))
        got = await replies(cp, 2)
        assert [m[:2] for m in got] == [[3, "bin"], [3, "txt"]]
        assert fast_count == []


async def test_text_that_is_not_utf8_closes_with_1007(database_url: str) -> None:
    async with booted_charger(database_url) as (_gw, cp):
        await cp.ws.send(b'[2,"x","Heartbeat",{"a":"\xff"}]', text=True)
        await cp.wait_closed()
        assert cp.ws.close_code == 1007


async def test_full_write_queue_sends_hot_messages_the_waiting_way(
    database_url: str, fast_count: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with booted_charger(database_url) as (gw, cp):
        assert gw.writer is not None
        monkeypatch.setattr(gw.writer, "try_put", lambda *ops: False)
        assert await cp.call("StatusNotification", status(2, "Faulted")) == {}
        assert await cp.call("MeterValues", meter(10.0)) == {}
        assert "currentTime" in await cp.call("Heartbeat", {})  # writes nothing
        assert fast_count == ["Heartbeat"]
        await flushed(gw)
        assert gw.store is not None
        assert [(g.connector_id, g.status) for g in await gw.store.guns(AC)] == [(2, "Faulted")]
        assert await stored_meter(gw) == (1, [(AC, 1, "Energy.Active.Import.Register", "10.0")])


async def test_direct_path_steps_aside_while_the_database_is_behind(
    database_url: str, fast_count: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with booted_charger(database_url) as (gw, cp):
        assert gw.writer is not None
        with monkeypatch.context() as m:
            m.setattr(type(gw.writer), "backlogged", property(lambda self: True))
            assert "currentTime" in await cp.call("Heartbeat", {})
            assert await cp.call("StatusNotification", status(1, "Available")) == {}
            assert fast_count == []
        assert "currentTime" in await cp.call("Heartbeat", {})
        assert fast_count == ["Heartbeat"]
