"""The restore_cluster flow: a PostgreSQL cluster as it was at a chosen second (docs/pitr.md),
written into a new data directory, ready to start: the base backup, the archived WAL after
it, and the recovery settings. It reads the storage only: the server it came from may be
gone."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect_dbbackup.blocks.encryption import AgeEncryption
from prefect_dbbackup.blocks.errors import ConfigError, DiskFull, is_disk_full
from prefect_dbbackup.blocks.process import stop_on_signals
from prefect_dbbackup.blocks.registry import load_encryption, load_storage, name_of
from prefect_dbbackup.blocks.storage import BackupStorage
from prefect_dbbackup.flows.artifacts import artifact_key, md
from prefect_dbbackup.flows.crashed_runs import recorded_run
from prefect_dbbackup.tasks.archive import read_archive
from prefect_dbbackup.tasks.base_backup import BASE_OBJECT, base_backups, base_key
from prefect_dbbackup.tasks.pitr import StoredPart, archived_file, plaintext_of
from prefect_dbbackup.tasks.restore_cluster import (
    check_reach,
    choose_base,
    extract_base,
    finish,
    new_data_dir,
    plan_wal,
    remove_partial,
    write_recovery,
    write_wal,
)
from prefect_dbbackup.tasks.workdir import private_workdir
from pydantic import BaseModel


class ClusterRestoreReport(BaseModel):
    """A cluster written to a data directory, to be started to finish its recovery."""

    server: str
    data_dir: str
    base_backup_id: str
    to_time: datetime | None  # None: as far as the archive goes
    wal_segments: int
    wal_bytes: int
    archive_reaches: datetime | None  # every commit before this (server clock) is archived
    seconds: float


def _run_name() -> str:
    return f"restore-cluster-{name_of(flow_run.parameters['server'])}"


@flow(name="restore-cluster", flow_run_name=_run_name, validate_parameters=True)
@recorded_run
def restore_cluster(
    server: str,
    data_dir: str,
    to_time: datetime | None = None,
    port: int | None = None,
    storage: str | BackupStorage = "default",
    encryption: str | AgeEncryption = "default",
    identity_file: str | None = None,
) -> ClusterRestoreReport:
    """Write server's cluster as it was at to_time (every transaction committed up to the
    end of that second; None: all the archive holds) into the new directory data_dir.
    Starting it (pg_ctl start, as the user that owns data_dir) replays the WAL to the time
    and promotes it; port, if given, is set in its postgresql.auto.conf.

    Example:
        ```python
        from datetime import UTC, datetime
        from prefect_dbbackup import restore_cluster

        restore_cluster("local-pg", "/srv/pg-restored",
                        datetime(2026, 12, 7, 10, 41, 6, tzinfo=UTC), port=5439)
        ```
    """
    log = get_run_logger()
    if to_time is not None:
        if to_time.tzinfo is None:
            raise ConfigError(f"the time {to_time} has no time zone: give one, e.g. ...T10:41:06Z")
        to_time = to_time.astimezone(UTC)
    sto, enc = load_storage(storage), load_encryption(encryption)
    identities = enc.identities(identity_file)  # no identity: fail before anything is written
    stored = base_backups(sto, server).all()
    for refused in (r for r in stored if r.problem is not None):
        log.warning("not using base backup %s: %s", refused.key, refused.problem)
    base = choose_base([r.manifest for r in stored if r.problem is None and r.manifest], to_time)
    archive = read_archive(sto, server)
    for run in archive.refused:
        log.warning("not using archive run %s: %s", run.key, run.problem)
    plan = plan_wal(archive.trusted, base)
    check_reach(plan, to_time, server)
    target = Path(data_dir).expanduser().absolute()
    started = datetime.now(UTC)
    existed = new_data_dir(target)
    try:
        with stop_on_signals(), private_workdir() as workdir:
            whole = StoredPart(
                base_key(server, base.run_id, BASE_OBJECT),
                base.stats,
                base.stats.raw_bytes,
                f"base backup {base.run_id}",
                "its manifest",
            )
            with plaintext_of(sto, [whole], identities, workdir) as tar:
                members, version = extract_base(tar, target)
            log.info("unpacked base backup %s (%d files) into %s", base.run_id, members, target)
            (target / "pg_wal").mkdir(mode=0o700, exist_ok=True)
            wal_bytes = write_wal(
                plan.files,
                lambda pieces: archived_file(sto, server, pieces, identities, workdir),
                target / "pg_wal",
                f"the WAL of {server}",
            )
            write_recovery(target, to_time, port)
            finish(target, version)
    except BaseException as exc:  # a stop too: what was written is not a cluster
        remove_partial(target, existed)
        if is_disk_full(exc) and not isinstance(exc, DiskFull):
            raise DiskFull(
                f"the disk of {target} filled up while the cluster was written (it needs the "
                f"unpacked base backup, {base.stats.raw_bytes} bytes, and the WAL); what was "
                "written is removed: name a --data-dir on a disk with room"
            ) from None
        raise
    report = ClusterRestoreReport(
        server=server,
        data_dir=str(target),
        base_backup_id=base.run_id,
        to_time=to_time,
        wal_segments=len(plan.files),
        wal_bytes=wal_bytes,
        archive_reaches=plan.reach,
        seconds=(datetime.now(UTC) - started).total_seconds(),
    )
    when = "the end of the archive" if to_time is None else f"{to_time:%Y-%m-%d %H:%M:%S}Z"
    create_markdown_artifact(
        key=artifact_key("restore-cluster", server),
        markdown=(
            f"Wrote the cluster of `{md(server)}` as of {when} into `{md(str(target))}`: base "
            f"backup `{base.run_id}`, then {report.wal_segments} WAL segment(s) "
            f"({wal_bytes} bytes) to replay. Start it to finish the recovery."
        ),
    )
    return report
