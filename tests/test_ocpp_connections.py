"""Handshake, presence, errors and limits over real WebSockets."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from gateway.app import Gateway
from tests.support.gateway import api_client, flushed, latest_presence, running_gateway
from tests.support.ocpp_client import ChargePoint, OcppError, now_iso, raw_handshake

AC = "44200000010000100001"
DC = "44030800010000200005"


@pytest.fixture
async def gw(database_url: str) -> AsyncIterator[Gateway]:
    async with running_gateway(database_url) as g:
        yield g


async def refused(port: int, pile_id: str, **kw: Any) -> tuple[int, str]:
    with pytest.raises(InvalidStatus) as exc:
        await ChargePoint.connect(port, pile_id, **kw)
    response = exc.value.response
    return response.status_code, response.body.decode()


async def metric(gw: Gateway, name: str) -> str:
    async with api_client(gw) as api:
        text = (await api.get("/metrics")).text
    return "\n".join(line for line in text.splitlines() if line.startswith(name))


# --- handshake -----------------------------------------------------------------------
async def test_invalid_pile_ids_are_refused_before_the_upgrade(gw: Gateway) -> None:
    status, body = await refused(gw.ocpp_port, "4420000001100001")
    assert status == 400 and "16 digits" in body and "[rule: length]" in body
    status, body = await refused(gw.ocpp_port, "31010400050000500011")
    assert status == 400 and "kind code `05`" in body
    status, body = await refused(gw.ocpp_port, "3101%200400%200500%200050%200011")
    assert status == 400 and "spaces" in body
    status, body = await refused(gw.ocpp_port, AC, path_prefix="/elsewhere")
    assert status == 404 and "/ocpp/{pileId}" in body
    counted = await metric(gw, "pilegate_handshake_refusals_total")
    assert 'reason="invalid_pile_id:length"' in counted
    assert 'reason="invalid_pile_id:kind_unknown"' in counted
    assert 'reason="invalid_pile_id:contains_spaces"' in counted
    rejections = await metric(gw, "pilegate_pileid_rejections_total")
    assert 'rule="length",source="ocpp"' in rejections


async def test_subprotocol_must_be_offered(gw: Gateway) -> None:
    status, body = await refused(gw.ocpp_port, AC, subprotocols=[])
    assert status == 400 and "ocpp1.6" in body and "none" in body
    status, body = await refused(gw.ocpp_port, AC, subprotocols=["ocpp2.0"])
    assert status == 400 and "ocpp2.0" in body and "pilegate speaks: ocpp1.6" in body
    cp = await ChargePoint.connect(gw.ocpp_port, AC, subprotocols=["ocpp2.0", "ocpp1.6"])
    assert cp.ws.subprotocol == "ocpp1.6"
    await cp.close()


async def test_known_registration_policy(database_url: str) -> None:
    async with running_gateway(database_url, registration_policy="known") as gw:
        status, body = await refused(gw.ocpp_port, AC)
        assert status == 404 and "not registered" in body
        async with api_client(gw) as api:
            assert (await api.post("/api/piles", json={"pile_id": AC})).status_code == 201
        cp = await ChargePoint.connect(gw.ocpp_port, AC)
        assert (await cp.boot())["status"] == "Accepted"
        await cp.close()


async def test_basic_auth_security_profile_1(database_url: str) -> None:
    async with running_gateway(database_url, basic_auth_required=True) as gw:
        async with api_client(gw) as api:
            await api.post("/api/piles", json={"pile_id": AC})
            short = await api.put(f"/api/piles/{AC}/password", json={"password": "short"})
            assert short.status_code == 422
            ok = await api.put(
                f"/api/piles/{AC}/password", json={"password": "0123456789abcdefXYZ"}
            )
            assert ok.status_code == 204
        status, _ = await refused(gw.ocpp_port, AC)
        assert status == 401
        status, _ = await refused(gw.ocpp_port, AC, password="wrong-password-123")
        assert status == 401
        status, _ = await refused(gw.ocpp_port, AC, password="0123456789abcdefXYZ", user=DC)
        assert status == 401
        status, _ = await refused(gw.ocpp_port, DC, password="0123456789abcdefXYZ")
        assert status == 401  # no password set for that pile
        cp = await ChargePoint.connect(gw.ocpp_port, AC, password="0123456789abcdefXYZ")
        assert (await cp.boot())["status"] == "Accepted"
        await cp.close()
        counted = await metric(gw, "pilegate_handshake_refusals_total")
        assert 'reason="auth_missing"} 1.0' in counted
        assert 'reason="auth_failed"} 3.0' in counted


# --- duplicate connections --------------------------------------------------------------
async def test_newest_connection_wins_and_old_one_cannot_interfere(gw: Gateway) -> None:
    old = await ChargePoint.connect(gw.ocpp_port, AC)
    await old.boot()
    new = await ChargePoint.connect(gw.ocpp_port, AC)
    await old.wait_closed()
    assert old.ws.close_code == 1000 and old.ws.close_reason == "replaced"
    assert (await new.call("Heartbeat", {}))["currentTime"]
    await flushed(gw)
    async with api_client(gw) as api:
        pile = (await api.get(f"/api/piles/{AC}")).json()
        events = [
            (e["online"], e["reason"])
            for e in reversed((await api.get(f"/api/piles/{AC}/events")).json())
        ]
        assert pile["online"] is True
        assert pile["presence"]["conn_id"] == gw.services.registry.get(AC).conn_id  # type: ignore[union-attr]
        assert events == [(True, "connected"), (False, "replaced"), (True, "connected")]
    await new.close()


async def test_duplicate_connection_race(gw: Gateway) -> None:
    """Many connections of one pile at once: exactly one survives, the pile is
    online, and the presence history alternates cleanly."""
    results = await asyncio.gather(
        *(ChargePoint.connect(gw.ocpp_port, DC) for _ in range(8)), return_exceptions=True
    )
    cps = [r for r in results if isinstance(r, ChargePoint)]
    assert len(cps) == 8
    await asyncio.sleep(0.3)
    alive = [cp for cp in cps if cp.ws.close_code is None]
    assert len(alive) == 1
    # the losers' late frames change nothing
    for cp in cps:
        if cp is not alive[0]:
            assert cp.ws.close_reason == "replaced"
    assert (await alive[0].call("Heartbeat", {}))["currentTime"]
    await flushed(gw)
    async with api_client(gw) as api:
        events = list(reversed((await api.get(f"/api/piles/{DC}/events")).json()))
        pile = (await api.get(f"/api/piles/{DC}")).json()
    online = [e["online"] for e in events]
    assert online == [True, False] * 7 + [True]
    assert {e["reason"] for e in events if not e["online"]} == {"replaced"}
    assert pile["online"] is True
    await alive[0].close()
    last = await latest_presence(gw, DC, "closed_clean")
    assert last["online"] is False


async def test_replaced_connection_frames_are_ignored(gw: Gateway) -> None:
    old = await ChargePoint.connect(gw.ocpp_port, AC)
    old_conn = gw.services.registry.get(AC)  # type: ignore[union-attr]
    new = await ChargePoint.connect(gw.ocpp_port, AC)
    assert old_conn is not None and old_conn.replaced  # type: ignore[attr-defined]
    # The old socket may still deliver a frame before its close completes:
    with pytest.raises((ConnectionClosed, asyncio.TimeoutError, ConnectionError)):
        await old.call(
            "StatusNotification",
            {"connectorId": 1, "errorCode": "NoError", "status": "Faulted"},
            timeout=1,
        )
    await flushed(gw)
    async with api_client(gw) as api:
        guns = (await api.get(f"/api/piles/{AC}")).json()["guns"]
    assert guns == []
    await new.close()


# --- presence ------------------------------------------------------------------------------
async def test_half_open_link_detected_within_the_configured_time(database_url: str) -> None:
    async with running_gateway(database_url, ping_interval=1, pong_timeout=1) as gw:
        policy = gw.services.tracker.policy  # type: ignore[union-attr]
        bound = policy.detection_bound(60, tick_interval=gw._tick_period())
        sock, response = await raw_handshake(gw.ocpp_port, AC)
        assert response.startswith(b"HTTP/1.1 101")
        silent_since = time.monotonic()
        async with api_client(gw) as api:
            deadline = silent_since + bound + 5
            while time.monotonic() < deadline:
                await flushed(gw)
                pile = (await api.get(f"/api/piles/{AC}")).json()
                if not pile["online"] and pile["last_seen"]:
                    break
                await asyncio.sleep(0.1)
            detected_after = time.monotonic() - silent_since
            events = (await api.get(f"/api/piles/{AC}/events")).json()
        sock.close()
        assert (events[0]["online"], events[0]["reason"]) == (False, "ping_timeout")
        # the bound is the configured one; 2 s for polling and a loaded CI box
        assert detected_after <= bound + 2.0, (detected_after, bound)
        assert 'reason="ping_timeout"' in await metric(gw, "pilegate_dead_links_total")


async def test_heartbeat_watchdog_when_pongs_still_come(database_url: str) -> None:
    """A hung charger application on a live TCP stack answers pings but sends
    nothing: the heartbeat watchdog declares it offline."""
    async with running_gateway(
        database_url,
        ping_interval=0.5,
        pong_timeout=1,
        heartbeat_interval=5,
        heartbeat_multiple=1.5,
        watchdog_min_silence=0,
    ) as gw:
        cp = await ChargePoint.connect(gw.ocpp_port, DC)
        await cp.boot()
        await cp.wait_closed(timeout=20)
        await latest_presence(gw, DC, "heartbeat_timeout")


async def test_uptime_and_connection_history(gw: Gateway) -> None:
    cp = await ChargePoint.connect(gw.ocpp_port, AC)
    await asyncio.sleep(0.3)
    await cp.close()
    cp = await ChargePoint.connect(gw.ocpp_port, AC)
    await flushed(gw)
    async with api_client(gw) as api:
        up = (await api.get(f"/api/piles/{AC}/uptime", params={"hours": 1})).json()
    assert [i["start_reason"] for i in up["intervals"]] == ["connected", "connected"]
    assert up["intervals"][0]["end_reason"] == "closed_clean" and up["intervals"][1]["end"] is None
    assert 0 < up["uptime_ratio"] < 0.01 and up["online_seconds"] >= 0.3
    await cp.close()


# --- errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("frame", "code", "detail_key"),
    [
        ('[2, "1", "Heartbeat", {}', "FormationViolation", None),
        ('{"not": "an array"}', "FormationViolation", None),
        (
            '[2, "2", "BootNotification", {"chargePointVendor": "DLH"}]',
            "OccurenceConstraintViolation",
            "chargePointModel",
        ),
        (
            '[2, "3", "StatusNotification", {"connectorId": "one", "errorCode": "NoError", '
            '"status": "Available"}]',
            "TypeConstraintViolation",
            "connectorId",
        ),
        (
            '[2, "4", "StatusNotification", {"connectorId": 1, "errorCode": "NoError", '
            '"status": "Sleeping"}]',
            "PropertyConstraintViolation",
            "status",
        ),
        ('[2, "5", "FlyToTheMoon", {}]', "NotImplemented", None),
        ('[2, "6", "Reset", {"type": "Hard"}]', "NotSupported", None),
        ('[2, "7", "Heartbeat", {"extra": 1}]', "FormationViolation", "extra"),
    ],
)
async def test_callerrors_name_the_offending_field(
    gw: Gateway, frame: str, code: str, detail_key: str | None
) -> None:
    cp = await ChargePoint.connect(gw.ocpp_port, AC)
    await cp.send_raw(frame)
    answer = await cp.next_raw()
    assert answer[0] == 4 and answer[2] == code, answer
    if detail_key is not None:
        assert detail_key in json.dumps(answer[4])
    # the connection stays up
    assert (await cp.call("Heartbeat", {}))["currentTime"]
    await cp.close()


async def test_wrong_message_type_id(gw: Gateway) -> None:
    cp = await ChargePoint.connect(gw.ocpp_port, AC)
    await cp.send_raw('[7, "9", "Heartbeat", {}]')
    await cp.send_raw('[2, 9, "Heartbeat", {}]')
    answer = await cp.next_raw()
    assert answer[2] in ("ProtocolError", "FormationViolation")
    assert (await cp.call("Heartbeat", {}))["currentTime"]
    await cp.close()


async def test_too_many_bad_messages_in_a_row_disconnect(database_url: str) -> None:
    async with running_gateway(database_url, ocpp_max_bad_messages=3) as gw:
        cp = await ChargePoint.connect(gw.ocpp_port, AC)
        for i in range(2):
            await cp.send_raw(f'[2, "b{i}", "Nope", {{}}]')
        assert (await cp.call("Heartbeat", {}))["currentTime"]  # resets the count
        for _ in range(3):
            await cp.send_raw("not json")
        await cp.wait_closed()
        assert cp.ws.close_code == 1008
        await latest_presence(gw, AC, "bad_messages")


async def test_lenient_model_processes_out_of_spec_fields(database_url: str) -> None:
    async with running_gateway(database_url, lenient_models=["OLDFW"]) as gw:
        cp = await ChargePoint.connect(gw.ocpp_port, AC)
        await cp.boot(model="OLDFW")
        # 'Sleeping' is not an OCPP 1.6 ChargePointStatus
        assert (
            await cp.call(
                "StatusNotification",
                {"connectorId": 1, "errorCode": "NoError", "status": "Sleeping"},
            )
            == {}
        )
        with pytest.raises(OcppError) as exc:  # still not a formation error we can read
            await cp.call("StatusNotification", {"errorCode": "NoError"})
        assert exc.value.code == "FormationViolation"
        await cp.close()
        strict = await ChargePoint.connect(gw.ocpp_port, DC)
        await strict.boot(model="XD120")
        with pytest.raises(OcppError):
            await strict.call(
                "StatusNotification",
                {"connectorId": 1, "errorCode": "NoError", "status": "Sleeping"},
            )
        await strict.close()


async def test_message_size_limit(database_url: str) -> None:
    async with running_gateway(database_url, ocpp_max_message_size=2048) as gw:
        cp = await ChargePoint.connect(gw.ocpp_port, AC)
        await cp.send_raw(
            json.dumps([2, "big", "DataTransfer", {"vendorId": "x", "data": "y" * 4096}])
        )
        await cp.wait_closed()
        assert cp.ws.close_code == 1009


# --- boot ------------------------------------------------------------------------------------
async def test_boot_storm_gets_pending_with_random_retry(database_url: str) -> None:
    async with running_gateway(
        database_url, boot_rate_limit=2, boot_retry_min=5, boot_retry_max=9
    ) as gw:
        cps = [
            await ChargePoint.connect(gw.ocpp_port, f"4420000001000010{i:04d}") for i in range(1, 7)
        ]
        replies = await asyncio.gather(*(cp.boot() for cp in cps))
        statuses = [r["status"] for r in replies]
        assert statuses.count("Accepted") >= 2 and "Pending" in statuses
        assert all(5 <= r["interval"] <= 9 for r in replies if r["status"] == "Pending")
        for cp in cps:
            await cp.close()


async def test_kind_mismatch_flagged_and_rejected(database_url: str) -> None:
    async with running_gateway(database_url, model_kinds={"XD120": "DC", "XD32E": "AC"}) as gw:
        cp = await ChargePoint.connect(gw.ocpp_port, AC)  # AC pile ID
        assert (await cp.boot(model="XD120"))["status"] == "Accepted"
        await flushed(gw)
        async with api_client(gw) as api:
            pile = (await api.get(f"/api/piles/{AC}")).json()
        assert pile["kind"] == "AC" and pile["kind_mismatch"] is True
        assert pile["kind_mismatch_evidence"][0]["reported_kind"] == "DC"
        assert 'source="model_kinds"' in await metric(gw, "pilegate_kind_mismatches_total")
        await cp.close()
    async with running_gateway(
        database_url, model_kinds={"XD120": "DC"}, kind_policy="reject"
    ) as gw:
        cp = await ChargePoint.connect(gw.ocpp_port, AC)
        assert (await cp.boot(model="XD120"))["status"] == "Rejected"
        await cp.close()


async def test_soc_on_an_ac_pile_is_flagged(gw: Gateway) -> None:
    cp = await ChargePoint.connect(gw.ocpp_port, AC)
    await cp.call(
        "MeterValues",
        {
            "connectorId": 1,
            "meterValue": [
                {
                    "timestamp": now_iso(),
                    "sampledValue": [{"value": "55", "measurand": "SoC", "unit": "Percent"}],
                }
            ],
        },
    )
    await flushed(gw)
    async with api_client(gw) as api:
        pile = (await api.get(f"/api/piles/{AC}")).json()
    assert pile["kind_mismatch"] is True
    assert pile["kind_mismatch_evidence"][0]["measurands"] == ["SoC"]
    await cp.close()


# --- shutdown --------------------------------------------------------------------------------
async def test_shutdown_closes_chargers_with_1001_and_records_it(database_url: str) -> None:
    async with running_gateway(database_url) as gw:
        cp = await ChargePoint.connect(gw.ocpp_port, AC)
        await cp.boot()
        port = gw.api_port
    await cp.wait_closed()
    assert cp.ws.close_code == 1001
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as c:
            await c.get(f"http://127.0.0.1:{port}/healthz")
    async with running_gateway(database_url) as gw2, api_client(gw2) as api:
        events = (await api.get(f"/api/piles/{AC}/events")).json()
        pile = (await api.get(f"/api/piles/{AC}")).json()
    assert events[0]["reason"] == "gateway_shutdown" and pile["online"] is False


async def test_kind_probe_through_get_configuration(database_url: str) -> None:
    async with running_gateway(
        database_url, kind_config_keys={"ConnectorType": {"GBT-DC": "DC", "GBT-AC": "AC"}}
    ) as gw:
        cp = await ChargePoint.connect(gw.ocpp_port, AC)
        answered = asyncio.Event()

        def config(p: dict[str, Any]) -> dict[str, Any]:
            answered.set()
            return {
                "configurationKey": [{"key": "ConnectorType", "readonly": True, "value": "GBT-DC"}]
            }

        cp.handlers["GetConfiguration"] = config
        await cp.boot()
        await asyncio.wait_for(answered.wait(), 10)
        assert cp.received_calls == [("GetConfiguration", {"key": ["ConnectorType"]})]
        async with api_client(gw) as api:
            deadline = time.monotonic() + 10
            while True:
                await flushed(gw)
                pile = (await api.get(f"/api/piles/{AC}")).json()
                if pile["kind_mismatch"] or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
        assert pile["kind_mismatch"] is True
        assert pile["kind_mismatch_evidence"][0]["source"] == "get_configuration"
        await cp.close()


async def test_rejected_boot_blocks_other_messages_and_evidence_accumulates(
    database_url: str,
) -> None:
    async with running_gateway(
        database_url, model_kinds={"XD120": "DC"}, kind_policy="reject"
    ) as gw:
        cp = await ChargePoint.connect(gw.ocpp_port, AC)
        await cp.call(
            "MeterValues",
            {
                "connectorId": 1,
                "meterValue": [
                    {"timestamp": now_iso(), "sampledValue": [{"value": "55", "measurand": "SoC"}]}
                ],
            },
        )
        assert (await cp.boot(model="XD120"))["status"] == "Rejected"
        with pytest.raises(OcppError) as exc:
            await cp.call("Heartbeat", {})
        assert exc.value.code == "SecurityError" and "rejected" in exc.value.description
        assert (await cp.boot(model="XD32E"))["status"] == "Accepted"  # fixed config
        assert (await cp.call("Heartbeat", {}))["currentTime"]
        await flushed(gw)
        async with api_client(gw) as api:
            pile = (await api.get(f"/api/piles/{AC}")).json()
            sources = [e["source"] for e in pile["kind_mismatch_evidence"]]
            assert sources == ["meter_values", "model_kinds"] and pile["model"] == "XD32E"
            assert (await api.delete(f"/api/piles/{AC}/kind-mismatch")).status_code == 204
            cleared = (await api.get(f"/api/piles/{AC}")).json()
        assert cleared["kind_mismatch"] is False and cleared["kind_mismatch_evidence"] is None
        await cp.close()


async def test_refused_handshakes_register_nothing(gw: Gateway) -> None:
    status, _ = await refused(gw.ocpp_port, AC, subprotocols=[])
    assert status == 400
    async with api_client(gw) as api:
        assert (await api.get("/api/piles")).json()["total"] == 0
        await api.get(f"/api/piles/{AC}")


async def test_subprotocol_optional_when_configured(database_url: str) -> None:
    async with running_gateway(database_url, ocpp_require_subprotocol=False) as gw:
        cp = await ChargePoint.connect(gw.ocpp_port, AC, subprotocols=[])
        assert cp.ws.subprotocol is None
        assert (await cp.boot())["status"] == "Accepted"
        await cp.close()
