"""meter_values: one index (the unique key, led by pile_id, transaction_key)

The unique key used to lead with (pile_id, connector_id, transaction_key)
and a second index on (transaction_key, at) served a transaction's curve.
Every sample insert therefore updated three B-trees (table, unique key,
index). With the key's columns reordered to (pile_id, transaction_key,
connector_id, at, ...) the key itself serves both readers and the second
index goes: the same set of columns, so exactly the same samples count as
duplicates. On SQLite the table is rebuilt (batch mode copies the rows).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 17:20:00
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_REST = ["at", "measurand", "phase", "location", "context"]


def upgrade() -> None:
    with op.batch_alter_table("meter_values", schema=None) as batch_op:
        batch_op.drop_index("ix_meter_values_tx")
        batch_op.drop_constraint("uq_meter_values_sample", type_="unique")
        batch_op.create_unique_constraint(
            "uq_meter_values_sample", ["pile_id", "transaction_key", "connector_id", *_REST]
        )


def downgrade() -> None:
    with op.batch_alter_table("meter_values", schema=None) as batch_op:
        batch_op.drop_constraint("uq_meter_values_sample", type_="unique")
        batch_op.create_unique_constraint(
            "uq_meter_values_sample", ["pile_id", "connector_id", "transaction_key", *_REST]
        )
        batch_op.create_index("ix_meter_values_tx", ["transaction_key", "at"], unique=False)
