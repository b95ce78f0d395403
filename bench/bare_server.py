"""Bare baseline for the benchmarks: a ``websockets`` server answering with ``json``.

The issue's third reference figure (about 23,000 mixed messages/s on its
machine, about 42,000 with uvloop): every CALL is read with ``json.loads``
and answered with a CALLRESULT built with ``json.dumps``, no schema
validation, no persistence, no pile ID checks. It is not a central system;
it shows what the machine does with websockets alone, so that a run on a
slower or busier machine than the issue's can be read against the same
baseline measured in the same run (docs/benchmarks.md, "Against the issue's
figures").

    .venv/bin/python bench/bare_server.py [--host 127.0.0.1] [--port 9100] [--uvloop]

Stops on SIGTERM / SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from datetime import UTC, datetime
from typing import Any

import websockets
from serving import serve_until_signal, server_args
from websockets.asyncio.server import ServerConnection

_tx_ids = itertools.count(1)


def _now() -> str:
    return datetime.now(UTC).isoformat()


def answer(action: str) -> dict[str, Any]:
    """The CALLRESULT payload of ``action``: what the load generator's
    messages need to go on (BootNotification Accepted), nothing checked."""
    if action == "Heartbeat":
        return {"currentTime": _now()}
    if action == "BootNotification":
        return {"status": "Accepted", "currentTime": _now(), "interval": 60}
    if action == "Authorize":
        return {"idTagInfo": {"status": "Accepted"}}
    if action == "StartTransaction":
        return {"transactionId": next(_tx_ids), "idTagInfo": {"status": "Accepted"}}
    return {}


async def on_connect(websocket: ServerConnection) -> None:
    with contextlib.suppress(websockets.exceptions.ConnectionClosed):
        async for message in websocket:
            call = json.loads(message)
            await websocket.send(json.dumps([3, call[1], answer(call[2])]))


if __name__ == "__main__":
    args = server_args(__doc__, uvloop=True)
    main = serve_until_signal(on_connect, args.host, args.port, "bare websockets server")
    if args.uvloop:
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)
