"""Deduplicated storage (docs/dedup.md): what was backed up comes back equal, on both
engines and both storages, and a second backup stores only what changed."""

from __future__ import annotations

import json

from prefect_dbbackup.blocks import LocalBackupStorage
from prefect_dbbackup.blocks.registry import load_storage
from prefect_dbbackup.tasks.catalog import list_backups
from prefect_dbbackup.tasks.dedup.layout import CHUNKS, KEYS

ROWS = 60_000  # ~10 MB of dump: several chunks


def _manifests(env, server: str, database: str):  # noqa: ANN001, ANN202
    return list_backups(load_storage(env.storage), server, database)


def test_postgres_chain_restores_each_backup_and_reuses_chunks(
    dedup_env, pg_db, pg_admin, cleanup_pg
):
    env = dedup_env
    db = pg_db()
    pg_admin.execute(
        db,
        "CREATE TABLE t (id int PRIMARY KEY, v text);"
        f"INSERT INTO t SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, {ROWS}) g;",
    )
    first = pg_admin.table_fingerprints(db)
    assert env.cli("backup", env.pg, "--database", db).exit_code == 0
    pg_admin.execute(db, "UPDATE t SET v = 'changed' WHERE id > 59000;")
    second = pg_admin.table_fingerprints(db)
    result = env.cli("backup", env.pg, "--database", db)
    assert result.exit_code == 0, result.output

    one, two = _manifests(env, env.pg, db)
    assert one.format == two.format == "chunks-v1"
    assert len(one.chunks.order) >= 3
    assert one.chunks.reused == 0 and one.chunks.new == len({c for c, _ in one.chunks.order})
    # the change sits at the end of the table: the chunks before it are named again, not stored
    assert two.chunks.reused >= 1
    assert two.chunks.new < len(two.chunks.order)
    assert two.stats.stored_bytes < one.stats.stored_bytes

    for manifest, expected in ((one, first), (two, second)):
        target = f"{db}_r{manifest.backup_id[-4:]}"
        cleanup_pg.append(target)
        result = env.cli("restore", env.pg, db, "--into", target, "--backup-id", manifest.backup_id)
        assert result.exit_code == 0, result.output
        assert pg_admin.table_fingerprints(target) == expected


def test_mysql_round_trip_and_unchanged_database_uploads_almost_nothing(
    dedup_env, my_db, my_admin, cleanup_my
):
    env = dedup_env
    db = my_db()
    my_admin.execute(
        db,
        "CREATE TABLE t (id int PRIMARY KEY, v varchar(200))",
        f"INSERT INTO t SELECT seq, repeat(md5(seq), 4) FROM seq_1_to_{ROWS}",
    )
    for _ in range(2):
        result = env.cli("backup", env.my, "--database", db)
        assert result.exit_code == 0, result.output
    one, two = _manifests(env, env.my, db)
    assert two.chunks.raw_bytes > 4 << 20
    # only the chunk holding the dump's date (its last lines) can differ
    assert two.chunks.new <= 1 and two.chunks.reused >= len(two.chunks.order) - 1
    target = db + "_restored"
    cleanup_my.append(target)
    result = env.cli("restore", env.my, db, "--into", target)
    assert result.exit_code == 0, result.output
    assert my_admin.table_fingerprints(target) == my_admin.table_fingerprints(db)


def test_identity_alone_restores_through_the_stored_key_copy(
    env, pg_db, pg_admin, cleanup_pg, identity_file
):
    """A storage block without the dedup key (a restore machine that has only the identity)
    reads the key from its age-encrypted copy in the storage."""
    env = env.with_dedup()
    db = pg_db()
    pg_admin.execute(db, "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 1000) g;")
    assert env.cli("backup", env.pg, "--database", db).exit_code == 0
    assert list((env.storage_path / KEYS).glob("*.age"))
    reader = load_storage(env.storage).model_copy(update={"dedup_key": None, "dedup": False})
    assert isinstance(reader, LocalBackupStorage)
    reader.save(env.storage + "-reader")
    target = db + "_r"
    cleanup_pg.append(target)
    result = env.cli("restore", env.pg, db, "--into", target, "--storage", env.storage + "-reader")
    assert result.exit_code == 0, result.output
    assert pg_admin.table_fingerprints(target) == pg_admin.table_fingerprints(db)


def test_verify_checks_a_chunked_backup(env, pg_db, pg_admin):
    env = env.with_dedup()
    db = pg_db()
    pg_admin.execute(db, "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 3000) g;")
    assert env.cli("backup", env.pg, "--database", db).exit_code == 0
    result = env.cli(
        "verify", env.pg, "--database", db, "--storage", env.storage, "--encryption", env.encryption
    )
    assert result.exit_code == 0, result.output
    assert "3000" in result.output
    # its signed verify record (bound to the manifest's hash) counts for retention
    shown = json.loads(env.cli("prune", env.pg, "-d", db, "--dry-run", "--json").stdout)
    assert [d["verified"] for d in shown] == [True]
    # the chunks sit under the storage's chunk area, not in the backup's directory
    assert list((env.storage_path / CHUNKS).rglob("*"))
    assert not list(env.storage_path.rglob("*.pgc.zst.age"))


def test_parallel_restore_of_a_chunked_backup(env, pg_db, pg_admin, cleanup_pg):
    """`restore --jobs` writes the checked chunks into the work file, then pg_restore -j."""
    env = env.with_dedup()
    db = pg_db()
    pg_admin.execute(
        db,
        "CREATE TABLE a (id int PRIMARY KEY, v text); CREATE TABLE b (id int, w text);"
        f"INSERT INTO a SELECT g, md5(g::text) FROM generate_series(1, {ROWS}) g;"
        "INSERT INTO b SELECT g, md5((g + 1)::text) FROM generate_series(1, 20000) g;",
    )
    assert env.cli("backup", env.pg, "--database", db).exit_code == 0
    target = db + "_j"
    cleanup_pg.append(target)
    result = env.cli("restore", env.pg, db, "--into", target, "--jobs", "2")
    assert result.exit_code == 0, result.output
    assert pg_admin.table_fingerprints(target) == pg_admin.table_fingerprints(db)
