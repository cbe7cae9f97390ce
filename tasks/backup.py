"""Backing up one database: dump -> zstd -> age -> spool (or chunks), then upload and manifest.

The steps of one backup run share a BackupRun. A dump streams into one of two sinks,
chosen once per database: a SpoolSink (one encrypted object, stored after the dump) or a
ChunkSink (a deduplicating storage's chunks, stored while the dump runs). BackupRun.manifest
is the one place a backup's manifest is built.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from prefect import task
from prefect.cache_policies import NONE
from prefect_dbbackup.blocks.binlog import BinlogPosition
from prefect_dbbackup.blocks.encryption import AgeEncryption
from prefect_dbbackup.blocks.engines import BackupKind, DumpFormat
from prefect_dbbackup.blocks.process import (
    check_not_interrupted,
    check_stopped,
    interrupted,
    until_stopped,
)
from prefect_dbbackup.blocks.server import (
    DatabaseServer,
    DumpSnapshot,
    PositionReader,
    RowCounter,
    ToolCommand,
)
from prefect_dbbackup.blocks.storage import BackupStorage
from prefect_dbbackup.tasks.catalog import publish_manifest
from prefect_dbbackup.tasks.dedup.keys import ensure_key_copy, writer_key
from prefect_dbbackup.tasks.dedup.layout import gc_parameters
from prefect_dbbackup.tasks.dedup.writer import ChunkWriter
from prefect_dbbackup.tasks.layout import backup_key
from prefect_dbbackup.tasks.limits import dump_slot, host_slot
from prefect_dbbackup.tasks.logs import run_logger
from prefect_dbbackup.tasks.manifest import ChunkList, Manifest, StreamStats
from prefect_dbbackup.tasks.retrying import retry_transient
from prefect_dbbackup.tasks.sizes import size
from prefect_dbbackup.tasks.spool import spool_path, spooling, work_dir_full, write_spool
from prefect_dbbackup.tasks.stream import CountingReader, ReadAhead, TrailedReader
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


@dataclass(frozen=True)
class BackupRun:
    """What the steps of one backup run share: the blocks (as they are passed to tasks
    today: names and SecretStr fields, never a plain secret), the server block's name,
    the private work dir, the backup id and the zstd settings."""

    server: DatabaseServer
    server_name: str
    encryption: AgeEncryption
    storage: BackupStorage
    workdir: Path
    backup_id: str
    level: int | None = None  # zstd level; None takes the server block's
    threads: int = 2  # zstd threads of a spooled dump

    @property
    def zstd_level(self) -> int:
        """The zstd level the run's dumps are compressed with."""
        return self.server.zstd_level if self.level is None else self.level

    def manifest(
        self,
        database: str,
        source: DumpSource,
        stats: StreamStats,
        *,
        dump_format: DumpFormat,
        dump_options: list[str],
        kind: BackupKind = "database",
        chunks: ChunkList | None = None,
        **contents: Any,
    ) -> Manifest:
        """The manifest of a finished dump of the series (server_name, database): the one
        place a backup's manifest is built. contents: what a database backup records of
        the database (create_options, tables, row_counts, database_properties)."""
        return Manifest(
            tool_version=tool_version(),
            server=self.server_name,
            server_type=self.server.engine.name,
            server_version=source.server_version,
            client=os.path.basename(source.client),
            client_version=source.client_version,
            database=database,
            backup_id=self.backup_id,
            kind=kind,
            started_at=source.started_at,
            finished_at=datetime.now(UTC),
            object_name=self.server.engine.object_name(kind),
            dump_format=dump_format,
            format="object" if chunks is None else "chunks-v1",
            chunks=chunks,
            stats=stats,
            recipients=self.encryption.fingerprints(),
            dump_options=dump_options,
            **contents,
        )


@dataclass(frozen=True)
class DumpSource:
    """Who made a dump and when, as its manifest records it."""

    started_at: datetime
    server_version: str
    client: str  # the client binary (its path: the manifest keeps the base name)
    client_version: str


@dataclass(frozen=True)
class DumpStream:
    """A dump client's output on its way into a sink, and what reads along."""

    source: BinaryIO
    what: str  # "the dump of 'db'": names it when a stop ends it
    on_progress: Callable[[int], None]  # bytes read so far, now and then
    tap: Callable[[memoryview], None] | None  # sees every plaintext byte (a row counter)

    def check(self) -> None:
        """Raise Interrupted once the run was told to stop (called after every read)."""
        check_stopped(self.what)


class DumpSink(Protocol):
    """Where a dump stream goes, chosen once per database: a SpoolSink (one encrypted
    object, stored after the dump) or a ChunkSink (a deduplicating storage's chunks,
    stored while the dump runs)."""

    chunks: ChunkList | None  # after write: the chunks the stream was stored as, if any

    def guard(self) -> contextlib.AbstractContextManager[object]:
        """Wraps the whole dump: removes what a failure leaves, names a full work dir."""
        ...

    def write(self, stream: DumpStream) -> StreamStats:
        """Take the stream to its end (a stop ends it); its byte counts and hash."""
        ...

    def store(self, manifest: Manifest) -> StoredBackup:
        """Make the dumped backup exist: whatever is not stored yet, then the manifest."""
        ...


class SpoolSink:
    """The dump compressed and encrypted into a spool file of the work dir, uploaded once
    complete (retried on its own, without dumping again)."""

    chunks: ChunkList | None = None

    def __init__(self, run: BackupRun, database: str) -> None:
        self.run, self.database = run, database
        self.recipients = run.encryption.recipient_keys()
        self.path = spool_path(run.workdir, "database", database, run.backup_id)

    def guard(self) -> contextlib.AbstractContextManager[object]:
        """The spool is removed if the dump fails."""
        return spooling(self.path, repr(self.database))

    def write(self, stream: DumpStream) -> StreamStats:
        """Compress and encrypt the stream into the spool (a stop returns at once)."""
        return until_stopped(
            lambda: write_spool(
                stream.source,
                self.path,
                self.recipients,
                level=self.run.zstd_level,
                threads=self.run.threads,
                on_progress=stream.on_progress,
                tap=stream.tap,
                check=stream.check,
            ),
            stream.what,
        )

    def store(self, manifest: Manifest) -> StoredBackup:
        """Upload the spool, then the manifest (store_with_retries)."""
        return store_with_retries(
            self.run.storage, DumpResult(spool=str(self.path), manifest=manifest)
        )


class ChunkSink:
    """The dump cut into chunks while it runs; chunks the storage lacks are stored at once,
    the manifest after the fence check of docs/dedup.md."""

    def __init__(self, run: BackupRun, database: str) -> None:
        self.run, self.database = run, database
        self.chunks: ChunkList | None = None
        storage = run.storage
        self.writer = ChunkWriter(
            storage,
            writer_key(storage),
            run.encryption,
            level=run.zstd_level,
            retry_delays=UPLOAD_RETRY_DELAYS,
            series=(run.server_name, database),
        )
        ensure_key_copy(storage, self.writer.key, run.encryption)
        self.fence_seconds = gc_parameters(storage).fence_hours * 3600  # the storage's
        self.ahead: ReadAhead | None = None

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Nothing is spooled: only a full work dir (the client's option files) is named.
        The read-ahead thread is waited for here, once the dump client is gone."""
        try:
            with work_dir_full(self.run.workdir, repr(self.database)):
                yield
        finally:
            if self.ahead is not None:
                self.ahead.join()

    def write(self, stream: DumpStream) -> StreamStats:
        """Chunk the stream to its end, storing the new chunks (a stop returns at once: the
        chunks being compressed are not waited for). A thread of its own reads the dump
        (ReadAhead), so the client does not wait while chunks are cut and hashed."""
        self.ahead = ReadAhead(stream.source)
        counted = CountingReader(self.ahead, stream.on_progress, tap=stream.tap, check=stream.check)
        try:
            self.chunks = until_stopped(lambda: self.writer.write(counted), stream.what)
        finally:
            self.ahead.close()
        return StreamStats(
            raw_bytes=self.chunks.raw_bytes,
            compressed_bytes=self.writer.compressed_bytes,
            stored_bytes=self.chunks.new_stored_bytes,
            sha256=self.chunks.stream_hmac,
        )

    def store(self, manifest: Manifest) -> StoredBackup:
        """The fence check, then the manifest (retried), then the chunks confirmed."""
        storage, database, chunks = self.run.storage, self.database, manifest.chunks
        assert chunks is not None
        check_not_interrupted(f"the manifest of {database!r}")
        self.writer.fence(chunks, self.fence_seconds)
        key = retry_transient(
            lambda: publish_manifest(storage, manifest),
            f"manifest of {database!r} to {storage.describe()}",
            UPLOAD_RETRY_DELAYS,
        )
        self.writer.confirm(chunks, f"backup {manifest.backup_id} of {database!r}")
        run_logger().info(
            "stored backup %s of %r as %d chunks (%d new) in %s",
            manifest.backup_id,
            database,
            len(chunks.order),
            chunks.new,
            storage.describe(),
        )
        return StoredBackup(key=key, manifest=manifest)


@contextlib.contextmanager
def _dump_gate(server: DatabaseServer, database: str) -> Iterator[None]:
    """What a dump waits for before reading the server: a slot of its flow run and one of
    its host's limit."""
    with dump_slot(database), host_slot(server.host):
        yield


def dump_database(run: BackupRun, database: str, sink: DumpSink) -> Manifest:
    """Dump one database into sink, in the snapshot the server block takes; the manifest
    to publish once sink.store has stored what it has not yet."""
    server = run.server
    started = datetime.now(UTC)
    server_version = server.server_version()
    with sink.guard():
        with (
            server.dump_snapshot(database, _dump_gate(server, database)) as snapshot,
            server.dump_command(database, run.workdir, snapshot.snapshot_id) as cmd,
        ):
            client = cmd.argv[0]
            source = DumpSource(started, server_version, client, server.client_version(client))
            stats, counter, position = _stream_dump(server, database, cmd, snapshot, sink)
        manifest = run.manifest(
            database,
            source,
            stats,
            dump_format=server.engine.dump_format,
            dump_options=server.dump_options_for(database),
            chunks=sink.chunks,
            create_options=snapshot.options,
            tables=snapshot.tables,
            row_counts=counter.finish() if counter else snapshot.row_counts,
            database_properties=snapshot.properties,
            binlog=_stamped(server, position.finish()) if position else None,
        )
    _log_dumped(manifest)
    return manifest


def _stamped(server: DatabaseServer, position: BinlogPosition) -> BinlogPosition:
    """position with the server's clock now, after the dump: the snapshot is older by that
    clock, the one the log's event times come from (docs/pitr.md)."""
    return position.model_copy(update={"server_time": server.server_clock()})


def _stream_dump(
    server: DatabaseServer,
    database: str,
    cmd: ToolCommand,
    snapshot: DumpSnapshot,
    sink: DumpSink,
) -> tuple[StreamStats, RowCounter | None, PositionReader | None]:
    """Run the dump client into sink; the stream's stats, and the row counter and log
    position reader it fed (the reader sees the client's output only, not the trailer)."""
    log = run_logger()

    def progress(nbytes: int) -> None:
        log.info("dump of %r: %.0f MiB read so far", database, nbytes / 2**20)

    with cmd.process(server.dump_timeout, stdout=True) as proc:
        assert proc.stdout is not None
        what = f"the dump of {database!r}"
        counter = server.dump_row_counter(snapshot.tables)
        position = server.dump_position_reader(what)
        output = CountingReader(proc.stdout, tap=position.feed) if position else proc.stdout
        source = TrailedReader(output, cmd.trailer) if cmd.trailer else output
        tap = counter.feed if counter else None
        stats = sink.write(DumpStream(source, what, progress, tap))
    return stats, counter, position


def _log_dumped(manifest: Manifest) -> None:
    """The log line of a finished dump: sizes, ratio, speed (and chunks reused)."""
    st, chunks = manifest.stats, manifest.chunks
    run_logger().info(
        "dumped %r: %s raw -> %s stored (%.1fx) in %.1f s (%.0f MB/s)%s",
        manifest.database,
        size(st.raw_bytes),
        size(st.stored_bytes),
        st.raw_bytes / max(st.stored_bytes, 1),
        manifest.seconds,
        st.raw_bytes / 1e6 / max(manifest.seconds, 1e-3),
        f"; chunks: {chunks.new} new, {chunks.reused} already stored" if chunks else "",
    )
    if manifest.binlog is not None:
        run_logger().info(
            "dump of %r starts at binlog position %s", manifest.database, manifest.binlog.describe()
        )


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


def back_up_database(run: BackupRun, database: str) -> StoredBackup:
    """Dump one database, then store it (object, then manifest): one task run per database.
    A deduplicating storage takes the chunks while the dump runs."""
    sink: DumpSink = ChunkSink(run, database) if run.storage.dedup else SpoolSink(run, database)
    return sink.store(dump_database(run, database, sink))


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
