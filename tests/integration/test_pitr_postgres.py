"""Point-in-time recovery of a PostgreSQL cluster (docs/pitr.md): `dbbackup base-backup`,
`dbbackup archive` and `dbbackup restore-cluster --to-time`, against a private cluster; the
restored data directory is started by PostgreSQL itself, which replays the WAL to the time.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.helpers import archive_runs
from tests.pg_cluster import RUN_AS, PrivateCluster, pitr_server_on


@pytest.fixture
def source(private_pg: PrivateCluster) -> PrivateCluster:
    """The cluster to back up."""
    return private_pg


@pytest.fixture
def pitr_server(env, source: PrivateCluster, pg_pitr_block):
    """(env, name of a pitr: true postgres-server block of the source, a new database)."""
    name, slot = pg_pitr_block
    db = f"shop_{slot}"
    source.create(db)
    source.execute(db, "CREATE TABLE orders (id int PRIMARY KEY, at timestamptz)")
    source.execute(db, "CREATE TABLE audit (note text)")
    source.execute(db, "INSERT INTO audit VALUES ('kept')")
    yield env, name, db
    source.drop(db)


def _server_now(cluster: PrivateCluster) -> datetime:
    with cluster.connect() as conn:
        return conn.execute("SELECT clock_timestamp()").fetchone()[0]


def _insert(cluster: PrivateCluster, db: str, ids: range) -> None:
    for i in ids:  # one transaction each
        cluster.execute(db, f"INSERT INTO orders VALUES ({i}, clock_timestamp())")


def _next_second(cluster: PrivateCluster) -> None:
    now = _server_now(cluster)
    time.sleep(1.05 - now.microsecond / 1e6)


def _started(data: Path) -> PrivateCluster:
    """The restored data directory, owned by the server's user, started; once PostgreSQL
    has replayed the WAL and promoted itself."""
    cluster = PrivateCluster.new(prefix="dbb-pitr-dst-")
    shutil.move(str(data), cluster.data)
    subprocess.run(["chown", "-R", RUN_AS, str(cluster.base)], check=True)
    cluster.launch()
    deadline = time.monotonic() + 120
    while True:
        with cluster.connect() as conn:
            if not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                return cluster
        assert time.monotonic() < deadline, (cluster.base / "server.log").read_text()[-3000:]
        time.sleep(0.2)


def _rows(cluster: PrivateCluster, db: str, table: str) -> list[tuple]:
    with cluster.connect(db) as conn:
        return conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()


def _tables(cluster: PrivateCluster, db: str) -> set[str]:
    with cluster.connect(db) as conn:
        found = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {row[0] for row in found}


def test_a_cluster_restored_to_a_second_has_exactly_the_rows_committed_by_then(
    pitr_server, source: PrivateCluster, tmp_path: Path
):
    env, server, db = pitr_server
    _insert(source, db, range(1, 4))  # before the base backup
    base = env.cli("base-backup", server)
    assert base.exit_code == 0, base.output
    _insert(source, db, range(4, 9))
    _next_second(source)
    idle = _server_now(source)  # nothing commits in this second
    _next_second(source)
    _insert(source, db, range(9, 14))
    source.execute(db, "DROP TABLE audit")  # the mistake a restore to a time undoes
    archived = env.cli("archive", server)
    assert archived.exit_code == 0, archived.output

    to_idle = tmp_path / "to-idle"
    result = env.cli(
        "restore-cluster", server, "--to-time", idle.isoformat(), "--data-dir", str(to_idle)
    )
    assert result.exit_code == 0, result.output
    restored = _started(to_idle)
    try:
        assert [r[0] for r in _rows(restored, db, "orders")] == list(range(1, 9))
        assert _rows(restored, db, "audit") == [("kept",)]  # dropped later: it is back
        assert [r[1] for r in _rows(restored, db, "orders")] == [
            r[1] for r in _rows(source, db, "orders")[:8]
        ]
    finally:
        restored.stop()

    to_latest = tmp_path / "latest"
    result = env.cli("restore-cluster", server, "--to-time", "latest", "--data-dir", str(to_latest))
    assert result.exit_code == 0, result.output
    restored = _started(to_latest)
    try:
        assert _rows(restored, db, "orders") == _rows(source, db, "orders")
        assert "audit" not in _tables(restored, db)
    finally:
        restored.stop()


def test_a_time_the_archive_has_not_reached_is_refused_and_writes_nothing(
    pitr_server, source: PrivateCluster, tmp_path: Path
):
    env, server, db = pitr_server
    assert env.cli("base-backup", server).exit_code == 0
    later = _server_now(source) + timedelta(minutes=5)
    target = tmp_path / "never"
    result = env.cli(
        "restore-cluster", server, "--to-time", later.isoformat(), "--data-dir", str(target)
    )
    assert result.exit_code == 3, result.output
    assert f"run `dbbackup archive {server}` first, or restore to latest" in result.stderr
    assert not target.exists()


def test_list_and_check_show_the_cluster_window_and_a_lost_or_damaged_piece_is_refused(
    pitr_server, source: PrivateCluster, tmp_path: Path
):
    """list --pitr shows the window a base backup and the archive give; a damaged WAL piece is
    refused by restore-cluster (nothing written) and named by check --read-data; a deleted one
    is a gap for list --pitr and check, and restore-cluster refuses to cross it."""
    env, server, db = pitr_server
    assert env.cli("base-backup", server).exit_code == 0
    _insert(source, db, range(1, 50))
    assert env.cli("archive", server).exit_code == 0
    _insert(source, db, range(50, 60))
    assert env.cli("archive", server).exit_code == 0

    listed = env.cli("list", server, "--pitr")
    assert listed.exit_code == 0, listed.output
    assert "(whole cluster)" in listed.stdout and "restorable to any second" in listed.stdout
    checked = env.cli("check", server, "--read-data")
    assert checked.exit_code == 0, checked.output
    assert "1 base backup(s) checked" in checked.stdout

    runs = archive_runs(env, server)
    directory, manifest = runs[-2]  # a run in the middle of the stretch
    piece = directory / manifest["pieces"][0]["object_name"]
    good = piece.read_bytes()
    damaged = bytearray(good)
    damaged[len(damaged) // 2] ^= 0xFF
    piece.write_bytes(bytes(damaged))
    target = tmp_path / "damaged"
    result = env.cli("restore-cluster", server, "--to-time", "latest", "--data-dir", str(target))
    assert result.exit_code == 2, result.output
    assert "sha256" in result.stderr
    assert not target.exists()
    checked = env.cli("check", server, "--read-data")
    assert checked.exit_code == 1 and piece.name in checked.output, checked.output

    piece.unlink()  # its run still lists it
    checked = env.cli("check", server)
    assert checked.exit_code == 1 and "missing" in checked.output, checked.output
    result = env.cli("restore-cluster", server, "--to-time", "latest", "--data-dir", str(target))
    assert result.exit_code != 0 and piece.name in result.stderr, result.output
    assert not target.exists()

    shutil.rmtree(directory)  # the whole run: its WAL is not archived any more
    listed = env.cli("list", server, "--pitr", "--json")
    view = json.loads(listed.stdout)
    assert listed.exit_code == 1 and len(view["gaps"]) == 1, listed.output
    removed_at = f"{manifest['server_time'][:19].replace('T', ' ')}Z"
    assert all(w["until"] < removed_at for w in view["clusters"])  # up to the gap only
    checked = env.cli("check", server)
    assert checked.exit_code == 1 and "gap: " in checked.stdout, checked.output
    # latest would stop at the gap, short of WAL the archive holds: refused, not guessed
    result = env.cli("restore-cluster", server, "--to-time", "latest", "--data-dir", str(target))
    assert result.exit_code == 3 and "has a gap after" in result.stderr, result.output
    assert not target.exists()


def test_a_killed_cluster_is_restored_to_its_last_archived_commit(env, tmp_path: Path):
    """kill -9 of the postmaster, its data directory deleted: restore-cluster --to-time latest
    brings back every row committed before the last archive run began, as a prefix of what
    was written (no hole)."""
    from prefect_dbbackup.blocks import PostgresServer

    lost = PrivateCluster.new(prefix="dbb-pitr-lost-")
    lost.start()
    try:
        name, db = f"pglost-{uuid.uuid4().hex[:8]}", "orders"
        PostgresServer(host="127.0.0.1", port=lost.port, user="postgres", pitr=True).save(name)
        lost.create(db)
        lost.execute(db, "CREATE TABLE orders (id int PRIMARY KEY, at timestamptz)")
        assert env.cli("base-backup", name).exit_code == 0
        committed: list[tuple[int, float]] = []  # (id, time the commit returned)
        stop = threading.Event()

        def writer() -> None:
            with lost.connect(db) as conn:
                while not stop.is_set():
                    row = len(committed) + 1
                    try:
                        conn.execute("INSERT INTO orders VALUES (%s, clock_timestamp())", (row,))
                        conn.commit()
                    except Exception:  # noqa: BLE001 (the server was killed under it)
                        return
                    committed.append((row, time.time()))
                    time.sleep(0.01)

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            for _ in range(3):
                time.sleep(1.0)
                began = time.time()
                assert env.cli("archive", name).exit_code == 0
                last_run_began = began
            time.sleep(0.5)  # commits after the last run: lost with the server
            postmaster = int((lost.data / "postmaster.pid").read_text().split()[0])
            os.kill(postmaster, signal.SIGKILL)
        finally:
            stop.set()
            thread.join(timeout=30)
    finally:
        lost.stop()  # the data directory is gone

    target = tmp_path / "restored"
    result = env.cli("restore-cluster", name, "--to-time", "latest", "--data-dir", str(target))
    assert result.exit_code == 0, result.output
    restored = _started(target)
    try:
        ids = [row[0] for row in _rows(restored, db, "orders")]
    finally:
        restored.stop()
    assert ids == list(range(1, len(ids) + 1))  # a prefix of what was written: no hole
    before_last_run = [row for row, at in committed if at < last_run_began]
    assert len(ids) >= len(before_last_run) > 0
    assert len(ids) <= len(committed) + 1  # a commit may land before its reply is read


def test_prune_keeps_the_base_backups_the_policy_keeps_and_the_wal_they_need(
    pitr_server, source: PrivateCluster, tmp_path: Path
):
    """keep_last=1: the older base backup goes, and the archive runs wholly before the kept
    one's start segment; the kept window still restores every row."""
    from prefect_dbbackup.blocks import PostgresServer
    from prefect_dbbackup.blocks.retention import RetentionPolicy
    from prefect_dbbackup.tasks.base_backup import BASE_SEGMENT
    from prefect_dbbackup.tasks.layout import encode_name

    env, server, db = pitr_server
    block = PostgresServer.load(server)
    block.retention = RetentionPolicy(keep_last=1)
    block.save(server, overwrite=True)
    assert env.cli("base-backup", server).exit_code == 0
    _insert(source, db, range(1, 20))
    source.execute("postgres", "SELECT pg_switch_wal()")
    assert env.cli("archive", server).exit_code == 0
    assert env.cli("base-backup", server).exit_code == 0
    _insert(source, db, range(20, 40))
    assert env.cli("archive", server).exit_code == 0
    bases_dir = env.storage_path / encode_name(server) / BASE_SEGMENT
    bases = sorted(p.name for p in bases_dir.iterdir())
    runs = [d.name for d, _ in archive_runs(env, server)]
    assert len(bases) == 2 and len(runs) == 4

    dry = env.cli("prune", server, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert sorted(p.name for p in bases_dir.iterdir()) == bases
    assert [d.name for d, _ in archive_runs(env, server)] == runs
    pruned = env.cli("prune", server)
    assert pruned.exit_code == 0, pruned.output
    assert sorted(p.name for p in bases_dir.iterdir()) == bases[1:]
    left = archive_runs(env, server)
    kept_start = json.loads((bases_dir / bases[1] / "manifest.json").read_text())
    assert 0 < len(left) < len(runs)  # the runs before the kept base backup went
    assert all(max(p["file"] for p in m["pieces"]) >= _segment(kept_start) for _, m in left), (
        "a run the kept base backup replays was removed"
    )

    target = tmp_path / "after-prune"
    result = env.cli("restore-cluster", server, "--to-time", "latest", "--data-dir", str(target))
    assert result.exit_code == 0, result.output
    restored = _started(target)
    try:
        assert _rows(restored, db, "orders") == _rows(source, db, "orders")
    finally:
        restored.stop()


def _segment(base_manifest: dict) -> str:
    from prefect_dbbackup.tasks.base_backup import BaseBackupManifest

    return BaseBackupManifest.model_validate(base_manifest).start_file


def test_restore_of_one_postgres_database_to_a_time_points_to_restore_cluster(pitr_server):
    env, server, db = pitr_server
    result = env.cli("restore", server, db, "--to-time", "latest", "--into", f"{db}_x")
    assert result.exit_code == 3, result.output
    assert f"dbbackup restore-cluster {server} --to-time T" in result.stderr


def test_a_server_without_a_replication_line_in_pg_hba_is_told_what_to_add(env):
    hba = "local all all trust\nhost all all 127.0.0.1/32 trust\n"
    with pitr_server_on("dbb-pghba-", hba=hba) as (_, name):
        result = env.cli("base-backup", name)
        assert result.exit_code == 3, result.output
        assert "pg_hba.conf" in result.stderr and "host replication" in result.stderr
        assert not (env.storage_path / name / "_base").exists()
