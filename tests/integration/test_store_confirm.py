"""Upload confirmation: a byte damaged in transit is caught before any manifest is written.

The S3 tests go through tests/faulty_s3.py, a proxy in front of the real SeaweedFS server
that flips one byte of uploaded dump data, with `checksum: none` (so no checksum header
protects the body): the block must compare what the store holds with what it sent.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import pytest
from prefect_dbbackup.blocks.errors import IntegrityError, StorageError
from prefect_dbbackup.blocks.s3 import MiB, S3BackupStorage

from tests.faulty_s3 import FaultyS3
from tests.s3server import ACCESS_KEY, SECRET_KEY


@pytest.fixture
def proxy(s3_server):
    with FaultyS3(s3_server.endpoint) as p:
        yield p


def _storage(s3_server, endpoint: str, **fields) -> S3BackupStorage:
    from prefect_aws import AwsCredentials

    bucket = s3_server.make_bucket("dbb-tests")
    return S3BackupStorage(
        bucket=bucket,
        prefix=f"confirm-{uuid.uuid4().hex[:8]}",
        region="us-east-1",
        endpoint_url=endpoint,
        path_style=True,
        credentials=AwsCredentials(aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY),
        max_attempts=1,
        **fields,
    )


def _file(tmp_path: Path, size: int) -> tuple[Path, bytes]:
    data = os.urandom(size)
    path = tmp_path / f"spool-{size}.age"
    path.write_bytes(data)
    return path, data


SIZES = [pytest.param(3 * MiB, id="single-part"), pytest.param(9 * MiB + 5, id="multipart")]


@pytest.mark.parametrize("size", SIZES)
def test_the_proxy_really_damages_uploads_that_s3_accepts(s3_server, proxy, tmp_path, size):
    """Without confirmation the store keeps the damaged bytes and says nothing."""
    source, data = _file(tmp_path, size)
    storage = _storage(s3_server, proxy.endpoint, checksum="none")
    proxy.flips = 1
    storage.client.upload_file(str(source), storage.bucket, storage._full("x/dump.pgc.zst.age"))
    assert proxy.flipped
    stored = (
        s3_server.client()
        .get_object(Bucket=storage.bucket, Key=storage._full("x/dump.pgc.zst.age"))["Body"]
        .read()
    )
    assert len(stored) == len(data) and stored != data


@pytest.mark.parametrize("confirm", ["etag", "read-back"])
@pytest.mark.parametrize("size", SIZES)
def test_a_damaged_upload_is_deleted_and_refused_then_a_clean_one_passes(
    s3_server, proxy, tmp_path, size, confirm
):
    source, data = _file(tmp_path, size)
    storage = _storage(s3_server, proxy.endpoint, checksum="none", confirm_upload=confirm)
    key = "srv/db/20261127T000000Z-0a0a/dump.pgc.zst.age"
    sha = hashlib.sha256(data).hexdigest()
    proxy.flips = 1
    with pytest.raises(StorageError, match="is not what was sent") as caught:
        storage.put_file(key, source, sha)
    assert caught.value.retryable and key in str(caught.value)
    assert storage.list_keys("srv/") == []  # the damaged object is gone
    assert s3_server.incomplete_uploads(storage.bucket, storage._base()) == []

    proxy.requests.clear()
    storage.put_file(key, source, sha)  # the fault was transient: the retry stores it
    reads = [path for method, path in proxy.requests if method == "GET" and key in path]
    assert bool(reads) == (confirm == "read-back")  # with etag, the ETag alone confirmed it
    assert storage.get_bytes(key) == data


def test_a_damaged_manifest_write_is_refused(s3_server, proxy):
    storage = _storage(s3_server, proxy.endpoint, checksum="none")
    proxy.flips = 1
    key = "srv/db/20261127T000000Z-0a0a/dump.sql.zst.age"  # put_bytes of a small object
    with pytest.raises(StorageError, match="is not what was sent"):
        storage.put_bytes(key, b"0123456789" * 100)
    assert storage.list_keys("srv/") == []


def test_a_spool_damaged_on_the_worker_is_refused_before_upload(s3_server, tmp_path, any_store):
    source, data = _file(tmp_path, 2 * MiB)
    wrong = hashlib.sha256(data + b"!").hexdigest()
    storage = any_store(s3_server, tmp_path)
    with pytest.raises(IntegrityError, match="no longer has the sha256"):
        storage.put_file("srv/db/20261127T000000Z-0a0a/dump.pgc.zst.age", source, wrong)
    assert storage.list_keys("srv/") == []


@pytest.fixture(params=["local", "s3"])
def any_store(request):
    from prefect_dbbackup.blocks.local_storage import LocalBackupStorage

    def make(s3_server, tmp_path: Path):
        if request.param == "s3":
            return _storage(s3_server, s3_server.endpoint)
        return LocalBackupStorage(path=str(tmp_path / "store"))

    return make


class _Via:
    """The S3 server as the backup worker sees it: through the proxy."""

    def __init__(self, server, endpoint: str) -> None:
        self.server, self.endpoint = server, endpoint

    def make_bucket(self, name: str, **kwargs) -> str:
        return self.server.make_bucket(name, **kwargs)


@pytest.fixture
def quick_upload_retries(monkeypatch):
    """The real upload and its 3 retries, without the 2/10/30 s waits."""
    from prefect_dbbackup.tasks import backup as backup_tasks

    monkeypatch.setattr(backup_tasks, "UPLOAD_RETRY_DELAYS", (0, 0, 0))


def test_backup_through_a_damaging_proxy_never_publishes_a_damaged_backup(
    env, s3_server, proxy, pg_db, pg_admin, cleanup_pg, quick_upload_retries
):
    import json

    from prefect_dbbackup.blocks import PostgresServer

    s3 = env.use_s3(_Via(s3_server, proxy.endpoint), checksum="none")
    server = f"pg-transit-{uuid.uuid4().hex[:6]}"
    PostgresServer(host="127.0.0.1", user="postgres", backup_users=False).save(server)
    db = pg_db()
    pg_admin.execute(
        db, "CREATE TABLE t AS SELECT g, md5(g::text) AS h FROM generate_series(1, 5000) g"
    )

    # a transient fault: the first upload is damaged, caught, and the retry stores it
    proxy.flips = 1
    first = s3.cli("backup", server, "-d", db)
    assert first.exit_code == 0, first.output
    assert len(proxy.flipped) == 1
    [good] = json.loads(s3.cli("list", server, "-d", db, "--json").stdout)

    # a persistent fault: every attempt is damaged; the run fails and names the object
    pg_admin.execute(db, "INSERT INTO t VALUES (0, 'only in the failed run')")
    proxy.flips = 100
    second = s3.cli("backup", server, "-d", db)
    assert second.exit_code == 2, second.output
    assert "is not what was sent" in second.output and f"/{db}/" in second.output
    # the upload was tried 4 times (3 retries inside the task); the task did not run
    # again (dumping again cannot fix the storage, and would have sent 4 more)
    assert len(proxy.flipped) == 1 + 4
    assert json.loads(s3.cli("list", server, "-d", db, "--json").stdout) == [good]
    prefix = f"{s3.s3_prefix}{server}/{db}/"
    stored = s3_server.client().list_objects_v2(Bucket=s3.bucket, Prefix=prefix)
    # object, signature, manifest: all of the good run, nothing of the failed one
    assert [o["Key"].split("/")[3] for o in stored["Contents"]] == [good["backup_id"]] * 3

    # what exists still restores, with the data of the good run
    proxy.flips = 0
    target = db + "_r"
    cleanup_pg.append(target)
    restored = s3.cli("restore", server, db, "--into", target)
    assert restored.exit_code == 0, restored.output
    assert pg_admin.query(target, "SELECT count(*) FROM t") == [(5000,)]
