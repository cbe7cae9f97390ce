"""No test depends on the day, hour or time zone it starts in: the scenarios that decide
keep or delete by dates, run with dbbackup's clock pinned at each of tests/dates.py's
INSTANTS (DST changes in Berlin and New York, a year's last hour, Feb 29, a year ahead),
in a process whose local zone is UTC, Europe/Berlin and America/New_York in turn.

In memory, without a Prefect API: prune() reads dbbackup's clock itself (checked against
the in-memory storage's, which is the same pinned clock), as the CLI's prune does."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import pytest
from prefect_dbbackup.blocks.engines import POSTGRES
from prefect_dbbackup.blocks.memory import MemoryBackupStorage
from prefect_dbbackup.blocks.retention import RetentionPolicy
from prefect_dbbackup.tasks.prune import prune
from prefect_dbbackup.tasks.verify import scratch_name, stale_scratch_names

from tests.dates import (
    INSTANTS,
    PROCESS_ZONES,
    check_decisions,
    dbbackup_at,
    plant,
    plant_daily_series,
)
from tests.helpers import signing_fields

POLICY_ZONES = ("Europe/Berlin", "America/New_York", "UTC")
AT = pytest.mark.parametrize("instant", INSTANTS.values(), ids=INSTANTS.keys())


def _storage() -> MemoryBackupStorage:
    return MemoryBackupStorage(space=uuid.uuid4().hex, **signing_fields())


def _ids(storage: MemoryBackupStorage, server: str, database: str) -> set[str]:
    return {k.split("/")[2] for k in storage.list_keys(f"{server}/{database}/")}


def test_the_clock_is_pinned_and_the_zone_set():
    """The check below can fail: dbbackup really reads the pinned instant, in that zone."""
    instant = INSTANTS["berlin-dst-ends"]
    with dbbackup_at(instant, "America/New_York"):
        name = scratch_name("db", POSTGRES.name_limit)
        assert datetime.now().astimezone().tzname() in ("EST", "EDT")  # noqa: DTZ005
    assert name.startswith("dbbackup_verify_202610252330"), name
    assert not scratch_name("db", POSTGRES.name_limit).startswith("dbbackup_verify_202610252330")


@AT
def test_prune_decides_by_calendar_periods_at_any_date(instant: datetime):
    """tests/integration/test_prune.py's scenario, at each instant, in each process zone,
    with the policy in each zone."""
    for process_zone in PROCESS_ZONES:
        for policy_zone in POLICY_ZONES:
            with dbbackup_at(instant, process_zone):
                storage, server = _storage(), "srv"
                series = plant_daily_series(storage, server, instant, policy_zone)
                policy = RetentionPolicy(**series.policy)

                items = prune(storage, server, policy, databases=["shop"], dry_run=True)
                check_decisions({i.backup_id: i.model_dump() for i in items}, series)
                assert _ids(storage, server, "shop") == series.shop

                prune(storage, server, policy, databases=["shop"])
                assert _ids(storage, server, "shop") == series.kept()
                assert _ids(storage, server, "other") == set(series.other)
                again = prune(storage, server, policy, databases=["shop"])
                assert all(i.outcome == "kept" for i in again)


@AT
def test_keep_last_keeps_the_newest_and_what_this_run_wrote_at_any_date(instant: datetime):
    """A run's own backup survives keep_last=1 next to a backup from a clock a year fast;
    garbage goes only once out of its grace period."""
    for process_zone in PROCESS_ZONES:
        with dbbackup_at(instant, process_zone):
            storage = _storage()
            older = plant(storage, "srv", "db", instant - timedelta(days=1))
            fast = plant(storage, "srv", "db", instant + timedelta(days=365))
            young = plant(storage, "srv", "db", instant - timedelta(hours=23), complete=False)
            mine = plant(storage, "srv", "db", instant)
            items = prune(storage, "srv", RetentionPolicy(keep_last=1), written=[mine])
            shown = {i.backup_id: i for i in items}
            assert shown[fast].future_dated and shown[fast].keep
            assert shown[mine].reasons == ["newest", "last", "written by this run"]
            assert shown[young].reasons == ["incomplete, in grace period"]
            assert shown[older].outcome == "removed"
            assert _ids(storage, "srv", "db") == {fast, young, mine}


@AT
def test_stale_scratch_databases_by_age_at_any_date(instant: datetime):
    """verify drops scratch databases older than max_age, never one just made."""
    max_age = timedelta(hours=6)
    for process_zone in PROCESS_ZONES:
        with dbbackup_at(instant, process_zone):
            fresh = scratch_name("db", POSTGRES.name_limit)
            old = scratch_name("db", POSTGRES.name_limit, instant - max_age - timedelta(minutes=1))
            young = scratch_name(
                "db", POSTGRES.name_limit, instant - max_age + timedelta(minutes=1)
            )
            pinned = instant + timedelta(seconds=5)
            assert stale_scratch_names([fresh, old, young], pinned, max_age) == [old]
