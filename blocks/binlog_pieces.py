"""One piece of a MariaDB binary log file, as `mariadb-binlog --read-from-remote-server --raw`
fetches it, cut to exactly the file's own bytes and checked event by event.

A binlog file is the 4-byte magic `\\xfebin`, then events. Every event starts with a 19-byte
header: timestamp (u32, seconds), type (u8), server id (u32), event size (u32, header
included), log position (u32: the offset in the file where the *next* event starts), flags
(u16); all little-endian.

A fetch from position 4 gives the file from its start (the one difference: the server clears
the "file in use" flag of the first event). A fetch from a later position P gives the magic,
then the server's artificial events (log position 0: a format description), then the file's
own events from P, byte for byte. A piece keeps the file's bytes [start, end): the magic and
everything for start 4, the events from P otherwise, so the pieces of a file, concatenated
in order, are that file (docs/pitr.md).

Every kept event must sit where its header says (its log position is its own offset plus its
size) and the fetch must end on an event boundary: a stream the server or the network cut or
changed is refused, never stored as a piece.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from prefect_dbbackup.blocks.binlog_events import HEADER, MAGIC
from prefect_dbbackup.blocks.errors import IntegrityError

HEADER_SIZE = HEADER.size  # 19
ROTATE_EVENT = 4  # the last event of a closed file: it names the next file


@dataclass(frozen=True)
class PieceSummary:
    """What one fetched piece holds: its byte range in the file and its events' times."""

    start: int  # 0 for a piece fetched from 4: it holds the magic bytes too
    end: int
    events: int
    first_event_at: datetime | None
    last_event_at: datetime | None
    closed: bool  # it ends with the file's rotate event: nothing follows in this file


class PieceFilter:
    """Fed a fetch's output in chunks of any size; `feed` returns the bytes of the piece
    (the file's own bytes from `start` on) and `finish` says what the piece holds."""

    def __init__(self, file: str, start: int) -> None:
        if start < len(MAGIC):
            raise ValueError(f"a binlog position is at least {len(MAGIC)}")
        self.file, self.start = file, start
        self._pending = b""  # bytes of the magic or of an event header not yet complete
        self._magic_seen = False
        self._keeping = start == len(MAGIC)  # from 4 the whole file is the piece
        self._left = 0  # bytes of the current event still to pass (or skip)
        self._passing = False  # the current event is kept
        self.position = 0 if self._keeping else start  # the file offset of the next kept byte
        self._first = self.position
        self.events = 0
        self.first: int | None = None
        self.last: int | None = None
        self._last_type: int | None = None

    def _refuse(self, why: str) -> IntegrityError:
        return IntegrityError(
            f"the binlog {self.file} fetched from position {self.start}: {why}; nothing of "
            "this fetch is stored (a damaged or cut stream, or a server that changed the file)"
        )

    def feed(self, data: bytes | memoryview) -> bytes:
        """The piece's bytes among data (possibly none)."""
        out = bytearray()
        view = memoryview(data)
        while view:
            if not self._magic_seen:
                view = self._take_magic(view, out)
            elif self._left:
                n = min(self._left, len(view))
                if self._passing:
                    out += view[:n]
                    self.position += n
                self._left -= n
                view = view[n:]
            else:
                view = self._take_header(view, out)
        return bytes(out)

    def _take_magic(self, view: memoryview, out: bytearray) -> memoryview:
        need = len(MAGIC) - len(self._pending)
        self._pending += bytes(view[:need])
        if len(self._pending) == len(MAGIC):
            if self._pending != MAGIC:
                raise self._refuse("it does not start with the binlog magic bytes")
            if self._keeping:
                out += MAGIC
                self.position += len(MAGIC)
            self._magic_seen, self._pending = True, b""
        return view[need:]

    def _take_header(self, view: memoryview, out: bytearray) -> memoryview:
        need = HEADER_SIZE - len(self._pending)
        self._pending += bytes(view[:need])
        if len(self._pending) < HEADER_SIZE:
            return view[need:]
        header, self._pending = self._pending, b""
        stamp, kind, _, size, next_position, _ = HEADER.unpack_from(header)
        if size < HEADER_SIZE:
            raise self._refuse(f"an event at {self.position} claims {size} bytes")
        if not self._keeping and next_position:  # the server's own events have position 0
            if next_position - size != self.start:
                raise self._refuse(f"its first event of the file starts at {next_position - size}")
            self._keeping = True  # the first of the file's own events from start
        self._passing = self._keeping
        if self._passing:
            if next_position != self.position + size:
                raise self._refuse(
                    f"the event at {self.position} says the next one starts at "
                    f"{next_position}, not at {self.position + size}"
                )
            out += header
            self.position += HEADER_SIZE
            self.events += 1
            if stamp:
                self.first = stamp if self.first is None else self.first
                self.last = stamp
            self._last_type = kind
        self._left = size - HEADER_SIZE
        return view[need:]

    def finish(self) -> PieceSummary:
        """The piece's summary; IntegrityError if the fetch ended inside an event or never
        reached start."""
        if not self._magic_seen:
            raise self._refuse("it ended before the binlog magic bytes")
        if self._pending or self._left:
            raise self._refuse(f"it ended inside the event at {self.position}")
        if not self._keeping and self.events == 0 and self.start != len(MAGIC):
            # the file ends exactly at start: nothing new, an empty piece
            return PieceSummary(self.start, self.start, 0, None, None, False)
        return PieceSummary(
            self._first,
            self.position,
            self.events,
            _time(self.first),
            _time(self.last),
            self._last_type == ROTATE_EVENT,
        )


def _time(stamp: int | None) -> datetime | None:
    return None if stamp is None else datetime.fromtimestamp(stamp, UTC)
