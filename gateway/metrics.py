"""Prometheus metrics of one gateway process.

Each Gateway owns its own CollectorRegistry (not the global default) so tests
can run several gateways in one interpreter without duplicate-metric errors.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

HANDLER_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class MessageStats(Collector):
    """``pilegate_messages_in`` (a counter) and ``pilegate_handler_seconds``
    (a histogram), both by action, for every message a charger sends.

    prometheus_client's ``Counter.inc`` and ``Histogram.observe`` take a lock
    and go through a value object per call: 2-3 % of the gateway's CPU under
    the bench's mixed load, paid twice per message (docs/benchmarks.md,
    "Prometheus counters at scrape time"). Here the event loop, the only
    writer, adds to plain ints and floats, and ``collect`` turns them into
    the same metric families at scrape time: the same names, labels,
    buckets and ``_created`` samples as the Counter and Histogram they
    replace (tests/test_metrics.py compares the two expositions).
    """

    def __init__(self, buckets: tuple[float, ...] = HANDLER_BUCKETS) -> None:
        self._bounds = tuple(sorted(buckets))
        self._le = [*(floatToGoString(b) for b in self._bounds), "+Inf"]  # type: ignore[no-untyped-call]
        self._in: dict[str, int] = {}
        self._in_created: dict[str, float] = {}
        # per action: a count per bucket (the last one is +Inf), then the sum
        self._hist: dict[str, list[float]] = {}
        self._hist_created: dict[str, float] = {}

    def received(self, action: str) -> None:
        counts = self._in
        if action in counts:
            counts[action] += 1
        else:
            counts[action] = 1
            self._in_created[action] = time.time()

    def handled(self, action: str, seconds: float) -> None:
        h = self._hist.get(action)
        if h is None:
            h = self._hist[action] = [0.0] * (len(self._bounds) + 2)
            self._hist_created[action] = time.time()
        # Prometheus buckets are upper bounds, inclusive: the first bound
        # >= seconds (bisect_left), +Inf past the last one.
        h[bisect_left(self._bounds, seconds)] += 1
        h[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        counter = CounterMetricFamily(
            "pilegate_messages_in", "Messages received from chargers, by action", labels=["action"]
        )
        for action, n in list(self._in.items()):
            counter.add_metric([action], n, created=self._in_created[action])
        yield counter
        hist = HistogramMetricFamily(
            "pilegate_handler_seconds",
            "Time from receiving a CALL to sending its answer, by action",
            labels=["action"],
        )
        for action, h in list(self._hist.items()):
            cumulative = 0.0
            buckets = []
            for le, count in zip(self._le, h[:-1], strict=True):
                cumulative += count
                buckets.append((le, cumulative))
            hist.add_metric([action], buckets, h[-1])
            hist.samples.append(
                Sample(
                    "pilegate_handler_seconds_created",
                    {"action": action},
                    self._hist_created[action],
                )
            )
        yield hist

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily("pilegate_messages_in", "", labels=["action"])
        yield HistogramMetricFamily("pilegate_handler_seconds", "", labels=["action"])


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
        self.storage_refused_ops = Counter(
            "pilegate_storage_refused_ops",
            "Queued write operations the database refused (a constraint, a value it "
            "cannot hold); logged in full and dropped so that the queue goes on",
            ["kind"],
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
        self.ocpp_out = Counter(
            "pilegate_messages_out", "Calls sent to chargers, by action", ["action"], registry=r
        )
        self.ocpp_errors_sent = Counter(
            "pilegate_callerrors_sent",
            "CALLERRORs sent to chargers, by error code",
            ["code"],
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
        # Counted per message: kept as plain numbers (MessageStats above),
        # registered as a collector.
        self.messages = MessageStats()
        r.register(self.messages)
        self.ocpp_in = self.messages.received
        self.handler_seconds = self.messages.handled

    def render(self) -> bytes:
        return generate_latest(self.registry)
