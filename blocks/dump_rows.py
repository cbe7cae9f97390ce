"""Counting the rows of each table in a mariadb-dump/mysqldump stream as it passes by.

mariadb-dump takes its own snapshot, so rows counted by a separate query can
disagree with the dump. Counting the dump's own INSERT statements cannot.

The data are `INSERT INTO `t` [(`a`, ...)] VALUES (...),(...);` statements at line
starts. mariadb-dump puts each row on a line of its own (`),\\n(`), mysqldump
writes them all on one line (`),(`). The dump escapes newlines inside string
literals, so a line break is always outside a literal: a line that starts
with `(` inside a statement starts a row. A `),(` on one line may sit inside a
literal, so it is counted only after the literals are cut out (and not at all
once the stream has shown a row per line: cutting literals out runs at ~20 MB/s). Routine, trigger
and event bodies (between `DELIMITER ;;` or another one, and `DELIMITER ;`) are never data.
"""

from __future__ import annotations

import re

# a statement start, or the start of a block of bodies
_NEXT = re.compile(rb"^(?:INSERT INTO `|DELIMITER (?!;$).+$)", re.M)
_BODIES_END = re.compile(rb"^DELIMITER ;$", re.M)
# the table, then an optional column list of quoted names (and row_start/row_end), then VALUES
_HEADER = re.compile(rb"INSERT INTO `((?:[^`]|``)+)` (?:\((?:`(?:[^`]|``)*`|[^`)])*\) )?VALUES")
_LITERAL = re.compile(rb"'[^'\\\n]*(?:\\.[^'\\\n]*)*'")
# a line that starts like a header but is not one after this many more bytes is no header
HEADER_LIMIT = 1 << 20


def _statement_end(block: bytes, start: int, end: int) -> int:
    """Index of the `;` that ends a line in block[start:end], or -1 (one-byte searches are
    several times faster than a search for `;\\n` in text full of line breaks)."""
    while (found := block.find(b";", start, end)) >= 0:
        if block.startswith(b"\n", found + 1):
            return found
        start = found + 1
    return -1


class DumpRowCounter:
    """Fed the dump in chunks of any size; finish() returns the rows seen per table.

    `tables` are the tables the dump has data of: a line that only looks like the start
    of another table's INSERT (a table name may hold a newline, and the dump writes it
    raw in comments and DDL) is not counted. Holds back at most one incomplete line (a
    row, at most max_allowed_packet) between chunks.
    """

    def __init__(self, tables: list[str]) -> None:
        self.counts: dict[str, int] = dict.fromkeys(tables, 0)
        self._held: list[bytes] = []
        self._table: str | None = None  # inside this table's INSERT statement
        self._in_bodies = False
        self._line_start = False  # the next piece of the statement starts a line
        # mariadb-dump writes a row per line: then a `),(` is always inside a literal
        self._row_per_line = False

    def feed(self, data: bytes | memoryview) -> None:
        """Take the next chunk of the dump (copied: the caller may reuse its buffer)."""
        block = b"".join([*self._held, data])
        cut = block.rfind(b"\n")
        if cut < 0:
            self._held = [block]
            return
        done = self._scan(block, cut + 1)
        self._held = [block[done:]]

    def finish(self) -> dict[str, int] | None:
        """Rows per table (0 if the dump had none); None if the dump ended inside a statement."""
        rest = b"".join(self._held) + b"\n"
        self._scan(rest, len(rest), final=True)
        return None if self._table is not None else self.counts

    def _scan(self, block: bytes, end: int, final: bool = False) -> int:
        """Count what block[:end] (whole lines) holds; return how much of it was used up."""
        pos = 0
        while pos < end:
            if self._in_bodies:
                found = _BODIES_END.search(block, pos, end)
                if found is None:
                    return end
                self._in_bodies, pos = False, found.end()
            elif self._table is not None:
                stop = _statement_end(block, pos, end)
                # a piece cut at the block's end leaves its last line break to the next
                # block, whose first row _line_start counts
                self._count_rows(block, pos, end - 1 if stop < 0 else stop)
                if stop < 0:
                    self._line_start = True  # the next block starts with a line
                    return end
                self._table, pos = None, stop + 2
            else:
                found = _NEXT.search(block, pos, end)
                if found is None:
                    return end
                if found.group().startswith(b"DELIMITER"):
                    self._in_bodies, pos = True, found.end()
                    continue
                header = _HEADER.match(block, found.start(), end)
                if header is None and end - found.start() < HEADER_LIMIT and not final:
                    return found.start()  # the rest of the header may come with the next chunk
                name = header and header.group(1).replace(b"``", b"`").decode(errors="replace")
                if header is None or name not in self.counts:
                    pos = found.end()  # a line of DDL that a table name with a newline broke
                    continue
                self._table = name
                # the first row follows VALUES on its line, or starts the next line
                self.counts[name] += block.startswith(b" (", header.end())
                self._line_start, pos = False, header.end()
        return end

    def _count_rows(self, block: bytes, start: int, stop: int) -> None:
        """Add the row starts in block[start:stop], a piece of the current statement."""
        assert self._table is not None
        # inside a statement every line break starts a row (literals hold no raw newline)
        found = block.count(b"\n", start, stop)
        found += self._line_start and block.startswith(b"(", start)
        if not self._row_per_line:
            self._row_per_line = block.find(b"),\n(", start, stop) >= 0
        if not self._row_per_line and block.find(b"),(", start, stop) >= 0:
            found += _LITERAL.sub(b"''", block[start:stop]).count(b"),(")
        self.counts[self._table] += found
