"""Where a base backup starts and ends in the WAL, read from pg_basebackup's tar stream as it
passes (its backup_label and backup_manifest members): pg_basebackup reports neither when
it writes no WAL of its own. Memory is bounded: only those two members are kept, the
manifest's last TAIL bytes (its WAL-Ranges close it)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from prefect_dbbackup.blocks.errors import IntegrityError

BLOCK = 512
TAIL = 64 << 10
_LABEL_START = re.compile(r"^START WAL LOCATION: ([0-9A-F]+/[0-9A-F]+) ", re.M)
_LABEL_TIMELINE = re.compile(r"^START TIMELINE: (\d+)$", re.M)
_RANGE = re.compile(
    r'\{ "Timeline": (\d+), "Start-LSN": "([0-9A-F]+/[0-9A-F]+)", '
    r'"End-LSN": "([0-9A-F]+/[0-9A-F]+)" \}'
)


@dataclass(frozen=True)
class WalRange:
    """A base backup's place in the WAL: replay from start; consistent once past end."""

    timeline: int
    start_lsn: str
    end_lsn: str


class BaseTarFacts:
    """Fed the tar stream in chunks of any size; `range()` once it has ended."""

    def __init__(self) -> None:
        self._header = b""
        self._left = 0  # bytes of the current member (and its padding) still to pass
        self._content_left = 0  # of them, the member's own bytes
        self._capturing: str | None = None
        self.kept: dict[str, bytes] = {}

    def feed(self, data: bytes | memoryview) -> None:
        data, i = memoryview(data), 0
        while i < len(data):
            if self._left:
                n = min(self._left, len(data) - i)
                own = min(n, self._content_left)
                if self._capturing is not None and own:
                    kept = self.kept[self._capturing] + bytes(data[i : i + own])
                    self.kept[self._capturing] = kept[-TAIL:]
                self._left, self._content_left, i = self._left - n, self._content_left - own, i + n
                continue
            take = BLOCK - len(self._header)
            self._header += bytes(data[i : i + take])
            i += take
            if len(self._header) == BLOCK:
                self._member(self._header)
                self._header = b""

    def _member(self, header: bytes) -> None:
        if header == bytes(BLOCK):  # the end-of-archive blocks
            self._capturing = None
            return
        name = header[:100].rstrip(b"\0").decode("utf-8", "replace")
        try:
            size = int(header[124:136].rstrip(b"\0 ") or b"0", 8)
        except ValueError:
            raise IntegrityError(
                f"pg_basebackup's tar stream has a bad header ({name!r})"
            ) from None
        self._content_left, self._left = size, -(-size // BLOCK) * BLOCK
        self._capturing = name if name in ("backup_label", "backup_manifest") else None
        if self._capturing is not None:
            self.kept[self._capturing] = b""

    def range(self) -> WalRange:
        """The WAL range the backup_label and backup_manifest say; IntegrityError without."""
        label = self.kept.get("backup_label", b"").decode("utf-8", "replace")
        manifest = self.kept.get("backup_manifest", b"").decode("utf-8", "replace")
        start, timeline = _LABEL_START.search(label), _LABEL_TIMELINE.search(label)
        ranges = _RANGE.findall(manifest)
        if start is None or timeline is None or len(ranges) != 1:
            raise IntegrityError(
                "pg_basebackup's tar stream lacks a backup_label or a backup_manifest with one "
                "WAL range: nothing is stored"
            )
        tli, first, end = ranges[0]
        if (int(tli), first) != (int(timeline.group(1)), start.group(1)):
            raise IntegrityError("pg_basebackup's backup_label and backup_manifest disagree")
        return WalRange(int(tli), first, end)
