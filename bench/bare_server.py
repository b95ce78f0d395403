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

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import signal
from datetime import UTC, datetime
from typing import Any

import websockets
from websockets.asyncio.server import ServerConnection

log = logging.getLogger("bare")

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


async def main(host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with websockets.serve(on_connect, host, port, subprotocols=["ocpp1.6"]):  # type: ignore[list-item]
        log.warning("bare websockets server listening on %s:%d", host, port)
        await stop.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop's event loop")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args()
    logging.basicConfig(level=args.log_level.upper())
    if args.uvloop:
        import uvloop

        uvloop.run(main(args.host, args.port))
    else:
        asyncio.run(main(args.host, args.port))
