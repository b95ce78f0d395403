"""OCPP-J WebSocket listener: the handshake checks and the connection handler.

Before the upgrade (``process_request``), in this order, each refusal
logged with its reason and counted in ``pilegate_handshake_refusals``:

1. the path is ``{prefix}/{pileId}``, else 404;
2. the pile ID is valid (pileid rules), else 400 naming the failing rule;
3. registration policy: ``known`` refuses unregistered piles with 404,
   ``open`` registers a valid unknown ID at its first connect;
4. an OCPP subprotocol pilegate speaks is offered, else 400 naming them;
5. security profile 1: HTTP Basic auth with the pile's password, else 401.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import weakref
from collections.abc import Callable, Sequence
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import structlog
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

import pileid
from pileid import PileId, PileIdError

from ..services import Services

if TYPE_CHECKING:
    from ..mqtt import MqttBridge
from .connection import OcppConnection, new_conn_id, shared_validator
from .wsconn import OcppServerConnection

log = structlog.get_logger("pilegate.ocpp")

SUBPROTOCOLS = {"ocpp1.6": "1.6"}


def _refuse(
    services: Services,
    conn: ServerConnection,
    status: HTTPStatus,
    reason: str,
    text: str,
    **fields: Any,
) -> Response:
    services.metrics.handshake_refusals.labels(reason=reason).inc()
    log.warning("handshake refused", reason=reason, status=int(status), message=text, **fields)
    response = conn.respond(status, text + "\n")
    if status == HTTPStatus.UNAUTHORIZED:
        response.headers["WWW-Authenticate"] = 'Basic realm="pilegate", charset="UTF-8"'
    return response


def _offered_subprotocols(headers: Headers) -> list[str]:
    offered: list[str] = []
    for value in headers.get_all("Sec-WebSocket-Protocol"):
        offered.extend(p.strip() for p in value.split(",") if p.strip())
    return offered


def _basic_credentials(headers: Headers) -> tuple[str, str] | None:
    value = headers.get("Authorization")
    if not value or not value.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(value[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def _select_subprotocol(conn: ServerConnection, offered: Sequence[str]) -> Any:
    for name in offered:
        if name in SUBPROTOCOLS:
            return name
    return None


class OcppServer:
    def __init__(
        self,
        services: Services,
        on_connect: Callable[[OcppConnection], None] | None = None,
        bridge: MqttBridge | None = None,
    ) -> None:
        self.services = services
        self._bridge = bridge
        self._on_connect = on_connect
        self._server: Server | None = None
        self._piles: weakref.WeakKeyDictionary[ServerConnection, tuple[PileId, str | None]] = (
            weakref.WeakKeyDictionary()
        )
        self.connections: set[OcppConnection] = set()

    async def start(self) -> None:
        s = self.services.settings
        # Compile every 1.6 schema now rather than on a charger's first message.
        shared_validator("1.6")
        self._server = await serve(
            self._handler,
            s.ocpp_host,
            s.ocpp_port,
            process_request=self._process_request,
            # Complete text messages go straight to the connection
            # (gateway/ocpp/wsconn.py, OcppConnection._deliver).
            create_connection=OcppServerConnection,
            # Our own selection: the handshake check above already refused
            # clients offering none we speak (unless ocpp_require_subprotocol
            # is off, in which case a client offering none is served as 1.6).
            select_subprotocol=_select_subprotocol,
            max_size=s.ocpp_max_message_size,
            # Keepalive is the presence tracker's job (one ticker per node,
            # not one task per connection); compression would cost ~100 KiB
            # of zlib state per idle charger.
            ping_interval=None,
            compression=None,
            close_timeout=5,
            # The handshake checks read (and on first connect write) the
            # database; during a reconnect storm that can take longer than
            # websockets' default 10 s.
            open_timeout=30,
            # A reconnect storm opens thousands of connections at once; with
            # the default listen backlog (100) the kernel drops SYNs and the
            # chargers retry seconds later (capped by net.core.somaxconn).
            backlog=LISTEN_BACKLOG,
            logger=logging.getLogger("pilegate.websockets"),
        )
        log.info("OCPP listener", host=s.ocpp_host, port=self.port, path=s.ocpp_path_prefix)

    @property
    def port(self) -> int:
        assert self._server is not None
        sock = next(iter(self._server.sockets))
        port: int = sock.getsockname()[1]
        return port

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close(close_connections=False)

    async def close_all(self, reason: str = "gateway_shutdown") -> None:
        conns = list(self.connections)
        await asyncio.gather(*(c.close(reason, 1001) for c in conns), return_exceptions=True)
        if self._server is not None:
            self._server.close(close_connections=True)
            await self._server.wait_closed()

    # --- handshake ----------------------------------------------------------------
    async def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        services = self.services
        settings = services.settings
        prefix = settings.ocpp_path_prefix.rstrip("/") + "/"
        path = unquote(urlsplit(request.path).path)
        if not path.startswith(prefix) or "/" in path[len(prefix) :] or path == prefix:
            return _refuse(
                services,
                conn,
                HTTPStatus.NOT_FOUND,
                "bad_path",
                f"unknown path {path!r}: chargers connect to {prefix}{{pileId}}",
            )
        text = path[len(prefix) :]
        try:
            pile = pileid.parse_pile_id(text)
        except PileIdError as exc:
            for problem in exc.problems:
                services.metrics.pileid_rejections.labels(
                    rule=problem.rule.value, source="ocpp"
                ).inc()
            rule = exc.problems[0].rule.value if exc.problems else "invalid"
            return _refuse(
                services,
                conn,
                HTTPStatus.BAD_REQUEST,
                f"invalid_pile_id:{rule}",
                f"invalid pile ID {text!r}: {exc} "
                f"[rule: {', '.join(p.rule.value for p in exc.problems)}]",
                pile_id=text,
                rules=[p.rule.value for p in exc.problems],
            )
        for warning in pile.warnings:
            log.warning(
                "pile ID warning",
                pile_id=pile.text,
                rule=warning.rule.value,
                message=warning.message,
            )

        registered, password_hash, model = await services.store.handshake_info(pile.text)
        if not registered and settings.registration_policy == "known":
            return _refuse(
                services,
                conn,
                HTTPStatus.NOT_FOUND,
                "unknown_pile",
                f"pile {pile.text} is not registered (registration policy: known)",
                pile_id=pile.text,
            )

        offered = _offered_subprotocols(request.headers)
        if settings.ocpp_require_subprotocol and not any(p in SUBPROTOCOLS for p in offered):
            supported = ", ".join(SUBPROTOCOLS)
            return _refuse(
                services,
                conn,
                HTTPStatus.BAD_REQUEST,
                "subprotocol",
                f"no supported OCPP subprotocol offered ({', '.join(offered) or 'none'}); "
                f"pilegate speaks: {supported}",
                pile_id=pile.text,
                offered=offered,
            )

        if settings.basic_auth_required:
            creds = _basic_credentials(request.headers)
            if creds is None:
                return _refuse(
                    services,
                    conn,
                    HTTPStatus.UNAUTHORIZED,
                    "auth_missing",
                    "HTTP Basic credentials required (security profile 1)",
                    pile_id=pile.text,
                )
            user, password = creds
            if (
                user != pile.text
                or password_hash is None
                or not services.verified.verify(pile.text, password, password_hash)
            ):
                why = (
                    "username is not the pile ID"
                    if user != pile.text
                    else "no password set for this pile"
                    if password_hash is None
                    else "wrong password"
                )
                return _refuse(
                    services,
                    conn,
                    HTTPStatus.UNAUTHORIZED,
                    "auth_failed",
                    f"invalid credentials for pile {pile.text}",
                    pile_id=pile.text,
                    why=why,
                )
        if not registered:
            # Registered only once every check passed: a refused handshake
            # (or a stray HTTP GET) must not create piles.
            await services.store.register_at_connect(pile, services.clock())
            log.info("pile registered at first connect", pile_id=pile.text)
        self._piles[conn] = (pile, model)
        return None

    # --- connection -----------------------------------------------------------------
    async def _handler(self, ws: ServerConnection) -> None:
        pile, model = self._piles.pop(ws)
        # websockets keeps the handshake request and response for the whole
        # life of the connection; their headers (~3.5 KiB per charger) were
        # read by _process_request and are not needed again.
        _drop_handshake_headers(ws)
        services = self.services
        version = SUBPROTOCOLS.get(ws.subprotocol or "ocpp1.6", "1.6")
        conn_id = new_conn_id()
        structlog.contextvars.bind_contextvars(pile_id=pile.text, conn_id=conn_id)
        conn = OcppConnection(ws, pile, version, services, model=model, conn_id=conn_id)
        metrics = services.metrics
        # Registered before any await: from here on commands find the pile.
        old = services.registry.attach(conn)
        self.connections.add(conn)
        services.tracker.add(
            conn_id, _mono(), heartbeat_interval=float(services.settings.heartbeat_interval)
        )
        if self._bridge is not None:
            # Read before our own "connected" can reach the database: was
            # the pile held by another node (which may not have noticed the
            # old link die yet)? Then tell it to let go.
            holder = await services.store.pile_node(pile.text)
            if holder is not None and holder != services.node_id:
                await self._bridge.takeover(holder, pile.text)
        if old is not None:
            # The newest connection wins (a charger that reconnects before
            # the gateway noticed the old link die). The old one's events
            # are recorded here, in order, before the new "connected".
            old.replaced = True
            old.offline_reason = "replaced"
            services.tracker.remove(old.conn_id)
            await services.writer.put(
                *old.presence_ops(False, "replaced", f"replaced by connection {conn_id}")
            )
            services.spawn(old.close("replaced", 1000), f"close-replaced-{old.conn_id}")
            log.info("connection replaced", old_conn_id=old.conn_id)
        await services.writer.put(
            *conn.presence_ops(True, "connected", f"{ws.remote_address} {conn.protocol}")
        )
        metrics.connects.labels(protocol=conn.protocol).inc()
        metrics.connected_piles.labels(protocol=conn.protocol, kind=conn.kind).inc()
        log.info(
            "connected",
            protocol=conn.protocol,
            remote=str(ws.remote_address),
            replaced=old is not None,
        )
        if self._on_connect is not None:
            self._on_connect(conn)
        services.observers.pile_connected(conn)
        try:
            await conn.run()
        finally:
            self.connections.discard(conn)
            services.tracker.remove(conn_id)
            conn.fail_pending()
            metrics.connected_piles.labels(protocol=conn.protocol, kind=conn.kind).dec()
            reason, detail = conn.end_reason()
            metrics.disconnects.labels(protocol=conn.protocol, reason=reason).inc()
            if services.registry.detach(conn):
                await services.writer.put(*conn.presence_ops(False, reason, detail))
                services.observers.pile_disconnected(conn.pile_id, conn.conn_id)
            log.info("disconnected", reason=reason, detail=detail)
            structlog.contextvars.unbind_contextvars("pile_id", "conn_id")


LISTEN_BACKLOG = 4096


def _mono() -> float:
    import time

    return time.monotonic()


def _drop_handshake_headers(ws: ServerConnection) -> None:
    """Empty the headers of the opening handshake once it is over (the
    request and response objects stay: websockets tells the handshake from
    later frames by ``ws.request`` being set)."""
    if ws.request is not None:
        ws.request.headers.clear()
    if ws.response is not None:
        ws.response.headers.clear()
