"""A backup reuses a stored chunk only when its HEAD shows a possible chunk of the size the
series' last backup recorded (docs/dedup.md, "Backing up"): a chunk truncated to nothing
or replaced by one of another size is stored again, and the backups restore identical."""

from __future__ import annotations

import os

from prefect_dbbackup.blocks.registry import load_storage
from prefect_dbbackup.tasks.catalog import list_backups
from prefect_dbbackup.tasks.dedup.layout import chunk_key, recipient_set

TABLE = (
    "CREATE TABLE t (id int PRIMARY KEY, v text);"
    "INSERT INTO t SELECT g, md5(g::text) || md5((g * 7)::text)"
    " FROM generate_series(1, 60000) g;"
)


def _backup(env, db: str):  # noqa: ANN001, ANN202
    result = env.cli("backup", env.pg, "--database", db)
    assert result.exit_code == 0, result.output
    return list_backups(load_storage(env.storage), env.pg, db)[-1]


def _restores_identical(env, pg_admin, cleanup_pg, db: str, manifests) -> None:  # noqa: ANN001
    for m in manifests:
        target = f"{db}_r{len(cleanup_pg)}"
        cleanup_pg.append(target)
        result = env.cli("restore", env.pg, db, "--into", target, "--backup-id", m.backup_id)
        assert result.exit_code == 0, result.output
        assert pg_admin.table_fingerprints(target) == pg_admin.table_fingerprints(db)


def _truncate(env, storage, where: str) -> None:  # noqa: ANN001
    """Cut the stored chunk to 0 bytes: the file itself, or the S3 object."""
    if (env.storage_path / where).is_file():
        os.truncate(env.storage_path / where, 0)
    else:
        storage.put_bytes(where, b"")
    assert storage.get_bytes(where) == b""


def test_a_chunk_truncated_to_nothing_is_stored_again_by_the_next_backup(
    dedup_env, pg_db, pg_admin, cleanup_pg
):
    env = dedup_env
    db = pg_db()
    pg_admin.execute(db, TABLE)
    one = _backup(env, db)
    storage = load_storage(env.storage)
    cid = one.chunks.order[len(one.chunks.order) // 2][0]  # pg_dump's header is in the first
    where = chunk_key(recipient_set(one.recipients), cid)
    _truncate(env, storage, where)
    two = _backup(env, db)
    assert cid in dict(two.chunks.order)
    assert len(storage.get_bytes(where)) > 200  # a whole chunk again
    _restores_identical(env, pg_admin, cleanup_pg, db, [one, two])


def test_a_chunk_replaced_by_one_of_another_size_is_stored_again(env, pg_db, pg_admin, cleanup_pg):
    """Another valid chunk of the storage copied over one: big enough to pass for a chunk,
    but not the size the last backup recorded."""
    env = env.with_dedup()
    db = pg_db()
    pg_admin.execute(db, TABLE)
    one = _backup(env, db)
    storage = load_storage(env.storage)
    rset = recipient_set(one.recipients)
    blobs = {cid: storage.get_bytes(chunk_key(rset, cid)) for cid, _ in one.chunks.order}
    cid = one.chunks.order[len(one.chunks.order) // 2][0]
    other = next(c for c, blob in blobs.items() if len(blob) != len(blobs[cid]))
    storage.put_bytes(chunk_key(rset, cid), blobs[other])
    two = _backup(env, db)
    assert cid in dict(two.chunks.order)
    assert storage.get_bytes(chunk_key(rset, cid)) != blobs[other]
    _restores_identical(env, pg_admin, cleanup_pg, db, [one, two])
