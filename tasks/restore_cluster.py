"""restore-cluster (PostgreSQL point-in-time recovery, docs/pitr.md): a new data directory
from the newest base backup that ended by the target time, the archived WAL from that
backup's start on, and the recovery settings that make PostgreSQL replay it up to the time.

Which base backup, and whether the archive reaches the time, are decided on the server's
clock as the signed manifests recorded it (a base backup's `server_time`, an archive run's
`server_time`), never on this machine's. PostgreSQL itself replays the WAL and stops at the
first commit after the target; each archive run commits once before it reads the WAL
(blocks/postgres_wal.py), so a time the archive reaches always has a commit after it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tarfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import BinaryIO

from prefect_dbbackup.blocks.errors import BackupNotFound, ConfigError, IntegrityError
from prefect_dbbackup.blocks.process import check_stopped
from prefect_dbbackup.blocks.wal import SEGMENT_BYTES, parse_lsn, parse_segment, segment_name
from prefect_dbbackup.tasks.archive_manifest import ArchiveManifest, LogPosition, file_order
from prefect_dbbackup.tasks.base_backup import BaseBackupManifest
from prefect_dbbackup.tasks.pitr import StoredPiece, Stretch, stretches

RECOVERY_MARK = "# added by dbbackup restore-cluster"
WAL_WRITERS = 2  # segments decrypted and written at once
VERSION_FILE = "PG_VERSION"


def end_of_second(when: datetime) -> datetime:
    """The last microsecond of when's second: a restore to a second keeps its commits."""
    return when.replace(microsecond=0) + timedelta(microseconds=999_999)


def choose_base(bases: list[BaseBackupManifest], to_time: datetime | None) -> BaseBackupManifest:
    """The newest base backup that had ended by to_time on the server's clock (None: the
    newest of all)."""
    usable = sorted(
        (b for b in bases if to_time is None or b.server_time <= end_of_second(to_time)),
        key=lambda b: (b.server_time, b.run_id),
    )
    if not usable:
        oldest = min((b.server_time for b in bases), default=None)
        raise BackupNotFound(
            "no base backup to start from"
            + (f": the oldest ended at {oldest:%Y-%m-%d %H:%M:%S}Z" if oldest else "")
            + " (take one with `dbbackup base-backup SERVER`)"
        )
    return usable[-1]


@dataclass(frozen=True)
class WalPlan:
    """The archived WAL a restore from one base backup replays: each segment with its
    pieces, and the server time up to which the archive holds every commit. cut: where a
    gap ends the stretch although the archive holds later WAL (None: no later WAL)."""

    files: list[tuple[str, list[StoredPiece]]]
    reach: datetime | None
    cut: str | None = None


def _position(lsn: str, timeline: int) -> LogPosition:
    at = parse_lsn(lsn)
    return LogPosition(file=segment_name(timeline, at), position=at % SEGMENT_BYTES)


def plan_wal(runs: list[ArchiveManifest], base: BaseBackupManifest) -> WalPlan:
    """The unbroken stretch of the archive that holds base's start segment from its first
    byte and reaches base's end (else IntegrityError: the base backup cannot be made
    consistent), and how far in server time it reaches."""
    start = LogPosition(file=base.start_file, position=0)
    end = _position(base.end_lsn, base.timeline)
    found = stretches(runs)
    stretch = next((s for s in found if s.holds(start)), None)
    if stretch is None or not _reaches(stretch, end):
        raise IntegrityError(
            f"the WAL archive does not hold base backup {base.run_id}'s WAL from "
            f"{base.start_lsn} to {base.end_lsn} without a gap: run `dbbackup archive` (it "
            "stores what the slot still holds), or restore from another base backup"
        )
    last = stretch.last
    times = [
        r.server_time
        for r in runs
        if r.server_time is not None
        and r.end.order() >= end.order()
        and r.end.order() <= (*file_order(last.file), last.end)
    ]
    cut = f"{last.file}:{last.end}" if stretch is not found[-1] else None
    return WalPlan(stretch.files_from(start), max(times, default=None), cut)


def _reaches(stretch: Stretch, end: LogPosition) -> bool:
    last = stretch.last
    return (*file_order(last.file), last.end) >= end.order()


def check_reach(plan: WalPlan, to_time: datetime | None, server: str) -> None:
    """ConfigError when to_time is not before the server time the archive reaches."""
    if to_time is None:
        if plan.cut is not None:
            held = (
                f"{plan.reach.replace(microsecond=0) - timedelta(seconds=1):%Y-%m-%dT%H:%M:%SZ}"
                if plan.reach
                else "no time"
            )
            raise ConfigError(
                f"the WAL archive of {server} has a gap after {plan.cut}: the WAL after it "
                f"cannot be replayed, so the latest second this restore reaches is {held}. "
                f"Restore to it with --to-time {held} (see `dbbackup list {server} --pitr`), "
                "or take a new base backup after the gap"
            )
        return
    if plan.reach is None or plan.reach <= end_of_second(to_time):
        held = f"{plan.reach:%Y-%m-%d %H:%M:%S}Z" if plan.reach else "no time yet"
        raise ConfigError(
            f"the WAL archive of {server} holds every commit up to {held} only, not past "
            f"{to_time:%Y-%m-%d %H:%M:%S}Z: run `dbbackup archive {server}` first, or restore "
            "to latest"
        )


def new_data_dir(path: Path) -> bool:
    """Make the data directory (0700), refusing one that holds anything; whether it was
    there (empty) before."""
    existed = path.exists()
    if existed and (not path.is_dir() or any(path.iterdir())):
        raise ConfigError(
            f"{path} exists and is not an empty directory: restore-cluster writes a new "
            "cluster; name a new --data-dir"
        )
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return existed


def extract_base(source: BinaryIO, data_dir: Path) -> tuple[int, bytes]:
    """Unpack pg_basebackup's tar stream into data_dir (tarfile's `data` filter: nothing is
    written outside it, no device files), all but PG_VERSION: (members, PG_VERSION's bytes),
    for finish() to write last. Until then PostgreSQL refuses to start the directory, so a
    restore killed half way never starts as a cluster that lacks part of its WAL."""
    members, version = 0, None
    with tarfile.open(fileobj=source, mode="r|") as tar:
        for member in tar:
            check_stopped("the unpacking of the base backup")
            members += 1
            if member.name == VERSION_FILE and member.isfile() and member.size < 64:
                extracted = tar.extractfile(member)
                assert extracted is not None
                version = extracted.read()
                continue
            tar.extract(member, data_dir, filter="data")
    if version is None or not (data_dir / "backup_label").is_file():
        raise IntegrityError(f"the base backup unpacked into {data_dir} is not a data directory")
    return members, version


def finish(data_dir: Path, version: bytes) -> None:
    """PG_VERSION, written last: the directory is now a cluster PostgreSQL will start."""
    path = data_dir / VERSION_FILE
    path.write_bytes(version)
    path.chmod(0o600)


def write_segment(source: BinaryIO, path: Path) -> int:
    """One WAL segment file as recovery reads it: the archived bytes, then zeros to the
    segment's size (where the server had not written yet: recovery stops there). Only a WAL
    segment's name is ever written (a signed manifest naming another file is refused)."""
    try:
        parse_segment(path.name)
    except ValueError as exc:
        raise IntegrityError(f"the archive names {path.name!r} as WAL: {exc}") from None
    with open(path, "wb") as out:
        written = 0
        while block := source.read(1 << 20):
            out.write(block)
            written += len(block)
        if written > SEGMENT_BYTES:
            raise IntegrityError(f"archived WAL segment {path.name} holds {written} bytes")
        out.truncate(SEGMENT_BYTES)
    os.chmod(path, 0o600)
    return written


def write_wal(
    files: list[tuple[str, list[StoredPiece]]],
    open_file: Callable[[list[StoredPiece]], contextlib.AbstractContextManager[BinaryIO]],
    pg_wal: Path,
    what: str,
) -> int:
    """Every segment of files written into pg_wal (write_segment), WAL_WRITERS at a time:
    decrypting and decompressing one segment waits on the storage and one core, so two
    overlap. The first failure (or a stop) cancels what has not started; returns the bytes
    archived."""

    def one(name: str, pieces: list[StoredPiece]) -> int:
        check_stopped(what)
        with open_file(pieces) as segment:
            return write_segment(segment, pg_wal / name)

    with ThreadPoolExecutor(WAL_WRITERS, thread_name_prefix="wal-writer") as pool:
        futures = [pool.submit(one, name, pieces) for name, pieces in files]
        try:
            return sum(f.result() for f in futures)
        finally:
            for future in futures:
                future.cancel()


def write_recovery(data_dir: Path, to_time: datetime | None, port: int | None) -> None:
    """recovery.signal and the recovery settings: replay from pg_wal (restore_command finds
    nothing more), stop after the last commit of to_time's second (None: the whole archive),
    then promote."""
    lines = [RECOVERY_MARK, "restore_command = 'false'", "recovery_target_action = 'promote'"]
    if to_time is not None:
        stop = end_of_second(to_time)
        lines += [
            f"recovery_target_time = '{stop:%Y-%m-%d %H:%M:%S.%f}+00'",
            "recovery_target_inclusive = on",
        ]
    if port is not None:
        lines.append(f"port = {port}")
    with open(data_dir / "postgresql.auto.conf", "a") as conf:
        conf.write("\n" + "\n".join(lines) + "\n")
    (data_dir / "recovery.signal").touch(mode=0o600)


def remove_partial(data_dir: Path, existed: bool) -> None:
    """After a failure: what restore-cluster wrote goes (the directory too, if it made it)."""
    if not existed:
        shutil.rmtree(data_dir, ignore_errors=True)
        return
    for entry in data_dir.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


@dataclass(frozen=True)
class ClusterWindow:
    """The cluster can be restored to any second from `since` (its base backup ended in it)
    to `until` (the archive holds every commit of it), by the server's clock."""

    since: datetime
    until: datetime
    base_backup_id: str


def cluster_windows(
    bases: list[BaseBackupManifest], runs: list[ArchiveManifest]
) -> list[ClusterWindow]:
    """The windows restore-cluster can reach, one per base backup whose WAL the archive
    holds unbroken (the newest base backup's window last)."""
    found = []
    for base in sorted(bases, key=lambda b: (b.server_time, b.run_id)):
        try:
            plan = plan_wal(runs, base)
        except IntegrityError:
            continue  # its WAL is not archived whole: list --pitr shows the gap
        if plan.reach is None:
            continue
        since = base.server_time.replace(microsecond=0)
        until = plan.reach.replace(microsecond=0) - timedelta(seconds=1)  # check_reach's rule
        if since <= until:
            found.append(ClusterWindow(since, until, base.run_id))
    return found
