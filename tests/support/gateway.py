"""Start a real gateway (OCPP listener + ops API) on loopback for a test."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx

from gateway.app import Gateway
from gateway.config import load_settings

TOKEN = "test-token-123"


@contextlib.asynccontextmanager
async def running_gateway(database_url: str, **overrides: Any) -> AsyncIterator[Gateway]:
    settings = load_settings(
        {
            "database_url": database_url,
            "api_port": 0,
            "ocpp_host": "127.0.0.1",
            "ocpp_port": 0,
            "cbp_host": "127.0.0.1",
            "cbp_port": 0,
            "api_token": TOKEN,
            "log_level": "warning",
            "shutdown_grace_seconds": 5,
            **overrides,
        }
    )
    gw = Gateway(settings)
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop()


def api_client(gw: Gateway) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{gw.api_port}",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )


async def flushed(gw: Gateway) -> None:
    """Wait until the write-behind queue has reached the database."""
    assert gw.writer is not None
    await gw.writer.barrier()


async def latest_presence(
    gw: Gateway, pile_id: str, reason: str, timeout: float = 10
) -> dict[str, Any]:
    """Wait until the pile's newest presence event has ``reason`` (the
    gateway records a close after the socket is gone, a moment after the
    client sees it)."""
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    async with api_client(gw) as api:
        while True:
            await flushed(gw)
            events = (await api.get(f"/api/piles/{pile_id}/events")).json()
            if events and events[0]["reason"] == reason:
                event: dict[str, Any] = events[0]
                return event
            if time.monotonic() > deadline:
                raise AssertionError(f"newest presence event is {events[:1]}, not {reason!r}")
            await asyncio.sleep(0.05)
