"""Backup health: per series, the newest good backup and how it stands, read from the catalog.

A *good* backup is one restore would use as `latest`: its manifest is signed by a trusted
key and matches where it sits (on a storage with no `manifest_verify_keys`: an unsigned
manifest that matches where it sits, shown with trust `unsigned`), and it is not dated in
the future. Only the newest manifests of each series are read, newest first, until two
good ones are found (the newest and the one its size is compared with), so the cost
grows with the number of series, not with the retention. See docs/operations.md
("Backup health").
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from prefect_dbbackup.blocks.retention import DEFAULT_FUTURE_TOLERANCE_HOURS, BackupRef
from prefect_dbbackup.blocks.storage import BackupStorage
from prefect_dbbackup.tasks.catalog import StoredManifest, read_manifests, signature_key
from prefect_dbbackup.tasks.layout import (
    GLOBALS_SEGMENT,
    VERIFIED_NAME,
    VERIFIED_SIGNATURE_NAME,
    parse_manifest_key,
    series_prefix,
)
from prefect_dbbackup.tasks.verify_record import record_key, verified_backups
from pydantic import BaseModel

DEFAULT_INTERVAL = timedelta(hours=24)  # the default backup schedule: daily
DEFAULT_MARGIN = timedelta(hours=2)  # a run's own length and a late start
FUTURE_TOLERANCE = timedelta(hours=DEFAULT_FUTURE_TOLERANCE_HOURS)  # as restore's 'latest'
WAVE = 2  # manifests read per series at a time, newest first
State = Literal["ok", "late", "future-dated", "no-good-backup", "no-backups"]
RowKind = Literal["database", "users", "server"]


class HealthRow(BaseModel):
    """The health of one series (a database, or a server's users/roles), or of a server
    with no backups at all (kind 'server', database '')."""

    server: str
    database: str
    kind: RowKind
    state: State
    late: bool
    future_dated: bool = False
    trust: str = "none"  # of the newest good backup: signed, unsigned, or none
    backup_id: str | None = None
    finished_at: datetime | None = None
    age_seconds: float | None = None
    stored_bytes: int | None = None
    change_bytes: int | None = None  # against the previous good backup (None: no previous)
    seconds: float | None = None
    verify: str = "none"  # the newest good backup: ok, none, or invalid (its record does not count)
    verified_at: datetime | None = None  # when the store wrote the record that counts
    interval_seconds: float = DEFAULT_INTERVAL.total_seconds()
    note: str = ""


@dataclass
class _Series:
    """What has been read of one series so far, newest first."""

    server: str
    database: str
    kind: RowKind
    keys: list[str]  # manifest keys not yet read, newest first
    good: list[StoredManifest] = field(default_factory=list)
    future: list[StoredManifest] = field(default_factory=list)
    refused: list[StoredManifest] = field(default_factory=list)  # untrusted, newer than good

    @property
    def done(self) -> bool:
        return len(self.good) >= 2 or not self.keys


def _series(listed: dict[str, datetime], server: str | None) -> dict[str, _Series]:
    """The manifest keys of the listing, by series (raw series prefix), newest id first."""
    found: dict[str, _Series] = {}
    for key in sorted(listed, reverse=True):
        parsed = parse_manifest_key(key)
        if parsed is None or (server is not None and parsed[0] != server):
            continue
        prefix = key.rsplit("/", 2)[0]
        kind: RowKind = "users" if prefix.endswith("/" + GLOBALS_SEGMENT) else "database"
        found.setdefault(prefix, _Series(parsed[0], parsed[1], kind, [])).keys.append(key)
    return found


def _good_usable(entry: StoredManifest, signs: bool) -> bool:
    return entry.manifest is not None and entry.trust == ("signed" if signs else "unsigned")


def _future_dated(entry: StoredManifest, now: datetime) -> bool:
    assert entry.manifest is not None
    ref = BackupRef(entry.backup_id, entry.manifest.started_at, stored_at=entry.stored_at)
    return ref.future_dated(now, FUTURE_TOLERANCE)


def _read_newest(
    storage: BackupStorage, listed: dict[str, datetime], series: list[_Series], now: datetime
) -> None:
    """Read each series' manifests newest first, WAVE at a time in parallel, until it has
    two good backups or none is left."""
    keys = storage.manifest_verifiers()
    signs = bool(keys)
    while todo := [s for s in series if not s.done]:
        batch = [(s, s.keys.pop(0)) for s in todo for _ in range(min(WAVE, len(s.keys)))]
        wanted = [(key, signature_key(key) in listed) for _, key in batch]
        for (s, key), entry in zip(batch, read_manifests(storage, wanted, keys), strict=True):
            if entry is None or len(s.good) >= 2:
                continue
            entry.stored_at = listed[key]
            if not _good_usable(entry, signs):
                if not s.good:
                    s.refused.append(entry)
            elif _future_dated(entry, now):
                s.future.append(entry)
            else:
                s.good.append(entry)


def _verify_results(
    storage: BackupStorage, listed: dict[str, datetime], series: list[_Series]
) -> dict[str, tuple[str, datetime | None]]:
    """(ok | none | invalid, store time of the record) of each series' newest good backup,
    by manifest key."""
    newest = [s.good[0] for s in series if s.good]
    with_record = {e.key: (e, record_key(e, VERIFIED_SIGNATURE_NAME) in listed) for e in newest}
    with_record = {k: v for k, v in with_record.items() if record_key(v[0]) in listed}
    problems = (
        verified_backups(storage, with_record, storage.manifest_verifiers()) if with_record else {}
    )
    results: dict[str, tuple[str, datetime | None]] = {e.key: ("none", None) for e in newest}
    for key, problem in problems.items():
        record = record_key(with_record[key][0], VERIFIED_NAME)
        results[key] = ("invalid", None) if problem else ("ok", listed[record])
    return results


def _age_reference(entry: StoredManifest) -> datetime:
    """When the backup finished, by the earlier of the writer's clock (the manifest) and the
    store's (when it wrote the manifest): a fast clock never makes a backup look fresher."""
    assert entry.manifest is not None
    finished = entry.manifest.finished_at
    return finished if entry.stored_at is None else min(finished, entry.stored_at)


def _note(s: _Series) -> str:
    notes = [f"newer backup {e.backup_id} is {e.trust}: {e.problem}" for e in s.refused[:1]] + [
        f"backup {e.backup_id} is dated {e.manifest.started_at:%Y-%m-%d %H:%M}Z, in the future "
        "(a worker's fast clock, or planted)"
        for e in s.future[:1]
        if e.manifest is not None
    ]
    return "; ".join(notes)


def _row(
    s: _Series,
    verify: dict[str, tuple[str, datetime | None]],
    now: datetime,
    interval: timedelta,
    margin: timedelta,
) -> HealthRow:
    row = HealthRow(
        server=s.server,
        database=s.database,
        kind=s.kind,
        state="no-good-backup",
        late=True,
        future_dated=bool(s.future),
        interval_seconds=interval.total_seconds(),
        note=_note(s),
    )
    if s.good:
        newest = s.good[0]
        m = newest.manifest
        assert m is not None
        age = max(timedelta(0), now - _age_reference(newest))
        row.late = age > interval + margin
        row.state = "late" if row.late else "ok"
        previous = s.good[1].manifest if len(s.good) > 1 else None
        row.verify, row.verified_at = verify[newest.key]
        row.trust, row.backup_id, row.finished_at = newest.trust, m.backup_id, m.finished_at
        row.age_seconds, row.seconds = age.total_seconds(), m.seconds
        row.stored_bytes = m.stats.stored_bytes
        if previous is not None:
            row.change_bytes = m.stats.stored_bytes - previous.stats.stored_bytes
    if s.future:
        row.state = "future-dated"  # never healthy-and-fresh, whatever else is stored
    return row


def health_rows(
    storage: BackupStorage,
    server: str | None = None,
    *,
    intervals: Mapping[str, timedelta] | None = None,
    default_interval: timedelta = DEFAULT_INTERVAL,
    margin: timedelta = DEFAULT_MARGIN,
    also_servers: Sequence[str] = (),
    now: datetime | None = None,
) -> list[HealthRow]:
    """One row per series of `server` (None: of every server in the storage), sorted by
    server, kind and name; `intervals` per server (else `default_interval`); each of
    `also_servers` with no backups at all gets one row of kind 'server'."""
    now = now or datetime.now(UTC)
    intervals = intervals or {}
    listed = storage.list_modified(series_prefix(server) if server is not None else "")
    series = list(_series(listed, server).values())
    _read_newest(storage, listed, series, now)
    verify = _verify_results(storage, listed, series)
    rows = [_row(s, verify, now, intervals.get(s.server, default_interval), margin) for s in series]
    seen = {r.server for r in rows}
    for name in dict.fromkeys(also_servers):
        if name not in seen and (server is None or name == server):
            interval = intervals.get(name, default_interval).total_seconds()
            rows.append(
                HealthRow(
                    server=name,
                    database="",
                    kind="server",
                    state="no-backups",
                    late=True,
                    interval_seconds=interval,
                )
            )
    return sorted(rows, key=lambda r: (r.server, r.kind == "users", r.database))


def summary(rows: list[HealthRow]) -> str:
    """'3 databases: 2 ok, 1 late' (the users/roles rows are not databases)."""
    databases = [r for r in rows if r.kind == "database"]
    counts: dict[str, int] = defaultdict(int)
    for r in databases:
        counts[r.state] += 1
    parts = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    noun = "database" if len(databases) == 1 else "databases"
    return f"{len(databases)} {noun}" + (f": {parts}" if parts else "")
