"""Cloud-board (CBP/1) TCP listener: the login checks and the connection lifecycle.

An :class:`~gateway.extensions.Extension`: ``start()`` opens the listener on
``settings.cbp_host:cbp_port`` (``port`` tells the bound one), ``stop()``
stops accepting and closes every charger (``gateway_shutdown``).

Login (CBP/1 §1, §3 0x01/0x02), in this order; each rejection answered with
0x02 and a reason, logged, counted, and the connection closed:

1. nothing but a Login before a successful login: any other frame closes the
   connection (no answer); no Login within ``login_timeout`` (30 s) closes it;
2. the pile ID passes the pile-ID rules, else reason 2 (the same rules as for
   OCPP, counted in ``pilegate_pileid_rejections{source="cbp"}``);
3. registration policy ``known``: an unregistered pile gets reason 1;
4. the pile's auth key: a pile with a password must send it as auth key, and
   with ``basic_auth_required`` a pile without one is refused, else reason 5;
5. protocol version 10 (1.0), else reason 4;
6. then (registering the pile at first login under policy ``open``) the kind
   in the login against the pile ID's: a contradiction is flagged, and with
   ``kind_policy = reject`` answered with reason 3; the boot data is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import Counter

import pileid
from pileid import PileId, PileIdError
from protocol.cloudboard import (
    PROTOCOL_VERSION_1_0,
    BadFrame,
    BadFrameReason,
    BodyError,
    Event,
    FrameReceived,
    Kind,
    Login,
    LoginRejectReason,
    LoginReply,
    LoginResult,
    MessageType,
    TimeSyncReply,
    TooManyBadFrames,
    decode_body,
    decode_pile,
    encode_body,
    encode_reply,
    encode_reply_message,
)

from ..ocpp.connection import OcppConnection, new_conn_id
from ..ocpp.handlers import model_kind_evidence
from ..ocpp.server import LISTEN_BACKLOG
from ..registry import CommandError
from ..services import Services
from .common import (
    CHARGER_UTC_OFFSET,
    PROTOCOL,
    SerialBook,
    from_local,
    heartbeat_interval,
)
from .connection import CbpConnection

if TYPE_CHECKING:
    from fastapi import APIRouter

    from ..api import ApiContext
    from ..commands import CommandService

log = structlog.get_logger("pilegate.cbp")

_REASON_LABEL = {
    LoginRejectReason.UNKNOWN_CHARGER: "unknown_pile",
    LoginRejectReason.INVALID_PILE_ID: "invalid_pile_id",
    LoginRejectReason.KIND_MISMATCH: "kind_mismatch",
    LoginRejectReason.PROTOCOL_VERSION_NOT_SUPPORTED: "protocol_version",
    LoginRejectReason.BAD_AUTH_KEY: "auth_failed",
}


class _Rejected(Exception):
    def __init__(self, reason: LoginRejectReason, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.reason = reason
        self.fields = fields


class CbpServer:
    """The cloud-board listener and its connections (one per gateway)."""

    def __init__(self, services: Services, commands: CommandService | None = None) -> None:
        self.services = services
        self.commands = commands
        self.login_timeout = services.settings.cbp_login_timeout
        self.utc_offset: timedelta = CHARGER_UTC_OFFSET
        self.serials = SerialBook()
        self.connections: set[CbpConnection] = set()  # logged in and attached
        self._all: set[CbpConnection] = set()  # every open TCP connection
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self._stopping = False
        registry = services.metrics.registry
        self.bad_frames = Counter(
            "pilegate_cbp_bad_frames",
            "CBP/1 frames discarded, by reason (codec reasons, wrong_direction)",
            ["reason"],
            registry=registry,
        )
        self.login_rejections = Counter(
            "pilegate_cbp_login_rejections",
            "CBP/1 logins refused, by reason (also not_login_first, login_timeout)",
            ["reason"],
            registry=registry,
        )

    # --- Extension ------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.services.settings
        self._server = await asyncio.start_server(
            self._accepted, s.cbp_host, s.cbp_port, limit=65536, backlog=LISTEN_BACKLOG
        )
        log.info("CBP/1 listener", host=s.cbp_host, port=self.port)

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.sockets
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def stop(self) -> None:
        """Stop accepting, close every charger (``gateway_shutdown``) and wait
        until their offline events are queued."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
        for conn in list(self._all):
            await conn.close("gateway_shutdown")
        if self._tasks:
            grace = self.services.settings.shutdown_grace_seconds
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)

    def router(self, ctx: ApiContext, dependencies: list[Any]) -> APIRouter | None:
        return None  # cloud-board piles are served by the ordinary ops API routes

    # --- connections ----------------------------------------------------------------------
    def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._stopping:
            writer.transport.abort()
            return
        conn = CbpConnection(self, reader, writer, new_conn_id())
        self._all.add(conn)
        task = self.services.spawn(self._serve(conn), f"cbp-{conn.conn_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, conn: CbpConnection) -> None:
        structlog.contextvars.bind_contextvars(conn_id=conn.conn_id, remote=conn.remote)
        try:
            pending = await self._login_phase(conn)
            if pending is not None:
                await conn.run(pending)
        except Exception:
            log.exception("connection failed")
        finally:
            self._all.discard(conn)
            conn.closing = True
            transport = conn.writer.transport
            if not transport.is_closing():
                transport.close()
            if conn.logged_in:
                await self._offline(conn)
            structlog.contextvars.unbind_contextvars("conn_id", "remote", "pile_id")

    async def _login_phase(self, conn: CbpConnection) -> list[Event] | None:
        """Read until the Login; return the events after it once accepted,
        None when the connection is to be closed."""
        # The deadline covers waiting for the Login only, never its
        # processing (a cancelled attach would leave the registry half done).
        deadline = asyncio.get_running_loop().time() + self.login_timeout
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    events = await conn.read_events()
            except TimeoutError:
                self.login_rejections.labels(reason="login_timeout").inc()
                log.warning("no login in time; closing", timeout=self.login_timeout)
                await conn.close("login_timeout")
                return None
            if events is None:
                log.info("closed before login")
                return None
            for i, event in enumerate(events):
                decided = await self._before_login(conn, event)
                if decided is True:
                    return events[i + 1 :]
                if decided is False:
                    return None

    async def _before_login(self, conn: CbpConnection, event: Event) -> bool | None:
        """True: logged in; False: close; None: keep reading."""
        if isinstance(event, FrameReceived):
            if isinstance(event.message, Login):
                return await self._login(conn, event.frame.seq_bytes, event.message)
            return self._not_login_first(conn, event.frame.type)
        if isinstance(event, BadFrame):
            self.bad_frames.labels(reason=event.reason.value).inc()
            frame = event.frame
            if frame is None or event.reason in (
                BadFrameReason.ENCRYPTED,
                BadFrameReason.UNKNOWN_ENC,
            ):
                # Not readable (LEN, CRC, ENC): counted, like after the login.
                log.warning("bad frame before login", reason=event.reason.value)
                return None
            if frame.type == MessageType.LOGIN:
                self._undecodable_login(conn, frame.seq_bytes, frame.body)
                return False
            return self._not_login_first(conn, frame.type)
        if isinstance(event, TooManyBadFrames):
            log.warning("too many bad frames before login; closing", count=event.count)
            await conn.close("bad_messages")
            return False
        return None

    def _not_login_first(self, conn: CbpConnection, frame_type: int) -> bool:
        self.login_rejections.labels(reason="not_login_first").inc()
        log.warning("frame before login; closing", type=f"{frame_type:#04x}")
        conn.closing = True
        conn.writer.transport.close()
        return False

    def _reject(self, conn: CbpConnection, seq_bytes: bytes, pile: str, exc: _Rejected) -> None:
        label = _REASON_LABEL[exc.reason]
        self.login_rejections.labels(reason=label).inc()
        self.services.metrics.handshake_refusals.labels(reason=f"cbp_{label}").inc()
        log.warning(
            "login rejected",
            reason=exc.reason.value,
            refusal=label,
            message=str(exc),
            pile_id=pile,
            **exc.fields,
        )
        reply = LoginReply(pile, LoginResult.REJECTED, exc.reason, 0, conn.local_now())
        conn.send(encode_reply_message(seq_bytes, reply))
        conn.closing = True
        conn.writer.transport.close()  # sends the rejection first (CBP/1 §3 0x02)

    def _undecodable_login(self, conn: CbpConnection, seq_bytes: bytes, body: bytes) -> None:
        """A Login whose BODY does not decode: still answered with a reason
        when its PILE is readable (docs/cloudboard.md, decision 9)."""
        try:
            decode_body(MessageType.LOGIN, body)
            field: str | None = None
        except BodyError as exc:
            field = exc.field
        reason = {
            "pile": LoginRejectReason.INVALID_PILE_ID,
            "kind": LoginRejectReason.KIND_MISMATCH,
        }.get(field or "", LoginRejectReason.PROTOCOL_VERSION_NOT_SUPPORTED)
        raw_pile = body[:10] if len(body) >= 10 else bytes(10)
        try:
            pile = decode_pile(raw_pile)
        except ValueError:
            pile = "0" * 20
        reply = LoginReply(pile, LoginResult.REJECTED, reason, 0, conn.local_now())
        # Echo the PILE bytes as received, even when they are not BCD.
        body_out = raw_pile + encode_body(reply)[10:]
        self._reject_raw(conn, seq_bytes, body_out, reason, f"undecodable Login ({field})")

    def _reject_raw(
        self,
        conn: CbpConnection,
        seq_bytes: bytes,
        body: bytes,
        reason: LoginRejectReason,
        message: str,
    ) -> None:
        label = _REASON_LABEL[reason]
        self.login_rejections.labels(reason=label).inc()
        self.services.metrics.handshake_refusals.labels(reason=f"cbp_{label}").inc()
        log.warning("login rejected", reason=reason.value, refusal=label, message=message)
        conn.send(encode_reply(seq_bytes, MessageType.LOGIN_REPLY, body))
        conn.closing = True
        conn.writer.transport.close()

    async def _check(self, conn: CbpConnection, login: Login) -> tuple[PileId, bool]:
        """Checks 2-5 of the module docstring; (pile ID, registered)."""
        services = self.services
        settings = services.settings
        try:
            pile = pileid.parse_pile_id(login.pile)
        except PileIdError as exc:
            configured, error, padded = login.pile, exc, ""
            if login.pile.startswith("0"):
                # CBP/1 §5: a charger configured with a shorter ID sends it
                # zero-padded to 20 digits. No pile ID starts with 0 (GB/T
                # 2260 province codes are 11..82), so the operator is told
                # about the ID the charger was configured with (a 16-digit ID
                # is rejected for its length, as over OCPP), not about region
                # "0000..".
                configured = login.pile.lstrip("0") or "0"
                padded = " (zero-padded to 20 digits in the Login)"
                try:
                    pileid.parse_pile_id(configured)
                except PileIdError as inner:
                    error = inner
            for problem in error.problems:
                services.metrics.pileid_rejections.labels(
                    rule=problem.rule.value, source="cbp"
                ).inc()
            raise _Rejected(
                LoginRejectReason.INVALID_PILE_ID,
                f"invalid pile ID {configured}{padded}: {error}",
                rules=[p.rule.value for p in error.problems],
            ) from exc
        for warning in pile.warnings:
            log.warning(
                "pile ID warning",
                pile_id=pile.text,
                rule=warning.rule.value,
                message=warning.message,
            )
        registered, password_hash, _model = await services.store.handshake_info(pile.text)
        if not registered and settings.registration_policy == "known":
            raise _Rejected(
                LoginRejectReason.UNKNOWN_CHARGER,
                f"pile {pile.text} is not registered (registration policy: known)",
            )
        if password_hash is not None:
            if not login.auth_key or not services.verified.verify(
                pile.text, login.auth_key, password_hash
            ):
                raise _Rejected(
                    LoginRejectReason.BAD_AUTH_KEY,
                    f"invalid auth key for pile {pile.text}",
                    why="no auth key sent" if not login.auth_key else "wrong auth key",
                )
        elif settings.basic_auth_required:
            raise _Rejected(
                LoginRejectReason.BAD_AUTH_KEY,
                f"pile {pile.text} has no auth key set and one is required",
                why="no password set for this pile",
            )
        if login.protocol_version != PROTOCOL_VERSION_1_0:
            raise _Rejected(
                LoginRejectReason.PROTOCOL_VERSION_NOT_SUPPORTED,
                f"protocol version {login.protocol_version} is not supported "
                f"(pilegate speaks {PROTOCOL_VERSION_1_0} = CBP/1.0)",
            )
        return pile, registered

    async def _login(self, conn: CbpConnection, seq_bytes: bytes, login: Login) -> bool:
        services = self.services
        settings = services.settings
        try:
            pile, registered = await self._check(conn, login)
        except _Rejected as exc:
            self._reject(conn, seq_bytes, login.pile, exc)
            return False
        structlog.contextvars.bind_contextvars(pile_id=pile.text)
        if not registered:
            # Registered only once the checks above passed: a refused login
            # must not create piles.
            await services.store.register_at_connect(pile, services.clock())
            log.info("pile registered at first login", pile_id=pile.text)
        conn.pile = pile
        conn.pile_id = pile.text
        conn.kind = pile.kind.label
        conn.login = login
        conn.gun_count = login.gun_count
        conn.model = login.model or None
        reported = Kind(login.kind).name
        evidence: list[dict[str, Any]] = []
        if reported != conn.kind:
            evidence.append({"source": "cbp_login", "reported_kind": reported})
        # The model table applies to a Login's model as to a BootNotification's.
        by_model = model_kind_evidence(settings.model_kinds, login.model, conn.kind)
        if by_model is not None:
            evidence.append(by_model)
        if evidence:
            for item in evidence:
                await conn.handlers.flag_kind(item)
            if settings.kind_policy == "reject":
                await services.writer.put(*conn.handlers.boot_ops(login, accepted=False))
                services.observers.pile_booted(
                    pile.text, login.firmware_version or None, conn.model, False
                )
                services.metrics.boots.labels(status="Rejected").inc()
                self._reject(
                    conn,
                    seq_bytes,
                    login.pile,
                    _Rejected(
                        LoginRejectReason.KIND_MISMATCH,
                        f"the pile ID says {conn.kind}, but "
                        + " and ".join(
                            f"the login says {e['reported_kind']}"
                            if e["source"] == "cbp_login"
                            else f"model {e['model']} is {e['reported_kind']} (model_kinds)"
                            for e in evidence
                        ),
                    ),
                )
                return False
        await self._attach(conn)
        interval = heartbeat_interval(settings.cbp_heartbeat_interval)
        conn.reply(
            seq_bytes,
            LoginReply(
                pile.text, LoginResult.ACCEPTED, LoginRejectReason.NONE, interval, conn.local_now()
            ),
        )
        await services.writer.put(*conn.handlers.boot_ops(login, accepted=True))
        services.metrics.boots.labels(status="Accepted").inc()
        log.info(
            "login",
            firmware=login.firmware_version,
            model=login.model,
            guns=login.gun_count,
            heartbeat_interval=interval,
        )
        # The time sync first: the requests of queued commands and engines
        # line up behind it.
        services.spawn(self._time_sync(conn), f"cbp-time-sync-{conn.conn_id}")
        if self.commands is not None:
            self.commands.pile_connected(conn)
        services.observers.pile_connected(conn)
        services.observers.pile_booted(pile.text, login.firmware_version or None, conn.model, True)
        return True

    async def relogin(self, conn: CbpConnection, seq_bytes: bytes, login: Login) -> None:
        """A Login on a logged-in connection (a board that restarted its
        session without reconnecting): checked like the first one; the same
        pile is accepted again (boot data stored), anything else closes."""
        settings = self.services.settings
        try:
            pile, _ = await self._check(conn, login)
            if pile.text != conn.pile_id:
                raise _Rejected(
                    LoginRejectReason.INVALID_PILE_ID,
                    f"this connection is pile {conn.pile_id}, the new login says {pile.text}",
                )
            reported = Kind(login.kind).name
            if reported != conn.kind and settings.kind_policy == "reject":
                raise _Rejected(
                    LoginRejectReason.KIND_MISMATCH,
                    f"the login says {reported}, the pile ID says {conn.kind}",
                )
        except _Rejected as exc:
            conn.set_offline_detail(f"repeated login rejected: {exc}")
            conn.offline_reason = conn.offline_reason or "login_rejected"
            self._reject(conn, seq_bytes, login.pile, exc)
            return
        conn.login = login
        conn.gun_count = login.gun_count
        conn.model = login.model or None
        interval = heartbeat_interval(settings.cbp_heartbeat_interval)
        conn.reply(
            seq_bytes,
            LoginReply(
                pile.text, LoginResult.ACCEPTED, LoginRejectReason.NONE, interval, conn.local_now()
            ),
        )
        await self.services.writer.put(*conn.handlers.boot_ops(login, accepted=True))
        self.services.observers.pile_booted(
            pile.text, login.firmware_version or None, conn.model, True
        )
        log.info("repeated login accepted", firmware=login.firmware_version)

    async def _attach(self, conn: CbpConnection) -> None:
        """Make the connection the pile's current one (the newest wins, as for OCPP)."""
        services = self.services
        settings = services.settings
        conn.connected_at = services.clock()
        bridge = self.commands.bridge if self.commands is not None else None
        if bridge is not None:
            holder = await services.store.pile_node(conn.pile_id)
            if holder is not None and holder != services.node_id:
                await bridge.takeover(holder, conn.pile_id)
        old = services.registry.attach(conn)
        self.connections.add(conn)
        services.tracker.add(
            conn.conn_id,
            time.monotonic(),
            heartbeat_interval=float(heartbeat_interval(settings.cbp_heartbeat_interval)),
            pings=False,
        )
        conn.logged_in = True  # from here on _offline() undoes all of this
        services.metrics.connects.labels(protocol=PROTOCOL).inc()
        services.metrics.connected_piles.labels(protocol=PROTOCOL, kind=conn.kind).inc()
        if old is not None:
            services.tracker.remove(old.conn_id)
            if isinstance(old, CbpConnection | OcppConnection):
                old.replaced = True
                old.offline_reason = "replaced"
                await services.writer.put(
                    *old.presence_ops(False, "replaced", f"replaced by connection {conn.conn_id}")
                )
            services.spawn(old.close("replaced", 1000), f"close-replaced-{old.conn_id}")
            log.info("connection replaced", old_conn_id=old.conn_id, old_protocol=old.protocol)
        await services.writer.put(
            *conn.presence_ops(True, "connected", f"{conn.remote} {PROTOCOL}")
        )
        log.info("connected", protocol=PROTOCOL, replaced=old is not None)

    async def _offline(self, conn: CbpConnection) -> None:
        """The link of an attached connection ended: forget it, and record the
        pile offline unless a newer connection holds it."""
        services = self.services
        metrics = services.metrics
        self.connections.discard(conn)
        services.tracker.remove(conn.conn_id)
        conn.fail_pending()
        metrics.connected_piles.labels(protocol=PROTOCOL, kind=conn.kind).dec()
        reason, detail = conn.end_reason()
        metrics.disconnects.labels(protocol=PROTOCOL, reason=reason).inc()
        if services.registry.detach(conn):
            await services.writer.put(*conn.presence_ops(False, reason, detail))
            services.observers.pile_disconnected(conn.pile_id, conn.conn_id)
        log.info("disconnected", reason=reason, detail=detail)

    async def _time_sync(self, conn: CbpConnection) -> None:
        """0x56 after the login: set the charger's clock to the gateway's
        (charger local time), and log how far off it was."""
        from protocol.cloudboard import TimeSync

        try:
            reply = await conn.request(TimeSync(conn.pile_id, conn.local_now()))
        except CommandError as exc:
            log.info("time sync not answered", error=str(exc), pile_id=conn.pile_id)
            return
        if isinstance(reply, TimeSyncReply):
            skew = (from_local(reply.time, self.utc_offset) - self.services.clock()).total_seconds()
            log.info("time sync", pile_id=conn.pile_id, charger_offset_s=round(skew, 3))
