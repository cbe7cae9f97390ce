"""The spool: a backup's encrypted object on local disk, complete before anything is stored.

Database dumps and users/roles backups take the same path: the stream is
compressed and encrypted into a file of the run's private work dir, and only
then uploaded. Whatever fails on the way removes the file.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import pyrage
from prefect_dbbackup.blocks.engines import BackupKind
from prefect_dbbackup.blocks.errors import DiskFull, is_disk_full
from prefect_dbbackup.tasks.manifest import StreamStats
from prefect_dbbackup.tasks.stream import encrypt_stream


def spool_path(workdir: Path, kind: BackupKind, series: str, backup_id: str) -> Path:
    """A file name of its own per kind and series (an encoded name may use all of NAME_MAX,
    and a database may be named like the users/roles series)."""
    digest = hashlib.sha256(series.encode()).hexdigest()[:16]
    return workdir / f"{kind}.{digest}.{backup_id}.age"


@contextlib.contextmanager
def work_dir_full(workdir: Path, what: str) -> Iterator[None]:
    """A full disk inside becomes DiskFull saying where room is needed (a DiskFull raised
    inside already names its place, e.g. the storage)."""
    try:
        yield
    except BaseException as exc:
        if is_disk_full(exc) and not isinstance(exc, DiskFull):
            raise DiskFull(
                f"the work dir {workdir.parent} is full while spooling {what}: set "
                "DBBACKUP_WORK_DIR to a disk with room for the largest compressed dump"
            ) from None
        raise


@contextlib.contextmanager
def spooling(spool: Path, what: str) -> Iterator[Path]:
    """Remove the spool if anything inside fails (a failing dump client, a stop, a bug);
    a full disk becomes DiskFull (work_dir_full)."""
    try:
        with work_dir_full(spool.parent, what):
            yield spool
    except BaseException:
        spool.unlink(missing_ok=True)
        raise


def write_spool(
    source: BinaryIO,
    spool: Path,
    recipients: Sequence[pyrage.x25519.Recipient],
    *,
    level: int,
    threads: int,
    on_progress: Callable[[int], None] | None = None,
    tap: Callable[[memoryview], None] | None = None,
    check: Callable[[], None] | None = None,
) -> StreamStats:
    """Compress and encrypt source into the spool file (check: see encrypt_stream).

    No fsync: the spool is not a copy anyone keeps. The upload hashes the bytes it
    reads back and compares them with these stats, so a spool the disk damaged is
    never stored, and after a crash the run is lost with or without it.
    """
    with open(spool, "wb") as out:
        stats = encrypt_stream(
            source,
            out,
            recipients,
            level=level,
            threads=threads,
            on_progress=on_progress,
            tap=tap,
            check=check,
        )
    return stats
