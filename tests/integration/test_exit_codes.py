"""Exit 2 when every requested database failed (users/roles do not count), 1 when some did."""

from __future__ import annotations

import json

from prefect_dbbackup.flows.backup_report import BackupFailed, BackupReport, DatabaseOutcome


def _broken(my_admin, db: str) -> None:  # noqa: ANN001
    """A view whose table is gone: mariadb-dump fails on it (a real, permanent failure)."""
    my_admin.execute(
        db, "CREATE TABLE gone (a int)", "CREATE VIEW v AS SELECT a FROM gone", "DROP TABLE gone"
    )


def _rows(stdout: str) -> dict[str, dict]:
    return {d["database"]: d for d in json.loads(stdout)["databases"]}


def test_only_requested_database_failing_exits_2_although_users_succeeded(env, my_db, my_admin):
    broken = my_db()
    _broken(my_admin, broken)
    result = env.cli("backup", env.my, "--database", broken, "--json")
    assert result.exit_code == 2, result.output
    rows = _rows(result.stdout)
    assert rows[broken]["status"] == "failed"
    assert rows["_globals"]["status"] == "ok" and rows["_globals"]["kind"] == "globals"
    assert json.loads(result.stdout)["exit_code"] == 2
    assert "1 of 2" in result.stderr


def test_one_of_two_databases_failing_exits_1(env, my_db, my_admin):
    good, broken = my_db(), my_db()
    my_admin.execute(good, "CREATE TABLE t (id int)", "INSERT INTO t VALUES (1)")
    _broken(my_admin, broken)
    result = env.cli("backup", env.my, "-d", broken, "-d", good)
    assert result.exit_code == 1, result.output
    lines = {line.split()[1]: line.split()[0] for line in result.stdout.splitlines()}
    assert lines == {good: "ok", broken: "failed", "_globals": "ok"}


def _report(*rows: tuple[str, str, str]) -> BackupReport:
    return BackupReport(
        server="s",
        storage="x",
        outcomes=[DatabaseOutcome(database=d, kind=k, status=st) for d, k, st in rows],
    )


def test_the_rule_counts_databases_not_the_users_row():
    only_users_failed = _report(("a", "database", "ok"), ("_globals", "globals", "failed"))
    assert BackupFailed(only_users_failed).exit_code == 1
    all_dbs_failed = _report(
        ("a", "database", "failed"), ("b", "database", "failed"), ("_globals", "globals", "ok")
    )
    assert BackupFailed(all_dbs_failed).exit_code == 2
    # a real database that happens to be named _globals is a database
    named_like_users = _report(("_globals", "database", "failed"), ("_globals", "globals", "ok"))
    assert BackupFailed(named_like_users).exit_code == 2
    everything_failed = _report(("a", "database", "failed"), ("_globals", "globals", "failed"))
    assert BackupFailed(everything_failed).exit_code == 2
