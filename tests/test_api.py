from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.app import Gateway
from gateway.config import load_settings

TOKEN = "test-token-123"


@pytest.fixture
async def gateway(database_url: str) -> AsyncIterator[Gateway]:
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
        }
    )
    gw = Gateway(settings)
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop()


@pytest.fixture
async def client(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{gateway.api_port}",
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as c:
        yield c


async def test_health_ready_metrics_need_no_token(gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.api_port}") as c:
        assert (await c.get("/healthz")).json() == {"status": "ok"}
        ready = await c.get("/readyz")
        assert ready.status_code == 200 and ready.json()["database"] == "ok"
        metrics = await c.get("/metrics")
        assert metrics.status_code == 200
        assert "pilegate_database_ready 1.0" in metrics.text


async def test_api_requires_the_bearer_token(gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.api_port}") as c:
        missing = await c.get("/api/piles")
        assert missing.status_code == 401
        assert missing.json()["error"]["message"].startswith("missing bearer token")
        wrong = await c.get("/api/piles", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "unauthorized"


async def test_openapi_document(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    for path in ("/api/pileid/{text}", "/api/piles", "/api/piles/{pile_id}", "/healthz"):
        assert path in doc["paths"]


async def test_explain_pile_id(client: httpx.AsyncClient) -> None:
    ok = (await client.get("/api/pileid/44030800010000200005")).json()
    assert ok["valid"] is True
    bad = (await client.get("/api/pileid/4420000001100001")).json()
    assert bad["valid"] is False
    assert [e["rule"] for e in bad["errors"]] == ["length"]
    assert "16" in bad["errors"][0]["message"]


async def test_register_list_get_pile(client: httpx.AsyncClient) -> None:
    created = await client.post(
        "/api/piles", json={"pile_id": "44200000010000100001", "vendor": "DLH", "model": "XD32E"}
    )
    assert created.status_code == 201, created.text
    assert created.json()["kind"] == "AC" and created.json()["region_code"] == "442000"
    dup = await client.post("/api/piles", json={"pile_id": "44200000010000100001"})
    assert dup.status_code == 409 and dup.json()["error"]["code"] == "pile_exists"

    listed = (await client.get("/api/piles", params={"kind": "AC"})).json()
    assert listed["total"] == 1 and listed["items"][0]["pile_id"] == "44200000010000100001"
    assert (await client.get("/api/piles", params={"kind": "DC"})).json()["total"] == 0

    detail = (await client.get("/api/piles/44200000010000100001")).json()
    assert detail["model"] == "XD32E" and detail["online"] is False
    assert detail["pile_id_explained"]["valid"] is True
    events = await client.get("/api/piles/44200000010000100001/events")
    assert events.status_code == 200 and events.json() == []


async def test_errors_name_what_is_wrong(client: httpx.AsyncClient) -> None:
    bad = await client.post("/api/piles", json={"pile_id": "31010400050000500011"})
    assert bad.status_code == 400
    body = bad.json()["error"]
    assert body["code"] == "invalid_pile_id"
    assert [p["rule"] for p in body["problems"]] == ["kind_unknown"]
    assert "05" in body["message"]

    unknown = await client.get("/api/piles/44030800010000200005")
    assert unknown.status_code == 404 and "not registered" in unknown.json()["error"]["message"]
    invalid = await client.get("/api/piles/4420000001100001")
    assert invalid.status_code == 400

    missing_field = await client.post("/api/piles", json={"vendor": "x"})
    assert missing_field.status_code == 422
    assert "body.pile_id" in missing_field.json()["error"]["message"]
    bad_query = await client.get("/api/piles", params={"kind": "XX"})
    assert bad_query.status_code == 422 and "query.kind" in bad_query.json()["error"]["message"]
    nowhere = await client.get("/api/nowhere")
    assert nowhere.status_code == 404 and "/api/nowhere" in nowhere.json()["error"]["message"]


async def test_rejections_are_counted(client: httpx.AsyncClient) -> None:
    await client.post("/api/piles", json={"pile_id": "4420000001100001"})
    text = (await client.get("/metrics")).text
    assert 'pilegate_pileid_rejections_total{rule="length",source="api"} 1.0' in text
