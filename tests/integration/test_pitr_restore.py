"""Point-in-time recovery end to end (docs/pitr.md): a MariaDB database restored to a chosen
second holds exactly the rows committed up to that second, a table dropped later included,
from a dump and the archived binary log. Against a private MariaDB with its binary log on
(tests/mariadb_private.py)."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime

import pytest
from prefect_dbbackup.flows.artifacts import artifact_key

from tests.helpers import newest_artifact
from tests.mariadb_private import PrivateMariaDB


@pytest.fixture
def shop(env, private_mariadb: PrivateMariaDB):
    """(env, pitr: true mysql-server block on the private server, a database with table t
    and rows 1..3; dropped afterwards with its restored copies)."""
    from prefect_dbbackup.blocks import MySQLServer

    tag = uuid.uuid4().hex[:8]
    name, db = f"pitr-{tag}", f"shop %s 'q' ☺ {tag}"
    MySQLServer(host="127.0.0.1", port=private_mariadb.port, user="root", pitr=True).save(name)
    private_mariadb.create(db)
    private_mariadb.execute(
        db,
        "CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(20)) ENGINE=InnoDB",
        *(f"INSERT INTO t VALUES ({i}, 'before')" for i in range(1, 4)),
    )
    targets: list[str] = []
    yield env, name, db, targets
    for target in [db, *targets]:
        private_mariadb.drop(target)


def _server_second(server: PrivateMariaDB) -> int:
    return int(server.query(None, "SELECT UNIX_TIMESTAMP()")[0][0])


def _write_in_a_second_of_its_own(server: PrivateMariaDB, db: str, ids: range) -> int:
    """Insert ids one per commit, all within one second of the server's clock, with an idle
    second before and after it; that second."""
    while True:
        second = _server_second(server)
        server.execute(db, *(f"INSERT INTO t VALUES ({i}, 'row')" for i in ids))
        if _server_second(server) == second:
            break
        server.execute(db, f"DELETE FROM t WHERE id BETWEEN {ids[0]} AND {ids[-1]}")
    while _server_second(server) < second + 2:
        time.sleep(0.05)
    return second


def _at(second: int) -> str:
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ids(server: PrivateMariaDB, db: str) -> list[int]:
    return [row[0] for row in server.query(db, "SELECT id FROM t ORDER BY id")]


def test_a_restore_to_a_second_has_exactly_the_rows_committed_by_then(
    shop, private_mariadb: PrivateMariaDB
):
    env, server, db, targets = shop
    assert env.cli("archive", server).exit_code == 0
    assert env.cli("backup", server, "-d", db).exit_code == 0  # rows 1..3
    _write_in_a_second_of_its_own(private_mariadb, db, range(4, 9))
    after = _write_in_a_second_of_its_own(private_mariadb, db, range(9, 14))
    private_mariadb.execute(db, "DROP TABLE t")  # the accident
    assert env.cli("archive", server).exit_code == 0

    target = f"restored_{uuid.uuid4().hex[:8]}"
    targets.append(target)
    restored = env.cli("restore", server, db, "--to-time", _at(after - 1), "--into", target)
    assert restored.exit_code == 0, restored.output
    assert _ids(private_mariadb, target) == list(range(1, 9))  # rows 9..13 came later
    assert private_mariadb.query(target, "SELECT v FROM t WHERE id = 8") == [("row",)]

    # the second of rows 9..13 includes them; the table dropped after it is there
    target2 = f"restored_{uuid.uuid4().hex[:8]}"
    targets.append(target2)
    again = env.cli("restore", server, db, "--to-time", _at(after), "--into", target2)
    assert again.exit_code == 0, again.output
    assert _ids(private_mariadb, target2) == list(range(1, 14))

    # as far as the archive goes: the drop is replayed too
    target3 = f"restored_{uuid.uuid4().hex[:8]}"
    targets.append(target3)
    latest = env.cli("restore", server, db, "--to-time", "latest", "--into", target3)
    assert latest.exit_code == 0, latest.output
    assert private_mariadb.query(
        None,
        "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s",
        (target3,),
    ) == [(0,)]


def test_a_time_the_archive_does_not_reach_yet_is_refused_and_nothing_is_created(
    shop, private_mariadb: PrivateMariaDB
):
    env, server, db, targets = shop
    assert env.cli("archive", server).exit_code == 0
    assert env.cli("backup", server, "-d", db).exit_code == 0
    assert env.cli("archive", server).exit_code == 0
    target = f"restored_{uuid.uuid4().hex[:8]}"
    targets.append(target)
    ahead = _at(_server_second(private_mariadb) + 3600)
    refused = env.cli("restore", server, db, "--to-time", ahead, "--into", target)
    assert refused.exit_code == 3, refused.output
    assert (
        "may not be archived yet" in refused.stderr
        and f"dbbackup archive {server}" in refused.stderr
    )
    assert not private_mariadb.exists(target)
    for bad, message in (("yesterday", "is not a time with a zone"),
                         ("2026-12-07T10:41:06", "is not a time with a zone")):  # fmt: skip
        result = env.cli("restore", server, db, "--to-time", bad, "--into", target)
        assert result.exit_code == 3 and message in result.stderr, result.output
    own = env.cli("restore", server, db, "--to-time", "latest")  # onto the source: refused
    assert own.exit_code == 3 and "name one with --into NEW_NAME" in own.stderr, own.output
    assert "--replace" not in own.stderr
    listed = json.loads(env.cli("list", server, "-d", db, "--json").stdout)
    named = env.cli("restore", server, db, "--to-time", "latest", "--into", target,
                    "--backup-id", listed[-1]["backup_id"])  # fmt: skip
    assert named.exit_code == 3 and "--to-time takes none of --backup-id" in named.stderr


def test_archive_and_restore_to_a_time_on_s3(s3_env, private_mariadb: PrivateMariaDB):
    """The same on a real S3 server: pieces and run manifests in the bucket, a restore that
    reads them back through it."""
    from prefect_dbbackup.blocks import MySQLServer

    env, tag = s3_env, uuid.uuid4().hex[:8]
    server, db, target = f"pitr-s3-{tag}", f"s3 shop {tag}", f"restored_{tag}"
    MySQLServer(host="127.0.0.1", port=private_mariadb.port, user="root", pitr=True).save(server)
    private_mariadb.create(db)
    try:
        private_mariadb.execute(db, "CREATE TABLE t (id INT PRIMARY KEY, v TEXT)")
        assert env.cli("archive", server).exit_code == 0
        assert env.cli("backup", server, "-d", db).exit_code == 0
        private_mariadb.execute(db, *(f"INSERT INTO t VALUES ({i}, 'after')" for i in range(1, 6)))
        assert env.cli("archive", server).exit_code == 0
        listed = env.cli("list", server, "--pitr", "--json")
        assert listed.exit_code == 0, listed.output
        assert [w["database"] for w in json.loads(listed.stdout)["windows"]] == [db]
        restored = env.cli("restore", server, db, "--to-time", "latest", "--into", target)
        assert restored.exit_code == 0, restored.output
        assert _ids(private_mariadb, target) == [1, 2, 3, 4, 5]
        key = artifact_key("restore-to-time", f"{server}-{target}")
        assert "5 transaction(s) of the binary log" in newest_artifact(key)
        assert env.cli("check", server, "--read-data").exit_code == 0
    finally:
        private_mariadb.drop(db)
        private_mariadb.drop(target)


def test_a_damaged_archive_piece_fails_the_restore_and_drops_the_half_restored_target(
    shop, private_mariadb: PrivateMariaDB
):
    from prefect_dbbackup.tasks.archive_manifest import ARCHIVE_SEGMENT
    from prefect_dbbackup.tasks.layout import encode_name

    env, server, db, targets = shop
    assert env.cli("archive", server).exit_code == 0
    assert env.cli("backup", server, "-d", db).exit_code == 0
    private_mariadb.execute(db, "INSERT INTO t VALUES (4, 'after')")
    assert env.cli("archive", server).exit_code == 0
    root = env.storage_path / encode_name(server) / ARCHIVE_SEGMENT
    for piece in root.glob("*/piece-*.zst.age"):
        data = bytearray(piece.read_bytes())
        data[-1] ^= 1
        piece.write_bytes(bytes(data))
    target = f"restored_{uuid.uuid4().hex[:8]}"
    targets.append(target)
    failed = env.cli("restore", server, db, "--to-time", "latest", "--into", target)
    assert failed.exit_code != 0, failed.output
    assert "sha256 does not match its archive run" in failed.stderr, failed.output
    assert not private_mariadb.exists(target)
