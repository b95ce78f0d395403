"""sessions.charging: authorization verdicts, auth method, offline detection, energy (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sessions.charging import (
    AuthMethod,
    AuthStatus,
    TokenStatus,
    TokenType,
    TokenView,
    auth_method,
    authorize,
    energy_wh,
    started_offline,
)

NOW = datetime(2024, 6, 1, 12, 0, 0, tzinfo=UTC)
US = timedelta(microseconds=1)
ANY_EXPIRY = [None, NOW + timedelta(days=1), NOW - timedelta(days=1)]


def token(
    status: TokenStatus = TokenStatus.ACCEPTED,
    *,
    type_: TokenType = TokenType.CARD,
    expiry: datetime | None = None,
    parent: str | None = None,
) -> TokenView:
    return TokenView(
        id_tag="04A2B3C4", type=type_, status=status, expiry=expiry, parent_id_tag=parent
    )


# --- authorize -----------------------------------------------------------------------
def test_unknown_token_is_invalid() -> None:
    assert authorize(None, NOW) is AuthStatus.INVALID


def test_accepted_token_without_expiry_is_accepted() -> None:
    assert authorize(token(), NOW) is AuthStatus.ACCEPTED


@pytest.mark.parametrize(
    ("expiry", "expected"),
    [
        (NOW + timedelta(days=365), AuthStatus.ACCEPTED),
        (NOW + US, AuthStatus.ACCEPTED),  # one microsecond left: still valid
        (NOW, AuthStatus.EXPIRED),  # the boundary: expiry == now is Expired
        (NOW - US, AuthStatus.EXPIRED),
        (NOW - timedelta(days=1), AuthStatus.EXPIRED),
    ],
    ids=["next-year", "now+1us", "now", "now-1us", "yesterday"],
)
def test_expiry_boundary(expiry: datetime, expected: AuthStatus) -> None:
    assert authorize(token(expiry=expiry), NOW) is expected


def test_expiry_is_compared_as_an_instant_whatever_the_offset() -> None:
    beijing = timezone(timedelta(hours=8))
    same_instant = NOW.astimezone(beijing)
    assert authorize(token(expiry=same_instant), NOW) is AuthStatus.EXPIRED
    assert authorize(token(expiry=same_instant + US), NOW) is AuthStatus.ACCEPTED


@pytest.mark.parametrize("expiry", ANY_EXPIRY, ids=["none", "future", "past"])
def test_blocked_wins_over_any_expiry(expiry: datetime | None) -> None:
    assert authorize(token(TokenStatus.BLOCKED, expiry=expiry), NOW) is AuthStatus.BLOCKED


@pytest.mark.parametrize("expiry", ANY_EXPIRY, ids=["none", "future", "past"])
def test_expired_status_is_expired_even_with_a_future_expiry(expiry: datetime | None) -> None:
    assert authorize(token(TokenStatus.EXPIRED, expiry=expiry), NOW) is AuthStatus.EXPIRED


@pytest.mark.parametrize("type_", list(TokenType))
def test_verdict_does_not_depend_on_the_token_type(type_: TokenType) -> None:
    assert authorize(token(type_=type_), NOW) is AuthStatus.ACCEPTED
    assert authorize(token(TokenStatus.BLOCKED, type_=type_), NOW) is AuthStatus.BLOCKED
    assert authorize(token(type_=type_, expiry=NOW), NOW) is AuthStatus.EXPIRED


def test_parent_id_tag_does_not_change_the_verdict() -> None:
    assert authorize(token(parent="GROUP1"), NOW) is AuthStatus.ACCEPTED


def test_every_token_status_has_a_verdict() -> None:
    verdicts = {status: authorize(token(status), NOW) for status in TokenStatus}
    assert verdicts == {
        TokenStatus.ACCEPTED: AuthStatus.ACCEPTED,
        TokenStatus.BLOCKED: AuthStatus.BLOCKED,
        TokenStatus.EXPIRED: AuthStatus.EXPIRED,
    }
    # ConcurrentTx is the caller's verdict (another pile holds an active
    # transaction of the token); authorize() itself never gives it.
    assert AuthStatus.CONCURRENT_TX not in verdicts.values()


def test_auth_status_values_are_the_ocpp_spelling() -> None:
    assert [s.value for s in AuthStatus] == [
        "Accepted",
        "Blocked",
        "Expired",
        "Invalid",
        "ConcurrentTx",
    ]


@given(
    status=st.sampled_from(TokenStatus),
    offset=st.one_of(st.none(), st.integers(-(10**9), 10**9)),
)
def test_authorize_matches_its_rules(status: TokenStatus, offset: int | None) -> None:
    expiry = None if offset is None else NOW + timedelta(microseconds=offset)
    verdict = authorize(token(status, expiry=expiry), NOW)
    if status is TokenStatus.BLOCKED:
        assert verdict is AuthStatus.BLOCKED
    elif status is TokenStatus.EXPIRED or (offset is not None and offset <= 0):
        assert verdict is AuthStatus.EXPIRED
    else:
        assert verdict is AuthStatus.ACCEPTED


# --- auth_method -----------------------------------------------------------------------
@pytest.mark.parametrize("tok", [None, *(token(type_=t) for t in TokenType)])
def test_remote_start_wins(tok: TokenView | None) -> None:
    assert auth_method(tok, remote_started=True) is AuthMethod.REMOTE


@pytest.mark.parametrize(
    ("type_", "expected"),
    [
        (TokenType.CARD, AuthMethod.CARD),
        (TokenType.VIN, AuthMethod.VIN),
        (TokenType.PASSWORD, AuthMethod.PASSWORD),
    ],
)
def test_token_type_gives_the_method(type_: TokenType, expected: AuthMethod) -> None:
    assert auth_method(token(type_=type_), remote_started=False) is expected


def test_every_token_type_has_a_method() -> None:
    assert {auth_method(token(type_=t), False) for t in TokenType} == {
        AuthMethod.CARD,
        AuthMethod.VIN,
        AuthMethod.PASSWORD,
    }


def test_unknown_token_is_unknown_method() -> None:
    assert auth_method(None, remote_started=False) is AuthMethod.UNKNOWN


@pytest.mark.parametrize("status", list(TokenStatus))
def test_method_ignores_the_token_status(status: TokenStatus) -> None:
    # A blocked card is still a card: the verdict is recorded separately.
    assert auth_method(token(status, type_=TokenType.VIN), False) is AuthMethod.VIN


def test_auth_method_values_are_the_stored_strings() -> None:
    assert {m.value for m in AuthMethod} == {"remote", "card", "vin", "password", "unknown"}


# --- started_offline ---------------------------------------------------------------------
TOL = timedelta(seconds=30)


@pytest.mark.parametrize(
    ("start", "expected"),
    [
        (NOW - TOL - timedelta(hours=5), True),  # hours before the connection
        (NOW - TOL - US, True),  # just beyond the tolerance
        (NOW - TOL, False),  # exactly at the tolerance: clock skew, not offline
        (NOW - TOL + US, False),
        (NOW - timedelta(seconds=1), False),
        (NOW, False),
        (NOW + timedelta(minutes=5), False),  # charger clock ahead of ours
    ],
    ids=["hours-before", "tol+1us", "tol", "tol-1us", "1s-before", "at-connect", "after"],
)
def test_started_offline_boundaries(start: datetime, expected: bool) -> None:
    assert started_offline(start, NOW, TOL) is expected


def test_zero_tolerance() -> None:
    zero = timedelta(0)
    assert started_offline(NOW, NOW, zero) is False
    assert started_offline(NOW - US, NOW, zero) is True


def test_started_offline_compares_instants_across_offsets() -> None:
    beijing = timezone(timedelta(hours=8))
    start = (NOW - TOL).astimezone(beijing)
    assert started_offline(start, NOW, TOL) is False
    assert started_offline(start - US, NOW, TOL) is True


# --- energy_wh --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("start", "stop", "expected"),
    [
        (1000, 5500, 4500),
        (0, 0, 0),
        (12345, 12345, 0),  # no energy delivered
        (0, 2**40, 2**40),  # big registers stay exact integers
        (5500, 1000, 0),  # register went backwards (meter replaced): never negative
        (2**31, 0, 0),
    ],
)
def test_energy(start: int, stop: int, expected: int) -> None:
    result = energy_wh(start, stop)
    assert result == expected
    assert type(result) is int


@given(st.integers(0, 2**53), st.integers(0, 2**53))
def test_energy_is_the_difference_or_zero(start: int, stop: int) -> None:
    result = energy_wh(start, stop)
    assert result >= 0
    assert result == (stop - start if stop >= start else 0)
