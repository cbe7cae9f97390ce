"""PieceFilter (blocks/binlog_events.py) cuts a raw binlog fetch to the file's own bytes and
refuses a stream that was cut or changed. Synthetic events, headers as MariaDB writes them."""

from __future__ import annotations

import struct

import pytest
from prefect_dbbackup.blocks.binlog_pieces import MAGIC, ROTATE_EVENT, PieceFilter
from prefect_dbbackup.blocks.errors import IntegrityError


def _event(start: int, kind: int, body: bytes, stamp: int = 1_765_000_000, pos: int | None = None):
    size = 19 + len(body)
    next_position = start + size if pos is None else pos
    return struct.pack("<IBIIIH", stamp, kind, 1, size, next_position, 0) + body


def _file(bodies: list[tuple[int, bytes]], rotate: bool = False) -> tuple[bytes, list[int]]:
    """A binlog file and the offsets of its events."""
    data, offsets = bytearray(MAGIC), []
    for i, (kind, body) in enumerate(bodies + ([(ROTATE_EVENT, b"next")] if rotate else [])):
        offsets.append(len(data))
        data += _event(len(data), kind, body, stamp=1_765_000_000 + i)
    return bytes(data), offsets


def _feed(piece: PieceFilter, data: bytes, step: int) -> bytes:
    return b"".join(piece.feed(data[i : i + step]) for i in range(0, len(data), step))


@pytest.mark.parametrize("step", [1, 7, 19, 4096])
def test_a_whole_file_passes_unchanged_whatever_the_read_sizes(step: int) -> None:
    data, _ = _file([(15, b"f" * 80), (2, b"q" * 30), (30, b"r" * 200)], rotate=True)
    piece = PieceFilter("binlog.000001", 4)
    assert _feed(piece, data, step) == data
    summary = piece.finish()
    assert (summary.start, summary.end, summary.events, summary.closed) == (0, len(data), 4, True)
    assert summary.first_event_at.timestamp() == 1_765_000_000
    assert summary.last_event_at.timestamp() == 1_765_000_003


@pytest.mark.parametrize("step", [1, 5, 4096])
def test_a_fetch_from_a_position_keeps_the_files_bytes_from_there(step: int) -> None:
    data, offsets = _file([(15, b"f" * 80), (2, b"q" * 30), (30, b"r" * 200), (16, b"x")])
    start = offsets[2]
    artificial = _event(4, 15, b"f" * 80, pos=0)  # the server's format description
    fetched = MAGIC + artificial + data[start:]
    piece = PieceFilter("binlog.000001", start)
    assert _feed(piece, fetched, step) == data[start:]
    summary = piece.finish()
    assert (summary.start, summary.end, summary.events, summary.closed) == (
        start,
        len(data),
        2,
        False,
    )


def test_nothing_after_the_position_is_an_empty_piece() -> None:
    data, _ = _file([(15, b"f" * 80)])
    piece = PieceFilter("binlog.000001", len(data))
    assert piece.feed(MAGIC + _event(4, 15, b"f" * 80, pos=0)) == b""
    summary = piece.finish()
    assert (summary.start, summary.end, summary.events) == (len(data), len(data), 0)


@pytest.mark.parametrize("cut", [3, 10, 30, -1])
def test_a_cut_stream_is_refused(cut: int) -> None:
    data, _ = _file([(15, b"f" * 80), (2, b"q" * 30)])
    piece = PieceFilter("binlog.000001", 4)
    piece.feed(data[:cut])
    with pytest.raises(IntegrityError, match="binlog.000001 fetched from position 4"):
        piece.finish()


def test_an_event_out_of_place_is_refused() -> None:
    data, offsets = _file([(15, b"f" * 80), (2, b"q" * 30)])
    changed = bytearray(data)
    struct.pack_into("<I", changed, offsets[1] + 13, offsets[1] + 99)  # a wrong next position
    with pytest.raises(IntegrityError, match="says the next one starts at"):
        PieceFilter("binlog.000001", 4).feed(bytes(changed))


def test_a_fetch_that_starts_elsewhere_than_asked_is_refused() -> None:
    data, offsets = _file([(15, b"f" * 80), (2, b"q" * 30), (2, b"z" * 9)])
    fetched = MAGIC + _event(4, 15, b"f" * 80, pos=0) + data[offsets[1] :]
    with pytest.raises(IntegrityError, match="starts at"):
        PieceFilter("binlog.000001", offsets[2]).feed(fetched)


def test_no_magic_is_refused() -> None:
    with pytest.raises(IntegrityError, match="magic"):
        PieceFilter("binlog.000001", 4).feed(b"GIF89a" + b"\0" * 40)
