"""What an operator sees in Prefect: run names, task runs, the table artifact, failure state."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, FlowRunFilter
from prefect_dbbackup.blocks import PostgresServer
from prefect_dbbackup.flows.backup import backup_server
from prefect_dbbackup.flows.backup_report import BackupFailed


async def _run_view(run_id: UUID):
    """The flow run (found by its id, not by its date-dependent name), task runs, artifacts."""
    async with get_client() as client:
        run = await client.read_flow_run(run_id)
        task_runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id={"any_": [run.id]})
        )
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id={"any_": [run.id]})
        )
        return run, task_runs, artifacts


def test_a_backup_run_is_readable_in_prefect(env, pg_db, pg_admin):
    ok_db = pg_db()
    pg_admin.execute(ok_db, "CREATE TABLE t AS SELECT 1 AS x")
    state = backup_server(
        server=env.pg,
        storage=env.storage,
        encryption=env.encryption,
        databases=[ok_db],
        return_state=True,
    )
    report = state.result()
    run, task_runs, artifacts = asyncio.run(_run_view(state.state_details.flow_run_id))
    assert run.state.is_completed()
    assert run.name.startswith(f"backup-{env.pg}-")  # says what ran (its time part may change)
    assert run.parameters == {
        "server": env.pg,
        "storage": env.storage,
        "encryption": env.encryption,
        "databases": [ok_db],
        "concurrency": 2,
        "zstd_level": None,
        "zstd_threads": 2,
        "retention": None,
    }
    names = sorted(t.name for t in task_runs)
    assert names == sorted([f"backup-{ok_db}", f"users-{env.pg}"])
    assert all(t.state.is_completed() for t in task_runs)
    [artifact] = [a for a in artifacts if a.type == "table"]
    assert artifact.key == f"backup-{env.pg}"
    row, users = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    assert users["database"] == "_globals" and users["status"] == "ok"
    assert row["database"] == ok_db and row["status"] == "ok"
    assert row["stored MB"] > 0 and row["backup id"] == report.outcomes[0].backup_id


def test_a_hung_dump_is_killed_and_the_others_still_complete(env, pg_db, pg_admin):
    """pg_dump blocked on a lock hits the block's time limit; the run fails naming only it."""
    good, stuck = pg_db(), pg_db()
    pg_admin.execute(good, "CREATE TABLE t AS SELECT 1 AS x")
    pg_admin.execute(stuck, "CREATE TABLE held (x int)")
    server = f"{env.pg}-impatient"
    # count_rows off: the row count would hit the lock first; this is about a hung pg_dump
    PostgresServer(host="127.0.0.1", user="postgres", dump_timeout=3, count_rows=False).save(server)
    with pg_admin.connect(stuck) as conn, conn.transaction():
        conn.execute("LOCK TABLE held IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(BackupFailed) as failure:
            backup_server(
                server=server,
                storage=env.storage,
                encryption=env.encryption,
                databases=[good, stuck],
            )
    assert failure.value.exit_code == 1
    assert f"'{stuck}'" in str(failure.value) and "1 of 2 databases" in str(failure.value)
    assert [o.status for o in failure.value.report.outcomes] == ["ok", "failed", "ok"]
    assert "time limit of 3s" in failure.value.report.outcomes[1].error
    assert not [p for p in env.storage_path.rglob("*") if stuck in str(p)]


def test_block_types_register_from_the_module(prefect_api):
    """`prefect block register -m prefect_dbbackup.blocks` registers exactly our five types (no abstract bases)."""
    import os
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    done = subprocess.run(
        [sys.executable, "-m", "prefect", "block", "register", "-m", "prefect_dbbackup.blocks"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Successfully registered 5 blocks" in done.stdout

    async def slugs() -> set[str]:
        async with get_client() as client:
            return {t.slug for t in await client.read_block_types()}

    assert {
        "postgres-server",
        "mysql-server",
        "local-backup-storage",
        "s3-backup-storage",
        "age-encryption",
    } <= asyncio.run(slugs())


def _waiting_pg_dumps(pg_admin, dbs: list[str]) -> list[str]:
    """The databases a pg_dump session is connected to right now."""
    rows = pg_admin.query(
        "postgres",
        "SELECT datname FROM pg_stat_activity WHERE application_name LIKE 'dbbackup-dump-%%' "
        "AND datname = ANY(%s)",
        (dbs,),
    )
    return sorted(r[0] for r in rows)


def test_concurrency_bounds_the_dumps_running_at_once(env, pg_db, pg_admin):
    """With concurrency=2, two dumps run at once (not one after another) and never three.

    Every table is locked, so each started pg_dump waits: the test sees exactly which
    dumps run while the others must wait for a slot, then lets them all finish.
    """
    dbs = [pg_db() for _ in range(4)]
    for db in dbs:
        pg_admin.execute(
            db, "CREATE TABLE t AS SELECT g, md5(g::text) FROM generate_series(1, 500) g"
        )
    states: list = []

    def run() -> None:
        states.append(
            backup_server(
                server=env.pg,
                storage=env.storage,
                encryption=env.encryption,
                databases=dbs,
                concurrency=2,
                return_state=True,
            )
        )

    backup = threading.Thread(target=run)
    with contextlib.ExitStack() as locks:
        for db in dbs:
            conn = locks.enter_context(pg_admin.connect(db))
            locks.enter_context(conn.transaction())
            conn.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
        backup.start()
        deadline = time.monotonic() + 90
        while len(_waiting_pg_dumps(pg_admin, dbs)) < 2:
            assert time.monotonic() < deadline, "two dumps never ran at once"
            time.sleep(0.2)
        first_two = _waiting_pg_dumps(pg_admin, dbs)
        time.sleep(3)  # the other two must keep waiting for a free slot
        assert _waiting_pg_dumps(pg_admin, dbs) == first_two
        assert len(set(first_two)) == 2
    backup.join(timeout=120)
    assert not backup.is_alive()
    [state] = states
    assert state.is_completed(), state
    assert [o.status for o in state.result().outcomes] == ["ok"] * 5  # + _globals
    _, task_runs, _ = asyncio.run(_run_view(state.state_details.flow_run_id))
    # one task run per database; the run starts one more task than `concurrency`, which
    # waits for a slot (the pg_stat_activity checks above: never three pg_dumps at once)
    backups = [t for t in task_runs if t.name.startswith("backup-")]
    assert sorted(t.name for t in backups) == sorted(f"backup-{db}" for db in dbs)
