"""Verifying a backup: restore it into a scratch database, compare with its manifest, drop it.

A backup that passed is marked with a signed `verified.json` next to its manifest
(tasks/verify_record.py: retention always keeps the newest backup of a series that
has a valid one).

Scratch databases are named `dbbackup_verify_<UTC yyyymmddHHMMSS>_<8 hex>_<database>`
(at most the engine's name limit: 63 characters on PostgreSQL, 64 on MySQL/MariaDB).
Discovery never sees them; the timestamp lets a later run tell a scratch database
abandoned by a killed run from one a live run uses.
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prefect import task
from prefect.cache_policies import NONE
from prefect_dbbackup.blocks.encryption import AgeEncryption
from prefect_dbbackup.blocks.errors import BackupNotFound, IntegrityError
from prefect_dbbackup.blocks.server import SCRATCH_PREFIX, DatabaseServer
from prefect_dbbackup.blocks.storage import BackupStorage, ObjectNotFound
from prefect_dbbackup.tasks.catalog import (
    find_backup,
    list_backups,
    read_manifest,
)
from prefect_dbbackup.tasks.layout import MANIFEST_NAME, backup_key
from prefect_dbbackup.tasks.logs import Logger, run_logger
from prefect_dbbackup.tasks.manifest import Manifest
from prefect_dbbackup.tasks.restore import restore_backup
from prefect_dbbackup.tasks.verify_record import write_record
from pydantic import BaseModel

STAMP_FORMAT = "%Y%m%d%H%M%S"
SCRATCH_NAME = re.compile(rf"{SCRATCH_PREFIX}(\d{{14}})_[0-9a-f]{{8}}(_.*)?", re.DOTALL)
MAX_LISTED = 5


class RestoredCopyDiffers(IntegrityError):
    """A backup restored but does not match its manifest (tables or row counts)."""

    def __init__(self, message: str, tables: int = 0, rows: int = 0) -> None:
        super().__init__(message)
        self.tables, self.rows = tables, rows

    def __reduce__(self):  # noqa: ANN204
        return (RestoredCopyDiffers, (str(self), self.tables, self.rows))


class VerifyResult(BaseModel):
    """One verified backup: what was checked and what the restored copy held."""

    database: str
    backup_id: str
    scratch_database: str
    checked: str
    tables: int
    rows: int
    row_counts: dict[str, int]
    seconds: float


def scratch_name(database: str, limit: int, now: datetime | None = None) -> str:
    """A unique scratch database name carrying its creation time (UTC), at most limit
    characters (the engine's name_limit; the name is ASCII)."""
    stamp = (now or datetime.now(UTC)).astimezone(UTC).strftime(STAMP_FORMAT)
    name = f"{SCRATCH_PREFIX}{stamp}_{secrets.token_hex(4)}"
    readable = re.sub(r"[^a-z0-9]+", "_", database.lower()).strip("_")
    return f"{name}_{readable}"[:limit].rstrip("_") if readable else name


def scratch_created_at(name: str) -> datetime | None:
    """When a scratch database was created, from its name; None if it is not one of ours."""
    match = SCRATCH_NAME.fullmatch(name)
    if match is None:
        return None
    try:
        return datetime.strptime(match.group(1), STAMP_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


def stale_scratch_names(names: list[str], now: datetime, max_age: timedelta) -> list[str]:
    """The scratch databases older than max_age: runs that made them are dead by now."""
    stale = []
    for name in names:
        created = scratch_created_at(name)
        if created is not None and now - created > max_age:
            stale.append(name)
    return stale


def drop_stale_scratch(server: DatabaseServer, max_age: timedelta) -> list[str]:
    """Drop scratch databases that killed runs left behind; younger ones may be in use."""
    log = run_logger()
    stale = stale_scratch_names(server.databases_named(SCRATCH_PREFIX), datetime.now(UTC), max_age)
    for name in stale:
        log.warning("dropping scratch database %r left by an earlier verify run", name)
        server.drop_database(name)
    return stale


def latest_backups(
    storage: BackupStorage, server: str, databases: list[str] | None = None
) -> list[Manifest]:
    """The newest complete backup of each named database, or of every database in storage."""
    if databases:
        return [find_backup(storage, server, db) for db in dict.fromkeys(databases)]
    latest: dict[str, Manifest] = {}
    # oldest first: the last one wins
    for manifest in list_backups(storage, server, latest=True):
        if manifest.kind == "database":
            latest[manifest.database] = manifest
    if not latest:
        raise BackupNotFound(
            f"no complete database backup of {server!r} in {storage.describe()}: nothing to verify"
        )
    return list(latest.values())


def _listed(names: list[str]) -> str:
    more = f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else ""
    return ", ".join(names[:MAX_LISTED]) + more


def compare(manifest: Manifest, restored: dict[str, int]) -> tuple[str, list[str]]:
    """(what was checked, the differences) between a restored copy and its manifest.

    Manifests carry exact row counts (PostgreSQL: taken in the dump's snapshot;
    MariaDB: counted in the dump stream, history rows included): tables and counts
    must match. Older ones carry the table list only, or (before verify existed)
    nothing: then the restore is the check.
    """
    expected = manifest.row_counts if manifest.row_counts is not None else manifest.tables
    if expected is None:
        return "restore only", []
    problems = []
    missing = sorted(set(expected) - set(restored))
    extra = sorted(set(restored) - set(expected))
    if missing:
        problems.append(f"missing table(s) {_listed(missing)}")
    if extra:
        problems.append(f"table(s) not in the backup {_listed(extra)}")
    if manifest.row_counts is None:
        return "table list", problems
    wrong = [
        f"{table} has {restored[table]} rows, {count} at backup time"
        for table, count in sorted(manifest.row_counts.items())
        if table in restored and restored[table] != count
    ]
    if wrong:
        problems.append(_listed(wrong))
    return "row counts", problems


def _drop_scratch(server: DatabaseServer, scratch: str, log: Logger) -> None:
    try:
        server.drop_database(scratch)
    except Exception as exc:
        log.error(
            "could not drop scratch database %r: %s; the next verify run drops it once stale",
            scratch,
            exc,
        )


def verify_backup(
    server: DatabaseServer,
    storage: BackupStorage,
    encryption: AgeEncryption,
    manifest: Manifest,
    workdir: Path,
    *,
    identity_file: str | None = None,
) -> VerifyResult:
    """Restore one backup into a fresh scratch database, count its rows, drop it, compare."""
    log = run_logger()
    scratch = scratch_name(manifest.database, server.engine.name_limit)
    started = datetime.now(UTC)
    log.info("verifying backup %s of %r in %r", manifest.backup_id, manifest.database, scratch)
    try:
        restore_backup(
            server, storage, encryption, manifest, scratch, workdir, identity_file=identity_file
        )
        restored = server.table_row_counts(scratch)
    finally:
        _drop_scratch(server, scratch, log)
    checked, problems = compare(manifest, restored)
    tables, rows = len(restored), sum(restored.values())
    if problems:
        raise RestoredCopyDiffers(
            f"backup {manifest.backup_id} of {manifest.database!r} restored but does not match "
            f"its manifest: {'; '.join(problems)}",
            tables,
            rows,
        )
    log.info(
        "backup %s of %r: %d tables, %d rows (%s%s)",
        manifest.backup_id,
        manifest.database,
        tables,
        rows,
        checked,
        f": {server.engine.row_counts_note}" if checked == "row counts" else "",
    )
    result = VerifyResult(
        database=manifest.database,
        backup_id=manifest.backup_id,
        scratch_database=scratch,
        checked=checked,
        tables=tables,
        rows=rows,
        row_counts=restored,
        seconds=(datetime.now(UTC) - started).total_seconds(),
    )
    record_verified(storage, manifest, result)
    return result


def record_verified(storage: BackupStorage, manifest: Manifest, result: VerifyResult) -> str:
    """Store the signed `verified.json` of a backup that passed (tasks/verify_record.py):
    retention always keeps the newest backup of a series that has a valid one. The
    manifest is read again first: a record names the exact manifest that was checked.
    Returns its key."""
    key = backup_key(
        manifest.server, manifest.database, manifest.backup_id, MANIFEST_NAME, manifest.kind
    )
    try:
        entry = read_manifest(storage, key, storage.manifest_verifiers())
    except ObjectNotFound:
        entry = None
    if entry is None or entry.trust != "signed" or entry.manifest != manifest:
        raise IntegrityError(
            f"backup {manifest.backup_id} of {manifest.database!r} restored and matched, but "
            f"its manifest {key} was deleted or replaced while it was verified: no verify "
            "record written. Run verify again"
        )
    details = {"checked": result.checked, "tables": result.tables, "rows": result.rows}
    return write_record(storage, entry, details)


# never retried: a verification that failed says something about the backup
verify_task = task(
    verify_backup, name="verify", task_run_name="verify-{manifest.database}", cache_policy=NONE
)
