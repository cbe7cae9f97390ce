"""Archive runs (point-in-time recovery): the server's transaction log written since the
last run, stored as zstd + age pieces listed in one signed manifest per run.

Where a run starts is where the stored archive ends: the furthest end among the server's
trusted (signed, location-bound) run manifests, by log position, never by a clock. The
pieces of a log file are byte ranges that follow each other; whatever breaks that (a file
purged before it was archived, a log reset) is a gap: the run stores what the server still
has, records the gap in its manifest and fails (docs/pitr.md).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Generic, TypeVar

from prefect_dbbackup.blocks.encryption import AgeEncryption
from prefect_dbbackup.blocks.errors import IntegrityError
from prefect_dbbackup.blocks.process import check_stopped
from prefect_dbbackup.blocks.server import DatabaseServer
from prefect_dbbackup.blocks.storage import BackupStorage, ObjectNotFound
from prefect_dbbackup.tasks.archive_manifest import (
    ArchiveManifest,
    LogPiece,
    LogPosition,
    archive_key,
    archive_prefix,
    file_order,
    parse_record_key,
)
from prefect_dbbackup.tasks.backup import UPLOAD_RETRY_DELAYS, tool_version
from prefect_dbbackup.tasks.catalog import (
    publish_signed,
    read_each,
    signature_key,
    signature_trust,
)
from prefect_dbbackup.tasks.layout import MANIFEST_NAME
from prefect_dbbackup.tasks.logs import run_logger
from prefect_dbbackup.tasks.manifest import MadeBy
from prefect_dbbackup.tasks.retrying import retry_transient
from prefect_dbbackup.tasks.spool import spooling, write_spool
from prefect_dbbackup.tasks.stream import READ_SIZE

M = TypeVar("M", bound=MadeBy)  # a signed record of one server, with a run_id
WAVE = 16  # run manifests read at once while looking for where the archive ends


@dataclass(frozen=True)
class StoredRun(Generic[M]):
    """One signed record in storage (an archive run's manifest, a base backup's), and
    whether it is trusted."""

    key: str
    run_id: str
    manifest: M | None
    problem: str | None  # why it is not trusted (None: signed and in its place)


@dataclass(frozen=True)
class ArchiveState:
    """A server's stored archive: its trusted runs and the refused ones."""

    runs: list[StoredRun]
    listed: set[str]  # every key under the server's archive prefix, as read_archive found it

    @property
    def trusted(self) -> list[ArchiveManifest]:
        """The trusted runs' manifests, by where they end."""
        found = [r.manifest for r in self.runs if r.problem is None and r.manifest]
        return sorted(found, key=lambda m: m.end.order())

    @property
    def refused(self) -> list[StoredRun]:
        """Run manifests that are not used, with why."""
        return [r for r in self.runs if r.problem is not None]

    @property
    def end(self) -> LogPosition | None:
        """Where the archive ends (None: nothing archived yet)."""
        trusted = self.trusted
        return trusted[-1].end if trusted else None


class SignedRecords(Generic[M]):
    """Reads and checks the signed manifests (of `model`) of one server under prefix (its
    archive runs, its base backups), from one listing."""

    def __init__(self, storage: BackupStorage, server: str, prefix: str, model: type[M]) -> None:
        self.storage, self.server, self.prefix, self.model = storage, server, prefix, model
        self.keys = storage.manifest_verifiers()
        self.listed = set(storage.list_keys(prefix))
        self.manifest_keys = sorted(k for k in self.listed if self._run_id(k))

    def _run_id(self, key: str) -> str | None:
        return parse_record_key(key, self.prefix)

    def all(self) -> list[StoredRun[M]]:
        """Every record listed."""
        return self.read(self.manifest_keys)

    def read(self, wanted: list[str]) -> list[StoredRun[M]]:
        """The records of wanted (manifest keys), READERS at a time; none for one removed
        since it was listed (a prune)."""
        runs = read_each(self.storage, self._one, wanted, "archive-manifests")
        return [r for r in runs if r is not None]

    def _one(self, key: str) -> StoredRun[M] | None:
        server, run_id = self.server, self._run_id(key)
        assert run_id is not None
        try:
            data = self.storage.get_bytes(key)
        except ObjectNotFound:
            return None
        try:
            manifest = self.model.model_validate_json(data)
        except ValueError as exc:
            return StoredRun(key, run_id, None, f"not a valid manifest ({exc!s:.200})")
        if (manifest.server, manifest.run_id) != (server, run_id):
            problem = (
                f"it says server {manifest.server!r}, run {manifest.run_id!r}, but sits at "
                f"server {server!r}, run {run_id!r} (copied or moved from elsewhere)"
            )
            return StoredRun(key, run_id, manifest, problem)
        has_signature = signature_key(key) in self.listed
        trust, problem, _ = signature_trust(self.storage, key, data, self.keys, has_signature)
        return StoredRun(key, run_id, manifest, None if trust == "signed" else problem)


def read_archive(storage: BackupStorage, server: str) -> ArchiveState:
    """Every archive run manifest of server, each checked: signed by a trusted key, and
    saying the server and run id of where it sits."""
    reader = SignedRecords(storage, server, archive_prefix(server), ArchiveManifest)
    return ArchiveState(reader.read(reader.manifest_keys), reader.listed)


def archive_end(storage: BackupStorage, server: str) -> tuple[LogPosition | None, list[StoredRun]]:
    """Where the archive ends, and the refused runs read on the way: the newest runs (by
    run id) are read first, WAVE at a time, until a wave holds a trusted one; the furthest
    end among them is taken. A run every minute keeps a week's archive in ~10,000 runs: one
    run reads a few of them, not all. Should a clock that went back leave a further end
    among older runs, the run starts earlier and stores some log again, which a restore
    takes either way: never a gap."""
    trusted, refused = newest_runs(storage, server)
    return max((m.end for m in trusted), key=LogPosition.order, default=None), refused


def newest_runs(
    storage: BackupStorage, server: str
) -> tuple[list[ArchiveManifest], list[StoredRun]]:
    """The trusted runs of the newest wave that holds any (WAVE run manifests at a time, by
    run id, newest first), and the refused runs read on the way."""
    reader = SignedRecords(storage, server, archive_prefix(server), ArchiveManifest)
    newest_first = reader.manifest_keys[::-1]
    refused: list[StoredRun] = []
    for i in range(0, len(newest_first), WAVE):
        runs = reader.read(newest_first[i : i + WAVE])
        refused += [r for r in runs if r.problem is not None]
        trusted = [r.manifest for r in runs if r.problem is None and r.manifest is not None]
        if trusted:
            return trusted, refused
    return [], refused


@dataclass(frozen=True)
class Fetch:
    """One piece to fetch: file from start; expected_end: the size of a closed file;
    listed: the file's size when the server listed it (the open file's grows)."""

    file: str
    start: int
    expected_end: int | None
    listed: int


def plan_fetches(
    files: list[tuple[str, int]],
    end: LogPosition | None,
    first: int = 4,
    log: str = "binary log",
) -> tuple[list[Fetch], str | None]:
    """The fetches that take the archive from end to the server's present, and the gap
    between them, if any (a text saying what was lost).

    files: the server's log files (name, size), oldest first, the last one open; first:
    where a file's own bytes start, log: what the log is called (the engine's
    log_first_position and log_name)."""

    def from_index(i: int, start: int) -> list[Fetch]:
        last = len(files) - 1
        return [
            Fetch(name, start if j == i else first, size if j < last else None, size)
            for j, (name, size) in enumerate(files)
            if j >= i
        ]

    if not files:
        return [], None
    if end is None:
        return from_index(0, first), None
    names = [name for name, _ in files]
    base, number = file_order(end.file)
    if end.file in names:
        i = names.index(end.file)
        if files[i][1] < end.position:
            gap = (
                f"{end.file} on the server holds {files[i][1]} bytes, fewer than the "
                f"{end.position} archived: the {log} was reset or replaced"
            )
            return from_index(0, first), gap
        if end.closed:
            return from_index(i + 1, first), None
        return from_index(i, end.position), None
    later = [j for j, name in enumerate(names) if file_order(name)[0] == base]
    later = [j for j in later if file_order(names[j])[1] > number]
    if later and end.closed and file_order(names[later[0]])[1] == number + 1:
        return from_index(later[0], first), None  # archived whole, then purged
    if later:
        gap = (
            f"the {log} from {end.file}:{end.position} up to {names[later[0]]} was purged "
            "from the server before it was archived"
        )
    else:
        gap = f"{end.file} is gone and no later file follows it: the {log} was reset"
    return from_index(0, first), gap


class FilteredReader(io.RawIOBase):
    """Reads inner through keep (bytes in -> the bytes to pass on)."""

    def __init__(self, inner: BinaryIO, keep: Callable[[memoryview], bytes]) -> None:
        self.inner, self.keep = inner, keep
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        while not self._pending:
            block = self.inner.read(READ_SIZE)
            if not block:
                return 0
            self._pending = memoryview(self.keep(memoryview(block)))
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


@dataclass(frozen=True)
class ArchiveRun:
    """What the steps of one archive run share (as BackupRun does for a backup run)."""

    server: DatabaseServer
    server_name: str
    encryption: AgeEncryption
    storage: BackupStorage
    workdir: Path
    run_id: str


def fetch_piece(run: ArchiveRun, fetch: Fetch, index: int) -> LogPiece | None:
    """Fetch one piece, compress and encrypt it into the spool, store it; None when the file
    holds nothing new. The piece is checked event by event (or page by page) on the way
    (server.log_piece_filter) and, for a closed file, must end at its size."""
    server, storage = run.server, run.storage
    log = server.engine.log_name
    what = f"{log} {fetch.file} from {fetch.start}"
    name = f"piece-{index:03d}.zst.age"
    spool = run.workdir / name
    with spooling(spool, what):
        piece = server.log_piece_filter(fetch.file, fetch.start)
        with server.open_log(fetch.file, fetch.start, fetch.listed, run.workdir) as source:
            stats = write_spool(
                FilteredReader(source, piece.feed),
                spool,
                run.encryption.recipient_keys(),
                level=server.zstd_level,
                threads=1,
                check=lambda: check_stopped(what),
            )
        summary = piece.finish()
        if fetch.expected_end is not None and summary.end != fetch.expected_end:
            raise IntegrityError(
                f"the {log} file {fetch.file} is closed at {fetch.expected_end} bytes on the "
                f"server, but its fetch from {fetch.start} ended at {summary.end}: nothing of "
                "it is stored; run the archive again"
            )
        if summary.end == fetch.start:
            spool.unlink()
            return None
        key = archive_key(run.server_name, run.run_id, name)
        retry_transient(
            lambda: storage.put_file(key, spool, stats.sha256),
            f"upload of {what} to {storage.describe()}",
            UPLOAD_RETRY_DELAYS,
        )
        spool.unlink()
    return LogPiece(
        object_name=name,
        file=fetch.file,
        start=summary.start,
        end=summary.end,
        closed=summary.closed or fetch.expected_end is not None,  # a crash leaves no rotate
        events=summary.events,
        first_event_at=summary.first_event_at,
        last_event_at=summary.last_event_at,
        stats=stats,
    )


def made_by(run: ArchiveRun, client: tuple[str, str]) -> dict[str, str]:
    """The MadeBy fields of a record of run made with client (name, version)."""
    return {
        "tool_version": tool_version(),
        "server": run.server_name,
        "server_type": run.server.engine.name,
        "server_version": run.server.server_version(),
        "client": client[0],
        "client_version": client[1],
    }


def publish_run(
    run: ArchiveRun,
    started: datetime,
    pieces: list[LogPiece],
    end: LogPosition,
    gap: str | None,
    sealed: dict[str, int],
    server_time: datetime | None = None,
) -> ArchiveManifest:
    """Sign and store the run's manifest (after its pieces): the run now exists."""
    server = run.server
    manifest = ArchiveManifest(
        kind=server.engine.log_kind,
        **made_by(run, server.log_client()),
        run_id=run.run_id,
        started_at=started,
        finished_at=datetime.now(UTC),
        recipients=run.encryption.fingerprints(),
        pieces=pieces,
        end=end,
        gap=gap,
        sealed=sealed,
        server_time=server_time,
    )
    key = archive_key(run.server_name, run.run_id, MANIFEST_NAME)
    retry_transient(
        lambda: publish_signed(run.storage, key, manifest.to_bytes()),
        f"archive manifest to {run.storage.describe()}",
        UPLOAD_RETRY_DELAYS,
    )
    run_logger().info("stored archive run %s: %d piece(s), up to %s", run.run_id, len(pieces), end)
    return manifest


def end_after(
    pieces: list[LogPiece], sealed: dict[str, int], before: LogPosition | None
) -> LogPosition | None:
    """Where the archive ends once pieces are stored (before: where it ended; sealed: the
    files the server had closed, with their sizes)."""
    if pieces:
        last = pieces[-1]
        return LogPosition(file=last.file, position=last.end, closed=last.closed)
    if before is not None and sealed.get(before.file) == before.position:
        return LogPosition(file=before.file, position=before.position, closed=True)
    return before
