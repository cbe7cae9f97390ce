"""PostgreSQL's WAL as an archive run reads it: segment names, LSNs, and the page checks.

An archive run of a PostgreSQL server reads WAL segment files through SQL
(`pg_read_binary_file`), up to the server's flush position when the run listed them, and
a physical replication slot of dbbackup's own holds the segments back until the run's
signed manifest is stored (then the slot moves on: `log_archived`). Nothing passes through
a file in plaintext, and a run killed at any point leaves the slot where the archive ends:
the next run fetches that WAL again, never a gap (docs/pitr.md).

Every page whose start a piece holds is checked: the WAL page magic of the first page, the
page's own address (`xlp_pageaddr`) equal to where it sits, the first page of a segment
with its long header and the segment size. A recycled segment (old bytes under a new name)
or a file of another server's WAL is refused, not stored. The one exception: after a WAL
switch (pg_switch_wal, archive_timeout) the rest of the segment is unused and holds zeros
or a recycled file's old pages; a piece that ends its closed segment may end with them.
"""

from __future__ import annotations

import io
import re
import struct
from collections.abc import Callable

from prefect_dbbackup.blocks.binlog_pieces import PieceSummary
from prefect_dbbackup.blocks.errors import IntegrityError

SEGMENT_BYTES = 16 << 20  # the only segment size archived so far (initdb's default)
PAGE_BYTES = 8192  # wal_block_size: the only page size archived so far (the default)
READ_BYTES = 1 << 20  # one pg_read_binary_file call
_SEGMENTS_PER_ID = 0x1_0000_0000 // SEGMENT_BYTES
_NAME = re.compile(r"([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})")
_HEADER = struct.Struct("<HHIQI")  # xlp_magic, xlp_info, xlp_tli, xlp_pageaddr, xlp_rem_len
_LONG_HEADER = struct.Struct("<QII")  # xlp_sysid, xlp_seg_size, xlp_xlog_blcksz (after 24)
_LONG_HEADER_AT = 24  # MAXALIGN(sizeof(XLogPageHeaderData))
_LONG_HEADER_FLAG = 0x0002  # XLP_LONG_HEADER
_MAGIC_HIGH = 0xD100  # every released XLOG_PAGE_MAGIC is 0xD1xx (0xD110 in 15, 0xD118 in 18)


def segment_name(timeline: int, lsn: int) -> str:
    """The name of the WAL segment file that holds lsn on timeline (16 MiB segments)."""
    segment = lsn // SEGMENT_BYTES
    return f"{timeline:08X}{segment // _SEGMENTS_PER_ID:08X}{segment % _SEGMENTS_PER_ID:08X}"


def parse_segment(name: str) -> tuple[int, int]:
    """(timeline, LSN of the segment's first byte) of a WAL segment file name; ValueError
    for anything else."""
    match = _NAME.fullmatch(name)
    if match is None:
        raise ValueError(f"{name[:64]!r} is not a WAL segment file name")
    timeline, high, low = (int(part, 16) for part in match.groups())
    if low >= _SEGMENTS_PER_ID:
        raise ValueError(f"{name!r} is not a 16 MiB WAL segment file name")
    return timeline, (high * _SEGMENTS_PER_ID + low) * SEGMENT_BYTES


def format_lsn(lsn: int) -> str:
    """An LSN as PostgreSQL writes it: X/Y, hexadecimal."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    """An LSN from PostgreSQL's X/Y form."""
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


class WalPieceFilter:
    """Fed one segment's bytes from start in chunks of any size; checks the header of every
    page that starts in them and passes the bytes on unchanged (the PieceReader of a WAL
    fetch). finish says what the piece holds: `events` counts the pages checked."""

    def __init__(self, file: str, start: int) -> None:
        _, self._segment_lsn = parse_segment(file)
        if not 0 <= start <= SEGMENT_BYTES:
            raise ValueError(f"WAL offset {start} outside a segment")
        self.file, self.start, self._at = file, start, start
        self._page = -(-start // PAGE_BYTES) * PAGE_BYTES  # the next page to check
        self._header = b""  # the bytes of its header seen so far (split between chunks)
        self._magic: int | None = None
        self._tail: str | None = None  # the first page that is not WAL of this segment
        self.pages = 0

    def feed(self, data: bytes | memoryview) -> bytes:
        """data, once every page header that starts in it is checked."""
        data = bytes(data)
        at, end = self._at, self._at + len(data)
        if end > SEGMENT_BYTES:
            raise IntegrityError(f"WAL segment {self.file} read past its {SEGMENT_BYTES} bytes")
        while (wanted := self._page + len(self._header)) < end:
            need = _LONG_HEADER_AT + _LONG_HEADER.size if self._page == 0 else _HEADER.size
            self._header += data[wanted - at : self._page + need - at]
            if len(self._header) < need:
                break  # the rest of this header comes with the next chunk
            self._check(self._page, self._header)
            self._header, self._page = b"", self._page + PAGE_BYTES
        self._at = end
        return data

    def _check(self, offset: int, header: bytes) -> None:
        problem = self._problem(offset, header)
        if problem is None:
            self.pages += 1
        elif offset == 0:
            raise IntegrityError(f"{problem}: nothing of it is stored")
        else:  # pages after a segment switch are not WAL: only a closed segment may hold them
            self._tail = problem
            self._page = SEGMENT_BYTES  # nothing after is checked

    def _problem(self, offset: int, header: bytes) -> str | None:
        """What is wrong with the page header at offset, or None."""
        magic, info, _tli, address, _ = _HEADER.unpack_from(header)
        where = f"WAL segment {self.file} at byte {offset}"
        if self._magic is None:
            if magic & 0xFF00 != _MAGIC_HIGH:
                return f"{where}: no WAL page (magic {magic:#06x})"
            self._magic = magic
        elif magic != self._magic:
            return f"{where}: page magic {magic:#06x}, not {self._magic:#06x}"
        if address != self._segment_lsn + offset:
            return (
                f"{where}: the page says it sits at {format_lsn(address)}, not at "
                f"{format_lsn(self._segment_lsn + offset)} (a recycled segment, or WAL of "
                "another server)"
            )
        if offset == 0:
            _, segment_bytes, page_bytes = _LONG_HEADER.unpack_from(header, _LONG_HEADER_AT)
            if not info & _LONG_HEADER_FLAG or (segment_bytes, page_bytes) != (
                SEGMENT_BYTES,
                PAGE_BYTES,
            ):
                return f"{where}: not the long header of a 16 MiB segment"
        return None

    def finish(self) -> PieceSummary:
        """What the piece holds: bytes [start, end); closed when it reaches the segment end.
        A page that is not this segment's WAL is refused unless the piece ends the segment:
        a closed segment holds its unused rest after a WAL switch (zeros or old bytes)."""
        if self._tail is not None and self._at != SEGMENT_BYTES:
            raise IntegrityError(
                f"{self._tail}, below the server's flush position: nothing of it is stored"
            )
        return PieceSummary(
            start=self.start,
            end=self._at,
            events=self.pages,
            first_event_at=None,
            last_event_at=None,
            closed=self._at == SEGMENT_BYTES,
        )


class WalReader(io.RawIOBase):
    """Bytes [start, end) of a WAL segment, read READ_BYTES at a time by read_at(offset,
    length) (a pg_read_binary_file call); a short read is an error, not an end."""

    def __init__(self, read_at: Callable[[int, int], bytes], start: int, end: int) -> None:
        self._read_at, self._at, self._end = read_at, start, end
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        if not self._pending and self._at < self._end:
            want = min(READ_BYTES, self._end - self._at)
            got = self._read_at(self._at, want)
            if len(got) != want:
                raise IntegrityError(
                    f"read {len(got)} bytes of WAL at {self._at}, not {want}: the segment "
                    "file is shorter than the server's flush position says"
                )
            self._at += want
            self._pending = memoryview(got)
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n
