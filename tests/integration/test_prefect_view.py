"""What an operator sees in Prefect: run names, task runs, the table artifact, failure state."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
from prefect_dbbackup.blocks import PostgresServer
from prefect_dbbackup.flows.backup import backup_server
from prefect_dbbackup.flows.report import BackupFailed


async def _run_view(run_name: str):
    async with get_client() as client:
        [run] = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[run_name]))
        )
        task_runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id={"any_": [run.id]})
        )
        artifacts = await client.read_artifacts()
        mine = [a for a in artifacts if a.flow_run_id == run.id]
        return run, task_runs, mine


def test_a_backup_run_is_readable_in_prefect(env, pg_db, pg_admin):
    ok_db = pg_db()
    pg_admin.execute(ok_db, "CREATE TABLE t AS SELECT 1 AS x")
    report = backup_server(
        server=env.pg, storage=env.storage, encryption=env.encryption, databases=[ok_db]
    )
    run_name = f"backup-{env.pg}-{datetime.now(UTC):%Y-%m-%d}"
    run, task_runs, artifacts = asyncio.run(_run_view(run_name))
    assert run.state.is_completed()
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
    assert names == [f"dump-{ok_db}", f"globals-{env.pg}", "upload-_globals", f"upload-{ok_db}"]
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
    assert f"'{stuck}'" in str(failure.value) and "1 of 3 databases" in str(failure.value)
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


def test_concurrency_bounds_the_dumps_running_at_once(env, pg_db, pg_admin):
    """With concurrency=2, no more than two dump task runs ever overlap."""
    dbs = [pg_db() for _ in range(4)]
    for db in dbs:
        pg_admin.execute(
            db, "CREATE TABLE t AS SELECT g, md5(g::text) FROM generate_series(1, 50000) g"
        )
    backup_server(
        server=env.pg, storage=env.storage, encryption=env.encryption, databases=dbs, concurrency=2
    )
    _, task_runs, _ = asyncio.run(_run_view(f"backup-{env.pg}-{datetime.now(UTC):%Y-%m-%d}"))
    dumps = [t for t in task_runs if t.name.startswith("dump-")]
    assert sorted(t.name for t in dumps) == sorted(f"dump-{db}" for db in dbs)
    events = sorted([(t.start_time, 1) for t in dumps] + [(t.end_time, -1) for t in dumps])
    running, peak = 0, 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert 1 <= peak <= 2
