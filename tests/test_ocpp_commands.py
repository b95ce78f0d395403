"""Commands from the ops API to chargers, end to end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.ocpp.connection import OcppConnection
from tests.support.gateway import api_client, flushed, running_gateway
from tests.support.ocpp_client import ChargePoint, OcppError, now_iso

AC = "44200000010000100001"


@pytest.fixture
async def gw(database_url: str) -> AsyncIterator[Gateway]:
    async with running_gateway(database_url, command_timeout=2) as g:
        yield g


async def test_remote_start_is_answered_and_recorded_as_remote(gw: Gateway) -> None:
    cp = await ChargePoint.connect(gw.ocpp_port, AC)
    cp.handlers["RemoteStartTransaction"] = lambda p: {"status": "Accepted"}
    async with api_client(gw) as api:
        r = await api.post(
            f"/api/piles/{AC}/commands/RemoteStartTransaction",
            json={"payload": {"idTag": "APPUSER01", "connectorId": 1}},
        )
        assert r.status_code == 200, r.text
        assert r.json() == {"action": "RemoteStartTransaction", "response": {"status": "Accepted"}}
        assert cp.received_calls == [
            ("RemoteStartTransaction", {"idTag": "APPUSER01", "connectorId": 1})
        ]
        start = await cp.call(
            "StartTransaction",
            {"connectorId": 1, "idTag": "APPUSER01", "meterStart": 0, "timestamp": now_iso()},
        )
        tx = (await api.get(f"/api/transactions/{start['transactionId']}")).json()
    assert tx["auth_method"] == "remote" and tx["offline"] is False
    await cp.close()


@pytest.mark.parametrize(
    ("action", "payload", "answer"),
    [
        ("RemoteStopTransaction", {"transactionId": 5}, {"status": "Accepted"}),
        ("Reset", {"type": "Soft"}, {"status": "Accepted"}),
        (
            "ChangeConfiguration",
            {"key": "HeartbeatInterval", "value": "30"},
            {"status": "Accepted"},
        ),
        (
            "GetConfiguration",
            {"key": ["HeartbeatInterval"]},
            {"configurationKey": [{"key": "HeartbeatInterval", "readonly": False, "value": "30"}]},
        ),
        (
            "TriggerMessage",
            {"requestedMessage": "StatusNotification", "connectorId": 1},
            {"status": "Accepted"},
        ),
        ("UnlockConnector", {"connectorId": 1}, {"status": "Unlocked"}),
        ("ChangeAvailability", {"connectorId": 0, "type": "Inoperative"}, {"status": "Scheduled"}),
        ("ClearCache", {}, {"status": "Accepted"}),
    ],
)
async def test_each_command_returns_the_chargers_answer(
    gw: Gateway, action: str, payload: dict[str, Any], answer: dict[str, Any]
) -> None:
    cp = await ChargePoint.connect(gw.ocpp_port, AC)
    cp.handlers[action] = lambda p: answer
    async with api_client(gw) as api:
        r = await api.post(f"/api/piles/{AC}/commands/{action}", json={"payload": payload})
    assert r.status_code == 200, r.text
    assert r.json()["response"] == answer
    assert cp.received_calls == [(action, payload)]
    await cp.close()


async def test_command_errors(gw: Gateway) -> None:
    cp = await ChargePoint.connect(gw.ocpp_port, AC)
    cp.handlers["Reset"] = lambda p: OcppError("InternalError", "relay stuck", {"relay": 2})

    async def never(p: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(60)
        return {}

    cp.handlers["ClearCache"] = never
    async with api_client(gw) as api:
        base = f"/api/piles/{AC}/commands"
        err = await api.post(f"{base}/Reset", json={"payload": {"type": "Hard"}})
        assert err.status_code == 502
        body = err.json()["error"]
        assert body["ocpp_error"] == "InternalError" and "relay stuck" in body["message"]
        slow = await api.post(f"{base}/ClearCache", json={"timeout": 0.5})
        assert slow.status_code == 504 and "did not answer" in slow.json()["error"]["message"]
        bad = await api.post(f"{base}/Reset", json={"payload": {"type": "Gentle"}})
        assert bad.status_code == 400 and bad.json()["error"]["details"]["field"] == "type"
        unknown = await api.post(f"{base}/LaunchRocket", json={})
        assert (
            unknown.status_code == 404
            and "RemoteStartTransaction" in unknown.json()["error"]["message"]
        )
        unknown_pile = await api.post(
            "/api/piles/44030800010000200005/commands/Reset", json={"payload": {"type": "Hard"}}
        )
        assert unknown_pile.status_code == 404
    await cp.close()


async def test_one_outstanding_call_per_charger(gw: Gateway) -> None:
    cp = await ChargePoint.connect(gw.ocpp_port, AC)
    in_flight = 0
    seen_max = 0

    async def slow(p: dict[str, Any]) -> dict[str, Any]:
        nonlocal in_flight, seen_max
        in_flight += 1
        seen_max = max(seen_max, in_flight)
        await asyncio.sleep(0.1)
        in_flight -= 1
        return {"status": "Accepted"}

    cp.handlers["ClearCache"] = slow
    async with api_client(gw) as api:
        replies = await asyncio.gather(
            *(api.post(f"/api/piles/{AC}/commands/ClearCache", json={}) for _ in range(5))
        )
    assert [r.status_code for r in replies] == [200] * 5
    assert seen_max == 1 and len(cp.received_calls) == 5
    await cp.close()


async def test_bounded_command_queue(database_url: str) -> None:
    async with running_gateway(database_url, command_queue_size=2, command_timeout=5) as gw:
        cp = await ChargePoint.connect(gw.ocpp_port, AC)
        release = asyncio.Event()

        async def held(p: dict[str, Any]) -> dict[str, Any]:
            await release.wait()
            return {"status": "Accepted"}

        cp.handlers["ClearCache"] = held
        async with api_client(gw) as api:
            tasks = [
                asyncio.create_task(api.post(f"/api/piles/{AC}/commands/ClearCache", json={}))
                for _ in range(3)
            ]
            # One in flight (at the charger), two waiting behind it: waited
            # for, not slept on (a fixed sleep failed on a loaded CI machine).
            assert gw.services is not None
            conn = gw.services.registry.get(AC)
            assert isinstance(conn, OcppConnection)
            for _ in range(500):
                gate = conn._gate
                if len(cp.received_calls) == 1 and gate is not None and gate.waiting == 2:
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("the three commands never queued up")
            full = await api.post(f"/api/piles/{AC}/commands/ClearCache", json={})
            assert full.status_code == 429
            release.set()
            assert [r.status_code for r in await asyncio.gather(*tasks)] == [200, 200, 200]
        await cp.close()


async def test_offline_pile_fails_at_once_or_queues_with_ttl(gw: Gateway) -> None:
    async with api_client(gw) as api:
        await api.post("/api/piles", json={"pile_id": AC})
        now = await api.post(f"/api/piles/{AC}/commands/Reset", json={"payload": {"type": "Soft"}})
        assert now.status_code == 409 and "offline" in now.json()["error"]["message"]
        bad = await api.post(
            f"/api/piles/{AC}/commands/Reset", json={"payload": {"type": "Nope"}, "queue_ttl": 60}
        )
        assert bad.status_code == 400
        queued = await api.post(
            f"/api/piles/{AC}/commands/Reset", json={"payload": {"type": "Soft"}, "queue_ttl": 60}
        )
        assert queued.status_code == 202 and queued.json()["status"] == "queued"
        expired = await api.post(f"/api/piles/{AC}/commands/ClearCache", json={"queue_ttl": 0.01})
        await asyncio.sleep(0.1)
        cmd_id = queued.json()["id"]
        cp = await ChargePoint.connect(gw.ocpp_port, AC)
        cp.handlers["Reset"] = lambda p: {"status": "Accepted"}
        cp.handlers["ClearCache"] = lambda p: {"status": "Accepted"}
        deadline = asyncio.get_running_loop().time() + 10
        while (await api.get(f"/api/commands/{cmd_id}")).json()["status"] != "answered":
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        done = (await api.get(f"/api/commands/{cmd_id}")).json()
        assert done["response"] == {"status": "Accepted"} and done["finished_at"]
        assert (await api.get(f"/api/commands/{expired.json()['id']}")).json()[
            "status"
        ] == "expired"
        assert [a for a, _ in cp.received_calls] == ["Reset"]
        assert (await api.get("/api/commands/999999")).status_code == 404
    await cp.close()


async def test_command_to_a_pile_that_drops_mid_call(gw: Gateway) -> None:
    cp = await ChargePoint.connect(gw.ocpp_port, AC)

    async def vanish(p: dict[str, Any]) -> dict[str, Any]:
        cp.abort()
        await asyncio.sleep(10)
        return {}

    cp.handlers["ClearCache"] = vanish
    async with api_client(gw) as api:
        r = await api.post(f"/api/piles/{AC}/commands/ClearCache", json={"timeout": 5})
    assert r.status_code == 409 and "disconnected" in r.json()["error"]["message"]
    await flushed(gw)


async def test_transaction_list_filters(gw: Gateway) -> None:
    cp = await ChargePoint.connect(gw.ocpp_port, AC)
    old = "2026-01-01T00:00:00Z"
    await cp.call(
        "StartTransaction", {"connectorId": 1, "idTag": "A", "meterStart": 0, "timestamp": old}
    )
    await cp.call(
        "StartTransaction",
        {"connectorId": 1, "idTag": "B", "meterStart": 0, "timestamp": now_iso(datetime.now(UTC))},
    )
    async with api_client(gw) as api:
        recent = (
            await api.get("/api/transactions", params={"pile": AC, "since": "2026-06-01T00:00:00Z"})
        ).json()
        assert [t["id_tag"] for t in recent] == ["B"]
        bad = await api.get("/api/transactions", params={"pile": "123"})
        assert bad.status_code == 400
        missing = await api.get("/api/transactions/424242")
        assert missing.status_code == 404
        csv_missing = await api.get(
            "/api/transactions/424242/meter-values", params={"format": "csv"}
        )
        assert csv_missing.status_code == 404
        bad_fmt = await api.get("/api/transactions/1/meter-values", params={"format": "xml"})
        assert bad_fmt.status_code == 422
    await cp.close()


async def test_expired_queued_commands_free_their_slot(database_url: str) -> None:
    async with running_gateway(database_url, command_queue_size=1) as gw, api_client(gw) as api:
        await api.post("/api/piles", json={"pile_id": AC})
        first = await api.post(f"/api/piles/{AC}/commands/ClearCache", json={"queue_ttl": 0.05})
        assert first.status_code == 202
        await asyncio.sleep(0.1)
        assert (await api.get(f"/api/commands/{first.json()['id']}")).json()["status"] == "expired"
        second = await api.post(f"/api/piles/{AC}/commands/ClearCache", json={"queue_ttl": 60})
        assert second.status_code == 202


async def test_other_piles_samples_do_not_join_a_curve(gw: Gateway) -> None:
    a = await ChargePoint.connect(gw.ocpp_port, AC)
    b = await ChargePoint.connect(gw.ocpp_port, "44030800010000200005")
    tx = (
        await a.call(
            "StartTransaction",
            {"connectorId": 1, "idTag": "A", "meterStart": 0, "timestamp": now_iso()},
        )
    )["transactionId"]
    sample = {"timestamp": now_iso(), "sampledValue": [{"value": "10"}]}
    await a.call("MeterValues", {"connectorId": 1, "transactionId": tx, "meterValue": [sample]})
    await b.call("MeterValues", {"connectorId": 1, "transactionId": tx, "meterValue": [sample]})
    await flushed(gw)
    async with api_client(gw) as api:
        samples = (await api.get(f"/api/transactions/{tx}/meter-values")).json()["samples"]
    assert len(samples) == 1
    await a.close()
    await b.close()
