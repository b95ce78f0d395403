"""The per-message metrics (``pilegate_messages_in``, ``pilegate_handler_seconds``)
are plain numbers turned into metric families at scrape time
(gateway/metrics.py, MessageStats). Their exposition must be what
prometheus_client's own Counter and Histogram print for the same
observations: same names, labels, bucket bounds, counts, sums, and a
``_created`` sample per series."""

from __future__ import annotations

import re
import time

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from gateway.metrics import HANDLER_BUCKETS, MessageStats, Metrics

ACTIONS = ["Heartbeat", "MeterValues", "StatusNotification", "cbp1:RealTimeData", 'q"u\\o\nte']
# Every bound itself (inclusive upper bounds), just around it, 0 and beyond the last.
EDGES = sorted(
    {0.0, 2.0, 1e-9}
    | set(HANDLER_BUCKETS)
    | {b * (1 + 1e-9) for b in HANDLER_BUCKETS}
    | {b * (1 - 1e-9) for b in HANDLER_BUCKETS}
)
observation = st.tuples(
    st.sampled_from(ACTIONS),
    st.one_of(st.sampled_from(EDGES), st.floats(min_value=0, max_value=3, allow_nan=False)),
    st.booleans(),  # also counted as received
)
CREATED = re.compile(r"^(\S+_created\{[^}]*\}) \S+$")


def _reference(observations: list[tuple[str, float, bool]]) -> str:
    registry = CollectorRegistry(auto_describe=True)
    received = Counter(
        "pilegate_messages_in",
        "Messages received from chargers, by action",
        ["action"],
        registry=registry,
    )
    handled = Histogram(
        "pilegate_handler_seconds",
        "Time from receiving a CALL to sending its answer, by action",
        ["action"],
        buckets=HANDLER_BUCKETS,
        registry=registry,
    )
    for action, seconds, counted in observations:
        if counted:
            received.labels(action=action).inc()
        handled.labels(action=action).observe(seconds)
    return generate_latest(registry).decode()


def _ours(observations: list[tuple[str, float, bool]]) -> str:
    registry = CollectorRegistry(auto_describe=True)
    stats = MessageStats()
    registry.register(stats)
    for action, seconds, counted in observations:
        if counted:
            stats.received(action)
        stats.handled(action, seconds)
    return generate_latest(registry).decode()


def _comparable(text: str) -> list[str]:
    """The exposition's lines, with the ``_created`` timestamps' values cut
    (the two registries were created at different instants), sorted within
    each metric (a Counter's series come out in first-seen order too, but
    the order of series is not part of the format)."""
    lines = [CREATED.sub(r"\1 <created>", line) for line in text.splitlines()]
    return sorted(lines)


def _created(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if "_created{" in line:
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(observation, max_size=60))
def test_the_exposition_is_prometheus_clients_own(
    observations: list[tuple[str, float, bool]],
) -> None:
    assert _comparable(_ours(observations)) == _comparable(_reference(observations))


def test_buckets_are_inclusive_upper_bounds_and_sums_add_up() -> None:
    observations = [("Heartbeat", b, True) for b in HANDLER_BUCKETS] + [("Heartbeat", 5.0, True)]
    before = time.time()
    text = _ours(observations)
    after = time.time()
    assert 'pilegate_handler_seconds_bucket{action="Heartbeat",le="0.0005"} 1.0' in text
    assert 'pilegate_handler_seconds_bucket{action="Heartbeat",le="1.0"} 10.0' in text
    assert 'pilegate_handler_seconds_bucket{action="Heartbeat",le="+Inf"} 11.0' in text
    assert 'pilegate_handler_seconds_count{action="Heartbeat"} 11.0' in text
    total = sum(HANDLER_BUCKETS) + 5.0
    line = next(x for x in text.splitlines() if x.startswith("pilegate_handler_seconds_sum"))
    assert abs(float(line.rsplit(" ", 1)[1]) - total) < 1e-9
    assert 'pilegate_messages_in_total{action="Heartbeat"} 11.0' in text
    # A series' _created is when its first observation came.
    created = _created(text)
    assert set(created) == {
        'pilegate_messages_in_created{action="Heartbeat"}',
        'pilegate_handler_seconds_created{action="Heartbeat"}',
    }
    assert all(before <= v <= after for v in created.values()), created


def test_the_gateway_registry_exposes_them_with_the_other_metrics() -> None:
    metrics = Metrics()
    metrics.ocpp_in("Heartbeat")
    metrics.handler_seconds("Heartbeat", 0.003)
    metrics.ocpp_out.labels(action="Reset").inc()
    text = metrics.render().decode()
    assert "# TYPE pilegate_messages_in_total counter" in text
    assert "# TYPE pilegate_handler_seconds histogram" in text
    assert 'pilegate_messages_in_total{action="Heartbeat"} 1.0' in text
    assert 'pilegate_handler_seconds_bucket{action="Heartbeat",le="0.0025"} 0.0' in text
    assert 'pilegate_handler_seconds_bucket{action="Heartbeat",le="0.005"} 1.0' in text
    assert 'pilegate_messages_out_total{action="Reset"} 1.0' in text
    # The write queue's depth is read when scraped.
    assert "pilegate_storage_queue_depth 0.0" in text
