"""The asyncio adapter of a simulated charger: one task per charger.

It opens the link (a WebSocket for OCPP 1.6J, a TCP connection for
cloud-board CBP/1), feeds received frames and the passing of time to the
sans-I/O model (``simulators.charger.Charger`` or
``simulators.cbp_charger.CbpCharger``) and executes the model's actions
(send a frame, close the link, download firmware). It also plays the
network: faults are injected here, never in the model, so the model sees
exactly what firmware would see, and the same faults apply to both
protocols.

Faults (see docs/simulator.md, "Network faults"):

* ``clean``: the link is closed properly (WebSocket close 1000; TCP FIN for
  CBP/1); the network stays down until :meth:`SimulatedCharger.restore`;
* ``abrupt``: the TCP connection is dropped without a closing handshake
  (``transport.abort()``, a reset); down until restored;
* ``half_open``: the SIM-cut case. The socket stays open, but the charger
  stops reading (``transport.pause_reading()``, so the websockets library
  cannot answer the server's pings either) and everything it sends is lost.
  The charger notices only when one of its own requests times out; the
  server notices through its ping/pong or heartbeat watchdog. On restore the
  charger opens a new connection *before* the dead one is dropped, which is
  what a server sees when a charger comes back before its old link was
  declared dead (duplicate connection, takeover);
* ``latency``: every frame the charger sends is delayed;
* ``flap``: repeated down/up cycles.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
import socket
import struct
import time
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any, Literal, Protocol, cast

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from .cbp_charger import CbpCharger, parse_tcp_url
from .charger import AuthMethod, Charger, CloseLink, SendFrame, StartDownload
from .config import ChargerConfig, Vehicle
from .stats import Stats

FaultMode = Literal["clean", "abrupt", "half_open"]
INF = float("inf")


class LinkClosed(Exception):
    """The link ended (closed by the peer, reset, or written after its end)."""


class Link(Protocol):
    """One open connection to the gateway, whatever the protocol."""

    @property
    def transport(self) -> asyncio.Transport | None: ...

    async def recv(self) -> str | bytes: ...

    async def send(self, data: str | bytes) -> None: ...

    async def close(self, reason: str) -> None: ...


class WsLink:
    """OCPP-J: one WebSocket message is one frame."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    @property
    def transport(self) -> asyncio.Transport | None:
        return self.ws.transport

    async def recv(self) -> str | bytes:
        try:
            return await self.ws.recv()
        except ConnectionClosed as exc:
            raise LinkClosed(str(exc)) from None

    async def send(self, data: str | bytes) -> None:
        try:
            await self.ws.send(data)
        except ConnectionClosed as exc:
            raise LinkClosed(str(exc)) from None

    async def close(self, reason: str) -> None:
        await self.ws.close(1000, reason[:100])


class TcpLink:
    """CBP/1: a byte stream; the model's decoder cuts it into frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @property
    def transport(self) -> asyncio.Transport | None:
        return cast(asyncio.Transport, self.writer.transport)

    async def recv(self) -> str | bytes:
        try:
            data = await self.reader.read(65536)
        except OSError as exc:
            raise LinkClosed(str(exc)) from None
        if not data:
            raise LinkClosed("closed by the gateway")
        return data

    async def send(self, data: str | bytes) -> None:
        if self.writer.transport.is_closing():
            raise LinkClosed("closed")
        self.writer.write(data.encode() if isinstance(data, str) else data)
        try:
            await self.writer.drain()
        except OSError as exc:
            raise LinkClosed(str(exc)) from None

    async def close(self, reason: str) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


class SimulatedCharger:
    """One charger: model + WebSocket + network faults, run by one task."""

    def __init__(
        self,
        config: ChargerConfig,
        base_url: str,
        *,
        stats: Stats | None = None,
        trace: bool = True,
        open_timeout: float = 10.0,
    ) -> None:
        model_class = CbpCharger if config.protocol == "cbp1" else Charger
        self.model: Charger = model_class(config, now=time.time(), stats=stats, trace=trace)
        self.config = config
        self.cbp = config.protocol == "cbp1"
        if self.cbp:
            # tcp://HOST:PORT of the gateway's CBP/1 listener
            self.url = base_url
            self.host, self.port = parse_tcp_url(base_url)
        else:
            self.url = base_url.rstrip("/") + "/" + config.pile_id
        self.open_timeout = open_timeout
        self.handshake_status: int | None = None  # last refusal's HTTP status (OCPP)
        self.handshake_body: str = ""
        self._http_refusals = 0
        self.connect_error: str | None = None
        self.network_up = True
        self.blackhole = False
        self.latency = 0.0
        self._ws: Link | None = None
        self._zombies: list[Link] = []
        self._cm: asyncio.Timeout | None = None
        self._poked = False
        self._closing = False
        self._failures = 0
        self._reconnect_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._side_tasks: set[asyncio.Task[Any]] = set()

    # --- lifecycle ------------------------------------------------------------------------
    def start(self) -> asyncio.Task[None]:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=f"charger-{self.config.pile_id}")
        return self._task

    async def close(self, timeout: float = 5.0) -> None:
        """Stop the charger: close its link cleanly and end its task."""
        self._closing = True
        ws = self._ws
        task = self._task
        if task is not None and (ws is None or self.blackhole):
            task.cancel()  # connecting or waiting: nothing to close cleanly
        self.poke()
        if ws is not None and not self.blackhole:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close("simulator stopped"), timeout)
        for z in [*self._zombies, *([ws] if ws is not None and self.blackhole else [])]:
            _abort(z)
        self._zombies.clear()
        if task is not None:
            try:
                await asyncio.wait_for(task, timeout)
            except (TimeoutError, asyncio.CancelledError):
                task.cancel()
        for t in list(self._side_tasks):
            t.cancel()

    @property
    def connected(self) -> bool:
        return self._ws is not None

    @property
    def handshake_refusals(self) -> int:
        """Refused admissions: HTTP refusals of the WebSocket handshake (OCPP),
        rejected Logins (CBP/1)."""
        return self._http_refusals + self.model.login_refusals

    @property
    def admitted(self) -> bool:
        """The gateway let the charger in: the WebSocket upgrade was accepted
        (OCPP), the Login was accepted (CBP/1: the TCP connect says nothing)."""
        return self.model.online if self.cbp else self.connected

    def poke(self) -> None:
        """Something changed outside the task (a user action, a fault): let
        the loop look at the model again now."""
        self._poked = True
        cm = self._cm
        # A timeout that has already fired (EXPIRING: the task is cancelled
        # but has not resumed) cannot be rescheduled; the loop wakes anyway
        # and sees _poked, so there is nothing more to do.
        if cm is not None and not cm.expired():
            cm.reschedule(asyncio.get_running_loop().time())

    # --- the loop --------------------------------------------------------------------------
    async def run(self) -> None:
        model = self.model
        loop = asyncio.get_running_loop()
        while not self._closing:
            self._poked = False
            model.tick(time.time())
            await self._execute()
            if self._closing:
                break
            now = time.time()
            ws = self._ws
            if ws is None:
                can_connect = model.wants_link and self.network_up
                if can_connect and now >= self._reconnect_at:
                    await self._connect()
                    continue
                wake = model.next_deadline()
                if can_connect:
                    wake = min(wake, self._reconnect_at)
            else:
                wake = model.next_deadline()
            if self._poked:
                continue
            when = None if wake == INF else loop.time() + (wake - time.time())
            raw: str | bytes | None = None
            try:
                async with asyncio.timeout_at(when) as cm:
                    self._cm = cm
                    if ws is None:
                        await loop.create_future()
                    else:
                        raw = await ws.recv()
            except TimeoutError:
                pass
            except LinkClosed:
                self._link_lost(ws)
            finally:
                self._cm = None
            if raw is not None and ws is self._ws:
                if self._zombies:
                    for z in self._zombies:
                        _abort(z)
                    self._zombies.clear()
                model.receive(raw, time.time())
        if self._ws is not None and not self.blackhole:
            with contextlib.suppress(Exception):
                await self._ws.close("simulator stopped")

    def _link_lost(self, ws: Link | None) -> None:
        if ws is None or ws is not self._ws:
            return
        self._ws = None
        self.model.disconnected(time.time())
        self._schedule_reconnect()

    def _schedule_reconnect(self) -> None:
        c = self.config
        delay = min(c.reconnect_delay_max, c.reconnect_delay * (2 ** min(self._failures, 10)))
        self._reconnect_at = time.time() + delay * random.uniform(0.8, 1.2)

    async def _connect(self) -> None:
        if self.cbp:
            await self._connect_tcp()
            return
        headers: dict[str, str] = {}
        if self.config.password is not None:
            raw = f"{self.config.pile_id}:{self.config.password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
        stats = self.model.stats
        try:
            ws = await connect(
                self.url,
                subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                additional_headers=headers,
                ping_interval=None,
                compression=None,
                open_timeout=self.open_timeout,
                close_timeout=2,
                max_queue=4,
                max_size=2**20,
                proxy=None,
            )
        except InvalidStatus as exc:
            self._failures += 1
            self._http_refusals += 1
            self.handshake_status = exc.response.status_code
            self.handshake_body = (
                exc.response.body.decode("utf-8", "replace") if (exc.response.body) else ""
            )
            self.connect_error = f"HTTP {exc.response.status_code}"
            stats.connect_failures += 1
            stats.error(f"handshake:{exc.response.status_code}")
            self.model.note(
                time.time(),
                f"handshake refused: {exc.response.status_code} {self.handshake_body.strip()}",
            )
            self._schedule_reconnect()
            return
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            self._connect_failed(exc)
            return
        self._opened(WsLink(ws))

    async def _connect_tcp(self) -> None:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, limit=2**16), self.open_timeout
            )
        except (OSError, TimeoutError) as exc:
            self._connect_failed(exc)
            return
        self._opened(TcpLink(reader, writer))

    def _connect_failed(self, exc: BaseException) -> None:
        self._failures += 1
        self.connect_error = f"{type(exc).__name__}: {exc}"
        self.model.stats.connect_failures += 1
        self.model.stats.error(f"connect:{type(exc).__name__}")
        self._schedule_reconnect()

    def _opened(self, link: Link) -> None:
        if self._closing or not self.network_up or not self.model.wants_link:
            _abort(link)  # the world changed while connecting
            return
        self._failures = 0
        self.connect_error = None
        self._ws = link
        self.model.connected(time.time())

    async def _execute(self) -> None:
        model = self.model
        while model.outbox:
            for action in model.drain():
                if isinstance(action, SendFrame):
                    await self._send(action.text)
                elif isinstance(action, CloseLink):
                    self._drop(action)
                elif isinstance(action, StartDownload):
                    self._side_task(self._download(action.url))

    def _side_task(self, coro: Coroutine[Any, Any, Any]) -> None:
        """A short-lived helper (firmware download, closing handshake), owned
        by this charger and cancelled with it."""
        task = asyncio.create_task(coro)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    async def _send(self, text: str | bytes) -> None:
        ws = self._ws
        if ws is None or self.blackhole:
            return  # lost in the dead link
        if self.latency > 0:
            await asyncio.sleep(self.latency)
            if ws is not self._ws or self.blackhole:
                return
        try:
            await ws.send(text)
        except LinkClosed:
            self._link_lost(ws)

    def _drop(self, action: CloseLink) -> None:
        ws = self._ws
        self._ws = None
        if ws is not None:
            if self.blackhole:
                self._zombies.append(ws)
            elif action.abort:
                _abort(ws)
            else:
                self._side_task(ws.close(action.reason))
        self._schedule_reconnect()

    async def _download(self, url: str) -> None:
        body: bytes | None = None
        error: str | None = None
        try:
            async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
                response = await client.get(url, follow_redirects=True)
            if response.status_code != 200:
                error = f"HTTP {response.status_code}"
            else:
                body = response.content
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        self.model.download_finished(time.time(), body, error)
        self.poke()

    # --- network faults -------------------------------------------------------------------------
    async def disconnect(self, mode: FaultMode) -> None:
        """Take the network down in one of the fault modes; it stays down
        until :meth:`restore`."""
        self.network_up = False
        ws = self._ws
        if mode == "half_open":
            self.blackhole = True
            if ws is not None and ws.transport is not None:
                ws.transport.pause_reading()
            self.model.note(time.time(), "network: half-open (socket open, nothing passes)")
            return
        self.model.note(time.time(), f"network: {mode} close")
        if ws is None:
            return
        self._ws = None
        self.model.disconnected(time.time())
        if mode == "abrupt":
            _abort(ws)
        else:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close("network down"), 5)
        self.poke()

    def restore(self) -> None:
        """The network is back: the charger reconnects at once. A half-open
        link is left behind, still open, until the new link carries its first
        answer."""
        self.network_up = True
        if self.blackhole:
            self.blackhole = False
            ws = self._ws
            if ws is not None:
                self._zombies.append(ws)
                self._ws = None
                self.model.disconnected(time.time())
        self._failures = 0
        self._reconnect_at = 0.0
        self.model.note(time.time(), "network: restored")
        self.poke()

    def set_latency(self, seconds: float) -> None:
        self.latency = max(0.0, seconds)

    async def flap(
        self,
        times: int,
        down: float,
        up: float,
        mode: FaultMode = "abrupt",
        reconnect_timeout: float = 10.0,
    ) -> None:
        """``times`` cycles of: network down for ``down`` s, then up, and the
        new link kept for ``up`` s once it is open."""
        for _ in range(times):
            await self.disconnect(mode)
            await asyncio.sleep(down)
            before = self.model.links
            self.restore()
            await self.wait_until(
                partial(_more_links, self, before), reconnect_timeout, "reconnection while flapping"
            )
            await asyncio.sleep(up)

    # --- what people do at the charger ------------------------------------------------
    def _act(self, fn: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        fn(*args, now=time.time(), **kwargs)
        self.poke()

    def plug(self, gun: int = 1, vehicle: Vehicle | None = None) -> None:
        self._act(self.model.plug, gun, vehicle=vehicle)

    def unplug(self, gun: int = 1) -> None:
        self._act(self.model.unplug, gun)

    def present(
        self, gun: int, id_tag: str, method: AuthMethod, energy_limit_wh: float | None = None
    ) -> None:
        self._act(self.model.present, gun, id_tag, method, energy_limit_wh=energy_limit_wh)

    def press_stop(self, gun: int = 1) -> None:
        self._act(self.model.press_stop, gun)

    def power_cycle(self, off_seconds: float | None = None) -> None:
        self._act(self.model.power_cycle, off_seconds=off_seconds)

    async def wait_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if self._task is not None and self._task.done():
                self._task.result()  # re-raise why the charger stopped
                raise RuntimeError(f"{self.config.pile_id}: charger stopped")
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{self.config.pile_id}: {what} not within {timeout:g} s")
            await asyncio.sleep(0.02)


def _more_links(charger: SimulatedCharger, before: int) -> bool:
    return charger.model.links > before


def _abort(ws: Link) -> None:
    """Drop the connection without any goodbye: a TCP reset, as when a modem
    loses its link and the gateway's next read fails. (A plain close would
    send a FIN, which a CBP/1 gateway rightly takes for a clean close.)"""
    transport = ws.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
