"""Deduplicated storage under faults: a chunk flipped, planted or missing, a manifest naming
a chunk that does not exist, the store down or full mid-backup, a wrong identity. Each
fails with an error naming what is wrong, and loses nothing that was stored before."""

from __future__ import annotations

import json
import uuid

import pyrage
import pytest
import zstandard
from prefect_aws import AwsCredentials
from prefect_dbbackup.blocks import LocalBackupStorage, S3BackupStorage
from prefect_dbbackup.blocks.registry import load_storage
from prefect_dbbackup.blocks.storage_keys import new_dedup_key
from prefect_dbbackup.flows import backup as backup_flow
from prefect_dbbackup.tasks import backup as backup_tasks
from prefect_dbbackup.tasks.catalog import list_backups
from prefect_dbbackup.tasks.dedup.layout import CHUNKS

from tests.faulty_s3 import FaultyS3
from tests.s3server import ACCESS_KEY, SECRET_KEY


def _table(name: str = "t", rows: int = 40000) -> str:
    """SQL creating table `name` with poorly compressible rows (40,000: ~3 MB, a few chunks)."""
    return (
        f"CREATE TABLE {name} (id int PRIMARY KEY, v text);"
        f"INSERT INTO {name} SELECT g, md5(g::text) || md5(random()::text)"
        f" FROM generate_series(1, {rows}) g;"
    )


TABLE = _table()


@pytest.fixture
def quick_retries(monkeypatch):
    """The real retries without their waits."""
    monkeypatch.setattr(
        backup_flow, "backup_task", backup_tasks.backup_task.with_options(retry_delay_seconds=0)
    )
    monkeypatch.setattr(backup_tasks, "UPLOAD_RETRY_DELAYS", (0, 0))


def _backed_up(env, pg_db, pg_admin):  # noqa: ANN001, ANN202
    db = pg_db()
    pg_admin.execute(db, TABLE)
    result = env.cli("backup", env.pg, "--database", db)
    assert result.exit_code == 0, result.output
    storage = load_storage(env.storage)
    (manifest,) = list_backups(storage, env.pg, db)
    return db, storage, manifest


def _dedup_s3_behind(proxy, s3_server, env, tag: str, **fields: object) -> str:  # noqa: ANN001
    """A deduplicating S3 storage block reached through the fault proxy; its name."""
    name = f"{tag}-{uuid.uuid4().hex[:8]}"
    S3BackupStorage(
        bucket=s3_server.make_bucket("dbb-tests"),
        prefix=name,
        region="us-east-1",
        endpoint_url=proxy.endpoint,
        path_style=True,
        credentials=AwsCredentials(aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY),
        dedup=True,
        dedup_key=new_dedup_key(),
        **env.signing_fields(),
        **fields,
    ).save(name)
    return name


def _chunk_path(env, cid: str):  # noqa: ANN001, ANN202
    (path,) = (env.storage_path / CHUNKS).rglob(cid)
    return path


def _restore_fails(env, pg_admin, cleanup_pg, db: str, *words: str) -> str:  # noqa: ANN001
    target = db + "_r"
    cleanup_pg.append(target)
    result = env.cli("restore", env.pg, db, "--into", target)
    assert result.exit_code != 0
    for word in words:
        assert word in result.output, result.output
    assert not pg_admin.exists(target)  # a partial restore is dropped
    return result.output


def test_a_flipped_chunk_fails_the_restore_naming_it(env, pg_db, pg_admin, cleanup_pg):
    env = env.with_dedup()
    db, _, manifest = _backed_up(env, pg_db, pg_admin)
    cid = manifest.chunks.order[1][0]
    path = _chunk_path(env, cid)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    _restore_fails(env, pg_admin, cleanup_pg, db, f"chunk {cid} is damaged", manifest.backup_id)


def test_a_planted_chunk_encrypted_to_the_public_recipient_is_refused(
    env, pg_db, pg_admin, cleanup_pg, recipient
):
    """Anyone can encrypt to the public recipients; the keyed id catches the swap."""
    env = env.with_dedup()
    db, _, manifest = _backed_up(env, pg_db, pg_admin)
    cid, length = manifest.chunks.order[0]
    fake = zstandard.ZstdCompressor().compress(b"x" * length)
    _chunk_path(env, cid).write_bytes(
        pyrage.encrypt(fake, [pyrage.x25519.Recipient.from_str(recipient)])
    )
    _restore_fails(env, pg_admin, cleanup_pg, db, f"chunk {cid} is damaged", "does not match")


def test_a_manifest_naming_a_missing_chunk_fails_before_the_target_is_kept(
    env, pg_db, pg_admin, cleanup_pg
):
    env = env.with_dedup()
    db, storage, manifest = _backed_up(env, pg_db, pg_admin)
    (path,) = (env.storage_path / env.pg / db).rglob("manifest.json")
    document = json.loads(path.read_text())
    missing = "ab" * 32
    document["chunks"]["order"][-1][0] = missing
    path.write_text(json.dumps(document))
    env.resign(path)  # signed by a writer: only the chunk is wrong
    _restore_fails(env, pg_admin, cleanup_pg, db, f"chunk {missing} is missing")


def test_a_wrong_identity_fails_before_anything_is_read(env, pg_db, pg_admin, cleanup_pg, tmp_path):
    env = env.with_dedup()
    db, _, _ = _backed_up(env, pg_db, pg_admin)
    other = tmp_path / "other.key"
    other.write_text(str(pyrage.x25519.Identity.generate()) + "\n")
    target = db + "_r"
    cleanup_pg.append(target)
    result = env.cli("restore", env.pg, db, "--into", target, "--identity-file", str(other))
    assert result.exit_code != 0
    assert "cannot be decrypted with this identity" in result.output
    assert not pg_admin.exists(target)


def test_a_full_storage_fails_the_backup_and_keeps_the_earlier_one(
    env, pg_db, pg_admin, cleanup_pg, tiny_disk, quick_retries
):
    """A real ENOSPC mid-backup: no manifest, the earlier backup still restores."""
    db = pg_db()
    pg_admin.execute(db, "CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g")
    name = f"tiny-{uuid.uuid4().hex[:8]}"
    LocalBackupStorage(
        path=str(tiny_disk / "b"), dedup=True, dedup_key=new_dedup_key(), **env.signing_fields()
    ).save(name)
    assert env.cli("backup", env.pg, "-d", db, "--storage", name).exit_code == 0
    before = pg_admin.table_fingerprints(db)
    pg_admin.execute(db, _table("big"))  # ~2 MB stored
    result = env.cli("backup", env.pg, "-d", db, "--storage", name)
    assert result.exit_code == 2, result.output
    assert "is full" in result.output
    (only,) = list_backups(load_storage(name), env.pg, db)  # the earlier one, untouched
    target = db + "_r"
    cleanup_pg.append(target)
    result = env.cli("restore", env.pg, db, "--into", target, "--storage", name)
    assert result.exit_code == 0, result.output
    assert pg_admin.table_fingerprints(target) == before


def test_s3_down_mid_backup_fails_without_a_manifest_and_a_rerun_completes(
    env, s3_server, pg_db, pg_admin, cleanup_pg, quick_retries
):
    """Through the fault proxy: after a few chunks every PUT gets 503. The backup fails
    naming the store, writes no manifest; once the store is back, a rerun stores the rest
    (the chunks that made it are reused) and restores equal."""
    db = pg_db()
    pg_admin.execute(db, _table(rows=200_000))  # ~16 chunks
    with FaultyS3(s3_server.endpoint) as proxy:
        name = _dedup_s3_behind(proxy, s3_server, env, "s3down", max_attempts=2)
        proxy.puts_before_down = 6  # the key copy, the users backup, a few chunks
        result = env.cli("backup", env.pg, "-d", db, "--storage", name, "--json")
        assert result.exit_code == 2, result.output
        (row,) = [r for r in json.loads(result.stdout)["databases"] if r["database"] == db]
        assert "503" in row["error"] or "Unavailable" in row["error"], row["error"]
        assert proxy.refused > 0
        storage = load_storage(name)
        assert list_backups(storage, env.pg, db) == []
        landed = {key.rsplit("/", 1)[1] for key in storage.list_keys(CHUNKS)}
        assert landed  # some chunks were stored before the store went down
        proxy.puts_before_down = None
        result = env.cli("backup", env.pg, "-d", db, "--storage", name)
        assert result.exit_code == 0, result.output
        (manifest,) = list_backups(storage, env.pg, db)
        ids = {cid for cid, _ in manifest.chunks.order}
        # what made it is not sent again (the first chunk holds pg_dump's timestamp)
        assert manifest.chunks.reused == len(ids & landed) >= len(landed) - 1
        assert manifest.chunks.new == len(ids - landed)
        target = db + "_r"
        cleanup_pg.append(target)
        result = env.cli("restore", env.pg, db, "--into", target, "--storage", name)
        assert result.exit_code == 0, result.output
        assert pg_admin.table_fingerprints(target) == pg_admin.table_fingerprints(db)


def test_chunks_damaged_on_the_way_to_s3_are_sent_again(
    env, s3_server, pg_db, pg_admin, cleanup_pg
):
    """A chunk damaged in transit is caught by the upload's ETag check and sent again."""
    db = pg_db()
    pg_admin.execute(db, TABLE)
    with FaultyS3(s3_server.endpoint) as proxy:
        # checksum none: so that S3 itself accepts the damaged bodies
        name = _dedup_s3_behind(proxy, s3_server, env, "s3flip", checksum="none")
        proxy.flips = 2
        result = env.cli("backup", env.pg, "-d", db, "--storage", name)
        assert result.exit_code == 0, result.output
        assert len(proxy.flipped) == 2
        target = db + "_r"
        cleanup_pg.append(target)
        result = env.cli("restore", env.pg, db, "--into", target, "--storage", name)
        assert result.exit_code == 0, result.output
        assert pg_admin.table_fingerprints(target) == pg_admin.table_fingerprints(db)


def test_a_dump_that_fails_midway_writes_no_manifest(env, my_db, my_admin):
    """mariadb-dump exits non-zero after some output: the chunks it made name no backup."""
    env = env.with_dedup()
    db = my_db()
    my_admin.execute(
        db,
        "CREATE TABLE a (id int PRIMARY KEY, v text)",
        "INSERT INTO a SELECT seq, md5(seq) FROM seq_1_to_20000",
        "CREATE TABLE gone (x INT)",
        "CREATE VIEW v AS SELECT x FROM gone",
        "DROP TABLE gone",
    )
    result = env.cli("backup", env.my, "--database", db)
    assert result.exit_code == 2, result.output
    assert "mariadb-dump exited 2" in result.output
    assert list_backups(load_storage(env.storage), env.my, db) == []
