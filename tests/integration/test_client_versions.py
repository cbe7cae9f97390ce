"""A dump client older than the server is refused before anything runs."""

from __future__ import annotations

import uuid

from prefect_dbbackup.blocks import MySQLServer, PostgresServer


def _fake_client(directory, name: str, version_line: str) -> None:
    directory.mkdir(exist_ok=True)
    path = directory / name
    path.write_text(f"#!/bin/sh\necho '{version_line}'\n")
    path.chmod(0o755)


def test_pg_dump_older_than_the_server_is_refused(env, pg_db, tmp_path):
    db = pg_db()
    _fake_client(tmp_path / "bin", "pg_dump", "pg_dump (PostgreSQL) 9.6.24")
    name = f"old-pg-{uuid.uuid4().hex[:8]}"
    PostgresServer(
        host="127.0.0.1", user="postgres", bin_dir=str(tmp_path / "bin"), backup_users=False
    ).save(name)
    result = env.cli("backup", name, "-d", db)
    assert result.exit_code == 3  # refused before any dump: the configuration must change
    assert "pg_dump cannot dump a newer server" in result.output
    assert "version 9" in result.output
    assert not list(env.storage_path.rglob("manifest.json"))


def test_mariadb_dump_older_than_the_server_is_refused(env, my_db, tmp_path):
    db = my_db()
    _fake_client(
        tmp_path / "bin", "mariadb-dump", "mariadb-dump  Ver 10.19 Distrib 10.3.39-MariaDB, for x"
    )
    name = f"old-my-{uuid.uuid4().hex[:8]}"
    MySQLServer(
        host="127.0.0.1", user="root", bin_dir=str(tmp_path / "bin"), backup_users=False
    ).save(name)
    result = env.cli("backup", name, "-d", db)
    assert result.exit_code == 2
    assert "is older than the server" in result.output
    assert not list(env.storage_path.rglob("manifest.json"))


def test_the_manifest_records_client_server_and_options(env, pg_db):
    import json

    db = pg_db()
    assert env.cli("backup", env.pg, "-d", db).exit_code == 0
    [path] = [p for p in env.storage_path.rglob("manifest.json") if "_globals" not in p.parts]
    manifest = json.loads(path.read_text())
    assert manifest["client"] == "pg_dump"
    assert manifest["client_version"].startswith("pg_dump (PostgreSQL) ")
    assert (
        manifest["server_version"].split(".")[0]
        == manifest["client_version"].split()[2].split(".")[0]
    )
    assert manifest["dump_options"] == ["--format=custom", "--compress=0"]
    assert manifest["stats"]["stored_bytes"] == path.with_name("dump.pgc.zst.age").stat().st_size
    assert manifest["create_options"]["encoding"] == "UTF8"
