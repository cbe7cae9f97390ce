"""WalPieceFilter (blocks/wal.py): what an archive run stores of a WAL segment is checked
page by page; old bytes under a segment's name are refused, except as the unused rest of a
closed segment after a WAL switch."""

from __future__ import annotations

import struct

import pytest
from prefect_dbbackup.blocks.errors import IntegrityError
from prefect_dbbackup.blocks.wal import (
    PAGE_BYTES,
    SEGMENT_BYTES,
    WalPieceFilter,
    parse_segment,
    segment_name,
)

NAME = "000000010000000000000003"
BASE = parse_segment(NAME)[1]


def _page(lsn: int, first: bool = False) -> bytes:
    header = struct.pack("<HHIQI", 0xD110, 2 if first else 0, 1, lsn, 0) + bytes(4)
    if first:
        header += struct.pack("<QII", 42, SEGMENT_BYTES, PAGE_BYTES)
    return header + bytes(PAGE_BYTES - len(header))


def _feed(piece: WalPieceFilter, data: bytes, step: int) -> bytes:
    return b"".join(piece.feed(memoryview(data)[i : i + step]) for i in range(0, len(data), step))


@pytest.mark.parametrize("step", [1 << 20, PAGE_BYTES, 7, 1])
def test_pages_that_sit_where_they_say_pass_unchanged_in_chunks_of_any_size(step: int) -> None:
    data = b"".join(_page(BASE + i * PAGE_BYTES, first=i == 0) for i in range(4))
    data = data[: 3 * PAGE_BYTES + 100]  # ends inside the fourth page, after its header
    piece = WalPieceFilter(NAME, 0)
    assert _feed(piece, data, step) == data
    summary = piece.finish()
    assert (summary.start, summary.end, summary.events, summary.closed) == (0, len(data), 4, False)


def test_a_page_of_another_place_below_the_flush_position_is_refused() -> None:
    """A recycled segment: its pages still say where they sat before."""
    data = _page(BASE, first=True) + _page(BASE - SEGMENT_BYTES + PAGE_BYTES)
    piece = WalPieceFilter(NAME, 0)
    piece.feed(data)
    with pytest.raises(IntegrityError, match="sits at 0/2002000, not at 0/3002000"):
        piece.finish()
    with pytest.raises(IntegrityError, match="long header"):
        WalPieceFilter(NAME, 0).feed(_page(BASE))  # no long header on the first page


def test_a_closed_segment_may_end_with_the_unused_rest_after_a_switch() -> None:
    start = SEGMENT_BYTES - 2 * PAGE_BYTES
    data = _page(BASE + start) + bytes(PAGE_BYTES)  # a real page, then zeros to the end
    piece = WalPieceFilter(NAME, start)
    assert piece.feed(data) == data
    summary = piece.finish()
    assert summary.closed and summary.end == SEGMENT_BYTES and summary.events == 1


def test_segment_names_and_lsns_agree_with_postgresql() -> None:
    assert segment_name(1, 0x3002000) == NAME
    assert parse_segment("0000000200000001000000FF") == (2, 0x1FF000000)
    with pytest.raises(ValueError):
        parse_segment("000000010000000000000100")  # no such 16 MiB segment


def test_a_cluster_window_holds_exactly_the_seconds_restore_cluster_accepts() -> None:
    """list --pitr's window and restore-cluster's refusal (check_reach) agree, second by
    second, whatever the fractions of the base backup's end and of the archive's reach."""
    from datetime import UTC, datetime, timedelta

    from prefect_dbbackup.blocks.errors import ConfigError
    from prefect_dbbackup.tasks.restore_cluster import WalPlan, check_reach, end_of_second

    base_end = datetime(2026, 12, 7, 10, 0, 5, 700_000, tzinfo=UTC)
    for reach_fraction in (0, 1, 500_000, 999_999):
        reach = datetime(2026, 12, 7, 10, 0, 9, reach_fraction, tzinfo=UTC)
        since, until = base_end.replace(microsecond=0), reach.replace(microsecond=0)
        until -= timedelta(seconds=1)
        for second in range(0, 12):
            t = datetime(2026, 12, 7, 10, 0, second, tzinfo=UTC)
            try:
                check_reach(WalPlan([], reach), t, "s")
                reached = True
            except ConfigError:
                reached = False
            usable = base_end <= end_of_second(t)  # choose_base's rule
            assert (since <= t <= until) == (reached and usable), (reach, t)
