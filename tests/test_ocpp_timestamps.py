"""Timestamps the schemas' date-time format lets through but ``datetime``
cannot read: a leap second is read as the last microsecond of its minute, and
non-ASCII digits get PropertyConstraintViolation naming the field, not an
InternalError (gateway/ocpp/handlers.py, ``parse_time``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select
from structlog.testing import capture_logs

from gateway.app import Gateway
from gateway.ocpp.handlers import iso, parse_time
from gateway.storage.meter import samples_of
from gateway.storage.models import MeterReading
from protocol.ocpp import ErrorCode, OcppError
from tests.support.gateway import api_client, flushed, running_gateway
from tests.support.ocpp_client import ChargePoint
from tests.support.ocpp_client import OcppError as CallError

AC = "44200000010000100001"
FULLWIDTH = "２０２６-12-04T08:00:00Z"  # accepted by fastjsonschema's \d pattern


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-31T23:59:60Z", datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
        ("2026-12-31T23:59:60.5+00:00", datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
        ("2027-01-01T07:59:60+08:00", datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
        ("2026-12-04T08:00:00+0100", datetime(2026, 12, 4, 7, 0, tzinfo=UTC)),
        ("2026-12-04t08:00:00.123z", datetime(2026, 12, 4, 8, 0, 0, 123000, tzinfo=UTC)),
    ],
)
def test_readable_times(text: str, expected: datetime) -> None:
    assert parse_time(text) == expected


@pytest.mark.parametrize("text", [FULLWIDTH, "2026-12-04T08:00:61Z", "2026-12-04T08:60:60Z"])
def test_unreadable_times_name_the_field(text: str) -> None:
    with pytest.raises(OcppError) as exc:
        parse_time(text, "meterValue[1].timestamp")
    assert exc.value.error_code is ErrorCode.PropertyConstraintViolation
    assert exc.value.details == {
        "field": "meterValue[1].timestamp",
        "rule": "format",
        "value": text,
    }


@pytest.fixture
async def gw(database_url: str) -> AsyncIterator[Gateway]:
    async with running_gateway(database_url) as g:
        yield g


def _mv(at: str, wh: int) -> dict[str, object]:
    return {"timestamp": at, "sampledValue": [{"value": str(wh), "unit": "Wh"}]}


async def test_a_charger_gets_a_clear_error_and_the_leap_second_is_stored(gw: Gateway) -> None:
    cp = await ChargePoint.connect(gw.ocpp_port, AC)
    await cp.boot()
    with capture_logs() as logs, pytest.raises(CallError) as exc:
        await cp.call(
            "StatusNotification",
            {
                "connectorId": 1,
                "errorCode": "NoError",
                "status": "Available",
                "timestamp": FULLWIDTH,
            },
        )
    assert exc.value.code == "PropertyConstraintViolation"
    assert exc.value.details["field"] == "timestamp"
    # Refused quietly by the direct path (no traceback), answered by the
    # receive task.
    assert [e["event"] for e in logs if e["log_level"] in ("error", "exception")] == []
    with pytest.raises(CallError) as exc:
        await cp.call(
            "MeterValues",
            {
                "connectorId": 1,
                "meterValue": [_mv("2026-12-04T08:00:00Z", 10), _mv(FULLWIDTH, 20)],
            },
        )
    assert exc.value.code == "PropertyConstraintViolation"
    assert exc.value.details["field"] == "meterValue[1].timestamp"
    # The connection goes on; a leap second is answered and stored.
    assert (
        await cp.call(
            "MeterValues", {"connectorId": 1, "meterValue": [_mv("2026-12-31T23:59:60Z", 30)]}
        )
        == {}
    )
    await flushed(gw)
    async with api_client(gw) as api:
        pile = (await api.get(f"/api/piles/{AC}")).json()
    assert pile["online"] is True
    assert gw.store is not None
    async with gw.store.sessions() as s:
        rows = (await s.execute(select(MeterReading.at, MeterReading.samples))).all()
    # One reading (the refused MeterValues stored nothing), of one sample.
    assert [(at.astimezone(UTC), [x.value for x in samples_of(text)]) for at, text in rows] == [
        (datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), ["30"])
    ]
    await cp.close()


@given(
    st.datetimes(
        min_value=datetime(2, 1, 1),
        max_value=datetime(9998, 12, 31),
        timezones=st.one_of(st.just(UTC), st.timezones()),
    )
)
def test_iso_is_isoformat_in_utc_with_milliseconds(value: datetime) -> None:
    # The fast formatting against what it replaced: UTC, microseconds
    # truncated to milliseconds, "Z" for the offset.
    expected = value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert iso(value) == expected
