"""Point-in-time recovery, PostgreSQL archive runs (docs/pitr.md): `dbbackup archive SERVER`
stores the WAL written since the last run, read through SQL, as zstd + age pieces with one
signed manifest per run; dbbackup's replication slot holds the WAL until the run's manifest
is stored. Against a private PostgreSQL cluster (tests/pg_cluster.py)."""

from __future__ import annotations

import uuid

import pytest
from prefect_dbbackup.blocks.wal import SEGMENT_BYTES

from tests.helpers import archive_runs, reassembled_log
from tests.pg_cluster import PrivateCluster, pitr_server_on


@pytest.fixture
def cluster(private_pg: PrivateCluster) -> PrivateCluster:
    return private_pg


@pytest.fixture
def archived(env, cluster: PrivateCluster, pg_pitr_block):
    """(env, name of a pitr: true postgres-server block with a slot of its own, a database
    with a table t, the slot)."""
    name, slot = pg_pitr_block
    db = f"db_{slot}"
    cluster.create(db)
    cluster.execute(db, "CREATE TABLE t (id int PRIMARY KEY, v text)")
    yield env, name, db, slot
    cluster.drop(db)


def _slot_start(cluster: PrivateCluster, slot: str) -> str:
    with cluster.connect() as conn:
        return conn.execute(
            "SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = %s", (slot,)
        ).fetchone()[0]


def _flush(cluster: PrivateCluster) -> tuple[str, int]:
    """(segment name, offset) of the server's flush position now."""
    with cluster.connect() as conn:
        return conn.execute(
            "SELECT file_name, file_offset FROM pg_walfile_name_offset(pg_current_wal_flush_lsn())"
        ).fetchone()


def test_archive_runs_store_the_wal_byte_for_byte_and_the_slot_follows(archived, cluster):
    env, server, db, slot = archived
    cluster.execute(db, "INSERT INTO t SELECT g, 'one' FROM generate_series(1, 2000) g")
    first = env.cli("archive", server)
    assert first.exit_code == 0, first.output
    cluster.execute(db, "INSERT INTO t SELECT g, 'two' FROM generate_series(2001, 4000) g")
    cluster.execute("postgres", "SELECT pg_switch_wal()")
    cluster.execute(db, "INSERT INTO t SELECT g, 'three' FROM generate_series(4001, 5000) g")
    second = env.cli("archive", server)
    assert second.exit_code == 0, second.output
    end_file, end_offset = _flush(cluster)

    runs = archive_runs(env, server)
    assert len(runs) == 2 and all(m["kind"] == "wal" for _, m in runs)
    first_pieces, second_pieces = (m["pieces"] for _, m in runs)
    # the second run goes on exactly where the first ended
    assert (second_pieces[0]["file"], second_pieces[0]["start"]) == (
        first_pieces[-1]["file"],
        first_pieces[-1]["end"],
    )
    assert second_pieces[0]["closed"] and not second_pieces[-1]["closed"]
    end = runs[-1][1]["end"]
    assert (end["file"], end["position"]) <= (end_file, end_offset)
    # every archived segment is the server's own, byte for byte (the open one: its prefix)
    for name, data in reassembled_log(env, server).items():
        on_server = (cluster.data / "pg_wal" / name).read_bytes()
        assert len(on_server) == SEGMENT_BYTES
        assert data == on_server[: len(data)], name
        if name != end["file"]:
            assert len(data) == SEGMENT_BYTES, name
    # the slot holds the WAL from where the archive ends, no earlier and no later
    with cluster.connect() as conn:
        held = conn.execute(
            "SELECT file_name, file_offset FROM pg_walfile_name_offset(%s::pg_lsn)",
            (_slot_start(cluster, slot),),
        ).fetchone()
    assert tuple(held) == (end["file"], end["position"])


def test_a_server_whose_wal_cannot_be_archived_is_refused_naming_the_setting(env):
    """wal_level minimal: the archive run exits 3 naming the setting and the change, and
    stores nothing; the server is left as it was (no slot made)."""
    settings = "-c wal_level=minimal -c max_wal_senders=0"
    with pitr_server_on("dbb-walmin-", settings=settings) as (minimal, name):
        result = env.cli("archive", name)
        assert result.exit_code == 3, result.output
        assert "wal_level is minimal: set wal_level = replica" in result.stderr
        assert archive_runs(env, name) == []
        with minimal.connect() as conn:
            assert conn.execute("SELECT count(*) FROM pg_replication_slots").fetchone()[0] == 0


def test_wal_removed_before_it_was_archived_is_a_loud_gap(archived, cluster):
    """The slot dropped (or lost to max_slot_wal_keep_size) and the server's WAL moved on:
    the next run makes the slot again, stores what the server has, records the gap and
    exits 1; the run after it goes on normally."""
    env, server, db, slot = archived
    cluster.execute(db, "INSERT INTO t VALUES (1, 'archived')")
    assert env.cli("archive", server).exit_code == 0
    cluster.execute("postgres", f"SELECT pg_drop_replication_slot('{slot}')")
    for i in range(2, 6):  # lost: written while nothing held the WAL, then recycled
        cluster.execute(db, f"INSERT INTO t VALUES ({i}, 'lost')")
        cluster.execute("postgres", "SELECT pg_switch_wal()")
    cluster.execute("postgres", "CHECKPOINT")
    gap = env.cli("archive", server)
    assert gap.exit_code == 1, gap.output
    assert "was purged from the server before it was archived" in gap.stderr
    runs = archive_runs(env, server)
    assert runs[-1][1]["gap"] and runs[-1][1]["pieces"]
    cluster.execute(db, "INSERT INTO t VALUES (6, 'kept')")
    assert env.cli("archive", server).exit_code == 0


def test_status_shows_the_wal_the_slot_holds_and_a_lost_slot_fails(archived, cluster):
    """A slot nobody consumes fills the server's disk: status says how much it holds; once
    max_slot_wal_keep_size made the server drop it, status exits 1 and the archive run
    refuses, naming what to do."""
    env, server, db, slot = archived
    cluster.execute(db, "INSERT INTO t SELECT g, 'x' FROM generate_series(1, 1000) g")
    assert env.cli("archive", server).exit_code == 0
    shown = env.cli("status", server)
    assert "its slot holds" in shown.stdout and "(reserved)" in shown.stdout, shown.output
    cluster.execute("postgres", "ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
    cluster.execute("postgres", "SELECT pg_reload_conf()")
    try:
        for i in range(3):  # WAL the archive has not taken, past the cap
            first = 10_000 * (i + 1)
            cluster.execute(
                db, f"INSERT INTO t SELECT g, 'y' FROM generate_series({first}, {first + 999}) g"
            )
            cluster.execute("postgres", "SELECT pg_switch_wal()")
        cluster.execute("postgres", "CHECKPOINT")
        lost = env.cli("status", server)
        assert lost.exit_code == 1 and "(lost)" in lost.stdout, lost.output
        refused = env.cli("archive", server)
        assert refused.exit_code == 2 and "pg_drop_replication_slot" in refused.stderr
    finally:
        cluster.execute("postgres", "ALTER SYSTEM RESET max_slot_wal_keep_size")
        cluster.execute("postgres", "SELECT pg_reload_conf()")


def test_a_login_without_the_replication_grants_is_told_which_to_add(env, cluster):
    from prefect_dbbackup.blocks import PostgresServer

    role = f"nobk_{uuid.uuid4().hex[:8]}"
    cluster.execute("postgres", f"CREATE ROLE {role} LOGIN")
    try:
        name = f"walrole-{role[5:]}"
        PostgresServer(
            host="127.0.0.1", port=cluster.port, user=role, pitr=True, pitr_slot=role
        ).save(name)
        result = env.cli("archive", name)
        assert result.exit_code == 3, result.output
        assert f"ALTER ROLE {role} REPLICATION" in result.stderr
        assert "pg_read_binary_file" in result.stderr
        assert archive_runs(env, name) == []
    finally:
        cluster.execute("postgres", f"DROP ROLE {role}")
