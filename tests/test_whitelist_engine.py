"""sessions.whitelist: effective lists, diffs, and the per-pile sync engine.

The engine is driven by a small adapter model (:class:`Harness`) against
simulated piles that follow the protocols' rules: :class:`OcppPile` (OCPP 1.6
§5.15 SendLocalList: each message applied on its own, Differential needs a
higher listVersion, GetLocalListVersion reports 0 for an empty list) and
:class:`CbpPile` (CBP/1 §3 0x44: parts, applied atomically at the last part,
base version checked). The harness checks the adapter-visible invariants on
every action: at most one request outstanding, none while disconnected, chunks
within the size limit, and a storage mirror fed only by RecordHeld/ForgetHeld
that always equals the engine's held record.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pileid.model import Kind
from sessions.charging import TokenStatus, TokenType
from sessions.tokens import TokenBinding
from sessions.whitelist import (
    CBP1_PART_SIZE,
    TRANSITIONS,
    ArmRetry,
    Assignment,
    ChangeKind,
    Entry,
    ForgetHeld,
    Held,
    PileWhitelistSync,
    QueryVersion,
    ReadConfig,
    RecordHeld,
    ReportStatus,
    RequestKind,
    SendChunk,
    SendResult,
    StatusKind,
    SyncAction,
    SyncError,
    SyncEvent,
    SyncIllegalTransition,
    SyncPolicy,
    SyncState,
    SyncStatus,
    Transport,
    UnknownRequest,
    UpdateType,
    Whitelist,
    content_hash,
    diff,
    effective_list,
    next_sync_states,
    project,
)

AC_PILE = "44200000010000100001"  # region 442000, operator 0001, AC
DC_PILE = "44030800010000200005"  # region 440308, operator 0001, DC
OTHER_OP_PILE = "44030800020000200007"  # region 440308, operator 0002, DC
BEIJING_PILE = "11010100010000100003"  # region 110101, operator 0001, AC

T0 = datetime(2025, 1, 1, tzinfo=UTC)
CST = timezone(timedelta(hours=8))  # charger local time (CBP/1 §2 TIME: UTC+8)
POLICY = SyncPolicy(retry_base=10.0, retry_factor=2.0, retry_max=60.0, failed_after=3)


def card(tag: str, status: TokenStatus = TokenStatus.ACCEPTED, **kw: object) -> Entry:
    return Entry(tag, TokenType.CARD, status, **kw)  # type: ignore[arg-type]


def cards(n: int, prefix: str = "C") -> dict[str, Entry]:
    return {f"{prefix}{i:06d}": card(f"{prefix}{i:06d}") for i in range(n)}


# ==========================================================================
# simulated piles
# ==========================================================================
@dataclass
class OcppPile:
    """A charger's local list per OCPP 1.6 (same rules as simulators/localauth.py)."""

    max_chunk: int | None = None  # SendLocalListMaxLength; None: not reported
    capacity: int | None = None  # LocalAuthListMaxLength; None: not reported
    enabled: bool = True
    version: int = 0
    entries: dict[str, Entry] = field(default_factory=dict)
    applied: int = 0
    strict_full: bool = False  # some chargers check the version on Full too

    def reported_version(self) -> int:
        if not self.enabled:
            return -1
        return self.version if self.entries else 0  # §5.10: 0 = empty

    def apply(self, chunk: SendChunk) -> SendResult:
        if not self.enabled:
            return SendResult.NOT_SUPPORTED
        if self.max_chunk is not None and len(chunk.entries) > self.max_chunk:
            return SendResult.FAILED
        tags = [c.id_tag for c in chunk.entries]
        if len(set(tags)) != len(tags):
            return SendResult.FAILED  # SendLocalList.req: idTags must be unique
        if chunk.update_type is UpdateType.FULL:
            if any(c.kind is ChangeKind.REMOVE for c in chunk.entries):
                return SendResult.FAILED
            if self.strict_full and chunk.version <= self.version:
                return SendResult.VERSION_MISMATCH
            new = {c.id_tag: c.entry for c in chunk.entries}
        else:
            if chunk.version <= self.version:
                return SendResult.VERSION_MISMATCH  # §7.47
            new = dict(self.entries)
            for c in chunk.entries:
                if c.kind is ChangeKind.REMOVE:
                    new.pop(c.id_tag, None)
                else:
                    new[c.id_tag] = c.entry
        if self.capacity is not None and len(new) > self.capacity:
            return SendResult.FAILED
        self.entries = new
        self.version = chunk.version
        self.applied += 1
        return SendResult.ACCEPTED


@dataclass
class CbpPile:
    """A cloud-board charger's whitelist per CBP/1 §3 0x44/0x43/0x47."""

    capacity: int = 100_000
    version: int = 0
    entries: dict[str, Entry] = field(default_factory=dict)
    assembly: list[SendChunk] = field(default_factory=list)
    applied: int = 0

    def apply(self, chunk: SendChunk) -> SendResult:
        if len(chunk.entries) > CBP1_PART_SIZE:
            return SendResult.FAILED
        if chunk.part == 0:
            self.assembly = [chunk]  # a part 0 starts a new update
        elif (
            not self.assembly
            or self.assembly[-1].part != chunk.part - 1
            or self.assembly[-1].version != chunk.version
        ):
            self.assembly = []
            return SendResult.FAILED
        else:
            self.assembly.append(chunk)
        if not chunk.last:
            return SendResult.ACCEPTED
        parts, self.assembly = self.assembly, []
        if chunk.update_type is UpdateType.DIFFERENTIAL and chunk.base_version != self.version:
            return SendResult.VERSION_MISMATCH
        new = {} if chunk.update_type is UpdateType.FULL else dict(self.entries)
        for part in parts:
            for c in part.entries:
                if c.kind is ChangeKind.REMOVE:
                    new.pop(c.id_tag, None)
                else:
                    new[c.id_tag] = c.entry
        if len(new) > self.capacity:
            return SendResult.CAPACITY_EXCEEDED
        self.entries = new
        self.version = chunk.version
        self.applied += 1
        return SendResult.ACCEPTED


Pile = OcppPile | CbpPile


def make_pile(transport: Transport, **kw: object) -> Pile:
    return OcppPile(**kw) if transport is Transport.OCPP16 else CbpPile(**kw)  # type: ignore[arg-type]


# ==========================================================================
# the adapter model
# ==========================================================================
class Harness:
    """Executes the engine's actions against a pile, as the gateway adapter would."""

    def __init__(
        self,
        transport: Transport,
        pile: Pile | None = None,
        *,
        policy: SyncPolicy = POLICY,
        engine: PileWhitelistSync | None = None,
        mirror: dict[str, Entry] | None = None,
    ) -> None:
        self.transport = transport
        self.pile = pile if pile is not None else make_pile(transport)
        self.engine = engine if engine is not None else PileWhitelistSync(transport, policy)
        self.now = 0.0
        self.linked = False
        self.pending: ReadConfig | QueryVersion | SendChunk | None = None
        self.sent: list[SendChunk] = []
        self.statuses: list[SyncStatus] = []
        self.retries: list[float] = []
        self.mirror: dict[str, Entry] | None = mirror
        self.mirror_version: int | None = None
        self.mirror_list_version: int | None = None
        self.log: list[SyncAction] = []
        self.last_ocpp_version = 0
        self.stale: list[tuple[int, SendResult]] = []

    # --- feeding -------------------------------------------------------
    def feed(self, actions: list[SyncAction]) -> list[SyncAction]:
        for action in actions:
            self.log.append(action)
            if isinstance(action, ReadConfig | QueryVersion | SendChunk):
                assert self.linked, f"{action} issued to a disconnected pile"
                assert self.pending is None, f"{action} while {self.pending} is in flight"
                self.pending = action
            if isinstance(action, SendChunk):
                self.check_chunk(action)
                self.sent.append(action)
            elif isinstance(action, ReportStatus):
                self.statuses.append(action.status)
            elif isinstance(action, ArmRetry):
                self.retries.append(action.at)
            elif isinstance(action, RecordHeld):
                if action.replace or self.mirror is None:
                    assert action.replace or self.mirror is not None
                    self.mirror = {}
                for tag in action.removals:
                    del self.mirror[tag]
                for entry in action.upserts:
                    self.mirror[entry.id_tag] = entry
                self.mirror_version = action.version
                self.mirror_list_version = action.list_version
            elif isinstance(action, ForgetHeld):
                self.mirror = None
                self.mirror_version = self.mirror_list_version = None
        held = self.engine.held()
        if held is None:
            assert self.mirror is None
        else:
            assert self.mirror == dict(held.entries)
            assert self.mirror_version == held.version
            assert self.mirror_list_version == held.list_version
        assert self.engine.is_connected == self.linked
        in_flight = self.engine.in_flight
        if self.pending is None:
            assert in_flight is None
        else:
            assert in_flight is not None and in_flight.request_id == self.pending.request_id
        return actions

    def check_chunk(self, chunk: SendChunk) -> None:
        assert chunk.last == (chunk.part == chunk.parts - 1)
        if self.transport is Transport.CBP1:
            assert len(chunk.entries) <= CBP1_PART_SIZE
            assert chunk.base_version == 0 or chunk.update_type is UpdateType.DIFFERENTIAL
        else:
            size = self.engine.snapshot().max_chunk or POLICY.default_max_chunk
            assert len(chunk.entries) <= size
            # Every SendLocalList carries a listVersion above all before it.
            assert chunk.version > self.last_ocpp_version
            self.last_ocpp_version = chunk.version
            # Full only as the first message of a sync (1.6 has no multi-part).
            if chunk.update_type is UpdateType.FULL:
                assert chunk.part == 0
        assert chunk.version >= 1
        assert len({c.id_tag for c in chunk.entries}) == len(chunk.entries)

    # --- events ----------------------------------------------------------
    def connect(self) -> list[SyncAction]:
        self.linked = True
        return self.feed(self.engine.connected(self.now))

    def disconnect(self) -> list[SyncAction]:
        self.linked = False
        self.pending = None
        return self.feed(self.engine.disconnected(self.now))

    def desire(self, version: int, content: Mapping[str, Entry]) -> list[SyncAction]:
        return self.feed(self.engine.desired_changed(version, content, self.now))

    def force(self) -> list[SyncAction]:
        return self.feed(self.engine.force_resync(self.now))

    def tick(self, to: float) -> list[SyncAction]:
        self.now = max(self.now, to)
        return self.feed(self.engine.retry_due(self.now))

    def answer(self, result: SendResult | None = None) -> list[SyncAction]:
        """Deliver the pile's answer to the pending request (``result`` overrides a send's)."""
        request, self.pending = self.pending, None
        assert request is not None
        pile = self.pile
        if isinstance(request, ReadConfig):
            assert isinstance(pile, OcppPile)
            return self.feed(
                self.engine.config_read(request.request_id, pile.max_chunk, pile.capacity, self.now)
            )
        if isinstance(request, QueryVersion):
            if isinstance(pile, OcppPile):
                return self.feed(
                    self.engine.version_reported(
                        request.request_id, pile.reported_version(), self.now
                    )
                )
            return self.feed(
                self.engine.version_reported(
                    request.request_id,
                    pile.version,
                    self.now,
                    held_count=len(pile.entries),
                    capacity=pile.capacity,
                )
            )
        outcome = pile.apply(request) if result is None else result
        return self.feed(self.engine.send_result(request.request_id, outcome, self.now))

    def timeout(self, *, applied: bool = False) -> list[SyncAction]:
        request, self.pending = self.pending, None
        assert request is not None
        if isinstance(request, SendChunk):
            outcome = self.pile.apply(request) if applied else SendResult.ACCEPTED
            self.stale.append((request.request_id, outcome))
        return self.feed(self.engine.send_timeout(request.request_id, self.now))

    def run(self, *, limit: int = 100_000) -> None:
        """Answer everything, waiting out backoffs, until the engine has nothing to do."""
        for _ in range(limit):
            if not self.linked:
                self.connect()
            elif self.pending is not None:
                self.answer()
            elif self.engine.state is SyncState.WAITING:
                at = self.engine.snapshot().next_retry_at
                assert at is not None
                self.tick(at)
            else:
                return
        raise AssertionError("the engine did not settle")

    # --- views -----------------------------------------------------------
    def chunks(self, start: int = 0) -> list[SendChunk]:
        return self.sent[start:]


def assert_converged(h: Harness, desired: Mapping[str, Entry]) -> None:
    assert h.engine.state is SyncState.IDLE
    assert h.engine.status == SyncStatus(StatusKind.IN_SYNC)
    assert h.pile.entries == project(h.transport, desired)
    held = h.engine.held()
    assert held is not None and dict(held.entries) == project(h.transport, desired)
    snap = h.engine.snapshot()
    assert snap.differences == (0, 0, 0)
    assert snap.held_list_version == snap.desired_version


def synced(
    transport: Transport, content: Mapping[str, Entry], version: int = 1, **pile: object
) -> Harness:
    h = Harness(transport, make_pile(transport, **pile))
    h.desire(version, content)
    h.run()
    assert_converged(h, content)
    return h


# ==========================================================================
# effective lists
# ==========================================================================
def test_assignment_by_pile_operator_region_and_kind() -> None:
    assert Assignment(pile_ids=frozenset({AC_PILE})).matches(AC_PILE)
    assert not Assignment(pile_ids=frozenset({AC_PILE})).matches(DC_PILE)
    by_operator = Assignment(operators=frozenset({"0001"}))
    assert by_operator.matches(AC_PILE) and by_operator.matches(DC_PILE)
    assert not by_operator.matches(OTHER_OP_PILE)
    shenzhen = Assignment(region_prefixes=frozenset({"4403"}))
    assert shenzhen.matches(DC_PILE) and not shenzhen.matches(AC_PILE)
    dc = Assignment(kinds=frozenset({Kind.DC}))
    assert dc.matches(DC_PILE) and dc.matches(OTHER_OP_PILE) and not dc.matches(AC_PILE)


def test_assignment_filters_combine_with_and() -> None:
    dc_of_0001 = Assignment(operators=frozenset({"0001"}), kinds=frozenset({Kind.DC}))
    assert dc_of_0001.matches(DC_PILE)
    assert not dc_of_0001.matches(AC_PILE)  # AC
    assert not dc_of_0001.matches(OTHER_OP_PILE)  # operator 0002
    guangdong_ac = Assignment(region_prefixes=frozenset({"44"}), kinds=frozenset({Kind.AC}))
    assert guangdong_ac.matches(AC_PILE) and not guangdong_ac.matches(BEIJING_PILE)


def test_empty_assignment_matches_nothing_and_every_pile_is_both_kinds() -> None:
    assert not Assignment().matches(AC_PILE)
    everywhere = Assignment(kinds=frozenset({Kind.AC, Kind.DC}))
    assert all(everywhere.matches(p) for p in (AC_PILE, DC_PILE, OTHER_OP_PILE, BEIJING_PILE))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"pile_ids": frozenset({"123"})},
        {"operators": frozenset({"01"})},
        {"region_prefixes": frozenset({""})},
        {"region_prefixes": frozenset({"4403081"})},
    ],
)
def test_assignment_validates(kwargs: dict[str, frozenset[str]]) -> None:
    with pytest.raises(ValueError):
        Assignment(**kwargs)  # type: ignore[arg-type]


def test_entry_validates() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        Entry("A", TokenType.CARD, expiry=datetime(2030, 1, 1))
    with pytest.raises(ValueError):
        Entry("", TokenType.CARD)
    assert Entry("A", "card").type is TokenType.CARD  # type: ignore[arg-type]


def _list(name: str, entries: list[Entry], *assignments: Assignment) -> Whitelist:
    return Whitelist(
        name, tuple(entries), assignments or (Assignment(operators=frozenset({"0001"})),)
    )


def test_effective_list_is_the_union_of_assigned_lists() -> None:
    staff = _list("staff", [card("S1"), card("S2")])
    dc_only = _list("dc", [card("D1")], Assignment(kinds=frozenset({Kind.DC})))
    elsewhere = _list("other", [card("X1")], Assignment(operators=frozenset({"0002"})))
    result = effective_list(DC_PILE, [staff, dc_only, elsewhere])
    assert list(result.entries) == ["D1", "S1", "S2"]
    assert result.lists == ("dc", "staff")
    assert result.sources["S1"] == ("staff",)
    ac = effective_list(AC_PILE, [staff, dc_only, elsewhere])
    assert list(ac.entries) == ["S1", "S2"]
    assert effective_list(AC_PILE, []).entries == {}


def test_effective_list_filters_by_token_binding() -> None:
    lists = [_list("fleet", [card("VIN1"), card("VIN2"), card("FREE")])]
    bindings = {
        "VIN1": TokenBinding.of(pile_ids=[AC_PILE]),  # a VIN bound to one test pile
        "VIN2": TokenBinding.of(operators=["0002"]),
    }
    assert list(effective_list(AC_PILE, lists, bindings).entries) == ["FREE", "VIN1"]
    assert list(effective_list(DC_PILE, lists, bindings).entries) == ["FREE"]


@pytest.mark.parametrize("reverse", [False, True])
def test_conflict_rule_blocked_beats_expired_beats_accepted(reverse: bool) -> None:
    a = _list("a", [card("T1"), card("T2", TokenStatus.EXPIRED), card("T3")])
    b = _list("b", [card("T1", TokenStatus.BLOCKED), card("T2"), card("T3", TokenStatus.EXPIRED)])
    lists = [b, a] if reverse else [a, b]
    entries = effective_list(AC_PILE, lists).entries
    assert entries["T1"].status is TokenStatus.BLOCKED
    assert entries["T2"].status is TokenStatus.EXPIRED
    assert entries["T3"].status is TokenStatus.EXPIRED
    assert effective_list(AC_PILE, lists).sources["T1"] == ("a", "b")


def test_conflict_rule_earlier_expiry_then_list_name() -> None:
    soon, later = T0 + timedelta(days=1), T0 + timedelta(days=30)
    a = _list("a", [card("T1", expiry=later), card("T2", parent_id_tag="PA")])
    b = _list("b", [card("T1", expiry=soon), card("T2", parent_id_tag="PB")])
    for lists in ([a, b], [b, a]):
        entries = effective_list(AC_PILE, lists).entries
        assert entries["T1"].expiry == soon
        assert entries["T2"].parent_id_tag == "PA"  # tie: list "a" sorts first


def test_same_token_in_two_spellings_is_one_entry() -> None:
    # OCPP IdTokens are case-insensitive; two spellings in one SendLocalList
    # would be duplicates.
    a = _list("a", [card("abc1")])
    b = _list("b", [card("ABC1", TokenStatus.BLOCKED)])
    entries = effective_list(AC_PILE, [a, b]).entries
    assert list(entries) == ["ABC1"] and entries["ABC1"].status is TokenStatus.BLOCKED


def test_duplicate_list_names_raise() -> None:
    with pytest.raises(ValueError, match="named"):
        effective_list(AC_PILE, [_list("a", []), _list("a", [])])


def test_expiry_with_now_and_next_expiry() -> None:
    lst = _list(
        "a",
        [
            card("GONE", expiry=T0 - timedelta(hours=1)),
            card("SOON", expiry=T0 + timedelta(hours=2)),
            card("LATER", expiry=T0 + timedelta(days=2)),
            card("BLOCKED", TokenStatus.BLOCKED, expiry=T0 + timedelta(hours=1)),
        ],
    )
    result = effective_list(AC_PILE, [lst], now=T0)
    assert result.entries["GONE"].status is TokenStatus.EXPIRED
    assert result.entries["SOON"].status is TokenStatus.ACCEPTED
    assert result.next_expiry == T0 + timedelta(hours=2)
    later = effective_list(AC_PILE, [lst], now=T0 + timedelta(hours=3))
    assert later.entries["SOON"].status is TokenStatus.EXPIRED
    assert later.content_hash != result.content_hash  # so storage bumps the version
    timeless = effective_list(AC_PILE, [lst])
    assert timeless.entries["GONE"].status is TokenStatus.ACCEPTED  # the charger decides
    with pytest.raises(ValueError):
        effective_list(AC_PILE, [lst], now=datetime(2025, 1, 1))


def test_content_hash_is_stable_and_order_independent() -> None:
    entries = {"A": card("A"), "B": card("B", TokenStatus.BLOCKED, expiry=T0)}
    reordered = {"B": entries["B"], "A": entries["A"]}
    assert content_hash(entries) == content_hash(reordered)
    other_tz = {
        "A": entries["A"],
        "B": card("B", TokenStatus.BLOCKED, expiry=T0.astimezone(CST)),
    }
    assert content_hash(other_tz) == content_hash(entries)  # the same instant
    assert content_hash({"A": card("A")}) != content_hash({"A": card("A", TokenStatus.BLOCKED)})
    assert content_hash({"A": card("A")}) != content_hash({"A": Entry("A", TokenType.VIN)})


def test_content_hash_pinned_value() -> None:
    # Pinned: hashes are stored, so the format must not drift between releases
    # (a drift would bump every pile's version and resend every list).
    assert content_hash({}) == "0d5ed8147e384a433300607b7c9c72debed8ce57090c6a2ddf7e94aad75e344d"
    assert content_hash({"A": card("A")}) == (
        "3142c97e9c9e35cf4710aebc1e8111db8b66379e165f45d03155b324b7c4f712"
    )


def test_diff() -> None:
    held = {"A": card("A"), "B": card("B"), "C": card("C")}
    desired = {"A": card("A"), "B": card("B", TokenStatus.BLOCKED), "D": card("D")}
    upserts, removals = diff(held, desired)
    assert [e.id_tag for e in upserts] == ["B", "D"]
    assert [e.id_tag for e in removals] == ["C"]
    assert diff(desired, desired) == ((), ())


def test_projection_for_cbp1_keeps_only_accepted_tokens() -> None:
    content = {
        "A": card("A", expiry=T0, parent_id_tag="P"),
        "B": card("B", TokenStatus.BLOCKED),
        "C": card("C", TokenStatus.EXPIRED),
        "V": Entry("V", TokenType.VIN),
    }
    assert project(Transport.OCPP16, content) == content
    assert project(Transport.CBP1, content) == {"A": card("A"), "V": Entry("V", TokenType.VIN)}
    with pytest.raises(ValueError, match="key"):
        project(Transport.OCPP16, {"X": card("A")})


# --- properties of the pure helpers --------------------------------------
TAGS = st.text("ABCDEFGH", min_size=1, max_size=2)
EXPIRIES = st.sampled_from([None, T0, T0 + timedelta(days=1)])


@st.composite
def entries_st(draw: st.DrawFn, max_size: int = 12) -> dict[str, Entry]:
    tags = draw(st.lists(TAGS, unique=True, max_size=max_size))
    return {
        t: Entry(
            t,
            draw(st.sampled_from(list(TokenType))),
            draw(st.sampled_from(list(TokenStatus))),
            draw(EXPIRIES),
            draw(st.sampled_from([None, "PARENT"])),
        )
        for t in tags
    }


@given(entries_st(), entries_st())
def test_diff_turns_held_into_desired(held: dict[str, Entry], desired: dict[str, Entry]) -> None:
    upserts, removals = diff(held, desired)
    result = dict(held)
    for e in removals:
        del result[e.id_tag]
    for e in upserts:
        result[e.id_tag] = e
    assert result == desired


@given(st.lists(entries_st(max_size=6), max_size=4), st.randoms())
def test_effective_list_does_not_depend_on_list_order(
    contents: list[dict[str, Entry]], rnd: object
) -> None:
    lists = [
        Whitelist(f"L{i}", tuple(c.values()), (Assignment(kinds=frozenset({Kind.AC})),))
        for i, c in enumerate(contents)
    ]
    shuffled = list(lists)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    shuffled = [Whitelist(w.name, tuple(reversed(w.entries)), w.assignments) for w in shuffled]
    one = effective_list(AC_PILE, lists)
    two = effective_list(AC_PILE, shuffled)
    assert one.entries == two.entries
    assert one.content_hash == two.content_hash
    assert one.sources == two.sources


# ==========================================================================
# engine: the table and the basics
# ==========================================================================
def test_table_rejects_impossible_pairs() -> None:
    with pytest.raises(SyncIllegalTransition):
        next_sync_states(SyncState.OFFLINE, SyncEvent.DISCONNECTED)
    with pytest.raises(SyncIllegalTransition):
        next_sync_states(SyncState.IDLE, SyncEvent.CONNECTED)
    # Every state accepts the gateway-side events and stale timers.
    for state in SyncState:
        for event in (SyncEvent.DESIRED_CHANGED, SyncEvent.RETRY_DUE, SyncEvent.FORCE_RESYNC):
            assert (state, event) in TRANSITIONS


def test_connect_twice_and_disconnect_twice_raise() -> None:
    engine = PileWhitelistSync(Transport.OCPP16)
    engine.connected(0.0)
    with pytest.raises(SyncIllegalTransition):
        engine.connected(1.0)
    engine.disconnected(2.0)
    with pytest.raises(SyncIllegalTransition):
        engine.disconnected(3.0)


def test_unknown_and_wrong_kind_request_ids_raise() -> None:
    engine = PileWhitelistSync(Transport.OCPP16)
    (read,) = engine.connected(0.0)
    assert isinstance(read, ReadConfig)
    with pytest.raises(UnknownRequest, match="never issued"):
        engine.config_read(99, None, None, 0.0)
    with pytest.raises(UnknownRequest, match="read_config"):
        engine.version_reported(read.request_id, 0, 0.0)


def test_stale_replies_are_ignored_and_counted() -> None:
    h = Harness(Transport.OCPP16)
    h.desire(1, cards(3))
    h.connect()
    h.answer()  # config
    h.answer()  # version 0
    chunk = h.pending
    assert isinstance(chunk, SendChunk)
    h.timeout()
    assert h.engine.send_result(chunk.request_id, SendResult.ACCEPTED, h.now) == []
    assert h.engine.snapshot().stale_replies == 1
    assert h.engine.held() is None  # a late Accepted is not trusted blindly


def test_desired_versions_must_grow_with_content() -> None:
    engine = PileWhitelistSync(Transport.OCPP16)
    engine.desired_changed(2, cards(1), 0.0)
    assert engine.desired_changed(2, cards(1), 0.0) == []  # re-delivery: no-op
    with pytest.raises(ValueError, match="different content"):
        engine.desired_changed(2, cards(2), 0.0)
    with pytest.raises(ValueError, match="backwards"):
        engine.desired_changed(1, cards(2), 0.0)
    with pytest.raises(ValueError):
        engine.desired_changed(0, cards(2), 0.0)


def test_policy_validation_and_delays() -> None:
    assert [POLICY.retry_delay(k) for k in range(1, 7)] == [10, 20, 40, 60, 60, 60]
    assert SyncPolicy().retry_delay(10_000) == 600.0  # no overflow
    with pytest.raises(ValueError):
        SyncPolicy(retry_base=0)
    with pytest.raises(ValueError):
        SyncPolicy(retry_factor=0.5)
    with pytest.raises(ValueError):
        SyncPolicy(retry_base=10, retry_max=5)
    with pytest.raises(ValueError):
        SyncPolicy(failed_after=0)


def test_now_must_be_finite() -> None:
    engine = PileWhitelistSync(Transport.CBP1)
    with pytest.raises(ValueError):
        engine.connected(math.nan)


# ==========================================================================
# engine: OCPP 1.6
# ==========================================================================
def test_ocpp_first_sync_reads_config_queries_and_sends_full() -> None:
    h = Harness(Transport.OCPP16, OcppPile(max_chunk=50, capacity=100))
    h.desire(7, cards(3))
    assert h.engine.status.kind is StatusKind.PENDING
    (read,) = h.connect()
    assert isinstance(read, ReadConfig)
    (query,) = h.answer()
    assert isinstance(query, QueryVersion)
    (chunk,) = h.answer()
    assert isinstance(chunk, SendChunk)
    assert chunk.update_type is UpdateType.FULL
    assert chunk.version == 7 and chunk.list_version == 7
    assert (chunk.part, chunk.parts, chunk.last) == (0, 1, True)
    assert {c.kind for c in chunk.entries} == {ChangeKind.ADD}
    actions = h.answer()
    assert RecordHeld(7, 7, True, tuple(cards(3).values()), ()) in actions
    assert ReportStatus(SyncStatus(StatusKind.IN_SYNC)) in actions
    assert_converged(h, cards(3))
    assert h.pile.version == 7  # the pile reports the gateway's version


@pytest.mark.parametrize(("size", "messages"), [(0, 1), (1, 1), (1000, 10), (10_000, 100)])
def test_ocpp_list_sizes_and_chunk_counts(size: int, messages: int) -> None:
    content = cards(size)
    h = synced(Transport.OCPP16, content, version=500, max_chunk=100, capacity=10_000)
    assert len(h.sent) == messages
    assert [c.part for c in h.sent] == list(range(messages))
    assert h.sent[0].update_type is UpdateType.FULL
    assert all(c.update_type is UpdateType.DIFFERENTIAL for c in h.sent[1:])
    # Nothing truncated: every entry went out exactly once.
    sent = [c.id_tag for chunk in h.sent for c in chunk.entries]
    assert sorted(sent) == sorted(content) and len(sent) == size
    # Strictly increasing versions, ending at the desired version (room: 500 >= 100).
    assert [c.version for c in h.sent] == list(range(500 - messages + 1, 501))
    assert isinstance(h.pile, OcppPile)
    assert h.pile.reported_version() == (500 if size else 0)


def test_ocpp_empty_list_is_one_full_message_and_clears_the_pile() -> None:
    pile = OcppPile(entries=cards(5), version=3)
    h = Harness(Transport.OCPP16, pile)
    h.desire(4, {})
    h.run()
    assert len(h.sent) == 1
    (chunk,) = h.sent
    assert chunk.update_type is UpdateType.FULL and chunk.entries == () and chunk.last
    assert pile.entries == {} and pile.reported_version() == 0
    assert_converged(h, {})


def test_ocpp_versions_above_everything_when_there_is_no_room() -> None:
    # Desired version 2, 1000 entries in 10 messages: versions 1..10 > floor 0.
    h = synced(Transport.OCPP16, cards(1000), version=2, max_chunk=100)
    assert [c.version for c in h.sent] == list(range(1, 11))
    snap = h.engine.snapshot()
    assert (snap.held_version, snap.held_list_version, snap.version_floor) == (10, 2, 10)
    # The next change fits one message: it gets a version above the floor.
    h.desire(3, cards(1001))
    h.run()
    assert h.sent[-1].version == 11 and h.sent[-1].update_type is UpdateType.DIFFERENTIAL
    assert_converged(h, cards(1001))
    # Storage re-aligns by allocating above the floor: versions match again.
    h.desire(h.engine.snapshot().version_floor + 1, cards(1002))
    h.run()
    assert h.sent[-1].version == h.engine.snapshot().desired_version == 12


def test_ocpp_capacity_exceeded_is_failed_and_nothing_is_sent() -> None:
    h = Harness(Transport.OCPP16, OcppPile(max_chunk=500, capacity=9_999))
    h.desire(1, cards(10_000))
    h.run()
    assert h.sent == []
    assert h.engine.status == SyncStatus(
        StatusKind.FAILED, "list has 10000 entries, pile capacity is 9999"
    )
    assert h.statuses[-1] == h.engine.status
    assert h.engine.state is SyncState.IDLE
    # A smaller list is sent at once.
    h.desire(2, cards(9_999))
    h.run()
    assert_converged(h, cards(9_999))
    assert len(h.sent) == 20


def test_ocpp_capacity_failure_shows_before_connect_once_known() -> None:
    h = synced(Transport.OCPP16, cards(5), capacity=10)
    h.disconnect()
    actions = h.desire(2, cards(11))
    assert (
        ReportStatus(SyncStatus(StatusKind.FAILED, "list has 11 entries, pile capacity is 10"))
        in actions
    )


def test_ocpp_missing_config_keys_default_chunk_and_unbounded_capacity() -> None:
    h = synced(Transport.OCPP16, cards(45))  # pile reports neither key
    assert [len(c.entries) for c in h.sent] == [20, 20, 5]
    snap = h.engine.snapshot()
    assert snap.capacity is None and snap.max_chunk is None


def test_ocpp_differential_after_in_sync() -> None:
    h = synced(Transport.OCPP16, cards(10), version=1, max_chunk=20)
    start = len(h.sent)
    desired = dict(cards(10))
    del desired["C000003"]
    desired["C000004"] = card("C000004", TokenStatus.BLOCKED)
    desired["NEW"] = card("NEW")
    h.desire(2, desired)
    h.run()
    new = h.chunks(start)
    assert len(new) == 1 and new[0].update_type is UpdateType.DIFFERENTIAL
    # Revocation first, then the removal, then the addition.
    assert [(c.kind, c.id_tag) for c in new[0].entries] == [
        (ChangeKind.UPDATE, "C000004"),
        (ChangeKind.REMOVE, "C000003"),
        (ChangeKind.ADD, "NEW"),
    ]
    assert new[0].base_version == 1 and new[0].version == 2
    assert_converged(h, desired)


def test_ocpp_new_version_with_same_content_sends_nothing() -> None:
    h = synced(Transport.OCPP16, cards(3), version=1)
    start = len(h.sent)
    actions = h.desire(2, cards(3))
    assert h.chunks(start) == []
    assert RecordHeld(1, 2, False, (), ()) in actions
    assert_converged(h, cards(3))


def test_ocpp_full_sync_puts_blocked_entries_first() -> None:
    content = cards(30)
    content["Z-BLOCKED"] = card("Z-BLOCKED", TokenStatus.BLOCKED)
    h = synced(Transport.OCPP16, content, max_chunk=10)
    assert h.sent[0].entries[0].id_tag == "Z-BLOCKED"


def test_ocpp_reconnect_with_same_version_is_differential() -> None:
    h = synced(Transport.OCPP16, cards(10), version=1, max_chunk=100)
    h.disconnect()
    h.desire(2, cards(12))
    start = len(h.sent)
    h.run()
    new = h.chunks(start)
    assert len(new) == 1 and new[0].update_type is UpdateType.DIFFERENTIAL
    assert len(new[0].entries) == 2
    assert_converged(h, cards(12))


def test_ocpp_reconnect_in_sync_sends_nothing() -> None:
    h = synced(Transport.OCPP16, cards(10), version=1)
    h.disconnect()
    start = len(h.sent)
    h.run()
    assert h.chunks(start) == []
    assert_converged(h, cards(10))


def test_ocpp_resync_after_reconnect_when_the_pile_version_differs() -> None:
    h = synced(Transport.OCPP16, cards(10), version=1)
    h.disconnect()
    # Someone (a technician, a reset) changed the pile's list while offline.
    h.pile.entries = cards(3, prefix="X")
    h.pile.version = 40
    start = len(h.sent)
    h.connect()
    h.answer()  # config
    actions = h.answer()  # version 40: unexplained
    assert any(isinstance(a, ForgetHeld) and "40" in a.reason for a in actions)
    h.run()
    new = h.chunks(start)
    assert new[0].update_type is UpdateType.FULL and new[0].version == 41
    assert_converged(h, cards(10))


def test_ocpp_pile_reset_to_empty_reports_zero_and_gets_a_full_list() -> None:
    h = synced(Transport.OCPP16, cards(10), version=1)
    h.disconnect()
    h.pile.entries = {}
    start = len(h.sent)
    h.run()
    assert h.chunks(start)[0].update_type is UpdateType.FULL
    assert_converged(h, cards(10))


def test_ocpp_version_mismatch_recovery() -> None:
    h = synced(Transport.OCPP16, cards(10), version=1)
    # The pile's version moved on without the gateway knowing, yet it still
    # reports 1 (stale report): the differential is refused.
    h.pile.version = 90
    start = len(h.sent)
    h.desire(2, cards(11))
    chunk = h.pending
    assert isinstance(chunk, SendChunk) and chunk.update_type is UpdateType.DIFFERENTIAL
    actions = h.answer()
    assert any(isinstance(a, ForgetHeld) for a in actions)
    assert isinstance(actions[-1], QueryVersion) or isinstance(h.pending, QueryVersion)
    h.run()
    new = h.chunks(start)
    assert new[1].update_type is UpdateType.FULL and new[1].version == 91
    assert_converged(h, cards(11))


def test_ocpp_failed_differential_is_followed_by_a_full_update() -> None:
    h = synced(Transport.OCPP16, cards(10), version=1)
    start = len(h.sent)
    h.desire(2, cards(11))
    h.answer(SendResult.FAILED)
    assert h.engine.state is SyncState.WAITING
    h.run()
    new = h.chunks(start)
    assert new[0].update_type is UpdateType.DIFFERENTIAL
    assert new[1].update_type is UpdateType.FULL  # §5.15
    assert_converged(h, cards(11))


def test_ocpp_disconnect_in_the_middle_of_a_chunked_sync_then_resume() -> None:
    h = Harness(Transport.OCPP16, OcppPile(max_chunk=100, capacity=5_000))
    h.desire(1000, cards(1000))
    h.connect()
    h.answer()
    h.answer()
    for _ in range(4):
        h.answer()  # chunks 1..4 confirmed
    assert isinstance(h.pending, SendChunk) and h.pending.part == 4
    assert h.engine.status.kind is StatusKind.PENDING
    held = h.engine.held()
    assert held is not None and len(held.entries) == 400 and held.list_version is None
    h.disconnect()  # chunk 5 lost on the way
    assert h.engine.status.kind is StatusKind.PENDING
    start = len(h.sent)
    h.run()
    resumed = h.chunks(start)
    # Only the missing 600 entries, differentially, from the confirmed part.
    assert len(resumed) == 6
    assert all(c.update_type is UpdateType.DIFFERENTIAL for c in resumed)
    assert resumed[0].base_version == 994
    assert sum(len(c.entries) for c in resumed) == 600
    assert_converged(h, cards(1000))
    # The lost message's version (995) is never reused: versions 996..1001.
    assert [c.version for c in resumed] == list(range(996, 1002))


def test_ocpp_disconnect_after_the_pile_applied_the_chunk_adopts_it() -> None:
    h = Harness(Transport.OCPP16, OcppPile(max_chunk=100))
    h.desire(1000, cards(1000))
    h.connect()
    h.answer()
    h.answer()
    h.answer()  # chunk 1 confirmed
    chunk = h.pending
    assert isinstance(chunk, SendChunk)
    h.pile.apply(chunk)  # applied, but the reply is lost with the link
    h.disconnect()
    start = len(h.sent)
    h.connect()
    h.answer()
    actions = h.answer()  # the pile reports chunk 2's version: in doubt -> adopted
    assert any(isinstance(a, RecordHeld) and a.version == chunk.version for a in actions)
    h.run()
    assert len(h.chunks(start)) == 8  # chunks 3..10
    assert_converged(h, cards(1000))


def test_ocpp_timeout_then_applied_is_not_resent() -> None:
    h = Harness(Transport.OCPP16, OcppPile(max_chunk=100))
    h.desire(1, cards(150))
    h.connect()
    h.answer()
    h.answer()
    h.answer()  # Full chunk
    h.timeout(applied=True)  # the differential chunk arrived; its reply did not
    start = len(h.sent)
    h.run()
    assert h.chunks(start) == []
    assert_converged(h, cards(150))


def test_ocpp_not_supported_and_disabled_are_failures_without_retry() -> None:
    h = Harness(Transport.OCPP16, OcppPile(enabled=False))
    h.desire(1, cards(3))
    h.run()
    assert h.engine.status.kind is StatusKind.FAILED
    assert "GetLocalListVersion answered -1" in (h.engine.status.reason or "")
    assert h.sent == [] and h.retries == []
    # A pile that reports a version but refuses the list.
    pile = OcppPile()
    h2 = Harness(Transport.OCPP16, pile)
    h2.desire(1, cards(3))
    h2.connect()
    h2.answer()
    h2.answer()
    h2.answer(SendResult.NOT_SUPPORTED)
    h2.run()
    assert h2.engine.status.kind is StatusKind.FAILED
    assert "NotSupported" in (h2.engine.status.reason or "")
    assert h2.retries == []
    # The next connect tries again.
    h2.disconnect()
    h2.run()
    assert_converged(h2, cards(3))


def test_ocpp_compatible_with_the_project_simulator() -> None:
    localauth = pytest.importorskip("simulators.localauth")
    sim = localauth.LocalAuthList(max_length=2_000, send_max=50)
    engine = PileWhitelistSync(Transport.OCPP16)
    actions = engine.desired_changed(3, cards(120), 0.0)
    actions = engine.connected(0.0)
    for _ in range(100):
        requests = [a for a in actions if isinstance(a, ReadConfig | QueryVersion | SendChunk)]
        if not requests:
            break
        (request,) = requests
        if isinstance(request, ReadConfig):
            actions = engine.config_read(request.request_id, sim.send_max, sim.max_length, 0.0)
        elif isinstance(request, QueryVersion):
            actions = engine.version_reported(request.request_id, sim.reported_version(), 0.0)
        else:
            items = [
                {"idTag": c.id_tag}
                if c.kind is ChangeKind.REMOVE
                else {"idTag": c.id_tag, "idTagInfo": {"status": c.entry.status.value.capitalize()}}
                for c in request.entries
            ]
            wire_type = "Full" if request.update_type is UpdateType.FULL else "Differential"
            status = sim.apply(request.version, wire_type, items)
            result = {
                "Accepted": SendResult.ACCEPTED,
                "Failed": SendResult.FAILED,
                "NotSupported": SendResult.NOT_SUPPORTED,
                "VersionMismatch": SendResult.VERSION_MISMATCH,
            }[status]
            actions = engine.send_result(request.request_id, result, 0.0)
    assert engine.status.kind is StatusKind.IN_SYNC
    assert set(sim.entries) == set(cards(120))


# ==========================================================================
# engine: CBP/1
# ==========================================================================
@pytest.mark.parametrize(("size", "parts"), [(0, 1), (1, 1), (1000, 100), (10_000, 1000)])
def test_cbp1_list_sizes_and_part_counts(size: int, parts: int) -> None:
    content = cards(size)
    h = synced(Transport.CBP1, content, version=9, capacity=10_000)
    assert len(h.sent) == parts
    assert all(c.version == 9 and c.base_version == 0 for c in h.sent)
    assert all(c.update_type is UpdateType.FULL for c in h.sent)
    assert [c.part for c in h.sent] == list(range(parts))
    assert [c.last for c in h.sent] == [False] * (parts - 1) + [True]
    assert sum(len(c.entries) for c in h.sent) == size
    # Held changes once, at the last part.
    records = [a for a in h.log if isinstance(a, RecordHeld)]
    assert len(records) == 1 and records[0].replace and len(records[0].upserts) == size


def test_cbp1_empty_full_list_clears_the_pile() -> None:
    pile = CbpPile(entries=cards(25), version=4)
    h = Harness(Transport.CBP1, pile)
    h.desire(5, {})
    h.run()
    (chunk,) = h.sent
    assert (chunk.update_type, chunk.part, chunk.parts, chunk.last) == (UpdateType.FULL, 0, 1, True)
    assert chunk.entries == () and chunk.base_version == 0
    assert pile.entries == {} and pile.version == 5
    assert_converged(h, {})


def test_cbp1_held_state_changes_only_when_the_last_part_is_accepted() -> None:
    h = Harness(Transport.CBP1, CbpPile())
    h.desire(1, cards(35))
    h.connect()
    h.answer()  # 0x47
    for _ in range(3):
        actions = h.answer()
        assert not any(isinstance(a, RecordHeld) for a in actions)
        assert h.engine.held() is None
    assert isinstance(h.pending, SendChunk) and h.pending.last
    actions = h.answer()
    assert any(isinstance(a, RecordHeld) for a in actions)
    assert_converged(h, cards(35))


def test_cbp1_differential_with_base_version() -> None:
    h = synced(Transport.CBP1, cards(30), version=1)
    start = len(h.sent)
    desired = dict(cards(30))
    for i in range(12):
        desired[f"N{i:02d}"] = card(f"N{i:02d}")
    del desired["C000000"]
    h.desire(2, desired)
    h.run()
    new = h.chunks(start)
    assert len(new) == 2  # 13 changes in parts of 10
    assert all(c.update_type is UpdateType.DIFFERENTIAL and c.base_version == 1 for c in new)
    assert new[0].entries[0].kind is ChangeKind.REMOVE
    assert new[0].entries[0].entry.type is TokenType.CARD  # removals carry the auth method
    assert_converged(h, desired)


def test_cbp1_version_only_change_is_an_empty_differential() -> None:
    h = synced(Transport.CBP1, cards(3), version=1)
    start = len(h.sent)
    content = dict(cards(3))
    content["B"] = card("B", TokenStatus.BLOCKED)  # not on a CBP/1 list
    h.desire(2, content)
    h.run()
    (chunk,) = h.chunks(start)
    assert chunk.entries == () and chunk.update_type is UpdateType.DIFFERENTIAL
    assert (chunk.version, chunk.base_version) == (2, 1)
    assert h.pile.version == 2
    assert_converged(h, content)


def test_cbp1_disconnect_in_the_middle_restarts_from_part_zero() -> None:
    h = synced(Transport.CBP1, cards(5), version=1)
    h.desire(2, cards(50))
    for _ in range(2):
        h.answer()
    assert isinstance(h.pending, SendChunk) and h.pending.part == 2
    h.disconnect()
    assert h.pile.version == 1  # nothing applied: atomic
    held = h.engine.held()
    assert held is not None and held.version == 1 and len(held.entries) == 5
    start = len(h.sent)
    h.run()
    resumed = h.chunks(start)
    assert [c.part for c in resumed] == list(range(5))
    assert resumed[0].update_type is UpdateType.DIFFERENTIAL and resumed[0].base_version == 1
    assert_converged(h, cards(50))


def test_cbp1_last_part_applied_but_reply_lost_is_adopted() -> None:
    h = Harness(Transport.CBP1, CbpPile())
    h.desire(3, cards(15))
    h.connect()
    h.answer()
    h.answer()  # part 0
    chunk = h.pending
    assert isinstance(chunk, SendChunk) and chunk.last
    h.pile.apply(chunk)
    h.disconnect()
    start = len(h.sent)
    h.run()
    assert h.chunks(start) == []
    assert_converged(h, cards(15))


def test_cbp1_capacity_from_the_version_query() -> None:
    h = Harness(Transport.CBP1, CbpPile(capacity=100))
    h.desire(1, cards(101))
    h.run()
    assert h.sent == []
    assert h.engine.status.reason == "list has 101 entries, pile capacity is 100"
    assert h.engine.snapshot().capacity == 100


def test_cbp1_capacity_exceeded_reply_is_a_failure_without_retry() -> None:
    pile = CbpPile(capacity=100)
    h = Harness(Transport.CBP1, pile)
    h.desire(1, cards(20))
    h.connect()
    h.answer()
    pile.capacity = 10  # the pile's real capacity is less than it said
    h.run()
    assert h.engine.status.kind is StatusKind.FAILED
    assert "over capacity" in (h.engine.status.reason or "")
    assert h.retries == []
    assert pile.entries == {}


def test_cbp1_version_mismatch_recovers_with_a_full_update() -> None:
    h = synced(Transport.CBP1, cards(5), version=1)
    h.disconnect()
    h.connect()
    # The pile changed behind our back after the query.
    h.answer()
    h.pile.version = 7
    start = len(h.sent)
    h.desire(2, cards(6))
    h.run()
    new = h.chunks(start)
    assert new[0].update_type is UpdateType.DIFFERENTIAL
    assert new[-1].update_type is UpdateType.FULL and new[-1].base_version == 0
    assert_converged(h, cards(6))


def test_cbp1_unexplained_count_means_full() -> None:
    h = synced(Transport.CBP1, cards(5), version=1)
    h.disconnect()
    h.pile.entries.pop("C000000")  # same version, other count
    start = len(h.sent)
    h.run()
    assert h.chunks(start)[0].update_type is UpdateType.FULL
    assert_converged(h, cards(5))


# ==========================================================================
# engine: retries, status, force
# ==========================================================================
def test_retries_back_off_exponentially_and_reset_on_success() -> None:
    h = Harness(Transport.CBP1)
    h.desire(1, cards(3))
    h.connect()
    h.timeout()  # the query
    assert h.retries == [10.0]
    assert h.tick(9.9) == [] and h.engine.state is SyncState.WAITING  # early: ignored
    delays = []
    for _ in range(5):
        at = h.engine.snapshot().next_retry_at
        assert at is not None
        (query,) = h.tick(at)
        assert isinstance(query, QueryVersion)
        before = h.now
        h.timeout()
        delays.append(h.retries[-1] - before)
    assert delays == [20.0, 40.0, 60.0, 60.0, 60.0]
    assert h.engine.snapshot().attempts == 6
    h.run()
    assert_converged(h, cards(3))
    assert h.engine.snapshot().attempts == 0
    # The next failure starts from the base delay again.
    h.desire(2, cards(4))
    before = h.now
    h.timeout()
    assert h.retries[-1] - before == 10.0


def test_status_turns_failed_after_failed_after_attempts() -> None:
    h = Harness(Transport.OCPP16)
    h.desire(1, cards(3))
    h.connect()
    h.answer()
    h.answer()
    kinds = []
    for _ in range(3):
        h.answer(SendResult.FAILED)
        kinds.append(h.engine.status.kind)
        h.tick(h.engine.snapshot().next_retry_at or 0.0)
        h.answer()  # query
    assert kinds == [StatusKind.PENDING, StatusKind.PENDING, StatusKind.FAILED]
    reason = h.engine.status.reason or ""
    assert "Failed" in reason and "3 attempts" in reason
    snap = h.engine.snapshot()
    assert snap.last_error is not None and snap.attempts == 3
    h.run()
    assert_converged(h, cards(3))
    assert h.engine.snapshot().last_error is None


def test_backoff_survives_a_reconnect() -> None:
    h = Harness(Transport.CBP1)
    h.desire(1, cards(3))
    h.connect()
    h.answer()
    h.answer(SendResult.FAILED)  # retry at 10
    h.now = 2.0
    h.disconnect()
    h.connect()
    actions = h.answer()  # the query on connect is always made...
    assert actions == [ArmRetry(10.0)]  # ...but the send waits for the backoff
    assert h.engine.state is SyncState.WAITING
    h.run()
    assert h.now == 10.0
    assert_converged(h, cards(3))


def test_backoff_still_running_when_a_fitting_list_arrives() -> None:
    # Found by the interleaving property: failure, reconnect before the
    # retry is due, list over capacity (idle), then a list that fits.
    h = Harness(Transport.CBP1, CbpPile(capacity=4))
    h.desire(1, cards(3))
    h.connect()
    h.answer()
    h.answer(SendResult.FAILED)  # retry at 10
    h.disconnect()
    h.desire(2, cards(5))
    h.connect()
    h.answer()  # over capacity: idle, failed
    assert h.engine.state is SyncState.IDLE
    assert h.engine.status.reason == "list has 5 entries, pile capacity is 4"
    assert h.desire(3, cards(4))[0] == ArmRetry(10.0)
    assert h.engine.state is SyncState.WAITING
    h.run()
    assert_converged(h, cards(4))


def test_disconnect_is_not_a_failure() -> None:
    h = Harness(Transport.CBP1)
    h.desire(1, cards(30))
    h.connect()
    h.answer()
    h.answer()
    h.disconnect()
    snap = h.engine.snapshot()
    assert snap.attempts == 0 and snap.next_retry_at is None and snap.in_flight is None
    assert snap.state is SyncState.OFFLINE
    assert h.engine.retry_due(1000.0) == []  # a stale timer while offline


def test_desired_change_while_sending_replans_after_the_reply() -> None:
    h = Harness(Transport.OCPP16, OcppPile(max_chunk=10))
    h.desire(1, cards(30))
    h.connect()
    h.answer()
    h.answer()
    assert isinstance(h.pending, SendChunk)
    assert h.desire(2, cards(5)) == []  # one request in flight: wait for it
    h.run()
    assert_converged(h, cards(5))


def test_force_resync_sends_the_full_list_even_in_sync() -> None:
    h = synced(Transport.OCPP16, cards(5), version=1)
    h.retries.clear()
    start = len(h.sent)
    actions = h.force()
    assert isinstance(actions[0], ReadConfig)  # limits are read again
    h.run()
    new = h.chunks(start)
    assert len(new) == 1 and new[0].update_type is UpdateType.FULL
    assert_converged(h, cards(5))


def test_force_resync_while_sending_cbp1_is_full_after_the_reply() -> None:
    h = synced(Transport.CBP1, cards(5), version=1)
    h.desire(2, cards(40))
    assert isinstance(h.pending, SendChunk)
    assert h.pending.update_type is UpdateType.DIFFERENTIAL
    h.force()
    start = len(h.sent)
    h.run()
    new = h.chunks(start)
    assert new and all(c.update_type is UpdateType.FULL for c in new)
    assert new[0].part == 0
    assert_converged(h, cards(40))


def test_force_resync_clears_failures_and_backoff() -> None:
    h = Harness(Transport.CBP1)
    h.desire(1, cards(3))
    h.connect()
    for _ in range(4):
        h.timeout()
        h.tick(h.engine.snapshot().next_retry_at or 0.0)
    h.timeout()
    assert h.engine.status.kind is StatusKind.FAILED
    (query,) = [a for a in h.force() if not isinstance(a, ReportStatus)]
    assert isinstance(query, QueryVersion)
    assert h.engine.snapshot().attempts == 0
    h.run()
    assert_converged(h, cards(3))


def test_snapshot_for_ops() -> None:
    h = synced(Transport.OCPP16, cards(10), version=1, max_chunk=4, capacity=50)
    h.disconnect()
    desired = dict(cards(12))
    del desired["C000000"]
    desired["C000001"] = card("C000001", TokenStatus.BLOCKED)
    h.desire(2, desired)
    snap = h.engine.snapshot()
    assert snap.status.kind is StatusKind.PENDING
    assert (snap.held_version, snap.held_list_version, snap.held_count) == (3, 1, 10)
    assert (snap.desired_version, snap.desired_count) == (2, 11)
    assert snap.differences == (2, 1, 1)
    assert snap.in_flight is None and not snap.connected and not snap.held_verified
    assert (snap.max_chunk, snap.capacity) == (4, 50)
    h.connect()
    h.answer()
    h.answer()
    snap = h.engine.snapshot()
    assert snap.in_flight is not None and snap.in_flight.kind is RequestKind.SEND_CHUNK
    assert snap.held_verified and snap.pile_reported_version == 3
    assert str(snap.status) == "pending"


def test_restarted_gateway_resumes_from_the_persisted_held_record() -> None:
    h = Harness(Transport.OCPP16, OcppPile(max_chunk=100))
    h.desire(1000, cards(1000))
    h.connect()
    h.answer()
    h.answer()
    for _ in range(3):
        h.answer()
    # The gateway dies here; storage has the mirror and the floor.
    assert h.mirror is not None and h.mirror_version is not None
    held = Held(h.mirror_version, dict(h.mirror), h.mirror_list_version)
    floor = h.engine.snapshot().version_floor
    engine = PileWhitelistSync(Transport.OCPP16, POLICY, held=held, version_floor=floor)
    h2 = Harness(Transport.OCPP16, h.pile, engine=engine, mirror=dict(h.mirror))
    h2.mirror_version, h2.mirror_list_version = held.version, held.list_version
    h2.last_ocpp_version = h.last_ocpp_version
    h2.desire(1000, cards(1000))
    h2.run()
    assert len(h2.sent) == 7  # the rest only
    assert all(c.update_type is UpdateType.DIFFERENTIAL for c in h2.sent)
    assert_converged(h2, cards(1000))


def test_strict_charger_with_a_hidden_version_is_found_by_doubling() -> None:
    # An empty list reports 0 (§5.10), so a charger that hides version 50
    # behind it and also checks Full updates refuses Full version 1. The
    # engine backs off (no hot loop) and doubles the floor at each refusal.
    h = Harness(Transport.OCPP16, OcppPile(version=50, strict_full=True))
    h.desire(1, cards(2))
    h.connect()
    h.answer()
    h.answer()
    actions = h.answer()
    assert h.engine.state is SyncState.WAITING and actions[-1] == ArmRetry(10.0)
    for _ in range(2):
        h.tick(h.engine.snapshot().next_retry_at or 0.0)
        h.answer()
        h.answer()
    assert h.engine.status.kind is StatusKind.FAILED
    assert "version mismatch" in (h.engine.status.reason or "")
    assert h.retries == [10.0, 30.0, 70.0]
    h.run()
    assert_converged(h, cards(2))
    assert [c.version for c in h.sent] == [1, 3, 7, 15, 31, 63]


def test_restored_record_that_contradicts_the_desired_content_is_not_in_sync() -> None:
    engine = PileWhitelistSync(Transport.CBP1, held=Held(4, cards(2), 4))
    h = Harness(Transport.CBP1, CbpPile(entries=cards(2), version=4), engine=engine)
    h.mirror, h.mirror_version, h.mirror_list_version = dict(cards(2)), 4, 4
    assert engine.status.kind is StatusKind.PENDING  # no desired list yet
    h.desire(4, cards(3))  # same version, other content: trust the content
    assert engine.status.kind is StatusKind.PENDING
    h.run()
    assert_converged(h, cards(3))


def test_cbp1_reconnect_holding_the_desired_version_and_content_sends_nothing() -> None:
    # The record read back at a reconnect may lack the list version (a part-way
    # record, an older row): a pile that reports the desired version with the
    # desired content is in sync, without an empty differential each login.
    engine = PileWhitelistSync(Transport.CBP1, held=Held(3, cards(3), None))
    h = Harness(Transport.CBP1, CbpPile(entries=cards(3), version=3), engine=engine)
    h.mirror, h.mirror_version = dict(cards(3)), 3
    h.desire(3, cards(3))
    h.run()
    assert h.sent == []
    assert_converged(h, cards(3))
    h.desire(4, cards(3))  # a version-only change still moves the pile's version
    h.run()
    (chunk,) = h.sent
    assert chunk.entries == () and (chunk.version, chunk.base_version) == (4, 3)


def test_backoff_that_expired_while_offline_does_not_delay_the_resume() -> None:
    h = Harness(Transport.CBP1)
    h.desire(1, cards(3))
    h.connect()
    h.answer()
    h.answer(SendResult.FAILED)  # retry at 10
    h.disconnect()
    h.now = 50.0
    h.connect()
    (chunk,) = [a for a in h.answer() if isinstance(a, SendChunk)]
    assert chunk.part == 0
    assert h.engine.snapshot().next_retry_at is None
    h.run()
    assert_converged(h, cards(3))


def test_stale_config_and_version_replies_are_ignored() -> None:
    h = Harness(Transport.OCPP16)
    h.desire(1, cards(1))
    h.connect()
    read = h.pending
    assert isinstance(read, ReadConfig)
    h.timeout()
    assert h.engine.config_read(read.request_id, 10, 10, h.now) == []
    h.tick(10.0)
    h.answer()  # config on the retry
    query = h.pending
    assert isinstance(query, QueryVersion)
    h.disconnect()
    assert h.engine.version_reported(query.request_id, 0, h.now) == []
    assert h.engine.request_failed(query.request_id, "late", h.now) == []
    assert h.engine.snapshot().stale_replies == 3
    h.run()
    assert_converged(h, cards(1))


def test_force_resync_while_offline_or_querying() -> None:
    h = synced(Transport.OCPP16, cards(3))
    h.disconnect()
    h.force()
    h.connect()
    h.answer()
    h.force()  # while the version query is out
    start = len(h.sent)
    h.run()
    assert [c.update_type for c in h.chunks(start)] == [UpdateType.FULL]
    assert_converged(h, cards(3))


def test_argument_validation() -> None:
    engine = PileWhitelistSync(Transport.OCPP16)
    (read,) = engine.connected(0.0)
    assert isinstance(read, ReadConfig)
    (query,) = engine.config_read(read.request_id, None, None, 0.0)
    assert isinstance(query, QueryVersion)
    with pytest.raises(ValueError):
        engine.version_reported(query.request_id, -2, 0.0)
    with pytest.raises(ValueError):
        engine.config_read(read.request_id, 0, None, 0.0)
    with pytest.raises(UnknownRequest):
        engine.send_result(True, SendResult.ACCEPTED, 0.0)  # bool is an int subclass
    with pytest.raises(ValueError):
        engine.desired_changed(1.5, {}, 0.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        PileWhitelistSync(Transport.CBP1).version_reported(1, -1, 0.0)
    with pytest.raises(ValueError):
        PileWhitelistSync(Transport.CBP1, held=Held("3", {}))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        PileWhitelistSync(Transport.CBP1, version_floor=-1)
    with pytest.raises(ValueError):
        SyncStatus(StatusKind.FAILED)
    with pytest.raises(ValueError):
        SyncStatus(StatusKind.IN_SYNC, "why")
    with pytest.raises(ValueError):
        POLICY.retry_delay(0)
    with pytest.raises(ValueError):
        SyncPolicy(retry_base=math.nan)
    with pytest.raises(ValueError):
        Whitelist("", ())


def test_desired_view_is_projected() -> None:
    engine = PileWhitelistSync(Transport.CBP1)
    assert engine.desired() is None
    engine.desired_changed(3, {"A": card("A"), "B": card("B", TokenStatus.BLOCKED)}, 0.0)
    desired = engine.desired()
    assert desired is not None and desired[0] == 3 and list(desired[1]) == ["A"]
    assert engine.transport is Transport.CBP1 and engine.policy is not None


def test_illegal_internal_paths_raise_sync_errors() -> None:
    engine = PileWhitelistSync(Transport.CBP1)
    with pytest.raises(SyncError):
        engine.send_result(1, SendResult.ACCEPTED, 0.0)  # never issued


# ==========================================================================
# properties
# ==========================================================================
TRANSPORTS = st.sampled_from([Transport.OCPP16, Transport.CBP1])


@st.composite
def pile_contents(draw: st.DrawFn) -> tuple[dict[str, Entry], int]:
    """What a pile holds before the gateway ever talked to it."""
    content = draw(entries_st(max_size=25))
    # OCPP §5.10: version 0 means empty, so a list is never held at version 0.
    return content, draw(st.integers(1 if content else 0, 60))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    transport=TRANSPORTS,
    initial=pile_contents(),
    lists=st.lists(entries_st(max_size=25), min_size=1, max_size=3),
    chunk=st.integers(1, 7),
    cut=st.integers(0, 12),
)
def test_chunks_applied_in_order_yield_exactly_the_desired_content(
    transport: Transport,
    initial: tuple[dict[str, Entry], int],
    lists: list[dict[str, Entry]],
    chunk: int,
    cut: int,
) -> None:
    content, version = initial
    pile = make_pile(transport, entries=project(transport, content), version=version)
    if isinstance(pile, OcppPile):
        pile.max_chunk = chunk
    h = Harness(transport, pile)
    for i, desired in enumerate(lists, start=1):
        h.desire(i, desired)
        if i == 1 and cut:
            # Interrupt the first sync after `cut` answers, then resume.
            h.connect()
            for _ in range(cut):
                if h.pending is None:
                    break
                h.answer()
            h.disconnect()
        h.run()
        assert_converged(h, desired)


@st.composite
def chaos(draw: st.DrawFn) -> list[str]:
    return draw(
        st.lists(
            st.sampled_from(
                [
                    "answer",
                    "answer",
                    "answer",
                    "fail",
                    "timeout_lost",
                    "timeout_applied",
                    "disconnect",
                    "disconnect_applied",
                    "connect",
                    "desire",
                    "tick",
                    "force",
                    "stale",
                    "tamper",
                    "toggle_local_list",
                ]
            ),
            max_size=60,
        )
    )


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    transport=TRANSPORTS,
    initial=pile_contents(),
    steps=chaos(),
    data=st.data(),
    chunk=st.integers(1, 5),
    capacity=st.sampled_from([None, None, 4, 12]),
)
def test_random_interleavings_keep_the_invariants_and_converge(
    transport: Transport,
    initial: tuple[dict[str, Entry], int],
    steps: list[str],
    data: st.DataObject,
    chunk: int,
    capacity: int | None,
) -> None:
    content, version = initial
    pile = make_pile(transport, entries=project(transport, content), version=version)
    if isinstance(pile, OcppPile):
        pile.max_chunk = chunk
        pile.capacity = capacity
    elif capacity is not None:
        pile.capacity = capacity
    h = Harness(transport, pile)
    desired_version = 1
    tampered = 0
    desired = data.draw(entries_st(max_size=20))
    h.desire(desired_version, desired)
    for step in steps:
        # Harness.feed asserts after every event: one request at most, none
        # while disconnected, chunks within limits, mirror == held record.
        if step == "connect" and not h.linked:
            h.connect()
        elif step in ("disconnect", "disconnect_applied") and h.linked:
            if step == "disconnect_applied" and isinstance(h.pending, SendChunk):
                h.pile.apply(h.pending)
            h.disconnect()
        elif step == "answer" and h.pending is not None:
            h.answer()
        elif step == "fail" and isinstance(h.pending, SendChunk):
            h.answer(SendResult.FAILED)
        elif step in ("timeout_lost", "timeout_applied") and h.pending is not None:
            h.timeout(applied=step == "timeout_applied")
        elif step == "desire":
            desired_version += data.draw(st.integers(1, 3))
            desired = data.draw(entries_st(max_size=20))
            h.desire(desired_version, desired)
        elif step == "tick":
            h.tick(h.now + data.draw(st.sampled_from([0.5, 5.0, 10.0, 30.0, 100.0])))
        elif step == "force":
            h.force()
        elif step == "stale" and h.stale:
            request_id, result = h.stale.pop(0)
            assert h.engine.send_result(request_id, result, h.now) == []
        elif step == "tamper" and not h.linked:
            # The pile's list changes behind the gateway's back (a technician
            # loads one with a version of their own; a list changed without a
            # new version would be invisible to any version-based sync).
            tampered += 1
            h.pile.entries = project(transport, data.draw(entries_st(max_size=5)))
            h.pile.version = 100_000 + tampered
        elif step == "toggle_local_list" and not h.linked and isinstance(h.pile, OcppPile):
            h.pile.enabled = not h.pile.enabled  # LocalAuthListEnabled changed
    h.run()
    # Calm: a list that fits, local lists enabled; the engine must get there.
    if isinstance(h.pile, OcppPile) and not h.pile.enabled:
        h.disconnect()
        h.pile.enabled = True
        h.run()
    if capacity is not None and len(project(transport, desired)) > capacity:
        status = h.engine.status
        assert status.kind is StatusKind.FAILED and "capacity" in (status.reason or "")
        desired_version += 1
        desired = dict(list(desired.items())[:capacity])
        h.desire(desired_version, desired)
        h.run()
    assert_converged(h, desired)
