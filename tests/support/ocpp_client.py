"""A minimal OCPP-J 1.6 charge point for the end-to-end tests.

It speaks real WebSockets to the gateway on loopback, answers the gateway's
CALLs through a handler table, and can misbehave on purpose (raw frames,
half-open links). The full simulator is ``simulators/``; this client stays
small so the gateway tests do not depend on it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import socket
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

CallHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]] | dict[str, Any]]


def now_iso(dt: datetime | None = None) -> str:
    return (dt or datetime.now(UTC)).isoformat(timespec="seconds").replace("+00:00", "Z")


class OcppError(Exception):
    def __init__(self, code: str, description: str, details: dict[str, Any]) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description
        self.details = details


class ChargePoint:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[str, asyncio.Future[Any]] = {}
        self.handlers: dict[str, CallHandler] = {}
        self.received_calls: list[tuple[str, dict[str, Any]]] = []
        self.raw_in: asyncio.Queue[Any] = asyncio.Queue()
        self._answering: set[asyncio.Task[None]] = set()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(
        cls,
        port: int,
        pile_id: str,
        *,
        subprotocols: list[str] | None = None,
        password: str | None = None,
        user: str | None = None,
        path_prefix: str = "/ocpp",
    ) -> ChargePoint:
        headers = {}
        if password is not None:
            token = base64.b64encode(f"{user or pile_id}:{password}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        ws = await connect(
            f"ws://127.0.0.1:{port}{path_prefix}/{pile_id}",
            # [] means "offer none": send no Sec-WebSocket-Protocol header at all
            subprotocols=(  # type: ignore[arg-type]
                ["ocpp1.6"] if subprotocols is None else (subprotocols or None)
            ),
            additional_headers=headers,
            ping_interval=None,
            open_timeout=10,
            max_size=2**22,
        )
        return cls(ws)

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                msg = json.loads(raw)
                await self.raw_in.put(msg)
                if not isinstance(msg, list) or len(msg) < 3:
                    continue
                if msg[0] == 2:
                    task = asyncio.create_task(self._answer(msg))
                    self._answering.add(task)
                    task.add_done_callback(self._answering.discard)
                elif msg[0] in (3, 4):
                    fut = self._pending.pop(msg[1], None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
        except ConnectionClosed:
            pass
        finally:
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("closed"))

    async def _answer(self, msg: list[Any]) -> None:
        _, uid, action, payload = msg
        self.received_calls.append((action, payload))
        handler = self.handlers.get(action)
        if handler is None:
            reply: list[Any] = [4, uid, "NotImplemented", f"no handler for {action}", {}]
        else:
            result = handler(payload)
            if asyncio.iscoroutine(result):
                result = await result
            if isinstance(result, OcppError):
                reply = [4, uid, result.code, result.description, result.details]
            else:
                reply = [3, uid, result]
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(json.dumps(reply))

    async def call(
        self, action: str, payload: dict[str, Any], timeout: float = 10
    ) -> dict[str, Any]:
        """Send a CALL; returns the CALLRESULT payload or raises OcppError."""
        uid = str(next(self._ids))
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[uid] = fut
        await self.ws.send(json.dumps([2, uid, action, payload]))
        msg = await asyncio.wait_for(fut, timeout)
        if msg[0] == 4:
            raise OcppError(msg[2], msg[3], msg[4] if len(msg) > 4 else {})
        result: dict[str, Any] = msg[2]
        return result

    async def send_raw(self, text: str | bytes) -> None:
        await self.ws.send(text)

    async def next_raw(self, timeout: float = 10) -> Any:
        return await asyncio.wait_for(self.raw_in.get(), timeout)

    async def boot(self, model: str = "XD32E", vendor: str = "DLH", **extra: Any) -> dict[str, Any]:
        return await self.call(
            "BootNotification",
            {"chargePointVendor": vendor, "chargePointModel": model, **extra},
        )

    async def close(self, code: int = 1000) -> None:
        await self.ws.close(code)
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader

    async def wait_closed(self, timeout: float = 10) -> None:
        await asyncio.wait_for(self.ws.wait_closed(), timeout)

    def abort(self) -> None:
        """Vanish without a closing handshake (FIN but no WebSocket close)."""
        transport = self.ws.transport
        transport.abort()


async def raw_handshake(
    port: int, pile_id: str, *, subprotocol: str = "ocpp1.6", path_prefix: str = "/ocpp"
) -> tuple[socket.socket, bytes]:
    """Open a WebSocket by hand and return the socket and the HTTP response.

    The socket then goes silent: it neither reads nor answers pings, like a
    charger whose SIM was cut while the gateway's TCP stack still sees the
    connection (half-open).
    """
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    key = base64.b64encode(b"0123456789abcdef").decode()
    request = (
        f"GET {path_prefix}/{pile_id} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Protocol: {subprotocol}\r\n\r\n"
    )
    await loop.sock_sendall(sock, request.encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 4096), 10)
        if not chunk:
            break
        data += chunk
    return sock, data
