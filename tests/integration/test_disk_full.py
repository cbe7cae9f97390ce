"""A full disk is a clear, non-retried error that stores nothing half-written."""

from __future__ import annotations

import json
import uuid

import pytest
from prefect_dbbackup.blocks import LocalBackupStorage, PostgresServer
from prefect_dbbackup.blocks.server import staging_prefix
from prefect_dbbackup.flows import backup as backup_flow
from prefect_dbbackup.tasks import backup as backup_tasks

from tests.helpers import flow_runs_of, task_runs_of


@pytest.fixture
def quick_retries(monkeypatch):
    """The real backup task and its upload retries, without the waits: a regression that
    retries a full disk shows as a second attempt, not as a slow test."""
    quick = backup_tasks.backup_task.with_options(retry_delay_seconds=0)
    monkeypatch.setattr(backup_flow, "backup_task", quick)
    monkeypatch.setattr(backup_tasks, "UPLOAD_RETRY_DELAYS", (0, 0, 0))


def _attempts(run_parameters: dict) -> dict[str, int]:
    """How often each task run of the one backup run with these parameters ran."""
    [run] = flow_runs_of("backup-server", **run_parameters)
    return {t.name: t.run_count for t in task_runs_of(run.id)}


def _big_table(pg_admin, db):
    # random text does not compress: about 2 MB stored
    pg_admin.execute(
        db,
        "CREATE TABLE t AS SELECT g, md5(random()::text) || md5(random()::text) AS v "
        "FROM generate_series(1, 30000) g",
    )


def test_full_storage_fails_clearly_without_retry_and_leaves_no_backup(
    env, pg_db, pg_admin, tiny_disk, quick_retries
):
    db = pg_db()
    _big_table(pg_admin, db)
    storage = f"tiny-{uuid.uuid4().hex[:8]}"
    LocalBackupStorage(path=str(tiny_disk / "backups"), **env.signing_fields()).save(storage)
    result = env.cli("backup", env.pg, "-d", db, "--json", "--storage", storage)
    # the users backup is uploaded after the databases' uploads, into the space the failed
    # upload gave back: it is stored, but the only requested database failed: exit 2
    # (the users/roles row is not a database in this count)
    assert result.exit_code == 2, result.output
    rows = {d["database"]: d for d in json.loads(result.stdout)["databases"]}
    assert rows["_globals"]["status"] == "ok"
    outcome = rows[db]
    assert outcome["status"] == "failed"
    assert "is full" in outcome["error"] and "free space" in outcome["error"]
    # a full disk is not retried: the task ran once, and its log says no upload was retried
    attempts = _attempts({"server": env.pg, "storage": storage})
    assert attempts[f"backup-{db}"] == 1, attempts
    assert "trying again" not in result.output
    leftovers = [p for p in (tiny_disk / "backups").rglob("*") if p.is_file()]
    assert [p for p in leftovers if "_globals" not in p.parts] == []


def test_full_work_dir_fails_clearly_and_removes_the_spool(
    env, pg_db, pg_admin, tiny_disk, monkeypatch, quick_retries
):
    db = pg_db()
    _big_table(pg_admin, db)
    # no users backup: it would spool into the same tiny disk at the same time, and whether
    # it fits would depend on which of the two writes first
    server = f"pg-nousers-{uuid.uuid4().hex[:8]}"
    PostgresServer(host="127.0.0.1", user="postgres", backup_users=False).save(server)
    monkeypatch.setenv("DBBACKUP_WORK_DIR", str(tiny_disk))
    result = env.cli("backup", server, "-d", db, "--json")
    assert result.exit_code == 2, result.output  # every database (the only one) failed
    [outcome] = json.loads(result.stdout)["databases"]
    assert outcome["database"] == db and outcome["status"] == "failed"
    assert "work dir" in outcome["error"] and "DBBACKUP_WORK_DIR" in outcome["error"]
    # not retried (the task's policy allows one retry), and nothing was uploaded
    assert _attempts({"server": server, "storage": env.storage}) == {f"backup-{db}": 1}
    assert list(tiny_disk.iterdir()) == []
    assert not env.storage_path.exists() or not list(env.storage_path.rglob("manifest.json"))


@pytest.mark.parametrize("where", ["local --jobs 2", "s3"])
def test_full_work_dir_during_restore_keeps_the_existing_target(
    env, where, pg_db, pg_admin, tiny_disk, monkeypatch, request
):
    """A real ENOSPC while the restore spools into its work dir (the decrypted archive for
    --jobs, the downloaded object for S3): the database it was to replace is untouched."""
    if where == "s3":
        env = env.use_s3(request.getfixturevalue("s3_server"))
    db = pg_db()
    _big_table(pg_admin, db)
    assert env.cli("backup", env.pg, "-d", db).exit_code == 0
    target = pg_db()
    pg_admin.execute(target, "CREATE TABLE keep AS SELECT g FROM generate_series(1, 300) g")
    before = pg_admin.table_fingerprints(target)
    own = staging_prefix(target)  # this restore's staging databases, not another test's
    databases = "SELECT datname FROM pg_database"
    assert not [d for (d,) in pg_admin.query("postgres", databases) if d.startswith(own)]
    monkeypatch.setenv("DBBACKUP_WORK_DIR", str(tiny_disk))
    extra = ["--jobs", "2"] if where.startswith("local") else []
    result = env.cli("restore", env.pg, db, "--into", target, "--replace", *extra)
    assert result.exit_code == 2, result.output
    # DiskFull names the work dir and what to do (an S3 download says so too, not
    # "is the endpoint reachable?")
    assert "work dir" in result.stderr and "DBBACKUP_WORK_DIR" in result.stderr, result.stderr
    assert "endpoint reachable" not in result.stderr
    assert pg_admin.table_fingerprints(target) == before
    left = [d for (d,) in pg_admin.query("postgres", databases) if d.startswith(own)]
    assert left == [], "a staging database was left"
    assert list(tiny_disk.iterdir()) == []
