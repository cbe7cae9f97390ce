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
    assert f"1 of 1 databases of {env.my} failed" in result.stderr  # _globals is no database


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


def test_a_storage_without_a_signing_key_fails_the_run_before_any_dump(
    env, pg_db, pg_admin, tmp_path
):
    """docs/security.md: a writer without a signing key fails closed before any dump. The
    table is locked: a dump that started would wait on it, in plain sight, until killed."""
    import threading
    import time
    import uuid

    import psycopg
    from prefect_dbbackup.blocks import LocalBackupStorage, PostgresServer

    from tests.helpers import PG

    tag = uuid.uuid4().hex[:8]
    bare, server = f"unsigned-{tag}", f"pg-unsigned-{tag}"
    root = tmp_path / "unsigned"
    LocalBackupStorage(path=str(root)).save(bare)  # no manifest signing key
    PostgresServer(**PG, backup_users=False, dump_timeout=30).save(server)
    db = pg_db()
    pg_admin.execute(db, "CREATE TABLE t AS SELECT g FROM generate_series(1, 100) g")
    sessions: list[tuple] = []
    done = threading.Event()

    def watch() -> None:  # every session on db while the run lasts (none is this test's)
        query = "SELECT pid, application_name FROM pg_stat_activity WHERE datname = %s"
        while not done.is_set():
            sessions.extend(pg_admin.query("postgres", query, (db,)))
            time.sleep(0.02)

    with psycopg.connect(**PG, dbname=db) as holder:
        holder.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")  # held until the run ends
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            result = env.cli("backup", server, "-d", db, "--storage", bare)
        finally:
            done.set()
            watcher.join()
        sessions = [s for s in sessions if s[0] != holder.info.backend_pid]
    assert result.exit_code == 3, result.output
    assert "has no manifest signing key: refusing to write an unsigned backup" in result.stderr
    assert "dbbackup signing-keygen" in result.stderr
    assert sessions == [], f"the refused run connected to the database: {set(sessions)}"
    assert not root.exists() or [p for p in root.rglob("*") if p.is_file()] == []
