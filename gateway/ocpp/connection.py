"""One charger's OCPP-J connection: the receive loop and outgoing calls.

Thin by design: bytes go to the sans-I/O codec (``protocol.ocpp``), CALLs to
the handlers, answers back to the socket. The loop never waits on the
database except where a reply must be durable (handlers decide).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import time
import uuid
from collections import deque
from datetime import datetime
from typing import Any

import structlog
import websockets.version
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConcurrencyError, ConnectionClosed
from websockets.protocol import State

from pileid import PileId
from protocol.ocpp import (
    Call,
    CallError,
    CallResult,
    ErrorCode,
    FrameError,
    OcppError,
    Validator,
    decode,
    encode_call,
    encode_error,
    encode_result,
)
from protocol.wsframe import text_frame
from sessions.presence import OfflineReason

from ..registry import CallGate, CommandError, CommandResult
from ..services import Services
from ..storage.writer import WriteOp
from .handlers import FAST_HANDLERS, OcppHandlers
from .wsconn import FRAMING, OcppServerConnection

log = structlog.get_logger("pilegate.ocpp")

PROTOCOL_NAMES = {"1.6": "ocpp1.6", "2.0.1": "ocpp2.0.1"}
# Frames waiting for the receive task on the direct path: reading stops at
# INBOX_HIGH and resumes at INBOX_LOW (websockets' own queue: 16 and 4).
INBOX_HIGH = 16
INBOX_LOW = 4
_conn_seq = itertools.count(1)


_VALIDATORS: dict[str, Validator] = {}

# OcppConnection writes replies itself (_send, _fast) and takes messages from
# data_received (run, _deliver) with the internals of websockets' asyncio
# Connection as of 17.x (``send_in_progress``, ``paused``, ``send_data``,
# ``drain``, ``set_connection_exc``, ``recv_messages.frames``,
# ``connection_lost_waiter``; 14-16 name some of them differently). With
# another version every frame goes through ``ws.recv`` and every reply
# through ``ws.send``.
DIRECT_SEND = int(websockets.version.version.split(".")[0]) >= 17 and all(
    hasattr(ServerConnection, name) for name in ("send_data", "drain", "set_connection_exc")
)


def shared_validator(version: str) -> Validator:
    """One validator per version for the whole process (compiled schemas are
    shared anyway; this also shares its per-action lookup tables)."""
    v = _VALIDATORS.get(version)
    if v is None:
        v = _VALIDATORS[version] = Validator(version)  # type: ignore[arg-type]
        v.preload()
    return v


def check_command_payload(action: str, payload: dict[str, Any]) -> None:
    """Refuse a command payload the OCPP 1.6 schema refuses (400, naming the
    field), before anything is sent or queued, whatever the pile's protocol."""
    try:
        shared_validator("1.6").validate_request(action, payload)
    except OcppError as exc:
        raise CommandError(
            400,
            "invalid_payload",
            f"{action}: {exc.description}",
            ocpp_error=exc.error_code.value,
            details=exc.details,
        ) from exc


def new_conn_id() -> str:
    return f"{uuid.uuid4().hex[:8]}-{next(_conn_seq)}"


class OcppConnection:
    """Implements ``gateway.registry.PileConnection`` for OCPP-J.

    Slotted, and the command gate is made on the first command: one of these
    lives per connected charger, most of them idle.
    """

    __slots__ = (
        "_busy",
        "_ctx",
        "_gate",
        "_inbox",
        "_pending",
        "_reading_paused",
        "_recv_mode",
        "_waiter",
        "bad_in_a_row",
        "boot_rejected",
        "conn_id",
        "connected_at",
        "handlers",
        "kind",
        "lenient",
        "model",
        "offline_detail",
        "offline_reason",
        "pile",
        "pile_id",
        "protocol",
        "replaced",
        "services",
        "soc_flagged",
        "validator",
        "version",
        "ws",
    )

    def __init__(
        self,
        ws: ServerConnection,
        pile: PileId,
        version: str,
        services: Services,
        *,
        model: str | None,
        conn_id: str,
    ) -> None:
        self.ws = ws
        self.pile = pile
        self.pile_id = pile.text
        self.kind = pile.kind.label
        self.version = version
        self.protocol = PROTOCOL_NAMES[version]
        self.services = services
        self.conn_id = conn_id
        self.model = model
        self.connected_at: datetime = services.clock()
        self.validator = shared_validator(version)
        self.lenient = model is not None and model in services.settings.lenient_models
        self.bad_in_a_row = 0
        self.offline_reason: str | None = None  # set when the gateway ends the link
        self.offline_detail: str | None = None
        self.replaced = False
        self.soc_flagged = False
        self.boot_rejected = False
        self._pending: dict[str, asyncio.Future[CallResult | CallError]] = {}
        self._gate: CallGate | None = None  # made by the first command
        # The direct receive path (run, _deliver): frames waiting for the
        # receive task, made only while there are some; whether that task is
        # handling one; its wake-up; the handler task's logging context.
        self._inbox: deque[str] | None = None
        self._busy = False
        self._waiter: asyncio.Future[None] | None = None
        self._ctx: contextvars.Context | None = None
        self._recv_mode = False
        self._reading_paused = False
        self.handlers = OcppHandlers(self)

    # --- receive loop ----------------------------------------------------------
    async def run(self) -> None:
        ws = self.ws
        if not (DIRECT_SEND and isinstance(ws, OcppServerConnection)):
            await self._recv_loop()
            return
        # Frames that came before this task ran are in websockets' queue:
        # handled first, in order, the usual way.
        while len(ws.recv_messages.frames):
            try:
                raw = await ws.recv()
            except ConnectionClosed:
                return
            await self._received(raw)
        self._ctx = contextvars.copy_context()  # carries pile_id and conn_id
        ws.connection_lost_waiter.add_done_callback(self._wake, context=self._ctx)
        ws.install_sink(self._deliver)
        try:
            await self._work()
        finally:
            ws.remove_sink()

    async def _recv_loop(self) -> None:
        # ``recv()`` in a loop rather than ``async for``: the same frames and
        # the same end (a normal close ends the loop, an abnormal one raises
        # ConnectionClosedError, caught below), without an async generator
        # kept alive per idle connection.
        recv = self.ws.recv
        try:
            while True:
                await self._received(await recv())
        except ConnectionClosed:
            pass

    def _seen(self, now: datetime) -> bool:
        """Record that a frame came at ``now`` (presence, "last seen");
        False when it must be dropped: a replaced connection's late frames
        must not change the state of the pile's new connection."""
        services = self.services
        services.tracker.frame_received(self.conn_id, time.monotonic())
        services.writer.touch(self.pile_id, now)
        return not self.replaced

    async def _received(self, raw: str | bytes) -> None:
        if self._seen(self.services.clock()):
            await self._on_frame(raw)

    def _deliver(self, raw: str | None) -> None:
        """Called by OcppServerConnection inside ``data_received`` with each
        complete text message, or None when the connection goes back to
        websockets' own receive path. Must not raise."""
        if raw is None:
            self._recv_mode = True
            self._wake()
            return
        now = self.services.clock()
        if not self._seen(now):
            return
        inbox = self._inbox
        if inbox is None and not self._busy:
            ctx = self._ctx
            assert ctx is not None
            try:
                if ctx.run(self._fast, raw, now):
                    return
            except Exception:
                # _fast acts only once nothing can fail; the frame is still
                # handled, by the receive task.
                ctx.run(log.exception, "direct path failed; frame handled by the receive task")
        if inbox is None:
            inbox = self._inbox = deque()
        inbox.append(raw)
        if len(inbox) >= INBOX_HIGH and not self._reading_paused:
            # The receive task is behind (a durable write, a full queue, a
            # slow charger's socket): stop reading, as websockets does when
            # its own queue fills.
            self._reading_paused = True
            self.ws.transport.pause_reading()
        self._wake()

    def _wake(self, _: object = None) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fast(self, raw: str, now: datetime) -> bool:
        """Answer a Heartbeat, StatusNotification or MeterValues received at
        ``now`` here and now, when that needs no waiting: valid, accepted,
        the write queue has room, the socket takes the reply. Returns False,
        having done nothing, for everything else (the receive task then
        handles the frame exactly as before)."""
        if not self._writable() or self.boot_rejected or self.services.writer.backlogged:
            return False
        try:
            msg = decode(raw, version=self.version)  # type: ignore[arg-type]
        except FrameError:
            return False
        if type(msg) is not Call:
            return False
        action = msg.action
        fast = FAST_HANDLERS.get(action)
        if fast is None:
            return False
        started = time.perf_counter()
        try:
            self.validator.validate_request(action, msg.payload)
        except OcppError:
            return False
        try:
            reply = fast(self.handlers, msg.payload, now)
        except OcppError:
            # Refused before anything was enqueued (a connectorId over 999,
            # an unreadable timestamp): the receive task answers the CALLERROR.
            return False
        if reply is None:
            return False
        # From here on the frame is handled: as _on_call's success path.
        metrics = self.services.metrics
        metrics.ocpp_in(action)
        self.bad_in_a_row = 0
        self._write(encode_result(msg.unique_id, reply))
        metrics.handler_seconds(action, time.perf_counter() - started)
        return True

    async def _work(self) -> None:
        """The receive task on the direct path: handles the frames _deliver
        could not, in order, and ends when the connection is lost."""
        ws = self.ws
        lost = ws.connection_lost_waiter
        loop = asyncio.get_running_loop()
        while True:
            inbox = self._inbox
            while inbox:
                raw = inbox.popleft()
                if self._reading_paused and len(inbox) <= INBOX_LOW:
                    self._reading_paused = False
                    ws.transport.resume_reading()
                if self.replaced:
                    continue
                self._busy = True
                try:
                    await self._on_frame(raw)
                finally:
                    self._busy = False
            self._inbox = None  # no deque kept per idle charger
            if self._reading_paused:
                self._reading_paused = False
                ws.transport.resume_reading()
            if self._recv_mode:
                # A fragmented, binary or non-UTF-8 message: websockets'
                # own path from that frame on.
                await self._recv_loop()
                return
            if lost.done():
                return
            waiter = self._waiter = loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None

    async def _on_frame(self, raw: str | bytes) -> None:
        try:
            msg = decode(raw, version=self.version)  # type: ignore[arg-type]
        except FrameError as exc:
            await self._bad_frame(exc)
            return
        if type(msg) is Call:
            await self._on_call(msg)
        elif type(msg) is CallResult or type(msg) is CallError:
            fut = self._pending.get(msg.unique_id)
            if fut is not None and not fut.done():
                fut.set_result(msg)
            else:
                log.warning("answer to no outstanding call", unique_id=msg.unique_id)

    async def _bad_frame(self, exc: FrameError) -> None:
        self.services.metrics.ocpp_errors_sent.labels(code=exc.error_code.value).inc()
        log.warning(
            "malformed frame",
            code=exc.error_code.value,
            description=exc.description,
            details=exc.details,
        )
        # Only a broken CALL gets an answer: a CALLERROR to a CALLRESULT or
        # CALLERROR would never be read (OCPP-J 1.6 §4.2.3).
        if exc.message_type_id in (None, 2):
            await self._send(
                encode_error(
                    exc.unique_id if exc.unique_id is not None else "-1",
                    exc.error_code,
                    exc.description,
                    exc.details,
                )
            )
        await self._count_bad()

    async def _count_bad(self) -> None:
        self.bad_in_a_row += 1
        limit = self.services.settings.ocpp_max_bad_messages
        if self.bad_in_a_row >= limit:
            log.warning("too many bad messages in a row; disconnecting", count=self.bad_in_a_row)
            self.offline_reason = "bad_messages"
            self.offline_detail = f"{self.bad_in_a_row} bad messages in a row"
            await self.ws.close(1008, "too many bad messages")

    async def _on_call(self, call: Call) -> None:
        metrics = self.services.metrics
        action = call.action
        metrics.ocpp_in(action)
        started = time.perf_counter()
        try:
            try:
                self.validator.validate_request(action, call.payload)
            except OcppError as exc:
                if not self.lenient or exc.error_code in (
                    ErrorCode.NotImplemented,
                    ErrorCode.NotSupported,
                ):
                    raise
                log.warning(
                    "schema violation accepted (lenient model)",
                    action=action,
                    code=exc.error_code.value,
                    details=exc.details,
                )
            if self.boot_rejected and action != "BootNotification":
                # OCPP 1.6 §4.2.1: a rejected charge point shall not send
                # other requests until it is accepted.
                raise OcppError(
                    ErrorCode.SecurityError,
                    f"BootNotification was rejected; {action} is not accepted before a "
                    "successful boot",
                    {"action": action},
                )
            handler = self.handlers.get(action)
            if handler is None:
                raise OcppError(
                    ErrorCode.NotSupported,
                    f"{action} is an OCPP {self.version} action pilegate does not accept "
                    "from a charge point",
                    {"action": action},
                )
            try:
                reply = await handler(call.payload)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                # Only reachable for lenient models: the payload passed no
                # schema, and the handler could not make sense of it.
                raise OcppError(
                    ErrorCode.FormationViolation,
                    f"{action} payload could not be processed: {exc!r}",
                    {"action": action},
                ) from exc
        except OcppError as exc:
            metrics.ocpp_errors_sent.labels(code=exc.error_code.value).inc()
            log.warning(
                "call refused",
                action=action,
                code=exc.error_code.value,
                description=exc.description,
                details=exc.details,
            )
            await self._send(
                encode_error(call.unique_id, exc.error_code, exc.description, exc.details)
            )
            await self._count_bad()
            return
        except Exception:
            log.exception("handler failed", action=action)
            metrics.ocpp_errors_sent.labels(code="InternalError").inc()
            await self._send(
                encode_error(
                    call.unique_id, ErrorCode.InternalError, f"{action} could not be handled", {}
                )
            )
            return
        self.bad_in_a_row = 0
        await self._send(encode_result(call.unique_id, reply))
        metrics.handler_seconds(action, time.perf_counter() - started)

    def _writable(self) -> bool:
        """Whether a reply may be written straight to the socket: what
        ``ws.send`` checks for an unfragmented message on an open connection
        whose write buffer is not full."""
        ws = self.ws
        return (
            DIRECT_SEND
            and ws.protocol.state is State.OPEN
            and ws.send_in_progress is None
            and not ws.paused
            and not ws.transport.is_closing()
        )

    def _write(self, text: str) -> bool:
        """Write a text frame now (``_writable()`` must hold); False when the
        write failed and the link was ended, as ``ws.send`` does."""
        ws = self.ws
        protocol = ws.protocol
        data = text.encode()
        try:
            if FRAMING and not protocol.writes and not protocol.debug:
                # The frame websockets would build (RFC 6455 §5.2: FIN,
                # text, unmasked), without its Frame object and serializer;
                # nothing of websockets' is waiting to go out before it.
                ws.transport.write(text_frame(data))
                return True
            protocol.send_text(data)
            ws.send_data()
        except Exception as exc:
            ws.set_connection_exc(exc)
            ws.transport.abort()
            return False
        return True

    async def _send(self, text: str) -> None:
        ws = self.ws
        # Fast path for the reply to nearly every frame: what ``ws.send``
        # does, without its async context manager (an eighth of the
        # gateway's CPU under mixed load, docs/benchmarks.md). Anything else
        # (closing, a full write buffer, a send in progress) takes ``ws.send``.
        if self._writable():
            if self._write(text) and ws.paused:
                # Write buffer over the high-water mark: wait like ws.send
                # would (flow control toward a slow charger).
                with contextlib.suppress(Exception):
                    await ws.drain()
            return
        with contextlib.suppress(ConnectionClosed):
            await ws.send(text)

    # --- outgoing calls (commands) ----------------------------------------------
    async def call(self, action: str, payload: dict[str, Any], timeout: float) -> CommandResult:
        """Send a CALL and wait for the answer; one outstanding call per
        charger (OCPP-J 1.6 §4.1.1), the others wait in a bounded queue."""
        check_command_payload(action, payload)
        gate = self._gate
        if gate is None:
            gate = self._gate = CallGate()
        async with gate.turn(self.pile_id, self.services.settings.command_queue_size):
            return await self._call_now(action, payload, timeout)

    async def _call_now(
        self, action: str, payload: dict[str, Any], timeout: float
    ) -> CommandResult:
        if self.ws.state.name != "OPEN" or self.replaced:
            raise CommandError(409, "pile_offline", f"pile {self.pile_id} is not connected")
        unique_id = uuid.uuid4().hex
        fut: asyncio.Future[CallResult | CallError] = asyncio.get_running_loop().create_future()
        self._pending[unique_id] = fut
        metrics = self.services.metrics
        metrics.ocpp_out.labels(action=action).inc()
        metrics.outstanding_calls.inc()
        try:
            await self.ws.send(encode_call(unique_id, action, payload))
            answer = await asyncio.wait_for(fut, timeout)
        except TimeoutError as exc:
            raise CommandError(
                504, "timeout", f"pile {self.pile_id} did not answer {action} within {timeout:g} s"
            ) from exc
        except ConnectionClosed as exc:
            raise CommandError(
                409, "pile_offline", f"pile {self.pile_id} disconnected before answering {action}"
            ) from exc
        finally:
            self._pending.pop(unique_id, None)
            metrics.outstanding_calls.dec()
        if isinstance(answer, CallError):
            raise CommandError(
                502,
                "charger_error",
                f"pile {self.pile_id} answered {action} with {answer.error_code}: "
                f"{answer.error_description}",
                ocpp_error=answer.error_code,
                details=answer.error_details,
            )
        try:
            self.validator.validate_response(action, answer.payload)
        except OcppError as exc:
            log.warning(
                "invalid answer to command",
                action=action,
                code=exc.error_code.value,
                details=exc.details,
            )
        return CommandResult(action=action, response=answer.payload)

    def fail_pending(self) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionClosed(None, None))

    # --- ending the link -------------------------------------------------------------
    async def close(self, reason: str, code: int = 1000) -> None:
        if self.offline_reason is None:
            self.offline_reason = reason
        await self.ws.close(code, reason.replace("_", " "))

    def set_offline_detail(self, detail: str) -> None:
        if self.offline_detail is None:
            self.offline_detail = detail

    def abort(self, reason: str) -> None:
        """Drop a dead link without the closing handshake (it would only time out)."""
        if self.offline_reason is None:
            self.offline_reason = reason
        transport = self.ws.transport
        if transport is not None:
            transport.abort()

    def send_ping(self) -> None:
        """Ask for a pong; the presence tracker hears about it when it comes.

        Runs in its own short task: on a half-open link the write buffer may
        be full, and the node's single presence ticker must never wait on one
        charger's socket.
        """
        tracker = self.services.tracker
        conn_id = self.conn_id
        ws = self.ws
        budget = self.services.settings.pong_timeout

        def pong(fut: asyncio.Future[float]) -> None:
            if not fut.cancelled() and fut.exception() is None:
                tracker.pong_received(conn_id, time.monotonic())

        async def ping_once() -> None:
            try:
                waiter = await asyncio.wait_for(ws.ping(), timeout=budget)
            except (ConnectionClosed, TimeoutError, ConcurrencyError):
                return
            asyncio.ensure_future(waiter).add_done_callback(pong)

        self.services.spawn(ping_once(), f"ping-{conn_id}")

    def end_reason(self) -> tuple[str, str | None]:
        """Why the link ended, for the presence event."""
        if self.offline_reason is not None:
            return self.offline_reason, self.offline_detail
        rcvd = self.ws.protocol.close_rcvd
        if rcvd is not None and rcvd.code in (1000, 1001):
            return OfflineReason.CLOSED_CLEAN.value, f"charger closed ({rcvd.code})"
        sent = self.ws.protocol.close_sent
        code = rcvd.code if rcvd is not None else sent.code if sent is not None else None
        return OfflineReason.CLOSED_ABNORMAL.value, (
            f"close code {code}" if code is not None else "connection lost without close"
        )

    def presence_ops(self, online: bool, reason: str, detail: str | None) -> tuple[WriteOp, ...]:
        """The presence change and its events, to enqueue together."""
        services = self.services
        return services.events.presence_ops(
            services.clock(), self.pile_id, self.conn_id, self.protocol, online, reason, detail
        )
