"""The API log formatter: an expected error loses its traceback, a bug keeps it, DEBUG keeps
all; the record itself is unchanged for the console."""

from __future__ import annotations

import logging
import sys

import pytest
from prefect_dbbackup.blocks.errors import AuthError
from prefect_dbbackup.flows.run_logs import ExpectedErrorsInOneLine


def _record(logger: str, error: BaseException) -> logging.LogRecord:
    try:
        raise error
    except type(error):
        exc_info = sys.exc_info()
    return logging.LogRecord(logger, logging.ERROR, __file__, 1, "failed: %s", (error,), exc_info)


@pytest.mark.parametrize(
    ("error", "level", "traceback_kept"),
    [
        (AuthError("wrong key"), logging.INFO, False),
        (ValueError("a bug"), logging.INFO, True),
        (AuthError("wrong key"), logging.DEBUG, True),
    ],
)
def test_only_an_expected_error_loses_its_traceback(error, level, traceback_kept) -> None:
    name = f"dbbackup-test-run-logs-{level}"
    logging.getLogger(name).setLevel(level)
    record = _record(name, error)
    exc_info = record.exc_info
    formatted = ExpectedErrorsInOneLine(logging.Formatter("%(levelname)s %(message)s")).format(
        record
    )
    assert formatted.startswith(f"ERROR failed: {error}")
    assert ("Traceback" in formatted) is traceback_kept
    assert record.exc_info is exc_info  # the console still gets the error
    assert "Traceback" in logging.Formatter().format(record)
