"""meter_values: the sample key is the primary key (no surrogate id; SQLite
WITHOUT ROWID)

After 0006 a sample insert still updated two B-trees on SQLite (the rowid
table and the key's automatic index) and, on PostgreSQL, the heap plus two
indexes (the id's primary key and the unique key) and a sequence. Nothing
reads meter_values by id. With the key itself as the primary key:

- SQLite stores the table as a WITHOUT ROWID table, one B-tree ordered by
  the key: in bench/meter_index.py 156,563 -> 173,816 sample rows/s and
  102 -> 61 MiB for 400,000 samples;
- PostgreSQL keeps one index (the key, now ``pk_meter_values``) and no
  sequence: 45,503 -> 52,083 rows/s.

The same columns in the same order, so exactly the same samples count as
duplicates (``INSERT ... ON CONFLICT DO NOTHING`` now meets the primary
key). On SQLite the table is rebuilt (batch mode copies the rows).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 21:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

KEY = [
    "pile_id",
    "transaction_key",
    "connector_id",
    "at",
    "measurand",
    "phase",
    "location",
    "context",
]


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        # A table's rowid-ness is fixed at CREATE TABLE: batch mode builds
        # the new table with the key as primary key and WITHOUT ROWID and
        # copies the rows over.
        with op.batch_alter_table(
            "meter_values",
            recreate="always",
            table_kwargs={"sqlite_with_rowid": False},
        ) as batch_op:
            batch_op.drop_constraint("uq_meter_values_sample", type_="unique")
            batch_op.drop_column("id")
            batch_op.create_primary_key("pk_meter_values", KEY)
        return
    op.drop_constraint("pk_meter_values", "meter_values", type_="primary")
    op.drop_column("meter_values", "id")
    op.drop_constraint("uq_meter_values_sample", "meter_values", type_="unique")
    op.create_primary_key("pk_meter_values", "meter_values", KEY)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        with op.batch_alter_table(
            "meter_values", recreate="always", table_kwargs={"sqlite_with_rowid": True}
        ) as batch_op:
            batch_op.drop_constraint("pk_meter_values", type_="primary")
            batch_op.add_column(
                sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
                insert_before="pile_id",
            )
            batch_op.create_unique_constraint("uq_meter_values_sample", KEY)
        return
    op.drop_constraint("pk_meter_values", "meter_values", type_="primary")
    op.create_unique_constraint("uq_meter_values_sample", "meter_values", KEY)
    # BIGSERIAL, as 0002 created it; it numbers the existing rows.
    op.execute("ALTER TABLE meter_values ADD COLUMN id BIGSERIAL NOT NULL")
    op.create_primary_key("pk_meter_values", "meter_values", ["id"])
