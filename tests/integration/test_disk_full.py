"""A full disk is a clear, non-retried error that stores nothing half-written."""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest
from prefect_dbbackup.blocks import LocalBackupStorage


@pytest.fixture
def tiny_disk(tmp_path):
    """A 256 KiB tmpfs: real ENOSPC from the kernel."""
    mountpoint = tmp_path / "tiny"
    mountpoint.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mountpoint)], check=True
    )
    yield mountpoint
    subprocess.run(["umount", "-l", str(mountpoint)], check=True)


def _big_table(pg_admin, db):
    # random text does not compress: about 2 MB stored
    pg_admin.execute(
        db,
        "CREATE TABLE t AS SELECT g, md5(random()::text) || md5(random()::text) AS v "
        "FROM generate_series(1, 30000) g",
    )


def test_full_storage_fails_clearly_without_retry_and_leaves_no_backup(
    env, pg_db, pg_admin, tiny_disk
):
    db = pg_db()
    _big_table(pg_admin, db)
    storage = f"tiny-{uuid.uuid4().hex[:8]}"
    LocalBackupStorage(path=str(tiny_disk / "backups"), **env.signing_fields()).save(storage)
    result = env.cli("backup", env.pg, "-d", db, "--json", "--storage", storage)
    assert result.exit_code in (1, 2)  # 1 when the small users backup still fitted
    [outcome] = [d for d in json.loads(result.stdout)["databases"] if d["database"] == db]
    assert "is full" in outcome["error"] and "free space" in outcome["error"]
    assert "Retry" not in result.output  # a full disk is not retried
    leftovers = [p for p in (tiny_disk / "backups").rglob("*") if p.is_file()]
    assert [p for p in leftovers if "_globals" not in p.parts] == []


def test_full_work_dir_fails_clearly_and_removes_the_spool(
    env, pg_db, pg_admin, tiny_disk, monkeypatch
):
    db = pg_db()
    _big_table(pg_admin, db)
    monkeypatch.setenv("DBBACKUP_WORK_DIR", str(tiny_disk))
    result = env.cli("backup", env.pg, "-d", db, "--json")
    assert result.exit_code in (1, 2)  # 1 when the small users backup still fitted
    [outcome] = [d for d in json.loads(result.stdout)["databases"] if d["database"] == db]
    assert "work dir" in outcome["error"] and "DBBACKUP_WORK_DIR" in outcome["error"]
    assert list(tiny_disk.iterdir()) == []
    assert not list((env.storage_path / env.pg / db).rglob("manifest.json"))
