"""Point-in-time recovery, step 1 (docs/pitr.md): a `pitr: true` MariaDB server is checked
before any dump, and every dump records its snapshot's binlog position in its signed
manifest. Run against a private MariaDB with its binary log on (tests/mariadb_private.py)
and the machine's MariaDB, whose binary log is off."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from prefect_dbbackup.flows.cli import app
from prefect_dbbackup.tasks.layout import MANIFEST_NAME, backup_key
from typer.testing import CliRunner

from tests.helpers import MyAdmin, stored_objects
from tests.mariadb_private import PrivateMariaDB

INSERTED = re.compile(
    r"^### INSERT INTO `(?P<db>[^`]+)`\.`t`\n### SET\n###   @1=(?P<id>\d+)$", re.M
)


def _apply(tmp_path: Path, servers: str) -> None:
    """`dbbackup apply` of a dbbackup.yaml with these servers (the config path users take)."""
    config = tmp_path / f"servers-{uuid.uuid4().hex[:6]}.yaml"
    config.write_text(f"servers:\n{servers}")
    result = CliRunner().invoke(app, ["apply", str(config)], catch_exceptions=False)
    assert result.exit_code == 0, result.output


@pytest.fixture
def pitr_server(env, tmp_path: Path, private_mariadb: PrivateMariaDB):
    """(env, name of a pitr: true mysql-server block on the private server, a database on it
    with a table t, an event, and a name with a space, quotes, `%s` and unicode; dropped
    afterwards)."""
    tag = uuid.uuid4().hex[:8]
    name, db = f"pitr-{tag}", f"""dbb pitr %s 'q' "dq" ☺ {tag}"""  # hostile, but no backtick
    port = private_mariadb.port
    _apply(tmp_path, f"  {name}: {{type: mysql, host: 127.0.0.1, port: {port}, pitr: true}}\n")
    private_mariadb.create(db)
    private_mariadb.execute(
        db,
        "CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(20)) ENGINE=InnoDB",
        # an event: dbbackup appends it after mariadb-dump's output (blocks/mysql_events.py),
        # after the GTID line, which must still be found
        "CREATE EVENT e ON SCHEDULE EVERY 1 DAY STARTS '2037-01-01' DISABLE "
        "DO DELETE FROM t WHERE id < 0",
    )
    yield env, name, db
    private_mariadb.drop(db)
    private_mariadb.drop(db + "_restored")


def _manifest(env, server: str, db: str) -> tuple[Path, dict]:
    listed = json.loads(env.cli("list", server, "-d", db, "--json").stdout)
    key = backup_key(server, db, listed[-1]["backup_id"], MANIFEST_NAME)
    path = env.storage_path / key
    return path, json.loads(path.read_text())


def _inserted_after(server: PrivateMariaDB, db: str, binlog: dict) -> list[int]:
    """The ids of the rows of db.t whose INSERT events come after the position, in order,
    as the server's own mariadb-binlog decodes them from the binlog files."""
    files = [p for p in server.binlog_files() if p.name >= binlog["file"]]
    decoded = subprocess.run(
        ["mariadb-binlog", "--base64-output=decode-rows", "--verbose",
         f"--start-position={binlog['position']}", *map(str, files)],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    return [int(m["id"]) for m in INSERTED.finditer(decoded) if m["db"] == db]


def test_a_pitr_dump_records_the_binlog_position_of_its_own_snapshot(
    pitr_server, private_mariadb: PrivateMariaDB
):
    """Rows committed while the dump runs are either in the dump or after its recorded
    position in the binlog: never both, never neither. The dump restores equal."""
    env, server, db = pitr_server
    private_mariadb.execute(db, *(f"INSERT INTO t VALUES ({i}, 'before')" for i in range(1, 4)))
    written, stop = [3], threading.Event()

    def writer() -> None:  # one row per commit, ids in commit order, through the whole backup
        with private_mariadb.connect(db) as conn, conn.cursor() as cur:
            while not stop.is_set():
                cur.execute("INSERT INTO t VALUES (%s, 'during')", (written[-1] + 1,))
                written.append(written[-1] + 1)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        result = env.cli("backup", server, "-d", db)
    finally:
        stop.set()
        thread.join()
    assert result.exit_code == 0, result.output
    _, manifest = _manifest(env, server, db)
    binlog = manifest["binlog"]
    assert set(binlog) == {"file", "position", "gtid", "server_time"}
    # the server's own clock once the dump had ended: at or after the manifest's start
    server_time = datetime.fromisoformat(binlog["server_time"])
    assert abs(server_time - datetime.fromisoformat(manifest["finished_at"])) < timedelta(minutes=1)
    assert "--master-data=2" in manifest["dump_options"]
    # the GTID is the one the server itself gives those coordinates
    gtid = private_mariadb.query(
        None, "SELECT BINLOG_GTID_POS(%s, %s)", (binlog["file"], binlog["position"])
    )
    assert gtid == [(binlog["gtid"],)] and binlog["gtid"]

    target = db + "_restored"
    restored = env.cli("restore", server, db, "--into", target)
    assert restored.exit_code == 0, restored.output
    in_dump = [row[0] for row in private_mariadb.query(target, "SELECT id FROM t ORDER BY id")]
    after = _inserted_after(private_mariadb, db, binlog)
    assert len(written) > len(in_dump) > 3, "the writer did not overlap the dump's snapshot"
    assert in_dump + after == list(range(1, written[-1] + 1))
    source = private_mariadb.query(db, "SELECT * FROM t WHERE id <= %s", (in_dump[-1],))
    assert private_mariadb.query(target, "SELECT * FROM t") == source


def test_a_changed_binlog_position_is_refused_like_any_tampered_manifest(
    pitr_server, private_mariadb: PrivateMariaDB
):
    env, server, db = pitr_server
    private_mariadb.execute(db, "INSERT INTO t VALUES (1, 'x')")
    assert env.cli("backup", server, "-d", db).exit_code == 0
    path, manifest = _manifest(env, server, db)
    assert env.cli("list", server, "-d", db).stdout.splitlines()[-1].endswith("signed")
    manifest["binlog"]["position"] += 1
    path.write_text(json.dumps(manifest, indent=2))
    line = env.cli("list", server, "-d", db).stdout.splitlines()[-1]
    assert "INVALID: the signature does not match the manifest" in line, line
    backup_id = manifest["backup_id"]
    named = env.cli("restore", server, db, "--into", db + "_restored", "--backup-id", backup_id)
    assert named.exit_code == 2, named.output
    assert f"refusing backup {backup_id}" in named.stderr
    assert "invalid: the signature does not match" in named.stderr
    latest = env.cli("restore", server, db, "--into", db + "_restored")
    assert latest.exit_code == 3, latest.output
    assert "with a valid signature" in latest.stderr
    assert not private_mariadb.exists(db + "_restored")


def test_pitr_on_a_server_without_binlog_is_refused_before_any_dump(
    env, tmp_path: Path, my_db, my_admin: MyAdmin
):
    """The machine's MariaDB has log_bin OFF (and binlog_format MIXED): exit 3, naming each
    setting and the change to make; nothing is dumped, the server is left as it is."""
    before = my_admin.query(None, "SELECT @@log_bin, @@binlog_format")
    assert before[0][0] == 0, "this test needs the machine's MariaDB without a binary log"
    name, db = f"nobinlog-{uuid.uuid4().hex[:8]}", my_db()
    _apply(tmp_path, f"  {name}: {{type: mysql, host: 127.0.0.1, port: 3306, pitr: true}}\n")
    result = env.cli("backup", name, "-d", db)
    assert result.exit_code == 3, result.output
    assert "log_bin is OFF: set log_bin" in result.stderr
    if before[0][1] != "ROW":
        assert f"binlog_format is {before[0][1]}: set binlog_format = ROW" in result.stderr
    assert "[mariadbd] section" in result.stderr and "restart the server" in result.stderr
    assert stored_objects(env.storage_path, with_globals=True) == []
    assert my_admin.query(None, "SELECT @@log_bin, @@binlog_format") == before
