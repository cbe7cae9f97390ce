"""pg_dump's server session: ended with a killed dump, and a terminated session is retried.

A pg_dump waiting on a lock that dump_timeout kills leaves its backend waiting on the
server (a backend does not notice its client is gone while it waits); dbbackup names
each dump's session (application_name `dbbackup-dump-<random>`) and terminates it.
A dump whose session an administrator terminated (pg_terminate_backend) gets its one retry.
"""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from prefect_dbbackup.blocks import PostgresServer
from prefect_dbbackup.flows import backup as backup_flow
from prefect_dbbackup.tasks.backup import backup_task

from tests.helpers import PG


@pytest.fixture
def quick_retries(monkeypatch):
    """The real dump task with its retry policy, without the 30 s wait."""
    monkeypatch.setattr(backup_flow, "backup_task", backup_task.with_options(retry_delay_seconds=0))


@pytest.fixture
def locked(pg_db, pg_admin) -> Iterator[tuple[str, psycopg.Connection]]:
    """A database whose table t another session holds in ACCESS EXCLUSIVE mode."""
    db = pg_db()
    pg_admin.execute(db, "CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g")
    holder = psycopg.connect(**PG, dbname=db)
    holder.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")  # in a transaction left open
    yield db, holder
    holder.close()


def _sessions(pg_admin, db: str, holder: psycopg.Connection) -> list[tuple]:
    """Every session on db but the lock holder's."""
    return pg_admin.query(
        "postgres",
        "SELECT pid, application_name, wait_event_type FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> %s",
        (db, holder.info.backend_pid),
    )


def _counting_pg_dump(directory) -> tuple[str, object]:
    """A pg_dump that records each call, then is the real pg_dump."""
    directory.mkdir()
    calls = directory / "calls"
    calls.write_text("")
    real = shutil.which("pg_dump")
    script = directory / "pg_dump"
    script.write_text(
        "#!/bin/sh\n"
        f'[ "$1" = "--version" ] && exec {real} --version\n'
        f"echo x >> {calls}\n"
        f'exec {real} "$@"\n'
    )
    script.chmod(0o755)
    return str(directory), calls


def test_a_dump_killed_at_its_time_limit_leaves_no_session_waiting(env, locked, pg_admin):
    db, holder = locked
    server = f"pg-locked-{uuid.uuid4().hex[:8]}"
    PostgresServer(**PG, dump_timeout=2, count_rows=False, backup_users=False).save(server)
    result = env.cli("backup", server, "-d", db)
    assert result.exit_code == 2, result.output
    assert "pg_dump exceeded its time limit of 2s" in result.output
    deadline = time.monotonic() + 5
    while (left := _sessions(pg_admin, db, holder)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == [], f"the killed dump's session still runs on the server: {left}"
    assert holder.execute("SELECT count(*) FROM t").fetchone() == (1000,)  # untouched


def test_a_terminated_dump_session_is_retried_once(
    env, locked, pg_admin, tmp_path, quick_retries, cleanup_pg, caplog
):
    db, holder = locked
    bin_dir, calls = _counting_pg_dump(tmp_path / "bin")
    server = f"pg-term-{uuid.uuid4().hex[:8]}"
    PostgresServer(**PG, bin_dir=bin_dir, backup_users=False).save(server)
    outcome = {}
    run = threading.Thread(target=lambda: outcome.update(r=env.cli("backup", server, "-d", db)))
    run.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # pg_dump waits on the lock under its own name
            dumps = [
                s for s in _sessions(pg_admin, db, holder) if s[1].startswith("dbbackup-dump-")
            ]
            if dumps and dumps[0][2] == "Lock":
                break
            time.sleep(0.2)
        else:
            pytest.fail("pg_dump never waited on the lock")
        pg_admin.query("postgres", "SELECT pg_terminate_backend(%s)", (dumps[0][0],))
    finally:
        holder.rollback()  # the retry finds the table free
        run.join(120)
    result = outcome["r"]
    assert result.exit_code == 0, result.output
    [failure] = [r.getMessage() for r in caplog.records if "Retry 1/1" in r.getMessage()]
    assert "terminating connection due to administrator command" in failure
    assert len(calls.read_text().split()) == 2  # the first attempt and one retry
    target = db + "_r"
    cleanup_pg.append(target)
    restored = env.cli("restore", env.pg, db, "--from-server", server, "--into", target)
    assert restored.exit_code == 0, restored.output
    assert pg_admin.table_fingerprints(target) == pg_admin.table_fingerprints(db)
