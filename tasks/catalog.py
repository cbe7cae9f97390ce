"""Finding complete backups: a backup exists only when its manifest does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prefect_dbbackup.blocks.storage import BackupStorage
from prefect_dbbackup.tasks.errors import BackupNotFound, DbBackupError
from prefect_dbbackup.tasks.layout import (
    MANIFEST_NAME,
    backup_key,
    parse_manifest_key,
    series_prefix,
)
from prefect_dbbackup.tasks.logs import run_logger
from prefect_dbbackup.tasks.manifest import Manifest
from prefect_dbbackup.tasks.retention import DEFAULT_FUTURE_TOLERANCE_HOURS


def list_backups(
    storage: BackupStorage, server: str, database: str | None = None, kind: str = "database"
) -> list[Manifest]:
    """Manifests of the complete backups of a server (or one database, or with kind
    'globals' its users/roles series), oldest first."""
    manifests = []
    for key in storage.list_keys(series_prefix(server, database, kind)):
        parsed = parse_manifest_key(key)
        if parsed is None or parsed[0] != server:
            continue
        if database is not None and parsed[1] != database:
            continue
        try:
            manifests.append(Manifest.from_bytes(storage.get_bytes(key)))
        except ValueError as exc:
            raise DbBackupError(
                f"manifest {key} in {storage.describe()} is unreadable: {exc}"
            ) from None
    # started_at (microseconds) orders two backups taken within the same second
    return sorted(manifests, key=lambda m: (m.database, m.started_at, m.backup_id))


def find_backup(
    storage: BackupStorage, server: str, database: str, backup_id: str = "latest"
) -> Manifest:
    """The manifest of one backup; 'latest' is the newest complete one."""
    if backup_id != "latest":
        key = backup_key(server, database, backup_id, MANIFEST_NAME)
        if not storage.exists(key):
            raise BackupNotFound(
                f"no complete backup {backup_id} of {database!r} on {server!r} in "
                f"{storage.describe()}: `dbbackup list {server} --database ...` shows what exists"
            )
        return Manifest.from_bytes(storage.get_bytes(key))
    backups = not_future_dated(list_backups(storage, server, database))
    if not backups:
        raise BackupNotFound(
            f"no complete backup of {database!r} on {server!r} in {storage.describe()}"
        )
    return backups[-1]


def not_future_dated(manifests: list[Manifest], now: datetime | None = None) -> list[Manifest]:
    """The manifests not dated in the future beyond the default tolerance: 'latest' never
    picks a backup from a worker with a fast clock or a planted one; each skip is logged."""
    horizon = (now or datetime.now(UTC)) + timedelta(hours=DEFAULT_FUTURE_TOLERANCE_HOURS)
    for m in manifests:
        if m.started_at > horizon:
            run_logger().warning(
                "ignoring backup %s of %r as latest: it is dated %s, in the future (a worker "
                "with a fast clock, or planted); name it with --backup-id to restore it anyway",
                m.backup_id,
                m.database,
                f"{m.started_at:%Y-%m-%d %H:%M}Z",
            )
    return [m for m in manifests if m.started_at <= horizon]
