"""End-to-end charging over real WebSockets, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from gateway.app import Gateway
from gateway.storage.models import Gun, GunStatusEvent, MeterReading
from tests.support.gateway import api_client, flushed, running_gateway
from tests.support.ocpp_client import ChargePoint, now_iso

AC = "44200000010000100001"
DC = "44030800010000200005"


@pytest.fixture
async def gw(database_url: str) -> AsyncIterator[Gateway]:
    async with running_gateway(database_url) as g:
        yield g


async def put_token(gw: Gateway, id_tag: str, type_: str = "card", **extra: object) -> None:
    async with api_client(gw) as api:
        r = await api.put(f"/api/tokens/{id_tag}", json={"type": type_, **extra})
        assert r.status_code in (200, 201), r.text


def mv(ts: datetime, wh: float, *, soc: int | None = None, tx: int | None = None) -> dict:
    values = [
        {
            "value": f"{wh:.1f}",
            "measurand": "Energy.Active.Import.Register",
            "unit": "Wh",
            "context": "Sample.Periodic",
            "location": "Outlet",
        },
        {"value": "7000", "measurand": "Power.Active.Import", "unit": "W"},
        {"value": "32.0", "measurand": "Current.Import", "unit": "A", "phase": "L1"},
        {"value": "230.1", "measurand": "Voltage", "unit": "V", "phase": "L1-N"},
    ]
    if soc is not None:
        values.append({"value": str(soc), "measurand": "SoC", "unit": "Percent", "location": "EV"})
    return {"timestamp": now_iso(ts), "sampledValue": values}


async def test_full_charge_with_meter_values(gw: Gateway) -> None:
    await put_token(gw, "CARD0001")
    cp = await ChargePoint.connect(gw.ocpp_port, AC)
    await cp.boot()
    await cp.call(
        "StatusNotification",
        {"connectorId": 1, "errorCode": "NoError", "status": "Preparing", "timestamp": now_iso()},
    )
    auth = await cp.call("Authorize", {"idTag": "CARD0001"})
    assert auth["idTagInfo"]["status"] == "Accepted"
    t0 = datetime.now(UTC).replace(microsecond=0)
    start = await cp.call(
        "StartTransaction",
        {"connectorId": 1, "idTag": "CARD0001", "meterStart": 1000, "timestamp": now_iso(t0)},
    )
    tx = start["transactionId"]
    assert start["idTagInfo"]["status"] == "Accepted"
    for i in range(1, 4):
        await cp.call(
            "MeterValues",
            {
                "connectorId": 1,
                "transactionId": tx,
                "meterValue": [mv(t0 + timedelta(minutes=i), 1000 + 100 * i)],
            },
        )
    stop = await cp.call(
        "StopTransaction",
        {
            "transactionId": tx,
            "meterStop": 1400,
            "timestamp": now_iso(t0 + timedelta(minutes=4)),
            "idTag": "CARD0001",
            "reason": "Local",
            "transactionData": [mv(t0 + timedelta(minutes=4), 1400)],
        },
    )
    assert stop["idTagInfo"]["status"] == "Accepted"
    await flushed(gw)
    async with api_client(gw) as api:
        t = (await api.get(f"/api/transactions/{tx}")).json()
        assert (t["energy_wh"], t["auth_method"], t["offline"], t["status"]) == (
            400,
            "card",
            False,
            "completed",
        )
        assert t["stop_reason"] == "Local"
        curve = (await api.get(f"/api/transactions/{tx}/meter-values")).json()["samples"]
        energy = [
            s["value_num"] for s in curve if s["measurand"] == "Energy.Active.Import.Register"
        ]
        assert energy == [1100, 1200, 1300, 1400]
        phases = {(s["measurand"], s["phase"]) for s in curve}
        assert ("Voltage", "L1-N") in phases and ("Current.Import", "L1") in phases
        assert len(curve) == 16
        text = (
            await api.get(f"/api/transactions/{tx}/meter-values", params={"format": "csv"})
        ).text
        rows = list(csv.DictReader(io.StringIO(text)))
        assert len(rows) == 16 and rows[0]["measurand"] and rows[0]["at"].startswith(str(t0.year))
        listed = (await api.get("/api/transactions", params={"pile": AC})).json()
        assert [x["id"] for x in listed] == [tx]
        pile = (await api.get(f"/api/piles/{AC}")).json()
        assert pile["guns"][0]["gun_id"] == AC + "001" and pile["guns"][0]["status"] == "Preparing"
    await cp.close()


async def test_every_sampled_value_field_lands_in_its_own_column(gw: Gateway) -> None:
    """Each optional field of a SampledValue set to a distinct value, through
    MeterValues (the direct path) and StopTransaction's transactionData: the
    stored sample has each one in its place."""
    await put_token(gw, "CARD0009")
    cp = await ChargePoint.connect(gw.ocpp_port, AC)
    await cp.boot()
    t0 = datetime.now(UTC).replace(microsecond=0)
    start = await cp.call(
        "StartTransaction",
        {"connectorId": 1, "idTag": "CARD0009", "meterStart": 0, "timestamp": now_iso(t0)},
    )
    tx = start["transactionId"]

    def sample(value: str) -> dict:
        return {
            "value": value,
            "context": "Sample.Clock",
            "format": "Raw",
            "measurand": "Current.Import",
            "phase": "L2",
            "location": "Inlet",
            "unit": "A",
        }

    await cp.call(
        "MeterValues",
        {
            "connectorId": 1,
            "transactionId": tx,
            "meterValue": [{"timestamp": now_iso(t0), "sampledValue": [sample("12.5")]}],
        },
    )
    at_stop = t0 + timedelta(minutes=1)
    await cp.call(
        "StopTransaction",
        {
            "transactionId": tx,
            "meterStop": 10,
            "timestamp": now_iso(at_stop),
            "transactionData": [{"timestamp": now_iso(at_stop), "sampledValue": [sample("x7")]}],
        },
    )
    await flushed(gw)
    async with api_client(gw) as api:
        curve = (await api.get(f"/api/transactions/{tx}/meter-values")).json()["samples"]
    fields = ("measurand", "phase", "unit", "context", "location", "format", "value", "value_num")
    assert [tuple(x[f] for f in fields) for x in curve] == [
        ("Current.Import", "L2", "A", "Sample.Clock", "Inlet", "Raw", "12.5", 12.5),
        ("Current.Import", "L2", "A", "Sample.Clock", "Inlet", "Raw", "x7", None),
    ]
    assert [x["connector_id"] for x in curve] == [1, 1]
    await cp.close()


async def test_every_status_notification_field_lands_in_its_own_column(gw: Gateway) -> None:
    cp = await ChargePoint.connect(gw.ocpp_port, AC)
    await cp.boot()
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=5)
    await cp.call(
        "StatusNotification",
        {
            "connectorId": 2,
            "errorCode": "GroundFailure",
            "info": "leak 30 mA",
            "status": "Faulted",
            "timestamp": now_iso(at),
            "vendorId": "DLH",
            "vendorErrorCode": "E042",
        },
    )
    await flushed(gw)
    async with gw.store.sessions() as s:
        event = (await s.scalars(select(GunStatusEvent))).one()
        gun = (await s.scalars(select(Gun))).one()
    assert (
        event.pile_id,
        event.connector_id,
        event.status,
        event.error_code,
        event.info,
        event.vendor_id,
        event.vendor_error_code,
        event.at,
    ) == (AC, 2, "Faulted", "GroundFailure", "leak 30 mA", "DLH", "E042", at)
    assert event.received_at > at
    assert (gun.gun_id, gun.status, gun.error_code, gun.info, gun.vendor_error_code) == (
        AC + "002",
        "Faulted",
        "GroundFailure",
        "leak 30 mA",
        "E042",
    )
    assert gun.status_at == at
    await cp.close()


async def test_retransmissions_are_idempotent(gw: Gateway) -> None:
    await put_token(gw, "CARD0002")
    cp = await ChargePoint.connect(gw.ocpp_port, DC)
    await cp.boot(model="XD120")
    t0 = datetime.now(UTC).replace(microsecond=0)
    start = {"connectorId": 2, "idTag": "CARD0002", "meterStart": 0, "timestamp": now_iso(t0)}
    a = await cp.call("StartTransaction", start)
    b = await cp.call("StartTransaction", start)  # reply lost, charger resends
    assert a["transactionId"] == b["transactionId"]
    values = {
        "connectorId": 2,
        "transactionId": a["transactionId"],
        "meterValue": [mv(t0 + timedelta(seconds=30), 250, soc=40)],
    }
    await cp.call("MeterValues", values)
    await cp.call("MeterValues", values)
    stop = {
        "transactionId": a["transactionId"],
        "meterStop": 500,
        "timestamp": now_iso(t0 + timedelta(minutes=1)),
    }
    await cp.call("StopTransaction", stop)
    await cp.call("StopTransaction", stop)
    await flushed(gw)
    async with api_client(gw) as api:
        txs = (await api.get("/api/transactions", params={"pile": DC})).json()
        assert len(txs) == 1 and txs[0]["energy_wh"] == 500
        samples = (await api.get(f"/api/transactions/{a['transactionId']}/meter-values")).json()[
            "samples"
        ]
        assert len(samples) == 5  # 4 values + SoC, stored once
    await cp.close()


async def test_charge_across_a_disconnect_is_replayed(gw: Gateway) -> None:
    """Online start, link lost, the charger queues its messages and replays
    them after reconnecting: nothing is lost, nothing is doubled, and the
    stop is recognised as having happened offline."""
    await put_token(gw, "CARD0003")
    cp = await ChargePoint.connect(gw.ocpp_port, AC)
    await cp.boot()
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    start = await cp.call(
        "StartTransaction",
        {
            "connectorId": 1,
            "idTag": "CARD0003",
            "meterStart": 5000,
            "timestamp": now_iso(datetime.now(UTC)),
        },
    )
    tx = start["transactionId"]
    cp.abort()  # 4G drops
    await asyncio.sleep(0.2)
    cp2 = await ChargePoint.connect(gw.ocpp_port, AC)
    queued = [
        (
            "MeterValues",
            {
                "connectorId": 1,
                "transactionId": tx,
                "meterValue": [mv(t0 + timedelta(minutes=1), 5100)],
            },
        ),
        (
            "MeterValues",
            {
                "connectorId": 1,
                "transactionId": tx,
                "meterValue": [mv(t0 + timedelta(minutes=2), 5200)],
            },
        ),
        (
            "StopTransaction",
            {
                "transactionId": tx,
                "meterStop": 5300,
                "timestamp": now_iso(t0 + timedelta(minutes=3)),
                "reason": "EVDisconnected",
            },
        ),
    ]
    for action, payload in queued:
        await cp2.call(action, payload)
    for action, payload in queued:  # replayed twice by a confused charger
        await cp2.call(action, payload)
    await flushed(gw)
    async with api_client(gw) as api:
        t = (await api.get(f"/api/transactions/{tx}")).json()
        assert t["energy_wh"] == 300 and t["stop_offline"] is True and t["offline"] is False
        samples = (await api.get(f"/api/transactions/{tx}/meter-values")).json()["samples"]
        assert len(samples) == 8
        events = (await api.get(f"/api/piles/{AC}/events")).json()
        reasons = [e["reason"] for e in reversed(events)]
        assert reasons == ["connected", "closed_abnormal", "connected"]
    await cp2.close()


async def test_offline_started_transaction_records_method(gw: Gateway) -> None:
    await put_token(gw, "LSVAA4182E2123456", "vin")
    await put_token(gw, "PW123456", "password")
    cp = await ChargePoint.connect(gw.ocpp_port, DC)
    await cp.boot(model="XD120")
    then = datetime.now(UTC) - timedelta(minutes=30)
    vin = await cp.call(
        "StartTransaction",
        {
            "connectorId": 1,
            "idTag": "LSVAA4182E2123456",
            "meterStart": 0,
            "timestamp": now_iso(then),
        },
    )
    pw = await cp.call(
        "StartTransaction",
        {
            "connectorId": 2,
            "idTag": "PW123456",
            "meterStart": 0,
            "timestamp": now_iso(datetime.now(UTC)),
        },
    )
    unknown = await cp.call(
        "StartTransaction",
        {"connectorId": 2, "idTag": "NOBODY", "meterStart": 10, "timestamp": now_iso(then)},
    )
    assert unknown["idTagInfo"]["status"] == "Invalid"
    async with api_client(gw) as api:
        a = (await api.get(f"/api/transactions/{vin['transactionId']}")).json()
        b = (await api.get(f"/api/transactions/{pw['transactionId']}")).json()
        c = (await api.get(f"/api/transactions/{unknown['transactionId']}")).json()
    assert (a["auth_method"], a["offline"]) == ("vin", True)
    assert (b["auth_method"], b["offline"]) == ("password", False)
    assert (c["auth_method"], c["offline"], c["auth_status"]) == ("unknown", True, "Invalid")
    await cp.close()


async def test_token_statuses(gw: Gateway) -> None:
    await put_token(gw, "BLOCKED1", status="blocked")
    await put_token(gw, "OLD1", expiry="2020-01-01T00:00:00Z")
    await put_token(gw, "CHILD1", parent_id_tag="FLEET1")
    cp = await ChargePoint.connect(gw.ocpp_port, AC)
    assert (await cp.call("Authorize", {"idTag": "BLOCKED1"}))["idTagInfo"]["status"] == "Blocked"
    old = (await cp.call("Authorize", {"idTag": "OLD1"}))["idTagInfo"]
    assert old["status"] == "Expired" and old["expiryDate"].startswith("2020-01-01")
    child = (await cp.call("Authorize", {"idTag": "CHILD1"}))["idTagInfo"]
    assert child == {"status": "Accepted", "parentIdTag": "FLEET1"}
    assert (await cp.call("Authorize", {"idTag": "NOPE"}))["idTagInfo"]["status"] == "Invalid"
    await cp.close()


async def test_concurrent_transaction_of_a_token(gw: Gateway) -> None:
    await put_token(gw, "CARD0009")
    a = await ChargePoint.connect(gw.ocpp_port, AC)
    b = await ChargePoint.connect(gw.ocpp_port, DC)
    now = now_iso(datetime.now(UTC))
    first = await a.call(
        "StartTransaction",
        {"connectorId": 1, "idTag": "CARD0009", "meterStart": 0, "timestamp": now},
    )
    second = await b.call(
        "StartTransaction",
        {"connectorId": 1, "idTag": "CARD0009", "meterStart": 0, "timestamp": now},
    )
    assert first["idTagInfo"]["status"] == "Accepted"
    assert second["idTagInfo"]["status"] == "ConcurrentTx"
    await a.close()
    await b.close()


async def test_orphan_stop_is_accepted_and_recorded(gw: Gateway) -> None:
    cp = await ChargePoint.connect(gw.ocpp_port, AC)
    reply = await cp.call(
        "StopTransaction",
        {"transactionId": 987654, "meterStop": 42, "timestamp": now_iso(), "idTag": "GHOST"},
    )
    assert reply == {"idTagInfo": {"status": "Invalid"}}
    async with api_client(gw) as api:
        orphans = (await api.get("/api/orphan-stops", params={"pile": AC})).json()
    assert [(o["transaction_id"], o["meter_stop"]) for o in orphans] == [(987654, 42)]
    await cp.close()


async def test_data_transfer_and_status_notifications_are_stored(database_url: str) -> None:
    async with running_gateway(database_url, data_transfer_vendors=["com.dlh"]) as gw:
        cp = await ChargePoint.connect(gw.ocpp_port, AC)
        known = await cp.call(
            "DataTransfer", {"vendorId": "com.dlh", "messageId": "gps", "data": "22.5,113.9"}
        )
        unknown = await cp.call("DataTransfer", {"vendorId": "com.other", "data": "x"})
        assert known == {"status": "Accepted"} and unknown == {"status": "UnknownVendorId"}
        assert await cp.call("FirmwareStatusNotification", {"status": "Downloading"}) == {}
        assert await cp.call("DiagnosticsStatusNotification", {"status": "Uploaded"}) == {}
        await flushed(gw)
        async with api_client(gw) as api:
            msgs = (await api.get(f"/api/piles/{AC}/messages")).json()
        kinds = sorted((m["kind"], m["vendor_id"], m["status"]) for m in msgs)
        assert kinds == [
            ("DataTransfer", "com.dlh", None),
            ("DataTransfer", "com.other", None),
            ("DiagnosticsStatusNotification", None, "Uploaded"),
            ("FirmwareStatusNotification", None, "Downloading"),
        ]
        await cp.close()


async def test_gun_status_history_keeps_order_and_late_statuses(gw: Gateway) -> None:
    cp = await ChargePoint.connect(gw.ocpp_port, DC)
    t0 = datetime.now(UTC).replace(microsecond=0)
    for i, status in enumerate(["Available", "Preparing", "Charging", "Finishing"]):
        await cp.call(
            "StatusNotification",
            {
                "connectorId": 2,
                "errorCode": "NoError",
                "status": status,
                "timestamp": now_iso(t0 + timedelta(seconds=i)),
            },
        )
    # a late, replayed status from before must not become the current one
    await cp.call(
        "StatusNotification",
        {
            "connectorId": 2,
            "errorCode": "NoError",
            "status": "Available",
            "timestamp": now_iso(t0 - timedelta(minutes=5)),
        },
    )
    await flushed(gw)
    async with api_client(gw) as api:
        pile = (await api.get(f"/api/piles/{DC}")).json()
        hist = (await api.get(f"/api/piles/{DC}/guns/2/history")).json()
    assert pile["guns"][0]["status"] == "Finishing" and pile["guns"][0]["gun_id"] == DC + "002"
    assert [h["status"] for h in hist] == [
        "Finishing",
        "Charging",
        "Preparing",
        "Available",
        "Available",
    ]
    await cp.close()


async def test_two_elements_with_one_timestamp_first_sent_wins(gw: Gateway) -> None:
    # One MeterValues, two meterValue elements with the same timestamp and
    # different energy: they share a receipt time, and the first sent is
    # the one read (as when each sampled value was its own row).
    await put_token(gw, "CARD0099")
    cp = await ChargePoint.connect(gw.ocpp_port, DC)
    await cp.boot()
    t0 = datetime.now(UTC).replace(microsecond=0)
    tx = await cp.call(
        "StartTransaction",
        {"connectorId": 1, "idTag": "CARD0099", "meterStart": 0, "timestamp": now_iso(t0)},
    )
    at = t0 + timedelta(seconds=10)
    elements = [mv(at, 200), mv(at, 100), mv(at + timedelta(seconds=10), 300)]
    elements[1]["sampledValue"].append({"value": "55", "measurand": "SoC", "location": "EV"})
    assert (
        await cp.call(
            "MeterValues",
            {"connectorId": 1, "transactionId": tx["transactionId"], "meterValue": elements},
        )
        == {}
    )
    await asyncio.wait_for(flushed(gw), 30)
    async with api_client(gw) as api:
        export = await api.get(f"/api/transactions/{tx['transactionId']}/meter-values")
    got = [(s["measurand"], s["value"]) for s in export.json()["samples"]]
    assert got == [
        ("Current.Import", "32.0"),
        ("Energy.Active.Import.Register", "200.0"),
        ("Power.Active.Import", "7000"),
        ("SoC", "55"),
        ("Voltage", "230.1"),
        ("Current.Import", "32.0"),
        ("Energy.Active.Import.Register", "300.0"),
        ("Power.Active.Import", "7000"),
        ("Voltage", "230.1"),
    ]
    async with gw.store.sessions() as s:
        assert await s.scalar(select(func.count()).select_from(MeterReading)) == 2
    await cp.close()


async def test_a_value_the_database_cannot_store_does_not_stop_the_others(
    gw: Gateway, database_url: str
) -> None:
    # A NUL character passes the StatusNotification schema (any string), and
    # PostgreSQL's text cannot hold it. Before, the batch failed as a whole
    # and was retried forever: the write queue filled up and held up every
    # charger. Now that message's rows are refused alone (logged in full,
    # counted) and everything else is stored.
    await put_token(gw, "CARD0099")
    cp = await ChargePoint.connect(gw.ocpp_port, DC)
    other = await ChargePoint.connect(gw.ocpp_port, AC)
    await cp.boot()
    await other.boot()
    t0 = datetime.now(UTC).replace(microsecond=0)
    tx = await cp.call(
        "StartTransaction",
        {"connectorId": 1, "idTag": "CARD0099", "meterStart": 0, "timestamp": now_iso(t0)},
    )
    tx_id = tx["transactionId"]
    # A NUL inside a sampled value is kept: the sampledValue list is stored
    # as JSON text, where orjson writes it as the escape \u0000.
    with_nul = mv(t0 + timedelta(seconds=20), 200)
    with_nul["sampledValue"][1]["value"] = "70\u000000"
    # "NaN" parses as a float but is no number JSON can carry: the export
    # answered 500 for a transaction holding one.
    with_nul["sampledValue"][3]["value"] = "NaN"
    for i, meter_value in enumerate(
        [mv(t0 + timedelta(seconds=10), 100), with_nul, mv(t0 + timedelta(seconds=30), 300)]
    ):
        assert (
            await cp.call(
                "MeterValues",
                {"connectorId": 1, "transactionId": tx_id, "meterValue": [meter_value]},
            )
            == {}
        ), i
    status = {"connectorId": 1, "errorCode": "NoError", "status": "Charging"}
    assert await cp.call("StatusNotification", {**status, "info": "bad\u0000text"}) == {}
    await other.call("StatusNotification", {**status, "timestamp": now_iso()})
    await asyncio.wait_for(flushed(gw), 30)
    async with api_client(gw) as api:
        export = await api.get(f"/api/transactions/{tx_id}/meter-values")
    assert export.status_code == 200, export.text
    samples = export.json()["samples"]
    energy = sorted(s["value"] for s in samples if s["measurand"].startswith("Energy"))
    assert energy == ["100.0", "200.0", "300.0"]
    assert "70\u000000" in [s["value"] for s in samples]
    assert "NaN" in [s["value"] for s in samples if s["measurand"] == "Voltage"]
    refused = gw.metrics.registry.get_sample_value(
        "pilegate_storage_refused_ops_total", {"kind": "GunStatusOp"}
    )
    async with gw.store.sessions() as s:
        infos = (
            await s.scalars(select(GunStatusEvent.info).where(GunStatusEvent.pile_id == DC))
        ).all()
        statuses = (
            await s.scalars(select(GunStatusEvent.status).where(GunStatusEvent.pile_id == AC))
        ).all()
    if database_url.startswith("postgresql"):
        assert infos == []
        assert refused == 1
    else:  # SQLite stores the text as it came
        assert infos == ["bad\u0000text"]
        assert refused is None
    assert statuses == ["Charging"]
    await cp.close()
    await other.close()
