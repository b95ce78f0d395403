"""Engines that run inside the gateway process next to the charger adapters
(firmware tasks, whitelist sync): started after the listeners' services
exist, stopped before the write queue is flushed, each with its own ops API
routes and pile observers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from fastapi import APIRouter

    from .api import ApiContext
    from .commands import CommandService
    from .services import Services


class Extension(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def router(self, ctx: ApiContext, dependencies: list[Any]) -> APIRouter | None: ...


def build(services: Services, commands: CommandService) -> list[Extension]:
    """Every extension of this build, in start order. Each one that observes
    piles registers itself with ``services.observers``."""
    from .firmware_service import FirmwareService
    from .whitelist_service import WhitelistService

    extensions: list[Extension] = [WhitelistService(services, commands)]

    extensions.append(FirmwareService(services, commands))
    from .cloudboard import CbpServer

    extensions.append(CbpServer(services, commands))
    return extensions
