"""Retries only where a retry can help: a dropped connection yes, a refused login no."""

from __future__ import annotations

import shutil
import uuid

import pytest
from prefect_dbbackup.blocks import PostgresServer
from prefect_dbbackup.flows import backup as backup_flow
from prefect_dbbackup.tasks.backup import dump_task

from tests.helpers import flow_runs_of, task_runs_of


def _dump_attempts(server: str, db: str) -> int:
    """How often the dump task run of the one backup run of `server` ran (Prefect's count)."""
    [run] = flow_runs_of("backup-server", server=server)
    [dump] = [t for t in task_runs_of(run.id) if t.name == f"dump-{db}"]
    return dump.run_count


@pytest.fixture
def quick_retries(monkeypatch):
    """The real dump task with its retry policy, without the 30 s wait."""
    monkeypatch.setattr(backup_flow, "dump_task", dump_task.with_options(retry_delay_seconds=0))


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
