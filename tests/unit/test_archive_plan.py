"""plan_fetches (tasks/archive.py): where an archive run starts, and when the log between
the stored archive and the server's files is lost (a gap)."""

from __future__ import annotations

from prefect_dbbackup.tasks.archive import Fetch, plan_fetches
from prefect_dbbackup.tasks.archive_manifest import LogPosition

FILES = [("binlog.000003", 900), ("binlog.000004", 700), ("binlog.000005", 120)]


def test_a_first_run_takes_every_file_from_its_start() -> None:
    fetches, gap = plan_fetches(FILES, None)
    assert gap is None
    assert fetches == [
        Fetch("binlog.000003", 4, 900, 900),
        Fetch("binlog.000004", 4, 700, 700),
        Fetch("binlog.000005", 4, None, 120),  # the open file: no size to reach
    ]


def test_a_run_goes_on_where_the_archive_ends() -> None:
    fetches, gap = plan_fetches(FILES, LogPosition(file="binlog.000004", position=321))
    assert gap is None
    assert fetches == [Fetch("binlog.000004", 321, 700, 700), Fetch("binlog.000005", 4, None, 120)]


def test_a_closed_file_archived_whole_may_be_purged_without_a_gap() -> None:
    end = LogPosition(file="binlog.000002", position=5000, closed=True)
    fetches, gap = plan_fetches(FILES, end)
    assert gap is None and fetches[0] == Fetch("binlog.000003", 4, 900, 900)


def test_a_file_purged_before_it_was_archived_is_a_gap() -> None:
    end = LogPosition(file="binlog.000002", position=17, closed=False)
    fetches, gap = plan_fetches(FILES, end)
    assert gap is not None and "binlog.000002:17 up to binlog.000003 was purged" in gap
    assert [f.file for f in fetches] == ["binlog.000003", "binlog.000004", "binlog.000005"]
    # a closed file whose successor is gone too
    end = LogPosition(file="binlog.000001", position=5000, closed=True)
    assert plan_fetches(FILES, end)[1] is not None


def test_a_reset_log_is_a_gap() -> None:
    shorter = LogPosition(file="binlog.000005", position=4000)
    assert "reset or replaced" in (plan_fetches(FILES, shorter)[1] or "")
    gone = LogPosition(file="binlog.000009", position=40)
    fetches, gap = plan_fetches(FILES, gone)
    assert gap is not None and "was reset" in gap and fetches[0].file == "binlog.000003"


def _run(run_id: str, pieces: list[tuple[str, int, int, bool]], sealed=None):  # noqa: ANN001, ANN202
    from datetime import UTC, datetime

    from prefect_dbbackup.tasks.archive_manifest import ArchiveManifest, LogPiece
    from prefect_dbbackup.tasks.manifest import StreamStats

    now = datetime(2026, 12, 7, tzinfo=UTC)
    made = [
        LogPiece(
            object_name=f"piece-{i:03d}.zst.age",
            file=file,
            start=start,
            end=end,
            closed=closed,
            events=1,
            first_event_at=now,
            last_event_at=now,
            stats=StreamStats(
                raw_bytes=end - start, compressed_bytes=1, stored_bytes=1, sha256="0"
            ),
        )
        for i, (file, start, end, closed) in enumerate(pieces)
    ]
    last = made[-1]
    return ArchiveManifest(
        tool_version="t", server="s", server_type="mysql", server_version="v", client="c",
        client_version="v", run_id=run_id, started_at=now, finished_at=now, recipients=[],
        pieces=made, end=LogPosition(file=last.file, position=last.end, closed=last.closed),
        sealed=sealed or {},
    )  # fmt: skip


def test_a_file_a_crash_left_without_its_rotate_event_still_joins_the_next_one() -> None:
    from prefect_dbbackup.tasks.pitr import stretches

    first = _run("20261207T000000Z-0001", [("binlog.000001", 0, 500, False)])
    # the server crashed after 500 bytes and started binlog.000002: the next run found
    # binlog.000001 closed at 500 and fetched nothing more of it
    after = _run(
        "20261207T000100Z-0002", [("binlog.000002", 0, 300, False)], {"binlog.000001": 500}
    )
    assert len(stretches([first, after])) == 1
    assert (
        len(stretches([first, _run("20261207T000100Z-0002", [("binlog.000002", 0, 300, False)])]))
        == 2
    )


def test_a_run_with_nothing_new_marks_a_file_the_server_closed_as_ended() -> None:
    from prefect_dbbackup.tasks.archive import end_after

    before = LogPosition(file="binlog.000004", position=700)
    assert end_after([], {"binlog.000004": 700}, before) == LogPosition(
        file="binlog.000004", position=700, closed=True
    )
    assert end_after([], {}, before) == before
    assert end_after([], {"binlog.000004": 900}, before) == before  # more to fetch


def test_a_dump_is_taken_for_a_time_by_the_database_servers_clock_not_the_workers() -> None:
    """A worker whose clock runs 5 minutes slow writes finished_at 10:00 for a dump whose
    snapshot was at 10:05 by the server's clock: for T = 10:02 the older dump is taken."""
    from datetime import UTC, datetime

    from prefect_dbbackup.blocks.binlog import BinlogPosition
    from prefect_dbbackup.tasks.manifest import Manifest
    from prefect_dbbackup.tasks.pitr import newest_dump_for, stretches

    def dump(backup_id: str, worker: datetime, server: datetime, position: int) -> Manifest:
        binlog = BinlogPosition(
            file="binlog.000001", position=position, gtid="", server_time=server
        )
        return Manifest.model_construct(backup_id=backup_id, finished_at=worker, binlog=binlog)

    older = dump(
        "a", datetime(2026, 12, 7, 9, 0, tzinfo=UTC), datetime(2026, 12, 7, 9, 0, tzinfo=UTC), 100
    )
    skewed = dump(
        "b", datetime(2026, 12, 7, 10, 0, tzinfo=UTC), datetime(2026, 12, 7, 10, 5, tzinfo=UTC), 400
    )
    found = stretches([_run("20261207T000000Z-0001", [("binlog.000001", 0, 900, False)])])
    picked = newest_dump_for([older, skewed], found, datetime(2026, 12, 7, 10, 2, tzinfo=UTC))
    assert picked is not None and picked[0].backup_id == "a"
    later = newest_dump_for([older, skewed], found, datetime(2026, 12, 7, 10, 6, tzinfo=UTC))
    assert later is not None and later[0].backup_id == "b"
