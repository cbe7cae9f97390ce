"""Backing up one database: dump -> zstd -> age -> spool, then upload and manifest."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from prefect import task
from prefect.cache_policies import NONE
from prefect_dbbackup.blocks.encryption import AgeEncryption
from prefect_dbbackup.blocks.process import (
    ToolProcess,
    check_not_interrupted,
    check_stopped,
    interrupted,
    until_stopped,
)
from prefect_dbbackup.blocks.server import DatabaseServer
from prefect_dbbackup.blocks.storage import BackupStorage
from prefect_dbbackup.tasks.catalog import publish_manifest
from prefect_dbbackup.tasks.chunks import (
    ChunkWriter,
    ensure_key_copy,
    gc_parameters,
    writer_key,
)
from prefect_dbbackup.tasks.layout import backup_key
from prefect_dbbackup.tasks.limits import dump_slot, host_slot
from prefect_dbbackup.tasks.logs import run_logger
from prefect_dbbackup.tasks.manifest import Manifest, StreamStats
from prefect_dbbackup.tasks.retrying import retry_transient
from prefect_dbbackup.tasks.spool import spool_path, spooling, write_spool
from prefect_dbbackup.tasks.stream import CountingReader, TrailedReader
from pydantic import BaseModel

# a failed upload is tried again after these pauses (seconds), without dumping again
UPLOAD_RETRY_DELAYS: tuple[float, ...] = (2, 10, 30)


class DumpResult(BaseModel):
    """A finished dump waiting in the spool: where it is and its manifest-to-be."""

    spool: str
    manifest: Manifest


class StoredBackup(BaseModel):
    """A backup in the storage: its object's key and its manifest."""

    key: str
    manifest: Manifest


def tool_version() -> str:
    """Version of this package (its distribution is `prefect-dbbackup`), for the manifest."""
    try:
        return version("prefect-dbbackup")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


@contextlib.contextmanager
def _dump_gate(server: DatabaseServer, database: str) -> Iterator[None]:
    """What a dump waits for before reading the server: a slot of its flow run and one of
    its host's limit."""
    with dump_slot(database), host_slot(server.host):
        yield


def dump_database(
    server: DatabaseServer,
    server_name: str,
    database: str,
    encryption: AgeEncryption,
    workdir: Path,
    backup_id: str,
    *,
    level: int | None = None,
    threads: int = 2,
    chunks: ChunkWriter | None = None,
) -> DumpResult:
    """Dump one database into an encrypted spool file; nothing is stored yet. With `chunks`
    the stream goes to the storage as deduplicated chunks instead, and no spool is written.

    `level` is the zstd level; None takes the server block's.
    """
    log = run_logger()
    level = server.zstd_level if level is None else level
    recipients = encryption.recipient_keys()
    started = datetime.now(UTC)
    server_version = server.server_version()
    spool = spool_path(workdir, "database", database, backup_id)

    def progress(nbytes: int) -> None:
        log.info("dump of %r: %.0f MiB read so far", database, nbytes / 2**20)

    with spooling(spool, repr(database)):
        with (
            server.dump_snapshot(database, _dump_gate(server, database)) as snapshot,
            server.dump_command(database, workdir, snapshot.snapshot_id) as cmd,
        ):
            client = cmd.argv[0]
            client_version = server.client_version(client)
            with ToolProcess(
                cmd.argv,
                env=cmd.env,
                timeout=server.dump_timeout,
                stdout=True,
                secrets=cmd.secrets,
            ) as proc:
                assert proc.stdout is not None
                counter = server.dump_row_counter(snapshot.tables)
                source = TrailedReader(proc.stdout, cmd.trailer) if cmd.trailer else proc.stdout
                tap = counter.feed if counter else None
                what = f"the dump of {database!r}"
                check = functools.partial(check_stopped, what)
                if chunks is None:
                    stats = until_stopped(
                        lambda: write_spool(
                            source,
                            spool,
                            recipients,
                            level=level,
                            threads=threads,
                            on_progress=progress,
                            tap=tap,
                            check=check,
                        ),
                        what,
                    )
                    chunk_list = None
                else:
                    counted = CountingReader(source, progress, tap=tap, check=check)
                    chunk_list = chunks.write(counted)
                    stats = StreamStats(
                        raw_bytes=chunk_list.raw_bytes,
                        compressed_bytes=chunks.compressed_bytes,
                        stored_bytes=chunk_list.new_stored_bytes,
                        sha256=chunk_list.stream_hmac,
                    )
        manifest = Manifest(
            tool_version=tool_version(),
            server=server_name,
            server_type=server.engine.name,
            server_version=server_version,
            client=os.path.basename(client),
            client_version=client_version,
            database=database,
            backup_id=backup_id,
            started_at=started,
            finished_at=datetime.now(UTC),
            object_name=server.engine.database_object,
            dump_format=server.engine.dump_format,
            format="object" if chunk_list is None else "chunks-v1",
            chunks=chunk_list,
            stats=stats,
            recipients=encryption.fingerprints(),
            dump_options=server.dump_options_for(database),
            create_options=snapshot.options,
            tables=snapshot.tables,
            row_counts=counter.finish() if counter else snapshot.row_counts,
            database_properties=snapshot.properties,
        )
    st = manifest.stats
    log.info(
        "dumped %r: %.1f MB raw -> %.1f MB stored (%.1fx) in %.1f s (%.0f MB/s)%s",
        database,
        st.raw_bytes / 1e6,
        st.stored_bytes / 1e6,
        st.raw_bytes / max(st.stored_bytes, 1),
        manifest.seconds,
        st.raw_bytes / 1e6 / max(manifest.seconds, 1e-3),
        f"; chunks: {chunk_list.new} new, {chunk_list.reused} already stored" if chunk_list else "",
    )
    return DumpResult(spool=str(spool), manifest=manifest)


def store_backup(storage: BackupStorage, dump: DumpResult) -> str:
    """Upload the spooled object, then the signed manifest (last), then drop the spool.

    put_file returns only once the store holds exactly the spool (size and checksum,
    whatever the S3 `checksum` setting), so a manifest never vouches for a damaged object.
    """
    log = run_logger()
    m = dump.manifest
    check_not_interrupted(f"the upload of {m.database!r}")
    key = backup_key(m.server, m.database, m.backup_id, m.stored_object_name, m.kind)
    storage.put_file(key, Path(dump.spool), m.stats.sha256)
    publish_manifest(storage, m)
    Path(dump.spool).unlink(missing_ok=True)
    log.info("stored backup %s of %r as %s in %s", m.backup_id, m.database, key, storage.describe())
    return key


def store_with_retries(storage: BackupStorage, dump: DumpResult) -> StoredBackup:
    """store_backup, tried again after a transient error (UPLOAD_RETRY_DELAYS apart).

    An upload that still fails is marked not retryable: the task is not run
    again, because dumping again cannot fix the storage.
    """
    key = retry_transient(
        lambda: store_backup(storage, dump),
        f"upload of {dump.manifest.database!r} to {storage.describe()}",
        UPLOAD_RETRY_DELAYS,
    )
    return StoredBackup(key=key, manifest=dump.manifest)


def back_up_chunked(
    server: DatabaseServer,
    server_name: str,
    database: str,
    encryption: AgeEncryption,
    storage: BackupStorage,
    workdir: Path,
    backup_id: str,
    level: int | None,
) -> StoredBackup:
    """Dump one database into a deduplicating storage: chunks while dumping, then the
    manifest (after the fence check of docs/dedup.md)."""
    writer = ChunkWriter(
        storage,
        writer_key(storage),
        encryption,
        level=server.zstd_level if level is None else level,
        retry_delays=UPLOAD_RETRY_DELAYS,
        series=(server_name, database),
    )
    ensure_key_copy(storage, writer.key, encryption)
    fence = gc_parameters(storage).fence_hours * 3600  # the storage's, not this block's
    dump = dump_database(
        server, server_name, database, encryption, workdir, backup_id, chunks=writer
    )
    assert dump.manifest.chunks is not None
    check_not_interrupted(f"the manifest of {database!r}")
    writer.fence(dump.manifest.chunks, fence)
    key = retry_transient(
        lambda: publish_manifest(storage, dump.manifest),
        f"manifest of {database!r} to {storage.describe()}",
        UPLOAD_RETRY_DELAYS,
    )
    writer.confirm(dump.manifest.chunks, f"backup {backup_id} of {database!r}")
    run_logger().info(
        "stored backup %s of %r as %d chunks (%d new) in %s",
        backup_id,
        database,
        len(dump.manifest.chunks.order),
        dump.manifest.chunks.new,
        storage.describe(),
    )
    return StoredBackup(key=key, manifest=dump.manifest)


def back_up_database(
    server: DatabaseServer,
    server_name: str,
    database: str,
    encryption: AgeEncryption,
    storage: BackupStorage,
    workdir: Path,
    backup_id: str,
    *,
    level: int | None = None,
    threads: int = 2,
) -> StoredBackup:
    """Dump one database, then store it (object, then manifest): one task run per database.
    A deduplicating storage takes the chunks while the dump runs."""
    if storage.dedup:
        return back_up_chunked(
            server, server_name, database, encryption, storage, workdir, backup_id, level
        )
    dump = dump_database(
        server, server_name, database, encryption, workdir, backup_id, level=level, threads=threads
    )
    return store_with_retries(storage, dump)


def _retry_if_transient(task, task_run, state) -> bool:  # noqa: ANN001
    """Retry only errors a retry can fix (network, storage), never auth or a missing db,
    and nothing once the run was told to stop."""
    if interrupted():
        return False
    try:
        state.result()
    except Exception as exc:
        return bool(getattr(exc, "retryable", True))  # see store_with_retries
    return False


backup_task = task(
    back_up_database,
    name="backup",
    task_run_name="backup-{database}",
    cache_policy=NONE,
    retries=1,
    retry_delay_seconds=30,
    retry_condition_fn=_retry_if_transient,
)
