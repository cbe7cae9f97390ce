"""`dbbackup check [SERVER] [--read-data]` (docs/dedup.md): a whole storage passes; a
deleted or damaged chunk is found and named with every backup it breaks; a damaged chunk
is set aside so that the next backup stores it again."""

from __future__ import annotations

import json

from prefect_dbbackup.blocks.registry import load_storage
from prefect_dbbackup.tasks.catalog import list_backups
from prefect_dbbackup.tasks.dedup.layout import (
    GC,
    chunk_key,
    damaged_key,
    fossil_key,
    recipient_set,
)

TABLE = (
    "CREATE TABLE t (id int PRIMARY KEY, v text);"
    "INSERT INTO t SELECT g, md5(g::text) || md5((g * 7)::text)"
    " FROM generate_series(1, 60000) g;"
)


def _two_backups(env, pg_db, pg_admin):  # noqa: ANN001, ANN202
    """Two backups of one unchanged database: every chunk but the first is shared."""
    db = pg_db()
    pg_admin.execute(db, TABLE)
    for _ in range(2):
        result = env.cli("backup", env.pg, "--database", db)
        assert result.exit_code == 0, result.output
    storage = load_storage(env.storage)
    one, two = list_backups(storage, env.pg, db)
    shared = [cid for cid, _ in two.chunks.order if cid in dict(one.chunks.order)]
    assert shared, "an unchanged database shares chunks between its backups"
    return db, storage, (one, two), shared[-1]


def _label(m) -> str:  # noqa: ANN001
    return f"{m.server}/{m.database}/{m.backup_id}"


def _check(env, *args: str) -> tuple[int, dict, str]:  # noqa: ANN001
    result = env.cli("check", *args, "--json")
    return result.exit_code, json.loads(result.stdout), result.output


def test_a_whole_storage_passes_and_read_data_reads_each_chunk_once(dedup_env, pg_db, pg_admin):
    env = dedup_env
    _, _, (one, two), _ = _two_backups(env, pg_db, pg_admin)
    code, report, output = _check(env, env.pg)
    assert code == 0, output
    named = {cid for m in (one, two) for cid, _ in m.chunks.order}
    assert report["chunks_named"] == len(named) and report["chunks_read"] == 0
    assert report["findings"] == []
    code, report, output = _check(env, env.pg, "--read-data")
    assert code == 0, output
    assert report["chunks_read"] == len(named)  # shared chunks are read once
    text = env.cli("check", "--read-data")  # every server of the storage
    assert text.exit_code == 0, text.output
    assert f"{len(named)} chunk(s) read, decrypted and matched" in text.stdout


def test_a_deleted_chunk_is_missing_and_names_every_backup_it_breaks(env, pg_db, pg_admin):
    env = env.with_dedup()
    _, storage, (one, two), cid = _two_backups(env, pg_db, pg_admin)
    storage.delete(chunk_key(recipient_set(one.recipients), cid))
    code, report, output = _check(env)
    assert code == 1, output
    (finding,) = report["findings"]
    assert finding["problem"] == "missing" and finding["what"] == f"chunk {cid}"
    assert sorted(finding["backups"]) == sorted([_label(one), _label(two)])
    result = env.cli("check", env.pg)
    assert result.exit_code == 1
    assert f"missing: chunk {cid}" in result.stdout
    assert _label(one) in result.stderr and "Restore those from an older backup" in result.stderr


def test_a_damaged_chunk_is_found_by_read_data_set_aside_and_stored_again(
    dedup_env, pg_db, pg_admin, cleanup_pg
):
    env = dedup_env
    db, storage, (one, two), cid = _two_backups(env, pg_db, pg_admin)
    where = chunk_key(recipient_set(one.recipients), cid)
    blob = bytearray(storage.get_bytes(where))
    blob[len(blob) // 2] ^= 0x01
    storage.put_bytes(where, bytes(blob))

    code, report, output = _check(env, env.pg)  # without reading, nothing seems wrong
    assert code == 0, output
    code, report, output = _check(env, env.pg, "--read-data")
    assert code == 1, output
    (finding,) = report["findings"]
    assert finding["problem"] == "damaged" and finding["what"] == f"chunk {cid}"
    assert sorted(finding["backups"]) == sorted([_label(one), _label(two)])
    assert not storage.exists(where)
    assert storage.exists(damaged_key(recipient_set(one.recipients), cid))  # kept, aside

    result = env.cli("backup", env.pg, "--database", db)  # stores a good copy again
    assert result.exit_code == 0, result.output
    three = list_backups(storage, env.pg, db)[-1]
    assert three.chunks.new >= 1 and storage.exists(where)
    code, _, output = _check(env, env.pg, "--read-data")
    assert code == 0, output  # the older backups are whole again too
    target = db + "_r"
    cleanup_pg.append(target)
    result = env.cli("restore", env.pg, db, "--into", target, "--backup-id", one.backup_id)
    assert result.exit_code == 0, result.output
    assert pg_admin.table_fingerprints(target) == pg_admin.table_fingerprints(db)


def test_a_chunk_a_prune_set_aside_is_not_missing(env, pg_db, pg_admin):
    """A named chunk in a collection's fossils is where restores find it: not a problem."""
    env = env.with_dedup()
    _, storage, (one, _), cid = _two_backups(env, pg_db, pg_admin)
    rset, mark = recipient_set(one.recipients), "20261206T000000Z-0badc0de"
    storage.put_bytes(f"{GC}/{mark}.json", b'{"version": 1}')
    storage.put_bytes(fossil_key(mark, rset, cid), storage.get_bytes(chunk_key(rset, cid)))
    storage.delete(chunk_key(rset, cid))
    code, report, output = _check(env, env.pg, "--read-data")
    assert code == 0, output
    assert report["in_fossils"] == 1


def test_a_wrong_identity_reads_nothing_and_fails(env, pg_db, pg_admin, tmp_path):
    import pyrage

    env = env.with_dedup()
    _two_backups(env, pg_db, pg_admin)
    other = tmp_path / "other.key"
    other.write_text(str(pyrage.x25519.Identity.generate()) + "\n")
    code, report, output = _check(env, env.pg, "--read-data", "--identity-file", str(other))
    assert code == 1, output
    (finding,) = report["findings"]  # one finding for the recipient set, naming both backups
    assert (
        finding["problem"] == "unread"
        and "not one of these backups' recipients" in (finding["detail"])
    )
    assert len(finding["backups"]) == 2 and report["chunks_read"] == 0


def test_a_replaced_key_copy_is_reported_and_the_block_key_still_reads(env, pg_db, pg_admin):
    """A key copy planted over the real one (encrypted to the public recipient, holding
    another key) is named; the chunks are still read with the block's own key."""
    import pyrage
    from prefect_dbbackup.blocks.storage_keys import new_dedup_key
    from prefect_dbbackup.tasks.dedup.keys import key_copy_key

    env = env.with_dedup()
    _, storage, (one, _), _ = _two_backups(env, pg_db, pg_admin)
    where = key_copy_key(one.chunks.key_id, recipient_set(one.recipients))
    planted = json.dumps({"version": 1, "key_id": one.chunks.key_id, "key": new_dedup_key()})
    recipient = pyrage.x25519.Recipient.from_str(env.recipient)
    storage.put_bytes(where, pyrage.encrypt(planted.encode(), [recipient]))
    code, report, output = _check(env, env.pg, "--read-data")
    assert code == 1, output
    (finding,) = report["findings"]
    assert finding["problem"] == "key copy" and finding["what"] == where
    assert "it was replaced" in finding["detail"]
    assert report["chunks_read"] == report["chunks_named"]  # read with the block's key


def test_a_whole_object_backup_whose_object_is_gone_is_missing(env, pg_db, pg_admin):
    """Storages without dedup are checked too (objects present; `verify` reads them)."""
    from prefect_dbbackup.tasks.layout import backup_key

    db = pg_db()
    pg_admin.execute(db, "CREATE TABLE t AS SELECT 1 AS x")
    assert env.cli("backup", env.pg, "--database", db).exit_code == 0
    storage = load_storage(env.storage)
    (m,) = list_backups(storage, env.pg, db)
    assert _check(env, env.pg)[0] == 0
    key = backup_key(m.server, m.database, m.backup_id, m.stored_object_name, m.kind)
    storage.delete(key)
    code, report, output = _check(env, env.pg)
    assert code == 1, output
    (finding,) = report["findings"]
    assert finding["problem"] == "missing" and finding["what"] == key
    assert finding["backups"] == [_label(m)]
