"""A minimal cloud-board (CBP/1) charger for the gateway's end-to-end tests.

Speaks real TCP to the gateway on loopback through the sans-I/O codec
(``protocol.cloudboard``): it sends typed messages or raw bytes, keeps every
byte and frame it receives, answers the gateway's requests through a handler
table (time sync, real-time data, remote start/stop, reboot, whitelist), and
can misbehave on purpose (raw bytes, fragments, silence). The full simulator
is ``simulators/``; this client stays small so the gateway tests do not
depend on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from protocol.cloudboard import (
    CbpDecoder,
    Display,
    Frame,
    FrameReceived,
    GunStatus,
    Kind,
    Login,
    LoginReply,
    Message,
    MessageType,
    Network,
    ReadRealtime,
    RealtimeData,
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
    TimeSync,
    TimeSyncReply,
    WhitelistUpdate,
    WhitelistUpdateReply,
    WhitelistUpdateResult,
    WhitelistVersionReply,
    encode_message,
    encode_reply_message,
)

AC = "44200000010000100001"
DC = "44030800010000200005"
LOCAL = timedelta(hours=8)  # the charger's clock: UTC+8 (CBP/1 §2)

Answer = Callable[[Message], Message | None]


def local_now(at: datetime | None = None) -> datetime:
    """Now (or ``at``) as the charger's naive local time, to the millisecond."""
    t = (at or datetime.now(UTC)).astimezone(UTC) + LOCAL
    return t.replace(tzinfo=None, microsecond=t.microsecond // 1000 * 1000)


def login_message(pile: str = AC, **overrides: object) -> Login:
    base = Login(
        pile=pile,
        kind=Kind.AC if pile[8:10] == "01" else Kind.DC,
        gun_count=1,
        protocol_version=10,
        firmware_version="DLH_XD32E_201110002",
        model="XD32E",
        network=Network.CELLULAR,
        iccid="89860000000000000000",
        display=Display.TOUCH_SCREEN,
        auth_key="",
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


@dataclass
class GunState:
    """What the charger reports in 0x13 for one gun."""

    status: GunStatus = GunStatus.AVAILABLE
    serial: str | None = None
    voltage_dv: int = 2300
    current_da: int = 0
    power_w: int = 0
    meter_wh: int = 10_000
    session_energy_wh: int = 0
    soc: int | None = None
    fault_code: int = 0


class CbpCharger:
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pile: str
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.pile = pile
        self.decoder = CbpDecoder()
        self.raw = bytearray()  # every byte received, in order
        self.received: list[tuple[Frame, Message]] = []  # every frame received
        self.requests: list[Message] = []  # requests of the gateway (even TYPEs it originates)
        self.guns: dict[int, GunState] = {1: GunState()}
        self.answers: dict[MessageType, Answer] = {
            MessageType.TIME_SYNC: self._time_sync,
            MessageType.READ_REALTIME: self._read_realtime,
            MessageType.REMOTE_START: self._remote_start,
            MessageType.REMOTE_STOP: self._remote_stop,
            MessageType.REBOOT: lambda m: RebootReply(self.pile, RebootResult.ACCEPTED),
            MessageType.WHITELIST_VERSION_QUERY: lambda m: WhitelistVersionReply(
                self.pile, 0, 0, 1000
            ),
            MessageType.WHITELIST_UPDATE: self._whitelist_update,
        }
        self.reject_remote_start: RemoteStartRejectReason | None = None
        self._seq = itertools.count(1)
        self._unclaimed: list[tuple[Frame, Message]] = []
        self._arrived = asyncio.Condition()
        self.closed = asyncio.Event()
        self.last_write = time.monotonic()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, port: int, pile: str = AC) -> CbpCharger:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer, pile)

    # --- receiving ----------------------------------------------------------------------
    async def _read(self) -> None:
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    break
                self.raw += data
                for event in self.decoder.feed(data):
                    if isinstance(event, FrameReceived):
                        await self._on_frame(event.frame, event.message)
        except (ConnectionError, OSError):
            pass
        finally:
            self.closed.set()
            async with self._arrived:
                self._arrived.notify_all()

    async def _on_frame(self, frame: Frame, message: Message) -> None:
        self.received.append((frame, message))
        answer = self.answers.get(MessageType(frame.type))
        if answer is not None or frame.type in _REQUESTS:
            self.requests.append(message)
        if answer is not None:
            reply = answer(message)
            if reply is not None:
                self.write(encode_reply_message(frame.seq_bytes, reply))
        async with self._arrived:
            self._unclaimed.append((frame, message))
            self._arrived.notify_all()

    async def expect(self, *types: int, timeout: float = 5.0) -> tuple[Frame, Message]:
        """The oldest received frame of one of ``types`` not claimed yet."""

        def find() -> tuple[Frame, Message] | None:
            for i, (frame, message) in enumerate(self._unclaimed):
                if frame.type in types:
                    del self._unclaimed[i]
                    return frame, message
            return None

        async with asyncio.timeout(timeout), self._arrived:
            while True:
                found = find()
                if found is not None:
                    return found
                if self.closed.is_set():
                    raise ConnectionError("connection closed")
                await self._arrived.wait()

    # --- sending ------------------------------------------------------------------------
    def next_seq(self) -> int:
        return next(self._seq) & 0xFFFF

    def write(self, data: bytes) -> None:
        if not self.writer.transport.is_closing():
            self.writer.write(data)
            self.last_write = time.monotonic()  # when the gateway last heard from us

    async def send_raw(self, data: bytes) -> None:
        self.write(data)
        await self.writer.drain()

    async def send(self, message: Message, seq: int | None = None) -> bytes:
        """Send a message; return its SEQ bytes."""
        data = encode_message(self.next_seq() if seq is None else seq, message)
        await self.send_raw(data)
        return data[2:4]

    async def request(
        self, message: Message, reply_type: int, *, timeout: float = 5.0
    ) -> tuple[Frame, Message]:
        """Send and wait for the reply of ``reply_type`` echoing the SEQ."""
        seq_bytes = await self.send(message)
        frame, reply = await self.expect(reply_type, timeout=timeout)
        assert frame.seq_bytes == seq_bytes, (frame.seq_bytes, seq_bytes)
        return frame, reply

    async def login(self, **overrides: object) -> LoginReply:
        _, reply = await self.request(
            login_message(self.pile, **overrides), MessageType.LOGIN_REPLY
        )
        assert isinstance(reply, LoginReply)
        return reply

    def realtime(self, gun: int = 1, at: datetime | None = None) -> RealtimeData:
        g = self.guns.setdefault(gun, GunState())
        return RealtimeData(
            pile=self.pile,
            gun=gun,
            status=g.status,
            serial=g.serial,
            voltage_dv=g.voltage_dv,
            current_da=g.current_da,
            power_w=g.power_w,
            meter_wh=g.meter_wh,
            session_energy_wh=g.session_energy_wh,
            soc=g.soc,
            fault_code=g.fault_code,
            sample_time=local_now(at),
        )

    # --- answers to the gateway ------------------------------------------------------------
    def _time_sync(self, m: Message) -> Message:
        assert isinstance(m, TimeSync)
        return TimeSyncReply(self.pile, m.time)

    def _read_realtime(self, m: Message) -> Message:
        assert isinstance(m, ReadRealtime)
        return self.realtime(m.gun)

    def _remote_start(self, m: Message) -> Message:
        assert isinstance(m, RemoteStart)
        if self.reject_remote_start is not None:
            return RemoteStartReply(
                self.pile, m.gun, RemoteStartResult.REJECTED, self.reject_remote_start
            )
        return RemoteStartReply(
            self.pile, m.gun, RemoteStartResult.STARTED, RemoteStartRejectReason.NONE
        )

    def _remote_stop(self, m: Message) -> Message:
        assert isinstance(m, RemoteStop)
        return RemoteStopReply(
            self.pile, m.gun, RemoteStopResult.STOPPING, RemoteStopRejectReason.NONE
        )

    def _whitelist_update(self, m: Message) -> Message:
        assert isinstance(m, WhitelistUpdate)
        return WhitelistUpdateReply(self.pile, m.version, m.part, WhitelistUpdateResult.ACCEPTED)

    # --- ending -------------------------------------------------------------------------
    async def wait_closed(self, timeout: float = 5.0) -> None:
        await asyncio.wait_for(self.closed.wait(), timeout)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._reader, 2)


_REQUESTS = frozenset(
    {
        MessageType.READ_REALTIME,
        MessageType.REMOTE_START,
        MessageType.REMOTE_STOP,
        MessageType.WHITELIST_UPDATE,
        MessageType.WHITELIST_VERSION_QUERY,
        MessageType.TIME_SYNC,
        MessageType.REBOOT,
        MessageType.FIRMWARE_UPDATE,
    }
)

__all__ = [
    "AC",
    "DC",
    "CbpCharger",
    "GunState",
    "local_now",
    "login_message",
]
