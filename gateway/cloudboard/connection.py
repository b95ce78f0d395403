"""One charger's cloud-board TCP connection: bytes in and out, the decoder,
the requests the gateway originates and the ops API's commands.

Implements ``gateway.registry.PileConnection``. Thin like the OCPP one:
bytes go to the sans-I/O codec (``protocol.cloudboard``), messages to the
handlers, answers back to the socket. Writes never wait: a link whose send
buffer does not drain is aborted (``MAX_WRITE_BUFFER``).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog

from pileid import PileId
from protocol.cloudboard import (
    BadFrame,
    CbpDecoder,
    Event,
    FieldError,
    FrameReceived,
    GarbageSkipped,
    Login,
    Message,
    MessageType,
    RealtimeData,
    TooManyBadFrames,
    encode_message,
    encode_reply_message,
)
from sessions.presence import OfflineReason

from ..registry import CallGate, CommandError, CommandResult
from ..storage.writer import WriteOp
from .common import MAX_CONSECUTIVE_BAD, MAX_WRITE_BUFFER, PROTOCOL, REPLY_TYPE, to_local

if TYPE_CHECKING:
    from .server import CbpServer

log = structlog.get_logger("pilegate.cbp")


class LinkClosed(Exception):
    """The connection ended while a request waited for its reply."""


class _Outstanding:
    """The one request in flight (CBP/1 §4): its SEQ bytes and the reply TYPE."""

    __slots__ = ("future", "reply_type", "request_type", "seq_bytes")

    def __init__(
        self,
        seq_bytes: bytes,
        request_type: MessageType,
        reply_type: MessageType,
        future: asyncio.Future[tuple[Message, bytes]],
    ) -> None:
        self.seq_bytes = seq_bytes
        self.request_type = request_type
        self.reply_type = reply_type
        self.future = future


class CbpConnection:
    """A cloud-board charger after (and during) its login."""

    def __init__(
        self,
        server: CbpServer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn_id: str,
    ) -> None:
        self.server = server
        self.services = server.services
        self.reader = reader
        self.writer = writer
        self.conn_id = conn_id
        peer = writer.get_extra_info("peername")
        self.remote = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.protocol = PROTOCOL
        self.decoder = CbpDecoder(max_consecutive_bad=MAX_CONSECUTIVE_BAD)
        # Set by the login (PileConnection attributes).
        self.pile: PileId | None = None
        self.pile_id = ""
        self.kind = ""
        self.connected_at: datetime = self.services.clock()
        self.login: Login | None = None
        self.gun_count = 1
        self.model: str | None = None
        # Link state.
        self.logged_in = False
        self.replaced = False
        self.closing = False
        self.offline_reason: str | None = None  # set when the gateway ends the link
        self.offline_detail: str | None = None
        self.end_detail: tuple[str, str] | None = None  # how the charger's side ended
        # Outgoing requests: one in flight, the others wait (bounded).
        self._seq = itertools.count(1)
        self._gate = CallGate()
        self._outstanding: _Outstanding | None = None
        from .handlers import CbpHandlers

        self.handlers = CbpHandlers(self)

    # --- bytes out -------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        """Queue bytes for the charger without waiting (see ``MAX_WRITE_BUFFER``)."""
        transport = self.writer.transport
        if self.closing or transport.is_closing():
            return
        self.writer.write(data)
        if transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            log.warning("send buffer does not drain; aborting the link", buffered=MAX_WRITE_BUFFER)
            self.set_offline_detail(f"more than {MAX_WRITE_BUFFER} bytes unsent")
            self.abort(OfflineReason.CLOSED_ABNORMAL.value)

    def reply(self, request_seq_bytes: bytes, message: Message) -> None:
        """Answer a charger's request, echoing its SEQ bytes as received (CBP/1 §1)."""
        self.send(encode_reply_message(request_seq_bytes, message))

    def next_seq(self) -> int:
        """The gateway's own SEQ counter: 1, 2, ... 65535, 0, 1, ... (CBP/1 §4)."""
        return next(self._seq) & 0xFFFF

    # --- bytes in --------------------------------------------------------------------------
    async def read_events(self) -> list[Event] | None:
        """The decoder events of the next read; None at the end of the stream."""
        try:
            data = await self.reader.read(65536)
        except (ConnectionError, OSError) as exc:
            self.end_detail = (OfflineReason.CLOSED_ABNORMAL.value, f"connection lost: {exc!r}")
            return None
        if not data:
            if self.end_detail is None:
                self.end_detail = (
                    OfflineReason.CLOSED_CLEAN.value,
                    "charger closed the connection",
                )
            return None
        return self.decoder.feed(data)

    async def run(self, pending: list[Event]) -> None:
        """The receive loop after a successful login. ``pending``: events that
        arrived in the same read as the Login."""
        events: list[Event] | None = pending
        while events is not None:
            for event in events:
                await self._on_event(event)
                if self.closing:
                    return
            events = await self.read_events()

    def _frame_seen(self) -> None:
        services = self.services
        services.tracker.frame_received(self.conn_id, time.monotonic())
        services.writer.touch(self.pile_id, services.clock())

    async def _on_event(self, event: Event) -> None:
        if isinstance(event, FrameReceived):
            self._frame_seen()
            if self.replaced:
                # A replaced connection's late frames must not change the
                # state of the pile's new connection.
                return
            await self._on_message(event)
        elif isinstance(event, BadFrame):
            self.server.bad_frames.labels(reason=event.reason.value).inc()
            if event.frame is not None:
                self._frame_seen()  # a frame with a valid CRC: the link is alive
            log.warning(
                "bad frame",
                reason=event.reason.value,
                detail=event.detail,
                type=f"{event.frame.type:#04x}" if event.frame is not None else None,
                in_a_row=self.decoder.consecutive_bad,
            )
        elif isinstance(event, TooManyBadFrames):
            log.warning("too many bad frames in a row; disconnecting", count=event.count)
            self.set_offline_detail(f"{event.count} bad frames in a row")
            await self.close("bad_messages")
        elif isinstance(event, GarbageSkipped):
            log.debug("garbage skipped", bytes=event.count)

    async def _on_message(self, event: FrameReceived) -> None:
        frame, message = event.frame, event.message
        metrics = self.services.metrics
        metrics.ocpp_in(f"cbp1:{type(message).__name__}")
        if not frame.from_charger:
            # A gateway → charger TYPE from a charger: known, but meaningless here.
            self.server.bad_frames.labels(reason="wrong_direction").inc()
            log.warning(
                "frame of the gateway's direction from a charger", type=f"{frame.type:#04x}"
            )
            return
        out = self._outstanding
        answered = False
        if (
            out is not None
            and frame.type == out.reply_type
            and frame.seq_bytes == out.seq_bytes
            and not out.future.done()
        ):
            out.future.set_result((message, frame.seq_bytes))
            if not isinstance(message, RealtimeData):
                return
            # A 0x13 answering 0x12 is also real-time data to store.
            answered = True
        started = time.perf_counter()
        try:
            await self.handlers.dispatch(frame.seq_bytes, message, answered=answered)
        except Exception:
            log.exception("handler failed", type=type(message).__name__)
            return
        metrics.handler_seconds(f"cbp1:{type(message).__name__}", time.perf_counter() - started)

    # --- requests the gateway originates ---------------------------------------------------
    async def request(self, message: Message, timeout: float | None = None) -> Message:
        """Send a request and return the charger's reply (CBP/1 §4): one request
        in flight per charger, the others wait in a bounded queue.

        For the engines that speak CBP/1 directly (whitelist 0x44 / 0x48,
        firmware 0x94) and for the ops API's commands. Raises
        :class:`~gateway.registry.CommandError`: 409 ``pile_offline``, 429
        ``command_queue_full``, 504 ``timeout``; ``ValueError`` for a message
        that is not a request.
        """
        reply, _ = await self.request_frame(message, timeout)
        return reply

    async def request_frame(
        self, message: Message, timeout: float | None = None
    ) -> tuple[Message, bytes]:
        """:meth:`request`, also returning the reply's SEQ bytes."""
        request_type = MessageType(message.TYPE)
        reply_type = REPLY_TYPE.get(request_type)
        if reply_type is None:
            raise ValueError(f"{type(message).__name__} is not a request the gateway sends")
        budget = self.services.settings.command_timeout if timeout is None else timeout
        async with self._gate.turn(self.pile_id, self.services.settings.command_queue_size):
            return await self._request_now(message, request_type, reply_type, budget)

    async def _request_now(
        self,
        message: Message,
        request_type: MessageType,
        reply_type: MessageType,
        timeout: float,
    ) -> tuple[Message, bytes]:
        name = type(message).__name__
        if self.closing or self.replaced or self.writer.transport.is_closing():
            raise CommandError(409, "pile_offline", f"pile {self.pile_id} is not connected")
        try:
            seq = self.next_seq()
            data = encode_message(seq, message)
        except FieldError as exc:
            raise CommandError(400, "invalid_payload", f"{name}: {exc}") from exc
        future: asyncio.Future[tuple[Message, bytes]] = asyncio.get_running_loop().create_future()
        out = _Outstanding(data[2:4], request_type, reply_type, future)
        self._outstanding = out
        metrics = self.services.metrics
        metrics.ocpp_out.labels(action=f"cbp1:{name}").inc()
        metrics.outstanding_calls.inc()
        try:
            self.send(data)
            return await asyncio.wait_for(future, timeout)
        except TimeoutError as exc:
            raise CommandError(
                504, "timeout", f"pile {self.pile_id} did not answer {name} within {timeout:g} s"
            ) from exc
        except LinkClosed as exc:
            raise CommandError(
                409, "pile_offline", f"pile {self.pile_id} disconnected before answering {name}"
            ) from exc
        finally:
            if self._outstanding is out:
                self._outstanding = None
            metrics.outstanding_calls.dec()

    def fail_pending(self) -> None:
        out = self._outstanding
        if out is not None and not out.future.done():
            out.future.set_exception(LinkClosed())

    async def call(self, action: str, payload: dict[str, Any], timeout: float) -> CommandResult:
        """An ops API command (OCPP 1.6 action and payload), translated to
        CBP/1 and its answer back to an OCPP-shaped response (see
        :mod:`gateway.cloudboard.commands`)."""
        from .commands import translate_call

        return await translate_call(self, action, payload, timeout)

    # --- ending the link -------------------------------------------------------------------
    async def close(self, reason: str, code: int = 1000) -> None:
        """Close the TCP connection (CBP/1 has no close message; ``code`` is unused)."""
        if self.offline_reason is None:
            self.offline_reason = reason
        self.closing = True
        transport = self.writer.transport
        if not transport.is_closing():
            transport.close()  # sends what is buffered (a login rejection), then FIN

    def abort(self, reason: str) -> None:
        """Drop a dead link at once (RST; nothing buffered is sent)."""
        if self.offline_reason is None:
            self.offline_reason = reason
        self.closing = True
        self.writer.transport.abort()

    def set_offline_detail(self, detail: str) -> None:
        if self.offline_detail is None:
            self.offline_detail = detail

    def send_ping(self) -> None:
        """CBP/1 has no ping: presence is the heartbeat watchdog alone
        (the tracker is told ``pings=False``, so this is never asked for)."""

    def end_reason(self) -> tuple[str, str | None]:
        """Why the link ended, for the presence event."""
        if self.offline_reason is not None:
            return self.offline_reason, self.offline_detail
        if self.end_detail is not None:
            return self.end_detail
        return OfflineReason.CLOSED_ABNORMAL.value, "connection lost"

    # --- presence ---------------------------------------------------------------------------
    def presence_ops(self, online: bool, reason: str, detail: str | None) -> tuple[WriteOp, ...]:
        """The presence change and its events, to enqueue together."""
        services = self.services
        return services.events.presence_ops(
            services.clock(), self.pile_id, self.conn_id, self.protocol, online, reason, detail
        )

    def local_now(self) -> datetime:
        """The gateway's time as the charger's local time (CBP/1 §2 TIME)."""
        return to_local(self.services.clock(), self.server.utc_offset)
