"""guns tokens transactions meter values

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 14:24:59.004332
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from gateway.storage.models import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "tokens",
        sa.Column("id_tag", sa.String(length=20), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("expiry", UTCDateTime(), nullable=True),
        sa.Column("parent_id_tag", sa.String(length=20), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id_tag", name=op.f("pk_tokens")),
    )
    op.create_table(
        "charger_messages",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("pile_id", sa.String(length=20), nullable=False),
        sa.Column("kind", sa.String(length=48), nullable=False),
        sa.Column("vendor_id", sa.String(length=255), nullable=True),
        sa.Column("message_id", sa.String(length=50), nullable=True),
        sa.Column("status", sa.String(length=48), nullable=True),
        sa.Column("data", sa.Text(), nullable=True),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["pile_id"],
            ["piles.pile_id"],
            name=op.f("fk_charger_messages_pile_id_piles"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_charger_messages")),
    )
    with op.batch_alter_table("charger_messages", schema=None) as batch_op:
        batch_op.create_index(
            "ix_charger_messages_pile_kind", ["pile_id", "kind", "id"], unique=False
        )

    op.create_table(
        "gun_status_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("pile_id", sa.String(length=20), nullable=False),
        sa.Column("connector_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("info", sa.String(length=64), nullable=True),
        sa.Column("vendor_id", sa.String(length=255), nullable=True),
        sa.Column("vendor_error_code", sa.String(length=64), nullable=True),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["pile_id"],
            ["piles.pile_id"],
            name=op.f("fk_gun_status_events_pile_id_piles"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_gun_status_events")),
    )
    with op.batch_alter_table("gun_status_events", schema=None) as batch_op:
        batch_op.create_index(
            "ix_gun_status_events_pile_at", ["pile_id", "connector_id", "at"], unique=False
        )

    op.create_table(
        "guns",
        sa.Column("pile_id", sa.String(length=20), nullable=False),
        sa.Column("connector_id", sa.Integer(), nullable=False),
        sa.Column("gun_id", sa.String(length=23), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("info", sa.String(length=64), nullable=True),
        sa.Column("vendor_error_code", sa.String(length=64), nullable=True),
        sa.Column("status_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["pile_id"], ["piles.pile_id"], name=op.f("fk_guns_pile_id_piles"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("pile_id", "connector_id", name=op.f("pk_guns")),
    )
    op.create_table(
        "meter_values",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("pile_id", sa.String(length=20), nullable=False),
        sa.Column("connector_id", sa.Integer(), nullable=False),
        sa.Column("transaction_key", sa.BigInteger(), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("measurand", sa.String(length=48), nullable=False),
        sa.Column("phase", sa.String(length=8), nullable=False),
        sa.Column("unit", sa.String(length=16), nullable=False),
        sa.Column("context", sa.String(length=32), nullable=False),
        sa.Column("location", sa.String(length=16), nullable=False),
        sa.Column("format", sa.String(length=16), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("value_num", sa.Float(), nullable=True),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["pile_id"],
            ["piles.pile_id"],
            name=op.f("fk_meter_values_pile_id_piles"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_meter_values")),
        sa.UniqueConstraint(
            "pile_id",
            "connector_id",
            "transaction_key",
            "at",
            "measurand",
            "phase",
            "location",
            "context",
            name="uq_meter_values_sample",
        ),
    )
    with op.batch_alter_table("meter_values", schema=None) as batch_op:
        batch_op.create_index("ix_meter_values_tx", ["transaction_key", "at"], unique=False)

    op.create_table(
        "orphan_stops",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("pile_id", sa.String(length=20), nullable=False),
        sa.Column("transaction_id", sa.BigInteger(), nullable=False),
        sa.Column("id_tag", sa.String(length=20), nullable=True),
        sa.Column("stop_at", UTCDateTime(), nullable=False),
        sa.Column("meter_stop", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["pile_id"],
            ["piles.pile_id"],
            name=op.f("fk_orphan_stops_pile_id_piles"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_orphan_stops")),
    )
    op.create_table(
        "transactions",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("pile_id", sa.String(length=20), nullable=False),
        sa.Column("connector_id", sa.Integer(), nullable=False),
        sa.Column("protocol", sa.String(length=16), nullable=False),
        sa.Column("external_id", sa.String(length=64), nullable=True),
        sa.Column("id_tag", sa.String(length=20), nullable=False),
        sa.Column("auth_method", sa.String(length=16), nullable=False),
        sa.Column("offline", sa.Boolean(), nullable=False),
        sa.Column("auth_status", sa.String(length=16), nullable=False),
        sa.Column("reservation_id", sa.Integer(), nullable=True),
        sa.Column("start_at", UTCDateTime(), nullable=False),
        sa.Column("meter_start", sa.BigInteger(), nullable=False),
        sa.Column("stop_at", UTCDateTime(), nullable=True),
        sa.Column("meter_stop", sa.BigInteger(), nullable=True),
        sa.Column("energy_wh", sa.BigInteger(), nullable=True),
        sa.Column("stop_reason", sa.String(length=32), nullable=True),
        sa.Column("stop_id_tag", sa.String(length=20), nullable=True),
        sa.Column("stop_offline", sa.Boolean(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["pile_id"],
            ["piles.pile_id"],
            name=op.f("fk_transactions_pile_id_piles"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_transactions")),
        sa.UniqueConstraint(
            "pile_id",
            "connector_id",
            "start_at",
            "meter_start",
            "id_tag",
            name="uq_transactions_start",
        ),
        sa.UniqueConstraint("pile_id", "external_id", name="uq_transactions_external"),
    )
    with op.batch_alter_table("transactions", schema=None) as batch_op:
        batch_op.create_index("ix_transactions_pile_start", ["pile_id", "start_at"], unique=False)

    with op.batch_alter_table("piles", schema=None) as batch_op:
        batch_op.add_column(sa.Column("charge_point_serial", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("charge_box_serial", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("iccid", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("imsi", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("meter_type", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("meter_serial", sa.String(length=64), nullable=True))
        batch_op.add_column(
            sa.Column("boot_count", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("kind_mismatch", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.add_column(sa.Column("kind_mismatch_evidence", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("password_hash", sa.String(length=255), nullable=True))


def downgrade() -> None:

    with op.batch_alter_table("piles", schema=None) as batch_op:
        batch_op.drop_column("password_hash")
        batch_op.drop_column("kind_mismatch_evidence")
        batch_op.drop_column("kind_mismatch")
        batch_op.drop_column("boot_count")
        batch_op.drop_column("meter_serial")
        batch_op.drop_column("meter_type")
        batch_op.drop_column("imsi")
        batch_op.drop_column("iccid")
        batch_op.drop_column("charge_box_serial")
        batch_op.drop_column("charge_point_serial")

    with op.batch_alter_table("transactions", schema=None) as batch_op:
        batch_op.drop_index("ix_transactions_pile_start")

    op.drop_table("transactions")
    op.drop_table("orphan_stops")
    with op.batch_alter_table("meter_values", schema=None) as batch_op:
        batch_op.drop_index("ix_meter_values_tx")

    op.drop_table("meter_values")
    op.drop_table("guns")
    with op.batch_alter_table("gun_status_events", schema=None) as batch_op:
        batch_op.drop_index("ix_gun_status_events_pile_at")

    op.drop_table("gun_status_events")
    with op.batch_alter_table("charger_messages", schema=None) as batch_op:
        batch_op.drop_index("ix_charger_messages_pile_kind")

    op.drop_table("charger_messages")
    op.drop_table("tokens")
