"""The binary log position of a MariaDB dump, read from mariadb-dump's own output.

A dump of a `pitr: true` server runs with `--single-transaction --master-data=2`. mariadb-dump
then opens its snapshot with START TRANSACTION WITH CONSISTENT SNAPSHOT and reads the
snapshot's binlog coordinates (status Binlog_snapshot_file/_position) in that same session,
without FLUSH TABLES WITH READ LOCK, and writes them as comments: the file and position in
the head, before any table, and the GTID position (BINLOG_GTID_POS of those coordinates) at
the very end, after every table and routine. No other session can read that snapshot's
coordinates, so they are taken from the stream as it passes (docs/pitr.md):

- head: the first `-- CHANGE MASTER TO MASTER_LOG_FILE='f', MASTER_LOG_POS=n;` line within
  the first HEAD_LIMIT bytes, accepted only when nothing but header lines (comments, version
  comments, blank lines) come before it: no statement, data or routine body. The header
  writes a name's line breaks as new `-- ` comment lines, so no name can plant a line there.
- tail: the last `-- SET GLOBAL gtid_slave_pos='...';` line of the last TAIL_LIMIT bytes,
  accepted only when nothing but mariadb-dump's closing lines follow it (a routine body that
  holds such a line is never last).

Memory is bounded: at most HEAD_LIMIT + TAIL_LIMIT bytes are kept, whatever the dump's size.
"""

from __future__ import annotations

import re
from datetime import datetime

from prefect_dbbackup.blocks.errors import DbBackupError
from pydantic import BaseModel, Field, field_validator

HEAD_LIMIT = 64 << 10
TAIL_LIMIT = 16 << 10
_FILE_POSITION = re.compile(
    rb"^-- CHANGE MASTER TO MASTER_LOG_FILE='([^'\n]+)', MASTER_LOG_POS=(\d+);$", re.M
)
_PREAMBLE = re.compile(rb"(?:[ \t]*\n|--[^\n]*\n|/\*[^\n]*\*/;?[ \t]*\n)*")
_GTID = re.compile(rb"^-- SET GLOBAL gtid_slave_pos='([0-9,-]*)';\n", re.M)
# what mariadb-dump writes after the GTID line: version comments restoring the session, the
# completion line, blank lines
_CLOSING = re.compile(rb"(?:\n|/\*M?!\d* [^\n]*\*/;\n|-- Dump completed[^\n]*\n)*")
_GTID_LIST = re.compile(r"(?:\d+-\d+-\d+(?:,\d+-\d+-\d+)*)?")


def plain_file_name(value: str) -> str:
    """value if it is a plain log file name (no directory, not hidden, no leading '-');
    ValueError otherwise."""
    bad = re.search(r"[/\\\x00-\x1f]", value) or value.startswith((".", "-"))
    if bad or not value or len(value) > 255:
        raise ValueError(f"binlog file {value[:64]!r} is not a plain file name")
    return value


class BinlogPosition(BaseModel):
    """Where a dump's snapshot stands in its server's binary log: the events after it are
    the changes the dump does not contain."""

    file: str = Field(description="binlog file name (no directory), e.g. binlog.000042")
    position: int = Field(ge=4, description="byte offset in file of the first later event")
    gtid: str = Field(description="GTID position: domain-server-seq, comma separated, or empty")
    server_time: datetime | None = Field(
        default=None,
        description="the server's own clock once the dump had ended (UTC): the snapshot is "
        "older. A restore to a time compares it, not the worker's clock, with event times",
    )

    _plain = field_validator("file")(lambda value: plain_file_name(value))

    @field_validator("gtid")
    @classmethod
    def _gtid_list(cls, value: str) -> str:
        if not _GTID_LIST.fullmatch(value):
            raise ValueError(f"gtid {value[:64]!r} is not a list of domain-server-sequence")
        return value

    def describe(self) -> str:
        """file:position (gtid), for a log line."""
        return f"{self.file}:{self.position} (gtid {self.gtid or 'none'})"


class BinlogPositionReader:
    """Fed the dump client's output (not dbbackup's trailer) in chunks of any size;
    finish() returns the position the dump recorded."""

    def __init__(self, what: str) -> None:
        self.what = what  # "the dump of 'db'", for the error
        self._head: bytearray | None = bytearray()  # None: the head was read
        self._file_position: tuple[str, int] | None = None
        self._tail = b""

    def feed(self, data: bytes | memoryview) -> None:
        """Take the next chunk of the client's output."""
        if self._head is not None:
            self._head += data[: HEAD_LIMIT - len(self._head)]
            if match := _FILE_POSITION.search(self._head):
                if _PREAMBLE.fullmatch(self._head, 0, match.start()):
                    self._file_position = (match.group(1).decode(), int(match.group(2)))
                self._head = None
            elif len(self._head) >= HEAD_LIMIT:
                self._head = None
        self._tail = (self._tail + bytes(data[-TAIL_LIMIT:]))[-TAIL_LIMIT:]

    def finish(self) -> BinlogPosition:
        """The recorded position; DbBackupError when the output lacks either part."""
        gtid = None
        for match in _GTID.finditer(self._tail):
            if _CLOSING.fullmatch(self._tail, match.end()):
                gtid = match.group(1).decode()
        if self._file_position is None or gtid is None:
            missing = "file and position" if self._file_position is None else "GTID position"
            raise DbBackupError(
                f"{self.what} carries no binlog {missing} (mariadb-dump --master-data=2 "
                "writes it): the backup is refused rather than stored without the position "
                "point-in-time recovery starts from"
            )
        file, position = self._file_position
        try:
            return BinlogPosition(file=file, position=position, gtid=gtid)
        except ValueError as exc:
            raise DbBackupError(f"{self.what}: unusable binlog position: {exc}") from None
