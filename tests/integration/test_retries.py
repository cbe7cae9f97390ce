"""Retries only where a retry can help: a dropped connection yes, a refused login no."""

from __future__ import annotations

import json
import shutil
import threading
import time
import uuid

import pytest
from prefect_dbbackup.blocks import PostgresServer
from prefect_dbbackup.flows import backup as backup_flow
from prefect_dbbackup.tasks.backup import backup_task

from tests.helpers import flow_runs_of, task_runs_of


def _dump_run(server: str, db: str):  # noqa: ANN202
    """The dump task run of `db` in the one backup run of `server`."""
    [run] = flow_runs_of("backup-server", server=server)
    [dump] = [t for t in task_runs_of(run.id) if t.name == f"backup-{db}"]
    return dump


def _dump_attempts(server: str, db: str) -> int:
    """How often the dump task run of the one backup run of `server` ran (Prefect's count)."""
    return _dump_run(server, db).run_count


def _dump_log(server: str, db: str, text: str) -> str:
    """The dump task run's log in the Prefect API, once it holds `text` (logs arrive batched)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter

    task_run_id = _dump_run(server, db).id
    deadline = time.monotonic() + 30
    while True:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(log_filter=LogFilter(task_run_id={"any_": [task_run_id]}))
        log = "\n".join(entry.message for entry in logs)
        if text in log or time.monotonic() > deadline:
            return log
        time.sleep(0.5)


@pytest.fixture
def quick_retries(monkeypatch):
    """The real dump task with its retry policy, without the 30 s wait."""
    monkeypatch.setattr(backup_flow, "backup_task", backup_task.with_options(retry_delay_seconds=0))


def _flaky_pg_dump(directory, first_error: str):
    """pg_dump that fails once with first_error, then is the real pg_dump."""
    directory.mkdir()
    calls = directory / "calls"
    calls.write_text("")
    script = directory / "pg_dump"
    script.write_text(
        "#!/bin/sh\n"
        f'[ "$1" = "--version" ] && exec {shutil.which("pg_dump")} --version\n'
        f"echo x >> {calls}\n"
        f'if [ "$(wc -l < {calls})" = "1" ]; then echo "pg_dump: error: {first_error}" >&2; exit 1; fi\n'
        f'exec {shutil.which("pg_dump")} "$@"\n'
    )
    script.chmod(0o755)
    return calls


def _server_with(bin_dir) -> str:
    name = f"pg-flaky-{uuid.uuid4().hex[:8]}"
    PostgresServer(
        host="127.0.0.1", user="postgres", bin_dir=str(bin_dir), backup_users=False
    ).save(name)
    return name


def test_a_dump_that_lost_its_connection_is_retried(
    env, pg_db, pg_admin, tmp_path, quick_retries, cleanup_pg
):
    db = pg_db()
    pg_admin.execute(db, "CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g")
    calls = _flaky_pg_dump(tmp_path / "bin", "server closed the connection unexpectedly")
    server = _server_with(tmp_path / "bin")
    result = env.cli("backup", server, "-d", db)
    assert result.exit_code == 0, result.output
    assert len(calls.read_text().split()) == 2
    assert _dump_attempts(server, db) == 2  # one task run, retried by Prefect
    target = db + "_r"
    cleanup_pg.append(target)
    assert env.cli("restore", env.pg, db, "--from-server", server, "--into", target).exit_code == 0
    assert pg_admin.table_fingerprints(target) == pg_admin.table_fingerprints(db)


def test_a_refused_login_is_not_retried(env, pg_db, tmp_path, quick_retries):
    db = pg_db()
    calls = _flaky_pg_dump(
        tmp_path / "bin",
        'connection to server at "127.0.0.1", port 5432 failed: FATAL:  password authentication failed',
    )
    server = _server_with(tmp_path / "bin")
    result = env.cli("backup", server, "-d", db)
    assert result.exit_code == 2
    assert "password authentication failed" in result.output
    assert len(calls.read_text().split()) == 1
    assert _dump_attempts(server, db) == 1


def test_a_missing_restore_client_is_found_before_anything_is_created(
    env, pg_db, pg_admin, tmp_path
):
    db = pg_db()
    assert env.cli("backup", env.pg, "-d", db).exit_code == 0
    (tmp_path / "empty-bin").mkdir()
    server = _server_with(tmp_path / "empty-bin")
    result = env.cli("restore", server, db, "--from-server", env.pg, "--into", db + "_x")
    assert result.exit_code == 3
    assert "pg_restore" in result.stderr and "install the client tools" in result.stderr
    assert not pg_admin.exists(db + "_x")


def test_a_dump_whose_session_the_server_terminates_is_retried_and_restores(
    env, pg_db, pg_admin, quick_retries, cleanup_pg
):
    """The real pg_dump loses its real connection (pg_terminate_backend); the retry dumps
    again from a new snapshot, and only that complete attempt is stored."""
    db = pg_db()
    pg_admin.execute(
        db, "CREATE TABLE t (id int PRIMARY KEY, v text);"
        "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 5000) g;"
    )  # fmt: skip
    server = f"pg-dropped-{uuid.uuid4().hex[:8]}"
    PostgresServer(host="127.0.0.1", user="postgres", backup_users=False).save(server)
    sessions = "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name LIKE 'dbbackup-dump-%%'"
    results: list = []
    with pg_admin.connect(db) as locker, locker.transaction():
        # the first pg_dump waits on this lock: it is certainly mid-dump when terminated
        locker.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
        backup = threading.Thread(
            target=lambda: results.append(env.cli("backup", server, "-d", db))
        )
        backup.start()
        deadline = time.monotonic() + 90
        while not (pids := pg_admin.query("postgres", sessions, (db,))):
            assert time.monotonic() < deadline, "pg_dump never connected"
            time.sleep(0.1)
        [(pid,)] = pids
        assert pg_admin.query("postgres", "SELECT pg_terminate_backend(%s)", (pid,)) == [(True,)]
    backup.join(timeout=180)
    assert not backup.is_alive()
    [result] = results
    assert result.exit_code == 0, result.output
    assert _dump_attempts(server, db) == 2
    # Prefect shows why: the first attempt's error and that it was retried
    cause = "terminating connection due to administrator command"
    log = _dump_log(server, db, cause)
    assert cause in log and "Retry 1/1" in log, log
    listed = json.loads(env.cli("list", server, "-d", db, "--json").stdout)
    assert len(listed) == 1  # the killed attempt left no backup behind
    target = db + "_r"
    cleanup_pg.append(target)
    result = env.cli("restore", env.pg, db, "--from-server", server, "--into", target)
    assert result.exit_code == 0, result.output
    assert pg_admin.table_fingerprints(target) == pg_admin.table_fingerprints(db)
