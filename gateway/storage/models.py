"""SQLAlchemy 2.0 typed models. Only the storage layer imports these.

Every schema change goes through an Alembic migration in
``gateway/migrations/versions``; ``tests/test_migrations.py`` checks that the
models and the migrated schema agree.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.expression import false

# Stable constraint names so Alembic migrations are identical on SQLite and
# PostgreSQL.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utc_for_storage(value: datetime | None, *, naive: bool) -> datetime | None:
    """What a ``UTCDateTime`` column binds: the time in UTC, naive for SQLite.
    Also used by the driver-level batch writes (``rawsql``)."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("naive datetime given to storage; pass an aware UTC datetime")
    value = value.astimezone(UTC)
    return value.replace(tzinfo=None) if naive else value


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend.

    SQLite has no time zone type; storing naive UTC and re-attaching UTC on
    the way out keeps comparisons and ISO output identical on both backends.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return utc_for_storage(value, naive=dialect.name == "sqlite")

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Pile(Base):
    __tablename__ = "piles"

    pile_id: Mapped[str] = mapped_column(String(20), primary_key=True)
    # Decoded segments of the pile ID (pileid.parse_pile_id), kept as columns
    # so operators can filter by region, operator or kind in SQL.
    region_code: Mapped[str] = mapped_column(String(6), index=True)
    operator_code: Mapped[str] = mapped_column(String(4), index=True)
    product_code: Mapped[str] = mapped_column(String(2))
    kind: Mapped[str] = mapped_column(String(2))  # "AC" | "DC"
    serial: Mapped[str] = mapped_column(String(5))

    protocol: Mapped[str | None] = mapped_column(String(16))  # ocpp1.6 | ocpp2.0.1 | cbp1
    vendor: Mapped[str | None] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(64))
    firmware_version: Mapped[str | None] = mapped_column(String(64))
    registered_at: Mapped[datetime] = mapped_column(UTCDateTime())
    first_seen: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_seen: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_boot: Mapped[datetime | None] = mapped_column(UTCDateTime())
    online: Mapped[bool] = mapped_column(Boolean, default=False)
    online_since: Mapped[datetime | None] = mapped_column(UTCDateTime())
    node_id: Mapped[str | None] = mapped_column(String(64))
    # --- from BootNotification (OCPP) / Login (CBP/1); migration 0002 ---------
    charge_point_serial: Mapped[str | None] = mapped_column(String(64))
    charge_box_serial: Mapped[str | None] = mapped_column(String(64))
    iccid: Mapped[str | None] = mapped_column(String(32))
    imsi: Mapped[str | None] = mapped_column(String(32))
    meter_type: Mapped[str | None] = mapped_column(String(64))
    meter_serial: Mapped[str | None] = mapped_column(String(64))
    boot_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # AC/DC contradiction between the pile ID and what the charger reports.
    kind_mismatch: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    kind_mismatch_evidence: Mapped[str | None] = mapped_column(Text)  # JSON list
    # Security profile 1 (HTTP Basic): PBKDF2 hash, never the password.
    password_hash: Mapped[str | None] = mapped_column(String(255))


class PresenceEvent(Base):
    __tablename__ = "presence_events"
    __table_args__ = (Index("ix_presence_events_pile_at", "pile_id", "at"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    pile_id: Mapped[str] = mapped_column(
        String(20), ForeignKey("piles.pile_id", ondelete="CASCADE")
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    online: Mapped[bool] = mapped_column(Boolean)
    # connected | closed_clean | closed_abnormal | ping_timeout |
    # heartbeat_timeout | replaced | gateway_shutdown | node_lost
    reason: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str | None] = mapped_column(String(255))
    connection_id: Mapped[str | None] = mapped_column(String(64))
    node_id: Mapped[str | None] = mapped_column(String(64))


_BIGID = BigInteger().with_variant(Integer, "sqlite")


class Gun(Base):
    """Current status of one connector (gun) of a pile."""

    __tablename__ = "guns"

    pile_id: Mapped[str] = mapped_column(
        String(20), ForeignKey("piles.pile_id", ondelete="CASCADE"), primary_key=True
    )
    connector_id: Mapped[int] = mapped_column(Integer, primary_key=True)  # 0 = the pile
    gun_id: Mapped[str] = mapped_column(String(23))
    status: Mapped[str] = mapped_column(String(32))
    error_code: Mapped[str | None] = mapped_column(String(64))
    info: Mapped[str | None] = mapped_column(String(64))
    vendor_error_code: Mapped[str | None] = mapped_column(String(64))
    status_at: Mapped[datetime] = mapped_column(UTCDateTime())


class GunStatusEvent(Base):
    __tablename__ = "gun_status_events"
    __table_args__ = (Index("ix_gun_status_events_pile_at", "pile_id", "connector_id", "at"),)

    id: Mapped[int] = mapped_column(_BIGID, primary_key=True, autoincrement=True)
    pile_id: Mapped[str] = mapped_column(
        String(20), ForeignKey("piles.pile_id", ondelete="CASCADE")
    )
    connector_id: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(32))
    error_code: Mapped[str | None] = mapped_column(String(64))
    info: Mapped[str | None] = mapped_column(String(64))
    vendor_id: Mapped[str | None] = mapped_column(String(255))
    vendor_error_code: Mapped[str | None] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UTCDateTime())  # the charger's timestamp
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Token(Base):
    """An authorization token: card number, VIN or offline password."""

    __tablename__ = "tokens"

    id_tag: Mapped[str] = mapped_column(String(20), primary_key=True)
    type: Mapped[str] = mapped_column(String(16))  # card | vin | password
    status: Mapped[str] = mapped_column(String(16))  # accepted | blocked | expired
    expiry: Mapped[datetime | None] = mapped_column(UTCDateTime())
    parent_id_tag: Mapped[str | None] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Transaction(Base):
    __tablename__ = "transactions"
    __table_args__ = (
        # A retransmitted StartTransaction (same pile, connector, start time,
        # meter and token) is the same transaction: OCPP-J 1.6 §4.1.1 lets a
        # charger resend a CALL it got no answer to.
        UniqueConstraint(
            "pile_id",
            "connector_id",
            "start_at",
            "meter_start",
            "id_tag",
            name="uq_transactions_start",
        ),
        UniqueConstraint("pile_id", "external_id", name="uq_transactions_external"),
        Index("ix_transactions_pile_start", "pile_id", "start_at"),
    )

    id: Mapped[int] = mapped_column(_BIGID, primary_key=True, autoincrement=True)
    pile_id: Mapped[str] = mapped_column(
        String(20), ForeignKey("piles.pile_id", ondelete="CASCADE")
    )
    connector_id: Mapped[int] = mapped_column(Integer)
    protocol: Mapped[str] = mapped_column(String(16))
    # CBP/1 serial or another charger-made id; unique per pile when present.
    external_id: Mapped[str | None] = mapped_column(String(64))
    id_tag: Mapped[str] = mapped_column(String(20))
    auth_method: Mapped[str] = mapped_column(String(16))  # remote|card|vin|password|unknown
    offline: Mapped[bool] = mapped_column(Boolean)
    auth_status: Mapped[str] = mapped_column(String(16))  # idTagInfo status we answered
    reservation_id: Mapped[int | None] = mapped_column(Integer)
    start_at: Mapped[datetime] = mapped_column(UTCDateTime())
    meter_start: Mapped[int] = mapped_column(BigInteger)
    stop_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    meter_stop: Mapped[int | None] = mapped_column(BigInteger)
    energy_wh: Mapped[int | None] = mapped_column(BigInteger)
    stop_reason: Mapped[str | None] = mapped_column(String(32))
    stop_id_tag: Mapped[str | None] = mapped_column(String(20))
    stop_offline: Mapped[bool | None] = mapped_column(Boolean)
    status: Mapped[str] = mapped_column(String(16))  # active | completed
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class MeterReading(Base):
    """One OCPP MeterValue element (§7.31): a timestamp and its sampled
    values, stored as the charger sent them (JSON text of the sampledValue
    list; gateway/storage/meter.py fills in the §7.43 defaults and applies
    the duplicate rule when reading).

    One row per element instead of one per sampled value: 2.0-2.3x less
    work per MeterValues on SQLite, 4.2x on PostgreSQL (migration 0008,
    docs/benchmarks.md "One row per MeterValue element")."""

    __tablename__ = "meter_readings"
    # The key is the primary key and the only index, led by (pile_id,
    # transaction_key) so that it serves both readers, a transaction's curve
    # (pile_id, transaction_key) and a gun's readings outside any
    # transaction (pile_id, transaction_key 0, connector_id, at range). The
    # digest of the text makes a retransmitted element a duplicate and keeps
    # two different elements with one timestamp. WITHOUT ROWID on SQLite:
    # one B-tree (as meter_values had since migration 0007).
    __table_args__ = (
        PrimaryKeyConstraint(
            "pile_id",
            "transaction_key",
            "connector_id",
            "at",
            "digest",
            name="pk_meter_readings",
        ),
        {"sqlite_with_rowid": False},
    )

    pile_id: Mapped[str] = mapped_column(
        String(20), ForeignKey("piles.pile_id", ondelete="CASCADE")
    )
    transaction_key: Mapped[int] = mapped_column(BigInteger)  # 0 = outside a transaction
    connector_id: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    digest: Mapped[int] = mapped_column(BigInteger)  # gateway/storage/meter.py encode()
    samples: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())


class OrphanStop(Base):
    """A StopTransaction for a transaction id the gateway does not know."""

    __tablename__ = "orphan_stops"

    id: Mapped[int] = mapped_column(_BIGID, primary_key=True, autoincrement=True)
    pile_id: Mapped[str] = mapped_column(
        String(20), ForeignKey("piles.pile_id", ondelete="CASCADE")
    )
    transaction_id: Mapped[int] = mapped_column(BigInteger)
    id_tag: Mapped[str | None] = mapped_column(String(20))
    stop_at: Mapped[datetime] = mapped_column(UTCDateTime())
    meter_stop: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str | None] = mapped_column(String(32))
    payload: Mapped[str] = mapped_column(Text)  # the raw JSON, for operators
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ChargerMessage(Base):
    """DataTransfer, FirmwareStatusNotification, DiagnosticsStatusNotification
    and similar notifications, stored as they came for later issues."""

    __tablename__ = "charger_messages"
    __table_args__ = (Index("ix_charger_messages_pile_kind", "pile_id", "kind", "id"),)

    id: Mapped[int] = mapped_column(_BIGID, primary_key=True, autoincrement=True)
    pile_id: Mapped[str] = mapped_column(
        String(20), ForeignKey("piles.pile_id", ondelete="CASCADE")
    )
    kind: Mapped[str] = mapped_column(String(48))  # DataTransfer | FirmwareStatusNotification...
    vendor_id: Mapped[str | None] = mapped_column(String(255))
    message_id: Mapped[str | None] = mapped_column(String(50))
    status: Mapped[str | None] = mapped_column(String(48))
    data: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())


class OutboxEvent(Base):
    """Transactional outbox: events written with the data they describe and
    deleted once published to MQTT (at least once, in id order per node)."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_node_id", "node_id", "id"),)

    id: Mapped[int] = mapped_column(_BIGID, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(36), unique=True)
    node_id: Mapped[str] = mapped_column(String(64))
    pile_id: Mapped[str] = mapped_column(String(20))
    topic: Mapped[str] = mapped_column(String(255))
    payload: Mapped[str] = mapped_column(Text)
    retain: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Node(Base):
    """A gateway process sharing the database; its lease is its heartbeat."""

    __tablename__ = "nodes"

    node_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime())


class TokenBinding(Base):
    """Restricts a token to given piles and/or operators (none = everywhere)."""

    __tablename__ = "token_bindings"

    id: Mapped[int] = mapped_column(_BIGID, primary_key=True, autoincrement=True)
    id_tag: Mapped[str] = mapped_column(
        String(20), ForeignKey("tokens.id_tag", ondelete="CASCADE"), index=True
    )
    pile_id: Mapped[str | None] = mapped_column(String(20))
    operator_code: Mapped[str | None] = mapped_column(String(4))


class WhitelistRow(Base):
    __tablename__ = "whitelists"

    id: Mapped[int] = mapped_column(_BIGID, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class WhitelistToken(Base):
    __tablename__ = "whitelist_tokens"

    whitelist_id: Mapped[int] = mapped_column(
        _BIGID, ForeignKey("whitelists.id", ondelete="CASCADE"), primary_key=True
    )
    id_tag: Mapped[str] = mapped_column(
        String(20), ForeignKey("tokens.id_tag", ondelete="CASCADE"), primary_key=True
    )


class WhitelistAssignment(Base):
    """One assignment rule of a list (JSON arrays; see sessions.whitelist.Assignment)."""

    __tablename__ = "whitelist_assignments"

    id: Mapped[int] = mapped_column(_BIGID, primary_key=True, autoincrement=True)
    whitelist_id: Mapped[int] = mapped_column(
        _BIGID, ForeignKey("whitelists.id", ondelete="CASCADE"), index=True
    )
    pile_ids: Mapped[str] = mapped_column(Text)
    operators: Mapped[str] = mapped_column(Text)
    region_prefixes: Mapped[str] = mapped_column(Text)
    kinds: Mapped[str] = mapped_column(Text)


class PileWhitelistState(Base):
    """Per pile: the list it should hold and the one it confirmed holding."""

    __tablename__ = "pile_whitelists"

    pile_id: Mapped[str] = mapped_column(
        String(20), ForeignKey("piles.pile_id", ondelete="CASCADE"), primary_key=True
    )
    desired_version: Mapped[int] = mapped_column(Integer)
    desired_hash: Mapped[str] = mapped_column(String(64))
    desired_count: Mapped[int] = mapped_column(Integer)
    held_version: Mapped[int | None] = mapped_column(Integer)
    held_entries: Mapped[str | None] = mapped_column(Text)  # JSON, as confirmed by the pile
    status: Mapped[str] = mapped_column(String(16))  # in_sync | pending | failed
    reason: Mapped[str | None] = mapped_column(Text)
    capacity: Mapped[int | None] = mapped_column(Integer)
    max_chunk: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


# --- firmware (issue 6; migration 0005) ----------------------------------------
class FirmwareImage(Base):
    """A firmware image: stored under PILEGATE_FIRMWARE_DIR (``path``, relative
    to it) and served at /firmware-images/{id}/{filename}, or kept elsewhere
    (``url``); exactly one of the two is set."""

    __tablename__ = "firmware_images"
    __table_args__ = (Index("ix_fw_images_version", "version"),)

    id: Mapped[int] = mapped_column(_BIGID, primary_key=True, autoincrement=True)
    version: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(64))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    filename: Mapped[str] = mapped_column(String(128))
    path: Mapped[str | None] = mapped_column(String(255))
    url: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class FirmwareTaskRow(Base):
    """A firmware task: its spec (JSON, see gateway.firmware_service) and its
    progress (``record``: firmware.rollout.TaskProgress.to_dict(); the piles'
    part of the RolloutRecord lives in firmware_task_piles)."""

    __tablename__ = "firmware_tasks"
    __table_args__ = (Index("ix_fw_tasks_state", "state"),)

    id: Mapped[int] = mapped_column(_BIGID, primary_key=True, autoincrement=True)
    image_id: Mapped[int | None] = mapped_column(
        _BIGID, ForeignKey("firmware_images.id", name="fk_fw_tasks_image")
    )
    target_version: Mapped[str] = mapped_column(String(64))
    spec: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    record: Mapped[str] = mapped_column(Text)
    node_id: Mapped[str | None] = mapped_column(String(64))  # the node driving it
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class FirmwareTaskPile(Base):
    """One pile of a task: ``record`` is firmware.PileUpgrade.to_dict(); the
    other columns repeat parts of it for SQL filtering."""

    __tablename__ = "firmware_task_piles"
    __table_args__ = (Index("ix_fw_task_piles_pile", "pile_id", "state"),)

    task_id: Mapped[int] = mapped_column(
        _BIGID,
        ForeignKey("firmware_tasks.id", ondelete="CASCADE", name="fk_fw_task_piles_task"),
        primary_key=True,
    )
    pile_id: Mapped[str] = mapped_column(String(20), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)  # rollout order
    state: Mapped[str] = mapped_column(String(16))
    wave: Mapped[int | None] = mapped_column(Integer)
    attempts: Mapped[int] = mapped_column(Integer)
    last_status: Mapped[str | None] = mapped_column(String(32))
    first_sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    record: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class FirmwareEvent(Base):
    """Audit log of a task: one row per pile transition (firmware.Record) and
    per task transition (firmware.TaskRecord, ``pile_id`` NULL)."""

    __tablename__ = "firmware_events"
    __table_args__ = (Index("ix_fw_events_task", "task_id", "id"),)

    id: Mapped[int] = mapped_column(_BIGID, primary_key=True, autoincrement=True)
    task_id: Mapped[int] = mapped_column(
        _BIGID, ForeignKey("firmware_tasks.id", ondelete="CASCADE", name="fk_fw_events_task")
    )
    pile_id: Mapped[str | None] = mapped_column(String(20))
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    from_state: Mapped[str] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    trigger: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str | None] = mapped_column(Text)
    attempt: Mapped[int | None] = mapped_column(Integer)
