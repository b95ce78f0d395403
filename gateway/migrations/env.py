"""Alembic environment: migrations run on a connection handed over by
``gateway.storage.db.upgrade`` (async engine, run_sync), or on a URL given as
``-x url=...`` when alembic is driven from its own command line.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from gateway.storage.models import Base

target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds tables instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        raise SystemExit("pass -x url=postgresql://... (a synchronous driver URL)")
    with create_engine(url).connect() as conn:
        _run(conn)
        conn.commit()
