"""Retention guarantees on stored backups: the newest verified backup survives any policy,
and prune (and its garbage collection) deletes only names dbbackup writes."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from prefect_dbbackup.blocks import PostgresServer
from prefect_dbbackup.blocks.registry import load_storage
from prefect_dbbackup.flows.verify import VerifyRunFailed, verify_backups
from prefect_dbbackup.tasks.layout import VERIFIED_NAME, new_backup_id
from prefect_dbbackup.tasks.prune import OWN_NAMES

from tests.helpers import plant_manifest


def _server(policy: dict) -> str:
    name = f"pg-keep-{uuid.uuid4().hex[:6]}"
    PostgresServer(host="127.0.0.1", user="postgres", retention=policy, backup_users=False).save(
        name
    )
    return name


def _backup_ids(env, server: str, db: str) -> list[str]:
    return [b["backup_id"] for b in json.loads(env.cli("list", server, "-d", db, "--json").stdout)]


def test_the_newest_verified_backup_survives_keep_last_1_and_a_corrupted_newer_one(
    any_env, pg_db, pg_admin, cleanup_pg
):
    env = any_env
    server = _server({"keep_last": 1})
    storage = load_storage(env.storage)
    db = pg_db()
    pg_admin.execute(db, "CREATE TABLE t AS SELECT g FROM generate_series(1, 100) g")
    assert env.cli("backup", server, "-d", db).exit_code == 0
    [verified] = _backup_ids(env, server, db)
    verify_backups(server=server, storage=env.storage, encryption=env.encryption, databases=[db])
    marker = json.loads(storage.get_bytes(f"{server}/{db}/{verified}/{VERIFIED_NAME}"))
    assert marker["backup_id"] == verified and marker["checked"] == "row counts"

    # a newer backup, damaged in storage: verify fails and records nothing
    pg_admin.execute(db, "INSERT INTO t SELECT g FROM generate_series(101, 150) g")
    assert env.cli("backup", server, "-d", db).exit_code == 0
    damaged = max(_backup_ids(env, server, db))
    key = f"{server}/{db}/{damaged}/dump.pgc.zst.age"
    data = bytearray(storage.get_bytes(key))
    data[len(data) // 2] ^= 0x01
    storage.put_bytes(key, bytes(data))
    with pytest.raises(VerifyRunFailed):
        verify_backups(
            server=server, storage=env.storage, encryption=env.encryption, databases=[db]
        )
    assert not storage.exists(f"{server}/{db}/{damaged}/{VERIFIED_NAME}")

    # more runs with keep_last: 1: the verified backup stays, the damaged one goes
    for _ in range(2):
        assert env.cli("backup", server, "-d", db).exit_code == 0
    ids = _backup_ids(env, server, db)
    assert len(ids) == 2 and verified in ids and damaged not in ids
    shown = {d["backup_id"]: d for d in json.loads(env.cli("prune", server, "--json").stdout)}
    assert shown[verified]["reasons"] == ["newest verified"] and shown[verified]["verified"]

    target = db + "_verified"
    cleanup_pg.append(target)
    result = env.cli("restore", server, db, "--backup-id", verified, "--into", target)
    assert result.exit_code == 0, result.output
    assert pg_admin.query(target, "SELECT count(*), max(g) FROM t") == [(100, 100)]


def test_a_verify_record_copied_into_the_newest_backup_cannot_push_out_the_verified_one(
    any_env, pg_db, pg_admin, cleanup_pg, caplog
):
    env = any_env
    server = _server({"keep_last": 1})
    storage = load_storage(env.storage)
    db = pg_db()
    pg_admin.execute(db, "CREATE TABLE t AS SELECT g FROM generate_series(1, 100) g")
    assert env.cli("backup", server, "-d", db).exit_code == 0
    [verified] = _backup_ids(env, server, db)
    verify_backups(server=server, storage=env.storage, encryption=env.encryption, databases=[db])
    snapshot = pg_admin.table_fingerprints(db)

    # a newer backup, never verified; someone who can write the storage copies the verified
    # backup's record (with its signature, if any) into it
    pg_admin.execute(db, "DELETE FROM t WHERE g > 10")
    assert env.cli("backup", server, "-d", db).exit_code == 0
    newest = max(_backup_ids(env, server, db))
    for key in storage.list_keys(f"{server}/{db}/{verified}/"):
        if key.rsplit("/", 1)[1].startswith(VERIFIED_NAME):
            storage.put_bytes(key.replace(verified, newest), storage.get_bytes(key))

    result = env.cli("prune", server, "--json")
    assert result.exit_code == 0, result.output
    shown = {d["backup_id"]: d for d in json.loads(result.stdout)}
    assert shown[verified]["outcome"] == "kept" and shown[verified]["verified"]
    assert shown[verified]["reasons"] == ["newest verified"]
    assert shown[newest]["reasons"] == ["newest", "last"] and not shown[newest]["verified"]
    assert f"ignoring verify record {server}/{db}/{newest}/{VERIFIED_NAME}" in caplog.text
    assert "backup_id, sha256, manifest_sha256 do not match this backup" in caplog.text

    target = db + "_verified"
    cleanup_pg.append(target)
    result = env.cli("restore", server, db, "--backup-id", verified, "--into", target)
    assert result.exit_code == 0, result.output
    assert pg_admin.table_fingerprints(target) == snapshot


def test_prune_leaves_files_it_did_not_write_and_reports_them(any_env):
    env = any_env
    server = _server({"keep_last": 1})
    storage = load_storage(env.storage)
    now = datetime.now(UTC)
    mine = f"{server}/shop/20200101T000000Z-manual/my-own-copy.sql"
    storage.put_bytes(mine, b"the operator's own copy")
    old = new_backup_id(now - timedelta(days=40))
    newest = new_backup_id(now - timedelta(days=1))
    for backup_id in (old, newest):
        storage.put_bytes(f"{server}/shop/{backup_id}/dump.pgc.zst.age", b"x")
        plant_manifest(storage, server, "shop", backup_id)
    storage.put_bytes(f"{server}/shop/{old}/README.txt", b"{}")

    result = env.cli("prune", server, "--json")
    assert result.exit_code == 0, result.output
    shown = {d["backup_id"]: d for d in json.loads(result.stdout)}
    assert shown["20200101T000000Z-manual"]["foreign"] == [mine]
    assert shown["20200101T000000Z-manual"]["outcome"] == "left alone"
    assert shown[old]["outcome"] == "removed"
    assert shown[old]["foreign"] == [f"{server}/shop/{old}/README.txt"]
    assert storage.list_keys(f"{server}/") == sorted(
        [
            mine,
            f"{server}/shop/{newest}/dump.pgc.zst.age",
            f"{server}/shop/{newest}/manifest.json",
            f"{server}/shop/{newest}/manifest.json.sig",
            f"{server}/shop/{old}/README.txt",
        ]
    )
    assert storage.get_bytes(mine) == b"the operator's own copy"


def test_s3_garbage_collection_aborts_only_uploads_of_our_names(s3_env, s3_server):
    storage = load_storage(s3_env.storage)
    client = s3_server.client()
    keys = {
        name: storage._full(f"srv/db/20200101T000000Z-0a0a/{name}")
        for name in ("dump.pgc.zst.age", "my-own-copy.sql")
    }
    for full in keys.values():
        client.create_multipart_upload(Bucket=s3_env.bucket, Key=full)
    aborted = storage.collect_garbage("srv/", datetime.now(UTC) + timedelta(days=1), OWN_NAMES)
    assert aborted == [keys["dump.pgc.zst.age"]]
    assert s3_server.incomplete_uploads(s3_env.bucket, storage._base()) == [keys["my-own-copy.sql"]]
