"""What the stored archive and dumps can restore: stretches of unbroken log, gaps between
them, and per database the windows of time a restore can reach (docs/pitr.md).

A stretch is a run of pieces that follow each other byte for byte: within a file each piece
starts where the one before it ended; a file that ended (its last piece closed with the
rotate event, or ending where a run found the file closed: a crash leaves no rotate) goes
on with the next file's number from its start. A stretch is replayable
from a position only if it holds that file from its start (the format description event
at its head is what a replay reads first). Only trusted (signed, location-bound) run
manifests count; nothing here compares a clock.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

import pyrage
from prefect_dbbackup.blocks.binlog import BinlogPosition
from prefect_dbbackup.blocks.binlog_events import ReplayResult
from prefect_dbbackup.blocks.encryption import AgeEncryption
from prefect_dbbackup.blocks.errors import DbBackupError, IntegrityError, Interrupted
from prefect_dbbackup.blocks.server import DatabaseServer
from prefect_dbbackup.blocks.storage import BackupStorage
from prefect_dbbackup.tasks.archive import ArchiveState, read_archive
from prefect_dbbackup.tasks.archive_manifest import (
    ArchiveManifest,
    LogPiece,
    archive_key,
    file_order,
)
from prefect_dbbackup.tasks.catalog import scan_backups
from prefect_dbbackup.tasks.manifest import Manifest, StreamStats
from prefect_dbbackup.tasks.stream import check_stored, decrypt_stream


@dataclass(frozen=True)
class StoredPiece:
    """A piece and the run that stored it (its key is the run's)."""

    run_id: str
    piece: LogPiece


@dataclass
class Stretch:
    """Pieces that follow each other without a gap, in log order."""

    pieces: list[StoredPiece] = field(default_factory=list)

    @property
    def first(self) -> LogPiece:
        return self.pieces[0].piece

    @property
    def last(self) -> LogPiece:
        return self.pieces[-1].piece

    @property
    def first_event_at(self) -> datetime | None:
        return next((s.piece.first_event_at for s in self.pieces if s.piece.first_event_at), None)

    @property
    def last_event_at(self) -> datetime | None:
        times = [s.piece.last_event_at for s in self.pieces if s.piece.last_event_at]
        return max(times) if times else None

    def holds(self, position: BinlogPosition) -> bool:
        """Whether a replay from position can run: the stretch holds position's file from
        its start (a replay reads the file's first events) up to position or beyond."""
        mine = [s.piece for s in self.pieces if s.piece.file == position.file]
        return bool(mine) and mine[0].start == 0 and position.position <= mine[-1].end

    def files_from(self, position: BinlogPosition) -> list[tuple[str, list[StoredPiece]]]:
        """The files a replay from position reads, each with all its pieces, in order."""
        order = file_order(position.file)
        out: dict[str, list[StoredPiece]] = {}
        for stored in self.pieces:
            if file_order(stored.piece.file) >= order:
                out.setdefault(stored.piece.file, []).append(stored)
        return list(out.items())

    def describe(self) -> str:
        """binlog.000001:0 .. binlog.000004:621"""
        return f"{self.first.file}:{self.first.start} .. {self.last.file}:{self.last.end}"


def stretches(runs: list[ArchiveManifest]) -> list[Stretch]:
    """The trusted runs' pieces as stretches, in log order. Where two pieces start at the
    same place (two runs at once), the one reaching further is taken."""
    by_start: dict[tuple[str, int], StoredPiece] = {}
    sealed = {name: size for run in runs for name, size in run.sealed.items()}
    for run in runs:
        for piece in run.pieces:
            here = (piece.file, piece.start)
            if here not in by_start or by_start[here].piece.end < piece.end:
                by_start[here] = StoredPiece(run.run_id, piece)
    left = sorted(by_start.values(), key=lambda s: (file_order(s.piece.file), s.piece.start))
    used: set[tuple[str, int]] = set()
    found = []
    for head in left:
        if (head.piece.file, head.piece.start) in used:
            continue
        stretch, current = Stretch(), head
        while current is not None:
            used.add((current.piece.file, current.piece.start))
            stretch.pieces.append(current)
            current = by_start.get((current.piece.file, current.piece.end)) or (
                _next_file(by_start, current.piece)
                if current.piece.closed or sealed.get(current.piece.file) == current.piece.end
                else None
            )
        found.append(stretch)
    return found


def _next_file(by_start: dict[tuple[str, int], StoredPiece], piece: LogPiece) -> StoredPiece | None:
    base, number = file_order(piece.file)
    for (name, start), stored in by_start.items():
        if start == 0 and file_order(name) == (base, number + 1):
            return stored
    return None


@dataclass(frozen=True)
class Window:
    """A database can be restored to any second from `since` to `until`: the dump taken
    before (finished at since), then the log of one stretch."""

    database: str
    since: datetime
    until: datetime
    backup_id: str  # the oldest dump of the window
    stretch: Stretch


def snapshot_bound(dump: Manifest) -> datetime:
    """A time, by the database server's clock when the manifest has it, that the dump's
    snapshot is not later than: the worker's clock may be off from the server's, whose
    clock the log's event times come from."""
    if dump.binlog is not None and dump.binlog.server_time is not None:
        return dump.binlog.server_time
    return dump.finished_at


def windows(dumps: list[Manifest], found: list[Stretch]) -> list[Window]:
    """Per database, one window per stretch that holds a dump's position: from the oldest
    such dump's end to the stretch's last event."""
    out: dict[tuple[str, int], Window] = {}
    for dump in sorted(dumps, key=snapshot_bound):
        if dump.binlog is None:
            continue
        since = snapshot_bound(dump)
        for i, stretch in enumerate(found):
            until = stretch.last_event_at
            # binlog times are whole seconds: an event of the dump's last second may follow it
            late = until is None or int(until.timestamp()) < int(since.timestamp())
            if late or not stretch.holds(dump.binlog):
                continue
            out.setdefault(
                (dump.database, i),
                Window(
                    dump.database,
                    since,
                    until or since,
                    dump.backup_id,
                    stretch,
                ),
            )
    return sorted(out.values(), key=lambda w: (w.database, w.since))


def newest_dump_for(
    dumps: list[Manifest], found: list[Stretch], target: datetime | None
) -> tuple[Manifest, Stretch] | None:
    """The newest dump whose snapshot is not later than target (None: any; snapshot_bound)
    and whose position a stretch holds, with that stretch."""
    for dump in sorted(dumps, key=snapshot_bound, reverse=True):
        if dump.binlog is None or (target is not None and snapshot_bound(dump) > target):
            continue
        for stretch in found:
            if stretch.holds(dump.binlog):
                return dump, stretch
    return None


@dataclass(frozen=True)
class PitrView:
    """A server's archive as list --pitr shows it."""

    stretches: list[Stretch]
    windows: list[Window]
    gaps: list[str]  # between stretches, and the gaps the runs recorded
    refused: list[str]  # run manifests not used, with why


def pitr_view(
    storage: BackupStorage,
    server: str,
    database: str | None = None,
    state: ArchiveState | None = None,
) -> PitrView:
    """The stretches, gaps and restorable windows of a server (or one database); state:
    the archive as read_archive read it, if the caller has it."""
    state = state or read_archive(storage, server)
    found = stretches(state.trusted)
    dumps = [
        e.manifest for e in scan_backups(storage, server, database) if e.usable() and e.manifest
    ]
    gaps = [f"run {m.run_id}: {m.gap}" for m in state.trusted if m.gap]
    gaps += [
        f"between {a.last.file}:{a.last.end} and {b.first.file}:{b.first.start}"
        for a, b in zip(found, found[1:], strict=False)
    ]
    refused = [f"{r.key}: {r.problem}" for r in state.refused]
    return PitrView(found, windows(dumps, found), gaps, refused)


class _CountingSink:
    """Writes to out, counting the bytes."""

    def __init__(self, out: BinaryIO) -> None:
        self.out, self.count = out, 0

    def write(self, data: bytes) -> int:
        self.out.write(data)
        self.count += len(data)
        return len(data)


@dataclass(frozen=True)
class StoredPart:
    """One stored object of a longer plaintext: where, its stats, what it holds."""

    key: str
    stats: StreamStats
    raw_bytes: int
    what: str
    source: str  # the record that says what it holds


def archived_file(
    storage: BackupStorage,
    server: str,
    pieces: list[StoredPiece],
    identities: list[pyrage.x25519.Identity],
    workdir: Path,
) -> contextlib.AbstractContextManager[BinaryIO]:
    """A log file as the archive holds it, from its start (see plaintext_of)."""
    parts = [
        StoredPart(
            archive_key(server, s.run_id, s.piece.object_name),
            s.piece.stats,
            s.piece.end - s.piece.start,
            f"archived piece {s.piece.object_name} of run {s.run_id}",
            "its archive run",
        )
        for s in pieces
    ]
    return plaintext_of(storage, parts, identities, workdir)


@contextlib.contextmanager
def plaintext_of(
    storage: BackupStorage,
    parts: list[StoredPart],
    identities: list[pyrage.x25519.Identity],
    workdir: Path,
) -> Iterator[BinaryIO]:
    """The plaintext of parts, in order: each checked (size, sha256), decrypted and
    decompressed by a thread into a pipe that the caller reads (plaintext never touches
    disk). A failure of any part is raised when the caller is done, so a stream that ended
    early is never taken for a whole one."""
    read_end, write_end = os.pipe()
    failure: list[BaseException] = []

    def feed() -> None:
        try:
            with open(write_end, "wb") as out:
                for part in parts:
                    sink = _CountingSink(out)
                    with storage.open_read(part.key, workdir) as f:
                        check_stored(f, part.stats, part.what, part.source)
                        decrypt_stream(f, lambda s=sink: s, identities)
                    if sink.count != part.raw_bytes:
                        raise IntegrityError(
                            f"{part.what} holds {sink.count} bytes, not {part.raw_bytes}"
                        )
        except BrokenPipeError:
            pass  # the reader stopped early: it needs no more
        except BaseException as exc:  # noqa: BLE001 (handed to the caller below)
            failure.append(exc)

    thread = threading.Thread(target=feed, name="archived-file", daemon=True)
    thread.start()
    reader = open(read_end, "rb")  # noqa: SIM115 (closed below, before the join)
    try:
        yield reader
    except Interrupted:
        raise  # a stop is what ended it, whatever the feeder saw
    except Exception:
        # the reader's error (a file that "ended" early) when the feeder failed first: the
        # feeder's error is the cause, and it says which part
        if _joined(reader, thread, failure):
            raise _feed_error(failure[0]) from None
        raise
    finally:
        _joined(reader, thread, failure)
    if failure:
        raise _feed_error(failure[0])


def _joined(reader: BinaryIO, thread: threading.Thread, failure: list[BaseException]) -> bool:
    """Close the reader, wait for the feeder; whether it failed."""
    reader.close()
    thread.join()
    return bool(failure)


def _feed_error(exc: BaseException) -> DbBackupError:
    if isinstance(exc, DbBackupError):
        return exc
    return IntegrityError(f"the archived log could not be read: {exc}")


def replay_archive(
    server: DatabaseServer,
    storage: BackupStorage,
    encryption: AgeEncryption,
    identity_file: str | None,
    dump: Manifest,
    stretch: Stretch,
    target: str,
    stop: datetime,
    workdir: Path,
) -> ReplayResult:
    """Replay dump.database's events of the archive, from the dump's binlog position up to
    stop, into target (which holds the restored dump)."""
    assert dump.binlog is not None
    identities = encryption.identities(identity_file)
    files = [
        (name, functools.partial(archived_file, storage, dump.server, pieces, identities, workdir))
        for name, pieces in stretch.files_from(dump.binlog)
    ]
    return server.replay_binlog(
        files,
        database=dump.database,
        target=target,
        start_position=dump.binlog,
        stop_time=stop,
        workdir=workdir,
    )
