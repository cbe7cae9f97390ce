"""The manifest of one archive run: the pieces of the server's transaction log it stored.

Layout: {server}/_binlog/{run_id}/piece-NNN.zst.age and manifest.json (+ .sig), written
last. A run's pieces are byte ranges of the server's log files (blocks/binlog_pieces.py);
the manifest says which, with their hashes and event times, and where the archive ends
after the run. It is signed and bound to where it sits like a backup's manifest
(tasks/catalog.py), so a planted, moved or changed run is never used (docs/pitr.md).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

from prefect_dbbackup.blocks.binlog import plain_file_name
from prefect_dbbackup.tasks.layout import (
    MANIFEST_NAME,
    check_backup_id,
    check_object_name,
    encode_name,
)
from prefect_dbbackup.tasks.manifest import MadeBy, StreamStats
from pydantic import BaseModel, Field, field_validator, model_validator

ARCHIVE_SEGMENT = "_binlog"  # reserved: encode_name never makes a segment starting with '_'
PIECE_NAME = re.compile(r"piece-[0-9]{3,6}\.zst\.age")
FILE_NUMBER = re.compile(r"(.*)\.([0-9]+)")
WAL_SEGMENT = re.compile(r"([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})")
WAL_SEGMENT_BYTES = 16 << 20  # the only WAL segment size archived (blocks/postgres.py checks)


def archive_prefix(server: str) -> str:
    """Key prefix of a server's archive runs."""
    return f"{encode_name(server)}/{ARCHIVE_SEGMENT}/"


def archive_key(server: str, run_id: str, name: str) -> str:
    """Key of one object of one archive run (run id and name checked)."""
    return f"{archive_prefix(server)}{check_backup_id(run_id)}/{check_object_name(name)}"


def parse_archive_key(key: str, server: str) -> str | None:
    """The run id of a manifest key of server's archive, or None."""
    return parse_record_key(key, archive_prefix(server))


def parse_record_key(key: str, prefix: str) -> str | None:
    """The run id of a manifest key `{prefix}{run id}/manifest.json`, or None."""
    if not key.startswith(prefix) or not key.endswith("/" + MANIFEST_NAME):
        return None
    run_id = key[len(prefix) : -len(MANIFEST_NAME) - 1]
    try:
        return check_backup_id(run_id)
    except ValueError:
        return None


def file_order(name: str) -> tuple[str, int]:
    """(base name, sequence number) of a log file name like `binlog.000042`, or of a WAL
    segment (its timeline, its segment number): files of one base follow each other by
    number."""
    if wal := WAL_SEGMENT.fullmatch(name):
        per_id = 0x1_0000_0000 // WAL_SEGMENT_BYTES
        return (wal.group(1), int(wal.group(2), 16) * per_id + int(wal.group(3), 16))
    match = FILE_NUMBER.fullmatch(name)
    if match is None:
        return (name, -1)
    return (match.group(1), int(match.group(2)))


class LogPosition(BaseModel):
    """Where an archive ends: the next byte of `file` to fetch. closed: the file ended
    (rotated), the archive goes on with the next file from its start."""

    file: str
    position: int = Field(ge=0)
    closed: bool = False

    _plain = field_validator("file")(lambda value: plain_file_name(value))

    def order(self) -> tuple[str, int, int]:
        """Sorts positions of one log: by file, then offset."""
        return (*file_order(self.file), self.position)


class LogPiece(BaseModel):
    """Bytes [start, end) of one log file, stored as one zstd + age object."""

    object_name: str
    file: str
    start: int = Field(ge=0, description="0: the file from its start, magic bytes included")
    end: int
    closed: bool = Field(
        description="nothing follows in this file: it ends with its rotate event, or the "
        "server had closed the file at this size (a crash leaves no rotate)"
    )
    events: int
    first_event_at: datetime | None
    last_event_at: datetime | None
    stats: StreamStats

    _plain = field_validator("file")(lambda value: plain_file_name(value))

    @model_validator(mode="after")
    def _sane(self) -> LogPiece:
        if not PIECE_NAME.fullmatch(self.object_name):
            raise ValueError(f"piece object name {self.object_name[:64]!r}")
        if self.end <= self.start or self.stats.raw_bytes != self.end - self.start:
            raise ValueError(f"piece {self.object_name}: bytes {self.start}..{self.end}")
        return self


class ArchiveManifest(MadeBy):
    """One archive run: its pieces in log order, and where the archive ends after it."""

    kind: Literal["binlog", "wal"] = "binlog"
    run_id: str
    started_at: datetime
    finished_at: datetime
    compression: str = "zstd"
    encryption: str = "age"
    recipients: list[str]
    pieces: list[LogPiece]
    end: LogPosition = Field(description="where the next run goes on")
    server_time: datetime | None = Field(
        default=None,
        description="the server's clock before the run listed its log: what was committed "
        "before it is archived once this run is (PostgreSQL: the run's own commit follows it)",
    )
    gap: str | None = Field(
        default=None, description="what this run found lost before its first piece"
    )
    sealed: dict[str, int] = Field(
        default_factory=dict,
        description="the files the server had closed when the run listed them, with their "
        "sizes: a piece that ends there ends its file",
    )

    @model_validator(mode="after")
    def _distinct_objects(self) -> ArchiveManifest:
        names = [p.object_name for p in self.pieces]
        if len(set(names)) != len(names):
            raise ValueError("two pieces name the same object")
        return self

    def to_bytes(self) -> bytes:
        """Serialised form stored in the run's directory."""
        return self.model_dump_json(indent=2).encode()
