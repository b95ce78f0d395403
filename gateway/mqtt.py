"""MQTT bridge (aiomqtt): publishes the outbox, takes commands, and carries
commands between gateway nodes.

Topics (prefix ``pilegate/v1`` by default):

* ``{prefix}/piles/{pileId}/events/{type}``: events (QoS 1), from the outbox;
* ``{prefix}/piles/{pileId}/presence``: retained presence (QoS 1);
* ``{prefix}/piles/{pileId}/commands/{Action}``: commands from the platform,
  read through the shared subscription ``$share/pilegate/...`` so exactly
  one node takes each; the answer goes to the request's response topic;
* ``{prefix}/nodes/{nodeId}/rpc``: a command forwarded by another node to
  the node that holds the pile, or a takeover notice;
* ``{prefix}/nodes/{nodeId}/replies``: answers to forwarded commands.

The gateway keeps serving chargers while the broker is away: events wait in
the outbox (database) and are published in order when it returns; the
bridge reconnects with exponential backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiomqtt
import orjson
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .registry import CommandError, CommandResult
from .services import Services

if TYPE_CHECKING:
    from .commands import CommandService

log = structlog.get_logger("pilegate.mqtt")


def _props(correlation: bytes | None = None) -> Properties | None:
    if correlation is None:
        return None
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.CorrelationData = correlation
    return props


class MqttBridge:
    def __init__(self, services: Services, url: str) -> None:
        self.services = services
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 1883
        self.username = parts.username
        self.password = parts.password
        self.prefix = services.settings.mqtt_topic_prefix
        self.node_id = services.node_id
        self.commands: CommandService | None = None
        self.client: aiomqtt.Client | None = None
        self.connected = asyncio.Event()
        self._wakeup = asyncio.Event()
        self._replies: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.published = 0

    # --- lifecycle ---------------------------------------------------------------
    def notify(self) -> None:
        """New outbox rows may be waiting (called after a write batch)."""
        self._wakeup.set()

    async def run(self) -> None:
        backoff = 0.5
        while True:
            try:
                async with aiomqtt.Client(
                    self.host,
                    self.port,
                    username=self.username,
                    password=self.password,
                    identifier=f"pilegate-{self.node_id}-{uuid.uuid4().hex[:6]}",
                    protocol=aiomqtt.ProtocolVersion.V5,
                    keepalive=15,
                    timeout=10,
                ) as client:
                    self.client = client
                    await self._subscribe(client)
                    self.connected.set()
                    backoff = 0.5
                    log.info("MQTT connected", host=self.host, port=self.port)
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(self._publisher(client))
                        tg.create_task(self._listener(client))
            except* aiomqtt.MqttError as group:
                self._disconnected(f"{group.exceptions[0]}", backoff)
            except* OSError as group:
                self._disconnected(f"{group.exceptions[0]}", backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    def _disconnected(self, why: str, backoff: float) -> None:
        self.client = None
        self.connected.clear()
        for fut in self._replies.values():
            if not fut.done():
                fut.set_exception(
                    CommandError(503, "broker_unavailable", "MQTT broker connection lost")
                )
        self.services.metrics.mqtt_connected.set(0)
        log.warning("MQTT unavailable; retrying", error=why, retry_in=backoff)

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        self.services.metrics.mqtt_connected.set(1)
        await client.subscribe(f"$share/pilegate/{self.prefix}/piles/+/commands/+", qos=1)
        await client.subscribe(f"{self.prefix}/nodes/{self.node_id}/rpc", qos=1)
        await client.subscribe(f"{self.prefix}/nodes/{self.node_id}/replies", qos=1)

    # --- outbox ------------------------------------------------------------------
    async def _publisher(self, client: aiomqtt.Client) -> None:
        store = self.services.store
        batch = self.services.settings.mqtt_publish_batch
        while True:
            rows = await store.outbox_batch(self.node_id, batch)
            if not rows:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), 0.5)
                self._wakeup.clear()
                continue
            done: list[int] = []
            try:
                for row_id, topic, payload, retain in rows:
                    await client.publish(topic, payload, qos=1, retain=retain)
                    done.append(row_id)
            finally:
                # What reached the broker is deleted even if the connection
                # broke mid-batch; the rest is published again later.
                if done:
                    await store.outbox_delete(done)
                    self.published += len(done)

    async def refresh_backlog_metrics(self) -> None:
        count, oldest = await self.services.store.outbox_stats(self.node_id)
        m = self.services.metrics
        m.outbox_backlog.set(count)
        age = (self.services.clock() - oldest).total_seconds() if oldest else 0.0
        m.outbox_oldest_age.set(max(0.0, age))

    # --- incoming ------------------------------------------------------------------
    async def _listener(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            topic = str(message.topic)
            try:
                body = orjson.loads(message.payload) if message.payload else {}
            except orjson.JSONDecodeError:
                log.warning("MQTT message is not JSON", topic=topic)
                continue
            if not isinstance(body, dict):
                log.warning("MQTT message is not a JSON object", topic=topic)
                continue
            props = message.properties
            if topic.endswith("/replies"):
                fut = self._replies.pop(str(body.get("correlation_id")), None)
                if fut is not None and not fut.done():
                    fut.set_result(body)
            elif topic.endswith("/rpc"):
                self.services.spawn(self._rpc(client, body), "mqtt-rpc")
            elif "/commands/" in topic:
                self.services.spawn(self._external(client, topic, body, props), "mqtt-command")

    async def _external(
        self, client: aiomqtt.Client, topic: str, body: dict[str, Any], props: Any
    ) -> None:
        """A command from the platform: same commands and errors as the ops API."""
        parts = topic.split("/")
        pile_id, action = parts[-3], parts[-1]
        response_topic = body.get("response_topic") or getattr(props, "ResponseTopic", None)
        correlation = body.get("correlation_id")
        corr_bytes = getattr(props, "CorrelationData", None)
        if correlation is None and corr_bytes is not None:
            correlation = corr_bytes.decode(errors="replace")
        reply = await self._execute(pile_id, action, body)
        reply["correlation_id"] = correlation
        if response_topic:
            await client.publish(
                str(response_topic), orjson.dumps(reply), qos=1, properties=_props(corr_bytes)
            )
        else:
            log.info(
                "command without response topic",
                pile_id=pile_id,
                action=action,
                status=reply["status"],
            )

    async def _execute(self, pile_id: str, action: str, body: dict[str, Any]) -> dict[str, Any]:
        import pileid

        assert self.commands is not None
        payload = body.get("payload", {})
        timeout = body.get("timeout")
        queue_ttl = body.get("queue_ttl")
        try:
            try:
                pileid.parse_pile_id(pile_id)
            except pileid.PileIdError as exc:
                raise CommandError(
                    400, "invalid_pile_id", f"invalid pile ID {pile_id!r}: {exc}"
                ) from exc
            if not isinstance(payload, dict):
                raise CommandError(400, "invalid_request", "payload must be a JSON object")
            for name, value in (("timeout", timeout), ("queue_ttl", queue_ttl)):
                if value is not None and (
                    not isinstance(value, int | float) or isinstance(value, bool) or value <= 0
                ):
                    raise CommandError(400, "invalid_request", f"{name} must be a positive number")
            result = await self.commands.execute(
                pile_id, action, payload, timeout=timeout, queue_ttl=queue_ttl
            )
        except CommandError as exc:
            return {
                "status": exc.status,
                "error": {"code": exc.code, "message": str(exc), **exc.extra},
            }
        if isinstance(result, CommandResult):
            return {"status": 200, "action": result.action, "response": result.response}
        return {"status": 202, "queued": result.to_dict()}

    async def _rpc(self, client: aiomqtt.Client, body: dict[str, Any]) -> None:
        kind = body.get("kind")
        if kind == "takeover":
            pile_id = str(body.get("pile_id"))
            conn = self.services.registry.get(pile_id)
            if conn is not None:
                log.info("pile taken over by another node", pile_id=pile_id, by=body.get("from"))
                conn.replaced = True
                await conn.close("replaced", 1000)
            return
        if kind == "command":
            reply = await self._execute(str(body.get("pile_id")), str(body.get("action")), body)
            reply["correlation_id"] = body.get("correlation_id")
            reply_to = body.get("reply_to")
            if reply_to:
                await client.publish(str(reply_to), orjson.dumps(reply), qos=1)

    # --- outgoing (to other nodes) ------------------------------------------------------
    async def forward(
        self,
        node_id: str,
        pile_id: str,
        action: str,
        payload: dict[str, Any],
        timeout: float,
        queue_ttl: float | None,
    ) -> CommandResult:
        client = self.client
        if client is None:
            raise CommandError(
                503,
                "broker_unavailable",
                f"pile {pile_id} is connected to node {node_id}, and the MQTT broker that "
                "reaches it is unavailable",
            )
        correlation = uuid.uuid4().hex
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[correlation] = fut
        request = {
            "kind": "command",
            "correlation_id": correlation,
            "reply_to": f"{self.prefix}/nodes/{self.node_id}/replies",
            "pile_id": pile_id,
            "action": action,
            "payload": payload,
            "timeout": timeout,
            "queue_ttl": queue_ttl,
        }
        started = time.monotonic()
        try:
            await client.publish(f"{self.prefix}/nodes/{node_id}/rpc", orjson.dumps(request), qos=1)
            # the other node waits up to ``timeout`` for the charger; allow
            # for the two broker hops on top
            reply = await asyncio.wait_for(fut, timeout + 5)
        except TimeoutError as exc:
            raise CommandError(
                504,
                "timeout",
                f"node {node_id} holding pile {pile_id} did not answer within "
                f"{time.monotonic() - started:.0f} s",
            ) from exc
        finally:
            self._replies.pop(correlation, None)
        status = int(reply.get("status", 500))
        if status == 200:
            return CommandResult(action=action, response=reply.get("response") or {})
        error = reply.get("error") or {}
        extra = {k: v for k, v in error.items() if k not in ("code", "message")}
        raise CommandError(
            status, str(error.get("code", "error")), str(error.get("message", "")), **extra
        )

    async def takeover(self, node_id: str, pile_id: str) -> None:
        client = self.client
        if client is None:
            return
        await client.publish(
            f"{self.prefix}/nodes/{node_id}/rpc",
            orjson.dumps({"kind": "takeover", "pile_id": pile_id, "from": self.node_id}),
            qos=1,
        )
