"""The simulated cloud-board (CBP/1) charger's sans-I/O model, without
sockets: a scripted gateway decodes what the charger writes with the codec,
answers (or not) and sends its own requests; time is a number the test moves.
"""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path
from typing import Any

import pytest

from protocol.cloudboard import (
    AuthMethod,
    AuthRequest,
    AuthResult,
    AuthStatus,
    CbpDecoder,
    Display,
    FirmwareStatus,
    FirmwareStatusAck,
    FirmwareStatusCode,
    FirmwareUpdate,
    FirmwareUpdateReply,
    FirmwareUpdateResult,
    FrameReceived,
    GunStatus,
    Heartbeat,
    HeartbeatAck,
    Kind,
    Login,
    LoginRejectReason,
    LoginReply,
    LoginResult,
    Message,
    ReadRealtime,
    RealtimeData,
    Reboot,
    RebootMode,
    RebootReply,
    RemoteStart,
    RemoteStartRejectReason,
    RemoteStartReply,
    RemoteStop,
    RemoteStopRejectReason,
    RemoteStopReply,
    StopReason,
    TimeSync,
    TimeSyncReply,
    TransactionConfirm,
    TransactionConfirmResult,
    TransactionRecord,
    WhitelistAction,
    WhitelistEntry,
    WhitelistMode,
    WhitelistUpdate,
    WhitelistUpdateReply,
    WhitelistUpdateResult,
    WhitelistVersionQuery,
    WhitelistVersionReply,
    encode_message,
    encode_reply_message,
    make_serial,
)
from simulators.cbp_charger import CbpCharger, local_time
from simulators.charger import CloseLink, SendFrame, StartDownload
from simulators.config import ChargerConfig, Vehicle

AC = "44200000010000100001"
DC = "44200000010000200002"
T0 = 1_800_000_000.0
IMAGE = b"PILEGATE-FW DLH_XD32E_210521003\n" + bytes(range(256)) * 4


def config(**kw: Any) -> ChargerConfig:
    return ChargerConfig(**({"pile_id": AC, "protocol": "cbp1"} | kw))


class Gateway:
    """The gateway side of one link: decodes the charger's frames and answers."""

    def __init__(self, cp: CbpCharger, now: float = T0) -> None:
        self.cp = cp
        self.now = now
        self.decoder = CbpDecoder()
        self.seq = itertools.count(100)
        self.closed: list[CloseLink] = []
        self.downloads: list[str] = []

    def frames(self) -> list[tuple[bytes, Message]]:
        """What the charger wrote since the last call, decoded."""
        out: list[tuple[bytes, Message]] = []
        for action in self.cp.drain():
            if isinstance(action, SendFrame):
                assert isinstance(action.text, bytes)
                for ev in self.decoder.feed(action.text):
                    assert isinstance(ev, FrameReceived), ev
                    out.append((ev.frame.seq_bytes, ev.message))
            elif isinstance(action, CloseLink):
                self.closed.append(action)
            elif isinstance(action, StartDownload):
                self.downloads.append(action.url)
        return out

    def messages(self) -> list[Message]:
        return [m for _, m in self.frames()]

    def connect(self, *, accept: bool = True, interval: int = 10) -> list[Message]:
        self.decoder = CbpDecoder()
        self.cp.connected(self.now)
        (seq, login), *rest = self.frames()
        assert isinstance(login, Login) and not rest
        reply = LoginReply(
            login.pile,
            LoginResult.ACCEPTED if accept else LoginResult.REJECTED,
            LoginRejectReason.NONE if accept else LoginRejectReason.INVALID_PILE_ID,
            interval if accept else 0,
            local_time(self.now),
        )
        self.cp.receive(encode_reply_message(seq, reply), self.now)
        return [login, *self.messages()]

    def answer(self, seq: bytes, message: Message) -> list[Message]:
        self.cp.receive(encode_reply_message(seq, message), self.now)
        return self.messages()

    def request(self, message: Message) -> list[tuple[bytes, Message]]:
        data = encode_message(next(self.seq), message)
        self.cp.receive(data, self.now)
        return [(s, m) for s, m in self.frames()]

    def confirm_all(self, frames: list[tuple[bytes, Message]]) -> list[Message]:
        """Answer every request in ``frames`` as a gateway would; return the rest."""
        out: list[Message] = []
        pending = list(frames)
        while pending:
            seq, m = pending.pop(0)
            reply: Message | None = None
            if isinstance(m, TransactionRecord):
                reply = TransactionConfirm(m.serial, TransactionConfirmResult.STORED)
            elif isinstance(m, FirmwareStatus):
                reply = FirmwareStatusAck(m.pile, m.task_id)
            elif isinstance(m, Heartbeat):
                reply = HeartbeatAck(m.pile)
            out.append(m)
            if reply is not None:
                self.cp.receive(encode_reply_message(seq, reply), self.now)
                pending.extend(self.frames())
        return out

    def advance(self, seconds: float, *, answer: bool = False) -> list[tuple[bytes, Message]]:
        """Move time; with ``answer`` the gateway acknowledges as it goes."""
        end = self.now + seconds
        out: list[tuple[bytes, Message]] = []
        while True:
            due = min(self.cp.next_deadline(), end)
            self.now = max(self.now, due)
            self.cp.tick(self.now)
            frames = self.frames()
            out.extend(frames)
            if answer:
                rest = self.confirm_all(frames)[len(frames) :]
                out.extend((b"", m) for m in rest)
            if self.now >= end:
                return out


def online(cp: CbpCharger, **kw: Any) -> Gateway:
    gw = Gateway(cp)
    gw.connect(**kw)
    return gw


def charger(**kw: Any) -> CbpCharger:
    return CbpCharger(config(**kw), now=T0)


# --- login, heartbeat, presence ------------------------------------------------------------
def test_login_carries_the_charger_and_heartbeats_follow_the_reply() -> None:
    cp = charger(
        model="DLH-AC7-TS",
        touch_screen=True,
        firmware_version="DLH_XD32E_201110002",
        password="0123456789abcdef",
        guns=2,
    )
    gw = Gateway(cp)
    login, *after = gw.connect(interval=7)
    assert isinstance(login, Login)
    assert (login.pile, login.kind, login.gun_count, login.protocol_version) == (AC, Kind.AC, 2, 10)
    assert (login.model, login.firmware_version, login.display, login.auth_key) == (
        "DLH-AC7-TS",
        "DLH_XD32E_201110002",
        Display.TOUCH_SCREEN,
        "0123456789abcdef",
    )
    # Both guns report their status (0x13) once logged in; no pile-level status.
    assert [(m.gun, m.status) for m in after if isinstance(m, RealtimeData)] == [
        (1, GunStatus.AVAILABLE),
        (2, GunStatus.AVAILABLE),
    ]
    assert cp.online and cp.heartbeat_interval == 7
    beats = [m for _, m in gw.advance(6.9) if isinstance(m, Heartbeat)]
    assert beats == []
    frames = gw.advance(0.2)
    assert [type(m) for _, m in frames] == [Heartbeat]
    gw.answer(frames[0][0], HeartbeatAck(AC))
    # An unanswered heartbeat: after call_timeout (10 s) the link is dropped.
    frames = gw.advance(7)
    assert [type(m) for _, m in frames] == [Heartbeat]
    gw.advance(10.5)
    assert gw.closed and gw.closed[-1].abort and not cp.online


def test_a_rejected_login_is_counted_and_retried_after_the_backoff() -> None:
    cp = charger(pile_id="4420000001100001", kind="AC")
    gw = Gateway(cp)
    login, *_ = gw.connect(accept=False)
    assert isinstance(login, Login)
    assert login.pile == "00004420000001100001"  # CBP/1 §5: zero-padded
    assert (cp.login_refusals, cp.login_reason, cp.online) == (1, "invalid_pile_id", False)
    cp.disconnected(gw.now)  # the gateway closes after a rejection
    gw.now += 1
    gw.decoder = CbpDecoder()
    cp.connected(gw.now)
    assert gw.frames() == []  # the boot backoff (5 s) still runs
    assert cp.next_deadline() == pytest.approx(T0 + 5)
    gw.advance(4.1)
    assert [type(m) for m in gw.messages()] == [] and isinstance(gw.frames(), list)


def test_every_new_connection_starts_with_a_login() -> None:
    cp = charger()
    gw = online(cp)
    cp.disconnected(gw.now)
    gw.now += 1
    gw.decoder = CbpDecoder()
    cp.connected(gw.now)
    (_, first), *rest = gw.frames()
    assert isinstance(first, Login) and rest == []


def test_the_gateway_requests_are_answered_echoing_their_seq() -> None:
    cp = charger()
    gw = online(cp)
    ((seq, reply),) = gw.request(TimeSync(AC, local_time(gw.now)))
    assert isinstance(reply, TimeSyncReply) and seq == (100).to_bytes(2, "little")
    ((seq, data),) = gw.request(ReadRealtime(AC, 1))
    assert isinstance(data, RealtimeData) and seq == (101).to_bytes(2, "little")
    assert (data.status, data.serial, data.soc) == (GunStatus.AVAILABLE, None, None)
    ((_, version),) = gw.request(WhitelistVersionQuery(AC))
    assert isinstance(version, WhitelistVersionReply)
    assert (version.version, version.entry_count, version.capacity) == (0, 0, 1000)
    # Garbage and bad frames from the gateway are counted, never fatal.
    cp.receive(b"\x00\x68\x02\x01\x00\xff" + b"\x68" * 20, gw.now)
    assert cp.online and cp.stats.errors


# --- sessions ---------------------------------------------------------------------------
def test_a_card_session_online_from_0x31_to_the_confirmed_record() -> None:
    cp = charger(meter_interval=60, power_kw=7, time_scale=60)
    gw = online(cp)
    cp.plug(1, gw.now)
    assert [m.status for m in gw.messages() if isinstance(m, RealtimeData)] == [GunStatus.PREPARING]
    cp.present(1, "CARD-0001", "card", gw.now)
    ((seq, auth),) = gw.frames()
    assert isinstance(auth, AuthRequest)
    assert (auth.gun, auth.method, auth.token) == (1, AuthMethod.CARD, "CARD-0001")
    serial = make_serial(AC, 1, local_time(gw.now), 7)
    msgs = gw.answer(seq, AuthResult(AC, 1, "CARD-0001", AuthStatus.ACCEPTED, serial))
    charging = [m for m in msgs if isinstance(m, RealtimeData)]
    assert [(m.status, m.serial) for m in charging] == [(GunStatus.CHARGING, serial)]
    assert cp.transaction_serial(1) == serial
    # One sample per charger minute = one per real second at time_scale 60.
    samples = [m for _, m in gw.advance(3.05) if isinstance(m, RealtimeData)]
    assert len(samples) == 3 and all(s.serial == serial for s in samples)
    registers = [s.meter_wh for s in samples]
    assert registers == sorted(registers) and registers[-1] > registers[0]
    assert samples[-1].power_w == 7000 and samples[-1].session_energy_wh == registers[-1]
    cp.press_stop(1, gw.now)
    frames = gw.frames()
    record = next(m for _, m in frames if isinstance(m, TransactionRecord))
    assert (record.serial, record.auth_method, record.offline, record.stop_reason) == (
        serial,
        AuthMethod.CARD,
        False,
        StopReason.LOCAL,
    )
    assert record.energy_wh == record.meter_stop_wh - record.meter_start_wh > 0
    finishing = [m for _, m in frames if isinstance(m, RealtimeData)]
    assert [(m.status, m.serial) for m in finishing] == [(GunStatus.FINISHING, serial)]
    assert cp.queued_transaction_messages() == 1
    gw.confirm_all(frames)
    assert cp.queued_transaction_messages() == 0 and cp.confirmed == [serial]


def test_a_refused_card_does_not_charge() -> None:
    cp = charger()
    gw = online(cp)
    cp.plug(1, gw.now)
    gw.frames()
    cp.present(1, "LOST-CARD", "card", gw.now)
    ((seq, _),) = gw.frames()
    gw.answer(seq, AuthResult(AC, 1, "LOST-CARD", AuthStatus.BLOCKED, None))
    assert cp.gun(1).tx is None and cp.assigned == {}


def whitelist_parts(version: int, tokens: list[str]) -> list[WhitelistUpdate]:
    entries = [WhitelistEntry(WhitelistAction.ADD, AuthMethod.CARD, t) for t in tokens]
    chunks = [entries[i : i + 10] for i in range(0, len(entries), 10)] or [[]]
    return [
        WhitelistUpdate(AC, version, 0, WhitelistMode.FULL, i, i == len(chunks) - 1, tuple(c))
        for i, c in enumerate(chunks)
    ]


def test_whitelist_parts_apply_atomically_and_authorize_offline() -> None:
    cp = charger(meter_interval=60, time_scale=60)
    gw = online(cp)
    tokens = [f"CARD-{n:04d}" for n in range(12)]
    first, last = whitelist_parts(3, tokens)
    ((_, r1),) = gw.request(first)
    assert isinstance(r1, WhitelistUpdateReply) and r1.result == WhitelistUpdateResult.ACCEPTED
    assert cp.whitelist_version == 0 and cp.whitelist == {}  # not before the last part
    ((_, r2),) = gw.request(last)
    assert isinstance(r2, WhitelistUpdateReply) and r2.result == WhitelistUpdateResult.ACCEPTED
    assert cp.whitelist_version == 3 and len(cp.whitelist) == 12
    # A differential on another base version is refused; capacity is enforced.
    diff = WhitelistUpdate(AC, 5, 2, WhitelistMode.DIFFERENTIAL, 0, True, ())
    ((_, r3),) = gw.request(diff)
    assert isinstance(r3, WhitelistUpdateReply)
    assert r3.result == WhitelistUpdateResult.VERSION_MISMATCH

    # The link is lost: a listed card charges offline, under the charger's SERIAL.
    cp.disconnected(gw.now)
    cp.plug(1, gw.now)
    cp.present(1, "UNKNOWN", "card", gw.now)
    assert cp.gun(1).tx is None  # not on the list: refused offline
    cp.present(1, "CARD-0007", "card", gw.now)
    serial = cp.transaction_serial(1)
    assert serial is not None and serial.startswith(AC + "0001")
    gw.advance(2)
    assert gw.frames() == []  # real-time data is not kept while offline
    cp.press_stop(1, gw.now)
    assert cp.queued_transaction_messages() == 1
    # Back online: login, statuses, then the record; re-sent until confirmed.
    gw.now += 1
    msgs = gw.connect()
    record = next(m for m in msgs if isinstance(m, TransactionRecord))
    assert (record.serial, record.offline, record.auth_method, record.token) == (
        serial,
        True,
        AuthMethod.CARD,
        "CARD-0007",
    )
    cp.disconnected(gw.now)  # lost before the 0x40: kept
    gw.now += 1
    frames = []
    gw.decoder = CbpDecoder()
    cp.connected(gw.now)
    ((seq, _),) = gw.frames()
    cp.receive(
        encode_reply_message(
            seq,
            LoginReply(AC, LoginResult.ACCEPTED, LoginRejectReason.NONE, 10, local_time(gw.now)),
        ),
        gw.now,
    )
    frames = gw.frames()
    assert [m.serial for _, m in frames if isinstance(m, TransactionRecord)] == [serial]
    gw.confirm_all(frames)
    assert cp.queued_transaction_messages() == 0


def test_remote_start_and_stop() -> None:
    cp = charger(meter_interval=60, time_scale=60)
    gw = online(cp)
    serial = make_serial(AC, 1, local_time(gw.now), 1)
    ((_, reply),) = gw.request(RemoteStart(AC, 1, serial, "APP-USER", 0))
    assert isinstance(reply, RemoteStartReply)
    assert reply.reason == RemoteStartRejectReason.NOT_PLUGGED_IN
    ((_, reply),) = gw.request(RemoteStart(AC, 3, serial, "APP-USER", 0))
    assert isinstance(reply, RemoteStartReply)
    assert reply.reason == RemoteStartRejectReason.UNKNOWN_GUN
    cp.plug(1, gw.now)
    gw.frames()
    frames = gw.request(RemoteStart(AC, 1, serial, "APP-USER", 0))
    reply = frames[0][1]
    assert isinstance(reply, RemoteStartReply) and reply.reason == RemoteStartRejectReason.NONE
    assert [(m.status, m.serial) for _, m in frames if isinstance(m, RealtimeData)] == [
        (GunStatus.CHARGING, serial)
    ]
    ((_, busy),) = gw.request(RemoteStart(AC, 1, serial, "APP-USER", 0))
    assert isinstance(busy, RemoteStartReply) and busy.reason == RemoteStartRejectReason.GUN_BUSY
    other = make_serial(AC, 1, local_time(gw.now), 2)
    ((_, stop),) = gw.request(RemoteStop(AC, 1, other))
    assert isinstance(stop, RemoteStopReply)
    assert stop.reason == RemoteStopRejectReason.UNKNOWN_SERIAL
    gw.advance(1)
    frames = gw.request(RemoteStop(AC, 1, serial))
    assert isinstance(frames[0][1], RemoteStopReply)
    record = next(m for _, m in frames if isinstance(m, TransactionRecord))
    assert (record.serial, record.auth_method, record.stop_reason, record.token) == (
        serial,
        AuthMethod.REMOTE,
        StopReason.REMOTE,
        "APP-USER",
    )


def test_an_energy_limit_ends_the_charge_with_its_own_reason() -> None:
    cp = charger(meter_interval=60, time_scale=600, power_kw=7)
    gw = online(cp)
    cp.plug(1, gw.now)
    serial = make_serial(AC, 1, local_time(gw.now), 1)
    gw.request(RemoteStart(AC, 1, serial, "APP-USER", 700))
    frames = gw.advance(2)
    record = next(m for _, m in frames if isinstance(m, TransactionRecord))
    assert record.stop_reason == StopReason.ENERGY_LIMIT
    assert record.energy_wh == pytest.approx(700, abs=2)


def test_a_dc_charger_reports_the_soc_and_a_vin() -> None:
    cp = CbpCharger(config(pile_id=DC, power_kw=60, meter_interval=60, time_scale=60), now=T0)
    gw = online(cp)
    login = cp.login_replies[-1]
    assert login.result == LoginResult.ACCEPTED
    cp.plug(1, gw.now, Vehicle(soc=40, vin="LSVAU2180N2183294"))
    gw.frames()
    cp.present(1, "LSVAU2180N2183294", "vin", gw.now)
    ((seq, auth),) = gw.frames()
    assert isinstance(auth, AuthRequest) and auth.method == AuthMethod.VIN
    gw.answer(
        seq,
        AuthResult(
            DC, 1, auth.token, AuthStatus.ACCEPTED, make_serial(DC, 1, local_time(gw.now), 1)
        ),
    )
    samples = [m for _, m in gw.advance(2.1) if isinstance(m, RealtimeData)]
    assert samples and all(s.soc is not None and s.soc >= 40 for s in samples)


# --- reboot and firmware ------------------------------------------------------------------
def test_reboot_now_stops_the_charge_and_logs_in_again() -> None:
    cp = charger(meter_interval=60, time_scale=60, reboot_seconds=60)
    gw = online(cp)
    cp.plug(1, gw.now)
    gw.request(RemoteStart(AC, 1, make_serial(AC, 1, local_time(gw.now), 1), "APP", 0))
    frames = gw.request(Reboot(AC, RebootMode.NOW))
    assert isinstance(frames[0][1], RebootReply)
    record = next(m for _, m in frames if isinstance(m, TransactionRecord))
    assert record.stop_reason == StopReason.OTHER
    gw.advance(0.6)
    assert gw.closed and not gw.closed[-1].abort and not cp.powered
    gw.advance(1.0)
    assert cp.powered
    msgs = gw.connect()
    assert [type(m) for m in msgs][:1] == [Login]
    assert any(isinstance(m, TransactionRecord) for m in msgs)  # re-sent after the login


def firmware_request(
    cp: CbpCharger, image: bytes, target: str = "DLH_XD32E_210521003", task: int = 9
) -> FirmwareUpdate:
    return FirmwareUpdate(
        AC,
        task,
        target,
        hashlib.sha256(image).digest(),
        len(image),
        "http://127.0.0.1:8080/firmware/9/image.bin",
    )


def test_firmware_download_install_reboot_and_the_new_version_at_login() -> None:
    cp = charger(
        firmware_version="DLH_XD32E_201110002",
        firmware_download_seconds=60,
        firmware_install_seconds=60,
        reboot_seconds=60,
        time_scale=60,
    )
    gw = online(cp)
    frames = gw.request(firmware_request(cp, IMAGE))
    reply = frames[0][1]
    assert isinstance(reply, FirmwareUpdateReply) and reply.result == FirmwareUpdateResult.ACCEPTED
    statuses: list[FirmwareStatusCode] = []

    def run(seconds: float) -> None:
        for _, m in gw.advance(seconds, answer=True):
            if isinstance(m, FirmwareStatus):
                assert m.task_id == 9
                statuses.append(m.status)

    run(0.1)
    assert gw.downloads == ["http://127.0.0.1:8080/firmware/9/image.bin"]
    cp.download_finished(gw.now, IMAGE)
    run(5)
    assert statuses == [
        FirmwareStatusCode.DOWNLOADING,
        FirmwareStatusCode.DOWNLOADED,
        FirmwareStatusCode.INSTALLING,
        FirmwareStatusCode.INSTALLED,
    ]
    assert cp.powered and gw.closed  # rebooted: the link was closed
    login, *_ = gw.connect()
    assert isinstance(login, Login) and login.firmware_version == "DLH_XD32E_210521003"
    assert cp.firmware_task is None


def test_firmware_with_a_wrong_checksum_is_not_installed() -> None:
    cp = charger(firmware_version="DLH_XD32E_201110002", time_scale=60)
    gw = online(cp)
    request = firmware_request(cp, b"another image")
    gw.request(request)
    gw.advance(0.1, answer=True)
    cp.download_finished(gw.now, IMAGE)
    codes = [m.status for _, m in gw.advance(5, answer=True) if isinstance(m, FirmwareStatus)]
    assert codes[-1] == FirmwareStatusCode.CHECKSUM_FAILED
    assert cp.firmware_version == "DLH_XD32E_201110002" and cp.powered


def test_firmware_is_refused_while_charging_or_when_already_there() -> None:
    cp = charger(firmware_version="DLH_XD32E_210521003")
    gw = online(cp)
    ((_, same),) = gw.request(firmware_request(cp, IMAGE))
    assert isinstance(same, FirmwareUpdateReply)
    assert same.result == FirmwareUpdateResult.ALREADY_AT_TARGET
    cp.plug(1, gw.now)
    gw.request(RemoteStart(AC, 1, make_serial(AC, 1, local_time(gw.now), 1), "APP", 0))
    ((_, busy),) = gw.request(firmware_request(cp, IMAGE, target="DLH_XD32E_220101001"))
    assert isinstance(busy, FirmwareUpdateReply)
    assert busy.result == FirmwareUpdateResult.REJECTED_CHARGING


def test_cbp1_config_is_checked_for_what_a_login_can_carry() -> None:
    with pytest.raises(ValueError, match="up to 20 digits"):
        config(pile_id="4420 0000 0100 0010 0001")
    with pytest.raises(ValueError, match="password"):
        config(password="x" * 17)
    with pytest.raises(ValueError, match="model"):
        config(model="M" * 17)
    assert config(pile_id="4420000001100001").pile_id == "4420000001100001"


# --- against the gateway -----------------------------------------------------------------
async def test_simulated_cloud_board_charger_is_upgraded_by_a_firmware_task(
    database_url: str, tmp_path: Path
) -> None:
    """The whole path with the real gateway: task → 0x94 → download of the
    image from the gateway → 0x95 statuses → reboot → Login with the new
    version → verified."""
    from simulators.driver import SimulatedCharger
    from tests.support.gateway import api_client, running_gateway
    from tests.test_firmware_gateway import FAST, create_task, finished, row_of, upload, wait_task

    raw = bytes(range(256)) * 8  # no simulator header: the 0x94 target version counts
    async with running_gateway(
        database_url, command_timeout=5, firmware_dir=str(tmp_path / "images")
    ) as gw:
        sim = SimulatedCharger(
            config(
                firmware_version="DLH_XD32E_201110002",
                time_scale=60,
                model="XD32E",
                firmware_download_seconds=30,
                firmware_install_seconds=30,
                reboot_seconds=30,
            ),
            f"tcp://127.0.0.1:{gw.cbp_port}",
        )
        sim.start()
        try:
            await sim.wait_until(lambda: sim.model.online, 10, "login")
            async with api_client(gw) as api:
                image = await upload(api, data=raw, version="DLH_XD32E_210521003")
                task = await create_task(api, image_id=image["id"], targets=[AC], **FAST)
                task = await wait_task(gw, api, task["id"], finished, timeout=30)
                assert task["state"] == "completed", task
                row = row_of(task, AC)
                assert (row["state"], row["reported_version"]) == (
                    "verified",
                    "DLH_XD32E_210521003",
                )
                events = (await api.get(f"/api/firmware/tasks/{task['id']}/events")).json()
            path = [e["to_state"] for e in events if e["pile_id"] == AC]
            assert path == [
                "sent",
                "downloading",
                "downloaded",
                "installing",
                "installed",
                "verified",
            ]
            assert sim.model.firmware_version == "DLH_XD32E_210521003"
            assert sim.model.links == 2  # the reboot reconnected once
        finally:
            await sim.close()
