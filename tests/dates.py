"""Tests must pass whatever the day, hour and time zone they start in.

`dbbackup_at(instant, zone)` pins dbbackup's clock (tests/invariants/clock.py: the
`datetime` its modules read) to an instant and the process's local time zone (TZ) to a
zone; INSTANTS are the dates worth trying (DST changes, a year's last hour, Feb 29, a
year ahead). tests/unit/test_dates.py runs the date-sensitive scenarios at each.

The retention scenario below is shared: tests/integration/test_prune.py runs it through
the CLI on real storage at the real time, tests/unit/test_dates.py through prune() on
in-memory storage (whose store times come from the same pinned clock) at every instant.
Its expectation is stated from the definition (the newest backup of each of the N
newest calendar periods, in the policy's zone), never from "the N newest backups".
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from prefect_dbbackup.tasks.layout import backup_key, new_backup_id
from prefect_dbbackup.tasks.prune import backup_time

from tests.helpers import plant_manifest
from tests.invariants.clock import pinned_clock


def _utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


INSTANTS: dict[str, datetime] = {
    # 23:30 UTC in the six days from the last Sunday of October: a day's backup at 22:30
    # UTC before the change and the next one after it fall on the same Berlin day
    "berlin-dst-ends": _utc(2026, 10, 25, 23, 30),
    "berlin-dst-ended-5-days-ago": _utc(2026, 10, 30, 23, 30),
    "berlin-dst-starts": _utc(2027, 3, 28, 0, 30),  # 01:30 CET, half an hour before
    "new-york-repeated-hour": _utc(2026, 11, 1, 6, 30),  # 01:30 EST, the second 01:30
    "new-york-skipped-hour": _utc(2027, 3, 14, 7, 30),  # 03:30 EDT, 02:xx did not exist
    "last-hour-of-the-year": _utc(2026, 12, 31, 23, 30),  # already 2027 in Berlin
    "feb-29": _utc(2028, 2, 29, 23, 30),
    "a-year-ahead": (datetime.now(UTC) + timedelta(days=365)).replace(microsecond=0),
}
PROCESS_ZONES = ("UTC", "Europe/Berlin", "America/New_York")


@contextlib.contextmanager
def local_zone(zone: str) -> Iterator[None]:
    """The process's local time zone (TZ) set to `zone` for the duration."""
    saved = os.environ.get("TZ")
    os.environ["TZ"] = zone
    time.tzset()
    try:
        yield
    finally:
        if saved is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = saved
        time.tzset()


@contextlib.contextmanager
def dbbackup_at(instant: datetime, zone: str) -> Iterator[None]:
    """dbbackup's clock starting at `instant`, in a process whose local zone is `zone`."""
    with local_zone(zone), pinned_clock(instant):
        yield


# --- the retention scenario: 30 daily backups, garbage, a neighbouring series ------------


def daily_policy(zone: str = "Europe/Berlin") -> dict:
    return {"keep_daily": 7, "keep_weekly": 3, "timezone": zone}


def plant(storage, server: str, database: str, when: datetime, complete: bool = True) -> str:  # noqa: ANN001
    """A stored backup at a chosen time (prune reads keys and manifests only, never the data)."""
    backup_id = new_backup_id(when)
    storage.put_bytes(backup_key(server, database, backup_id, "dump.pgc.zst.age"), b"x")
    if complete:
        plant_manifest(storage, server, database, backup_id)
    return backup_id


@dataclass
class DailySeries:
    """What plant_daily_series stored: `daily` newest first, one a day."""

    policy: dict
    daily: list[str]
    old_garbage: str
    fresh_garbage: str
    other: list[str]

    @property
    def shop(self) -> set[str]:
        return {*self.daily, self.old_garbage, self.fresh_garbage}

    def expected(self) -> dict[str, tuple[bool, list[str]]]:
        """Keep and reasons per backup of `shop`, from the definition of the policy."""
        zone = ZoneInfo(self.policy["timezone"])
        local = {b: backup_time(b).astimezone(zone) for b in self.daily}
        days = _newest_per_period(self.daily, lambda b: f"{local[b]:%Y-%m-%d}", 7)
        weeks = _newest_per_period(
            self.daily, lambda b: "{}-W{:02d}".format(*local[b].isocalendar()[:2]), 3
        )
        result: dict[str, tuple[bool, list[str]]] = {}
        for b in self.daily:
            reasons = ["newest"] if b == self.daily[0] else []
            reasons += [f"daily {days[b]}"] if b in days else []
            reasons += [f"weekly {weeks[b]}"] if b in weeks else []
            result[b] = (True, reasons) if reasons else (False, ["not kept by policy"])
        result[self.old_garbage] = (False, ["incomplete, older than 24h"])
        result[self.fresh_garbage] = (True, ["incomplete, in grace period"])
        return result

    def kept(self) -> set[str]:
        return {b for b, (keep, _) in self.expected().items() if keep}


def _newest_per_period(newest_first: list[str], period: Callable[[str], str], n: int) -> dict:
    """backup id -> period label, for the newest backup of each of the n newest periods."""
    newest: dict[str, str] = {}
    for b in newest_first:
        newest.setdefault(period(b), b)
    return {b: label for label, b in list(newest.items())[:n]}


def plant_daily_series(storage, server: str, now: datetime, zone: str = "Europe/Berlin"):  # noqa: ANN001, ANN201
    """30 complete daily backups of `shop` (the newest an hour before `now`), an old and a
    fresh incomplete one, and 10 backups of `other` (outside the pruned series)."""
    return DailySeries(
        policy=daily_policy(zone),
        daily=[plant(storage, server, "shop", now - timedelta(days=d, hours=1)) for d in range(30)],
        old_garbage=plant(storage, server, "shop", now - timedelta(days=3), complete=False),
        fresh_garbage=plant(storage, server, "shop", now - timedelta(minutes=5), complete=False),
        other=[plant(storage, server, "other", now - timedelta(days=d)) for d in range(10)],
    )


def check_decisions(shown: dict[str, dict], series: DailySeries) -> None:
    """Every backup of the series shown once, with the keep and the reasons the policy's
    definition gives; the scenario really tests both buckets (a weekly-only keep exists)."""
    assert set(shown) == series.shop
    expected = series.expected()
    wrong = {
        b: {"shown": (d["keep"], d["reasons"]), "expected": expected[b]}
        for b, d in shown.items()
        if (d["keep"], d["reasons"]) != expected[b]
    }
    assert not wrong, wrong
    reasons = [r for _, rs in expected.values() for r in rs]
    assert sum(r.startswith("daily ") for r in reasons) == 7
    assert sum(r.startswith("weekly ") for r in reasons) == 3
    assert any(rs[0].startswith("weekly ") for _, rs in expected.values())
