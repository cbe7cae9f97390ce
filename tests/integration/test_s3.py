"""S3 storage against a real S3 server (SeaweedFS): multipart, credentials, outage, object lock."""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from prefect_dbbackup.blocks import PostgresServer
from prefect_dbbackup.blocks.registry import load_storage
from prefect_dbbackup.blocks.s3 import MAX_PARTS, MIN_PART_SIZE, part_size

from tests.s3server import ACCESS_KEY, SECRET_KEY, SeaweedFS

# ~40 MB of incompressible bytea: more than one 8 MiB part once stored
BIG_TABLE = (
    "CREATE TABLE big AS SELECT g, decode(md5(g::text) || md5((g * 7)::text), 'hex') AS b "
    "FROM generate_series(1, {rows}) g"
)


@pytest.mark.parametrize("size", [0, 1, MIN_PART_SIZE * MAX_PARTS, 5 * 2**40, 5 * 2**40 - 1])
def test_part_size_fits_any_object_up_to_5_tib_in_10000_parts(size):
    part = part_size(size)
    assert part >= MIN_PART_SIZE and part % 2**20 == 0
    assert -(-size // part) <= MAX_PARTS
    assert part <= 5 * 2**30  # S3's largest part


def test_multipart_backup_restores_equal(s3_env, s3_server, pg_db, pg_admin, cleanup_pg):
    env = s3_env
    db = pg_db()
    pg_admin.execute(db, BIG_TABLE.format(rows=1_000_000))
    result = env.cli("backup", env.pg, "-d", db, "--json")
    assert result.exit_code == 0, result.output
    key = next(o["key"] for o in json.loads(result.stdout)["databases"] if o["database"] == db)
    head = s3_server.client().head_object(Bucket=env.bucket, Key=env.s3_prefix + key)
    assert head["ContentLength"] > MIN_PART_SIZE
    assert "-" in head["ETag"]  # a multipart ETag is "<md5 of part md5s>-<part count>"
    assert s3_server.incomplete_uploads(env.bucket, env.s3_prefix) == []

    target = db + "_s3"
    cleanup_pg.append(target)
    result = env.cli("restore", env.pg, db, "--into", target)
    assert result.exit_code == 0, result.output
    assert pg_admin.table_fingerprints(target) == pg_admin.table_fingerprints(db)


def test_wrong_credentials_exit_4_and_store_nothing(env, s3_server, pg_db, pg_admin):
    bad = env.use_s3(s3_server, secret="not-the-secret")
    db = pg_db()
    pg_admin.execute(db, "CREATE TABLE t (id int)")
    result = bad.cli("backup", bad.pg, "-d", db)
    assert result.exit_code == 4, result.output
    assert "S3 refused to access" in result.output and "check the access key" in result.output
    assert "not-the-secret" not in result.output and SECRET_KEY not in result.output
    listed = bad.cli("list", bad.pg)
    assert listed.exit_code == 4, listed.output
    found = s3_server.client().list_objects_v2(Bucket=bad.bucket, Prefix=bad.s3_prefix)
    assert found.get("KeyCount") == 0


def test_missing_bucket_is_a_configuration_error(env, s3_server):
    from prefect_dbbackup.blocks import S3BackupStorage

    name = f"s3-nobucket-{uuid.uuid4().hex[:6]}"
    S3BackupStorage(
        bucket="no-such-bucket-here",
        endpoint_url=s3_server.endpoint,
        region="us-east-1",
        path_style=True,
        credentials=load_storage(env.use_s3(s3_server).storage).credentials,
    ).save(name)
    result = env.cli("list", env.pg, "--storage", name)
    assert result.exit_code == 3, result.output
    assert "bucket 'no-such-bucket-here' does not exist" in result.output


def _stop_when_upload_starts(server: SeaweedFS, bucket: str, stopped: threading.Event) -> None:
    client = server.client()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if client.list_multipart_uploads(Bucket=bucket).get("Uploads"):
            server.stop()
            stopped.set()
            return
        time.sleep(0.02)


@pytest.mark.slow
def test_store_down_mid_upload_leaves_no_backup_and_a_later_run_succeeds(
    env, tmp_path, pg_db, pg_admin, cleanup_pg, monkeypatch
):
    """The S3 server dies during the multipart upload and stays down while the upload task
    retries: the run fails, no manifest exists, and once the store is back the next run's
    prune aborts the half upload and its backup restores."""
    from prefect_dbbackup.tasks import backup as backup_tasks

    # the real upload and its 3 retries, 1 s apart instead of 2, 10 and 30 s
    monkeypatch.setattr(backup_tasks, "UPLOAD_RETRY_DELAYS", (1, 1, 1))
    server = SeaweedFS(tmp_path / "s3")
    server.start_on_free_ports()
    try:
        s3 = env.use_s3(server, max_attempts=2, connect_timeout=2, max_concurrency=1)
        name = f"pg-outage-{uuid.uuid4().hex[:6]}"
        # grace 0: the test cannot wait 24 h for the half upload to count as garbage
        PostgresServer(
            host="127.0.0.1", user="postgres", retention={"keep_last": 5, "garbage_grace_hours": 0}
        ).save(name)
        db = pg_db()
        pg_admin.execute(db, BIG_TABLE.format(rows=1_500_000))
        stopped = threading.Event()
        watcher = threading.Thread(
            target=_stop_when_upload_starts, args=(server, s3.bucket, stopped), daemon=True
        )
        watcher.start()
        result = s3.cli("backup", name, "-d", db)
        watcher.join()
        assert stopped.is_set()
        assert result.exit_code == 2, result.output
        assert "Is the S3 endpoint reachable?" in result.output

        server.start()
        prefix = f"{s3.s3_prefix}{name}/{db}/"
        objects = server.client().list_objects_v2(Bucket=s3.bucket, Prefix=prefix)
        assert not [o["Key"] for o in objects.get("Contents", []) if "manifest" in o["Key"]]
        assert json.loads(s3.cli("list", name, "-d", db, "--json").stdout) == []

        result = s3.cli("backup", name, "-d", db)
        assert result.exit_code == 0, result.output
        assert server.incomplete_uploads(s3.bucket) == []
        target = db + "_after_outage"
        cleanup_pg.append(target)
        assert s3.cli("restore", name, db, "--into", target).exit_code == 0
        assert pg_admin.table_fingerprints(target) == pg_admin.table_fingerprints(db)
    finally:
        server.stop()


def test_object_lock_keeps_prune_from_deleting_and_prune_says_so(env, s3_server, pg_db, pg_admin):
    locked = env.use_s3(
        s3_server, object_lock=True, object_lock_mode="COMPLIANCE", object_lock_days=1
    )
    name = f"pg-lock-{uuid.uuid4().hex[:6]}"
    PostgresServer(host="127.0.0.1", user="postgres").save(name)
    db = pg_db()
    pg_admin.execute(db, "CREATE TABLE t AS SELECT g FROM generate_series(1, 10) g")
    for _ in range(2):
        assert locked.cli("backup", name, "-d", db).exit_code == 0
    PostgresServer(host="127.0.0.1", user="postgres", retention={"keep_last": 1}).save(
        name, overwrite=True
    )
    result = locked.cli("prune", name, "--json")
    assert result.exit_code == 0, result.output
    removed = [d for d in json.loads(result.stdout) if not d["keep"] and d["database"] == db]
    assert len(removed) == 1
    assert (
        removed[0]["outcome"].startswith("locked: ")
        and "object lock until" in removed[0]["outcome"]
    )
    assert len(json.loads(locked.cli("list", name, "-d", db, "--json").stdout)) == 2
    text = locked.cli("prune", name)
    assert text.exit_code == 0 and "[locked: " in text.stdout


def _bug(*args: object, **kwargs: object) -> None:
    raise TypeError("unexpected keyword argument 'Bukcet'")


BUG_PATHS = {
    "check": ("head_bucket", lambda s, tmp: s.check()),
    "put_bytes": ("put_object", lambda s, tmp: s.put_bytes("srv/db/1/manifest.json", b"{}")),
    "put_file": ("upload_file", lambda s, tmp: s.put_file("srv/db/1/x.age", tmp / "spool")),
    "confirm": ("head_object", lambda s, tmp: s.put_file("srv/db/1/x.age", tmp / "spool")),
    "get_bytes": ("get_object", lambda s, tmp: s.get_bytes("srv/db/1/stored.json")),
    "open_read": (
        "download_fileobj",
        lambda s, tmp: s.open_read("srv/db/1/stored.json", tmp).__enter__(),
    ),
    "list_keys": ("get_paginator", lambda s, tmp: s.list_keys("srv")),
    "exists": ("head_object", lambda s, tmp: s.exists("srv/db/1/stored.json")),
    "delete": ("delete_object", lambda s, tmp: s.delete("srv/db/1/stored.json")),
    "collect_garbage": (
        "abort_multipart_upload",
        lambda s, tmp: s.collect_garbage("srv", datetime.now(UTC) + timedelta(days=1), {"x.age"}),
    ),
}


@pytest.mark.parametrize("path", BUG_PATHS)
def test_a_bug_inside_the_s3_path_surfaces_as_itself_not_as_a_retryable_storage_error(
    s3_server, tmp_path, monkeypatch, path
):
    """A programming error (here a TypeError, forced with a stand-in for one boto3 call)
    is raised unchanged: never turned into 'is the S3 endpoint reachable?', never retried."""
    from prefect_aws import AwsCredentials
    from prefect_dbbackup.blocks import S3BackupStorage

    storage = S3BackupStorage(
        bucket=s3_server.make_bucket("dbb-tests"),
        prefix=f"bug-{uuid.uuid4().hex[:8]}",
        region="us-east-1",
        endpoint_url=s3_server.endpoint,
        path_style=True,
        credentials=AwsCredentials(aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY),
    )
    storage.put_bytes("srv/db/1/stored.json", b"{}")  # the real store, before the bug
    (tmp_path / "spool").write_bytes(b"spooled")
    # an upload left over for collect_garbage to reach its abort call
    storage.client.create_multipart_upload(Bucket=storage.bucket, Key=storage._full("srv/x.age"))
    method, call = BUG_PATHS[path]
    monkeypatch.setattr(storage.client, method, _bug)
    with pytest.raises(TypeError, match="Bukcet"):
        call(storage, tmp_path)


def test_clients_of_two_loaded_blocks_share_botocore_models_and_both_work(s3_env):
    """Each loaded block makes its own boto3 session; parsing botocore's JSON models again
    for each cost ~0.3 s of CPU a client. They share one loader, and each client still
    talks to the real server with its own settings."""
    first, second = load_storage(s3_env.storage), load_storage(s3_env.storage)
    assert first is not second and first.client is not second.client
    assert first.client._loader is second.client._loader
    first.put_bytes("shared/a", b"one")
    assert second.get_bytes("shared/a") == b"one"
    assert second.list_keys("shared") == ["shared/a"]
