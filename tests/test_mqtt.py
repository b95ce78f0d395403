"""Northbound events and commands over the real Mosquitto, and several
gateway nodes sharing PostgreSQL and the broker."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import aiomqtt
import httpx
import orjson

from gateway.events import PAYLOADS, Event, Presence
from tests.support.broker import SYSTEM_BROKER, Collector, free_port, private_broker, unique_prefix
from tests.support.gateway import TOKEN, api_client, flushed, running_gateway
from tests.support.ocpp_client import ChargePoint, now_iso

AC = "44200000010000100001"
DC = "44030800010000200005"


def validated(events: list[dict[str, Any]]) -> list[Event]:
    """Every event matches its published schema (envelope and data)."""
    out = []
    for raw in events:
        ev = Event.model_validate(raw)
        PAYLOADS[ev.type].model_validate(ev.data)
        out.append(ev)
    return out


async def scripted_charge(port: int, pile: str = AC) -> int:
    cp = await ChargePoint.connect(port, pile)
    await cp.boot()
    await cp.call(
        "StatusNotification",
        {"connectorId": 1, "errorCode": "NoError", "status": "Charging", "timestamp": now_iso()},
    )
    t0 = datetime.now(UTC).replace(microsecond=0)
    tx = (
        await cp.call(
            "StartTransaction",
            {"connectorId": 1, "idTag": "CARD1", "meterStart": 0, "timestamp": now_iso(t0)},
        )
    )["transactionId"]
    await cp.call(
        "MeterValues",
        {
            "connectorId": 1,
            "transactionId": tx,
            "meterValue": [
                {
                    "timestamp": now_iso(t0 + timedelta(minutes=1)),
                    "sampledValue": [
                        {
                            "value": "120",
                            "measurand": "Energy.Active.Import.Register",
                            "unit": "Wh",
                        },
                        {"value": "7200", "measurand": "Power.Active.Import", "unit": "W"},
                    ],
                }
            ],
        },
    )
    await cp.call(
        "StopTransaction",
        {"transactionId": tx, "meterStop": 240, "timestamp": now_iso(t0 + timedelta(minutes=2))},
    )
    await cp.close()
    return int(tx)


async def test_event_stream_of_a_scripted_charge(database_url: str) -> None:
    prefix = unique_prefix()
    async with Collector(SYSTEM_BROKER, f"{prefix}/#") as sub:
        async with running_gateway(
            database_url, mqtt_url=SYSTEM_BROKER, mqtt_topic_prefix=prefix
        ) as gw:
            tx = await scripted_charge(gw.ocpp_port)
            await sub.wait_for(lambda c: any(e["type"] == "pile.disconnected" for e in c.events()))
        events = validated(sub.events())
        assert [e.type for e in events] == [
            "pile.connected",
            "pile.boot",
            "gun.status",
            "transaction.started",
            "meter.samples",
            "transaction.stopped",
            "pile.disconnected",
        ]
        assert len({e.id for e in events}) == len(events)
        assert all(e.pile_id == AC and e.node_id == "node-1" for e in events)
        started = events[3].data
        assert started["transaction_id"] == tx and started["auth_method"] == "unknown"
        assert events[4].data["samples"][0]["value_num"] == 120
        assert events[5].data["energy_wh"] == 240
        assert events[6].data["reason"] == "closed_clean"
        topics = [t for t, _, _ in sub.messages]
        assert f"{prefix}/piles/{AC}/events/transaction.stopped" in topics
        presence = [
            (Presence.model_validate(p), retained)
            for t, p, retained in sub.messages
            if t == f"{prefix}/piles/{AC}/presence"
        ]
        assert [p.online for p, _ in presence] == [True, False]
    # retained: a late subscriber learns the current presence at once
    async with Collector(SYSTEM_BROKER, f"{prefix}/piles/{AC}/presence") as late:
        await late.wait_for(lambda c: len(c.messages) == 1)
        _topic, payload, retained = late.messages[0]
        assert retained and payload["online"] is False and payload["reason"] == "closed_clean"


async def test_broker_restart_loses_no_event(database_url: str) -> None:
    prefix = unique_prefix()
    async with (
        private_broker() as broker,
        running_gateway(database_url, mqtt_url=broker.url, mqtt_topic_prefix=prefix) as gw,
    ):
        assert gw.bridge is not None
        await asyncio.wait_for(gw.bridge.connected.wait(), 10)
        broker.stop()
        # the gateway keeps serving chargers while the broker is away
        await scripted_charge(gw.ocpp_port)
        await flushed(gw)
        await gw.bridge.refresh_backlog_metrics()
        async with api_client(gw) as api:
            metrics = (await api.get("/metrics")).text
        backlog = next(
            float(line.split()[1])
            for line in metrics.splitlines()
            if line.startswith("pilegate_outbox_backlog ")
        )
        assert backlog >= 7
        assert "pilegate_mqtt_connected 0.0" in metrics
        await broker.start()
        async with Collector(broker.url, f"{prefix}/#") as sub:
            await sub.wait_for(lambda c: len(c.events()) >= 7, timeout=60)
            events = validated(sub.events())
        assert [e.type for e in events][:7] == [
            "pile.connected",
            "pile.boot",
            "gun.status",
            "transaction.started",
            "meter.samples",
            "transaction.stopped",
            "pile.disconnected",
        ]
        await gw.bridge.refresh_backlog_metrics()
        assert gw.metrics.outbox_backlog._value.get() == 0


async def test_events_survive_a_gateway_restart(pg_url: str) -> None:
    """Events still in the outbox when the gateway stops are published by the
    next run of the same node."""
    prefix = unique_prefix()
    async with private_broker() as broker:
        async with running_gateway(pg_url, mqtt_url=broker.url, mqtt_topic_prefix=prefix) as gw:
            assert gw.bridge is not None
            await asyncio.wait_for(gw.bridge.connected.wait(), 10)
            broker.stop()
            await scripted_charge(gw.ocpp_port)
        await broker.start()
        async with (
            Collector(broker.url, f"{prefix}/#") as sub,
            running_gateway(pg_url, mqtt_url=broker.url, mqtt_topic_prefix=prefix),
        ):
            await sub.wait_for(lambda c: len(c.events()) >= 7, timeout=30)
        assert [e.type for e in validated(sub.events())][-1] == "pile.disconnected"


async def test_command_over_mqtt_with_response_topic(database_url: str) -> None:
    prefix = unique_prefix()
    async with running_gateway(
        database_url, mqtt_url=SYSTEM_BROKER, mqtt_topic_prefix=prefix
    ) as gw:
        assert gw.bridge is not None
        await asyncio.wait_for(gw.bridge.connected.wait(), 10)
        cp = await ChargePoint.connect(gw.ocpp_port, AC)
        cp.handlers["Reset"] = lambda p: {"status": "Accepted"}
        reply_topic = f"{prefix}/test/replies"
        async with Collector(SYSTEM_BROKER, reply_topic) as replies:
            async with aiomqtt.Client(
                "127.0.0.1", 1883, protocol=aiomqtt.ProtocolVersion.V5
            ) as client:
                for corr, pile, action, payload in [
                    ("ok", AC, "Reset", {"type": "Soft"}),
                    ("bad", AC, "Reset", {"type": "Gentle"}),
                    ("offline", DC, "Reset", {"type": "Soft"}),
                    ("unknown", AC, "LaunchRocket", {}),
                    ("badid", "4420000001100001", "Reset", {"type": "Soft"}),
                ]:
                    await client.publish(
                        f"{prefix}/piles/{pile}/commands/{action}",
                        orjson.dumps(
                            {
                                "payload": payload,
                                "correlation_id": corr,
                                "response_topic": reply_topic,
                            }
                        ),
                        qos=1,
                    )
            await replies.wait_for(lambda c: len(c.messages) == 5)
        answers = {p["correlation_id"]: p for _, p, _ in replies.messages}
        assert answers["ok"]["status"] == 200 and answers["ok"]["response"] == {
            "status": "Accepted"
        }
        assert (
            answers["bad"]["status"] == 400 and answers["bad"]["error"]["code"] == "invalid_payload"
        )
        assert answers["offline"]["status"] == 409
        assert answers["unknown"]["status"] == 404
        assert (
            answers["badid"]["status"] == 400
            and "16 digits" in answers["badid"]["error"]["message"]
        )
        await cp.close()


async def test_two_nodes_route_commands_and_take_over_piles(pg_url: str) -> None:
    prefix = unique_prefix()
    common = {"mqtt_url": SYSTEM_BROKER, "mqtt_topic_prefix": prefix}
    async with (
        running_gateway(pg_url, node_id="node-a", **common) as a,
        running_gateway(pg_url, node_id="node-b", **common) as b,
    ):
        for gw in (a, b):
            assert gw.bridge is not None
            await asyncio.wait_for(gw.bridge.connected.wait(), 10)
        cp = await ChargePoint.connect(a.ocpp_port, AC)
        cp.handlers["GetConfiguration"] = lambda p: {
            "configurationKey": [{"key": "HeartbeatInterval", "readonly": False, "value": "60"}]
        }
        await cp.boot()
        await flushed(a)
        async with api_client(b) as api:  # node B does not hold the pile
            r = await api.post(
                f"/api/piles/{AC}/commands/GetConfiguration",
                json={"payload": {"key": ["HeartbeatInterval"]}},
            )
            assert r.status_code == 200, r.text
            assert r.json()["response"]["configurationKey"][0]["value"] == "60"
            bad = await api.post(
                f"/api/piles/{AC}/commands/Reset", json={"payload": {"type": "Gentle"}}
            )
            assert bad.status_code == 400  # the same error as on node A
            assert (await api.get(f"/api/piles/{AC}")).json()["node_id"] == "node-a"
        assert cp.received_calls[0][0] == "GetConfiguration"

        # the charger's link to A dies silently and it reconnects through B
        cp2 = await ChargePoint.connect(b.ocpp_port, AC)
        await cp.wait_closed(timeout=10)
        assert cp.ws.close_reason == "replaced"
        assert (await cp2.call("Heartbeat", {}))["currentTime"]
        deadline = time.monotonic() + 10
        async with api_client(a) as api:
            while True:
                await flushed(a)
                await flushed(b)
                pile = (await api.get(f"/api/piles/{AC}")).json()
                if pile["online"] and pile["node_id"] == "node-b":
                    break
                assert time.monotonic() < deadline, pile
                await asyncio.sleep(0.1)
        await cp2.close()


def _spawn_node(pg_url: str, node_id: str, prefix: str) -> tuple[subprocess.Popen[bytes], int, int]:
    ocpp_port, api_port = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PILEGATE_")},
        "PILEGATE_DATABASE_URL": pg_url,
        "PILEGATE_NODE_ID": node_id,
        "PILEGATE_OCPP_HOST": "127.0.0.1",
        "PILEGATE_OCPP_PORT": str(ocpp_port),
        "PILEGATE_API_PORT": str(api_port),
        "PILEGATE_API_TOKEN": TOKEN,
        "PILEGATE_MQTT_URL": SYSTEM_BROKER,
        "PILEGATE_MQTT_TOPIC_PREFIX": prefix,
        "PILEGATE_LOG_FORMAT": "json",
        "PILEGATE_LOG_LEVEL": "warning",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, ocpp_port, api_port


async def test_a_killed_node_has_its_piles_marked_offline(pg_url: str) -> None:
    prefix = unique_prefix()
    proc, ocpp_port, api_port = _spawn_node(pg_url, "node-doomed", prefix)
    try:
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient() as http:
            while True:
                try:
                    if (await http.get(f"http://127.0.0.1:{api_port}/readyz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline and proc.poll() is None
                await asyncio.sleep(0.1)
        cp = await ChargePoint.connect(ocpp_port, DC)
        await cp.boot()
        async with running_gateway(
            pg_url,
            node_id="node-survivor",
            node_lease_seconds=2,
            mqtt_url=SYSTEM_BROKER,
            mqtt_topic_prefix=prefix,
        ) as b:
            async with api_client(b) as api:
                while not (await api.get(f"/api/piles/{DC}")).json()["online"]:
                    await asyncio.sleep(0.1)
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                killed_at = time.monotonic()
                while (await api.get(f"/api/piles/{DC}")).json()["online"]:
                    # the dead node's lease is the default 15 s
                    assert time.monotonic() - killed_at < 40
                    await asyncio.sleep(0.2)
                events = (await api.get(f"/api/piles/{DC}/events")).json()
            assert (events[0]["online"], events[0]["reason"]) == (False, "node_lost")
            assert events[0]["node_id"] == "node-survivor"
    finally:
        if proc.poll() is None:
            proc.kill()
