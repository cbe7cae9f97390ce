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
        Fetch("binlog.000003", 4, 900),
        Fetch("binlog.000004", 4, 700),
        Fetch("binlog.000005", 4, None),  # the open file: no size to reach
    ]


def test_a_run_goes_on_where_the_archive_ends() -> None:
    fetches, gap = plan_fetches(FILES, LogPosition(file="binlog.000004", position=321))
    assert gap is None
    assert fetches == [Fetch("binlog.000004", 321, 700), Fetch("binlog.000005", 4, None)]


def test_a_closed_file_archived_whole_may_be_purged_without_a_gap() -> None:
    end = LogPosition(file="binlog.000002", position=5000, closed=True)
    fetches, gap = plan_fetches(FILES, end)
    assert gap is None and fetches[0] == Fetch("binlog.000003", 4, 900)


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
