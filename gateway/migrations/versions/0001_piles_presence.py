"""piles and presence events

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from gateway.storage.models import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "piles",
        sa.Column("pile_id", sa.String(20), nullable=False),
        sa.Column("region_code", sa.String(6), nullable=False),
        sa.Column("operator_code", sa.String(4), nullable=False),
        sa.Column("product_code", sa.String(2), nullable=False),
        sa.Column("kind", sa.String(2), nullable=False),
        sa.Column("serial", sa.String(5), nullable=False),
        sa.Column("protocol", sa.String(16), nullable=True),
        sa.Column("vendor", sa.String(64), nullable=True),
        sa.Column("model", sa.String(64), nullable=True),
        sa.Column("firmware_version", sa.String(64), nullable=True),
        sa.Column("registered_at", UTCDateTime(), nullable=False),
        sa.Column("first_seen", UTCDateTime(), nullable=True),
        sa.Column("last_seen", UTCDateTime(), nullable=True),
        sa.Column("last_boot", UTCDateTime(), nullable=True),
        sa.Column("online", sa.Boolean(), nullable=False),
        sa.Column("online_since", UTCDateTime(), nullable=True),
        sa.Column("node_id", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("pile_id", name=op.f("pk_piles")),
    )
    op.create_index(op.f("ix_piles_region_code"), "piles", ["region_code"])
    op.create_index(op.f("ix_piles_operator_code"), "piles", ["operator_code"])
    op.create_table(
        "presence_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("pile_id", sa.String(20), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("online", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("detail", sa.String(255), nullable=True),
        sa.Column("connection_id", sa.String(64), nullable=True),
        sa.Column("node_id", sa.String(64), nullable=True),
        sa.ForeignKeyConstraint(
            ["pile_id"],
            ["piles.pile_id"],
            name=op.f("fk_presence_events_pile_id_piles"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_presence_events")),
    )
    op.create_index("ix_presence_events_pile_at", "presence_events", ["pile_id", "at"])


def downgrade() -> None:
    op.drop_index("ix_presence_events_pile_at", table_name="presence_events")
    op.drop_table("presence_events")
    op.drop_index(op.f("ix_piles_operator_code"), table_name="piles")
    op.drop_index(op.f("ix_piles_region_code"), table_name="piles")
    op.drop_table("piles")
