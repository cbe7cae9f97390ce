"""A report of a 1,000-database run stays readable: failures first, a bounded summary."""

from __future__ import annotations

from prefect_dbbackup.flows.backup_report import (
    NAMED_FAILURES,
    SUMMARY_ROWS,
    BackupFailed,
    BackupReport,
    DatabaseOutcome,
)


def _report(count: int, failed: set[int]) -> BackupReport:
    outcomes = [
        DatabaseOutcome(database=f"db{i:04d}", status="failed", error=f"boom {i}\ntrace")
        if i in failed
        else DatabaseOutcome(database=f"db{i:04d}", status="ok", raw_bytes=10, stored_bytes=5)
        for i in range(count)
    ]
    return BackupReport(server="big", storage="local", outcomes=outcomes)


def test_the_table_lists_every_database_failures_first():
    rows = _report(1000, {5, 700}).table()
    assert len(rows) == 1000
    assert [r["database"] for r in rows[:2]] == ["db0005", "db0700"]
    assert {r["status"] for r in rows[2:]} == {"ok"}
    assert rows[0]["error"] == "boom 5"


def test_the_summary_names_every_failure_and_a_bounded_number_of_ok_rows():
    text = _report(1000, {5, 700}).summary()
    assert "998 of 1000 databases ok" in text
    assert "### Failed (2)" in text and "- db0005: boom 5" in text
    assert text.index("db0005") < text.index("db0000")  # failures before the ok rows
    table_rows = [line for line in text.splitlines() if line.startswith("| db")]
    assert len(table_rows) == 2 + SUMMARY_ROWS
    assert f"... and {1000 - 2 - SUMMARY_ROWS} more databases ok" in text


def test_a_small_run_shows_every_row():
    text = _report(3, set()).summary()
    assert len([line for line in text.splitlines() if line.startswith("| db")]) == 3
    assert "more databases ok" not in text


def test_the_error_names_a_bounded_number_of_failures():
    error = BackupFailed(_report(100, set(range(40))))
    assert error.exit_code == 1
    assert str(error).count("boom") == NAMED_FAILURES
    assert "and 30 more" in str(error) and str(error).startswith("40 of 100 databases")
