"""Prometheus metrics of one gateway process.

Each Gateway owns its own CollectorRegistry (not the global default) so tests
can run several gateways in one interpreter without duplicate-metric errors.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.pileid_rejections = Counter(
            "pilegate_pileid_rejections",
            "Pile IDs refused at a handshake, login or API call, by failing rule",
            ["rule", "source"],
            registry=r,
        )
        self.api_requests = Counter(
            "pilegate_api_requests",
            "Ops API requests by route and status",
            ["route", "status"],
            registry=r,
        )
        self.connected_piles = Gauge(
            "pilegate_connected_piles",
            "Piles connected to this node, by protocol and kind",
            ["protocol", "kind"],
            registry=r,
        )
        self.db_ready = Gauge(
            "pilegate_database_ready",
            "1 when the last readiness check reached the database",
            registry=r,
        )
        self.storage_queue_depth = Gauge(
            "pilegate_storage_queue_depth", "Write operations waiting to be flushed", registry=r
        )
        self.storage_flush_seconds = Histogram(
            "pilegate_storage_flush_seconds",
            "Time to write one batch to the database",
            registry=r,
        )

        self.handshake_refusals = Counter(
            "pilegate_handshake_refusals",
            "Refused OCPP handshakes by reason",
            ["reason"],
            registry=r,
        )
        self.connects = Counter(
            "pilegate_connects",
            "Charger connections accepted, by protocol",
            ["protocol"],
            registry=r,
        )
        self.disconnects = Counter(
            "pilegate_disconnects",
            "Charger disconnections by reason",
            ["protocol", "reason"],
            registry=r,
        )
        self._messages_in = Counter(
            "pilegate_messages_in",
            "Messages received from chargers, by action",
            ["action"],
            registry=r,
        )
        self.ocpp_out = Counter(
            "pilegate_messages_out", "Calls sent to chargers, by action", ["action"], registry=r
        )
        self.ocpp_errors_sent = Counter(
            "pilegate_callerrors_sent",
            "CALLERRORs sent to chargers, by error code",
            ["code"],
            registry=r,
        )
        self._handler_seconds = Histogram(
            "pilegate_handler_seconds",
            "Time from receiving a CALL to sending its answer, by action",
            ["action"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.boots = Counter(
            "pilegate_boots", "BootNotifications by answered status", ["status"], registry=r
        )
        self.kind_mismatches = Counter(
            "pilegate_kind_mismatches",
            "AC/DC contradictions found, by evidence",
            ["source"],
            registry=r,
        )
        self.transactions = Counter(
            "pilegate_transactions", "Transaction events", ["event"], registry=r
        )
        self.presence_declared_offline = Counter(
            "pilegate_dead_links",
            "Links declared dead by the presence watchdog",
            ["reason"],
            registry=r,
        )
        self.mqtt_connected = Gauge(
            "pilegate_mqtt_connected", "1 while the MQTT broker is connected", registry=r
        )
        self.outbox_backlog = Gauge(
            "pilegate_outbox_backlog", "Events of this node waiting to be published", registry=r
        )
        self.outbox_oldest_age = Gauge(
            "pilegate_outbox_oldest_age_seconds",
            "Age of the oldest unpublished event of this node",
            registry=r,
        )
        self.nodes_lost = Counter(
            "pilegate_nodes_lost", "Dead nodes whose piles this node marked offline", registry=r
        )
        self.outstanding_calls = Gauge(
            "pilegate_outstanding_calls",
            "Calls sent to chargers and not yet answered",
            registry=r,
        )
        self.firmware_transitions = Counter(
            "pilegate_firmware_transitions",
            "Per-pile firmware upgrade transitions, by the state entered",
            ["to_state"],
            registry=r,
        )
        self.whitelist_status = Counter(
            "pilegate_whitelist_status_changes",
            "Whitelist sync status changes reported, by new status",
            ["status"],
            registry=r,
        )
        # labels() costs a lock and a dict lookup; the per-message path keeps
        # its children here.
        self._in_children: dict[str, Any] = {}
        self._latency_children: dict[str, Any] = {}

    def ocpp_in(self, action: str) -> None:
        child = self._in_children.get(action)
        if child is None:
            child = self._in_children[action] = self._messages_in.labels(action=action)
        child.inc()

    def handler_seconds(self, action: str, seconds: float) -> None:
        child = self._latency_children.get(action)
        if child is None:
            child = self._latency_children[action] = self._handler_seconds.labels(action=action)
        child.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
