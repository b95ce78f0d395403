"""Handlers of the OCPP 1.6 messages a charge point sends (OCPP 1.6 §4).

Payloads arrive schema-validated (camelCase, as on the wire). Each handler
turns one into protocol-neutral writes and returns the response payload.
Only StartTransaction and StopTransaction wait for the database before
answering (the transaction id must be durable; a stopped transaction must
be on disk before the charger deletes it); everything else goes through
the write-behind queue.
"""

from __future__ import annotations

import json
import random
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog

from protocol.ocpp import ErrorCode, OcppError
from sessions.charging import (
    AuthStatus,
    TokenStatus,
    TokenType,
    TokenView,
    auth_method,
    authorize,
    started_offline,
)

from ..events import (
    KindMismatch,
    PileBoot,
    TransactionStarted,
    TransactionStopped,
)
from ..storage.meter import encode, measurands
from ..storage.repo import TokenRecord
from ..storage.writer import (
    ChargerMessageOp,
    GunStatusOp,
    KindEvidenceOp,
    MeterReadingOp,
    PileUpdateOp,
    WriteOp,
)

if TYPE_CHECKING:
    from .connection import OcppConnection

log = structlog.get_logger("pilegate.ocpp")

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]

# Measurands only a DC charger can report: an AC charger does not talk to
# the car's battery management system (IEC 61851 / ISO 15118 over PWM only).
DC_ONLY_MEASURANDS = frozenset({"SoC"})


def model_kind_evidence(
    model_kinds: Mapping[str, str], model: str, pile_kind: str
) -> dict[str, Any] | None:
    """Kind-mismatch evidence when the ``model_kinds`` table gives the
    reported model the other kind than the pile ID (BootNotification and
    CBP/1 Login alike), else None."""
    declared = model_kinds.get(model)
    if declared is None or declared == pile_kind:
        return None
    return {"source": "model_kinds", "model": model, "reported_kind": declared}


def parse_time(text: str, field: str = "timestamp") -> datetime:
    """An OCPP dateTime (RFC 3339). Naive times are taken as UTC, as most
    firmware that omits the offset means it.

    The schemas' date-time format lets through two things ``datetime``
    cannot read: a leap second (RFC 3339 §5.6 ``time-second`` 60), read as
    the last microsecond of its minute, and digits that are not ASCII
    (fastjsonschema's pattern uses ``\\d``), refused with
    PropertyConstraintViolation naming ``field`` (OCPP-J 1.6 §4.2.3) instead
    of an InternalError from the handler."""
    iso = text.replace("Z", "+00:00").replace("z", "+00:00")
    try:
        value = datetime.fromisoformat(iso)
    except ValueError:
        leap = _leap_second(iso)
        if leap is None:
            raise OcppError(
                ErrorCode.PropertyConstraintViolation,
                f"{field}: {text[:64]!r} is not an RFC 3339 date-time",
                {"field": field, "rule": "format", "value": text[:64]},
            ) from None
        value = leap
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _leap_second(iso: str) -> datetime | None:
    """``YYYY-MM-DDTHH:MM:60[.frac][offset]`` as ``HH:MM:59.999999``."""
    if not iso.isascii() or len(iso) < 19 or iso[16:19] != ":60":
        return None
    rest = iso[19:]
    if rest.startswith("."):
        rest = rest[1:].lstrip("0123456789")
    try:
        return datetime.fromisoformat(f"{iso[:16]}:59.999999{rest}")
    except ValueError:
        return None


_ISO_MS = "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ"


def iso(dt: datetime) -> str:
    """UTC, milliseconds, "Z": ``2026-12-05T08:00:00.123Z`` (what
    ``isoformat(timespec="milliseconds")`` gives, microseconds truncated).

    %-formatting the fields: isoformat took twice as long, and every
    Heartbeat's answer carries one (docs/benchmarks.md, "Storage text of a
    time")."""
    if dt.tzinfo is not UTC:
        dt = dt.astimezone(UTC)
    return _ISO_MS % (
        dt.year,
        dt.month,
        dt.day,
        dt.hour,
        dt.minute,
        dt.second,
        dt.microsecond // 1000,
    )


def token_view(rec: TokenRecord | None) -> TokenView | None:
    if rec is None:
        return None
    return TokenView(
        id_tag=rec.id_tag,
        type=TokenType(rec.type),
        status=TokenStatus(rec.status),
        expiry=rec.expiry,
        parent_id_tag=rec.parent_id_tag,
    )


def id_tag_info(status: AuthStatus, token: TokenView | None) -> dict[str, Any]:
    info: dict[str, Any] = {"status": status.value}
    if token is not None:
        if token.expiry is not None:
            info["expiryDate"] = iso(token.expiry)
        if token.parent_id_tag:
            info["parentIdTag"] = token.parent_id_tag
    return info


class OcppHandlers:
    """The handlers of one connection. Slotted, with the dispatch table at
    class level: 10,000 idle chargers should cost little memory."""

    __slots__ = ("conn", "s")

    def __init__(self, conn: OcppConnection) -> None:
        self.conn = conn
        self.s = conn.services

    def get(self, action: str) -> Handler | None:
        fn = HANDLERS.get(action)
        if fn is None:
            return None
        bound: Handler = fn.__get__(self)
        return bound

    # --- Core profile --------------------------------------------------------------
    async def boot_notification(self, p: dict[str, Any]) -> dict[str, Any]:
        s = self.s
        settings = s.settings
        now = s.clock()
        if not s.boot_limiter.allow():
            retry = random.randint(settings.boot_retry_min, settings.boot_retry_max)
            s.metrics.boots.labels(status="Pending").inc()
            log.info("boot deferred (rate limit)", retry_in=retry)
            return {"status": "Pending", "currentTime": iso(now), "interval": retry}
        model = p["chargePointModel"]
        self.conn.model = model
        self.conn.lenient = model in settings.lenient_models
        values: dict[str, Any] = {
            "vendor": p["chargePointVendor"],
            "model": model,
            "charge_point_serial": p.get("chargePointSerialNumber"),
            "charge_box_serial": p.get("chargeBoxSerialNumber"),
            "firmware_version": p.get("firmwareVersion"),
            "iccid": p.get("iccid"),
            "imsi": p.get("imsi"),
            "meter_type": p.get("meterType"),
            "meter_serial": p.get("meterSerialNumber"),
            "last_boot": now,
            "protocol": self.conn.protocol,
        }
        status = "Accepted"
        evidence = model_kind_evidence(settings.model_kinds, model, self.conn.kind)
        if evidence is not None and settings.kind_policy == "reject":
            status = "Rejected"
        # Boot data is stored even for a Rejected boot: operators need to see
        # what the charger claimed to be.
        await s.writer.put(
            PileUpdateOp(self.conn.pile_id, tuple(values.items()), count_boot=True),
            *s.events.op(
                "pile.boot",
                self.conn.pile_id,
                now,
                PileBoot(
                    status=status,
                    vendor=values["vendor"],
                    model=model,
                    firmware_version=values["firmware_version"],
                ),
            ),
        )
        if evidence is not None:
            await self._flag_kind(evidence)
        self.conn.boot_rejected = status == "Rejected"
        if self.conn.conn_id in s.tracker:
            s.tracker.set_heartbeat_interval(self.conn.conn_id, float(settings.heartbeat_interval))
        s.observers.pile_booted(
            self.conn.pile_id, values["firmware_version"], model, status == "Accepted"
        )
        if status == "Accepted" and settings.kind_config_keys:
            s.spawn(self._probe_kind(), f"kind-probe-{self.conn.conn_id}")
        s.metrics.boots.labels(status=status).inc()
        log.info(
            "boot",
            status=status,
            vendor=values["vendor"],
            model=model,
            firmware=values["firmware_version"],
        )
        return {"status": status, "currentTime": iso(now), "interval": settings.heartbeat_interval}

    async def heartbeat(self, p: dict[str, Any]) -> dict[str, Any]:
        return self.fast_heartbeat(p, self.s.clock())

    # The fast_* handlers take the time the frame was received (the
    # connection read the clock once for it, for "last seen"): one clock
    # read per frame instead of two.
    def fast_heartbeat(self, p: dict[str, Any], now: datetime) -> dict[str, Any]:
        # "last seen" was already recorded for this frame by the receive loop.
        return {"currentTime": iso(now)}

    async def status_notification(self, p: dict[str, Any]) -> dict[str, Any]:
        op, events = self._status_ops(p, self.s.clock())
        self.s.observers.gun_status(self.conn.pile_id, op.connector_id, op.status)
        await self.s.writer.put(op, *events)
        return {}

    def fast_status_notification(self, p: dict[str, Any], now: datetime) -> dict[str, Any] | None:
        """``status_notification`` without waiting: None (and nothing done)
        when the write queue is full; the caller then takes the awaiting path."""
        op, events = self._status_ops(p, now)
        if not self.s.writer.try_put(op, *events):
            return None
        self.s.observers.gun_status(self.conn.pile_id, op.connector_id, op.status)
        return {}

    def _status_ops(
        self, p: dict[str, Any], now: datetime
    ) -> tuple[GunStatusOp, tuple[WriteOp, ...]]:
        connector = int(p["connectorId"])
        if connector > 999:
            raise OcppError(
                ErrorCode.PropertyConstraintViolation,
                f"connectorId {connector} does not fit a 3-digit gun number",
                {"field": "connectorId"},
            )
        at = parse_time(p["timestamp"]) if p.get("timestamp") else now
        pile_id = self.conn.pile_id
        # Positional, in GunStatusOp's field order (as _readings does).
        op = GunStatusOp(
            pile_id,
            connector,  # connector_id
            f"{pile_id}{connector:03d}",  # gun_id
            p["status"],
            p.get("errorCode"),
            p.get("info"),
            p.get("vendorId"),
            p.get("vendorErrorCode"),
            at,
            now,  # received_at
        )
        return op, self.s.events.gun_status_op(op, now)

    async def _token(self, id_tag: str) -> TokenView | None:
        return token_view(await self.s.store.get_token(id_tag))

    async def authorize(self, p: dict[str, Any]) -> dict[str, Any]:
        token = await self._token(p["idTag"])
        status = authorize(token, self.s.clock())
        log.info("authorize", id_tag=p["idTag"], status=status.value)
        return {"idTagInfo": id_tag_info(status, token)}

    async def start_transaction(self, p: dict[str, Any]) -> dict[str, Any]:
        s = self.s
        now = s.clock()
        id_tag = p["idTag"]
        start_at = parse_time(p["timestamp"])
        token = await self._token(id_tag)
        status = authorize(token, now)
        offline = started_offline(
            start_at, self.conn.connected_at, timedelta(seconds=s.settings.clock_skew_tolerance)
        )
        remote = s.remote_starts.take(self.conn.pile_id, id_tag)
        if status is AuthStatus.ACCEPTED and not offline:
            busy = await s.store.active_transaction_of_token(id_tag)
            if busy is not None and busy.pile_id != self.conn.pile_id:
                status = AuthStatus.CONCURRENT_TX
        tx, created = await s.writer.call(
            lambda session: s.store.start_transaction_in(
                session,
                pile_id=self.conn.pile_id,
                connector_id=int(p["connectorId"]),
                protocol=self.conn.protocol,
                id_tag=id_tag,
                auth_method=auth_method(token, remote).value,
                offline=offline,
                auth_status=status.value,
                start_at=start_at,
                meter_start=int(p["meterStart"]),
                reservation_id=p.get("reservationId"),
                now=now,
                events=(
                    (
                        lambda t: s.events.rows(
                            "transaction.started",
                            t.pile_id,
                            now,
                            TransactionStarted(
                                transaction_id=t.id,
                                connector_id=t.connector_id,
                                id_tag=t.id_tag,
                                auth_method=t.auth_method,
                                offline=t.offline,
                                start_at=t.start_at,
                                meter_start=t.meter_start,
                            ),
                        )
                    )
                    if s.events.enabled
                    else None
                ),
                node_id=s.node_id,
            )
        )
        if not created:
            # A retransmission: answer with the transaction already stored.
            status = AuthStatus(tx.auth_status)
        s.metrics.transactions.labels(event="started" if created else "duplicate").inc()
        log.info(
            "transaction started",
            transaction_id=tx.id,
            connector=tx.connector_id,
            id_tag=id_tag,
            method=tx.auth_method,
            offline=tx.offline,
            duplicate=not created,
        )
        return {"transactionId": tx.id, "idTagInfo": id_tag_info(status, token)}

    def _readings(
        self,
        meter_values: list[dict[str, Any]],
        connector: int,
        tx_key: int,
        now: datetime,
        field: str = "meterValue",
    ) -> list[MeterReadingOp]:
        """One op per §7.31 MeterValue element: its sampledValue list is
        stored as sent (gateway/storage/meter.py). Elements of one message
        with the same timestamp are stored as one, their lists joined in
        the order sent: they share a receipt time, so only their order can
        say which value came first (first sent wins, as in ``merge``)."""
        lists: dict[datetime, list[dict[str, Any]]] = {}
        for i, mv in enumerate(meter_values):
            at = parse_time(mv["timestamp"], f"{field}[{i}].timestamp")
            earlier = lists.get(at)
            sampled: list[dict[str, Any]] = mv["sampledValue"]
            lists[at] = sampled if earlier is None else [*earlier, *sampled]
        pile_id = self.conn.pile_id
        out: list[MeterReadingOp] = []
        for at, sampled in lists.items():
            text, digest = encode(sampled)
            # Positional, in MeterReadingOp's field order.
            out.append(MeterReadingOp(pile_id, tx_key, connector, at, digest, text, now))
        return out

    async def stop_transaction(self, p: dict[str, Any]) -> dict[str, Any]:
        s = self.s
        now = s.clock()
        tx_id = int(p["transactionId"])
        stop_at = parse_time(p["timestamp"])
        id_tag = p.get("idTag")
        known = await s.store.get_transaction(tx_id)
        known_here = known is not None and known.pile_id == self.conn.pile_id
        connector = known.connector_id if known is not None and known_here else 0
        readings = self._readings(
            p.get("transactionData") or [],
            connector,
            tx_id if known_here else 0,
            now,
            "transactionData",
        )
        rec = await s.writer.call(
            lambda session: s.store.stop_transaction_in(
                session,
                pile_id=self.conn.pile_id,
                transaction_id=tx_id,
                stop_at=stop_at,
                meter_stop=int(p["meterStop"]),
                reason=p.get("reason", "Local"),
                stop_id_tag=id_tag,
                stop_offline=started_offline(
                    stop_at,
                    self.conn.connected_at,
                    timedelta(seconds=s.settings.clock_skew_tolerance),
                ),
                readings=[x._asdict() for x in readings],
                now=now,
                raw_payload=json.dumps(p, separators=(",", ":")),
                events=(
                    (
                        lambda t: s.events.rows(
                            "transaction.stopped",
                            t.pile_id,
                            now,
                            TransactionStopped(
                                transaction_id=t.id,
                                stop_at=stop_at,
                                meter_stop=int(p["meterStop"]),
                                energy_wh=t.energy_wh,
                                reason=t.stop_reason,
                            ),
                        )
                    )
                    if s.events.enabled
                    else None
                ),
                node_id=s.node_id,
            )
        )
        if rec is None:
            s.metrics.transactions.labels(event="orphan_stop").inc()
            log.warning("stop for unknown transaction recorded as orphan", transaction_id=tx_id)
        else:
            s.metrics.transactions.labels(event="stopped").inc()
            log.info(
                "transaction stopped",
                transaction_id=tx_id,
                energy_wh=rec.energy_wh,
                reason=rec.stop_reason,
            )
        reply: dict[str, Any] = {}
        if id_tag is not None:
            token = await self._token(id_tag)
            reply["idTagInfo"] = id_tag_info(authorize(token, now), token)
        return reply

    async def meter_values(self, p: dict[str, Any]) -> dict[str, Any]:
        connector, readings, events = self._meter_ops(p, self.s.clock())
        if not self.conn.soc_flagged and self.conn.kind == "AC":
            dc_only = sorted(_measurands(p) & DC_ONLY_MEASURANDS)
            if dc_only:
                self.conn.soc_flagged = True
                await self._flag_kind(
                    {"source": "meter_values", "measurands": dc_only, "connector": connector}
                )
        await self.s.writer.put(*readings, *events)
        return {}

    def fast_meter_values(self, p: dict[str, Any], now: datetime) -> dict[str, Any] | None:
        """``meter_values`` without waiting: None (and nothing done) when the
        write queue is full or an AC pile reports DC-only measurands for the
        first time (the kind evidence is recorded on the awaiting path)."""
        conn = self.conn
        if not conn.soc_flagged and conn.kind == "AC" and _reports_dc_only(p):
            return None
        _, readings, events = self._meter_ops(p, now)
        if not self.s.writer.try_put(*readings, *events):
            return None
        return {}

    def _meter_ops(
        self, p: dict[str, Any], now: datetime
    ) -> tuple[int, list[MeterReadingOp], tuple[WriteOp, ...]]:
        connector = int(p["connectorId"])
        tx_key = int(p.get("transactionId") or 0)
        readings = self._readings(p["meterValue"], connector, tx_key, now)
        events = self.s.events.meter_samples_op(self.conn.pile_id, now, connector, tx_key, readings)
        return connector, readings, events

    async def _probe_kind(self) -> None:
        """Read the configured keys (GetConfiguration) whose values reveal AC
        or DC, and flag a contradiction with the pile ID's kind."""
        from ..registry import CommandError

        table = self.s.settings.kind_config_keys
        try:
            result = await self.conn.call(
                "GetConfiguration", {"key": sorted(table)}, self.s.settings.command_timeout
            )
        except CommandError as exc:
            log.info("kind probe not answered", error=str(exc))
            return
        for entry in result.response.get("configurationKey") or []:
            key, value = entry.get("key"), entry.get("value")
            reported = table.get(key, {}).get(value) if isinstance(value, str) else None
            if reported is not None and reported != self.conn.kind:
                await self._flag_kind(
                    {
                        "source": "get_configuration",
                        "key": key,
                        "value": value,
                        "reported_kind": reported,
                    }
                )
                return

    async def _flag_kind(self, evidence: dict[str, Any]) -> None:
        s = self.s
        evidence = {**evidence, "pile_id_kind": self.conn.kind, "at": iso(s.clock())}
        s.metrics.kind_mismatches.labels(source=evidence["source"]).inc()
        log.warning("kind mismatch", **evidence, policy=s.settings.kind_policy)
        await s.writer.put(
            KindEvidenceOp(self.conn.pile_id, json.dumps(evidence)),
            *s.events.op(
                "pile.kind_mismatch", self.conn.pile_id, s.clock(), KindMismatch(evidence=evidence)
            ),
        )

    async def data_transfer(self, p: dict[str, Any]) -> dict[str, Any]:
        vendor = p["vendorId"]
        data = p.get("data")
        await self.s.writer.put(
            ChargerMessageOp(
                pile_id=self.conn.pile_id,
                kind="DataTransfer",
                vendor_id=vendor,
                message_id=p.get("messageId"),
                status=None,
                data=data if isinstance(data, str) or data is None else json.dumps(data),
                received_at=self.s.clock(),
            )
        )
        if vendor not in self.s.settings.data_transfer_vendors:
            return {"status": "UnknownVendorId"}
        return {"status": "Accepted"}

    async def _status_message(self, kind: str, status: str) -> dict[str, Any]:
        await self.s.writer.put(
            ChargerMessageOp(
                pile_id=self.conn.pile_id,
                kind=kind,
                vendor_id=None,
                message_id=None,
                status=status,
                data=None,
                received_at=self.s.clock(),
            )
        )
        return {}

    async def firmware_status(self, p: dict[str, Any]) -> dict[str, Any]:
        self.s.observers.firmware_status(self.conn.pile_id, p["status"], self.conn.protocol)
        return await self._status_message("FirmwareStatusNotification", p["status"])

    async def diagnostics_status(self, p: dict[str, Any]) -> dict[str, Any]:
        return await self._status_message("DiagnosticsStatusNotification", p["status"])


# The actions a connection may answer inside websockets' data_received
# callback, without a task switch (OcppConnection._fast): synchronous
# variants that return None, having done nothing, to decline.
FAST_HANDLERS: dict[str, Callable[..., dict[str, Any] | None]] = {
    "Heartbeat": OcppHandlers.fast_heartbeat,
    "StatusNotification": OcppHandlers.fast_status_notification,
    "MeterValues": OcppHandlers.fast_meter_values,
}

HANDLERS: dict[str, Callable[..., Awaitable[dict[str, Any]]]] = {
    "BootNotification": OcppHandlers.boot_notification,
    "Heartbeat": OcppHandlers.heartbeat,
    "StatusNotification": OcppHandlers.status_notification,
    "Authorize": OcppHandlers.authorize,
    "StartTransaction": OcppHandlers.start_transaction,
    "StopTransaction": OcppHandlers.stop_transaction,
    "MeterValues": OcppHandlers.meter_values,
    "DataTransfer": OcppHandlers.data_transfer,
    "FirmwareStatusNotification": OcppHandlers.firmware_status,
    "DiagnosticsStatusNotification": OcppHandlers.diagnostics_status,
}


def _reports_dc_only(p: dict[str, Any]) -> bool:
    """Whether a MeterValues request names a DC-only measurand: what
    ``_measurands(p) & DC_ONLY_MEASURANDS`` says, without building the set
    for every MeterValues of an AC pile (the default measurand is not
    DC-only)."""
    for mv in p["meterValue"]:
        for sv in mv["sampledValue"]:
            if sv.get("measurand") in DC_ONLY_MEASURANDS:
                return True
    return False


def _measurands(p: dict[str, Any]) -> set[str]:
    """The measurands of a MeterValues request, defaults included."""
    out: set[str] = set()
    for mv in p["meterValue"]:
        out |= measurands(mv["sampledValue"])
    return out
