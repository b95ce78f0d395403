from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.app import Gateway
from tests.support.gateway import api_client, flushed, running_gateway
from tests.support.ocpp_client import ChargePoint

AC = "44200000010000100001"
DC = "44030800010000200005"


@pytest.fixture
async def gw(database_url: str) -> AsyncIterator[Gateway]:
    async with running_gateway(database_url) as g:
        yield g


async def test_boot_and_heartbeat(gw: Gateway) -> None:
    cp = await ChargePoint.connect(gw.ocpp_port, AC)
    boot = await cp.boot(firmwareVersion="DLH_XD32E_201110002", iccid="89860000000000000000")
    assert boot["status"] == "Accepted" and boot["interval"] == 60
    hb = await cp.call("Heartbeat", {})
    assert hb["currentTime"].endswith("Z")
    await flushed(gw)
    async with api_client(gw) as api:
        pile = (await api.get(f"/api/piles/{AC}")).json()
    assert pile["online"] is True and pile["vendor"] == "DLH" and pile["model"] == "XD32E"
    assert pile["firmware_version"] == "DLH_XD32E_201110002"
    assert pile["iccid"] == "89860000000000000000" and pile["boot_count"] == 1
    assert pile["protocol"] == "ocpp1.6" and pile["presence"]["connected_here"] is True
    assert pile["last_seen"] is not None
    await cp.close()
