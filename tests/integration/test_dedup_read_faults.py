"""Reads of a deduplicating S3 storage damaged on their way (a flaky proxy or NIC, through
the fault proxy): `check --read-data` reports a read fault and moves nothing, so every
backup still restores; a chunk the store itself holds damaged is still set aside, by a
copy inside the store (docs/dedup.md, "Checking a storage")."""

from __future__ import annotations

import json
import math

import pytest
from prefect_dbbackup.blocks.registry import load_storage
from prefect_dbbackup.tasks.catalog import list_backups
from prefect_dbbackup.tasks.dedup.layout import (
    CHUNKS,
    DAMAGED,
    chunk_key,
    damaged_key,
    recipient_set,
)

from tests.faulty_s3 import FaultyS3
from tests.integration.test_dedup_faults import _dedup_s3_behind

TABLE = (
    "CREATE TABLE t (id int PRIMARY KEY, v text);"
    "INSERT INTO t SELECT g, md5(g::text) || md5((g * 7)::text)"
    " FROM generate_series(1, 60000) g;"
)


def _backups(env, name: str, db: str):  # noqa: ANN001, ANN202
    """Two backups of db (unchanged: they share chunks) to storage `name`."""
    for _ in range(2):
        result = env.cli("backup", env.pg, "--database", db, "--storage", name)
        assert result.exit_code == 0, result.output
    storage = load_storage(name)
    return storage, list_backups(storage, env.pg, db)


def _check(env, name: str) -> tuple[int, dict, str]:  # noqa: ANN001
    result = env.cli("check", env.pg, "--read-data", "--storage", name, "--json")
    return result.exit_code, json.loads(result.stdout), result.output


def _restores_identical(env, pg_admin, cleanup_pg, name: str, db: str, manifests) -> None:  # noqa: ANN001
    for m in manifests:
        target = f"{db}_r{len(cleanup_pg)}"
        cleanup_pg.append(target)
        result = env.cli(
            "restore", env.pg, db, "--into", target, "--storage", name, "--backup-id", m.backup_id
        )
        assert result.exit_code == 0, result.output
        assert pg_admin.table_fingerprints(target) == pg_admin.table_fingerprints(db)


@pytest.mark.parametrize("checksum", ["SHA256", "none"], ids=["sha256", "etag"])
def test_reads_damaged_in_transit_are_read_faults_and_move_nothing(
    env, s3_server, pg_db, pg_admin, cleanup_pg, checksum
):
    """Every GET of a chunk comes back with a byte flipped: the check fails naming read
    faults, every chunk stays in chunks/, and once the path is fixed every backup restores
    identical (the stored SHA-256, or else the MD5 ETag, tells the damage from the store's)."""
    db = pg_db()
    pg_admin.execute(db, TABLE)
    with FaultyS3(s3_server.endpoint) as proxy:
        name = _dedup_s3_behind(proxy, s3_server, env, "readflip", checksum=checksum)
        storage, manifests = _backups(env, name, db)
        stored = storage.list_keys(CHUNKS)
        proxy.read_flips = math.inf
        code, report, output = _check(env, name)
        assert code == 1, output
        assert proxy.read_flipped
        assert {f["problem"] for f in report["findings"]} == {"read fault"}
        assert len(report["findings"]) == report["chunks_named"]
        assert "nothing was moved" in report["findings"][0]["detail"]
        assert "nothing stored was found broken" in output and "breaking" not in output
        assert storage.list_keys(CHUNKS) == stored
        assert storage.list_keys(DAMAGED) == []
        proxy.read_flips = 0
        _restores_identical(env, pg_admin, cleanup_pg, name, db, manifests)
        code, report, output = _check(env, name)
        assert code == 0, output


def test_a_read_damaged_once_is_read_again_and_the_check_passes(env, s3_server, pg_db, pg_admin):
    db = pg_db()
    pg_admin.execute(db, TABLE)
    with FaultyS3(s3_server.endpoint) as proxy:
        name = _dedup_s3_behind(proxy, s3_server, env, "readflip1")
        storage, _ = _backups(env, name, db)
        stored = storage.list_keys(CHUNKS)
        proxy.read_flips = 3
        code, report, output = _check(env, name)
        assert code == 0, output
        assert len(proxy.read_flipped) == 3
        assert report["chunks_read"] == report["chunks_named"] and report["findings"] == []
        assert storage.list_keys(CHUNKS) == stored


def test_a_chunk_damaged_in_the_store_is_set_aside_by_a_copy_in_the_store(
    env, s3_server, pg_db, pg_admin, cleanup_pg
):
    """A chunk damaged at rest (both reads agree, the store's checksum matches) is copied to
    damaged/ inside the store, byte for byte what it held, even when a read was also
    damaged on the way; the next backup stores a good copy and both backups restore."""
    db = pg_db()
    pg_admin.execute(db, TABLE)
    with FaultyS3(s3_server.endpoint) as proxy:
        name = _dedup_s3_behind(proxy, s3_server, env, "atrest")
        storage, (one, two) = _backups(env, name, db)
        cid = next(c for c, _ in two.chunks.order if c in dict(one.chunks.order))
        where = chunk_key(recipient_set(one.recipients), cid)
        blob = bytearray(storage.get_bytes(where))
        blob[len(blob) // 2] ^= 0x01
        storage.put_bytes(where, bytes(blob))  # damaged at rest, stored with its checksum
        proxy.read_flips = 1
        code, report, output = _check(env, name)
        assert code == 1, output
        (finding,) = report["findings"]
        assert finding["problem"] == "damaged" and finding["what"] == f"chunk {cid}"
        assert not storage.exists(where)
        assert storage.get_bytes(damaged_key(recipient_set(one.recipients), cid)) == bytes(blob)
        result = env.cli("backup", env.pg, "--database", db, "--storage", name)
        assert result.exit_code == 0, result.output
        assert storage.exists(where)
        _restores_identical(env, pg_admin, cleanup_pg, name, db, [one, two])


def test_a_restore_reads_a_chunk_damaged_on_its_way_again(
    env, s3_server, pg_db, pg_admin, cleanup_pg
):
    """A chunk that does not open is read again, checked against the store: a passing
    fault costs a read, a lasting one fails the restore saying the store is not affected."""
    db = pg_db()
    pg_admin.execute(db, TABLE)
    with FaultyS3(s3_server.endpoint) as proxy:
        name = _dedup_s3_behind(proxy, s3_server, env, "restoreflip")
        result = env.cli("backup", env.pg, "--database", db, "--storage", name)
        assert result.exit_code == 0, result.output
        proxy.read_flips = 2
        (manifest,) = list_backups(load_storage(name), env.pg, db)
        _restores_identical(env, pg_admin, cleanup_pg, name, db, [manifest])
        assert len(proxy.read_flipped) == 2
        proxy.read_flips = math.inf
        target = db + "_lasting"
        cleanup_pg.append(target)
        result = env.cli("restore", env.pg, db, "--into", target, "--storage", name)
        assert result.exit_code != 0
        assert "damaged on its way" in result.output and "not affected" in result.output
        assert not pg_admin.exists(target)
