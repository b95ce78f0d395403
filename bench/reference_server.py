"""Reference central system for the benchmarks: the ``ocpp`` package as in its README.

A ``ChargePoint`` subclass (``ocpp.v16``) with one ``@on`` handler per
message the load generator sends (plus Authorize, StartTransaction and
StopTransaction), served by ``websockets`` with the ``ocpp1.6`` subprotocol.
No persistence, no pile ID checks: this is the baseline the issue's
reference figures were taken with (about 5,100 mixed messages/s, p99 36 ms).

    .venv/bin/python bench/reference_server.py [--host 127.0.0.1] [--port 9100]

Stops on SIGTERM / SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import websockets
from ocpp.routing import on as _on
from ocpp.v16 import ChargePoint as cp
from ocpp.v16 import call_result
from ocpp.v16.enums import Action, AuthorizationStatus, RegistrationStatus
from serving import serve_until_signal, server_args
from websockets.asyncio.server import ServerConnection

log = logging.getLogger("reference")

F = TypeVar("F", bound=Callable[..., Any])


def on(action: str) -> Callable[[F], F]:
    """``ocpp.routing.on`` with a type (the ocpp package ships none)."""
    decorator: Callable[[F], F] = _on(action)
    return decorator


_tx_ids = itertools.count(1)


def _now() -> str:
    return datetime.now(UTC).isoformat()


class ChargePoint(cp):  # type: ignore[misc]  # the ocpp package ships no type hints
    @on(Action.boot_notification)
    async def on_boot_notification(
        self, charge_point_vendor: str, charge_point_model: str, **kwargs: Any
    ) -> call_result.BootNotification:
        return call_result.BootNotification(
            current_time=_now(), interval=60, status=RegistrationStatus.accepted
        )

    @on(Action.heartbeat)
    async def on_heartbeat(self) -> call_result.Heartbeat:
        return call_result.Heartbeat(current_time=_now())

    @on(Action.status_notification)
    async def on_status_notification(
        self, connector_id: int, error_code: str, status: str, **kwargs: Any
    ) -> call_result.StatusNotification:
        return call_result.StatusNotification()

    @on(Action.meter_values)
    async def on_meter_values(
        self, connector_id: int, meter_value: list[dict[str, Any]], **kwargs: Any
    ) -> call_result.MeterValues:
        return call_result.MeterValues()

    @on(Action.authorize)
    async def on_authorize(self, id_tag: str) -> call_result.Authorize:
        return call_result.Authorize(id_tag_info={"status": AuthorizationStatus.accepted})

    @on(Action.start_transaction)
    async def on_start_transaction(
        self, connector_id: int, id_tag: str, meter_start: int, timestamp: str, **kwargs: Any
    ) -> call_result.StartTransaction:
        return call_result.StartTransaction(
            transaction_id=next(_tx_ids), id_tag_info={"status": AuthorizationStatus.accepted}
        )

    @on(Action.stop_transaction)
    async def on_stop_transaction(
        self, meter_stop: int, timestamp: str, transaction_id: int, **kwargs: Any
    ) -> call_result.StopTransaction:
        return call_result.StopTransaction()


async def on_connect(websocket: ServerConnection) -> None:
    """As in the ocpp README: check the subprotocol, then run a ChargePoint."""
    requested = (
        websocket.request.headers.get("Sec-WebSocket-Protocol") if websocket.request else None
    )
    if not requested or websocket.subprotocol is None:
        log.info("client offered no matching subprotocol (%s): closing", requested)
        await websocket.close()
        return
    path = websocket.request.path if websocket.request else "/"
    charge_point_id = path.strip("/").rsplit("/", 1)[-1]
    charge_point = ChargePoint(charge_point_id, websocket)
    with contextlib.suppress(websockets.exceptions.ConnectionClosed):
        await charge_point.start()


if __name__ == "__main__":
    args = server_args(__doc__)
    asyncio.run(serve_until_signal(on_connect, args.host, args.port, "reference central system"))
