"""The messages a cloud-board charger sends, turned into the domain model
the OCPP adapter writes too (one model for both protocols).

* 0x03 heartbeat → 0x04 ack ("last seen" is recorded for every frame).
* 0x13 real-time data → gun status (OCPP names) and meter samples; the first
  0x13 that proves a session the gateway authorized opens its transaction.
* 0x31 authorization → the token store's verdict, a SERIAL when accepted
  (nothing is stored until the charger reports the session).
* 0x3B transaction record → the transaction, durable and idempotent on
  SERIAL, then 0x40.
* 0x95 firmware status → the firmware engine, a stored message, 0x96.

Replies to the gateway's own requests (0x33, 0x35, 0x43, 0x47, 0x55, 0x91,
0x93) are matched in the connection; one that matches nothing ends here and
is logged.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog

from protocol.cloudboard import (
    AuthMethod,
    AuthRequest,
    AuthResult,
    AuthStatus,
    FirmwareStatus,
    FirmwareStatusAck,
    Heartbeat,
    HeartbeatAck,
    Kind,
    Login,
    Message,
    PileState,
    RealtimeData,
    TransactionConfirm,
    TransactionConfirmResult,
    TransactionRecord,
)
from sessions.charging import AuthMethod as DomainAuthMethod
from sessions.charging import AuthStatus as DomainAuthStatus
from sessions.charging import authorize, started_offline

from ..events import (
    KindMismatch,
    PileBoot,
    TransactionStarted,
    TransactionStopped,
)
from ..ocpp.handlers import iso, token_view
from ..storage.meter import encode
from ..storage.repo import EventRows
from ..storage.writer import (
    ChargerMessageOp,
    GunStatusOp,
    KindEvidenceOp,
    MeterReadingOp,
    PileUpdateOp,
    WriteOp,
)
from .common import (
    AUTH_METHOD,
    AUTH_RESULT,
    GUN_STATUS,
    SESSION_STATUSES,
    STOP_REASON,
    PendingSession,
    from_local,
)
from .store import (
    attach_samples_in,
    conflicting_start_in,
    correct_start_in,
    transaction_by_external_id,
)

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from .connection import CbpConnection

log = structlog.get_logger("pilegate.cbp")

_TX_KEYS_MAX = 64  # SERIAL → transaction id entries cached per connection


class CbpHandlers:
    """The domain side of one connection."""

    __slots__ = ("_guns", "_pile_state", "_soc_flagged", "_tx_keys", "conn", "s")

    def __init__(self, conn: CbpConnection) -> None:
        self.conn = conn
        self.s = conn.services
        self._guns: dict[int, tuple[str, int]] = {}  # gun → (status, fault code) last stored
        self._tx_keys: dict[str, int] = {}  # SERIAL → transaction id (0: none known)
        self._soc_flagged = False
        self._pile_state = PileState.NORMAL

    def _utc(self, local: datetime) -> datetime:
        return from_local(local, self.conn.server.utc_offset)

    async def dispatch(self, seq_bytes: bytes, message: Message, *, answered: bool = False) -> None:
        if isinstance(message, Heartbeat):
            self.heartbeat(seq_bytes, message)
        elif isinstance(message, RealtimeData):
            await self.realtime(message, triggered=answered)
        elif isinstance(message, AuthRequest):
            await self.authorize(seq_bytes, message)
        elif isinstance(message, TransactionRecord):
            await self.record(seq_bytes, message)
        elif isinstance(message, FirmwareStatus):
            await self.firmware_status(seq_bytes, message)
        elif isinstance(message, Login):
            await self.conn.server.relogin(self.conn, seq_bytes, message)
        else:
            # A reply (0x33, 0x35, 0x43, 0x47, 0x55, 0x91, 0x93) whose SEQ and
            # TYPE match no request in flight: late (after its timeout) or stray.
            log.warning(
                "reply to no outstanding request", type=type(message).__name__, seq=seq_bytes.hex()
            )

    # --- login: boot data --------------------------------------------------------------------
    def boot_ops(self, login: Login, accepted: bool) -> tuple[WriteOp, ...]:
        """The login's boot data, like a BootNotification's (stored for a
        rejected login too, once the charger is authenticated: operators
        need to see what it claimed to be)."""
        s = self.s
        now = s.clock()
        pile_id = self.conn.pile_id
        values: dict[str, Any] = {
            "model": login.model or None,
            "firmware_version": login.firmware_version or None,
            "iccid": login.iccid,
            "last_boot": now,
            "protocol": self.conn.protocol,
        }
        details = {
            "kind": Kind(login.kind).name,
            "gun_count": login.gun_count,
            "protocol_version": login.protocol_version,
            "network": login.network.name.lower(),
            "display": login.display.name.lower(),
            "iccid": login.iccid,
        }
        return (
            PileUpdateOp(pile_id, tuple(values.items()), count_boot=True),
            ChargerMessageOp(
                pile_id=pile_id,
                kind="Login",
                vendor_id=None,
                message_id=None,
                status="Accepted" if accepted else "Rejected",
                data=json.dumps(details, separators=(",", ":")),
                received_at=now,
            ),
            *s.events.op(
                "pile.boot",
                pile_id,
                now,
                PileBoot(
                    status="Accepted" if accepted else "Rejected",
                    vendor=None,
                    model=values["model"],
                    firmware_version=values["firmware_version"],
                ),
            ),
        )

    async def flag_kind(self, evidence: dict[str, Any]) -> None:
        """Record an AC/DC contradiction (evidence list + event), as OCPP does."""
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

    # --- 0x03 ---------------------------------------------------------------------------------
    def heartbeat(self, seq_bytes: bytes, m: Heartbeat) -> None:
        if m.pile_state is not self._pile_state:
            self._pile_state = m.pile_state
            log.info("pile state", state=m.pile_state.name.lower())
        self.conn.reply(seq_bytes, HeartbeatAck(self.conn.pile_id))

    # --- 0x13 ---------------------------------------------------------------------------------
    async def realtime(self, m: RealtimeData, *, triggered: bool = False) -> None:
        s = self.s
        conn = self.conn
        if m.pile != conn.pile_id:
            log.warning("real-time data of another pile ignored", pile=m.pile)
            return
        now = s.clock()
        at = self._utc(m.sample_time)
        gun = m.gun
        status = GUN_STATUS[m.status]
        ops: list[WriteOp] = []
        if self._guns.get(gun) != (status, m.fault_code):
            # Stored when it changes: 0x13 repeats the status every 15 s.
            self._guns[gun] = (status, m.fault_code)
            op = GunStatusOp(
                pile_id=conn.pile_id,
                connector_id=gun,
                gun_id=f"{conn.pile_id}{gun:03d}",
                status=status,
                error_code="NoError" if m.fault_code == 0 else "OtherError",
                info=None,
                vendor_id=None,
                vendor_error_code=str(m.fault_code) if m.fault_code else None,
                at=at,
                received_at=now,
            )
            s.observers.gun_status(conn.pile_id, gun, status)
            ops.append(op)
            ops.extend(s.events.gun_status_op(op, now))
        tx_key = await self._transaction_key(m, at, now)
        reading = self._reading(m, at, now, tx_key, "Trigger" if triggered else "Sample.Periodic")
        ops.append(reading)
        ops.extend(s.events.meter_samples_op(conn.pile_id, now, gun, tx_key, (reading,)))
        await s.writer.put(*ops)
        if m.soc is not None and conn.kind == "AC" and not self._soc_flagged:
            # CBP/1 §3 0x13: SoC is 0xFF (unknown) "always for AC".
            self._soc_flagged = True
            await self.flag_kind({"source": "realtime_soc", "soc": m.soc, "gun": gun})

    def _reading(
        self, m: RealtimeData, at: datetime, now: datetime, tx_key: int, context: str
    ) -> MeterReadingOp:
        """The 0x13 values as one OCPP §7.31 MeterValue element (its
        sampledValue list in OCPP names), stored like an OCPP pile's."""
        values: list[tuple[str, str, str, str]] = [
            ("Voltage", "V", f"{m.voltage_dv / 10:.1f}", "Outlet"),
            ("Current.Import", "A", f"{m.current_da / 10:.1f}", "Outlet"),
            ("Power.Active.Import", "W", str(m.power_w), "Outlet"),
            ("Energy.Active.Import.Register", "Wh", str(m.meter_wh), "Outlet"),
        ]
        if m.soc is not None:
            values.append(("SoC", "Percent", str(m.soc), "EV"))
        text, digest = encode(
            [
                {
                    "value": value,
                    "context": context,
                    "format": "Raw",
                    "measurand": measurand,
                    "location": location,
                    "unit": unit,
                }
                for measurand, unit, value, location in values
            ]
        )
        return MeterReadingOp(
            pile_id=self.conn.pile_id,
            transaction_key=tx_key,
            connector_id=m.gun,
            at=at,
            digest=digest,
            samples=text,
            received_at=now,
        )

    async def _transaction_key(self, m: RealtimeData, at: datetime, now: datetime) -> int:
        """The transaction id the sample belongs to (0: none), from its SERIAL.

        A SERIAL this node assigned (0x32 / 0x34) opens its transaction at the
        first 0x13 that shows the session running (charging, suspended or
        finishing): the ops API then lists it as active and can stop it
        (RemoteStopTransaction needs its id). Any other SERIAL is looked up;
        unknown ones wait for the 0x3B record, which also attaches the
        samples stored meanwhile.
        """
        serial = m.serial
        if serial is None:
            return 0
        key = self._tx_keys.get(serial)
        if key is not None:
            return key
        pending = self.conn.server.serials.get(serial)
        if pending is None or pending.pile_id != self.conn.pile_id:
            rec = await transaction_by_external_id(self.s.store, self.conn.pile_id, serial)
            return self._cache(serial, rec.id if rec is not None else 0)
        if m.status not in SESSION_STATUSES:
            return 0
        meter_start = max(0, m.meter_wh - m.session_energy_wh)
        tx_id = await self._open(serial, pending, m.gun, at, meter_start, now)
        return self._cache(serial, tx_id)

    def _cache(self, serial: str, tx_id: int) -> int:
        if len(self._tx_keys) >= _TX_KEYS_MAX:
            self._tx_keys.clear()
        self._tx_keys[serial] = tx_id
        return tx_id

    def _started_events(self, now: datetime) -> EventRows | None:
        s = self.s
        if not s.events.enabled:
            return None
        return lambda t: s.events.rows(
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

    async def _open(
        self,
        serial: str,
        pending: PendingSession,
        gun: int,
        start_at: datetime,
        meter_start: int,
        now: datetime,
    ) -> int:
        """Open the transaction of a session this node authorized (durable,
        idempotent on SERIAL); its start is provisional until the 0x3B record."""
        s = self.s
        pile_id = self.conn.pile_id

        async def open_in(session: AsyncSession) -> int:
            conflict = await conflicting_start_in(
                session,
                pile_id=pile_id,
                connector_id=gun,
                start_at=start_at,
                meter_start=meter_start,
                id_tag=pending.token,
                external_id=serial,
            )
            if conflict is not None:
                return 0
            tx, created = await s.store.start_transaction_in(
                session,
                pile_id=pile_id,
                connector_id=gun,
                protocol=self.conn.protocol,
                id_tag=pending.token,
                auth_method=pending.method.value,
                offline=False,
                auth_status=DomainAuthStatus.ACCEPTED.value,
                start_at=start_at,
                meter_start=meter_start,
                reservation_id=None,
                now=now,
                external_id=serial,
                events=self._started_events(now),
                node_id=s.node_id,
            )
            if created:
                s.metrics.transactions.labels(event="started").inc()
            return tx.id

        tx_id: int = await s.writer.call(open_in)
        if tx_id:
            log.info(
                "transaction opened from real-time data",
                transaction_id=tx_id,
                serial=serial,
                gun=gun,
                id_tag=pending.token,
                method=pending.method.value,
            )
        else:
            log.warning(
                "session not opened: its start collides with another transaction", serial=serial
            )
        return tx_id

    # --- 0x31 ---------------------------------------------------------------------------------
    async def authorize(self, seq_bytes: bytes, m: AuthRequest) -> None:
        s = self.s
        conn = self.conn
        now = s.clock()
        token = token_view(await s.store.get_token(m.token)) if m.token else None
        status = authorize(token, now)
        if status is DomainAuthStatus.ACCEPTED:
            busy = await s.store.active_transaction_of_token(m.token)
            if busy is not None and busy.pile_id != conn.pile_id:
                status = DomainAuthStatus.CONCURRENT_TX
        result = AUTH_RESULT[status]
        serial: str | None = None
        if result is AuthStatus.ACCEPTED:
            serial = conn.server.serials.new_serial(conn.pile_id, m.gun, conn.local_now())
            conn.server.serials.remember(
                serial,
                PendingSession(
                    pile_id=conn.pile_id,
                    gun=m.gun,
                    token=m.token,
                    method=AUTH_METHOD[m.method],
                    remote=False,
                    at=time.monotonic(),
                ),
            )
        conn.reply(seq_bytes, AuthResult(conn.pile_id, m.gun, m.token, result, serial))
        log.info(
            "authorize",
            id_tag=m.token,
            method=m.method.name.lower(),
            gun=m.gun,
            status=status.value,
            serial=serial,
        )

    # --- 0x3B ---------------------------------------------------------------------------------
    async def record(self, seq_bytes: bytes, m: TransactionRecord) -> None:
        s = self.s
        conn = self.conn
        if m.pile != conn.pile_id:
            # Can never be stored under this connection's pile: tell the
            # charger not to re-send it, and say why.
            s.metrics.transactions.labels(event="rejected").inc()
            log.warning(
                "transaction record rejected",
                why=f"it names pile {m.pile}, the connection is pile {conn.pile_id}",
                serial=m.serial,
            )
            conn.reply(seq_bytes, TransactionConfirm(m.serial, TransactionConfirmResult.REJECTED))
            return
        now = s.clock()
        start_at = self._utc(m.start_time)
        stop_at = self._utc(m.stop_time)
        pending = conn.server.serials.get(m.serial)
        remote = m.auth_method is AuthMethod.REMOTE or (pending is not None and pending.remote)
        method = DomainAuthMethod.REMOTE if remote else AUTH_METHOD[m.auth_method]
        if remote:
            s.remote_starts.take(conn.pile_id, m.token)
            auth_status = DomainAuthStatus.ACCEPTED
        elif pending is not None:
            auth_status = DomainAuthStatus.ACCEPTED
        else:
            auth_status = authorize(
                token_view(await s.store.get_token(m.token)) if m.token else None, now
            )
        stop_offline = started_offline(
            stop_at, conn.connected_at, timedelta(seconds=s.settings.clock_skew_tolerance)
        )
        reason = STOP_REASON[m.stop_reason]
        raw = json.dumps(
            {
                "serial": m.serial,
                "gun": m.gun,
                "start_time": m.start_time.isoformat(),
                "stop_time": m.stop_time.isoformat(),
                "meter_start_wh": m.meter_start_wh,
                "meter_stop_wh": m.meter_stop_wh,
                "energy_wh": m.energy_wh,
                "auth_method": m.auth_method.name.lower(),
                "offline": m.offline,
                "token": m.token,
                "stop_reason": m.stop_reason.name.lower(),
            },
            separators=(",", ":"),
        )

        def stopped_events(t: Any) -> tuple[tuple[str, str, str, bool], ...]:
            return s.events.rows(
                "transaction.stopped",
                t.pile_id,
                now,
                TransactionStopped(
                    transaction_id=t.id,
                    stop_at=t.stop_at,
                    meter_stop=t.meter_stop,
                    energy_wh=t.energy_wh,
                    reason=t.stop_reason,
                ),
            )

        async def store_in(session: AsyncSession) -> tuple[str, int, bool, int | None]:
            conflict = await conflicting_start_in(
                session,
                pile_id=conn.pile_id,
                connector_id=m.gun,
                start_at=start_at,
                meter_start=m.meter_start_wh,
                id_tag=m.token,
                external_id=m.serial,
            )
            if conflict is not None:
                return "conflict", conflict.id, False, None
            tx, created = await s.store.start_transaction_in(
                session,
                pile_id=conn.pile_id,
                connector_id=m.gun,
                protocol=conn.protocol,
                id_tag=m.token,
                auth_method=method.value,
                offline=m.offline,
                auth_status=auth_status.value,
                start_at=start_at,
                meter_start=m.meter_start_wh,
                reservation_id=None,
                now=now,
                external_id=m.serial,
                events=self._started_events(now),
                node_id=s.node_id,
            )
            if not created:
                # Opened from real-time data: the record's start is authoritative
                # (a session the gateway opened as remote stays remote).
                await correct_start_in(
                    session,
                    tx.id,
                    start_at=start_at,
                    meter_start=m.meter_start_wh,
                    id_tag=m.token,
                    auth_method=(
                        DomainAuthMethod.REMOTE.value
                        if tx.auth_method == DomainAuthMethod.REMOTE.value
                        else method.value
                    ),
                    offline=m.offline,
                )
            attached = await attach_samples_in(
                session,
                pile_id=conn.pile_id,
                connector_id=m.gun,
                transaction_id=tx.id,
                start_at=start_at,
                stop_at=stop_at,
            )
            was_active = tx.status == "active" or created
            rec = await s.store.stop_transaction_in(
                session,
                pile_id=conn.pile_id,
                transaction_id=tx.id,
                stop_at=stop_at,
                meter_stop=m.meter_stop_wh,
                reason=reason,
                stop_id_tag=m.token,
                stop_offline=stop_offline,
                readings=[],
                now=now,
                raw_payload=raw,
                events=stopped_events if s.events.enabled else None,
                node_id=s.node_id,
            )
            energy = rec.energy_wh if rec is not None else None
            outcome = "stored" if created or was_active else "duplicate"
            return outcome, tx.id, attached > 0, energy

        try:
            outcome, tx_id, attached, energy = await s.writer.call(store_in)
        except RuntimeError:
            log.warning("transaction record not stored (write queue closed)", serial=m.serial)
            return
        if outcome == "conflict":
            s.metrics.transactions.labels(event="rejected").inc()
            log.warning(
                "transaction record rejected",
                why=f"its start (gun, time, meter, token) is that of transaction {tx_id}, "
                "which has another SERIAL",
                serial=m.serial,
            )
            conn.reply(seq_bytes, TransactionConfirm(m.serial, TransactionConfirmResult.REJECTED))
            return
        conn.server.serials.pop(m.serial)
        self._cache(m.serial, tx_id)
        s.metrics.transactions.labels(event="stopped" if outcome == "stored" else "duplicate").inc()
        if energy is not None and energy != m.energy_wh:
            log.info("record energy differs from its meter readings", energy_wh=m.energy_wh)
        log.info(
            "transaction record",
            transaction_id=tx_id,
            serial=m.serial,
            gun=m.gun,
            method=method.value,
            offline=m.offline,
            energy_wh=energy,
            reason=reason,
            duplicate=outcome == "duplicate",
            samples_attached=attached,
        )
        conn.reply(seq_bytes, TransactionConfirm(m.serial, TransactionConfirmResult.STORED))

    # --- 0x95 ---------------------------------------------------------------------------------
    async def firmware_status(self, seq_bytes: bytes, m: FirmwareStatus) -> None:
        s = self.s
        conn = self.conn
        code = str(int(m.status))
        s.observers.firmware_status(conn.pile_id, code, conn.protocol)
        await s.writer.put(
            ChargerMessageOp(
                pile_id=conn.pile_id,
                kind="FirmwareStatus",
                vendor_id=None,
                message_id=str(m.task_id),
                status=code,
                data=json.dumps(
                    {
                        "task_id": m.task_id,
                        "status": m.status.name.lower(),
                        "progress": m.progress,
                    },
                    separators=(",", ":"),
                ),
                received_at=s.clock(),
            )
        )
        conn.reply(seq_bytes, FirmwareStatusAck(conn.pile_id, m.task_id))
        log.info(
            "firmware status",
            task_id=m.task_id,
            status=m.status.name.lower(),
            progress=m.progress,
        )
