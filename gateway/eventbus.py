"""Turns domain happenings into outbox rows (see gateway.events).

Disabled (every method returns nothing) when no MQTT broker is configured,
so a single gateway on SQLite does not grow an outbox nobody drains.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from pydantic import BaseModel

from .events import (
    EventType,
    GunStatus,
    MeterSample,
    MeterSamples,
    PileConnected,
    PileDisconnected,
    Presence,
    dumps,
    event_topic,
    new_event,
    presence_topic,
)
from .storage.meter import samples_of
from .storage.writer import GunStatusOp, MeterReadingOp, OutboxOp, PresenceOp, WriteOp


class EventSink:
    def __init__(self, node_id: str, prefix: str, enabled: bool) -> None:
        self.node_id = node_id
        self.prefix = prefix
        self.enabled = enabled

    def op(
        self,
        type_: EventType,
        pile_id: str,
        at: datetime,
        data: BaseModel,
        *,
        presence: Presence | None = None,
    ) -> tuple[OutboxOp, ...]:
        """The outbox operation for one event (empty when events are off),
        to be enqueued in the same ``WriteBehind.put`` as its data."""
        if not self.enabled:
            return ()
        return (OutboxOp(self.node_id, pile_id, self.rows(type_, pile_id, at, data, presence), at),)

    def gun_status_op(self, op: GunStatusOp, at: datetime) -> tuple[OutboxOp, ...]:
        """The ``gun.status`` event of a stored gun status (OCPP
        StatusNotification, CBP/1 0x13); nothing is built when events are off."""
        if not self.enabled:
            return ()
        payload = GunStatus(
            connector_id=op.connector_id,
            gun_id=op.gun_id,
            status=op.status,
            error_code=op.error_code,
            info=op.info,
            vendor_error_code=op.vendor_error_code,
            at=op.at,
        )
        return self.op("gun.status", op.pile_id, at, payload)

    def meter_samples_op(
        self,
        pile_id: str,
        at: datetime,
        connector_id: int,
        transaction_key: int,
        readings: Sequence[MeterReadingOp],
    ) -> tuple[OutboxOp, ...]:
        """The ``meter.samples`` event of stored readings (OCPP MeterValues,
        CBP/1 0x13): their sampled values with the §7.43 defaults, in the
        order sent. Nothing is built when events are off: building the
        payload was 3 % of the mixed load's profile."""
        if not self.enabled or not readings:
            return ()
        payload = MeterSamples(
            connector_id=connector_id,
            transaction_id=transaction_key or None,
            samples=[
                MeterSample(
                    at=r.at,
                    measurand=x.measurand,
                    phase=x.phase,
                    unit=x.unit,
                    context=x.context,
                    location=x.location,
                    value=x.value,
                    value_num=x.value_num,
                )
                for r in readings
                for x in samples_of(r.samples)
            ],
        )
        return self.op("meter.samples", pile_id, at, payload)

    def rows(
        self,
        type_: EventType,
        pile_id: str,
        at: datetime,
        data: BaseModel,
        presence: Presence | None = None,
    ) -> tuple[tuple[str, str, str, bool], ...]:
        event = new_event(type_, pile_id, at, self.node_id, data)
        rows = [(event.id, event_topic(self.prefix, pile_id, type_), dumps(event), False)]
        if presence is not None:
            rows.append(
                (str(uuid.uuid4()), presence_topic(self.prefix, pile_id), dumps(presence), True)
            )
        return tuple(rows)

    def presence_ops(
        self,
        at: datetime,
        pile_id: str,
        conn_id: str,
        protocol: str,
        online: bool,
        reason: str,
        detail: str | None,
    ) -> tuple[WriteOp, ...]:
        """A connection's presence change with its events (``pile.connected``
        / ``pile.disconnected`` and the retained presence), for every
        protocol adapter, to enqueue together."""
        op = PresenceOp(
            pile_id=pile_id,
            at=at,
            online=online,
            reason=reason,
            detail=detail,
            connection_id=conn_id,
            node_id=self.node_id,
            protocol=protocol,
        )
        data: BaseModel = (
            PileConnected(protocol=protocol, connection_id=conn_id, detail=detail)
            if online
            else PileDisconnected(reason=reason, detail=detail, connection_id=conn_id)
        )
        presence = Presence(
            pile_id=pile_id,
            online=online,
            reason=reason,
            at=at,
            node_id=self.node_id if online else None,
        )
        events = self.op(
            "pile.connected" if online else "pile.disconnected",
            pile_id,
            at,
            data,
            presence=presence,
        )
        return (op, *events)
