"""Cloud-board (CBP/1) adapter: the TCP listener, one connection per charger,
the same domain model as OCPP (docs/cloudboard.md, "Gateway behaviour").

``CbpServer`` is the gateway extension (``gateway.extensions.build``);
``CbpConnection`` implements ``gateway.registry.PileConnection`` and offers
``request(message)`` to the engines that speak CBP/1 directly.
"""

from __future__ import annotations

from .common import CHARGER_UTC_OFFSET, LOGIN_TIMEOUT, MAX_CONSECUTIVE_BAD, PROTOCOL
from .connection import CbpConnection
from .server import CbpServer

__all__ = [
    "CHARGER_UTC_OFFSET",
    "LOGIN_TIMEOUT",
    "MAX_CONSECUTIVE_BAD",
    "PROTOCOL",
    "CbpConnection",
    "CbpServer",
]
