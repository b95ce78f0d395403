"""whitelists

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 14:59:45.150406
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from gateway.storage.models import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "whitelists",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("description", sa.String(length=255), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_whitelists")),
        sa.UniqueConstraint("name", name=op.f("uq_whitelists_name")),
    )
    op.create_table(
        "pile_whitelists",
        sa.Column("pile_id", sa.String(length=20), nullable=False),
        sa.Column("desired_version", sa.Integer(), nullable=False),
        sa.Column("desired_hash", sa.String(length=64), nullable=False),
        sa.Column("desired_count", sa.Integer(), nullable=False),
        sa.Column("held_version", sa.Integer(), nullable=True),
        sa.Column("held_entries", sa.Text(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("capacity", sa.Integer(), nullable=True),
        sa.Column("max_chunk", sa.Integer(), nullable=True),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["pile_id"],
            ["piles.pile_id"],
            name=op.f("fk_pile_whitelists_pile_id_piles"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("pile_id", name=op.f("pk_pile_whitelists")),
    )
    op.create_table(
        "token_bindings",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("id_tag", sa.String(length=20), nullable=False),
        sa.Column("pile_id", sa.String(length=20), nullable=True),
        sa.Column("operator_code", sa.String(length=4), nullable=True),
        sa.ForeignKeyConstraint(
            ["id_tag"],
            ["tokens.id_tag"],
            name=op.f("fk_token_bindings_id_tag_tokens"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_token_bindings")),
    )
    with op.batch_alter_table("token_bindings", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_token_bindings_id_tag"), ["id_tag"], unique=False)

    op.create_table(
        "whitelist_assignments",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column(
            "whitelist_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("pile_ids", sa.Text(), nullable=False),
        sa.Column("operators", sa.Text(), nullable=False),
        sa.Column("region_prefixes", sa.Text(), nullable=False),
        sa.Column("kinds", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["whitelist_id"],
            ["whitelists.id"],
            name=op.f("fk_whitelist_assignments_whitelist_id_whitelists"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_whitelist_assignments")),
    )
    with op.batch_alter_table("whitelist_assignments", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_whitelist_assignments_whitelist_id"), ["whitelist_id"], unique=False
        )

    op.create_table(
        "whitelist_tokens",
        sa.Column(
            "whitelist_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("id_tag", sa.String(length=20), nullable=False),
        sa.ForeignKeyConstraint(
            ["id_tag"],
            ["tokens.id_tag"],
            name=op.f("fk_whitelist_tokens_id_tag_tokens"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["whitelist_id"],
            ["whitelists.id"],
            name=op.f("fk_whitelist_tokens_whitelist_id_whitelists"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("whitelist_id", "id_tag", name=op.f("pk_whitelist_tokens")),
    )


def downgrade() -> None:

    op.drop_table("whitelist_tokens")
    with op.batch_alter_table("whitelist_assignments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_whitelist_assignments_whitelist_id"))

    op.drop_table("whitelist_assignments")
    with op.batch_alter_table("token_bindings", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_token_bindings_id_tag"))

    op.drop_table("token_bindings")
    op.drop_table("pile_whitelists")
    op.drop_table("whitelists")
