"""Northbound events: what the rest of the platform learns over MQTT.

Every event is an :class:`Event` envelope (pydantic, so ``docs/events/``
holds a JSON schema per type) with a unique ``id`` for de-duplication:
delivery is at least once. Events are written to the ``outbox`` table in the
same database transaction as the data they describe (transactional outbox),
and published in order by :mod:`gateway.mqtt`.

Topics (``pilegate/v1`` is the prefix, configurable):

* ``pilegate/v1/piles/{pileId}/events/{type}`` for every event;
* ``pilegate/v1/piles/{pileId}/presence`` (retained) for the current presence.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel, Field

EventType = Literal[
    "pile.connected",
    "pile.disconnected",
    "pile.boot",
    "pile.kind_mismatch",
    "gun.status",
    "meter.samples",
    "transaction.started",
    "transaction.stopped",
    "whitelist.sync",
    "firmware.transition",
]


class PileConnected(BaseModel):
    protocol: str
    connection_id: str | None = None
    detail: str | None = None


class PileDisconnected(BaseModel):
    reason: str = Field(
        description="closed_clean | closed_abnormal | ping_timeout | heartbeat_timeout | "
        "replaced | gateway_shutdown | bad_messages | node_lost | login_rejected"
    )
    detail: str | None = None
    connection_id: str | None = None


class PileBoot(BaseModel):
    status: str
    vendor: str | None = None
    model: str | None = None
    firmware_version: str | None = None


class KindMismatch(BaseModel):
    evidence: dict[str, Any]


class GunStatus(BaseModel):
    connector_id: int
    gun_id: str
    status: str
    error_code: str | None = None
    info: str | None = None
    vendor_error_code: str | None = None
    at: datetime


class MeterSample(BaseModel):
    at: datetime
    measurand: str
    phase: str = ""
    unit: str = ""
    context: str = ""
    location: str = ""
    value: str
    value_num: float | None = None


class MeterSamples(BaseModel):
    connector_id: int
    transaction_id: int | None
    samples: list[MeterSample]


class TransactionStarted(BaseModel):
    transaction_id: int
    connector_id: int
    id_tag: str
    auth_method: str
    offline: bool
    start_at: datetime
    meter_start: int


class TransactionStopped(BaseModel):
    transaction_id: int
    stop_at: datetime
    meter_stop: int
    energy_wh: int | None
    reason: str | None = None


class WhitelistSync(BaseModel):
    status: str
    held_version: int | None = None
    desired_version: int | None = None
    reason: str | None = None


class FirmwareTransition(BaseModel):
    task_id: int
    from_state: str
    to_state: str
    reason: str | None = None


PAYLOADS: dict[str, type[BaseModel]] = {
    "pile.connected": PileConnected,
    "pile.disconnected": PileDisconnected,
    "pile.boot": PileBoot,
    "pile.kind_mismatch": KindMismatch,
    "gun.status": GunStatus,
    "meter.samples": MeterSamples,
    "transaction.started": TransactionStarted,
    "transaction.stopped": TransactionStopped,
    "whitelist.sync": WhitelistSync,
    "firmware.transition": FirmwareTransition,
}


class Event(BaseModel):
    """The envelope of every event."""

    id: str = Field(description="unique event id (UUID) for de-duplication")
    type: EventType
    pile_id: str
    at: datetime = Field(description="when the gateway recorded it (UTC)")
    node_id: str
    data: dict[str, Any]


class Presence(BaseModel):
    """Retained on pilegate/v1/piles/{pileId}/presence."""

    pile_id: str
    online: bool
    reason: str
    at: datetime
    node_id: str | None


def event_topic(prefix: str, pile_id: str, type_: str) -> str:
    return f"{prefix}/piles/{pile_id}/events/{type_}"


def presence_topic(prefix: str, pile_id: str) -> str:
    return f"{prefix}/piles/{pile_id}/presence"


def new_event(type_: EventType, pile_id: str, at: datetime, node_id: str, data: BaseModel) -> Event:
    return Event(
        id=str(uuid.uuid4()),
        type=type_,
        pile_id=pile_id,
        at=at,
        node_id=node_id,
        data=data.model_dump(mode="json"),
    )


def dumps(model: BaseModel) -> str:
    return orjson.dumps(model.model_dump(mode="json")).decode()


def json_schemas() -> dict[str, dict[str, Any]]:
    """A JSON schema per event type (envelope with its data), and presence."""
    out: dict[str, dict[str, Any]] = {}
    for name, payload in PAYLOADS.items():
        schema = Event.model_json_schema()
        schema["title"] = f"pilegate event {name}"
        schema["properties"]["type"] = {"const": name}
        schema["properties"]["data"] = payload.model_json_schema()
        out[name] = schema
    out["presence"] = Presence.model_json_schema()
    return out
