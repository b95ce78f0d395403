"""Mosquitto for the MQTT tests.

Most tests use the broker of the machine (127.0.0.1:1883, started by
.ci/run) with a topic prefix of their own. The broker-restart test runs a
private Mosquitto on a free port so it can stop and start it.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import orjson

SYSTEM_BROKER = "mqtt://127.0.0.1:1883"


def unique_prefix() -> str:
    return f"pgtest/{uuid.uuid4().hex[:10]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PrivateBroker:
    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="pilegate-mqtt-"))
        (self.dir / "mosquitto.conf").write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    async def start(self) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        # Popen returns at once (it does not wait for the broker); the port
        # poll below is the async wait.
        self.proc = subprocess.Popen(  # noqa: ASYNC220
            [binary, "-c", str(self.dir / "mosquitto.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(100):
            try:
                _, w = await asyncio.open_connection("127.0.0.1", self.port)
                w.close()
                return
            except OSError:
                await asyncio.sleep(0.05)
        raise RuntimeError("private mosquitto did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


class Collector:
    """Subscribes to a topic filter and keeps what arrives."""

    def __init__(self, url: str, topic: str) -> None:
        host, port = url.removeprefix("mqtt://").split(":")
        self.client = aiomqtt.Client(host, int(port), protocol=aiomqtt.ProtocolVersion.V5)
        self.topic = topic
        self.messages: list[tuple[str, dict[str, Any], bool]] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Collector:
        await self.client.__aenter__()
        await self.client.subscribe(self.topic, qos=1)
        self._task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        async for m in self.client.messages:
            payload = orjson.loads(m.payload) if m.payload else {}
            self.messages.append((str(m.topic), payload, bool(m.retain)))

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await self._task
        with contextlib.suppress(aiomqtt.MqttError):
            await self.client.__aexit__(None, None, None)

    def events(self) -> list[dict[str, Any]]:
        return [p for t, p, _ in self.messages if "/events/" in t]

    async def wait_for(self, predicate: Any, timeout: float = 15) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate(self):
            if loop.time() > deadline:
                types = [e.get("type") for e in self.events()]
                raise AssertionError(f"condition not met; events so far: {types}")
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def private_broker() -> AsyncIterator[PrivateBroker]:
    broker = PrivateBroker()
    await broker.start()
    try:
        yield broker
    finally:
        broker.stop()
        shutil.rmtree(broker.dir, ignore_errors=True)
