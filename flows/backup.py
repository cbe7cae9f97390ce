"""The backup_server flow: discover, dump and upload each database concurrently."""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import flow_run
from prefect.states import Cancelled, State
from prefect_dbbackup.blocks.encryption import AgeEncryption
from prefect_dbbackup.blocks.process import interrupted, stop_on_signals
from prefect_dbbackup.blocks.registry import (
    block_name,
    load_encryption,
    load_server,
    load_storage,
    name_of,
)
from prefect_dbbackup.blocks.retention import RetentionPolicy
from prefect_dbbackup.blocks.server import DatabaseServer
from prefect_dbbackup.blocks.storage import BackupStorage
from prefect_dbbackup.flows.backup_report import BackupFailed, BackupReport, DatabaseOutcome
from prefect_dbbackup.flows.crashed_runs import recorded_run
from prefect_dbbackup.flows.health import refresh_health
from prefect_dbbackup.flows.prune import report_prune
from prefect_dbbackup.flows.retries import transient_retries_only
from prefect_dbbackup.tasks.backup import BackupRun, StoredBackup, backup_task
from prefect_dbbackup.tasks.dedup.gc import collect_chunks_task, uses_chunks
from prefect_dbbackup.tasks.dedup.keys import writer_key
from prefect_dbbackup.tasks.layout import GLOBALS_SEGMENT, new_backup_id
from prefect_dbbackup.tasks.limits import DumpSlots
from prefect_dbbackup.tasks.prune import prune_task
from prefect_dbbackup.tasks.users import back_up_users_task, users_note
from prefect_dbbackup.tasks.workdir import private_workdir


def _run_name() -> str:
    return f"backup-{name_of(flow_run.parameters['server'])}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"


def _outcome(future: PrefectFuture) -> tuple[object, str | None]:
    """(result, None) for a completed task run, (None, error text) for a failed one."""
    value = future.result(raise_on_failure=False)
    if isinstance(value, BaseException):
        return None, str(value) or type(value).__name__
    return value, None


def _submit_users(run: BackupRun) -> PrefectFuture | None:
    """Start the users/roles backup next to the database dumps (unless the block opts out)."""
    if not run.server.backup_users:
        return None
    return back_up_users_task.submit(
        run.server, run.server_name, run.encryption, run.storage, run.workdir, run.backup_id
    )


def _row(database: str, future: PrefectFuture, kind: str = "database") -> DatabaseOutcome:
    """The report's row of one task run: what it stored, or why it failed."""
    stored, error = _outcome(future)
    if error is not None:
        return DatabaseOutcome(database=database, kind=kind, status="failed", error=error)
    assert isinstance(stored, StoredBackup)
    note = users_note(stored.manifest) if kind == "globals" else None
    return DatabaseOutcome.stored(stored.manifest, stored.key, note)


def _cancelled(report: BackupReport) -> State:
    """The run's end after a stop signal: Cancelled, naming what was not stored."""
    lost = [o.database for o in report.failed]
    stored = [o.database for o in report.outcomes if o.status == "ok"]
    message = f"{interrupted()}: not stored: {', '.join(map(repr, lost)) or 'nothing'}"
    if stored:
        message += f" (stored before the stop: {', '.join(map(repr, stored))})"
    get_run_logger().warning(message)
    return Cancelled(message=message)


def _checked_blocks(
    server: str | DatabaseServer,
    storage: str | BackupStorage,
    encryption: str | AgeEncryption,
    databases: list[str] | None,
    concurrency: int,
) -> tuple[DatabaseServer, BackupStorage, AgeEncryption, list[str]]:
    """The run's blocks and the databases it backs up, once everything a dump needs checks
    out: nothing is dumped for a backup that cannot be encrypted, signed or stored."""
    log = get_run_logger()
    srv, sto, enc = load_server(server), load_storage(storage), load_encryption(encryption)
    enc.recipient_keys()  # fail closed before touching anything
    sto.check()  # wrong S3 keys or a missing bucket fail here, not after every dump
    sto.manifest_signer()  # no signing key: fail closed before any dump (docs/security.md)
    if sto.dedup:
        writer_key(sto)  # a deduplicating storage without its key: fail before any dump
    names = srv.select_databases(databases)
    srv.check_pitr()  # pitr: the server's binlog settings, checked before any dump
    if note := srv.check_clients():  # no client fits the server: fail before any dump
        log.info(note)
    log.info(
        "backing up %d database(s) of %s (%s) to %s, %d at a time",
        len(names),
        block_name(srv),
        srv.describe(),
        sto.describe(),
        max(1, concurrency),
    )
    return srv, sto, enc, names


def _back_up_databases(run: BackupRun, names: list[str], concurrency: int) -> list[DatabaseOutcome]:
    """One backup task run per database, `concurrency` dumping at once; a row per database,
    in the order of names (after a stop signal, the ones not started say so)."""
    outcomes: dict[str, DatabaseOutcome] = {}
    slots = DumpSlots(concurrency)
    running: dict[PrefectFuture, str] = {}
    with slots.registered():
        for db in names:
            if not slots.wait_to_start(db):  # a stop signal: start nothing new
                break
            future = backup_task.submit(run, db)
            future.add_done_callback(lambda _, db=db: slots.dump_ended(db))
            running[future] = db
        for future in as_completed(list(running)):
            outcomes[running[future]] = _row(running[future], future)
    for db in names:
        outcomes.setdefault(db, DatabaseOutcome(database=db, status="failed", error="not started"))
    return [outcomes[n] for n in names]


def _publish(report: BackupReport) -> None:
    """The run's artifacts and events; BackupFailed, naming them, if any backup failed."""
    report.publish()
    report.publish_summary()
    report.emit_events()
    for o in report.failed:
        get_run_logger().error("backup of %r failed: %s", o.database, o.error)
    if report.failed:
        raise BackupFailed(report)


def _prune_written(
    storage: BackupStorage,
    server: str,
    policy: RetentionPolicy,
    report: BackupReport,
    backup_id: str,
) -> None:
    """Prune the series the run wrote (then collect unreferenced chunks); a failure is
    logged with how to prune by hand, since the backups themselves are safe."""
    pruned = prune_task.submit(
        storage,
        server,
        policy,
        databases=[o.database for o in report.outcomes],
        written=[backup_id],  # never delete what this run just stored
    )
    items, error = _outcome(pruned)
    collection = None
    if error is None and uses_chunks(storage):
        collection, error = _outcome(collect_chunks_task.submit(storage, wait_for=[pruned]))
    if error is not None:  # the backups are safe: say so, and how to prune by hand
        get_run_logger().error(
            "all backups stored, but pruning failed: %s; run `dbbackup prune %s`", error, server
        )
    else:
        report_prune(server, items, collection=collection)


@flow(name="backup-server", flow_run_name=_run_name, validate_parameters=True)
@recorded_run
@transient_retries_only
def backup_server(
    server: str | DatabaseServer,
    storage: str | BackupStorage = "default",
    encryption: str | AgeEncryption = "default",
    databases: list[str] | None = None,
    concurrency: int = 2,
    zstd_level: int | None = None,
    zstd_threads: int = 2,
    retention: RetentionPolicy | None = None,
) -> BackupReport | State:
    """Back up every selected database of a server; one failing does not stop the others.

    `server` is a postgres-server or mysql-server block, `storage` a backup storage
    block, `encryption` an age-encryption block: each a block or a saved block's name
    (a deployment names saved blocks: a stored parameter never holds a secret). Ends
    Failed, naming the failed databases, if any failed.
    When every backup succeeded, the series it wrote are pruned with `retention`
    (default: the server block's policy; none keeps everything).

    Example:
        ```python
        from prefect_dbbackup import PostgresServer, RetentionPolicy, backup_server

        report = backup_server("local-pg", databases=["shop"])  # saved blocks, by name
        backup_server(
            PostgresServer(host="db1", user="backup"),  # or blocks built in code
            storage="offsite",
            retention=RetentionPolicy(keep_daily=7),
        )
        ```
    """
    srv, sto, enc, names = _checked_blocks(server, storage, encryption, databases, concurrency)
    series = block_name(srv)  # the saved block's name, or an unsaved one's describe()
    backup_id = new_backup_id()
    started = datetime.now(UTC)
    with stop_on_signals(), private_workdir() as workdir:
        run = BackupRun(srv, series, enc, sto, workdir, backup_id, zstd_level, zstd_threads)
        users_run = _submit_users(run)
        outcomes = _back_up_databases(run, names, concurrency)
        users_row = [_row(GLOBALS_SEGMENT, users_run, "globals")] if users_run else []
    report = BackupReport(server=series, storage=sto.describe(), outcomes=outcomes + users_row)
    report.started_at, report.finished_at = started, datetime.now(UTC)
    if interrupted():
        return _cancelled(report)
    refresh_health(sto, series)  # before _publish, which raises when a backup failed
    _publish(report)
    policy = retention or srv.retention
    if policy is not None and not policy.is_empty:
        _prune_written(sto, series, policy, report, backup_id)
    return report
