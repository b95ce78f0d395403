"""Simulated cloud-board (CBP/1) chargers and CBP/1 load mode.

One :class:`CbpSimCharger` is one asyncio task family speaking CBP/1 over TCP
through the sans-I/O codec (``protocol.cloudboard``) from the charger's side:

* connect, Login (0x01), wait for 0x02; heartbeats (0x03) at the interval of
  the login reply (or an override), each timed until its 0x04;
* answers the gateway's requests: 0x56 time sync → 0x55, 0x12 → 0x13,
  0x34 remote start → 0x33 (and starts charging), 0x36 remote stop → 0x35
  (and stops), 0x48 → 0x47 with its whitelist version, 0x44 → 0x43 (the
  list is kept, applied atomically on the last part), 0x92 → 0x91,
  0x94 → 0x93 rejected: unsupported;
* while charging: 0x13 every ``realtime_interval`` simulated seconds (15 s,
  scaled by ``time_scale``) with a meter register growing at the gun's power;
  0x13 on every status change and every 5 min otherwise;
* on stop, a 0x3B transaction record (SERIAL from the gateway's 0x32 / 0x34,
  or made by the charger), kept and re-sent until a 0x40 confirms it, and
  re-sent after every login;
* an optional autopilot (load mode): present a card (0x31 → 0x32), charge,
  stop, idle, again. A rejected card still charges (free vend, like the OCPP
  load mode) under a SERIAL the charger makes.

It reconnects after a lost connection until :meth:`close`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from protocol.cloudboard import (
    AuthMethod,
    AuthRequest,
    AuthResult,
    AuthStatus,
    BadFrame,
    CbpDecoder,
    Display,
    FirmwareUpdate,
    FirmwareUpdateReply,
    FirmwareUpdateResult,
    FrameReceived,
    GunStatus,
    Heartbeat,
    Kind,
    Login,
    LoginReply,
    LoginResult,
    Message,
    MessageType,
    Network,
    PileState,
    ReadRealtime,
    RealtimeData,
    Reboot,
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

from .cbp_charger import parse_tcp_url
from .stats import Stats

if TYPE_CHECKING:
    from .load import LoadOptions, LoadReport

LOCAL = timedelta(hours=8)  # the charger's clock: UTC+8 (CBP/1 §2)
CHARGING = frozenset({GunStatus.CHARGING, GunStatus.SUSPENDED})


def local_now() -> datetime:
    """Now as the charger's naive local time, to the millisecond."""
    t = datetime.now(UTC) + LOCAL
    return t.replace(tzinfo=None, microsecond=t.microsecond // 1000 * 1000)


@dataclass(frozen=True, slots=True)
class CbpAutopilot:
    """Charge by itself: card, charge ``charge_seconds``, stop, idle, again."""

    token: str = "LOADTEST"
    charge_seconds: float = 60.0
    idle_seconds: float = 20.0
    first_delay: float = 1.0
    gun: int = 1


@dataclass(frozen=True, slots=True)
class CbpChargerConfig:
    pile_id: str
    kind: Literal["AC", "DC"] = "AC"
    guns: int = 1
    power_kw: float = 7.0
    auth_key: str = ""
    firmware_version: str = "PILESIM_CBP_1.0.0"
    model: str = "SIM-CBP"
    display: Display = Display.TOUCH_SCREEN
    realtime_interval: float = 15.0  # simulated seconds between 0x13 while charging
    idle_realtime_interval: float = 300.0  # simulated seconds between 0x13 otherwise
    time_scale: float = 1.0  # simulated seconds per real second
    heartbeat_interval: float | None = None  # None: the login reply's
    request_timeout: float = 30.0
    record_retry: float = 10.0  # real seconds before an unconfirmed record is re-sent
    reconnect_delay: float = 2.0
    whitelist_capacity: int = 1000
    autopilot: CbpAutopilot | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.guns <= 2:
            raise ValueError("a simulated CBP/1 charger has 1 or 2 guns")
        if self.time_scale <= 0:
            raise ValueError("time scale must be > 0")


@dataclass(slots=True)
class GunSim:
    """One gun: what 0x13 reports and the session running on it."""

    number: int
    status: GunStatus = GunStatus.AVAILABLE
    meter: float = 10_000.0  # Wh, lifetime register
    serial: str | None = None
    token: str = ""
    method: AuthMethod = AuthMethod.REMOTE
    meter_start: int = 0
    start_time: datetime | None = None
    energy_limit_wh: int = 0
    power_w: int = 0
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    @property
    def meter_wh(self) -> int:
        return int(self.meter)

    @property
    def session_wh(self) -> int:
        return self.meter_wh - self.meter_start if self.serial else 0


class CbpSimCharger:
    """One simulated CBP/1 charger connected to ``host:port``."""

    def __init__(
        self, config: CbpChargerConfig, host: str, port: int, *, stats: Stats | None = None
    ) -> None:
        self.config = config
        self.host = host
        self.port = port
        self.stats = stats if stats is not None else Stats()
        self.pile = config.pile_id
        self.guns = {n: GunSim(n) for n in range(1, config.guns + 1)}
        self.online = False
        self.logged_in = asyncio.Event()
        self.heartbeat_interval: float = 10.0
        self.login_replies: list[LoginReply] = []
        self.received: list[Message] = []  # every message of the gateway, in order
        self.records: dict[str, TransactionRecord] = {}  # unconfirmed, by SERIAL
        self.confirmed: list[str] = []  # SERIALs the gateway confirmed
        self.whitelist_version = 0
        self.whitelist: dict[tuple[int, str], WhitelistAction] = {}
        self._staged: dict[tuple[int, str], WhitelistAction] | None = None
        self._seq = itertools.count(1)
        self._counter = itertools.count(1)
        self._pending: dict[tuple[int, bytes], tuple[asyncio.Future[Message], str, float]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._session: set[asyncio.Task[None]] = set()
        self._closing = False
        self._stop_reason: dict[int, StopReason] = {}

    # --- lifecycle ----------------------------------------------------------------------
    def start(self) -> asyncio.Task[None]:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"cbp-sim-{self.pile}")
        return self._task

    async def close(self, timeout: float = 5.0) -> None:
        self._closing = True
        if self._writer is not None:
            self._writer.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._task, timeout)

    async def _run(self) -> None:
        while not self._closing:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.host, self.port), self.config.request_timeout
                )
            except (OSError, TimeoutError):
                self.stats.connect_failures += 1
                await asyncio.sleep(self.config.reconnect_delay)
                continue
            self.stats.connects += 1
            self._writer = writer
            try:
                await self._connection(reader, writer)
            finally:
                was_online = self.online
                self.online = False
                self.logged_in.clear()
                for t in list(self._session):
                    t.cancel()
                for t in list(self._session):
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await t
                self._session.clear()
                for fut, _, _ in self._pending.values():
                    if not fut.done():
                        fut.cancel()
                self._pending.clear()
                writer.close()
                self._writer = None
                if was_online:
                    self.stats.disconnects += 1
                    if not self._closing:
                        self.stats.error("connection_lost")
            if not self._closing:
                await asyncio.sleep(self.config.reconnect_delay)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        reading = asyncio.create_task(self._read(reader))
        try:
            reply = await self.request(self._login_message(), MessageType.LOGIN_REPLY, "Login")
            if not isinstance(reply, LoginReply) or reply.result != LoginResult.ACCEPTED:
                self.stats.error("login_rejected")
                return
            self.login_replies.append(reply)
            self.heartbeat_interval = float(
                self.config.heartbeat_interval or reply.heartbeat_interval or 10
            )
            self.online = True
            self.logged_in.set()
            self._spawn(self._heartbeats())
            for serial in list(self.records):  # unconfirmed records after each login
                self._spawn(self._deliver_record(serial))
            for gun in self.guns.values():
                await self.send(self.realtime(gun))
                self._spawn(self._realtime_loop(gun))
            if self.config.autopilot is not None:
                self._spawn(self._autopilot(self.config.autopilot))
            await reading
        except (TimeoutError, ConnectionError, OSError):
            pass
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reading

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._session.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._session.discard(task)
        if not task.cancelled():
            exc = task.exception()  # retrieved: a lost connection ends session tasks
            if exc is not None and not isinstance(exc, ConnectionError | OSError | TimeoutError):
                self.stats.error(f"task:{type(exc).__name__}")

    # --- sending ------------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        w = self._writer
        if w is None or w.transport.is_closing():
            raise ConnectionError("not connected")
        w.write(data)
        self.stats.frames_out += 1

    async def send(self, message: Message) -> bytes:
        """Send a message of the charger's own; return its SEQ bytes."""
        data = encode_message(next(self._seq) & 0xFFFF, message)
        self._write(data)
        return data[2:4]

    async def request(
        self, message: Message, reply_type: int, action: str, timeout: float | None = None
    ) -> Message:
        """Send and wait for the reply of ``reply_type`` echoing the SEQ; timed."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Message] = loop.create_future()
        seq = encode_message(next(self._seq) & 0xFFFF, message)
        key = (reply_type, seq[2:4])
        self._pending[key] = (fut, action, time.monotonic())
        self.stats.calls_sent += 1
        try:
            self._write(seq)
            return await asyncio.wait_for(fut, timeout or self.config.request_timeout)
        except TimeoutError:
            self.stats.call_timeouts += 1
            self.stats.error(f"timeout:{action}")
            raise
        finally:
            self._pending.pop(key, None)

    # --- receiving ----------------------------------------------------------------------
    async def _read(self, reader: asyncio.StreamReader) -> None:
        decoder = CbpDecoder()
        while True:
            data = await reader.read(65536)
            if not data:
                return
            for event in decoder.feed(data):
                if isinstance(event, FrameReceived):
                    self.stats.frames_in += 1
                    self._on_frame(event.frame.type, event.frame.seq_bytes, event.message)
                elif isinstance(event, BadFrame):
                    self.stats.error("bad_frame")
                elif isinstance(event, TooManyBadFrames):
                    return

    def _on_frame(self, type_: int, seq_bytes: bytes, message: Message) -> None:
        if len(self.received) < 1000:
            self.received.append(message)
        pending = self._pending.pop((type_, seq_bytes), None)
        if pending is not None:
            fut, action, t0 = pending
            self.stats.observe(action, time.monotonic() - t0)
            if not fut.done():
                fut.set_result(message)
            if isinstance(message, TransactionConfirm):
                self._confirmed(message)
            return
        if isinstance(message, TransactionConfirm):  # a late confirm still counts
            self._confirmed(message)
            return
        if type_ % 2 == 1 or type_ in (
            MessageType.LOGIN_REPLY,
            MessageType.HEARTBEAT_ACK,
            MessageType.AUTH_RESULT,
        ):
            return  # a late reply
        self.stats.calls_received += 1
        try:
            reply, after = self._answer(message)
            if reply is not None:
                self._write(encode_reply_message(seq_bytes, reply))
            if after is not None:
                after()
        except ConnectionError:
            pass

    def _confirmed(self, m: TransactionConfirm) -> None:
        if self.records.pop(m.serial, None) is not None:
            self.confirmed.append(m.serial)
            if m.result != TransactionConfirmResult.STORED:
                self.stats.error("record_rejected")

    # --- answers to the gateway ------------------------------------------------------------
    def _answer(self, m: Message) -> tuple[Message | None, Callable[[], None] | None]:
        if isinstance(m, TimeSync):
            return TimeSyncReply(self.pile, m.time), None
        if isinstance(m, ReadRealtime):
            gun = self.guns.get(m.gun)
            return (self.realtime(gun) if gun else None), None
        if isinstance(m, RemoteStart):
            return self._remote_start(m)
        if isinstance(m, RemoteStop):
            return self._remote_stop(m)
        if isinstance(m, WhitelistVersionQuery):
            return WhitelistVersionReply(
                self.pile,
                self.whitelist_version,
                len(self.whitelist),
                self.config.whitelist_capacity,
            ), None
        if isinstance(m, WhitelistUpdate):
            return self._whitelist_update(m), None
        if isinstance(m, Reboot):
            return RebootReply(self.pile, RebootResult.ACCEPTED), None
        if isinstance(m, FirmwareUpdate):
            return FirmwareUpdateReply(
                self.pile, m.task_id, FirmwareUpdateResult.REJECTED_UNSUPPORTED
            ), None
        return None, None

    def _remote_start(self, m: RemoteStart) -> tuple[Message, Callable[[], None] | None]:
        gun = self.guns.get(m.gun)
        reason = RemoteStartRejectReason.NONE
        if gun is None:
            reason = RemoteStartRejectReason.UNKNOWN_GUN
        elif gun.serial is not None or gun.status in CHARGING:
            reason = RemoteStartRejectReason.GUN_BUSY
        elif gun.status == GunStatus.FAULTED:
            reason = RemoteStartRejectReason.FAULTED
        if reason != RemoteStartRejectReason.NONE or gun is None:
            return RemoteStartReply(self.pile, m.gun, RemoteStartResult.REJECTED, reason), None
        g = gun
        # Claim the gun now, so a second 0x34 before the charge starts is refused.
        g.serial = m.serial

        def begin() -> None:
            self._spawn(self._charge(g, m.serial, AuthMethod.REMOTE, m.token, m.energy_limit_wh))

        return RemoteStartReply(
            self.pile, m.gun, RemoteStartResult.STARTED, RemoteStartRejectReason.NONE
        ), begin

    def _remote_stop(self, m: RemoteStop) -> tuple[Message, Callable[[], None] | None]:
        gun = self.guns.get(m.gun)
        if gun is None or gun.serial is None or gun.status not in CHARGING:
            return RemoteStopReply(
                self.pile, m.gun, RemoteStopResult.REJECTED, RemoteStopRejectReason.NOT_CHARGING
            ), None
        if gun.serial != m.serial:
            return RemoteStopReply(
                self.pile, m.gun, RemoteStopResult.REJECTED, RemoteStopRejectReason.UNKNOWN_SERIAL
            ), None
        g = gun

        def end() -> None:
            self._stop_reason[g.number] = StopReason.REMOTE
            g.stopped.set()

        return RemoteStopReply(
            self.pile, m.gun, RemoteStopResult.STOPPING, RemoteStopRejectReason.NONE
        ), end

    def _whitelist_update(self, m: WhitelistUpdate) -> Message:
        def reply(result: WhitelistUpdateResult) -> Message:
            return WhitelistUpdateReply(self.pile, m.version, m.part, result)

        if m.part == 0:
            if m.mode == WhitelistMode.DIFFERENTIAL and m.base_version != self.whitelist_version:
                self._staged = None
                return reply(WhitelistUpdateResult.VERSION_MISMATCH)
            self._staged = {} if m.mode == WhitelistMode.FULL else dict(self.whitelist)
        if self._staged is None:
            return reply(WhitelistUpdateResult.FAILED)
        for e in m.entries:
            key = (int(e.method), e.token)
            if e.action == WhitelistAction.REMOVE:
                self._staged.pop(key, None)
            else:
                self._staged[key] = e.action
        if len(self._staged) > self.config.whitelist_capacity:
            self._staged = None
            return reply(WhitelistUpdateResult.CAPACITY_EXCEEDED)
        if m.last:
            self.whitelist, self._staged = self._staged, None
            self.whitelist_version = m.version
        return reply(WhitelistUpdateResult.ACCEPTED)

    # --- what the charger reports ------------------------------------------------------------
    def realtime(self, gun: GunSim) -> RealtimeData:
        charging = gun.status in CHARGING
        return RealtimeData(
            pile=self.pile,
            gun=gun.number,
            status=gun.status,
            serial=gun.serial if charging or gun.status == GunStatus.FINISHING else None,
            voltage_dv=2300 if self.config.kind == "AC" else 4000,
            current_da=int(gun.power_w * 10 / (230 if self.config.kind == "AC" else 400)),
            power_w=gun.power_w,
            meter_wh=gun.meter_wh,
            session_energy_wh=gun.session_wh,
            soc=None if self.config.kind == "AC" else 50,
            fault_code=0,
            sample_time=local_now(),
        )

    async def _status(self, gun: GunSim, status: GunStatus) -> None:
        gun.status = status
        await self.send(self.realtime(gun))

    def _login_message(self) -> Login:
        return Login(
            pile=self.pile,
            kind=Kind.AC if self.config.kind == "AC" else Kind.DC,
            gun_count=self.config.guns,
            protocol_version=10,
            firmware_version=self.config.firmware_version,
            model=self.config.model,
            network=Network.CELLULAR,
            iccid=None,
            display=self.config.display,
            auth_key=self.config.auth_key,
        )

    # --- periodic -----------------------------------------------------------------------
    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            with contextlib.suppress(TimeoutError):
                await self.request(
                    Heartbeat(self.pile, PileState.NORMAL), MessageType.HEARTBEAT_ACK, "Heartbeat"
                )

    async def _realtime_loop(self, gun: GunSim) -> None:
        """0x13 every 5 min (simulated) when not charging; charging has its own."""
        while True:
            await asyncio.sleep(self.config.idle_realtime_interval / self.config.time_scale)
            if gun.status not in CHARGING:
                await self.send(self.realtime(gun))

    # --- sessions ------------------------------------------------------------------------
    def stop(self, gun: int = 1, reason: StopReason = StopReason.LOCAL) -> None:
        """Stop the charge on ``gun`` (user at the charger, fault ...)."""
        self._stop_reason[gun] = reason
        self.guns[gun].stopped.set()

    async def _charge(
        self,
        gun: GunSim,
        serial: str,
        method: AuthMethod,
        token: str,
        energy_limit_wh: int = 0,
        seconds: float | None = None,
    ) -> None:
        """One session: charging 0x13s until stopped, then the 0x3B record."""
        gun.serial, gun.method, gun.token = serial, method, token
        gun.meter_start, gun.start_time = gun.meter_wh, local_now()
        gun.energy_limit_wh = energy_limit_wh
        gun.power_w = int(self.config.power_kw * 1000)
        gun.stopped.clear()
        self._stop_reason.pop(gun.number, None)
        await self._status(gun, GunStatus.CHARGING)
        scale = self.config.time_scale
        period = self.config.realtime_interval / scale
        last = time.monotonic()
        deadline = None if seconds is None else last + seconds
        reason = StopReason.OTHER
        while True:
            wait = period if deadline is None else min(period, max(0.0, deadline - last))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(gun.stopped.wait(), wait)
            now = time.monotonic()
            gun.meter += gun.power_w * (now - last) * scale / 3600
            last = now
            if gun.stopped.is_set():
                reason = self._stop_reason.get(gun.number, StopReason.LOCAL)
                break
            if energy_limit_wh and gun.session_wh >= energy_limit_wh:
                reason = StopReason.ENERGY_LIMIT
                break
            if deadline is not None and now >= deadline:
                reason = StopReason.LOCAL
                break
            await self.send(self.realtime(gun))
        gun.power_w = 0
        record = TransactionRecord(
            serial=serial,
            pile=self.pile,
            gun=gun.number,
            start_time=gun.start_time or local_now(),
            stop_time=local_now(),
            meter_start_wh=gun.meter_start,
            meter_stop_wh=gun.meter_wh,
            energy_wh=gun.meter_wh - gun.meter_start,
            auth_method=method,
            offline=False,
            token=token,
            stop_reason=reason,
        )
        self.records[serial] = record
        await self._status(gun, GunStatus.FINISHING)
        gun.serial = None
        await self._status(gun, GunStatus.AVAILABLE)
        self._spawn(self._deliver_record(serial))

    async def _deliver_record(self, serial: str) -> None:
        """Send the record until a 0x40 confirms it (or the connection ends)."""
        while serial in self.records:
            with contextlib.suppress(TimeoutError):
                await self.request(
                    self.records[serial],
                    MessageType.TRANSACTION_CONFIRM,
                    "TransactionRecord",
                    timeout=self.config.record_retry,
                )

    def own_serial(self, gun: int) -> str:
        return make_serial(self.pile, gun, local_now(), next(self._counter) % 10000)

    async def authorize(
        self, gun: int, token: str, method: AuthMethod = AuthMethod.CARD
    ) -> AuthResult:
        reply = await self.request(
            AuthRequest(self.pile, gun, method, token), MessageType.AUTH_RESULT, "AuthRequest"
        )
        assert isinstance(reply, AuthResult)
        return reply

    async def _autopilot(self, ap: CbpAutopilot) -> None:
        await asyncio.sleep(ap.first_delay)
        gun = self.guns[ap.gun]
        while True:
            if gun.serial is None and gun.status == GunStatus.AVAILABLE:
                await self._status(gun, GunStatus.PREPARING)
                try:
                    result = await self.authorize(gun.number, ap.token)
                except TimeoutError:
                    result = None
                if result is not None and result.result == AuthStatus.ACCEPTED and result.serial:
                    serial = result.serial
                else:
                    serial = self.own_serial(gun.number)  # free vend
                if gun.serial is None:
                    await self._charge(
                        gun, serial, AuthMethod.CARD, ap.token, seconds=ap.charge_seconds
                    )
                else:
                    await self._status(gun, GunStatus.AVAILABLE)
            await asyncio.sleep(ap.idle_seconds)


# --- load mode -------------------------------------------------------------------------
def cbp_config(opts: LoadOptions, n: int, charging: bool) -> CbpChargerConfig:
    return CbpChargerConfig(
        pile_id=opts.pile_id(n),
        kind=opts.kind,
        power_kw=7.0 if opts.kind == "AC" else 60.0,
        model=f"LOAD-{opts.kind}",
        firmware_version="LOAD_CBP_1.0.0",
        realtime_interval=opts.meter_interval,
        heartbeat_interval=opts.heartbeat_interval,
        request_timeout=opts.call_timeout,
        auth_key=opts.password or "",
        autopilot=CbpAutopilot(charge_seconds=opts.charge_seconds, idle_seconds=opts.idle_seconds)
        if charging
        else None,
    )


async def run_cbp_load(opts: LoadOptions, out: Callable[[str], None] = print) -> LoadReport:
    """Load mode speaking CBP/1: the same figures as the OCPP load mode."""
    from .load import _raise_fd_limit, drive

    host, port = parse_tcp_url(opts.url)
    warning = _raise_fd_limit(opts.count + 100)
    if warning:
        out(f"warning: {warning}")
    stats = Stats()
    share = opts.charging_share
    chargers: list[CbpSimCharger] = []
    charging = 0
    for n in range(opts.count):
        is_charging = int((n + 1) * share) > int(n * share)
        charging += is_charging
        chargers.append(CbpSimCharger(cbp_config(opts, n, is_charging), host, port, stats=stats))
    return await drive(opts, out, chargers, stats, charging, lambda c: c.online, " (CBP/1)")


__all__ = [
    "CbpAutopilot",
    "CbpChargerConfig",
    "CbpSimCharger",
    "GunSim",
    "cbp_config",
    "local_now",
    "parse_tcp_url",
    "run_cbp_load",
]
