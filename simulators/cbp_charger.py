"""A simulated cloud-board (CBP/1) charger, sans-I/O.

The same charger as ``simulators.charger.Charger`` (guns, vehicles, meter,
authorization, local list, offline sessions, firmware stages, power cycles,
autopilot), speaking CBP/1 instead of OCPP-J: the physical charger and its
firmware logic are shared, only the wire differs. It never touches a socket
or a clock; ``simulators.driver`` moves its bytes over TCP and plays the
network faults, exactly as for the OCPP charger.

How the charger's actions map to CBP/1 (the specification's section in
brackets):

* registration: Login 0x01 → 0x02 [§3 0x01/0x02]. A rejection is counted
  (``login_refusals``, ``login_reason``); the gateway closes the connection
  and the charger tries again after the boot backoff.
* heartbeat 0x03 → 0x04 every heartbeat interval of the login reply, whatever
  else is sent [§3 0x03]; an unanswered request (any kind) makes the charger
  drop the link, as the OCPP charger does.
* gun status, meter samples: 0x13 real-time data on every status change and
  every meter interval while charging, every 5 charger minutes otherwise
  [§3 0x13]. Not kept while the link is down: a cloud board does not buffer
  real-time data.
* authorization: 0x31 → 0x32 [§3 0x31/0x32]; the SERIAL of an accepted
  answer names the session. Offline, the whitelist (0x44) decides and the
  charger makes the SERIAL itself [§2 SERIAL].
* remote start / stop: 0x34 → 0x33, 0x36 → 0x35 [§3]. A gun not plugged in
  refuses a remote start (reason 2), as CBP/1 foresees.
* end of a session: the 0x3B record, kept (across link losses and reboots)
  until a 0x40 confirms it, re-sent after each login [§3 0x3B]; ``offline``
  is set when the session was authorized while offline.
* whitelist: 0x48 → 0x47, 0x44 parts → 0x43, applied atomically at the last
  part [§3 0x44].
* firmware: 0x94 → 0x93, then 0x95 statuses (each acknowledged by 0x96),
  download, SHA-256 check, install, status 6 and reboot; the next Login
  carries the new version [§3 0x94-0x96].
* 0x56 → 0x55, 0x12 → 0x13 (echoing SEQ), 0x92 → 0x91 and reboot [§3].
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar
from urllib.parse import urlsplit

from protocol.cloudboard import (
    AuthMethod,
    AuthRequest,
    AuthResult,
    AuthStatus,
    BadFrame,
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
    LoginReply,
    LoginResult,
    Message,
    Network,
    PileState,
    ReadRealtime,
    RealtimeData,
    Reboot,
    RebootMode,
    RebootReply,
    RebootResult,
    RemoteStart,
    RemoteStartRejectReason,
    RemoteStartReply,
    RemoteStartResult,
    RemoteStop,
    RemoteStopRejectReason,
    RemoteStopReply,
    RemoteStopResult,
    StopReason,
    TimeSync,
    TimeSyncReply,
    TooManyBadFrames,
    TransactionConfirm,
    TransactionConfirmResult,
    TransactionRecord,
    WhitelistAction,
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

from . import meter
from .charger import (
    FIRMWARE_HEADER,
    INF,
    Charger,
    FirmwareJob,
    Gun,
    Outgoing,
    PendingAuth,
    SendFrame,
)
from .config import ChargerConfig
from .stats import Stats

#: The charger's clock: UTC+8 (CBP/1 §2, "local time of the charger, UTC+8
#: unless configured").
LOCAL_OFFSET = timedelta(hours=8)
#: CBP/1 §3 0x13: every 5 min when not charging. Network time, like the
#: heartbeat: not scaled by ``time_scale``.
IDLE_REALTIME_SECONDS = 300.0

_STATUS = {
    "Available": GunStatus.AVAILABLE,
    "Reserved": GunStatus.AVAILABLE,
    "Preparing": GunStatus.PREPARING,
    "Charging": GunStatus.CHARGING,
    "SuspendedEV": GunStatus.SUSPENDED,
    "SuspendedEVSE": GunStatus.SUSPENDED,
    "Finishing": GunStatus.FINISHING,
    "Faulted": GunStatus.FAULTED,
    "Unavailable": GunStatus.UNAVAILABLE,
}
_WITH_SERIAL = frozenset({GunStatus.CHARGING, GunStatus.SUSPENDED, GunStatus.FINISHING})
_METHOD = {
    "card": AuthMethod.CARD,
    "vin": AuthMethod.VIN,
    "password": AuthMethod.PASSWORD,
    "remote": AuthMethod.REMOTE,
    "free": AuthMethod.CARD,  # free vend: no CBP/1 method of its own
}
_STOP = {
    "Local": StopReason.LOCAL,
    "Remote": StopReason.REMOTE,
    "EVDisconnected": StopReason.UNPLUGGED,
    "PowerLoss": StopReason.POWER_LOSS,
    "EmergencyStop": StopReason.EMERGENCY_STOP,
    "EnergyLimit": StopReason.ENERGY_LIMIT,
    "EVFull": StopReason.EV_FULL,
    "TimeLimit": StopReason.TIME_LIMIT,
}
_AUTH_VERDICT = {
    AuthStatus.ACCEPTED: "Accepted",
    AuthStatus.INVALID: "Invalid",
    AuthStatus.BLOCKED: "Blocked",
    AuthStatus.EXPIRED: "Expired",
    AuthStatus.ALREADY_IN_USE: "ConcurrentTx",
}
_FIRMWARE = {
    "Downloading": (FirmwareStatusCode.DOWNLOADING, 0),
    "Downloaded": (FirmwareStatusCode.DOWNLOADED, 100),
    "DownloadFailed": (FirmwareStatusCode.DOWNLOAD_FAILED, 0),
    "Installing": (FirmwareStatusCode.INSTALLING, 0),
    "Installed": (FirmwareStatusCode.INSTALLED, 100),
    "InstallationFailed": (FirmwareStatusCode.INSTALL_FAILED, 0),
}
#: The reply each request of the charger waits for; 0x13 has none.
_REPLY: dict[type[Message], type[Message]] = {
    Login: LoginReply,
    Heartbeat: HeartbeatAck,
    AuthRequest: AuthResult,
    TransactionRecord: TransactionConfirm,
    FirmwareStatus: FirmwareStatusAck,
}


def local_time(now: float) -> datetime:
    """Epoch seconds → the charger's naive local time, to the millisecond."""
    t = datetime.fromtimestamp(now, UTC) + LOCAL_OFFSET
    return t.replace(tzinfo=None, microsecond=t.microsecond // 1000 * 1000)


def parse_tcp_url(url: str) -> tuple[str, int]:
    """``tcp://host:port`` (or ``host:port``) → (host, port)."""
    parts = urlsplit(url if "://" in url else f"tcp://{url}")
    if parts.scheme not in ("tcp", "cbp") or not parts.hostname or parts.port is None:
        raise ValueError(f"CBP/1 URL must look like tcp://HOST:PORT, got {url!r}")
    return parts.hostname, parts.port


def cbp_pile(pile_id: str) -> str:
    """The PILE field: a shorter ID is sent zero-padded to 20 digits (CBP/1
    §5: ``4420000001100001`` goes out as ``00 00 44 20 ...``)."""
    return pile_id.rjust(20, "0")


def _msg(out: Outgoing) -> Any:
    """The CBP/1 message a queued item carries."""
    return out.payload["message"]


class CbpCharger(Charger):
    """One simulated CBP/1 charger (see the module docstring)."""

    protocol: ClassVar[str] = "cbp1"
    LIMIT_REASON: ClassVar[str] = "EnergyLimit"

    def __init__(
        self,
        config: ChargerConfig,
        *,
        now: float,
        stats: Stats | None = None,
        trace: bool = True,
    ) -> None:
        super().__init__(config, now=now, stats=stats, trace=trace)
        self.pile = cbp_pile(config.pile_id)
        # A cloud board has a whitelist, no authorization cache.
        self.keys["AuthorizationCacheEnabled"].value = "false"
        self.decoder = CbpDecoder()
        self._seq = itertools.count(1)
        self._serial_counter = itertools.count(1)
        self.inflight_seq = b""
        self.inflight_reply: type[Message] | None = None
        self.last_heartbeat = now
        self.next_idle_realtime = INF
        self.assigned: dict[int, str] = {}  # gun → SERIAL of an accepted 0x32 / 0x34
        self.serials: dict[int, str] = {}  # gun → SERIAL of its running (or finishing) session
        self.last_session_wh: dict[int, int] = {}
        self.confirmed: list[str] = []  # SERIALs the gateway confirmed (0x40)
        self.whitelist_version = 0
        self.whitelist: dict[tuple[int, str], None] = {}
        self._staged: dict[tuple[int, str], None] | None = None
        self.firmware_task: FirmwareUpdate | None = None
        self._checksum_failed = False
        self.reboot_when_idle = False
        self.login_replies: list[LoginReply] = []

    # --- what the scenario and the driver look at ----------------------------------------
    def transaction_serial(self, gun: int) -> str | None:
        g = self.gun(gun)
        return self.serials.get(gun) if g.tx is not None else None

    def server_transaction_id(self, gun: int) -> int | None:
        return None  # CBP/1 names a session by its SERIAL; the gateway's id is not sent

    def queued_transaction_messages(self) -> int:
        return len(self.unconfirmed_records())

    def unconfirmed_records(self) -> list[TransactionRecord]:
        return [
            m
            for m in (_msg(o) for o in self.queue if o.action == "TransactionRecord")
            if isinstance(m, TransactionRecord)
        ]

    def snapshot(self) -> dict[str, Any]:
        snap = super().snapshot()
        snap.update(
            protocol=self.protocol,
            local_list_version=self.whitelist_version,
            whitelist_entries=len(self.whitelist),
            login_refusals=self.login_refusals,
            login_reason=self.login_reason,
            confirmed_records=len(self.confirmed),
        )
        for g in snap["guns"]:
            g["transaction_id"] = self.transaction_serial(g["gun"])
        return snap

    def set_local_list(self, version: int, update_type: str, entries: dict[str, str | None]) -> str:
        """Install a whitelist directly (commissioning): tokens with status
        Accepted are card entries; a differential ``None`` removes one."""
        new = {} if update_type == "Full" else dict(self.whitelist)
        for tag, status in entries.items():
            key = (int(AuthMethod.CARD), tag)
            if status == "Accepted":
                new[key] = None
            else:
                new.pop(key, None)
        if len(new) > self.config.local_auth_list_max:
            return "Failed"
        self.whitelist, self.whitelist_version = new, version
        return "Accepted"

    def _local_verdict(self, id_tag: str, now: float) -> str | None:
        if not self._flag("LocalAuthListEnabled"):
            return None
        held = any(token == id_tag for _, token in self.whitelist)
        return "Accepted" if held else None

    # --- link ----------------------------------------------------------------------------
    def connected(self, now: float) -> None:
        # CBP/1 §1: every connection starts with a Login, whatever the last
        # one said.
        self.decoder = CbpDecoder()
        if self.registration == "Accepted":
            self.registration = None
            self.next_boot_at = now
        super().connected(now)

    def next_deadline(self) -> float:
        t = super().next_deadline()
        if self.online:
            if self.inflight is None:
                t = min(t, self.last_heartbeat + self.heartbeat_interval)
            t = min(t, self.next_idle_realtime)
        return t

    def tick(self, now: float) -> None:
        if self.reboot_when_idle and self.powered and all(g.tx is None for g in self.guns):
            self.reboot_when_idle = False
            self.shutdown_at = min(self.shutdown_at, now + 0.5)
            self._shutdown_reason = "reboot (0x92, when idle)"
        super().tick(now)
        if not self.online:
            return
        if now >= self.next_idle_realtime:
            self.next_idle_realtime = now + IDLE_REALTIME_SECONDS
            for g in self.guns:
                if g.tx is None:
                    self._enqueue(self._status_message(g.number, g.status, now), now)
        # CBP/1 §3 0x03: a heartbeat every interval, whatever else is sent.
        if (
            self.inflight is None
            and now >= self.last_heartbeat + self.heartbeat_interval
            and not any(o.action == "Heartbeat" for o in self.queue)
        ):
            beat = Heartbeat(self.pile, PileState.NORMAL)
            self._enqueue(Outgoing("Heartbeat", {"message": beat}), now)
        self._pump(now)

    # --- sending -------------------------------------------------------------------------
    def _enqueue(self, msg: Outgoing, now: float, *, front: bool = False) -> None:
        if msg.action == "Heartbeat" and "message" not in msg.payload:
            return  # the OCPP model's idle heartbeat; CBP/1 sends its own (tick)
        if msg.action == "Authorize":
            gun = msg.gun or 1
            pending = self.gun(gun).authorizing
            method = _METHOD[pending.method] if pending is not None else AuthMethod.CARD
            tag = str(msg.payload["idTag"])
            msg = Outgoing(
                "AuthRequest",
                {"message": AuthRequest(self.pile, gun, method, tag), "idTag": tag},
                gun=gun,
            )
        elif msg.action == "StartTransaction":
            return  # CBP/1 has no start message: the 0x13 with the SERIAL says it
        elif msg.action == "Skip":
            return
        super()._enqueue(msg, now, front=front)

    def _pump(self, now: float) -> None:
        if not self.link or self.inflight is not None or not self.powered:
            return
        if self.registration != "Accepted":
            if now >= self.next_boot_at:
                self._send_call(self._boot_message(), now)
            return
        if now < self.queue_hold_until:
            return
        # One request of the charger outstanding at a time; real-time data
        # (0x13, never answered) is not held back behind it.
        i = 0
        while i < len(self.queue):
            msg = self.queue[i]
            if msg is self.inflight:
                i += 1
                continue
            if type(_msg(msg)) in _REPLY:
                if self.inflight is not None:
                    break
                self._send_call(msg, now)
                i += 1
            else:
                self._send_call(msg, now)
                del self.queue[i]

    def _boot_message(self) -> Outgoing:
        c = self.config
        login = Login(
            pile=self.pile,
            kind=Kind.DC if self.kind == "DC" else Kind.AC,
            gun_count=c.guns,
            protocol_version=10,
            firmware_version=self.firmware_version[:24],
            model=c.model[:16],
            network=Network.CELLULAR,
            iccid=c.iccid,
            display=Display.TOUCH_SCREEN if c.touch_screen else Display.SEGMENT,
            auth_key=c.password or "",
        )
        return Outgoing("Login", {"message": login})

    def _send_call(self, msg: Outgoing, now: float, payload: dict[str, Any] | None = None) -> None:
        message = _msg(msg)
        data = encode_message(next(self._seq) & 0xFFFF, message)
        self.stats.frames_out += 1
        self.outbox.append(SendFrame(data))
        reply = _REPLY.get(type(message))
        if reply is None:
            return
        self.inflight = msg
        self.inflight_seq = data[2:4]
        self.inflight_reply = reply
        self.inflight_at = now
        self.last_sent = now
        if isinstance(message, Heartbeat | Login):
            self.last_heartbeat = now
        msg.attempts += 1
        self.stats.calls_sent += 1

    def _reply_frame(self, seq_bytes: bytes, message: Message) -> None:
        self.stats.frames_out += 1
        self.outbox.append(SendFrame(encode_reply_message(seq_bytes, message)))

    # --- what 0x13 says ------------------------------------------------------------------
    def _realtime(self, g: Gun, at: float, status: str | None = None) -> RealtimeData:
        tx = g.tx
        power = tx.power_w if tx is not None else 0.0
        voltage, current = meter.electrical(self.kind, power, g.soc, self.config.power_w)
        code = _STATUS.get(status or g.status, GunStatus.AVAILABLE)
        serial = self.serials.get(g.number) if code in _WITH_SERIAL else None
        if tx is not None:
            session = round(g.meter_wh) - tx.meter_start
        else:
            session = self.last_session_wh.get(g.number, 0) if serial else 0
        # CBP/1 §3 0x13: SoC is 0xFF (unknown) for AC, always. A simulated
        # AC charger configured to report SoC breaks that on purpose (the
        # gateway flags the contradiction).
        soc = round(g.soc) if self.kind == "DC" or "SoC" in self.measurands else None
        return RealtimeData(
            pile=self.pile,
            gun=g.number,
            status=code,
            serial=serial,
            voltage_dv=min(0xFFFF, round(voltage * 10)),
            current_da=min(0xFFFF, round(current * 10)),
            power_w=round(power),
            meter_wh=round(g.meter_wh),
            session_energy_wh=max(0, session),
            soc=None if soc is None else max(0, min(100, soc)),
            fault_code=0,
            sample_time=local_time(at),
        )

    def _status_message(self, connector: int, status: str, now: float) -> Outgoing:
        if connector == 0:
            return Outgoing("Skip", {})  # CBP/1 has no pile-level status
        g = self.gun(connector)
        return Outgoing("RealtimeData", {"message": self._realtime(g, now, status)})

    def _meter_values(self, g: Gun, at: float, context: str | None = None) -> Outgoing:
        return Outgoing("RealtimeData", {"message": self._realtime(g, at)})

    # --- sessions --------------------------------------------------------------------------
    def _own_serial(self, gun: int, now: float) -> str:
        return make_serial(self.pile, gun, local_time(now), next(self._serial_counter) % 10000)

    def _start(self, g: Gun, pending: PendingAuth, now: float, *, offline: bool = False) -> None:
        serial = self.assigned.pop(g.number, None)
        if serial is None or offline or not self.online:
            serial = self._own_serial(g.number, now)  # CBP/1 §3 0x3B: made by the charger
        self.serials[g.number] = serial
        super()._start(g, pending, now, offline=offline)

    def _stop(self, g: Gun, now: float, reason: str, *, id_tag: str | None = None) -> None:
        tx = g.tx
        assert tx is not None
        if now > tx.last_update:
            self._advance(g, now)
        g.tx = None
        meter_stop = round(g.meter_wh)
        serial = self.serials.get(g.number) or self._own_serial(g.number, now)
        record = TransactionRecord(
            serial=serial,
            pile=self.pile,
            gun=g.number,
            start_time=local_time(tx.start_at),
            stop_time=local_time(now),
            meter_start_wh=tx.meter_start,
            meter_stop_wh=meter_stop,
            energy_wh=max(0, meter_stop - tx.meter_start),
            auth_method=_METHOD[tx.method],
            offline=tx.offline,
            token=tx.id_tag,
            stop_reason=_STOP.get(reason, StopReason.OTHER),
        )
        self.last_session_wh[g.number] = record.energy_wh
        self.note(
            now,
            f"gun {g.number}: session {serial[-16:]} stopped ({reason}), "
            f"{record.energy_wh} Wh{', offline' if tx.offline else ''}",
        )
        self._enqueue(Outgoing("TransactionRecord", {"message": record}, keep=True), now)
        self._set_status(g, "Finishing" if g.plugged else "Available", now)

    def _set_status(self, g: Gun, status: str, now: float) -> None:
        super()._set_status(g, status, now)
        if g.tx is None and g.status not in ("Finishing", "Charging"):
            self.serials.pop(g.number, None)

    # --- receiving -----------------------------------------------------------------------
    def receive(self, text: str | bytes, now: float) -> None:
        data = text.encode() if isinstance(text, str) else text
        for event in self.decoder.feed(data):
            if isinstance(event, FrameReceived):
                self.stats.frames_in += 1
                self._on_frame(event.frame.type, event.frame.seq_bytes, event.message, now)
            elif isinstance(event, BadFrame):
                self.stats.error(f"bad_frame:{event.reason.value}")
                self.note(now, f"bad frame from the gateway: {event.reason.value}")
            elif isinstance(event, TooManyBadFrames):
                self.close_link(now, abort=True, reason="too many bad frames")
                return
        self._pump(now)

    def _on_frame(self, type_: int, seq_bytes: bytes, message: Message, now: float) -> None:
        msg = self.inflight
        if (
            msg is not None
            and self.inflight_reply is not None
            and isinstance(message, self.inflight_reply)
            and seq_bytes == self.inflight_seq
        ):
            self._on_reply(msg, message, now)
            return
        if isinstance(message, TransactionConfirm):
            self._confirmed(message, now)  # late, after a timeout: still good
            return
        if type_ % 2 == 1 or isinstance(message, _REPLY_TYPES):
            self.stats.error("unexpected_answer")
            self.note(now, f"reply to no outstanding request: {type(message).__name__}")
            return
        self.stats.calls_received += 1
        reply, after = self._answer(message, now)
        self.note(
            now,
            f"{type(message).__name__} -> "
            f"{type(reply).__name__ if reply is not None else 'no reply'}",
        )
        if reply is not None:
            self._reply_frame(seq_bytes, reply)
        if after is not None:
            after()

    def _on_reply(self, msg: Outgoing, message: Message, now: float) -> None:
        self.inflight = None
        self.inflight_reply = None
        self.stats.observe(msg.action, now - self.inflight_at)
        for i, queued in enumerate(self.queue):
            if queued is msg:
                del self.queue[i]
                break
        if isinstance(message, LoginReply):
            self._on_login_reply(message, now)
        elif isinstance(message, AuthResult):
            if message.result == AuthStatus.ACCEPTED and message.serial:
                self.assigned[message.gun] = message.serial
            info = {"status": _AUTH_VERDICT[message.result]}
            self._on_authorize(msg, {"idTagInfo": info}, now)
            g = self.gun(message.gun) if 1 <= message.gun <= len(self.guns) else None
            if g is not None and g.tx is None and g.authorized is None:
                self.assigned.pop(message.gun, None)  # refused, or not used
        elif isinstance(message, TransactionConfirm):
            self._confirmed(message, now)

    def _on_login_reply(self, m: LoginReply, now: float) -> None:
        self.login_replies.append(m)
        if m.result == LoginResult.ACCEPTED:
            self.login_reason = None
            self.next_idle_realtime = now + IDLE_REALTIME_SECONDS
            self.last_heartbeat = now
            self._on_boot_answer(
                {"status": "Accepted", "interval": m.heartbeat_interval}, None, now
            )
            return
        self.login_refusals += 1
        self.login_reason = m.reason.name.lower()
        self.stats.error(f"login_rejected:{self.login_reason}")
        self.registration = "Rejected"
        self.note(now, f"login rejected: reason {int(m.reason)} {self.login_reason}")
        self._boot_retry_later(now, 0)

    def _confirmed(self, m: TransactionConfirm, now: float) -> None:
        for o in list(self.queue):
            if o.action == "TransactionRecord" and _msg(o).serial == m.serial:
                if o is self.inflight:
                    continue
                self.queue.remove(o)
        self.confirmed.append(m.serial)
        if m.result != TransactionConfirmResult.STORED:
            self.stats.error("record_rejected")
            self.note(now, f"record {m.serial[-16:]} rejected by the gateway: not re-sent")

    # --- the gateway's requests ----------------------------------------------------------
    def _answer(self, m: Message, now: float) -> tuple[Message | None, Callable[[], None] | None]:
        if isinstance(m, TimeSync):
            return TimeSyncReply(self.pile, local_time(now)), None
        if isinstance(m, ReadRealtime):
            if not 1 <= m.gun <= len(self.guns):
                return None, None
            return self._realtime(self.gun(m.gun), now), None
        if isinstance(m, RemoteStart):
            return self._remote_start(m, now)
        if isinstance(m, RemoteStop):
            return self._remote_stop(m, now)
        if isinstance(m, WhitelistVersionQuery):
            return WhitelistVersionReply(
                self.pile,
                self.whitelist_version,
                len(self.whitelist),
                min(0xFFFF, self.config.local_auth_list_max),
            ), None
        if isinstance(m, WhitelistUpdate):
            return self._whitelist_update(m), None
        if isinstance(m, Reboot):
            return self._reboot(m, now)
        if isinstance(m, FirmwareUpdate):
            return self._firmware_update(m, now), None
        return None, None

    def _remote_start(
        self, m: RemoteStart, now: float
    ) -> tuple[Message, Callable[[], None] | None]:
        def reply(reason: RemoteStartRejectReason) -> Message:
            result = (
                RemoteStartResult.STARTED
                if reason == RemoteStartRejectReason.NONE
                else RemoteStartResult.REJECTED
            )
            return RemoteStartReply(self.pile, m.gun, result, reason)

        if not 1 <= m.gun <= len(self.guns):
            return reply(RemoteStartRejectReason.UNKNOWN_GUN), None
        g = self.gun(m.gun)
        if g.tx is not None or g.authorized is not None or g.authorizing is not None:
            return reply(RemoteStartRejectReason.GUN_BUSY), None
        if not g.operative or g.status == "Faulted":
            return reply(RemoteStartRejectReason.FAULTED), None
        if not g.plugged:
            return reply(RemoteStartRejectReason.NOT_PLUGGED_IN), None
        limit = g.meter_wh + m.energy_limit_wh if m.energy_limit_wh else None

        def start() -> None:
            if g.tx is None:
                self.assigned[g.number] = m.serial
                self._authorized(g, PendingAuth(m.token, "remote", limit), now)

        return reply(RemoteStartRejectReason.NONE), start

    def _remote_stop(self, m: RemoteStop, now: float) -> tuple[Message, Callable[[], None] | None]:
        def reply(reason: RemoteStopRejectReason) -> Message:
            result = (
                RemoteStopResult.STOPPING
                if reason == RemoteStopRejectReason.NONE
                else RemoteStopResult.REJECTED
            )
            return RemoteStopReply(self.pile, m.gun, result, reason)

        if not 1 <= m.gun <= len(self.guns) or self.gun(m.gun).tx is None:
            return reply(RemoteStopRejectReason.NOT_CHARGING), None
        g = self.gun(m.gun)
        if self.serials.get(g.number) != m.serial:
            return reply(RemoteStopRejectReason.UNKNOWN_SERIAL), None

        def stop() -> None:
            if g.tx is not None:
                self._stop(g, now, "Remote")
                self._after_transaction(g, now)

        return reply(RemoteStopRejectReason.NONE), stop

    def _whitelist_update(self, m: WhitelistUpdate) -> Message:
        def reply(result: WhitelistUpdateResult) -> Message:
            return WhitelistUpdateReply(self.pile, m.version, m.part, result)

        if m.part == 0:
            if m.mode == WhitelistMode.DIFFERENTIAL and m.base_version != self.whitelist_version:
                self._staged = None
                return reply(WhitelistUpdateResult.VERSION_MISMATCH)
            self._staged = {} if m.mode == WhitelistMode.FULL else dict(self.whitelist)
        if self._staged is None:
            return reply(WhitelistUpdateResult.FAILED)  # a part without its part 0
        for e in m.entries:
            key = (int(e.method), e.token)
            if e.action == WhitelistAction.REMOVE:
                self._staged.pop(key, None)
            else:
                self._staged[key] = None
        if len(self._staged) > self.config.local_auth_list_max:
            self._staged = None
            return reply(WhitelistUpdateResult.CAPACITY_EXCEEDED)
        if m.last:
            # CBP/1 §3 0x44: the new version applies atomically at the last part.
            self.whitelist, self._staged = self._staged, None
            self.whitelist_version = m.version
        return reply(WhitelistUpdateResult.ACCEPTED)

    def _reboot(self, m: Reboot, now: float) -> tuple[Message, Callable[[], None] | None]:
        def reboot() -> None:
            if m.mode == RebootMode.WHEN_IDLE and any(g.tx is not None for g in self.guns):
                self.reboot_when_idle = True
                return
            for g in self.guns:
                if g.tx is not None:
                    self._stop(g, now, "Reboot")
            # A moment for the records to reach the gateway; they are kept anyway.
            self.shutdown_at = now + 0.5
            self._shutdown_reason = "reboot (0x92)"

        return RebootReply(self.pile, RebootResult.ACCEPTED), reboot

    # --- firmware ------------------------------------------------------------------------
    def _firmware_update(self, m: FirmwareUpdate, now: float) -> Message:
        def reply(result: FirmwareUpdateResult) -> Message:
            return FirmwareUpdateReply(self.pile, m.task_id, result)

        if any(g.tx is not None for g in self.guns):
            return reply(FirmwareUpdateResult.REJECTED_CHARGING)
        if m.target_version == self.firmware_version:
            return reply(FirmwareUpdateResult.ALREADY_AT_TARGET)
        self.firmware_task = m
        self._checksum_failed = False
        self.firmware = FirmwareJob(
            url=m.url, retrieve_at=now, attempts_left=1, retry_interval=30.0, stage_at=now
        )
        return reply(FirmwareUpdateResult.ACCEPTED)

    def _send_firmware_status(self, status: str, now: float) -> None:
        self.firmware_status = status
        task = self.firmware_task
        self.note(now, f"firmware: {status}")
        if task is None:
            return
        code, progress = _FIRMWARE.get(status, (FirmwareStatusCode.INSTALL_FAILED, 0))
        if status == "InstallationFailed" and self._checksum_failed:
            code = FirmwareStatusCode.CHECKSUM_FAILED
        self._enqueue(
            Outgoing(
                "FirmwareStatus",
                {"message": FirmwareStatus(self.pile, task.task_id, code, progress)},
                keep=True,
            ),
            now,
        )

    def _check_image(self, job: FirmwareJob) -> str | None:
        task = self.firmware_task
        if (
            task is not None
            and job.body
            and "check" not in self.config.firmware_faults
            and hashlib.sha256(job.body).digest() != task.sha256
        ):
            self._checksum_failed = True
            return "SHA-256 differs from the 0x94 request"
        problem = super()._check_image(job)
        if problem is not None and "check" in self.config.firmware_faults:
            self._checksum_failed = True
        if (
            problem is None
            and task is not None
            and not (job.body or b"").startswith(FIRMWARE_HEADER)
        ):
            # An image without the simulator's header: the version 0x94 named
            # (the OCPP charger, which gets no version, guesses from the URL).
            job.new_version = task.target_version
        return problem

    def _tick_firmware(self, now: float) -> None:
        job = self.firmware
        before = job.stage if job is not None else None
        super()._tick_firmware(now)
        if job is not None and before == "installing" and job.stage == "rebooting":
            # CBP/1 §3 0x95: status 6, then the reboot; the next Login's
            # firmware version is the proof.
            self._send_firmware_status("Installed", now)

    def _power_on(self, now: float) -> None:
        super()._power_on(now)
        # The OCPP charger reports the outcome after booting; a cloud board
        # reported 6 before rebooting and its Login tells the rest.
        self.firmware_report = None
        if self.firmware is None:
            self.firmware_task = None


_REPLY_TYPES = tuple(_REPLY.values())

__all__ = ["CbpCharger", "cbp_pile", "local_time", "parse_tcp_url"]
