"""firmware.task + firmware.rollout + firmware.report: task specs, schedule windows,
waves, concurrency, failure-rate stop, pause/resume/cancel, restart, reports."""

from __future__ import annotations

import csv
import heapq
import io
import itertools
import json
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import UTC, datetime, time, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from firmware.pile_upgrade import (
    IN_FLIGHT,
    ArmTimer,
    BootReported,
    Cancel,
    ChargingEnded,
    ChargingStarted,
    DispatchPossible,
    FirmwareStatus,
    PileEvent,
    PileOffline,
    PileOnline,
    PileState,
    PileUpgrade,
    Record,
    RecordError,
    RejectReason,
    SendUpdate,
    Sent,
    StageTimeout,
    StatusReported,
    UpdateRejected,
)
from firmware.report import (
    CSV_COLUMNS,
    count_by_state,
    pile_rows,
    rows_to_csv,
    summarize,
)
from firmware.rollout import (
    TASK_TRANSITIONS,
    Action,
    IllegalTaskTransition,
    Rollout,
    RolloutError,
    RolloutRecord,
    SavePile,
    SaveTask,
    TaskProgress,
    TaskRecord,
    TaskState,
    TaskTrigger,
    UnknownPile,
    next_task_state,
)
from firmware.task import (
    FirmwareTask,
    ImageRef,
    MaintenanceWindow,
    PileFacts,
    PileSelector,
    RetryPolicy,
    RolloutPolicy,
    Schedule,
    StageTimeouts,
    TaskSpecError,
)
from firmware.version import parse_version
from pileid import Kind
from tests.test_firmware_upgrade import MIN, OLD, PILE, SHA, T0, TARGET, URL, make_task

S = PileState
FS = FirmwareStatus
TS = TaskState
CST = timezone(timedelta(hours=8))


def pile_id(n: int, kind: str = "01", region: str = "440300", operator: str = "0001") -> str:
    return f"{region}{operator}000{kind}{n:05d}"


def fleet(n: int, **overrides: Any) -> list[PileFacts]:
    return [PileFacts(pile_id(i), "XD32E", OLD, True, False, **overrides) for i in range(n)]


def task_for(
    piles: Iterable[PileFacts],
    *,
    canary: int = 0,
    waves: tuple[int, ...] | None = None,
    wave_percent: float | None = None,
    max_concurrent: int = 10,
    threshold: float = 0.2,
    max_attempts: int = 1,
    schedule: Schedule | None = None,
) -> FirmwareTask:
    return make_task(
        targets=tuple(p.pile_id for p in piles),
        rollout=RolloutPolicy(
            canary=canary,
            waves=waves,
            wave_percent=wave_percent,
            max_concurrent=max_concurrent,
            failure_threshold=threshold,
        ),
        max_attempts=max_attempts,
        schedule=schedule,
    )


# --------------------------------------------------------------------------
# a simulated fleet that executes the rollout's actions
# --------------------------------------------------------------------------
Script = list[Callable[[datetime], PileEvent]]
SCRIPTS: dict[str, Script] = {
    "ok": [
        Sent,
        lambda t: StatusReported(FS.DOWNLOADING, t),
        lambda t: StatusReported(FS.DOWNLOADED, t),
        lambda t: StatusReported(FS.INSTALLING, t),
        lambda t: StatusReported(FS.INSTALLED, t),
        PileOffline,
        lambda t: BootReported(TARGET, t),
    ],
    "download_fails": [
        Sent,
        lambda t: StatusReported(FS.DOWNLOADING, t),
        lambda t: StatusReported(FS.DOWNLOAD_FAILED, t),
    ],
    "unchanged": [
        Sent,
        lambda t: StatusReported(FS.DOWNLOADING, t),
        lambda t: StatusReported(FS.DOWNLOADED, t),
        lambda t: StatusReported(FS.INSTALLED, t),
        PileOffline,
        lambda t: BootReported(OLD, t),
    ],
    "silent": [],  # accepts nothing, says nothing: the download timeout decides
    "busy": [lambda t: UpdateRejected(RejectReason.CHARGING, t)],
}


class Sim:
    """Runs a rollout against scripted chargers, one charger message per pile per minute.

    Persists what SavePile / SaveTask say into ``store`` (as JSON), the way
    the storage layer would, and checks the concurrency bound after every call.
    """

    def __init__(
        self,
        rollout: Rollout,
        now: datetime = T0,
        plans: dict[str, list[str]] | None = None,
    ) -> None:
        self.rollout = rollout
        self.now = now
        self.plans = plans or {}
        self.sends: Counter[str] = Counter()
        self.scripts: dict[str, deque[Callable[[datetime], PileEvent]]] = {}
        self.timers: list[tuple[datetime, int, str]] = []
        self.seq = itertools.count()
        self.log: list[Action] = []
        self.max_in_flight = 0
        record = rollout.snapshot()
        self.store_task = json.dumps(record.progress.to_dict())
        self.store_piles = {u.pile_id: json.dumps(u.to_dict()) for u in record.piles}

    def execute(self, actions: Iterable[Action]) -> list[Action]:
        actions = list(actions)
        for action in actions:
            self.log.append(action)
            if isinstance(action, SavePile):
                self.store_piles[action.upgrade.pile_id] = json.dumps(action.upgrade.to_dict())
            elif isinstance(action, SaveTask):
                self.store_task = json.dumps(action.progress.to_dict())
            elif isinstance(action, SendUpdate):
                # Persisted before it leaves: the store already says "sent".
                assert json.loads(self.store_piles[action.pile_id])["state"] == "sent"
                assert self.rollout.state is TS.RUNNING
                self.sends[action.pile_id] += 1
                plan = self.plans.get(action.pile_id, ["ok"])
                outcome = plan[min(self.sends[action.pile_id], len(plan)) - 1]
                self.scripts[action.pile_id] = deque(SCRIPTS[outcome])
            elif isinstance(action, ArmTimer):
                heapq.heappush(self.timers, (action.at, next(self.seq), action.pile_id))
        in_flight = self.rollout.in_flight()
        assert in_flight <= self.rollout.spec.rollout.max_concurrent
        self.max_in_flight = max(self.max_in_flight, in_flight)
        return actions

    def feed(self, pile: str, event: PileEvent) -> list[Action]:
        return self.execute(self.rollout.handle(pile, event))

    def minute(self) -> None:
        self.now += MIN
        for pile in list(self.scripts):
            script = self.scripts[pile]
            if script:
                self.feed(pile, script.popleft()(self.now))
            if not script:
                del self.scripts[pile]
        while self.timers and self.timers[0][0] <= self.now:
            _, _, pile = heapq.heappop(self.timers)
            self.feed(pile, StageTimeout(self.now))
        self.execute(self.rollout.tick(self.now))

    def run(self, until: Callable[[], bool] | None = None, limit: int = 2000) -> None:
        for _ in range(limit):
            if until is not None and until():
                return
            settled = self.rollout.state in (TS.COMPLETED, TS.STOPPED, TS.CANCELLED)
            if until is None and settled and not self.scripts and not self.rollout.in_flight():
                return
            self.minute()
        raise AssertionError("the simulation did not settle")

    def stored_record(self) -> RolloutRecord:
        """What a restarted gateway would read back from the database."""
        return RolloutRecord.from_dict(
            {
                "progress": json.loads(self.store_task),
                "piles": [json.loads(self.store_piles[u.pile_id]) for u in self.rollout.upgrades()],
            }
        )

    def records(self, pile: str) -> list[tuple[PileState, PileState]]:
        return [
            (a.from_state, a.to_state)
            for a in self.log
            if isinstance(a, Record) and a.pile_id == pile
        ]


# --------------------------------------------------------------------------
# the field record: task 300
# --------------------------------------------------------------------------
def test_field_record_task_300() -> None:
    facts = PileFacts(PILE, "XD32E", OLD, online=True)
    assert facts.kind is Kind.AC and facts.region_code == "810000" and facts.operator == "0056"
    task = make_task()  # task 300, target DLH_XD32E_210521003, pile 81000000560000100003
    sim = Sim(Rollout(task, task.select([facts])))
    sim.execute(sim.rollout.tick(T0))
    sim.run()
    assert sim.rollout.state is TS.COMPLETED
    upgrade = sim.rollout.upgrade(PILE)
    assert upgrade.state is S.VERIFIED and upgrade.from_version == OLD
    assert upgrade.reported_version == TARGET and sim.sends[PILE] == 1
    assert sim.rollout.reason == "1 verified, 0 failed, 0 skipped, 0 cancelled"


# --------------------------------------------------------------------------
# 50 piles: waves, concurrency, the failure-rate stop
# --------------------------------------------------------------------------
def test_fifty_piles_stop_when_a_wave_fails_too_often() -> None:
    piles = fleet(50)
    ids = [p.pile_id for p in piles]
    task = task_for(piles, canary=2, waves=(5, 10, 20), max_concurrent=4, threshold=0.2)
    plans = {
        ids[4]: ["download_fails"],  # wave 1 (piles 2..6): 1 of 5 = 20%, not above: passes
        ids[8]: ["unchanged"],  # wave 2 (piles 7..16): 3 of 10 = 30%: stops
        ids[11]: ["download_fails"],
        ids[15]: ["silent"],
    }
    sim = Sim(Rollout(task, piles), plans=plans)
    sim.execute(sim.rollout.tick(T0))
    sim.run()

    rollout = sim.rollout
    assert rollout.state is TS.STOPPED
    assert rollout.reason == "failure rate 30% > threshold 20% in wave 2"
    assert summarize(rollout.progress(), rollout.upgrades()).status_text == (
        "stopped: failure rate 30% > threshold 20% in wave 2"
    )
    assert [(w.index, w.members, w.verified, w.failed, w.passed) for w in rollout.waves] == [
        (0, 2, 2, 0, True),
        (1, 5, 4, 1, True),
        (2, 10, 7, 3, False),
    ]
    assert rollout.waves[1].failure_rate == pytest.approx(0.2)
    assert set(sim.sends) == set(ids[:17]) and set(sim.sends.values()) == {1}
    assert [rollout.upgrade(p).wave for p in ids[:17]] == [0, 0] + [1] * 5 + [2] * 10
    assert sim.max_in_flight == 4
    counts = count_by_state(rollout.upgrades())
    assert (counts[S.VERIFIED], counts[S.FAILED], counts[S.PENDING]) == (13, 3 + 1, 33)
    failed = rollout.upgrade(ids[8])
    assert failed.reason is not None and failed.reason.startswith("version unchanged")
    timed_out = rollout.upgrade(ids[15])
    assert timed_out.reason == "download timed out after 1800 s (attempt 1 of 1, none left)"
    # Stopped stays stopped: no more dispatches, whatever time passes.
    for _ in range(100):
        sim.minute()
    assert sum(sim.sends.values()) == 17
    with pytest.raises(IllegalTaskTransition):
        rollout.resume(sim.now)
    cancelled = sim.execute(rollout.cancel(sim.now))
    assert rollout.state is TS.CANCELLED
    assert count_by_state(rollout.upgrades())[S.CANCELLED] == 33
    assert sum(isinstance(a, Record) for a in cancelled) == 33


def test_fifty_piles_with_stragglers_complete_in_percentage_waves() -> None:
    piles = fleet(50)
    ids = [p.pile_id for p in piles]
    offline = {ids[3], ids[20], ids[21]}
    charging = ids[30]
    at_target = ids[40]
    piles = [
        replace(
            p,
            online=p.pile_id not in offline,
            charging=p.pile_id == charging,
            version=TARGET if p.pile_id == at_target else OLD,
        )
        for p in piles
    ]
    task = task_for(piles, canary=1, wave_percent=25, max_concurrent=5, max_attempts=2)
    plans = {ids[7]: ["download_fails", "ok"], ids[9]: ["busy", "ok"]}
    sim = Sim(Rollout(task, piles), plans=plans)
    sim.execute(sim.rollout.tick(T0))
    sim.run(until=lambda: sim.rollout.upgrade(ids[30]).state is S.WAITING and not sim.scripts)
    # A pile reached while charging (or rejected as busy) waits, deferred.
    assert sim.rollout.upgrade(ids[30]).reason == "charging: deferred until idle"
    assert sim.rollout.upgrade(ids[3]).state is S.WAITING
    sim.feed(ids[9], ChargingEnded(sim.now))  # the busy one's session ends
    sim.run(until=lambda: all(u.final or u.state is S.WAITING for u in sim.rollout.upgrades()))
    assert sim.rollout.state is TS.RUNNING
    waiting = {u.pile_id for u in sim.rollout.upgrades() if u.state is S.WAITING}
    assert waiting == offline | {charging}
    for pile in sorted(offline):
        sim.feed(pile, PileOnline(sim.now))
    sim.feed(charging, ChargingEnded(sim.now))
    sim.run()

    rollout = sim.rollout
    assert rollout.state is TS.COMPLETED
    counts = count_by_state(rollout.upgrades())
    assert counts[S.VERIFIED] == 49 and counts[S.SKIPPED] == 1
    assert rollout.upgrade(at_target).state is S.SKIPPED and at_target not in sim.sends
    assert sim.sends[ids[7]] == 2 and rollout.upgrade(ids[7]).attempts == 2
    assert rollout.upgrade(ids[7]).last_error == "download failed (attempt 1 of 2)"
    assert sim.sends[ids[9]] == 2 and rollout.upgrade(ids[9]).attempts == 1
    assert sim.max_in_flight == 5
    assert all(w.passed for w in rollout.waves)
    # Canary of 1, then waves of ceil(50 * 25%) = 13; piles that came back late
    # joined whichever wave was open.
    assert [w.members for w in rollout.waves][:4] == [1, 13, 13, 13]
    assert sum(w.members for w in rollout.waves) == 49
    assert rollout.reason == "49 verified, 0 failed, 1 skipped, 0 cancelled"


def test_a_failed_canary_stops_before_wave_one() -> None:
    piles = fleet(10)
    task = task_for(piles, canary=2, waves=(4,), threshold=0.9)
    sim = Sim(Rollout(task, piles), plans={piles[1].pile_id: ["download_fails"]})
    sim.execute(sim.rollout.tick(T0))
    sim.run()
    assert sim.rollout.state is TS.STOPPED
    assert sim.rollout.reason == "canary failed: 1 of 2 canary piles failed"
    assert set(sim.sends) == {piles[0].pile_id, piles[1].pile_id}


def test_the_canary_must_be_verified_before_wave_one_starts() -> None:
    piles = fleet(5)
    task = task_for(piles, canary=1, waves=(2,), max_concurrent=5)
    sim = Sim(Rollout(task, piles))
    sim.execute(sim.rollout.tick(T0))
    # Five slots free, yet only the canary goes out until it has booted.
    for _ in range(6):
        sim.minute()
        assert set(sim.sends) == {piles[0].pile_id}
    sim.minute()  # the canary boots with the target: wave 1 goes out
    assert sim.rollout.upgrade(piles[0].pile_id).state is S.VERIFIED
    assert set(sim.sends) == {p.pile_id for p in piles[:3]}


# --------------------------------------------------------------------------
# offline, charging
# --------------------------------------------------------------------------
def test_a_pile_offline_when_the_task_starts_is_upgraded_when_it_returns() -> None:
    piles = fleet(3)
    piles[1] = replace(piles[1], online=False)
    sim = Sim(Rollout(task_for(piles), piles))
    sim.execute(sim.rollout.tick(T0))
    away = piles[1].pile_id
    assert sim.rollout.upgrade(away).state is S.WAITING
    assert sim.records(away) == [(S.PENDING, S.WAITING)]
    sim.run(until=lambda: not sim.scripts)
    assert sim.rollout.state is TS.RUNNING and away not in sim.sends
    for _ in range(60):
        sim.minute()
    assert away not in sim.sends  # still away: still waiting, never failed
    actions = sim.feed(away, PileOnline(sim.now))  # handled at once: no tick needed
    assert [a.pile_id for a in actions if isinstance(a, SendUpdate)] == [away]
    sim.run()
    assert sim.rollout.state is TS.COMPLETED
    assert sim.rollout.upgrade(away).state is S.VERIFIED
    assert sim.records(away)[:2] == [(S.PENDING, S.WAITING), (S.WAITING, S.SENT)]


def test_a_charging_pile_is_deferred_until_idle() -> None:
    piles = fleet(2)
    piles[0] = replace(piles[0], charging=True)
    busy = piles[0].pile_id
    sim = Sim(Rollout(task_for(piles), piles))
    sim.execute(sim.rollout.tick(T0))
    assert sim.rollout.upgrade(busy).state is S.WAITING and busy not in sim.sends
    sim.feed(busy, ChargingStarted(sim.now))  # a status reports the same session
    sim.run(until=lambda: not sim.scripts)
    assert busy not in sim.sends
    sim.feed(busy, ChargingEnded(sim.now))
    assert sim.sends[busy] == 1
    sim.run()
    assert sim.rollout.state is TS.COMPLETED


# --------------------------------------------------------------------------
# restart
# --------------------------------------------------------------------------
def test_restart_mid_task_resumes_without_a_second_update_firmware() -> None:
    piles = fleet(50)
    task = task_for(piles, canary=2, waves=(8,), max_concurrent=6, max_attempts=2)
    plans = {piles[12].pile_id: ["download_fails", "ok"]}
    sim = Sim(Rollout(task, piles), plans=plans)
    sim.execute(sim.rollout.tick(T0))
    sim.run(until=lambda: sim.rollout.in_flight() == 6 and len(sim.rollout.waves) >= 2)
    # The gateway dies here. What the database holds equals the live state.
    record = sim.stored_record()
    before = sim.rollout.snapshot()
    assert record.progress == before.progress
    assert [u.to_dict() for u in record.piles] == [u.to_dict() for u in before.piles]
    in_flight = {u.pile_id: u for u in record.piles if u.state in IN_FLIGHT}
    assert len(in_flight) == 6

    facts = {p.pile_id: p for p in piles}  # presence after the restart: all back
    rollout, actions = Rollout.restore(task, record, sim.now, facts)
    rearmed = {a.pile_id: a for a in actions if isinstance(a, ArmTimer)}
    assert set(in_flight) <= set(rearmed)
    assert all(rearmed[p].at == in_flight[p].deadline for p in in_flight)
    assert not [a for a in actions if isinstance(a, SendUpdate)]
    assert rollout.state is TS.RUNNING and rollout.waves == before.progress.waves

    first = rollout.tick(sim.now)
    assert not [a for a in first if isinstance(a, SendUpdate)]  # no slot is free
    # The chargers keep going through the restart; the new process follows them.
    sim.rollout = rollout
    sim.timers = []
    sim.execute(actions)
    sim.run()
    assert rollout.state is TS.COMPLETED
    assert count_by_state(rollout.upgrades())[S.VERIFIED] == 50
    assert sim.sends[piles[12].pile_id] == 2
    assert {n for p, n in sim.sends.items() if p != piles[12].pile_id} == {1}


def test_restore_refuses_a_record_of_another_task() -> None:
    piles = fleet(2)
    rollout = Rollout(task_for(piles), piles)
    other = replace(make_task(task_id=301), targets=tuple(p.pile_id for p in piles))
    with pytest.raises(RolloutError, match="record of task 300 given for task 301"):
        Rollout.restore(other, rollout.snapshot(), T0)


def test_restore_without_facts_takes_every_pile_as_offline() -> None:
    piles = fleet(2)
    task = task_for(piles)
    rollout, actions = Rollout.restore(task, Rollout(task, piles).snapshot(), T0)
    assert actions == []
    rollout.tick(T0)
    assert {u.state for u in rollout.upgrades()} == {S.WAITING}


def test_rollout_record_json_round_trip_and_errors() -> None:
    piles = fleet(4)
    sim = Sim(Rollout(task_for(piles, canary=1, waves=(1,), max_concurrent=1), piles))
    sim.execute(sim.rollout.tick(T0))
    sim.run(until=lambda: len(sim.rollout.waves) == 2)
    record = sim.rollout.snapshot()
    data = json.loads(json.dumps(record.to_dict()))
    back = RolloutRecord.from_dict(data)
    assert back.progress == record.progress
    assert [u.to_dict() for u in back.piles] == [u.to_dict() for u in record.piles]
    bad_progress = data["progress"] | {"state": "flying"}
    with pytest.raises(RecordError) as info:
        TaskProgress.from_dict(bad_progress)
    assert info.value.key == "state"
    bad_wave = data["progress"]["waves"][0] | {"failure_rate": 1.5}
    with pytest.raises(RecordError, match="failure_rate"):
        TaskProgress.from_dict(data["progress"] | {"waves": [bad_wave]})
    with pytest.raises(RecordError, match="missing"):
        RolloutRecord.from_dict({"progress": data["progress"]})


# --------------------------------------------------------------------------
# task states: schedule, window, pause, resume, cancel
# --------------------------------------------------------------------------
def test_the_task_table() -> None:
    for state in TaskState:
        for trigger in TaskTrigger:
            if (state, trigger) in TASK_TRANSITIONS:
                assert next_task_state(1, state, trigger) is TASK_TRANSITIONS[state, trigger]
            else:
                with pytest.raises(IllegalTaskTransition):
                    next_task_state(1, state, trigger)
    exits = {s for (s, _), to in TASK_TRANSITIONS.items() if to is not s}
    assert TS.COMPLETED not in exits and TS.CANCELLED not in exits
    assert {t for (s, t) in TASK_TRANSITIONS if s is TS.STOPPED} == {TaskTrigger.CANCEL}


def test_nothing_is_dispatched_before_the_start_time() -> None:
    piles = fleet(2)
    start = T0 + 60 * MIN
    rollout = Rollout(task_for(piles, schedule=Schedule(start_at=start)), piles)
    assert rollout.state is TS.SCHEDULED and rollout.next_wakeup(T0) == start
    assert rollout.tick(T0 + 59 * MIN) == []
    actions = rollout.tick(start)
    record = next(a for a in actions if isinstance(a, TaskRecord))
    assert (record.from_state, record.to_state) == (TS.SCHEDULED, TS.RUNNING)
    assert len([a for a in actions if isinstance(a, SendUpdate)]) == 2


def test_pause_and_resume() -> None:
    piles = fleet(6)
    sim = Sim(Rollout(task_for(piles, max_concurrent=2), piles))
    sim.execute(sim.rollout.tick(T0))
    assert sim.rollout.in_flight() == 2
    sim.execute(sim.rollout.pause(sim.now))
    assert sim.rollout.state is TS.PAUSED and sim.rollout.reason == "paused"
    with pytest.raises(IllegalTaskTransition):
        sim.rollout.pause(sim.now)
    sim.run(until=lambda: not sim.scripts)
    for _ in range(30):
        sim.minute()
    # The two in flight finished; nothing new left while paused.
    assert sim.rollout.in_flight() == 0 and sum(sim.sends.values()) == 2
    assert count_by_state(sim.rollout.upgrades())[S.VERIFIED] == 2
    actions = sim.execute(sim.rollout.resume(sim.now))
    assert sim.rollout.state is TS.RUNNING
    assert len([a for a in actions if isinstance(a, SendUpdate)]) == 2
    with pytest.raises(IllegalTaskTransition):
        sim.rollout.resume(sim.now)
    sim.run()
    assert sim.rollout.state is TS.COMPLETED
    with pytest.raises(IllegalTaskTransition):
        sim.rollout.pause(sim.now)
    with pytest.raises(IllegalTaskTransition):
        sim.rollout.cancel(sim.now)


def test_pause_before_the_start_then_resume_early_waits_for_the_start() -> None:
    piles = fleet(1)
    start = T0 + 60 * MIN
    rollout = Rollout(task_for(piles, schedule=Schedule(start_at=start)), piles)
    rollout.pause(T0)
    assert rollout.tick(start) == [] and rollout.state is TS.PAUSED
    assert rollout.next_wakeup(start) is None
    rollout.resume(T0 + MIN)
    assert rollout.state is TS.SCHEDULED
    actions = rollout.tick(start)
    assert rollout.state is TS.RUNNING and any(isinstance(a, SendUpdate) for a in actions)


def test_cancel_cancels_what_is_not_in_flight_and_follows_the_rest() -> None:
    piles = fleet(5)
    task = task_for(piles, max_concurrent=2, max_attempts=3)
    first, second = piles[0].pile_id, piles[1].pile_id
    sim = Sim(Rollout(task, piles), plans={second: ["download_fails"]})
    sim.execute(sim.rollout.tick(T0))
    sim.minute()
    actions = sim.execute(sim.rollout.cancel(sim.now))
    assert sim.rollout.state is TS.CANCELLED
    assert isinstance(actions[0], TaskRecord) and isinstance(actions[1], SaveTask)
    assert {u.pile_id for u in sim.rollout.upgrades() if u.state is S.CANCELLED} == {
        p.pile_id for p in piles[2:]
    }
    sim.run()
    # The one in flight finished; the failing one would have retried, but a
    # cancelled task retries nothing.
    assert sim.rollout.upgrade(first).state is S.VERIFIED
    assert sim.rollout.upgrade(second).state is S.CANCELLED
    assert sim.records(second)[-2:] == [(S.DOWNLOADING, S.RETRY_WAIT), (S.RETRY_WAIT, S.CANCELLED)]
    assert sum(sim.sends.values()) == 2
    with pytest.raises(IllegalTaskTransition):
        sim.rollout.resume(sim.now)


def test_the_maintenance_window_across_midnight_gates_dispatches() -> None:
    piles = fleet(4)
    window = MaintenanceWindow(start=time(22, 0), end=time(4, 0), utc_offset=timedelta(hours=8))
    noon = datetime(2021, 5, 27, 12, 0, tzinfo=CST)
    task = task_for(piles, max_concurrent=2, schedule=Schedule(start_at=noon, window=window))
    sim = Sim(Rollout(task, piles), now=noon)
    sim.execute(sim.rollout.tick(noon))
    assert sim.rollout.state is TS.RUNNING and not sim.sends
    assert sim.rollout.next_wakeup(noon) == datetime(2021, 5, 27, 22, 0, tzinfo=CST)
    sim.run(until=lambda: bool(sim.sends))
    assert sim.now == datetime(2021, 5, 27, 22, 0, tzinfo=CST)
    assert sim.rollout.next_wakeup(sim.now) is None
    sim.run()
    assert sim.rollout.state is TS.COMPLETED

    # Close to the end of the window: what is in flight goes on, nothing new starts.
    late = datetime(2021, 5, 28, 3, 55, tzinfo=CST)
    task = task_for(piles, max_concurrent=2, schedule=Schedule(start_at=late, window=window))
    sim = Sim(Rollout(task, piles), now=late)
    sim.execute(sim.rollout.tick(late))
    assert len(sim.sends) == 2
    sim.run(until=lambda: sim.now >= datetime(2021, 5, 28, 4, 30, tzinfo=CST))
    assert len(sim.sends) == 2 and sim.rollout.in_flight() == 0
    assert sim.rollout.next_wakeup(sim.now) == datetime(2021, 5, 28, 22, 0, tzinfo=CST)
    sim.run()
    assert sim.rollout.state is TS.COMPLETED
    assert min(u.first_sent_at for u in sim.rollout.upgrades()[2:]) == datetime(  # type: ignore[type-var]
        2021, 5, 28, 22, 0, tzinfo=CST
    )


# --------------------------------------------------------------------------
# the window itself
# --------------------------------------------------------------------------
def local(hour: int, minute: int = 0, day: int = 27) -> datetime:
    return datetime(2021, 5, day, hour, minute, tzinfo=CST)


@pytest.mark.parametrize(
    ("now", "inside"),
    [
        (local(21, 59), False),
        (local(22, 0), True),
        (local(23, 59), True),
        (local(0, 0), True),
        (local(3, 59), True),
        (local(4, 0), False),
        (local(12, 0), False),
        (datetime(2021, 5, 27, 14, 30, tzinfo=UTC), True),  # 22:30 at UTC+8
        (datetime(2021, 5, 27, 20, 0, tzinfo=UTC), False),  # 04:00 at UTC+8
    ],
)
def test_a_window_across_midnight(now: datetime, inside: bool) -> None:
    window = MaintenanceWindow(time(22, 0), time(4, 0))
    assert window.crosses_midnight
    assert window.in_window(now) is inside


def test_next_window_start() -> None:
    night = MaintenanceWindow(time(22, 0), time(4, 0))
    assert night.next_window_start(local(12)) == local(22)
    assert night.next_window_start(local(22)) == local(22, day=28)  # strictly after
    assert night.next_window_start(local(23)) == local(22, day=28)
    assert night.next_window_start(local(2, day=28)) == local(22, day=28)
    assert night.next_window_start(local(12)).tzinfo is UTC
    day = MaintenanceWindow(time(9, 30), time(11, 0), utc_offset=timedelta(hours=-5))
    est = timezone(timedelta(hours=-5))
    assert not day.crosses_midnight
    assert day.in_window(datetime(2021, 5, 27, 10, 0, tzinfo=est))
    assert not day.in_window(datetime(2021, 5, 27, 11, 0, tzinfo=est))
    assert day.next_window_start(datetime(2021, 5, 27, 12, 0, tzinfo=est)) == datetime(
        2021, 5, 28, 9, 30, tzinfo=est
    )


def test_schedule_next_opening() -> None:
    night = MaintenanceWindow(time(22, 0), time(4, 0))
    schedule = Schedule(start_at=local(23, day=28), window=night)
    assert schedule.next_opening(local(12)) == local(23, day=28)  # the start, inside a window
    assert schedule.next_opening(local(23, day=28)) is None
    assert schedule.next_opening(local(5, day=29)) == local(22, day=29)
    assert Schedule(start_at=local(12)).next_opening(local(11)) == local(12)


# --------------------------------------------------------------------------
# the spec: validation names the field
# --------------------------------------------------------------------------
IMAGE = ImageRef(sha256=SHA, size=1, url=URL)


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: make_task(task_id=0), "task_id"),
        (lambda: make_task(task_id=2**32), "task_id"),
        (lambda: replace(make_task(), task_id=True), "task_id"),
        (lambda: make_task(targets=()), "targets"),
        (lambda: make_task(targets="81000000560000100003"), "targets"),
        (lambda: make_task(targets=(PILE, PILE)), "targets[1]"),
        (lambda: make_task(targets=(PILE, "4420000001100001")), "targets[1]"),
        (lambda: make_task(targets=("81000000560000300003",)), "targets[0]"),  # kind 03
        (lambda: replace(make_task(), target="DLH_XD32E_210521003"), "target"),
        (
            lambda: replace(make_task(), target=parse_version("DLH_XD32E_210521003_V1.2.3")),
            "target",
        ),  # 26 characters: longer than CBP/1's ASCII24
        (lambda: ImageRef(sha256="xyz", size=1, url=URL), "image.sha256"),
        (lambda: ImageRef(sha256=SHA, size=0, url=URL), "image.size"),
        (lambda: ImageRef(sha256=SHA, size=2**32, url=URL), "image.size"),
        (lambda: ImageRef(sha256=SHA, size=1, url="ftp://fw.example.com/a.bin"), "image.url"),
        (lambda: ImageRef(sha256=SHA, size=1, url="https://"), "image.url"),
        (lambda: ImageRef(sha256=SHA, size=1, url="https://x/" + "a" * 170), "image.url"),
        (lambda: ImageRef(sha256=SHA, size=1, url="https://x/a b.bin"), "image.url"),
        (lambda: Schedule(start_at=datetime(2021, 5, 27)), "schedule.start_at"),
        (lambda: MaintenanceWindow(time(22), time(22)), "schedule.window"),
        (lambda: MaintenanceWindow(time(22, tzinfo=UTC), time(4)), "schedule.window.start"),
        (
            lambda: MaintenanceWindow(time(22), time(4), utc_offset=timedelta(hours=15)),
            "schedule.window.utc_offset",
        ),
        (
            lambda: MaintenanceWindow(time(22), time(4), utc_offset=timedelta(seconds=30)),
            "schedule.window.utc_offset",
        ),
        (lambda: RolloutPolicy(canary=-1), "rollout.canary"),
        (lambda: RolloutPolicy(waves=(5, 0)), "rollout.waves[1]"),
        (lambda: RolloutPolicy(waves=()), "rollout.waves"),
        (lambda: RolloutPolicy(waves=(5,), wave_percent=10), "rollout.waves"),
        (lambda: RolloutPolicy(wave_percent=0), "rollout.wave_percent"),
        (lambda: RolloutPolicy(wave_percent=101), "rollout.wave_percent"),
        (lambda: RolloutPolicy(max_concurrent=0), "rollout.max_concurrent"),
        (lambda: RolloutPolicy(failure_threshold=20), "rollout.failure_threshold"),
        (lambda: RolloutPolicy(failure_threshold=float("nan")), "rollout.failure_threshold"),
        (lambda: RetryPolicy(max_attempts=0), "retries.max_attempts"),
        (lambda: RetryPolicy(max_attempts=101), "retries.max_attempts"),
        (lambda: RetryPolicy(backoff=-MIN), "retries.backoff"),
        (lambda: RetryPolicy(backoff_factor=0.5), "retries.backoff_factor"),
        (lambda: RetryPolicy(backoff=2 * MIN, backoff_max=MIN), "retries.backoff_max"),
        (lambda: StageTimeouts(download=timedelta(0)), "timeouts.download"),
        (lambda: StageTimeouts(install=30), "timeouts.install"),
        (lambda: StageTimeouts(reboot=-MIN), "timeouts.reboot"),
        (lambda: PileSelector(), "targets"),
        (lambda: PileSelector(operator="56"), "targets.operator"),
        (lambda: PileSelector(region_prefix="8100000"), "targets.region_prefix"),
        (lambda: PileSelector(kind="AC"), "targets.kind"),
        (lambda: PileSelector(model=""), "targets.model"),
        (lambda: PileSelector(current_versions=frozenset()), "targets.current_versions"),
    ],
)
def test_invalid_specs_name_the_field(build: Callable[[], object], field: str) -> None:
    with pytest.raises(TaskSpecError) as info:
        build()
    assert info.value.field == field
    assert str(info.value).startswith(f"firmware task: {field}: ")


def test_spec_normalisation() -> None:
    assert ImageRef(sha256=SHA.upper(), size=1, url=URL).sha256 == SHA
    task = make_task(targets=[PILE])  # a list is taken as the tuple it means
    assert task.targets == (PILE,)
    assert RolloutPolicy(waves=[3, 5]).waves == (3, 5)  # type: ignore[arg-type]


def test_wave_sizes() -> None:
    explicit = RolloutPolicy(canary=2, waves=(5, 10, 20))
    assert [explicit.wave_size(i, 50) for i in range(6)] == [2, 5, 10, 20, 20, 20]
    assert RolloutPolicy(canary=0, wave_percent=10).wave_size(3, 45) == 5  # ceil(4.5)
    assert RolloutPolicy(canary=0, wave_percent=1).wave_size(1, 10) == 1
    assert RolloutPolicy(canary=1).wave_size(1, 50) == 50  # one wave after the canary
    with pytest.raises(ValueError, match="no wave 0"):
        RolloutPolicy(canary=0).wave_size(0, 10)


def test_selector() -> None:
    dc_shenzhen = PileFacts("44030800010000200005", "XD60", OLD)
    ac_shenzhen = PileFacts("44030800010000100001", "xd32e", OLD)
    ac_other_operator = PileFacts("44030800020000100001", "XD32E", TARGET)
    unknown = PileFacts("44200000010000100001")
    fleet_ = [dc_shenzhen, ac_shenzhen, ac_other_operator, unknown]

    def chosen(**criteria: Any) -> list[PileFacts]:
        return [f for f in fleet_ if PileSelector(**criteria).matches(f)]

    assert chosen(kind=Kind.DC) == [dc_shenzhen]
    assert chosen(region_prefix="4403") == [dc_shenzhen, ac_shenzhen, ac_other_operator]
    assert chosen(operator="0001") == [dc_shenzhen, ac_shenzhen, unknown]
    assert chosen(model="XD32E") == [ac_shenzhen, ac_other_operator]
    assert chosen(current_versions=frozenset({OLD})) == [dc_shenzhen, ac_shenzhen]
    assert chosen(region_prefix="440308", kind=Kind.AC, operator="0001") == [ac_shenzhen]
    task = make_task(targets=PileSelector(model="XD32E", current_versions=frozenset({OLD})))
    assert task.select(fleet_) == (ac_shenzhen,)


def test_explicit_targets_keep_their_order_and_include_unknown_piles() -> None:
    known = PileFacts(pile_id(1), "XD32E", OLD, online=True)
    task = make_task(targets=(pile_id(2), pile_id(1)))
    chosen = task.select([known, PileFacts(pile_id(3))])
    assert [f.pile_id for f in chosen] == [pile_id(2), pile_id(1)]
    assert chosen[0] == PileFacts(pile_id(2)) and not chosen[0].online
    assert chosen[1] is known


def test_pile_facts_validate_the_id() -> None:
    with pytest.raises(TaskSpecError, match="pile_id"):
        PileFacts("4420000001100001")
    assert PileFacts("44030800010000200005").kind is Kind.DC


# --------------------------------------------------------------------------
# misuse of the rollout
# --------------------------------------------------------------------------
def test_misuse_of_the_rollout() -> None:
    piles = fleet(2)
    rollout = Rollout(task_for(piles), piles)
    with pytest.raises(RolloutError, match="rollout's decision"):
        rollout.handle(piles[0].pile_id, DispatchPossible(True, False, T0))
    with pytest.raises(UnknownPile) as info:
        rollout.handle(PILE, PileOnline(T0))
    assert str(info.value) == f"firmware task 300: pile {PILE} is not a target"
    with pytest.raises(UnknownPile):
        rollout.upgrade(PILE)
    with pytest.raises(RolloutError, match="listed twice"):
        Rollout(task_for(piles), [piles[0], piles[0]])
    with pytest.raises(RolloutError, match="do not match the target list"):
        Rollout(task_for(piles), piles[:1])
    with pytest.raises(RolloutError, match="do not match the target list"):
        Rollout(task_for(piles), [*piles, PileFacts(PILE)])
    with pytest.raises(TaskSpecError, match="timezone-aware"):
        rollout.tick(datetime(2021, 5, 27))
    assert len(rollout) == 2 and piles[0].pile_id in rollout and PILE not in rollout


def test_an_empty_task_completes_at_its_start() -> None:
    task = make_task(targets=PileSelector(model="NOPE"))
    rollout = Rollout(task, task.select(fleet(3)))
    rollout.tick(T0)
    assert rollout.state is TS.COMPLETED and len(rollout) == 0


# --------------------------------------------------------------------------
# reports
# --------------------------------------------------------------------------
def test_counts_rows_and_csv() -> None:
    piles = fleet(4)
    ids = [p.pile_id for p in piles]
    piles[3] = replace(piles[3], version=TARGET)
    task = task_for(piles, max_concurrent=4, max_attempts=1, threshold=0.5)
    sim = Sim(Rollout(task, piles), plans={ids[1]: ["download_fails"]})
    sim.execute(sim.rollout.tick(T0))
    sim.run()
    upgrades = sim.rollout.upgrades()
    counts = count_by_state(upgrades)
    assert list(counts) == list(PileState) and sum(counts.values()) == 4
    assert (counts[S.VERIFIED], counts[S.FAILED], counts[S.SKIPPED]) == (2, 1, 1)
    summary = summarize(sim.rollout.progress(), upgrades)
    assert summary.total == 4 and summary.done == 2 and summary.in_flight == 0
    assert summary.status_text == "completed: 2 verified, 1 failed, 1 skipped, 0 cancelled"

    rows = pile_rows(upgrades, sim.now)
    assert [r.pile_id for r in rows] == ids
    verified = rows[0]
    assert verified.state is S.VERIFIED and verified.attempts == 1
    assert verified.last_status == "installed" and verified.reported_version == str(TARGET)
    assert verified.elapsed_seconds == 7 * 60  # sent at T0, booted 7 minutes later
    assert rows[3].elapsed_seconds is None and rows[3].state is S.SKIPPED
    assert [r.pile_id for r in pile_rows(upgrades, sim.now, state=S.FAILED)] == [ids[1]]

    text = rows_to_csv(rows)
    parsed = list(csv.reader(io.StringIO(text)))
    assert tuple(parsed[0]) == CSV_COLUMNS and len(parsed) == 5
    line = dict(zip(CSV_COLUMNS, parsed[2], strict=True))
    assert (
        line["state"] == "failed"
        and line["last_error"] == "download failed (attempt 1 of 1, none left)"
    )
    assert line["first_sent_at"] == T0.isoformat() and line["elapsed_seconds"] == "180.000"
    assert text.endswith("\r\n")


# --------------------------------------------------------------------------
# properties: random event sequences
# --------------------------------------------------------------------------
_PILE_EVENTS = [
    "online",
    "offline",
    "charging",
    "idle",
    "sent",
    "reject_busy",
    "reject_error",
    "downloading",
    "downloaded",
    "download_failed",
    "installing",
    "installed",
    "install_failed",
    "boot_target",
    "boot_old",
    "timeout",
    "cancel_pile",
]
_ops = st.one_of(
    st.tuples(st.just("tick"), st.integers(1, 90)),
    # A well-behaved charger's next message, most of the time ...
    st.tuples(st.just("pile"), st.integers(0, 5), st.just("progress")),
    st.tuples(st.just("pile"), st.integers(0, 5), st.just("progress")),
    st.tuples(st.just("pile"), st.integers(0, 5), st.just("progress")),
    # ... and anything at all otherwise.
    st.tuples(st.just("pile"), st.integers(0, 5), st.sampled_from(_PILE_EVENTS)),
    st.tuples(st.sampled_from(["pause", "resume", "restart", "resume"]), st.just(0)),
    # Rarely: cancel is terminal, and would end most sequences early.
    st.integers(0, 30).map(lambda n: ("tick", n) if n else ("cancel", 0)),
)
_NEXT_MESSAGE: dict[PileState, str] = {
    S.PENDING: "online",
    S.WAITING: "idle",
    S.SENT: "sent",
    S.DOWNLOADING: "downloaded",
    S.DOWNLOADED: "installing",
    S.INSTALLING: "installed",
    S.INSTALLED: "boot_target",
    S.RETRY_WAIT: "timeout",
}


def _pile_event(kind: str, upgrade: PileUpgrade, now: datetime) -> PileEvent | None:
    """The event, or None when only a buggy gateway would send it in this state."""
    if kind == "progress":
        kind = _NEXT_MESSAGE.get(upgrade.state, "boot_old")
        if upgrade.state is S.WAITING and not upgrade.online:
            kind = "online"
    simple: dict[str, Callable[[datetime], PileEvent]] = {
        "online": PileOnline,
        "offline": PileOffline,
        "charging": ChargingStarted,
        "idle": ChargingEnded,
        "downloading": lambda t: StatusReported(FS.DOWNLOADING, t),
        "downloaded": lambda t: StatusReported(FS.DOWNLOADED, t),
        "download_failed": lambda t: StatusReported(FS.DOWNLOAD_FAILED, t),
        "installing": lambda t: StatusReported(FS.INSTALLING, t),
        "installed": lambda t: StatusReported(FS.INSTALLED, t),
        "install_failed": lambda t: StatusReported(FS.INSTALL_FAILED, t),
        "boot_target": lambda t: BootReported(TARGET, t),
        "boot_old": lambda t: BootReported(OLD, t),
    }
    if kind in simple:
        return simple[kind](now)
    if kind in ("sent", "reject_busy", "reject_error"):
        if upgrade.state is not S.SENT:
            return None
        if kind == "sent":
            return Sent(now)
        reason = RejectReason.CHARGING if kind == "reject_busy" else RejectReason.ERROR
        return UpdateRejected(reason, now)
    if kind == "timeout":
        return StageTimeout(max(now, upgrade.deadline or now))
    assert kind == "cancel_pile"
    return None if upgrade.final else Cancel(now)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n_piles=st.integers(1, 6),
    online=st.lists(st.booleans(), min_size=6, max_size=6),
    canary=st.integers(0, 2),
    waves=st.none() | st.lists(st.integers(1, 3), min_size=1, max_size=3).map(tuple),
    max_concurrent=st.integers(1, 3),
    threshold=st.sampled_from([0.0, 0.5, 1.0]),
    # T0 + 30 min (the start) is 10:30 at UTC+8: a short window open at the
    # start, and one across midnight that opens half an hour later.
    window=st.sampled_from([None, (time(10), time(10, 45)), (time(11), time(10))]),
    ops=st.lists(_ops, min_size=30, max_size=100),
)
def test_random_event_sequences_respect_the_bounds(
    n_piles: int,
    online: list[bool],
    canary: int,
    waves: tuple[int, ...] | None,
    max_concurrent: int,
    threshold: float,
    window: tuple[time, time] | None,
    ops: list[tuple[Any, ...]],
) -> None:
    piles = [replace(p, online=online[i]) for i, p in enumerate(fleet(n_piles))]
    daily = None if window is None else MaintenanceWindow(*window)  # T0 is 10:00 at UTC+8
    task = make_task(
        targets=tuple(p.pile_id for p in piles),
        rollout=RolloutPolicy(
            canary=canary, waves=waves, max_concurrent=max_concurrent, failure_threshold=threshold
        ),
        schedule=Schedule(start_at=T0 + 30 * MIN, window=daily),
        max_attempts=2,
    )
    rollout = Rollout(task, piles)
    now = T0
    sends: Counter[str] = Counter()
    peak = 0
    for op in [("tick", 30), *ops]:  # start_at is T0 + 30 min
        before_state = rollout.state
        before = {u.pile_id: u.state for u in rollout.upgrades()}
        name = op[0]
        actions: list[Action] = []
        if name == "tick":
            now += timedelta(minutes=op[1])
            actions = rollout.tick(now)
        elif name == "pile":
            candidates = rollout.upgrades()
            if op[2] == "progress":  # a charger with something to say, if any
                busy = [u for u in candidates if u.in_flight or u.state is S.RETRY_WAIT]
                candidates = tuple(busy) or candidates
            upgrade = candidates[op[1] % len(candidates)]
            pile_event = _pile_event(op[2], upgrade, now)
            if pile_event is None:
                continue
            now = max(now, pile_event.now)
            actions = rollout.handle(upgrade.pile_id, pile_event)
        elif name == "restart":
            record = RolloutRecord.from_dict(json.loads(json.dumps(rollout.snapshot().to_dict())))
            facts = {
                u.pile_id: PileFacts(u.pile_id, online=u.online, charging=u.charging)
                for u in rollout.upgrades()
            }
            old = rollout.upgrades()
            rollout, actions = Rollout.restore(task, record, now, facts)
            assert rollout.upgrades() == old
            assert all(isinstance(a, ArmTimer) for a in actions)
        else:
            try:
                actions = getattr(rollout, name)(now)
            except IllegalTaskTransition:
                continue

        dispatched = [a.pile_id for a in actions if isinstance(a, SendUpdate)]
        assert rollout.in_flight() <= max_concurrent
        peak = max(peak, rollout.in_flight())
        if dispatched:
            assert rollout.state is TS.RUNNING
            assert before_state in (TS.RUNNING, TS.SCHEDULED) or name == "resume"
            assert task.schedule.may_dispatch(now)
            for pile in dispatched:
                assert before[pile] not in IN_FLIGHT  # never twice to a pile in flight
                assert rollout.upgrade(pile).state is S.SENT or rollout.upgrade(pile).final
                sends[pile] += 1
        if before_state in (TS.PAUSED, TS.STOPPED, TS.CANCELLED, TS.COMPLETED) and name != "resume":
            assert not dispatched
        if rollout.state is TS.CANCELLED:
            assert not any(
                u.state in (S.PENDING, S.WAITING, S.RETRY_WAIT) for u in rollout.upgrades()
            )
        if rollout.state is TS.COMPLETED:
            assert all(u.final for u in rollout.upgrades())
        for u in rollout.upgrades():
            assert u.sends == sends[u.pile_id]
            assert 0 <= u.attempts <= task.retries.max_attempts
            assert u.wave is None or u.sends > 0  # a wave is joined by being dispatched
            assert not u.in_flight or u.wave is not None
    event(f"final task state: {rollout.state.value}")
    event(f"in flight reached max_concurrent: {peak == max_concurrent}")
    total = sum(sends.values())
    event(f"UpdateFirmware sent: {min(total, 5)}{'+' if total > 5 else ''}")
