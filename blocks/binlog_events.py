"""Reading a MariaDB binary log file as a stream of events, for a replay up to a time.

A binlog file is the magic bytes `\\xfebin`, then events: a 19-byte header (timestamp in whole
seconds, type, server id, event size, end position, flags) and a body. The first event, the
Format_description, says whether each event ends with a CRC32. BinlogScan passes the bytes on
unchanged (to mariadb-binlog, docs/pitr.md "Replaying the binlog to a time") and reads only
what it needs from each event:

- where to start: the Format_description, then the events from the start position on (earlier
  files of the sequence are the caller's to skip);
- where to stop: before the first event stamped after the stop time's second;
- what was applied: event groups (a transaction or one DDL statement, each opened by a GTID
  event) that hold a row event of a table of the database, or a statement run in it;
- statements the database filter gets wrong: a statement run in the database that names it
  (replayed under another name it would change the source), or one run from another default
  database that names it (the filter leaves it out).

Memory is bounded: an event's body is passed on in chunks and at most KEPT bytes of it are
read for its database and statement.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import BinaryIO

from prefect_dbbackup.blocks.binlog import BinlogPosition
from prefect_dbbackup.blocks.errors import ConfigError, DbBackupError

MAGIC = b"\xfebin"
HEADER = struct.Struct("<IBIIIH")  # timestamp, type, server id, size, end position, flags
QUERY, FORMAT_DESCRIPTION, XID, TABLE_MAP, GTID = 2, 15, 16, 19, 162
# Write/Update/Delete_rows, v1 and v2, and MariaDB's compressed ones
ROW_EVENTS = frozenset({23, 24, 25, 30, 31, 32, 166, 167, 168, 169, 170, 171})
GROUP_ENDS = (b"COMMIT", b"ROLLBACK")
STANDALONE = 1  # GTID flag: the group is one statement without BEGIN/COMMIT (DDL)
CRC32 = 1
KEPT = 1 << 16
CHUNK = 1 << 20


@dataclass
class ReplayResult:
    """What a replay applied to its database, and where it ended."""

    transactions: int = 0  # complete event groups (transactions, DDL) that changed the database
    events: int = 0  # their table maps, row events and statements of the database
    first_time: datetime | None = None  # commit time of the first of those groups (UTC)
    last_time: datetime | None = None  # and of the last
    file: str = ""  # the end of the last complete group read: a later replay starts here
    position: int = 0
    log_end_time: datetime | None = None  # time of the last event read
    log_ends_before_stop: bool = True  # no event after the stop time: the log ends before it
    skipped: list[str] = field(default_factory=list)  # statements the filter left out


@dataclass
class _Group:
    standalone: bool
    events: int = 0


def _time(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _read(stream: BinaryIO, size: int) -> bytes:
    """Up to size bytes: fewer only at the end of the stream."""
    data = b""
    while len(data) < size and (more := stream.read(size - len(data))):
        data += more
    return data


def _query(body: bytes, checksum: int, complete: bool) -> tuple[bytes, bytes]:
    """(default database, statement) of a Query event's body."""
    if len(body) < 13:
        return b"", b""
    db_length, status_length = body[8], int.from_bytes(body[11:13], "little")
    at = 13 + status_length
    text = body[at + db_length + 1 :]
    return body[at : at + db_length], text[: len(text) - checksum] if complete else text


def _head(text: bytes) -> str:
    """The first two words of a statement: what it is, never its values."""
    return " ".join(text.decode("utf-8", "replace").split()[:2])[:40]


class BinlogScan:
    """Feeds binlog files, in order, to a writer from start up to stop_time, and counts the
    events of database among them. into_other_name: the replay renames the database."""

    def __init__(
        self, database: str, start: BinlogPosition, stop_time: datetime, into_other_name: bool
    ) -> None:
        self.database = database.encode()
        self.start = start
        self.stop_second = int(stop_time.timestamp() // 1)
        self.into_other_name = into_other_name
        self.result = ReplayResult(file=start.file, position=start.position)
        self.started = self.stopped = False
        self.where = (start.file, start.position)  # the event being read, for errors
        escaped = re.escape(self.database)
        self._named = re.compile(
            rb"(?<![\w$])(?:`" + escaped + rb"`|\"" + escaped + rb"\"|" + escaped + rb")\s*\.",
            re.I,
        )
        self._group: _Group | None = None
        self._tables: set[bytes] = set()
        self._checksum = 0

    def feed(self, name: str, stream: BinaryIO, write: Callable[[bytes], object]) -> None:
        """Pass the events of binlog file name on to write; stopped is set at the first event
        stamped after the stop time's second, which is not passed on."""
        start = self.start.position if name == self.start.file else len(MAGIC)
        self.started, offset = True, len(MAGIC)
        self.where = (name, 0)
        if _read(stream, len(MAGIC)) != MAGIC:
            raise DbBackupError("not a binary log file: it lacks the magic bytes")
        write(MAGIC)
        while header := _read(stream, HEADER.size):
            self.where = (name, offset)
            if len(header) < HEADER.size:
                raise DbBackupError("the file ends inside an event: it is truncated or damaged")
            when, kind, _, size, _, _ = HEADER.unpack(header)
            if size < HEADER.size:
                raise DbBackupError(f"an event of {size} bytes: the file is damaged")
            if offset < start < offset + size:
                raise DbBackupError(f"the start position {start} is inside an event")
            skipped = offset < start and kind != FORMAT_DESCRIPTION
            if not skipped and when > self.stop_second:
                self.stopped, self.result.log_ends_before_stop = True, False
                return
            body, complete = self._pass(stream, header, size, None if skipped else write)
            if not complete:
                raise DbBackupError("the file ends inside an event: it is truncated or damaged")
            if not skipped:
                self._note(kind, when, body, size <= HEADER.size + KEPT, (name, offset + size))
            offset += size
        if offset < start:
            raise DbBackupError(f"the file ends at {offset}, before the start position {start}")

    @staticmethod
    def _pass(
        stream: BinaryIO, header: bytes, size: int, write: Callable[[bytes], object] | None
    ) -> tuple[bytes, bool]:
        """Read the event's body, passing it on with its header (write None: skip it);
        returns its first KEPT bytes and whether the body was whole."""
        if write is not None:
            write(header)
        kept, left = b"", size - HEADER.size
        while left:
            chunk = _read(stream, min(left, CHUNK))
            if not chunk:
                return kept, False
            if write is not None:
                write(chunk)
            kept += chunk[: KEPT - len(kept)]
            left -= len(chunk)
        return kept, True

    def _note(self, kind: int, when: int, body: bytes, whole: bool, end: tuple[str, int]) -> None:
        """Take one passed-on event into account."""
        self.result.log_end_time = _time(when)
        group = self._group
        if kind == FORMAT_DESCRIPTION:
            self._checksum = 4 if len(body) >= 5 and body[-5] == CRC32 else 0
        elif kind == GTID:
            self._group = _Group(standalone=len(body) > 12 and bool(body[12] & STANDALONE))
            self._tables.clear()
        elif kind == TABLE_MAP and len(body) > 9 and body[9 : 9 + body[8]] == self.database:
            self._tables.add(body[:6])
            self._count()
        elif kind in ROW_EVENTS and body[:6] in self._tables:
            self._count()
        elif kind == XID:
            self._end_group(when, end)
        elif kind == QUERY:
            database, text = _query(body, self._checksum, whole)
            if text.strip().upper() not in GROUP_ENDS:
                self._check(database, text)
                if database == self.database:
                    self._count()
            if group is None or group.standalone or text.strip().upper() in GROUP_ENDS:
                self._end_group(when, end)

    def _check(self, database: bytes, text: bytes) -> None:
        """Refuse a statement run in the database that names it, when the replay renames
        the database (mariadb-binlog --rewrite-db changes only the default database, so it
        would run on the source); note one run from another database that names it (the
        --database filter leaves it out)."""
        if not self._named.search(text):
            return
        file, position = self.where
        if database == self.database and self.into_other_name:
            raise ConfigError(
                f"a statement ({_head(text)} ...) run in the database names the database "
                "itself: replayed under another name it would change the source database "
                "(mariadb-binlog --rewrite-db renames only the default database). Replay into "
                "the database's own name, or apply the statements from here by hand "
                "(docs/pitr.md)"
            )
        if database != self.database:
            self.result.skipped.append(
                f"{file}:{position}: {_head(text)} ... run from another default database "
                "names the database: not replayed (docs/pitr.md)"
            )

    def _count(self) -> None:
        if self._group is None:
            self._group = _Group(standalone=True)
        self._group.events += 1

    def _end_group(self, when: int, end: tuple[str, int]) -> None:
        group, result = self._group, self.result
        if group is not None and group.events:
            result.transactions += 1
            result.events += group.events
            result.first_time = result.first_time or _time(when)
            result.last_time = _time(when)
        result.file, result.position = end
        self._group = None
