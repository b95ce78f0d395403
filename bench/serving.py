"""What bench/reference_server.py and bench/bare_server.py share: the command
line and a websockets server (subprotocol ``ocpp1.6``) that runs until
SIGTERM / SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

import websockets
from websockets.asyncio.server import ServerConnection

Handler = Callable[[ServerConnection], Awaitable[None]]


async def serve_until_signal(on_connect: Handler, host: str, port: int, what: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with websockets.serve(on_connect, host, port, subprotocols=["ocpp1.6"]):  # type: ignore[list-item]
        logging.getLogger(what.split()[0]).warning("%s listening on %s:%d", what, host, port)
        await stop.wait()


def server_args(doc: str, *, uvloop: bool = False) -> argparse.Namespace:
    """``--host``, ``--port``, ``--log-level`` (and ``--uvloop``), parsed,
    with logging set up at that level."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    if uvloop:
        parser.add_argument("--uvloop", action="store_true", help="run on uvloop's event loop")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args()
    logging.basicConfig(level=args.log_level.upper())
    return args
