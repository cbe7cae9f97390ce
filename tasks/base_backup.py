"""Physical base backups (PostgreSQL point-in-time recovery, docs/pitr.md): the cluster's
files as pg_basebackup streams them (tar, without WAL), zstd + age, with one signed manifest.

Layout: {server}/_base/{id}/base.tar.zst.age, then manifest.json (+ .sig) last. The WAL a
base backup needs, from its start LSN on, is the archive's (tasks/archive.py): the backup
makes sure dbbackup's replication slot holds it before pg_basebackup starts, and an archive
run right after stores it. The manifest says where the backup starts and ends in the WAL and
the server's clock when it ended: a restore to a time T takes the newest base backup that
ended by T on that clock (never this machine's).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from prefect_dbbackup.blocks.errors import ConfigError, ToolFailed
from prefect_dbbackup.blocks.process import check_stopped
from prefect_dbbackup.blocks.storage import BackupStorage
from prefect_dbbackup.blocks.wal import parse_lsn, segment_name
from prefect_dbbackup.tasks.archive import ArchiveRun, SignedRecords, made_by
from prefect_dbbackup.tasks.backup import UPLOAD_RETRY_DELAYS
from prefect_dbbackup.tasks.base_tar import BaseTarFacts
from prefect_dbbackup.tasks.catalog import publish_signed
from prefect_dbbackup.tasks.layout import MANIFEST_NAME, check_backup_id, encode_name
from prefect_dbbackup.tasks.manifest import MadeBy, StreamStats
from prefect_dbbackup.tasks.retrying import retry_transient
from prefect_dbbackup.tasks.spool import spooling, write_spool
from pydantic import Field

BASE_SEGMENT = "_base"  # reserved: encode_name never makes a segment starting with '_'
BASE_OBJECT = "base.tar.zst.age"


def base_prefix(server: str) -> str:
    """Key prefix of a server's base backups."""
    return f"{encode_name(server)}/{BASE_SEGMENT}/"


def base_key(server: str, run_id: str, name: str) -> str:
    """Key of one object of one base backup."""
    return f"{base_prefix(server)}{check_backup_id(run_id)}/{name}"


class BaseBackupManifest(MadeBy):
    """One base backup: its object, and where it starts and ends in the server's WAL."""

    kind: Literal["base"] = "base"
    run_id: str
    started_at: datetime
    finished_at: datetime
    server_time: datetime = Field(
        description="the server's clock once the backup had ended: a restore to T takes the "
        "newest base backup whose server_time is at or before T"
    )
    timeline: int
    start_lsn: str = Field(description="where recovery starts replaying (the backup's checkpoint)")
    end_lsn: str = Field(description="recovery is consistent once it has replayed this far")
    object_name: Literal["base.tar.zst.age"] = BASE_OBJECT
    compression: str = "zstd"
    encryption: str = "age"
    recipients: list[str]
    stats: StreamStats

    @property
    def start_file(self) -> str:
        """The WAL segment recovery reads first."""
        return segment_name(self.timeline, parse_lsn(self.start_lsn))

    def to_bytes(self) -> bytes:
        return self.model_dump_json(indent=2).encode()


def base_backups(storage: BackupStorage, server: str) -> SignedRecords[BaseBackupManifest]:
    """The server's base backups, each checked as archive runs are (signed, in its place)."""
    return SignedRecords(storage, server, base_prefix(server), BaseBackupManifest)


def take_base_backup(run: ArchiveRun, started: datetime) -> BaseBackupManifest:
    """pg_basebackup's tar stream, compressed and encrypted into the spool, stored; then the
    signed manifest. The WAL range comes from the stream's backup_label and backup_manifest
    (tasks/base_tar.py)."""
    server, storage = run.server, run.storage
    what = f"base backup of {run.server_name}"
    spool = run.workdir / BASE_OBJECT
    facts = BaseTarFacts()
    with spooling(spool, what), server.base_backup_command(run.workdir) as cmd:
        try:
            with cmd.process(server.dump_timeout, stdout=True) as proc:
                assert proc.stdout is not None
                stats = write_spool(
                    proc.stdout,
                    spool,
                    run.encryption.recipient_keys(),
                    level=server.zstd_level,
                    threads=2,
                    tap=facts.feed,
                    check=lambda: check_stopped(what),
                )
        except ToolFailed as exc:
            if "pg_hba.conf" in str(exc) and "replication" in str(exc):
                raise ConfigError(
                    f"{exc}. Add a line for replication connections of this login to the "
                    "server's pg_hba.conf, e.g. `host replication dbbackup 10.0.0.5/32 "
                    "scram-sha-256`, then reload the server (dbbackup never changes server "
                    "settings; docs/pitr.md)"
                ) from None
            raise
        wal = facts.range()
        server_time = server.server_clock()
        key = base_key(run.server_name, run.run_id, BASE_OBJECT)
        retry_transient(
            lambda: storage.put_file(key, spool, stats.sha256),
            f"upload of the {what} to {storage.describe()}",
            UPLOAD_RETRY_DELAYS,
        )
    manifest = BaseBackupManifest(
        **made_by(run, server.base_backup_client()),
        run_id=run.run_id,
        started_at=started,
        finished_at=datetime.now(started.tzinfo),
        server_time=server_time,
        timeline=wal.timeline,
        start_lsn=wal.start_lsn,
        end_lsn=wal.end_lsn,
        recipients=run.encryption.fingerprints(),
        stats=stats,
    )
    key = base_key(run.server_name, run.run_id, MANIFEST_NAME)
    retry_transient(
        lambda: publish_signed(storage, key, manifest.to_bytes()),
        f"base backup manifest to {storage.describe()}",
        UPLOAD_RETRY_DELAYS,
    )
    return manifest
