"""Point-in-time recovery, archive runs (docs/pitr.md): `dbbackup archive SERVER` stores the
binary log written since the last run as zstd + age pieces with one signed manifest per run.
Against a private MariaDB with its binary log on (tests/mariadb_private.py)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from prefect_dbbackup.tasks.archive_manifest import ARCHIVE_SEGMENT
from prefect_dbbackup.tasks.layout import encode_name

from tests.helpers import archive_runs, reassembled_log
from tests.mariadb_private import PrivateMariaDB

IN_USE_FLAG = 21  # the first event's flags byte: the server clears "in use" when it sends


@pytest.fixture
def archived(env, tmp_path: Path, private_mariadb: PrivateMariaDB):
    """(env, name of a pitr: true mysql-server block on the private server, a database with
    a table t on it; dropped afterwards)."""
    from prefect_dbbackup.blocks import MySQLServer

    tag = uuid.uuid4().hex[:8]
    name, db = f"arch-{tag}", f"dbb arch %s 'q' ☺ {tag}"
    MySQLServer(host="127.0.0.1", port=private_mariadb.port, user="root", pitr=True).save(name)
    private_mariadb.create(db)
    private_mariadb.execute(db, "CREATE TABLE t (id INT PRIMARY KEY, v TEXT)")
    yield env, name, db
    private_mariadb.drop(db)


def _same_file(archived: bytes, original: bytes) -> bool:
    flags = slice(IN_USE_FLAG, IN_USE_FLAG + 1)
    clear = bytearray(original)
    clear[flags] = archived[flags]
    return archived == bytes(clear)


def test_archive_runs_store_the_binary_log_byte_for_byte_each_byte_once(
    archived, private_mariadb: PrivateMariaDB
):
    env, server, db = archived
    private_mariadb.execute(db, *(f"INSERT INTO t VALUES ({i}, 'one')" for i in range(20)))
    first = env.cli("archive", server)
    assert first.exit_code == 0, first.output
    private_mariadb.execute(db, *(f"INSERT INTO t VALUES ({i}, 'two')" for i in range(20, 40)))
    private_mariadb.execute(db, "FLUSH BINARY LOGS")
    private_mariadb.execute(db, *(f"INSERT INTO t VALUES ({i}, 'three')" for i in range(40, 50)))
    second = env.cli("archive", server)
    assert second.exit_code == 0, second.output
    nothing = env.cli("archive", server)
    assert nothing.exit_code == 0 and "nothing new" in nothing.stdout, nothing.output

    runs = archive_runs(env, server)
    assert len(runs) == 2  # a run with nothing new stores nothing
    first_pieces, second_pieces = (m["pieces"] for _, m in runs)
    # the second run goes on exactly where the first ended: the open file from its end
    assert second_pieces[0]["file"] == first_pieces[-1]["file"]
    assert second_pieces[0]["start"] == first_pieces[-1]["end"]
    assert second_pieces[0]["closed"] and not second_pieces[-1]["closed"]
    archived_files = reassembled_log(env, server)
    server_files = {p.name: p.read_bytes() for p in private_mariadb.binlog_files()}
    assert set(archived_files) == set(server_files)
    for name, data in server_files.items():
        assert _same_file(archived_files[name], data), name
    end = runs[-1][1]["end"]
    last = private_mariadb.binlog_files()[-1]
    assert (end["file"], end["position"]) == (last.name, last.stat().st_size)


def test_a_binlog_purged_before_it_was_archived_is_a_loud_gap(
    archived, private_mariadb: PrivateMariaDB
):
    env, server, db = archived
    private_mariadb.execute(db, "INSERT INTO t VALUES (1, 'a')")
    assert env.cli("archive", server).exit_code == 0
    private_mariadb.execute(db, "INSERT INTO t VALUES (2, 'lost')", "FLUSH BINARY LOGS")
    private_mariadb.execute(db, "INSERT INTO t VALUES (3, 'lost too')", "FLUSH BINARY LOGS")
    current = private_mariadb.binlog_files()[-1].name
    private_mariadb.execute(db, f"PURGE BINARY LOGS TO '{current}'")
    private_mariadb.execute(db, "INSERT INTO t VALUES (4, 'kept')")
    # the server may keep a file its crash recovery still needs (a binlog checkpoint)
    left = [p.name for p in private_mariadb.binlog_files()]
    assert left[-1] == current and len(left) < 3

    gap = env.cli("archive", server)
    assert gap.exit_code == 1, gap.output
    assert "has a gap" in gap.stderr and "was purged from the server before it was archived" in (
        gap.stderr
    )
    assert "run a backup now" in gap.stderr
    manifest = archive_runs(env, server)[-1][1]
    assert "purged" in manifest["gap"]
    assert [p["file"] for p in manifest["pieces"]] == left  # what the server still has
    # the gap is reported once: the next run goes on from there
    private_mariadb.execute(db, "INSERT INTO t VALUES (5, 'next')")
    after = env.cli("archive", server)
    assert after.exit_code == 0, after.output


def test_a_changed_run_manifest_is_not_used_and_nothing_is_skipped(
    archived, private_mariadb: PrivateMariaDB, caplog
):
    """A run manifest whose end was moved forward (to skip log) does not steer the next
    run: it is unsigned for that content, so the next run starts from the trusted end."""
    env, server, db = archived
    private_mariadb.execute(db, "INSERT INTO t VALUES (1, 'a')")
    assert env.cli("archive", server).exit_code == 0
    directory, manifest = archive_runs(env, server)[0]
    manifest["end"]["position"] += 10**6
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2))
    private_mariadb.execute(db, "INSERT INTO t VALUES (2, 'b')")
    again = env.cli("archive", server)
    assert again.exit_code == 0, again.output
    assert "not using archive run" in caplog.text and "signature does not match" in caplog.text
    archived_files = reassembled_log(env, server, skip=directory)
    for path in private_mariadb.binlog_files():
        assert _same_file(archived_files[path.name], path.read_bytes()), path.name


def test_archive_of_a_server_without_pitr_is_refused(env):
    result = env.cli("archive", env.my)
    assert result.exit_code == 3, result.output
    assert "pitr off" in result.stderr and "set pitr: true" in result.stderr


def test_list_pitr_shows_each_databases_window_and_the_gaps(
    archived, private_mariadb: PrivateMariaDB
):
    env, server, db = archived
    private_mariadb.execute(db, "INSERT INTO t VALUES (1, 'a')")
    assert env.cli("archive", server).exit_code == 0
    backup = env.cli("backup", server, "-d", db)
    assert backup.exit_code == 0, backup.output
    private_mariadb.execute(db, "INSERT INTO t VALUES (2, 'b')")
    assert env.cli("archive", server).exit_code == 0
    listed = env.cli("list", server, "--pitr", "--json")
    assert listed.exit_code == 0, listed.output
    view = json.loads(listed.stdout)
    assert view["gaps"] == [] and len(view["stretches"]) == 1
    [window] = [w for w in view["windows"] if w["database"] == db]
    backups = json.loads(env.cli("list", server, "-d", db, "--json").stdout)
    assert window["backup_id"] == backups[-1]["backup_id"]
    assert window["since"] <= window["until"]
    text = env.cli("list", server, "--pitr")
    assert f"restorable to any second {window['since']} .. {window['until']}" in text.stdout

    private_mariadb.execute(db, "INSERT INTO t VALUES (3, 'c')", "FLUSH BINARY LOGS")
    private_mariadb.execute(db, "INSERT INTO t VALUES (4, 'd')", "FLUSH BINARY LOGS")
    current = private_mariadb.binlog_files()[-1].name
    private_mariadb.execute(db, f"PURGE BINARY LOGS TO '{current}'")
    assert env.cli("archive", server).exit_code == 1
    gapped = env.cli("list", server, "--pitr")
    assert gapped.exit_code == 1, gapped.output
    assert "GAP run" in gapped.stderr and "purged" in gapped.stderr
    assert "GAP between" in gapped.stderr
    checked = env.cli("check", server)
    assert checked.exit_code == 1 and "gap: " in checked.stdout, checked.output


def test_prune_removes_the_archive_runs_no_kept_backup_needs(
    archived, private_mariadb: PrivateMariaDB
):
    from prefect_dbbackup.blocks import MySQLServer
    from prefect_dbbackup.blocks.retention import RetentionPolicy

    env, server, db = archived
    block = MySQLServer.load(server)
    block.retention = RetentionPolicy(keep_last=1)
    block.save(server, overwrite=True)
    private_mariadb.execute(db, "INSERT INTO t VALUES (1, 'a')")
    assert env.cli("archive", server).exit_code == 0
    assert env.cli("backup", server, "-d", db).exit_code == 0  # pruned: keeps only itself
    private_mariadb.execute(db, "INSERT INTO t VALUES (2, 'b')", "FLUSH BINARY LOGS")
    assert env.cli("archive", server).exit_code == 0
    private_mariadb.execute(db, "INSERT INTO t VALUES (3, 'c')", "FLUSH BINARY LOGS")
    assert env.cli("backup", server, "-d", db).exit_code == 0
    private_mariadb.execute(db, "INSERT INTO t VALUES (4, 'd')")
    assert env.cli("archive", server).exit_code == 0
    before = [d.name for d, _ in archive_runs(env, server)]
    assert len(before) == 3

    dry = env.cli("prune", server, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert [d.name for d, _ in archive_runs(env, server)] == before
    pruned = env.cli("prune", server)
    assert pruned.exit_code == 0, pruned.output
    assert [d.name for d, _ in archive_runs(env, server)] == before[2:]
    assert not any((env.storage_path / encode_name(server) / ARCHIVE_SEGMENT / d).exists()
                   for d in before[:2])  # fmt: skip
    listed = env.cli("list", server, "--pitr", "--json")
    assert listed.exit_code == 0, listed.output
    windows = json.loads(listed.stdout)["windows"]
    [window] = [w for w in windows if w["database"] == db]
    kept = json.loads(env.cli("list", server, "-d", db, "--json").stdout)
    assert [b["backup_id"] for b in kept] == [window["backup_id"]]


def test_check_finds_a_missing_or_changed_piece(archived, private_mariadb: PrivateMariaDB):
    env, server, db = archived
    private_mariadb.execute(db, "INSERT INTO t VALUES (1, 'a')")
    assert env.cli("archive", server).exit_code == 0
    private_mariadb.execute(db, "INSERT INTO t VALUES (2, 'b')")
    assert env.cli("archive", server).exit_code == 0
    whole = env.cli("check", server, "--read-data")
    assert whole.exit_code == 0, whole.output
    assert "2 log archive run(s) checked" in whole.stdout

    (first, _), (second, manifest) = archive_runs(env, server)
    piece = second / manifest["pieces"][0]["object_name"]
    data = bytearray(piece.read_bytes())
    data[-1] ^= 1  # same size, one bit changed
    piece.write_bytes(bytes(data))
    assert env.cli("check", server).exit_code == 0  # sizes only: unseen
    changed = env.cli("check", server, "--read-data")
    assert changed.exit_code == 1, changed.output
    assert "damaged:" in changed.stdout and "sha256" in changed.stdout

    for p in first.glob("piece-*"):
        p.unlink()
    missing = env.cli("check", server)
    assert missing.exit_code == 1, missing.output
    assert "missing:" in missing.stdout and first.name in missing.stdout


def test_prune_of_the_archive_leaves_a_planted_file_and_says_so(
    archived, private_mariadb: PrivateMariaDB, caplog
):
    from prefect_dbbackup.blocks import MySQLServer
    from prefect_dbbackup.blocks.retention import RetentionPolicy

    env, server, db = archived
    block = MySQLServer.load(server)
    block.retention = RetentionPolicy(keep_last=1)
    block.save(server, overwrite=True)
    assert env.cli("archive", server).exit_code == 0
    private_mariadb.execute(db, "INSERT INTO t VALUES (1, 'a')", "FLUSH BINARY LOGS")
    assert env.cli("backup", server, "-d", db).exit_code == 0
    private_mariadb.execute(db, "INSERT INTO t VALUES (2, 'b')")
    assert env.cli("archive", server).exit_code == 0
    (old, manifest), _ = archive_runs(env, server)
    planted = old / "notes.txt"
    planted.write_text("not dbbackup's")
    assert env.cli("prune", server).exit_code == 0
    assert planted.read_text() == "not dbbackup's"
    assert not (old / "manifest.json").exists()
    assert not any((old / p["object_name"]).exists() for p in manifest["pieces"])
    assert "that dbbackup did not write" in caplog.text and "notes.txt" in caplog.text
