"""The restore_to_time flow: a database as it was at a chosen second (docs/pitr.md): the
newest dump before that time restored into a new name, then the archived binary log of
that database replayed from the dump's position up to the time."""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE
from prefect.runtime import flow_run
from prefect.states import State
from prefect_dbbackup.blocks.encryption import AgeEncryption
from prefect_dbbackup.blocks.errors import BackupNotFound, ConfigError, DbBackupError
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
from prefect_dbbackup.flows.artifacts import artifact_key, md
from prefect_dbbackup.flows.crashed_runs import recorded_run
from prefect_dbbackup.flows.restore import restore_database
from prefect_dbbackup.tasks.archive import read_archive
from prefect_dbbackup.tasks.catalog import scan_backups
from prefect_dbbackup.tasks.manifest import Manifest
from prefect_dbbackup.tasks.pitr import Stretch, newest_dump_for, replay_archive, stretches
from prefect_dbbackup.tasks.workdir import private_workdir
from pydantic import BaseModel

LATEST = datetime(9999, 12, 31, tzinfo=UTC)  # a stop time after every event: replay it all


class PitrRestoreReport(BaseModel):
    """A restore to a time: the dump it started from and the log replayed after it."""

    database: str
    target_database: str
    backup_id: str
    to_time: datetime | None  # None: as far as the archive goes
    transactions: int
    events: int
    last_applied_at: datetime | None  # commit time of the last transaction replayed
    log_end_time: datetime | None  # time of the last event read
    position: str  # file:position the replay ended at
    seconds: float


def _publish_artifact(report: PitrRestoreReport, series: str) -> None:
    """The run's markdown artifact: which backup and how much of the log, into where."""
    when = (
        "the end of the archive"
        if report.to_time is None
        else f"{report.to_time:%Y-%m-%d %H:%M:%S}Z"
    )
    last = report.last_applied_at
    create_markdown_artifact(
        key=artifact_key("restore-to-time", f"{series}-{report.target_database}"),
        markdown=(
            f"Restored `{md(report.database)}` of `{md(series)}` as of {when} into "
            f"`{md(report.target_database)}`: backup `{report.backup_id}`, then "
            f"{report.transactions} transaction(s) of the binary log (last committed "
            f"{f'{last:%Y-%m-%d %H:%M:%S}Z' if last else '-'}, up to `{md(report.position)}`) "
            f"in {report.seconds:.1f} s."
        ),
    )


def _run_name() -> str:
    p = flow_run.parameters
    target = p.get("target_database") or p["database"]
    return f"restore-to-time-{name_of(p['server'])}-{p['database']}-to-{target}"


replay_task = task(
    replay_archive, name="replay-log", task_run_name="replay-{target}", cache_policy=NONE
)


def refuse_whole_cluster_engines(srv: DatabaseServer, series: str) -> None:
    """ConfigError for a server whose point-in-time recovery is of the whole cluster."""
    if srv.engine.log_kind == "wal":
        raise ConfigError(
            f"{block_name(srv)} is a PostgreSQL server: point-in-time recovery restores its "
            f"whole cluster, not one database: `dbbackup restore-cluster {series} --to-time T "
            "--data-dir DIR`, start it, then pg_dump the database from it (docs/pitr.md)"
        )


def _starting_point(
    storage: BackupStorage, series: str, database: str, to_time: datetime | None
) -> tuple[Manifest, Stretch]:
    """The newest trusted dump taken by to_time (by the database server's clock:
    snapshot_bound) whose position the archive holds, and
    the stretch of log after it; an error saying what is missing otherwise."""
    found = stretches(read_archive(storage, series).trusted)
    dumps = [
        e.manifest for e in scan_backups(storage, series, database) if e.usable() and e.manifest
    ]
    picked = newest_dump_for(dumps, found, to_time)
    when = "" if to_time is None else f" taken by {to_time:%Y-%m-%d %H:%M:%S}Z"
    if picked is None:
        raise BackupNotFound(
            f"no signed backup of {database!r} on {series!r}{when} starts inside the archived "
            f"binary log: `dbbackup list {series} --pitr` shows the windows a restore can reach"
        )
    dump, stretch = picked
    last = stretch.last_event_at
    if to_time is not None and (last is None or int(last.timestamp()) <= int(to_time.timestamp())):
        raise ConfigError(
            f"the archive of {series!r} holds events up to "
            f"{f'{last:%Y-%m-%d %H:%M:%S}Z' if last else 'none'}, not after "
            f"{to_time:%Y-%m-%d %H:%M:%S}Z: what was committed since may not be archived yet. "
            f"Run `dbbackup archive {series}`, then restore again; or restore to `latest` (as "
            "far as the archive goes)"
        )
    return dump, stretch


def _drop_half_restored(srv: DatabaseServer, target: str) -> None:
    """Drop the target a replay failed in (it holds the backup and only part of the log);
    a drop that fails too is logged, never raised over the replay's own error."""
    log = get_run_logger()
    try:
        srv.drop_database(target)
    except DbBackupError as exc:
        log.error(
            "the replay into %r failed, and dropping it failed too (%s): it holds the backup "
            "and only part of the log; drop it by hand",
            target,
            exc,
        )
        return
    log.error(
        "the replay into %r failed: dropped it (it held the backup and only part of the log); "
        "the source database is untouched",
        target,
    )


@flow(name="restore-to-time", flow_run_name=_run_name, validate_parameters=True)
@recorded_run
def restore_to_time(
    server: str | DatabaseServer,
    database: str,
    to_time: datetime | None,
    target_database: str,
    storage: str | BackupStorage = "default",
    encryption: str | AgeEncryption = "default",
    identity_file: str | None = None,
    source_server: str | None = None,
) -> PitrRestoreReport | State:
    """Restore `database` as it was at `to_time` (every transaction committed up to that
    second; None: as far as the archive goes) into the new database `target_database`.

    The newest signed dump taken by then (by the database server's clock) is restored
    (the restore_database flow, as a subflow), then the archived binary log of the
    database is replayed into it from the dump's position. A replay that fails drops the
    target it was restoring into.
    source_server takes the backups and archive of another server (one that is lost) and
    restores them into `server`.

    Example:
        ```python
        from datetime import datetime, UTC
        from prefect_dbbackup import restore_to_time

        restore_to_time("local-my", "shop", datetime(2026, 12, 7, 10, 41, 6, tzinfo=UTC),
                        target_database="shop_before_drop")
        ```
    """
    log = get_run_logger()
    if to_time is not None and to_time.tzinfo is None:
        raise ConfigError(f"the time {to_time} has no time zone: give one, e.g. ...T10:41:06Z")
    srv, sto, enc = load_server(server), load_storage(storage), load_encryption(encryption)
    series = source_server or block_name(srv)
    refuse_whole_cluster_engines(srv, series)
    enc.identities(identity_file)  # no identity: fail before anything is created
    dump, stretch = _starting_point(sto, series, database, to_time)
    log.info(
        "restoring %r to %s: backup %s, then the binary log from %s (archive %s)",
        database,
        "the end of the archive" if to_time is None else f"{to_time:%Y-%m-%d %H:%M:%S}Z",
        dump.backup_id,
        dump.binlog.describe() if dump.binlog else "-",
        stretch.describe(),
    )
    started = datetime.now(UTC)
    restored = restore_database(
        srv,
        database,
        storage=sto,
        encryption=enc,
        backup_id=dump.backup_id,
        target_database=target_database,
        identity_file=identity_file,
        source_server=source_server,
    )
    if isinstance(restored, State):
        return restored
    try:
        with stop_on_signals(), private_workdir() as workdir:
            stop = LATEST if to_time is None else to_time
            result = replay_task(
                srv, sto, enc, identity_file, dump, stretch, target_database, stop, workdir
            )
    except BaseException:  # a stop too: the target holds only part of the log
        _drop_half_restored(srv, target_database)
        raise
    report = PitrRestoreReport(
        database=database,
        target_database=target_database,
        backup_id=dump.backup_id,
        to_time=to_time,
        transactions=result.transactions,
        events=result.events,
        last_applied_at=result.last_time,
        log_end_time=result.log_end_time,
        position=f"{result.file}:{result.position}",
        seconds=(datetime.now(UTC) - started).total_seconds(),
    )
    _publish_artifact(report, series)
    log.info(
        "restored %r into %r as of %s: backup %s and %d transaction(s) of the log, up to %s",
        database,
        target_database,
        "the end of the archive" if to_time is None else f"{to_time:%Y-%m-%d %H:%M:%S}Z",
        dump.backup_id,
        result.transactions,
        report.position,
    )
    return report
