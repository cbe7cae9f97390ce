"""What a run sends to the Prefect API's logs: an expected error in one line.

An expected error (the DbBackupError family: a wrong key, a missing backup, a refused
login) already says what failed and what to do; its traceback only buries that line in
the UI (a wrong-key restore showed 21 and 48 lines). A bug (any other exception) keeps
its traceback, and so does every error when Prefect logs at DEBUG
(PREFECT_LOGGING_LEVEL=DEBUG).
"""

from __future__ import annotations

import logging

from prefect_dbbackup.blocks.errors import DbBackupError

RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")  # Prefect's loggers of run records


class ExpectedErrorsInOneLine(logging.Formatter):
    """The API handler's formatter, wrapped: a record about an expected error is formatted
    without its traceback unless its logger is at DEBUG. The record itself is left as it
    was, so the console handlers (which format it after) still see the error."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        error = record.exc_info[1] if record.exc_info else None
        debug = logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        if not isinstance(error, DbBackupError) or debug:
            return self.inner.format(record)
        kept = record.exc_info, record.exc_text
        record.exc_info = record.exc_text = None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text = kept


def expected_errors_in_one_line() -> None:
    """Wrap the formatter of the API log handlers of Prefect's run loggers, once per
    process (a flow run calls it as it starts: in the CLI, under `serve` and under a
    worker)."""
    for name in RUN_LOGGERS:
        for handler in logging.getLogger(name).handlers:
            if type(handler).__name__ == "APILogHandler" and not isinstance(
                handler.formatter, ExpectedErrorsInOneLine
            ):
                handler.setFormatter(ExpectedErrorsInOneLine(handler.formatter))
