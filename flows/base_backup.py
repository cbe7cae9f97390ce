"""The base_backup_server flow: a physical base backup of a `pitr: true` PostgreSQL server
(docs/pitr.md), then an archive run, so that the WAL the backup needs is stored with it."""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect_dbbackup.blocks.encryption import AgeEncryption
from prefect_dbbackup.blocks.errors import ConfigError
from prefect_dbbackup.blocks.process import stop_on_signals
from prefect_dbbackup.blocks.registry import (
    name_of,
)
from prefect_dbbackup.blocks.server import DatabaseServer
from prefect_dbbackup.blocks.storage import BackupStorage
from prefect_dbbackup.flows.archive import archive_server, pitr_blocks
from prefect_dbbackup.flows.crashed_runs import recorded_run
from prefect_dbbackup.flows.retries import transient_retries_only
from prefect_dbbackup.tasks.archive import ArchiveRun
from prefect_dbbackup.tasks.base_backup import BaseBackupManifest, take_base_backup
from prefect_dbbackup.tasks.layout import new_backup_id
from prefect_dbbackup.tasks.sizes import size
from prefect_dbbackup.tasks.workdir import private_workdir


def _run_name() -> str:
    server = name_of(flow_run.parameters["server"])
    return f"base-backup-{server}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"


@flow(name="base-backup", flow_run_name=_run_name, validate_parameters=True)
@recorded_run
@transient_retries_only
def base_backup_server(
    server: str | DatabaseServer,
    storage: str | BackupStorage = "default",
    encryption: str | AgeEncryption = "default",
) -> BaseBackupManifest:
    """A physical base backup of the whole server (pg_basebackup, streamed: zstd -> age ->
    storage), then an archive run that stores the WAL from its start on: a restore-cluster
    to any time after it needs only the archive runs that follow.

    Example:
        ```python
        from prefect_dbbackup import base_backup_server

        base_backup_server("local-pg")  # a postgres-server block with pitr: true
        ```
    """
    log = get_run_logger()
    srv, sto, enc, name = pitr_blocks(server, storage, encryption, "take base backups")
    if srv.engine.log_kind != "wal":
        raise ConfigError(
            f"{name} is not a PostgreSQL server: base backups are PostgreSQL's (MariaDB restores "
            "a database to a time from its dump and binlog: restore --to-time; docs/pitr.md)"
        )
    srv.log_files()  # the settings checked, and the slot made: it holds the WAL from now on
    started, run_id = datetime.now(UTC), new_backup_id()
    with stop_on_signals(), private_workdir() as workdir:
        run = ArchiveRun(srv, name, enc, sto, workdir, run_id)
        manifest = take_base_backup(run, started)
    log.info(
        "stored base backup %s of %s: %s -> %s, WAL %s .. %s on timeline %d",
        run_id,
        name,
        size(manifest.stats.raw_bytes),
        size(manifest.stats.stored_bytes),
        manifest.start_lsn,
        manifest.end_lsn,
        manifest.timeline,
    )
    archive_server(server=srv, storage=sto, encryption=enc)
    return manifest
