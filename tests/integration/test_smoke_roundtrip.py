"""The simplest promise: what was backed up comes back equal, on both engines."""

from __future__ import annotations

import json


def test_postgres_backup_then_restore_into_new_name(any_env, pg_db, pg_admin, cleanup_pg):
    """On local storage and on a real S3 server."""
    env = any_env
    db = pg_db()
    pg_admin.execute(
        db,
        "CREATE TABLE t (id int PRIMARY KEY, v text);"
        "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 5000) g;",
    )
    result = env.cli("backup", env.pg, "--database", db, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [(d["database"], d["status"]) for d in report["databases"]] == [
        (db, "ok"),
        ("_globals", "ok"),  # the users/roles of the server, backed up with every run
    ]

    target = db + "_restored"
    cleanup_pg.append(target)
    result = env.cli("restore", env.pg, db, "--into", target)
    assert result.exit_code == 0, result.output
    assert pg_admin.table_fingerprints(target) == pg_admin.table_fingerprints(db)


def test_mysql_backup_then_restore_into_new_name(any_env, my_db, my_admin, cleanup_my):
    """On local storage and on a real S3 server."""
    env = any_env
    db = my_db()
    my_admin.execute(
        db,
        "CREATE TABLE t (id int PRIMARY KEY, v varchar(64))",
        "INSERT INTO t SELECT seq, md5(seq) FROM seq_1_to_5000",
    )
    result = env.cli("backup", env.my, "--database", db)
    assert result.exit_code == 0, result.output
    target = db + "_restored"
    cleanup_my.append(target)
    result = env.cli("restore", env.my, db, "--into", target)
    assert result.exit_code == 0, result.output
    assert my_admin.table_fingerprints(target) == my_admin.table_fingerprints(db)


def test_a_round_trip_on_memory_storage_loaded_by_name(env, pg_db, pg_admin, cleanup_pg):
    """The memory storage is a storage like the others: the CLI loads it by its block name,
    the backup lands in process memory, and the restore brings the same tables back."""
    from prefect_dbbackup.blocks.memory import MemoryBackupStorage
    from prefect_dbbackup.blocks.registry import load_storage

    env = env.in_memory()
    db = pg_db()
    pg_admin.execute(
        db,
        "CREATE TABLE t (id int PRIMARY KEY, v text);"
        "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 5000) g;",
    )
    assert env.cli("backup", env.pg, "-d", db).exit_code == 0
    storage = load_storage(env.storage)
    assert isinstance(storage, MemoryBackupStorage)
    assert any(k.endswith("/manifest.json") for k in storage.list_keys(f"{env.pg}/"))
    target = db + "_from_memory"
    cleanup_pg.append(target)
    result = env.cli("restore", env.pg, db, "--into", target)
    assert result.exit_code == 0, result.output
    assert pg_admin.table_fingerprints(target) == pg_admin.table_fingerprints(db)


def test_postgres_parallel_restore_with_jobs(
    env, pg_db, pg_admin, cleanup_pg, tmp_path, monkeypatch
):
    """--jobs decrypts into the private work dir, runs pg_restore -j, and leaves no plaintext."""
    workroot = tmp_path / "work"
    monkeypatch.setenv("DBBACKUP_WORK_DIR", str(workroot))
    db = pg_db()
    pg_admin.execute(
        db,
        "CREATE TABLE a AS SELECT g AS id FROM generate_series(1, 20000) g;"
        "CREATE TABLE b AS SELECT g AS id, md5(g::text) AS h FROM generate_series(1, 20000) g;"
        "CREATE INDEX ON a (id); CREATE INDEX ON b (h);",
    )
    assert env.cli("backup", env.pg, "-d", db).exit_code == 0
    target = db + "_parallel"
    cleanup_pg.append(target)
    result = env.cli("restore", env.pg, db, "--into", target, "--jobs", "2")
    assert result.exit_code == 0, result.output
    assert pg_admin.table_fingerprints(target) == pg_admin.table_fingerprints(db)
    assert list(workroot.iterdir()) == []


def test_jobs_is_refused_for_mysql(env, my_db, my_admin):
    env = env.in_memory()  # the kind of storage does not matter here
    db = my_db()
    my_admin.execute(db, "CREATE TABLE t (id int)")
    assert env.cli("backup", env.my, "-d", db).exit_code == 0
    result = env.cli("restore", env.my, db, "--into", db + "_j", "--jobs", "2")
    assert result.exit_code == 3
    assert "--jobs: mysql restores run one client, not in parallel" in result.stderr
    assert not my_admin.exists(db + "_j")


def test_restore_a_backup_of_another_server(env, pg_db, pg_admin, cleanup_pg):
    """Incident case: the original server is gone; its backups restore into a new server block."""
    import uuid

    from prefect_dbbackup.blocks import PostgresServer

    env = env.in_memory()  # the kind of storage does not matter here
    db = pg_db()
    pg_admin.execute(db, "CREATE TABLE t AS SELECT g FROM generate_series(1, 100) g")
    assert env.cli("backup", env.pg, "-d", db).exit_code == 0
    replacement = f"pg-new-{uuid.uuid4().hex[:8]}"
    PostgresServer(host="127.0.0.1", user="postgres").save(replacement)
    target = db + "_moved"
    cleanup_pg.append(target)
    result = env.cli(
        "restore", replacement, db, "--from-server", env.pg, "--into", target, "--json"
    )
    assert result.exit_code == 0, result.output
    assert pg_admin.table_fingerprints(target) == pg_admin.table_fingerprints(db)
    assert (
        env.cli("restore", replacement, db, "--into", target + "x").exit_code == 3
    )  # no own backups


def test_every_manifest_names_the_dbbackup_version_that_made_it(env, pg_db, pg_admin):
    """The version an operator reads in a manifest is the installed distribution's."""
    from importlib.metadata import version

    from prefect_dbbackup.tasks.layout import MANIFEST_NAME

    db = pg_db()
    pg_admin.execute(db, "CREATE TABLE t (id int)")
    assert env.cli("backup", env.pg, "-d", db).exit_code == 0
    manifests = sorted(env.storage_path.rglob(MANIFEST_NAME))
    assert len(manifests) == 2  # the database and the users/roles (_globals)
    for path in manifests:
        assert json.loads(path.read_text())["tool_version"] == version("prefect-dbbackup")
