"""--replace's error wrapping: failures gain the state of the databases, stops pass unchanged."""

from __future__ import annotations

import logging

import pytest
from prefect.exceptions import TerminationSignal
from prefect_dbbackup.blocks.errors import DbBackupError, Interrupted, ToolFailed
from prefect_dbbackup.tasks.restore import _explained

LOG = logging.getLogger("dbbackup")
STATE = "A complete restored copy is in database 'dbbackup_staging_0a0a0a0a'"


def test_a_failure_becomes_an_error_that_says_where_the_copy_is():
    failed = "restoring into 'shop' failed after it was dropped"
    with pytest.raises(DbBackupError) as got, _explained(LOG, failed, STATE):
        raise ToolFailed("mariadb exited 1")
    assert str(got.value) == (
        f"restoring into 'shop' failed after it was dropped: mariadb exited 1. {STATE}"
    )
    assert isinstance(got.value.__cause__, ToolFailed)


@pytest.mark.parametrize(
    "stop",
    [KeyboardInterrupt(), TerminationSignal(15), SystemExit(1), Interrupted("SIGTERM")],
    ids=["ctrl-c", "prefect-cancel", "exit", "interrupted"],
)
def test_a_stop_is_raised_unchanged_and_the_state_is_logged(stop, caplog):
    with (
        caplog.at_level(logging.ERROR, logger="dbbackup"),
        pytest.raises(type(stop)) as got,
        _explained(LOG, "swapping failed", STATE),
    ):
        raise stop
    assert got.value is stop
    assert STATE in caplog.text and "the run was stopped" in caplog.text
