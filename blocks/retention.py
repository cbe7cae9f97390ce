"""Retention (GFS): which backups of one series to keep, with restic `forget` semantics.

Only complete backups (with a manifest) count. Walking newest first, keep_last keeps
the N newest; each bucket (hourly, daily, weekly, monthly, yearly) keeps the newest
backup of each of its N most recent periods that have a backup. Periods are wall-clock
calendar periods in the policy's time zone. Buckets are independent and the result is
their union; the newest complete backup is always kept. An empty policy removes
nothing. Incomplete backups are removed only once older than the grace period.

Three guarantees come before the rules: what the current run wrote is kept; the newest
backup that passed verify is kept; and a backup dated in the future (beyond the policy's
tolerance, of the clock or of the store time of its own manifest: a worker with a fast
clock, or a planted manifest) is kept, flagged and never counted, so it can take no slot
(not even "newest") from a real backup.
Pure logic: no I/O.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from prefect_dbbackup.blocks.bounds import Hours, KeepCount
from pydantic import BaseModel, ConfigDict, Field, field_validator

NEWEST = "newest"
LAST = "last"
NO_POLICY = "no policy"
NOT_KEPT = "not kept by policy"
IN_GRACE = "incomplete, in grace period"
WRITTEN = "written by this run"
VERIFIED = "newest verified"
FUTURE = "future-dated"
DEFAULT_FUTURE_TOLERANCE_HOURS = 1.0


@dataclass(frozen=True)
class BackupRef:
    """One backup of a series: id, start time (aware), whether its manifest exists, whether
    it passed verify, and when the store wrote its manifest (the store's clock)."""

    backup_id: str
    time: datetime
    complete: bool = True
    verified: bool = False
    stored_at: datetime | None = None

    def __post_init__(self) -> None:
        _require_aware(self.time, f"time of backup {self.backup_id!r}")
        if self.stored_at is not None:
            _require_aware(self.stored_at, f"store time of backup {self.backup_id!r}")

    def future_dated(self, now: datetime, tolerance: timedelta) -> bool:
        """Dated more than the tolerance ahead of the clock, or of the store's own time of
        its manifest: a backup cannot start after the store wrote its manifest, whatever
        the clock of the worker that wrote it or of the one judging it."""
        bound = now if self.stored_at is None else min(now, self.stored_at)
        return self.time > bound + tolerance


@dataclass
class Decision:
    """Keep or remove one backup, and why."""

    backup_id: str
    time: datetime
    keep: bool
    reasons: list[str]
    future_dated: bool = False


def _hour(local: datetime) -> str:
    return f"{local:%Y-%m-%d %H}:00"


def _day(local: datetime) -> str:
    return f"{local:%Y-%m-%d}"


def _iso_week(local: datetime) -> str:
    year, week, _ = local.isocalendar()
    return f"{year}-W{week:02d}"


def _month(local: datetime) -> str:
    return f"{local:%Y-%m}"


def _year(local: datetime) -> str:
    return f"{local:%Y}"


BUCKETS: tuple[tuple[str, Callable[[datetime], str]], ...] = (
    ("hourly", _hour),
    ("daily", _day),
    ("weekly", _iso_week),
    ("monthly", _month),
    ("yearly", _year),
)
"""Bucket name and the label of the period a local time falls in."""


class RetentionPolicy(BaseModel):
    """How many backups to keep per rule; None and 0 both mean "this rule keeps nothing"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    keep_last: KeepCount | None = None
    keep_hourly: KeepCount | None = None
    keep_daily: KeepCount | None = None
    keep_weekly: KeepCount | None = None
    keep_monthly: KeepCount | None = None
    keep_yearly: KeepCount | None = None
    timezone: str = "UTC"
    garbage_grace_hours: Hours = Field(default=24, ge=0)
    future_tolerance_hours: Hours = Field(
        default=DEFAULT_FUTURE_TOLERANCE_HOURS,
        ge=0,
        description="A backup dated more than this ahead of the clock, or of the store time "
        "of its manifest, is future-dated: kept, reported, and never counted by any rule. "
        "Prune deletes nothing while the worker's clock and the storage's disagree by more.",
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise ValueError(
                f"unknown time zone {name!r}: use an IANA name such as 'UTC' or 'Europe/Berlin'"
            ) from None
        return name

    @property
    def zone(self) -> ZoneInfo:
        """The time zone periods are computed in."""
        return ZoneInfo(self.timezone)

    def count(self, rule: str) -> int:
        """How many backups (last) or periods (buckets) one rule keeps."""
        return getattr(self, f"keep_{rule}") or 0

    @property
    def is_empty(self) -> bool:
        """True when no rule keeps anything: such a policy removes nothing."""
        return not any(self.count(rule) for rule in ("last", *(name for name, _ in BUCKETS)))


def plan(
    backups: Iterable[BackupRef],
    policy: RetentionPolicy,
    now: datetime,
    written: Collection[str] = (),
) -> list[Decision]:
    """One decision per backup of one series, newest first.

    `written`: ids the current run stored; they are kept whatever the rules say.
    """
    _require_aware(now, "now")
    ordered = _newest_first(backups)
    tolerance = timedelta(hours=policy.future_tolerance_hours)
    future = {b.backup_id for b in ordered if b.future_dated(now, tolerance)}
    if policy.is_empty:
        kept = {b.backup_id: [NO_POLICY] for b in ordered}
    else:
        kept = _keep_reasons(
            [b for b in ordered if b.complete and b.backup_id not in future], policy
        )
    for backup_id in future:
        kept.setdefault(backup_id, []).append(FUTURE)
    for backup_id in set(written) & {b.backup_id for b in ordered}:
        kept.setdefault(backup_id, []).append(WRITTEN)
    return [
        _decide(b, kept.get(b.backup_id, []), policy, now, b.backup_id in future) for b in ordered
    ]


def _require_aware(moment: datetime, what: str) -> None:
    if moment.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got {moment.isoformat()}")


def _newest_first(backups: Iterable[BackupRef]) -> list[BackupRef]:
    """Newest first; equal times are ordered by id, the larger id counting as newer."""
    ordered = sorted(backups, key=lambda b: (b.time, b.backup_id), reverse=True)
    ids = [b.backup_id for b in ordered]
    if len(set(ids)) != len(ids):
        raise ValueError("backup ids must be unique within a series")
    return ordered


def _keep_reasons(complete: Sequence[BackupRef], policy: RetentionPolicy) -> dict[str, list[str]]:
    """Reasons per kept backup id, for complete backups ordered newest first."""
    reasons: dict[str, list[str]] = defaultdict(list)
    for backup in complete[:1]:
        reasons[backup.backup_id].append(NEWEST)
    for backup in complete[: policy.count("last")]:
        reasons[backup.backup_id].append(LAST)
    for name, period in BUCKETS:
        for backup_id, label in _bucket(complete, policy, name, period).items():
            reasons[backup_id].append(f"{name} {label}")
    for backup in [b for b in complete if b.verified][:1]:
        reasons[backup.backup_id].append(VERIFIED)
    return reasons


def _bucket(
    complete: Sequence[BackupRef],
    policy: RetentionPolicy,
    name: str,
    period: Callable[[datetime], str],
) -> dict[str, str]:
    """Period label per backup id kept by one bucket: the newest of each of its N newest periods."""
    kept: dict[str, str] = {}
    seen: set[str] = set()
    limit, zone = policy.count(name), policy.zone
    for backup in complete:
        if len(seen) >= limit:
            break
        label = period(backup.time.astimezone(zone))
        if label not in seen:
            seen.add(label)
            kept[backup.backup_id] = label
    return kept


def _decide(
    backup: BackupRef, reasons: list[str], policy: RetentionPolicy, now: datetime, future: bool
) -> Decision:
    """Complete backups are kept when a rule keeps them; incomplete ones while in grace.

    A backup some guarantee keeps (written by this run, future-dated) is kept either way.
    """
    if backup.complete or reasons:
        keep = bool(reasons)
        return Decision(backup.backup_id, backup.time, keep, reasons or [NOT_KEPT], future)
    grace = policy.garbage_grace_hours
    young = (now - backup.time).total_seconds() <= grace * 3600
    reason = IN_GRACE if young else f"incomplete, older than {grace:g}h"
    return Decision(backup.backup_id, backup.time, young, [reason], future)
