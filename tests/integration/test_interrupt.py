"""Ctrl-C (SIGINT) and SIGTERM stop a backup at once; SIGKILL of dbbackup takes its dump
client with it. The dump waits on a table lock, so only the stop can end it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from prefect_dbbackup.blocks import PostgresServer
from prefect_dbbackup.blocks.registry import load_storage

from tests.helpers import PG, flow_runs_of


@pytest.fixture
def locked(pg_db, pg_admin):
    """A database whose table t another session holds in ACCESS EXCLUSIVE mode."""
    db = pg_db()
    pg_admin.execute(db, "CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g")
    holder = psycopg.connect(**PG, dbname=db)
    holder.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")  # in a transaction left open
    yield db
    holder.close()


def _start_backup(env, server: str, db: str, workdir: Path) -> subprocess.Popen[str]:
    """`dbbackup backup` as a user runs it: its own process, the test's Prefect API."""
    from prefect.settings import PREFECT_API_URL

    child_env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    child_env.update(
        PREFECT_API_URL=str(PREFECT_API_URL.value()),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DBBACKUP_WORK_DIR=str(workdir),
    )
    argv = ["backup", server, "-d", db, "--storage", env.storage, "--encryption", env.encryption]
    return subprocess.Popen(
        [sys.executable, "-c", "from prefect_dbbackup.flows.cli import main; main()", *argv],
        env=child_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _pg_dumps_of(db: str) -> list[int]:
    """PIDs of the pg_dump processes dumping db."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"pg_dump") and any(db.encode() in a for a in argv):
            pids.append(int(entry.name))
    return pids


def _wait_for(condition, seconds: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _server(locked_db: str) -> str:
    server = f"pg-stop-{uuid.uuid4().hex[:6]}"
    PostgresServer(**PG, count_rows=False, backup_users=False, dump_timeout=600).save(server)
    return server


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_kills_the_dump_and_stores_nothing(env, locked, tmp_path, signum):
    db = locked
    server = _server(db)
    workdir = tmp_path / "work"
    cli = _start_backup(env, server, db, workdir)
    try:
        _wait_for(lambda: _pg_dumps_of(db), 180, "pg_dump to start")
        [dump_pid] = _pg_dumps_of(db)
        cli.send_signal(signum)
        # the dump waits on a lock that is never released: only the stop ends it
        _, stderr = cli.communicate(timeout=120)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == 130, stderr
    assert not _pg_dumps_of(db)
    assert not Path(f"/proc/{dump_pid}").exists()
    lines = [line for line in stderr.splitlines() if line.startswith("dbbackup: ")]
    assert lines[-1].startswith(f"dbbackup: interrupted by {signal.Signals(signum).name}")
    assert f"not stored: '{db}'" in lines[-1]
    assert "Traceback" not in stderr
    # nothing partial in storage, the spool and credentials files are gone
    assert load_storage(env.storage).list_keys(f"{server}/") == []
    assert list(workdir.iterdir()) == []
    [run] = flow_runs_of("backup-server", server=server)
    assert run.state.is_cancelled(), f"{run.state.name}: {run.state.message}"


def test_sigkill_of_dbbackup_takes_its_dump_client_with_it(env, locked, tmp_path):
    db = locked
    server = _server(db)
    cli = _start_backup(env, server, db, tmp_path / "work")
    try:
        _wait_for(lambda: _pg_dumps_of(db), 180, "pg_dump to start")
        [dump_pid] = _pg_dumps_of(db)
        cli.kill()
        cli.wait(timeout=30)
        _wait_for(lambda: not Path(f"/proc/{dump_pid}").exists(), 30, "the orphan pg_dump to die")
    finally:
        if cli.poll() is None:
            cli.kill()
        for pid in _pg_dumps_of(db):
            os.kill(pid, signal.SIGKILL)
