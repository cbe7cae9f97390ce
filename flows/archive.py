"""The archive_server flow: one archive run of a `pitr: true` server's transaction log
(docs/pitr.md). Run it on a schedule (every minute, say): each run stores what the server
wrote since the last one, the file being written included, and ends."""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE
from prefect.runtime import flow_run
from prefect_dbbackup.blocks.encryption import AgeEncryption
from prefect_dbbackup.blocks.errors import ConfigError, DbBackupError
from prefect_dbbackup.blocks.process import stop_on_signals
from prefect_dbbackup.blocks.registry import (
    block_name,
    load_encryption,
    load_server,
    load_storage,
    name_of,
)
from prefect_dbbackup.blocks.server import DatabaseServer
from prefect_dbbackup.blocks.storage import BackupStorage
from prefect_dbbackup.flows.crashed_runs import recorded_run
from prefect_dbbackup.flows.retries import transient_retries_only
from prefect_dbbackup.tasks.archive import (
    ArchiveRun,
    archive_end,
    end_after,
    fetch_piece,
    plan_fetches,
    publish_run,
)
from prefect_dbbackup.tasks.archive_manifest import ArchiveManifest
from prefect_dbbackup.tasks.events import emit_archive_event
from prefect_dbbackup.tasks.layout import new_backup_id
from prefect_dbbackup.tasks.sizes import size
from prefect_dbbackup.tasks.workdir import private_workdir


class ArchiveGap(DbBackupError):
    """The archive run found part of the log lost before it was archived (it stored the
    rest): point-in-time recovery cannot cross the gap. Exit 1, like a partial backup."""

    exit_code = 1


def pitr_blocks(
    server: str | DatabaseServer,
    storage: str | BackupStorage,
    encryption: str | AgeEncryption,
    to: str,
) -> tuple[DatabaseServer, BackupStorage, AgeEncryption, str]:
    """The blocks of a point-in-time step, and the server's name, checked before anything is
    read: pitr on (else ConfigError saying what it is needed `to` do), a recipient (fail
    closed), the storage reachable and able to sign."""
    srv, sto, enc = load_server(server), load_storage(storage), load_encryption(encryption)
    name = block_name(srv)
    if not srv.pitr:
        raise ConfigError(
            f"server {name!r} has pitr off: set pitr: true on it (docs/pitr.md) to {to}"
        )
    enc.recipient_keys()
    sto.check()
    sto.manifest_signer()
    return srv, sto, enc, name


def _run_name() -> str:
    return f"archive-{name_of(flow_run.parameters['server'])}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"


fetch_task = task(
    fetch_piece,
    name="fetch-log",
    task_run_name="fetch-{fetch.file}",
    cache_policy=NONE,
)


@flow(name="archive", flow_run_name=_run_name, validate_parameters=True)
@recorded_run
@transient_retries_only
def archive_server(
    server: str | DatabaseServer,
    storage: str | BackupStorage = "default",
    encryption: str | AgeEncryption = "default",
) -> ArchiveManifest | None:
    """Store the server's transaction log written since the last archive run: zstd + age
    pieces and one signed manifest (None when nothing was written since). Ends Failed with
    ArchiveGap, after storing what the server still has, when part of the log was lost.

    Example:
        ```python
        from prefect_dbbackup import archive_server

        archive_server("local-my")  # a mysql-server block with pitr: true
        ```
    """
    log = get_run_logger()
    srv, sto, enc, name = pitr_blocks(server, storage, encryption, "archive its transaction log")
    before, refused = archive_end(sto, name)
    for run in refused:
        log.warning("not using archive run %s: %s", run.key, run.problem)
    log_name = srv.engine.log_name
    listed_at = srv.server_clock()
    fetches, gap = plan_fetches(srv.log_files(), before, srv.engine.log_first_position, log_name)
    if gap:
        log.error("gap in the archive of %s: %s", name, gap)
    started, run_id = datetime.now(UTC), new_backup_id()
    with stop_on_signals(), private_workdir() as workdir:
        run = ArchiveRun(srv, name, enc, sto, workdir, run_id)
        pieces = [p for i, f in enumerate(fetches) if (p := fetch_task(run, f, i)) is not None]
    sealed = {f.file: f.expected_end for f in fetches if f.expected_end is not None}
    end = end_after(pieces, sealed, before)
    changed = pieces or gap or end != before
    manifest = (
        publish_run(run, started, pieces, end, gap, sealed, listed_at) if changed and end else None
    )
    if manifest is not None:
        srv.log_archived(manifest.end.file, manifest.end.position)
    raw = sum(p.stats.raw_bytes for p in pieces)
    where = f"{end.file}:{end.position}" if end else "-"
    emit_archive_event(
        name, run_id=manifest and run_id, pieces=len(pieces), raw_bytes=raw, end=where, error=gap
    )
    if gap:
        raise ArchiveGap(
            f"the archive of {name} has a gap: {gap}. The runs after it go on; a restore to a "
            "time needs a dump taken after the gap (run a backup now)"
        )
    if manifest is None:
        log.info("nothing new in the %s of %s since %s", log_name, name, where)
    else:
        last = pieces[-1].last_event_at if pieces else None
        log.info(
            "archived %s of %s of %s in %d piece(s), up to %s (last event %s)",
            size(raw),
            log_name,
            name,
            len(pieces),
            where,
            f"{last:%Y-%m-%d %H:%M:%S}Z" if last else "none",
        )
    return manifest
