"""Errors that carry a run's report share one base (blocks/errors.ReportedFailure): each
keeps its message, report and exit code through pickling (Prefect keeps a failed run's
exception), and a verify failure is not a backup failure."""

from __future__ import annotations

import pickle

import pytest
from prefect_dbbackup.blocks.errors import ReportedFailure
from prefect_dbbackup.flows.backup_report import BackupFailed, BackupReport, DatabaseOutcome
from prefect_dbbackup.flows.check import CheckFailed
from prefect_dbbackup.flows.fleet import FleetFailed, ServerRun
from prefect_dbbackup.flows.verify import VerifyOutcome, VerifyReport, VerifyRunFailed
from prefect_dbbackup.tasks.dedup.check import CheckReport, Finding
from prefect_dbbackup.tasks.users import UsersPartlyRestored, UsersResult


def _failures() -> list[ReportedFailure]:
    backup = BackupReport(
        server="srv",
        storage="x",
        outcomes=[
            DatabaseOutcome(database="a", kind="database", status="failed", error="disk full"),
            DatabaseOutcome(database="b", kind="database", status="ok"),
        ],
    )
    verify = VerifyReport(
        server="srv", storage="x", outcomes=[VerifyOutcome(database="a", status="failed")]
    )
    check = CheckReport(storage="x", server=None, read_data=False)
    check.findings.append(Finding(problem="missing", what="c1", detail="", backups=["s/a/1"]))
    runs = [
        ServerRun(server="s1", state="Failed", message="boom"),
        ServerRun(server="s2", state="Completed"),
    ]
    return [
        BackupFailed(backup),
        VerifyRunFailed(verify),
        CheckFailed(check),
        FleetFailed(runs),
        UsersPartlyRestored(
            "users/roles restore incomplete: 1 refused",
            UsersResult(
                server="srv",
                backup_id="1",
                dry_run=False,
                accounts=["app"],
                statements=[],
                skipped=["GRANT x"],
                refused=["GRANT x"],
            ),  # fmt: skip
        ),
    ]


@pytest.mark.parametrize("failure", _failures(), ids=lambda f: type(f).__name__)
def test_a_failure_keeps_its_message_report_and_exit_code_through_pickling(failure) -> None:
    copy = pickle.loads(pickle.dumps(failure))  # noqa: S301 (our own bytes)
    assert type(copy) is type(failure)
    assert str(copy) == str(failure) and str(copy)
    assert copy.report == failure.report
    assert copy.exit_code == failure.exit_code


def test_the_exit_codes_and_messages_say_what_failed() -> None:
    backup, verify, check, fleet, users = _failures()
    assert (backup.exit_code, verify.exit_code, check.exit_code, users.exit_code) == (1, 2, 1, 1)
    assert "1 of 2 databases of srv failed: 'a': disk full" in str(backup)
    users = BackupReport(
        server="srv",
        storage="x",
        outcomes=[
            DatabaseOutcome(database="a", kind="database", status="ok"),
            DatabaseOutcome(database="_globals", kind="globals", status="failed", error="denied"),
        ],
    )
    assert str(BackupFailed(users)).startswith("the users/roles backup of srv failed: denied")
    assert "1 of 2 server backups did not complete: s1: Failed boom" in str(fleet)


def test_a_verify_failure_is_not_a_backup_failure() -> None:
    _, verify, *_ = _failures()
    assert not isinstance(verify, BackupFailed)
