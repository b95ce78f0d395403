"""Shared fixtures: a fresh database per test on SQLite and on PostgreSQL.

PostgreSQL tests run against the real server (PILEGATE_TEST_PG_URL, default
postgresql://postgres@127.0.0.1:5432/test); each test creates its own
database and drops it afterwards. They fail, not skip, when the server is
unreachable: .ci/run starts it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

PG_ADMIN_URL = os.environ.get("PILEGATE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


async def _pg_database() -> tuple[str, str]:
    name = f"pilegate_t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    return name, f"{base}/{name}"


async def _drop_pg_database(name: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A URL of an empty database, once per backend."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'pilegate.db'}"
        return
    name, url = await _pg_database()
    try:
        yield url
    finally:
        await _drop_pg_database(name)


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A fresh PostgreSQL database (several gateway nodes share one)."""
    name, url = await _pg_database()
    try:
        yield url
    finally:
        await _drop_pg_database(name)
