"""firmware.pile_upgrade: one pile's upgrade, driven by events with their times."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from firmware.pile_upgrade import (
    DISPATCHABLE,
    FINAL,
    IN_FLIGHT,
    STAGE_OF,
    TRANSITIONS,
    ArmTimer,
    BootReported,
    Cancel,
    ChargingEnded,
    ChargingStarted,
    DispatchPossible,
    FirmwareStatus,
    IllegalTransition,
    PileAction,
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
    Stage,
    StageTimeout,
    StatusReported,
    Trigger,
    UpdateRejected,
    next_state,
    step,
)
from firmware.task import (
    FirmwareTask,
    ImageRef,
    PileFacts,
    RetryPolicy,
    RolloutPolicy,
    Schedule,
    StageTimeouts,
    TaskSpecError,
)
from firmware.version import parse_version

PILE = "81000000560000100003"  # the field record's pile (AC, region 810000)
OLD = parse_version("DLH_XD32E_201110002")
TARGET = parse_version("DLH_XD32E_210521003")
T0 = datetime(2021, 5, 27, 2, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)
SHA = "ab" * 32
URL = "https://fw.example.com/images/DLH_XD32E_210521003.bin"

S = PileState
FS = FirmwareStatus


def make_task(
    *,
    task_id: int = 300,
    targets: tuple[str, ...] | Any = (PILE,),
    max_attempts: int = 3,
    backoff: timedelta = 5 * MIN,
    backoff_factor: float = 2.0,
    backoff_max: timedelta = timedelta(hours=1),
    rollout: RolloutPolicy | None = None,
    schedule: Schedule | None = None,
    allow_downgrade: bool = False,
) -> FirmwareTask:
    return FirmwareTask(
        task_id=task_id,
        target=TARGET,
        image=ImageRef(sha256=SHA, size=1_048_576, url=URL),
        targets=targets,
        schedule=schedule or Schedule(start_at=T0),
        rollout=rollout or RolloutPolicy(canary=0, max_concurrent=10),
        retries=RetryPolicy(
            max_attempts=max_attempts,
            backoff=backoff,
            backoff_factor=backoff_factor,
            backoff_max=backoff_max,
        ),
        timeouts=StageTimeouts(download=30 * MIN, install=20 * MIN, reboot=10 * MIN),
        allow_downgrade=allow_downgrade,
    )


TASK = make_task()


def fresh(online: bool = True, charging: bool = False, version: Any = OLD) -> PileUpgrade:
    return PileUpgrade.new(PileFacts(PILE, "XD32E", version, online, charging))


class Driver:
    """Feeds events to one pile; keeps every action."""

    def __init__(self, task: FirmwareTask = TASK, upgrade: PileUpgrade | None = None) -> None:
        self.task = task
        self.u = upgrade or fresh()
        self.actions: list[PileAction] = []

    def __call__(self, event: PileEvent) -> tuple[PileAction, ...]:
        self.u, actions = step(self.task, self.u, event)
        self.actions.extend(actions)
        return actions

    @property
    def state(self) -> PileState:
        return self.u.state

    def of(self, kind: type[Any]) -> list[Any]:
        return [a for a in self.actions if isinstance(a, kind)]

    def to_sent(self, at: datetime = T0) -> None:
        self(DispatchPossible(True, False, at))
        assert self.state is S.SENT

    def to(self, state: PileState, at: datetime = T0) -> None:
        """Walk the happy path up to ``state`` (one minute per step)."""
        path = [S.SENT, S.DOWNLOADING, S.DOWNLOADED, S.INSTALLING, S.INSTALLED]
        statuses = [FS.DOWNLOADING, FS.DOWNLOADED, FS.INSTALLING, FS.INSTALLED]
        self.to_sent(at)
        for i, status in enumerate(statuses):
            if self.state is state:
                return
            self(StatusReported(status, at + (i + 1) * MIN))
            assert self.state is path[i + 1]
        assert self.state is state


# --------------------------------------------------------------------------
# status vocabulary
# --------------------------------------------------------------------------
def test_ocpp16_and_cbp1_statuses_map_to_one_vocabulary() -> None:
    ocpp = {
        "Idle": FS.IDLE,
        "Downloading": FS.DOWNLOADING,
        "Downloaded": FS.DOWNLOADED,
        "DownloadFailed": FS.DOWNLOAD_FAILED,
        "Installing": FS.INSTALLING,
        "Installed": FS.INSTALLED,
        "InstallationFailed": FS.INSTALL_FAILED,
    }
    for text, status in ocpp.items():
        assert FirmwareStatus.from_ocpp16(text) is status
    cbp1 = [
        FS.DOWNLOADING,
        FS.DOWNLOADED,
        FS.DOWNLOAD_FAILED,
        FS.CHECKSUM_FAILED,
        FS.INSTALLING,
        FS.INSTALLED,
        FS.INSTALL_FAILED,
    ]
    for code, status in enumerate(cbp1, start=1):
        assert FirmwareStatus.from_cbp1(code) is status
    assert {s for s in FS if s.is_failure} == {
        FS.DOWNLOAD_FAILED,
        FS.CHECKSUM_FAILED,
        FS.INSTALL_FAILED,
    }
    for bad in ["installed", "Unknown", ""]:
        with pytest.raises(ValueError, match=r"OCPP 1\.6"):
            FirmwareStatus.from_ocpp16(bad)
    for code in [0, 8, 255]:
        with pytest.raises(ValueError, match="CBP/1"):
            FirmwareStatus.from_cbp1(code)


def test_cbp1_rejection_results() -> None:
    assert RejectReason.from_cbp1(1) is RejectReason.CHARGING
    assert RejectReason.from_cbp1(2) is RejectReason.UNSUPPORTED
    assert RejectReason.from_cbp1(3) is RejectReason.ALREADY_AT_TARGET
    with pytest.raises(ValueError, match="rejection"):
        RejectReason.from_cbp1(0)  # accepted: that is Sent


# --------------------------------------------------------------------------
# the happy path
# --------------------------------------------------------------------------
def test_happy_path_to_verified_with_every_action() -> None:
    d = Driver()
    actions = d(DispatchPossible(online=True, charging=False, now=T0))
    record, timer, send = actions
    assert send == SendUpdate(
        task_id=300,
        pile_id=PILE,
        url=URL,
        sha256=SHA,
        size=1_048_576,
        target_version="DLH_XD32E_210521003",
        retrieve_at=T0,
        attempt=1,
    )
    assert timer == ArmTimer(300, PILE, T0 + 30 * MIN, Stage.DOWNLOAD)
    assert isinstance(record, Record)
    assert (record.from_state, record.to_state, record.trigger) == (
        S.PENDING,
        S.SENT,
        Trigger.DISPATCH,
    )
    assert d.u.attempts == 1 and d.u.sends == 1 and d.u.from_version == OLD

    assert d(Sent(T0 + MIN / 2)) == ()  # acknowledged: noted, no transition
    assert d.state is S.SENT and d.u.accepted_at == T0 + MIN / 2

    d(StatusReported(FS.DOWNLOADING, T0 + MIN))
    assert d.state is S.DOWNLOADING
    assert d.u.deadline == T0 + 30 * MIN  # still the download stage: same deadline
    assert not d.of(ArmTimer)[1:]

    d(StatusReported(FS.DOWNLOADED, T0 + 10 * MIN))
    assert d.state is S.DOWNLOADED and d.of(ArmTimer)[-1] == ArmTimer(
        300, PILE, T0 + 30 * MIN, Stage.INSTALL
    )
    d(StatusReported(FS.INSTALLING, T0 + 11 * MIN))
    assert d.state is S.INSTALLING and len(d.of(ArmTimer)) == 2
    d(StatusReported(FS.INSTALLED, T0 + 15 * MIN))
    assert d.state is S.INSTALLED
    assert d.of(ArmTimer)[-1] == ArmTimer(300, PILE, T0 + 25 * MIN, Stage.REBOOT)
    d(PileOffline(T0 + 16 * MIN))  # the reboot
    assert d.state is S.INSTALLED and not d.u.online

    actions = d(BootReported(TARGET, T0 + 18 * MIN))
    assert d.state is S.VERIFIED and d.u.online
    assert d.u.finished_at == T0 + 18 * MIN and d.u.deadline is None
    assert d.u.reported_version == TARGET and d.u.reason is not None
    assert [type(a) for a in actions] == [Record]
    transitions = [(r.from_state, r.to_state) for r in d.of(Record)]
    assert transitions == [
        (S.PENDING, S.SENT),
        (S.SENT, S.DOWNLOADING),
        (S.DOWNLOADING, S.DOWNLOADED),
        (S.DOWNLOADED, S.INSTALLING),
        (S.INSTALLING, S.INSTALLED),
        (S.INSTALLED, S.VERIFIED),
    ]
    # Some chargers send Installed after the reboot: late, noted, harmless.
    assert d(StatusReported(FS.INSTALLED, T0 + 19 * MIN)) == ()
    assert d.state is S.VERIFIED and d.u.last_status is FS.INSTALLED


def test_cbp1_statuses_drive_the_same_machine() -> None:
    d = Driver()
    d.to_sent()
    for code, state in [(1, S.DOWNLOADING), (2, S.DOWNLOADED), (5, S.INSTALLING), (6, S.INSTALLED)]:
        d(StatusReported(FirmwareStatus.from_cbp1(code), T0 + code * MIN))
        assert d.state is state
    d(BootReported(parse_version("DLH_XD32E_210521003\x00\x00\x00\x00\x00"), T0 + 9 * MIN))
    assert d.state is S.VERIFIED


@pytest.mark.parametrize("status", [FS.DOWNLOADED, FS.INSTALLING, FS.INSTALLED])
def test_a_charger_may_skip_statuses(status: FirmwareStatus) -> None:
    d = Driver()
    d.to_sent()
    d(StatusReported(status, T0 + MIN))
    assert d.state.value == status.value


@pytest.mark.parametrize("state", [S.DOWNLOADED, S.INSTALLING, S.INSTALLED])
def test_backward_or_repeated_statuses_move_nothing(state: PileState) -> None:
    d = Driver()
    d.to(state)
    deadline = d.u.deadline
    for status in [FS.DOWNLOADING, FS.DOWNLOADED, FS.INSTALLING, FS.IDLE]:
        if status is FS.INSTALLING and state is S.DOWNLOADED:
            continue
        assert d(StatusReported(status, T0 + 30 * MIN)) == ()
        assert d.state is state and d.u.last_status is status and d.u.deadline == deadline


@pytest.mark.parametrize("state", sorted(IN_FLIGHT))
def test_a_boot_with_the_target_verifies_at_any_point_after_the_send(state: PileState) -> None:
    d = Driver()
    d.to(state)
    d(BootReported(TARGET, T0 + 9 * MIN))
    assert d.state is S.VERIFIED


# --------------------------------------------------------------------------
# version unchanged
# --------------------------------------------------------------------------
def test_installed_then_boot_with_the_old_version_fails_version_unchanged() -> None:
    d = Driver()
    d.to(S.INSTALLED)
    actions = d(BootReported(OLD, T0 + 8 * MIN))
    assert d.state is S.FAILED
    assert d.u.reason is not None and d.u.reason.startswith("version unchanged")
    assert "DLH_XD32E_201110002" in d.u.reason and d.u.last_error == d.u.reason
    (record,) = actions
    assert isinstance(record, Record) and record.trigger is Trigger.VERSION_UNCHANGED
    # Final at once: the image installed and did not take; a retry repeats that.
    assert d.u.attempts == 1 and d.u.finished_at == T0 + 8 * MIN
    assert d(StageTimeout(T0 + 2 * 60 * MIN)) == ()


def test_installed_then_boot_with_a_third_version_fails() -> None:
    d = Driver()
    d.to(S.INSTALLED)
    d(BootReported(parse_version("DLH_XD32E_200101001"), T0 + 8 * MIN))
    assert d.state is S.FAILED and d.u.reason is not None
    assert d.u.reason.startswith("booted with DLH_XD32E_200101001, not the target")


def test_unknown_old_version_and_a_wrong_boot_is_unexpected_not_unchanged() -> None:
    d = Driver(upgrade=fresh(version=None))
    d.to(S.INSTALLED)
    d(BootReported(OLD, T0 + 8 * MIN))
    assert d.state is S.FAILED and d.u.reason is not None
    assert not d.u.reason.startswith("version unchanged")


@pytest.mark.parametrize("state", [S.SENT, S.DOWNLOADING, S.DOWNLOADED, S.INSTALLING])
def test_a_boot_with_the_old_version_before_installed_is_only_noted(state: PileState) -> None:
    # Many chargers send BootNotification on every reconnect; before Installed
    # that proves nothing, the stage timeout decides.
    d = Driver()
    d.to(state)
    assert d(BootReported(OLD, T0 + 9 * MIN)) == ()
    assert d.state is state and d.u.reported_version == OLD


# --------------------------------------------------------------------------
# failures, retries and backoff
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("state", "status", "what"),
    [
        (S.DOWNLOADING, FS.DOWNLOAD_FAILED, "download failed"),
        (S.DOWNLOADED, FS.CHECKSUM_FAILED, "checksum failed"),
        (S.INSTALLING, FS.INSTALL_FAILED, "installation failed"),
        (S.SENT, FS.DOWNLOAD_FAILED, "download failed"),
    ],
)
def test_a_failure_status_with_attempts_left_waits_and_retries(
    state: PileState, status: FirmwareStatus, what: str
) -> None:
    d = Driver()
    d.to(state)
    at = T0 + 7 * MIN
    record, timer = d(StatusReported(status, at))
    assert d.state is S.RETRY_WAIT
    assert d.u.reason == d.u.last_error == f"{what} (attempt 1 of 3)"
    assert timer == ArmTimer(300, PILE, at + 5 * MIN, Stage.BACKOFF)
    assert isinstance(record, Record) and record.trigger is Trigger.ATTEMPT_FAILED

    assert d(StageTimeout(at + 4 * MIN)) == ()  # early: ignored
    assert d.state is S.RETRY_WAIT
    d(StageTimeout(at + 5 * MIN))
    assert d.state is S.PENDING and d.u.deadline is None
    (_, _, send) = d(DispatchPossible(True, False, at + 6 * MIN))
    assert isinstance(send, SendUpdate) and send.attempt == 2
    assert d.u.attempts == 2 and d.u.sends == 2 and d.u.first_sent_at == T0
    assert d.u.last_sent_at == at + 6 * MIN and d.u.last_error == f"{what} (attempt 1 of 3)"


def test_backoff_grows_and_is_capped_then_the_last_failure_is_final() -> None:
    task = make_task(max_attempts=4, backoff=10 * MIN, backoff_factor=3, backoff_max=60 * MIN)
    d = Driver(task)
    now = T0
    delays = []
    for attempt in range(1, 5):
        d(DispatchPossible(True, False, now))
        assert d.u.attempts == attempt
        now += MIN
        d(StatusReported(FS.DOWNLOAD_FAILED, now))
        if attempt < 4:
            assert d.state is S.RETRY_WAIT
            assert d.u.deadline is not None
            delays.append(d.u.deadline - now)
            now = d.u.deadline
            d(StageTimeout(now))
            assert d.state is S.PENDING
    assert delays == [10 * MIN, 30 * MIN, 60 * MIN]
    assert d.state is S.FAILED
    assert d.u.reason == "download failed (attempt 4 of 4, none left)"
    assert d.of(Record)[-1].trigger is Trigger.GAVE_UP
    with pytest.raises(IllegalTransition):
        d(DispatchPossible(True, False, now))


def test_retry_policy_delays() -> None:
    policy = RetryPolicy(max_attempts=5, backoff=MIN, backoff_factor=2, backoff_max=5 * MIN)
    assert [policy.delay_after(n) for n in range(1, 6)] == [MIN, 2 * MIN, 4 * MIN, 5 * MIN, 5 * MIN]
    with pytest.raises(ValueError, match="from 1"):
        policy.delay_after(0)
    assert RetryPolicy(backoff=timedelta(0), backoff_max=timedelta(0)).delay_after(3) == timedelta(
        0
    )


# --------------------------------------------------------------------------
# stage timeouts
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("state", "stage", "limit", "entered"),
    [
        # Driver.to(): sent at T0, then one status per minute.
        (S.SENT, "download", 30 * MIN, T0),
        (S.DOWNLOADING, "download", 30 * MIN, T0),
        (S.DOWNLOADED, "install", 20 * MIN, T0 + 2 * MIN),
        (S.INSTALLING, "install", 20 * MIN, T0 + 2 * MIN),  # measured from downloaded
        (S.INSTALLED, "reboot", 10 * MIN, T0 + 4 * MIN),
    ],
)
def test_each_stage_times_out(
    state: PileState, stage: str, limit: timedelta, entered: datetime
) -> None:
    d = Driver()
    d.to(state)
    timer = d.of(ArmTimer)[-1]
    assert timer.stage.value == stage and d.u.deadline == timer.at == entered + limit
    assert d(StageTimeout(timer.at - timedelta(seconds=1))) == ()
    assert d.state is state
    d(StageTimeout(timer.at))
    assert d.state is S.RETRY_WAIT
    assert d.u.reason == f"{stage} timed out after {limit.total_seconds():g} s (attempt 1 of 3)"


def test_a_timer_of_a_stage_already_left_is_ignored() -> None:
    d = Driver()
    d.to_sent()
    download_timer = d.of(ArmTimer)[-1]
    d(StatusReported(FS.DOWNLOADED, T0 + 25 * MIN))  # install deadline: T0 + 45 min
    assert d(StageTimeout(download_timer.at)) == ()
    assert d.state is S.DOWNLOADED
    d(BootReported(TARGET, T0 + 26 * MIN))
    for at in [T0 + 45 * MIN, T0 + 99 * MIN]:
        assert d(StageTimeout(at)) == ()
    assert d.state is S.VERIFIED


def test_the_reboot_timeout_then_a_late_boot_with_the_target_still_verifies() -> None:
    d = Driver(make_task(max_attempts=1))
    d.to(S.INSTALLED)
    assert d.u.deadline is not None
    d(StageTimeout(d.u.deadline))
    assert d.state is S.FAILED and d.u.reason is not None and "reboot timed out" in d.u.reason
    d(BootReported(TARGET, d.u.deadline + 3 * MIN if d.u.deadline else T0))
    assert d.state is S.VERIFIED  # a late truth beats an early verdict
    assert d.of(Record)[-1].from_state is S.FAILED


def test_a_boot_with_the_target_during_backoff_verifies() -> None:
    d = Driver()
    d.to(S.INSTALLED)
    assert d.u.deadline is not None
    d(StageTimeout(d.u.deadline))
    assert d.state is S.RETRY_WAIT
    d(BootReported(TARGET, d.u.deadline + MIN))
    assert d.state is S.VERIFIED and d.u.deadline is None


# --------------------------------------------------------------------------
# deferral: offline, charging
# --------------------------------------------------------------------------
def test_an_offline_pile_waits_then_is_sent_when_reached_online() -> None:
    d = Driver(upgrade=fresh(online=False))
    (record,) = d(DispatchPossible(online=False, charging=False, now=T0))
    assert d.state is S.WAITING and d.u.reason == "offline"
    assert isinstance(record, Record) and record.trigger is Trigger.DEFER
    d(PileOnline(T0 + MIN))
    assert d.state is S.WAITING and d.u.online and not d.u.blocked
    assert d(DispatchPossible(True, False, T0 + 2 * MIN))[-1] == SendUpdate(
        300, PILE, URL, SHA, 1_048_576, "DLH_XD32E_210521003", T0 + 2 * MIN, 1
    )
    assert d.state is S.SENT and d.u.attempts == 1


def test_a_charging_pile_is_deferred_until_idle() -> None:
    d = Driver(upgrade=fresh(charging=True))
    d(DispatchPossible(online=True, charging=True, now=T0))
    assert d.state is S.WAITING and d.u.reason == "charging: deferred until idle"
    assert not d.of(SendUpdate)
    d(ChargingEnded(T0 + 40 * MIN))
    assert not d.u.blocked and d.state is S.WAITING
    d(DispatchPossible(True, False, T0 + 41 * MIN))
    assert d.state is S.SENT


def test_presence_and_charging_flags_are_tracked_in_every_state() -> None:
    d = Driver()
    d.to(S.DOWNLOADING)
    for event, online, charging in [
        (ChargingStarted(T0), True, True),
        (PileOffline(T0), False, True),
        (PileOnline(T0), True, True),
        (ChargingEnded(T0), True, False),
    ]:
        assert d(event) == ()
        assert (d.state, d.u.online, d.u.charging) == (S.DOWNLOADING, online, charging)


def test_busy_rejection_defers_and_gives_the_attempt_back() -> None:
    d = Driver(make_task(max_attempts=1))
    d.to_sent()
    d(UpdateRejected(RejectReason.CHARGING, T0 + MIN))
    assert d.state is S.WAITING and d.u.charging and d.u.attempts == 0 and d.u.sends == 1
    assert d.u.deadline is None
    d(ChargingEnded(T0 + 30 * MIN))
    d(DispatchPossible(True, False, T0 + 31 * MIN))
    assert d.state is S.SENT and d.u.attempts == 1 and d.u.sends == 2


# --------------------------------------------------------------------------
# skipped
# --------------------------------------------------------------------------
@pytest.mark.parametrize("online", [True, False])
def test_a_pile_already_at_target_is_skipped_when_reached(online: bool) -> None:
    d = Driver(upgrade=fresh(online=online, version=parse_version("dlh-xd32e-210521003")))
    d(DispatchPossible(online, False, T0))
    assert d.state is S.SKIPPED and not d.of(SendUpdate) and d.u.finished_at == T0
    assert d.u.reason == "already runs the target version DLH_XD32E_210521003"


def test_a_boot_with_the_target_before_any_send_skips() -> None:
    d = Driver(upgrade=fresh(online=False))
    d(DispatchPossible(False, False, T0))
    d(BootReported(TARGET, T0 + MIN))
    assert d.state is S.SKIPPED and d.u.sends == 0


def test_a_newer_version_of_the_same_line_is_skipped_unless_downgrades_are_allowed() -> None:
    newer = parse_version("DLH_XD32E_220101001")
    d = Driver(upgrade=fresh(version=newer))
    d(DispatchPossible(True, False, T0))
    assert d.state is S.SKIPPED and d.u.reason is not None and "newer than the target" in d.u.reason
    d = Driver(make_task(allow_downgrade=True), upgrade=fresh(version=newer))
    d(DispatchPossible(True, False, T0))
    assert d.state is S.SENT
    # Another product line, or an opaque version, is not "newer": it is sent.
    for other in ["DLH_XD40E_220101001", "SIM_9.9.9"]:
        d = Driver(upgrade=fresh(version=parse_version(other)))
        d(DispatchPossible(True, False, T0))
        assert d.state is S.SENT


def test_rejections_already_at_target_and_unsupported() -> None:
    d = Driver()
    d.to_sent()
    d(UpdateRejected(RejectReason.ALREADY_AT_TARGET, T0 + MIN))
    assert d.state is S.SKIPPED
    d = Driver()
    d.to_sent()
    d(UpdateRejected(RejectReason.UNSUPPORTED, T0 + MIN, detail="model XD32E-B"))
    assert d.state is S.FAILED and d.u.attempts == 1  # final: retrying cannot help
    assert d.u.reason == "charger does not support the update: model XD32E-B"


def test_an_error_reply_is_a_failed_attempt() -> None:
    d = Driver()
    d.to_sent()
    d(UpdateRejected(RejectReason.ERROR, T0 + MIN, detail="InternalError"))
    assert d.state is S.RETRY_WAIT
    assert d.u.reason == "charger rejected UpdateFirmware: InternalError (attempt 1 of 3)"


def test_late_replies_to_an_earlier_attempt_are_ignored() -> None:
    d = Driver()
    d.to(S.DOWNLOADING)
    assert d(Sent(T0 + 2 * MIN)) == ()
    assert d(UpdateRejected(RejectReason.CHARGING, T0 + 2 * MIN)) == ()
    assert d.state is S.DOWNLOADING and d.u.attempts == 1
    d(StatusReported(FS.DOWNLOAD_FAILED, T0 + 3 * MIN))
    d(StageTimeout(T0 + 8 * MIN))
    assert d.state is S.PENDING
    assert d(Sent(T0 + 9 * MIN)) == ()  # the first attempt's reply, very late
    assert d.state is S.PENDING


# --------------------------------------------------------------------------
# cancel
# --------------------------------------------------------------------------
@pytest.mark.parametrize("setup", ["pending", "waiting", "retry_wait"])
def test_cancel_before_flight(setup: str) -> None:
    d = Driver()
    if setup == "waiting":
        d(DispatchPossible(False, False, T0))
    elif setup == "retry_wait":
        d.to_sent()
        d(StatusReported(FS.DOWNLOAD_FAILED, T0 + MIN))
    assert d.state.value == setup
    d(Cancel(T0 + 2 * MIN))
    assert d.state is S.CANCELLED and d.u.deadline is None and d.u.finished_at == T0 + 2 * MIN
    assert d(StageTimeout(T0 + 99 * MIN)) == ()  # the backoff timer fires anyway


@pytest.mark.parametrize("state", sorted(IN_FLIGHT))
def test_cancel_in_flight_keeps_following_the_pile(state: PileState) -> None:
    d = Driver()
    d.to(state)
    assert d(Cancel(T0 + 9 * MIN)) == ()
    assert d.state is state
    d(BootReported(TARGET, T0 + 10 * MIN))
    assert d.state is S.VERIFIED


# --------------------------------------------------------------------------
# illegal transitions and the table
# --------------------------------------------------------------------------
@pytest.mark.parametrize("state", [s for s in PileState if s not in DISPATCHABLE])
def test_dispatch_is_illegal_unless_pending_or_waiting(state: PileState) -> None:
    upgrade = replace(fresh(), state=state, sends=1, attempts=1)
    with pytest.raises(IllegalTransition) as info:
        step(TASK, upgrade, DispatchPossible(True, False, T0))
    assert info.value.state is state and info.value.pile_id == PILE
    assert "illegal in state" in str(info.value)


@pytest.mark.parametrize("state", sorted(FINAL))
def test_cancel_of_a_final_pile_is_illegal(state: PileState) -> None:
    with pytest.raises(IllegalTransition):
        step(TASK, replace(fresh(), state=state), Cancel(T0))


@pytest.mark.parametrize(
    "event",
    [
        Sent(T0),
        UpdateRejected(RejectReason.CHARGING, T0),
        UpdateRejected(RejectReason.ALREADY_AT_TARGET, T0),
        UpdateRejected(RejectReason.UNSUPPORTED, T0),
        UpdateRejected(RejectReason.ERROR, T0),
    ],
)
@pytest.mark.parametrize("state", [S.PENDING, S.WAITING])
def test_a_reply_to_a_command_never_sent_is_illegal(event: PileEvent, state: PileState) -> None:
    with pytest.raises(IllegalTransition):
        step(TASK, replace(fresh(), state=state), event)


def test_the_table_is_the_whole_machine() -> None:
    for state in PileState:
        for trigger in Trigger:
            if (state, trigger) in TRANSITIONS:
                assert next_state(PILE, state, trigger) is TRANSITIONS[state, trigger]
            else:
                with pytest.raises(IllegalTransition):
                    next_state(PILE, state, trigger)
    # Final states are left only by the proof (a boot with the target).
    for (state, trigger), to in TRANSITIONS.items():
        if state in FINAL and to is not state:
            assert trigger is Trigger.BOOT_VERIFIED and to is S.VERIFIED
    # Only the rollout's dispatch puts a pile in flight.
    entries = {(s, t) for (s, t), to in TRANSITIONS.items() if to is S.SENT and s is not S.SENT}
    assert entries == {(S.PENDING, Trigger.DISPATCH), (S.WAITING, Trigger.DISPATCH)}
    # Every state is reachable from pending.
    reached = {S.PENDING}
    frontier = [S.PENDING]
    while frontier:
        here = frontier.pop()
        for (state, _), to in TRANSITIONS.items():
            if state is here and to not in reached:
                reached.add(to)
                frontier.append(to)
    assert reached == set(PileState)
    assert set(STAGE_OF) == IN_FLIGHT | {S.RETRY_WAIT}


def test_naive_times_are_refused() -> None:
    with pytest.raises(TaskSpecError, match="timezone-aware"):
        step(TASK, fresh(), DispatchPossible(True, False, datetime(2021, 5, 27)))


# --------------------------------------------------------------------------
# persisted form
# --------------------------------------------------------------------------
def test_the_record_round_trips_through_json_without_the_live_view() -> None:
    d = Driver()
    d.to(S.INSTALLED)
    d(Sent(T0 + 9 * MIN))
    upgrade = replace(d.u, wave=2)
    data = upgrade.to_dict()
    assert "online" not in data and "charging" not in data
    assert data["state"] == "installed" and data["from_version"] == "DLH_XD32E_201110002"
    assert data["last_status"] == "installed" and data["deadline"] == upgrade.deadline.isoformat()  # type: ignore[union-attr]
    back = PileUpgrade.from_dict(json.loads(json.dumps(data)))
    assert back == replace(upgrade, online=False, charging=False)
    assert back.durable_equals(upgrade)
    assert PileUpgrade.from_dict(data, online=True, charging=False) == upgrade
    assert PileUpgrade.from_dict({"pile_id": PILE}) == PileUpgrade(PILE)


def test_raw_versions_are_kept_in_the_record() -> None:
    upgrade = fresh(version=parse_version("dlh-xd32e-201110002\x00\x00"))
    assert upgrade.to_dict()["reported_version"] == "dlh-xd32e-201110002"
    assert PileUpgrade.from_dict(upgrade.to_dict()).reported_version == OLD


@pytest.mark.parametrize(
    ("patch", "key"),
    [
        ({"state": "flashing"}, "state"),
        ({"attempts": -1}, "attempts"),
        ({"attempts": True}, "attempts"),
        ({"sends": None}, "sends"),
        ({"deadline": "yesterday"}, "deadline"),
        ({"deadline": "2021-05-27T02:00:00"}, "deadline"),  # naive
        ({"reported_version": ""}, "reported_version"),
        ({"last_status": "Installed"}, "last_status"),
        ({"pile_id": "4420000001100001"}, "pile_id"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_a_bad_record_names_the_field(patch: dict[str, Any], key: str) -> None:
    data = fresh().to_dict() | patch
    with pytest.raises(RecordError) as info:
        PileUpgrade.from_dict(data)
    assert info.value.key == key


def test_a_record_without_pile_id_is_refused() -> None:
    with pytest.raises(RecordError, match="pile_id"):
        PileUpgrade.from_dict({"state": "pending"})
