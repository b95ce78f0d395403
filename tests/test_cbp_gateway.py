"""The cloud-board (CBP/1) listener end to end: real TCP on loopback, the
gateway's domain model and ops API, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.cloudboard import CbpConnection, CbpServer
from protocol.cloudboard import (
    AuthMethod,
    AuthRequest,
    AuthResult,
    AuthStatus,
    FirmwareStatus,
    FirmwareStatusAck,
    FirmwareStatusCode,
    GunStatus,
    Heartbeat,
    HeartbeatAck,
    Kind,
    LoginRejectReason,
    LoginReply,
    LoginResult,
    MessageType,
    PileState,
    ReadRealtime,
    Reboot,
    RebootMode,
    RemoteStart,
    RemoteStop,
    StopReason,
    TransactionConfirm,
    TransactionConfirmResult,
    TransactionRecord,
    encode_message,
    encode_raw,
    make_serial,
)
from tests.support.cbp_client import AC, DC, CbpCharger, local_now, login_message
from tests.support.gateway import api_client, flushed, latest_presence, running_gateway


def hexbytes(text: str) -> bytes:
    return bytes.fromhex(" ".join(text.split()))


# CBP/1 §5
LOGIN_BYTES = hexbytes(
    """
    68 55 01 00 00 01 44 20 00 00 01 00 00 10 00 01 01 01 0A 44 4C 48 5F 58 44 33
    32 45 5F 32 30 31 31 31 30 30 30 32 00 00 00 00 00 58 44 33 32 45 00 00 00 00
    00 00 00 00 00 00 00 00 89 86 00 00 00 00 00 00 00 00 02 00 00 00 00 00 00 00
    00 00 00 00 00 00 00 00 00 11 E6
    """
)
LOGIN_REPLY_BYTES = hexbytes(
    "68 18 01 00 00 02 44 20 00 00 01 00 00 10 00 01 00 00 0A 00 00 14 0E 9B 05 15 8A 14"
)
HEARTBEAT_BYTES = hexbytes("68 0F 02 00 00 03 44 20 00 00 01 00 00 10 00 01 00 92 B1")
HEARTBEAT_ACK_BYTES = hexbytes("68 0F 02 00 00 04 44 20 00 00 01 00 00 10 00 01 00 67 7A")
REJECTED_LOGIN_REPLY_BYTES = hexbytes(
    "68 18 01 00 00 02 00 00 44 20 00 00 01 10 00 01 01 02 00 00 00 14 0E 9B 05 15 BA 3C"
)
SPEC_TIME = datetime(2021, 5, 27, 6, 20, tzinfo=UTC)  # 14:20 at UTC+8


@contextlib.asynccontextmanager
async def cbp_gateway(database_url: str, **overrides: Any) -> AsyncIterator[Gateway]:
    async with running_gateway(
        database_url, cbp_host="127.0.0.1", cbp_port=0, command_timeout=2, **overrides
    ) as gw:
        yield gw


def cbp(gw: Gateway) -> CbpServer:
    return next(e for e in gw.extensions if isinstance(e, CbpServer))


@pytest.fixture
async def gw(database_url: str) -> AsyncIterator[Gateway]:
    async with cbp_gateway(database_url) as g:
        yield g


async def connect(gw: Gateway, pile: str = AC) -> CbpCharger:
    return await CbpCharger.connect(cbp(gw).port, pile)


async def online(gw: Gateway, pile: str = AC, **login: Any) -> CbpCharger:
    charger = await connect(gw, pile)
    reply = await charger.login(**login)
    assert (reply.result, reply.reason) == (LoginResult.ACCEPTED, LoginRejectReason.NONE)
    return charger


async def get(gw: Gateway, path: str, **params: Any) -> Any:
    await flushed(gw)
    async with api_client(gw) as api:
        r = await api.get(path, params=params)
        assert r.status_code == 200, r.text
        return r.json()


async def metric(gw: Gateway, name: str) -> str:
    async with api_client(gw) as api:
        text = (await api.get("/metrics")).text
    return "\n".join(line for line in text.splitlines() if line.startswith(name))


async def put_token(gw: Gateway, id_tag: str, type_: str = "card") -> None:
    async with api_client(gw) as api:
        r = await api.put(f"/api/tokens/{id_tag}", json={"type": type_})
        assert r.status_code in (200, 201), r.text


def record(
    charger: CbpCharger,
    serial: str,
    start: datetime,
    stop: datetime,
    meter_start: int,
    meter_stop: int,
    method: AuthMethod,
    token: str,
    *,
    offline: bool = False,
    reason: StopReason = StopReason.LOCAL,
) -> TransactionRecord:
    return TransactionRecord(
        serial=serial,
        pile=charger.pile,
        gun=1,
        start_time=local_now(start),
        stop_time=local_now(stop),
        meter_start_wh=meter_start,
        meter_stop_wh=meter_stop,
        energy_wh=meter_stop - meter_start,
        auth_method=method,
        offline=offline,
        token=token,
        stop_reason=reason,
    )


async def sync(charger: CbpCharger) -> None:
    """Wait until the gateway has handled everything sent before (frames of a
    connection are handled in order: the heartbeat's ack comes after)."""
    await charger.request(Heartbeat(charger.pile, PileState.NORMAL), MessageType.HEARTBEAT_ACK)


async def send_record(charger: CbpCharger, rec: TransactionRecord) -> TransactionConfirm:
    _, confirm = await charger.request(rec, MessageType.TRANSACTION_CONFIRM)
    assert isinstance(confirm, TransactionConfirm)
    return confirm


# --- the specification's vectors over a socket ------------------------------------------
async def test_spec_vectors_over_a_socket(database_url: str) -> None:
    async with cbp_gateway(database_url, cbp_heartbeat_interval=10) as gw:
        assert gw.services is not None
        gw.services.clock = lambda: SPEC_TIME  # the vectors' server time
        charger = await connect(gw)
        await charger.send_raw(LOGIN_BYTES)
        await charger.expect(MessageType.LOGIN_REPLY)
        assert bytes(charger.raw[: len(LOGIN_REPLY_BYTES)]) == LOGIN_REPLY_BYTES
        await charger.expect(MessageType.TIME_SYNC)  # the gateway then sets the clock
        before = len(charger.raw)
        await charger.send_raw(HEARTBEAT_BYTES)
        await charger.expect(MessageType.HEARTBEAT_ACK)
        assert bytes(charger.raw[before : before + len(HEARTBEAT_ACK_BYTES)]) == (
            HEARTBEAT_ACK_BYTES
        )
        pile = await get(gw, f"/api/piles/{AC}")
        assert (pile["online"], pile["protocol"], pile["kind"]) == (True, "cbp1", "AC")
        assert (pile["firmware_version"], pile["model"], pile["iccid"]) == (
            "DLH_XD32E_201110002",
            "XD32E",
            "89860000000000000000",
        )
        assert pile["boot_count"] == 1 and pile["presence"]["protocol"] == "cbp1"
        login = await get(gw, f"/api/piles/{AC}/messages", kind="Login")
        assert '"display":"touch_screen"' in login[0]["data"]
        await charger.close()

        # A charger configured with the 16-digit ID 4420000001100001.
        short = await CbpCharger.connect(cbp(gw).port, "00004420000001100001")
        await short.send(login_message("00004420000001100001"), seq=1)
        await short.wait_closed()
        assert bytes(short.raw) == REJECTED_LOGIN_REPLY_BYTES
        async with api_client(gw) as api:
            assert (await api.get("/api/piles/00004420000001100001")).status_code in (400, 404)
        counted = await metric(gw, "pilegate_pileid_rejections_total")
        assert 'source="cbp"' in counted
        assert 'reason="invalid_pile_id"' in await metric(gw, "pilegate_cbp_login_rejections")


# --- login rules ---------------------------------------------------------------------------
async def test_login_deadline_and_login_first(gw: Gateway) -> None:
    cbp(gw).login_timeout = 0.5
    silent = await connect(gw)
    started = time.monotonic()
    await silent.send_raw(b"\x00\x01 noise")  # garbage is no login
    await silent.wait_closed(timeout=3)
    assert 0.4 <= time.monotonic() - started < 2.5
    assert silent.raw == b""

    early = await connect(gw)
    await early.send(Heartbeat(AC, PileState.NORMAL))  # not a Login
    await early.wait_closed()
    assert early.raw == b""
    counted = await metric(gw, "pilegate_cbp_login_rejections")
    assert 'reason="login_timeout"' in counted and 'reason="not_login_first"' in counted
    async with api_client(gw) as api:
        assert (await api.get(f"/api/piles/{AC}")).status_code == 404  # nothing registered


async def test_login_rejections_name_their_reason(database_url: str) -> None:
    async with cbp_gateway(database_url, registration_policy="known") as gw:
        charger = await connect(gw)
        reply = await charger.login()
        assert (reply.result, reply.reason) == (
            LoginResult.REJECTED,
            LoginRejectReason.UNKNOWN_CHARGER,
        )
        await charger.wait_closed()
    async with cbp_gateway(database_url) as gw:
        charger = await connect(gw)
        reply = await charger.login(protocol_version=11)
        assert reply.reason is LoginRejectReason.PROTOCOL_VERSION_NOT_SUPPORTED
        await charger.wait_closed()
        # An undecodable Login (kind 3) is still answered with a reason.
        charger = await connect(gw)
        body = bytearray(encode_message(1, login_message(AC))[6:-2])
        body[10] = 3
        await charger.send_raw(encode_raw(b"\x07\x00", MessageType.LOGIN, bytes(body)))
        frame, answer = await charger.expect(MessageType.LOGIN_REPLY)
        assert frame.seq_bytes == b"\x07\x00"
        assert isinstance(answer, LoginReply)
        assert answer.reason is LoginRejectReason.KIND_MISMATCH
        await charger.wait_closed()


async def test_kind_mismatch_is_flagged_or_rejected(database_url: str) -> None:
    async with cbp_gateway(database_url) as gw:
        charger = await online(gw, AC, kind=Kind.DC)  # flag: accepted
        pile = await get(gw, f"/api/piles/{AC}")
        assert pile["kind_mismatch"] is True
        assert pile["kind_mismatch_evidence"][0]["source"] == "cbp_login"
        assert pile["kind_mismatch_evidence"][0]["reported_kind"] == "DC"
    await charger.wait_closed()  # the gateway stopped: it closed its chargers
    async with cbp_gateway(database_url, kind_policy="reject") as gw:
        events = await get(gw, f"/api/piles/{AC}/events")
        assert (events[0]["online"], events[0]["reason"]) == (False, "gateway_shutdown")
        charger = await connect(gw, DC)
        reply = await charger.login(kind=Kind.AC)
        assert (reply.result, reply.reason) == (
            LoginResult.REJECTED,
            LoginRejectReason.KIND_MISMATCH,
        )
        await charger.wait_closed()
        pile = await get(gw, f"/api/piles/{DC}")
        assert pile["kind_mismatch"] is True and pile["online"] is False
        assert 'source="cbp_login"' in await metric(gw, "pilegate_kind_mismatches_total")


async def test_auth_key(database_url: str) -> None:
    key = "0123456789abcdef"  # ASCII16: a 16-character pile password
    async with cbp_gateway(database_url) as gw:
        await (await online(gw)).close()  # registered, no key yet
        async with api_client(gw) as api:
            r = await api.put(f"/api/piles/{AC}/password", json={"password": key})
            assert r.status_code == 204
        for wrong in ("", "fedcba9876543210"):
            charger = await connect(gw)
            reply = await charger.login(auth_key=wrong)
            assert reply.reason is LoginRejectReason.BAD_AUTH_KEY
            await charger.wait_closed()
        await (await online(gw, auth_key=key)).close()
    async with cbp_gateway(database_url, basic_auth_required=True) as gw:
        charger = await connect(gw, DC)  # no key set for this pile
        assert (await charger.login(auth_key=key)).reason is LoginRejectReason.BAD_AUTH_KEY
        await charger.wait_closed()
        await (await online(gw, auth_key=key)).close()


# --- frames and bytes ----------------------------------------------------------------------
async def test_garbage_fragments_and_seq_echo(gw: Gateway) -> None:
    charger = await online(gw)
    charger.answers.clear()  # its answers would land between the fragments below
    hb = Heartbeat(AC, PileState.NORMAL)
    frame = encode_message(0x1234, hb)
    await charger.send_raw(b"\xff\x00garbage\x68\x02" + frame[:3])  # garbage, a fake start
    await asyncio.sleep(0.05)
    await charger.send_raw(frame[3:9])
    await asyncio.sleep(0.05)
    await charger.send_raw(frame[9:])
    got, ack = await charger.expect(MessageType.HEARTBEAT_ACK)
    assert got.seq_bytes == b"\x34\x12" and ack == HeartbeatAck(AC)
    # two frames in one read, one with its SEQ "big-endian" and its CRC high byte first
    odd = encode_raw(b"\x00\x09", MessageType.HEARTBEAT, frame[6:-2], crc_order="hi_first")
    await charger.send_raw(encode_message(7, hb) + odd)
    assert (await charger.expect(MessageType.HEARTBEAT_ACK))[0].seq_bytes == b"\x07\x00"
    assert (await charger.expect(MessageType.HEARTBEAT_ACK))[0].seq_bytes == b"\x00\x09"
    # an unknown TYPE is discarded; the connection stays up
    await charger.send_raw(encode_raw(b"\x08\x00", 0x77, b"\x01\x02"))
    await charger.request(hb, MessageType.HEARTBEAT_ACK)
    assert not charger.closed.is_set()
    await charger.close()


async def test_ten_bad_frames_in_a_row_close(gw: Gateway) -> None:
    charger = await online(gw)
    bad = bytearray(encode_message(3, Heartbeat(AC, PileState.NORMAL)))
    bad[-1] ^= 0xFF
    bad[-2] ^= 0x0F  # a CRC right in neither order
    await charger.send_raw(bytes(bad) * 9)
    await charger.request(Heartbeat(AC, PileState.NORMAL), MessageType.HEARTBEAT_ACK)  # resets
    await charger.send_raw(bytes(bad) * 10)
    await charger.wait_closed()
    event = await latest_presence(gw, AC, "bad_messages")
    assert event["online"] is False
    assert 'reason="bad_crc"' in await metric(gw, "pilegate_cbp_bad_frames")


# --- one domain model ------------------------------------------------------------------------
async def test_charge_with_a_card(gw: Gateway) -> None:
    await put_token(gw, "CARD0001")
    charger = await online(gw)
    _, auth = await charger.request(
        AuthRequest(AC, 1, AuthMethod.CARD, "CARD0001"), MessageType.AUTH_RESULT
    )
    assert isinstance(auth, AuthResult) and auth.result is AuthStatus.ACCEPTED
    assert auth.serial is not None and auth.serial.startswith(AC + "0001")
    _, unknown = await charger.request(
        AuthRequest(AC, 1, AuthMethod.CARD, "NOSUCHCARD"), MessageType.AUTH_RESULT
    )
    assert (unknown.result, unknown.serial) == (AuthStatus.INVALID, None)  # type: ignore[union-attr]
    assert await get(gw, "/api/transactions", pile=AC) == []  # nothing until the charger reports

    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    gun = charger.guns[1]
    gun.status, gun.serial, gun.current_da, gun.power_w = GunStatus.CHARGING, auth.serial, 320, 7360
    for i in range(1, 4):  # the first report comes a minute into the session
        gun.meter_wh, gun.session_energy_wh = 10_000 + 100 * i, 100 * i
        await charger.send(charger.realtime(at=t0 + timedelta(minutes=i)))
    await sync(charger)
    [active] = await get(gw, "/api/transactions", pile=AC)
    assert (active["status"], active["external_id"], active["protocol"]) == (
        "active",
        auth.serial,
        "cbp1",
    )
    pile = await get(gw, f"/api/piles/{AC}")
    assert pile["guns"][0]["status"] == "Charging" and pile["guns"][0]["gun_id"] == AC + "001"

    rec = record(
        charger,
        auth.serial,
        t0,
        t0 + timedelta(minutes=4),
        10_000,
        10_400,
        AuthMethod.CARD,
        "CARD0001",
    )
    confirm = await send_record(charger, rec)
    assert confirm == TransactionConfirm(auth.serial, TransactionConfirmResult.STORED)
    again = await send_record(charger, rec)  # re-sent after a lost confirm: stored once
    assert again.result is TransactionConfirmResult.STORED
    [tx] = await get(gw, "/api/transactions", pile=AC)
    assert tx["id"] == active["id"]
    assert (tx["status"], tx["energy_wh"], tx["auth_method"], tx["offline"]) == (
        "completed",
        400,
        "card",
        False,
    )
    # the record's start replaced the provisional one (the first 0x13)
    assert datetime.fromisoformat(tx["start_at"]) == t0 and tx["meter_start"] == 10_000
    assert tx["stop_reason"] == "Local" and tx["id_tag"] == "CARD0001"
    curve = (await get(gw, f"/api/transactions/{tx['id']}/meter-values"))["samples"]
    energy = [s["value_num"] for s in curve if s["measurand"] == "Energy.Active.Import.Register"]
    assert energy == [10_100, 10_200, 10_300]
    assert {s["measurand"] for s in curve} == {
        "Voltage",
        "Current.Import",
        "Power.Active.Import",
        "Energy.Active.Import.Register",
    }
    assert next(s for s in curve if s["measurand"] == "Voltage")["value"] == "230.0"
    events = await get(gw, f"/api/piles/{AC}/events")
    assert (events[0]["online"], events[0]["reason"]) == (True, "connected")
    assert 'event="duplicate"' in await metric(gw, "pilegate_transactions_total")
    await charger.close()


async def test_offline_record_is_stored_once(gw: Gateway) -> None:
    charger = await online(gw, DC)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    serial = make_serial(DC, 1, local_now(start).replace(microsecond=0), 17)  # made by the charger
    rec = record(
        charger,
        serial,
        start,
        start + timedelta(minutes=40),
        5_000,
        25_000,
        AuthMethod.PASSWORD,
        "839201",
        offline=True,
        reason=StopReason.EV_FULL,
    )
    # Back online mid-session: its 0x13s carry a SERIAL the gateway never saw.
    gun = charger.guns[1]
    gun.status, gun.serial, gun.soc = GunStatus.CHARGING, serial, 80
    for minutes, meter in ((10, 10_000), (20, 15_000)):
        gun.meter_wh = meter
        await charger.send(charger.realtime(at=start + timedelta(minutes=minutes)))
    await sync(charger)
    assert await get(gw, "/api/transactions", pile=DC) == []
    for _ in range(2):
        assert (await send_record(charger, rec)).result is TransactionConfirmResult.STORED
    [tx] = await get(gw, "/api/transactions", pile=DC)
    curve = (await get(gw, f"/api/transactions/{tx['id']}/meter-values"))["samples"]
    assert [s["value_num"] for s in curve if s["measurand"] == "SoC"] == [80, 80]
    assert (tx["offline"], tx["auth_method"], tx["energy_wh"], tx["external_id"]) == (
        True,
        "password",
        20_000,
        serial,
    )
    assert tx["stop_reason"] == "EVFull" and tx["status"] == "completed"
    # a record naming another pile can never be stored: rejected, not re-sent
    other = replace(rec, pile=AC)
    assert (await send_record(charger, other)).result is TransactionConfirmResult.REJECTED
    await charger.close()


async def test_firmware_status_is_acknowledged_and_stored(gw: Gateway) -> None:
    charger = await online(gw)
    _, ack = await charger.request(
        FirmwareStatus(AC, 42, FirmwareStatusCode.DOWNLOADING, 30), MessageType.FIRMWARE_STATUS_ACK
    )
    assert ack == FirmwareStatusAck(AC, 42)
    [msg] = await get(gw, f"/api/piles/{AC}/messages", kind="FirmwareStatus")
    assert msg["status"] == "1" and '"progress":30' in msg["data"]
    await charger.close()


# --- commands ----------------------------------------------------------------------------------
async def command(gw: Gateway, action: str, payload: dict[str, Any], timeout: float = 2) -> Any:
    async with api_client(gw) as api:
        return await api.post(
            f"/api/piles/{AC}/commands/{action}", json={"payload": payload, "timeout": timeout}
        )


async def test_commands_are_translated(gw: Gateway) -> None:
    charger = await online(gw)
    r = await command(gw, "RemoteStartTransaction", {"idTag": "APPUSER01", "connectorId": 1})
    assert r.status_code == 200, r.text
    assert r.json() == {"action": "RemoteStartTransaction", "response": {"status": "Accepted"}}
    start = next(m for m in charger.requests if isinstance(m, RemoteStart))
    assert (start.gun, start.token, start.energy_limit_wh) == (1, "APPUSER01", 0)
    assert await get(gw, "/api/transactions", pile=AC) == []  # nothing until the charger reports

    gun = charger.guns[1]
    gun.status, gun.serial = GunStatus.CHARGING, start.serial
    await charger.send(charger.realtime())
    await sync(charger)
    [tx] = await get(gw, "/api/transactions", pile=AC)
    assert (tx["auth_method"], tx["status"], tx["id_tag"]) == ("remote", "active", "APPUSER01")

    r = await command(gw, "RemoteStopTransaction", {"transactionId": tx["id"]})
    assert r.json()["response"] == {"status": "Accepted"}, r.text
    stop = next(m for m in charger.requests if isinstance(m, RemoteStop))
    assert (stop.gun, stop.serial) == (1, start.serial)
    now = datetime.now(UTC)
    rec = record(
        charger,
        start.serial,
        now - timedelta(minutes=1),
        now,
        10_000,
        10_050,
        AuthMethod.REMOTE,
        "APPUSER01",
        reason=StopReason.REMOTE,
    )
    assert (await send_record(charger, rec)).result is TransactionConfirmResult.STORED
    [tx] = await get(gw, "/api/transactions", pile=AC)
    assert (tx["status"], tx["auth_method"], tx["stop_reason"], tx["energy_wh"]) == (
        "completed",
        "remote",
        "Remote",
        50,
    )

    r = await command(gw, "Reset", {"type": "Hard"})
    assert r.json()["response"] == {"status": "Accepted"}
    assert next(m for m in charger.requests if isinstance(m, Reboot)).mode is RebootMode.NOW
    gun.status, gun.serial = GunStatus.PREPARING, None
    r = await command(gw, "TriggerMessage", {"requestedMessage": "StatusNotification"})
    assert r.json()["response"] == {"status": "Accepted"}
    assert any(isinstance(m, ReadRealtime) for m in charger.requests)
    pile = await get(gw, f"/api/piles/{AC}")
    assert pile["guns"][0]["status"] == "Preparing"

    r = await command(gw, "GetLocalListVersion", {})
    assert r.json()["response"] == {"listVersion": 0}
    r = await command(gw, "ChangeConfiguration", {"key": "HeartbeatInterval", "value": "30"})
    assert (r.status_code, r.json()["error"]["code"]) == (400, "not_supported_by_protocol")
    r = await command(gw, "RemoteStopTransaction", {"transactionId": 999999})
    assert r.status_code == 404
    del charger.answers[MessageType.REBOOT]  # a charger that does not answer
    r = await command(gw, "Reset", {"type": "Soft"}, timeout=0.3)
    assert (r.status_code, r.json()["error"]["code"]) == (504, "timeout")
    await charger.close()
    r = await command(gw, "Reset", {"type": "Soft"})
    assert r.status_code == 409


# --- presence and connections -------------------------------------------------------------
async def _silent_charger(gw: Gateway) -> None:
    charger = await connect(gw)
    reply = await charger.login()
    assert reply.heartbeat_interval == 5
    await charger.expect(MessageType.TIME_SYNC)
    await asyncio.sleep(0.2)  # its time-sync reply is the last frame it sends
    # Measured from the last frame written, not from when this test got to
    # run again: a busy loop here must not shorten the measured silence.
    silent_since = charger.last_write
    await charger.wait_closed(timeout=20)
    silent_for = time.monotonic() - silent_since
    event = await latest_presence(gw, AC, "heartbeat_timeout")
    assert 15 - 0.3 <= silent_for <= 15 + 2, silent_for
    assert "3 × heartbeat interval 5 s" in (event["detail"] or "")


async def test_silent_charger_is_offline_after_three_heartbeat_intervals(
    tmp_path: Path, pg_url: str
) -> None:
    """CBP/1 has no ping: a charger that sends nothing is offline after
    3 × the heartbeat interval of its login reply. SQLite and PostgreSQL side
    by side (the 15 s wait once, not twice)."""
    settings = {"cbp_heartbeat_interval": 5, "watchdog_min_silence": 0, "pong_timeout": 0.4}
    async with contextlib.AsyncExitStack() as stack:
        gateways = [  # started one after the other: migrations are not concurrent
            await stack.enter_async_context(cbp_gateway(url, **settings))
            for url in (f"sqlite+aiosqlite:///{tmp_path / 'pilegate.db'}", pg_url)
        ]
        await asyncio.gather(*(_silent_charger(gw) for gw in gateways))


async def test_second_login_takes_over(gw: Gateway) -> None:
    old = await online(gw)
    assert gw.services is not None
    old_conn = gw.services.registry.get(AC)
    new = await online(gw)
    await old.wait_closed()
    assert isinstance(old_conn, CbpConnection) and old_conn.replaced
    await new.request(Heartbeat(AC, PileState.NORMAL), MessageType.HEARTBEAT_ACK)
    events = list(reversed(await get(gw, f"/api/piles/{AC}/events")))
    assert [(e["online"], e["reason"]) for e in events] == [
        (True, "connected"),
        (False, "replaced"),
        (True, "connected"),
    ]
    pile = await get(gw, f"/api/piles/{AC}")
    assert pile["online"] is True
    assert pile["presence"]["conn_id"] == gw.services.registry.get(AC).conn_id  # type: ignore[union-attr]
    # A Login again on the same connection (a board restarting its session):
    # checked again and accepted, without a new connection.
    assert (await new.login(firmware_version="DLH_XD32E_201110003")).result is LoginResult.ACCEPTED
    pile = await get(gw, f"/api/piles/{AC}")
    assert (pile["boot_count"], pile["firmware_version"]) == (3, "DLH_XD32E_201110003")
    assert len(await get(gw, f"/api/piles/{AC}/events")) == 3
    await new.close()
    assert (await latest_presence(gw, AC, "closed_clean"))["online"] is False
