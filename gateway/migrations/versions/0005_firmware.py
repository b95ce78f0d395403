"""firmware images, tasks, per-pile upgrades and their event log

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 15:07:01.432051
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from gateway.storage.models import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "firmware_images",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=64), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("filename", sa.String(length=128), nullable=False),
        sa.Column("path", sa.String(length=255), nullable=True),
        sa.Column("url", sa.String(length=255), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_firmware_images")),
    )
    with op.batch_alter_table("firmware_images", schema=None) as batch_op:
        batch_op.create_index("ix_fw_images_version", ["version"], unique=False)

    op.create_table(
        "firmware_tasks",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("image_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("target_version", sa.String(length=64), nullable=False),
        sa.Column("spec", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("record", sa.Text(), nullable=False),
        sa.Column("node_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["image_id"], ["firmware_images.id"], name="fk_fw_tasks_image"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_firmware_tasks")),
    )
    with op.batch_alter_table("firmware_tasks", schema=None) as batch_op:
        batch_op.create_index("ix_fw_tasks_state", ["state"], unique=False)

    op.create_table(
        "firmware_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("task_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("pile_id", sa.String(length=20), nullable=True),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("from_state", sa.String(length=16), nullable=False),
        sa.Column("to_state", sa.String(length=16), nullable=False),
        sa.Column("trigger", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["task_id"], ["firmware_tasks.id"], name="fk_fw_events_task", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_firmware_events")),
    )
    with op.batch_alter_table("firmware_events", schema=None) as batch_op:
        batch_op.create_index("ix_fw_events_task", ["task_id", "id"], unique=False)

    op.create_table(
        "firmware_task_piles",
        sa.Column("task_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("pile_id", sa.String(length=20), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("wave", sa.Integer(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_status", sa.String(length=32), nullable=True),
        sa.Column("first_sent_at", UTCDateTime(), nullable=True),
        sa.Column("last_sent_at", UTCDateTime(), nullable=True),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.Column("record", sa.Text(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["task_id"], ["firmware_tasks.id"], name="fk_fw_task_piles_task", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("task_id", "pile_id", name=op.f("pk_firmware_task_piles")),
    )
    with op.batch_alter_table("firmware_task_piles", schema=None) as batch_op:
        batch_op.create_index("ix_fw_task_piles_pile", ["pile_id", "state"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("firmware_task_piles", schema=None) as batch_op:
        batch_op.drop_index("ix_fw_task_piles_pile")

    op.drop_table("firmware_task_piles")
    with op.batch_alter_table("firmware_events", schema=None) as batch_op:
        batch_op.drop_index("ix_fw_events_task")

    op.drop_table("firmware_events")
    with op.batch_alter_table("firmware_tasks", schema=None) as batch_op:
        batch_op.drop_index("ix_fw_tasks_state")

    op.drop_table("firmware_tasks")
    with op.batch_alter_table("firmware_images", schema=None) as batch_op:
        batch_op.drop_index("ix_fw_images_version")

    op.drop_table("firmware_images")
