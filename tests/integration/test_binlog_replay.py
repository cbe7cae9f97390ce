"""The binlog replay of point-in-time recovery (docs/pitr.md, "Replaying the binlog to a
time"): MySQLServer.replay_binlog against the private MariaDB with its binary log on
(tests/mariadb_private.py), fed the server's own binlog files from its data directory.

Each history pins its sessions' clock (`SET timestamp`), which is what the binlog stamps its
events with: the commits fall in known seconds without sleeping, and the stop time is exactly
the second of the last commit that must be replayed."""

from __future__ import annotations

import functools
import io
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prefect_dbbackup.blocks import binlog_replay, process
from prefect_dbbackup.blocks.binlog import BinlogPosition, BinlogPositionReader
from prefect_dbbackup.blocks.errors import ConfigError, DbBackupError, Interrupted
from prefect_dbbackup.blocks.mysql import MySQLServer

from tests.mariadb_private import PrivateMariaDB

HOSTILE = """dbb replay %s 'q' "dq" ☺ {tag}"""  # a space, quotes, %s, unicode; no backtick
HOSTILE_TARGET = """dbb_into_'q'_"dq"_%s_☺_{tag}"""  # the same without blanks (--rewrite-db)


@dataclass
class History:
    """A database dumped at `position` (the dump restored into `target`), then changed at
    pinned seconds: `stop` is the second of the last change a replay to it must apply."""

    source: str
    target: str
    other: str
    position: BinlogPosition
    stop: datetime


def _at(server: PrivateMariaDB, second: int, *statements: str, database: str | None = None):
    """Run statements in one session whose clock says `second`."""
    with server.connect(database) as conn, conn.cursor() as cur:
        cur.execute("SET timestamp = %s", (second,))
        for statement in statements:
            cur.execute(statement)


def _dump_and_restore(server: PrivateMariaDB, source: str, target: str) -> BinlogPosition:
    """mariadb-dump --single-transaction --master-data=2 of source, restored into target;
    the binlog position the dump recorded."""
    dump = subprocess.run(
        ["mariadb-dump", "--no-defaults", "-h127.0.0.1", f"-P{server.port}", "-uroot",
         "--single-transaction", "--master-data=2", "--", source],
        capture_output=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    reader = BinlogPositionReader("the test's dump")
    reader.feed(dump)
    server.create(target)
    subprocess.run(
        ["mariadb", "--no-defaults", "-h127.0.0.1", f"-P{server.port}", "-uroot",
         "--binary-mode", f"--database={target}"],
        input=dump, check=True, timeout=60,
    )  # fmt: skip
    return reader.finish()


@pytest.fixture
def history(private_mariadb: PrivateMariaDB) -> Iterator[History]:
    """Rows 1-3 dumped; after the dump, at second s+1: row 4 (from another default database),
    a transaction writing row 5 and a row of the other database, table `made` created with a
    row; FLUSH BINARY LOGS; at s+2 (the stop): row 6; at s+3: row 7, `gone` dropped, `made`
    dropped, the other database changed."""
    tag = uuid.uuid4().hex[:8]
    source, target = HOSTILE.format(tag=tag), HOSTILE_TARGET.format(tag=tag)
    other = f"dbb_replay_other_{tag}"
    server = private_mariadb
    for name in (source, other):
        server.create(name)
    server.execute(
        source,
        "CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(20)) ENGINE=InnoDB",
        "CREATE TABLE gone (id INT PRIMARY KEY) ENGINE=InnoDB",
        "INSERT INTO gone VALUES (1)",
        *(f"INSERT INTO t VALUES ({i}, 'dumped')" for i in (1, 2, 3)),
    )
    server.execute(other, "CREATE TABLE u (id INT PRIMARY KEY) ENGINE=InnoDB")
    position = _dump_and_restore(server, source, target)
    s = int(time.time()) + 5  # later than every event before (binlog order = time order)
    q = server.q(source)
    _at(server, s + 1, f"INSERT INTO {q}.t VALUES (4, 'use other')", database=other)
    _at(server, s + 1, "BEGIN", f"INSERT INTO {q}.t VALUES (5, 'two dbs')",
        "INSERT INTO u VALUES (5)", "COMMIT", database=other)  # fmt: skip
    _at(server, s + 1, "CREATE TABLE made (id INT) ENGINE=InnoDB", "INSERT INTO made VALUES (1)",
        database=source)  # fmt: skip
    # DDL on the database from another default database: the filter leaves it out
    _at(server, s + 1, f"CREATE TABLE {q}.y (id INT)", database=other)
    server.execute(None, "FLUSH BINARY LOGS")
    _at(server, s + 2, "INSERT INTO t VALUES (6, 'at the stop')", database=source)
    _at(server, s + 3, "INSERT INTO t VALUES (7, 'after')", "DROP TABLE gone", "DROP TABLE made",
        database=source)  # fmt: skip
    _at(server, s + 3, "INSERT INTO u VALUES (7)", database=other)
    yield History(source, target, other, position, datetime.fromtimestamp(s + 2, UTC))
    for name in (source, target, other):
        server.drop(name)


def _files(server: PrivateMariaDB) -> list[binlog_replay.BinlogFile]:
    """The server's binlog files as they are now, as an archive holds them (a replay into
    the server must not read the events it writes itself)."""
    return [
        (path.name, functools.partial(io.BytesIO, path.read_bytes()))
        for path in server.binlog_files()
    ]


def _block(server: PrivateMariaDB, **fields: object) -> MySQLServer:
    return MySQLServer(host="127.0.0.1", port=server.port, user="root", **fields)


def _rows(server: PrivateMariaDB, database: str, table: str = "t") -> list[tuple]:
    return server.query(database, f"SELECT * FROM {server.q(table)} ORDER BY 1")


def _tables(server: PrivateMariaDB, database: str) -> list[str]:
    rows = server.query(
        None, "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s "
        "ORDER BY 1", (database,),
    )  # fmt: skip
    return [name for (name,) in rows]


def test_a_replay_to_a_time_applies_exactly_what_was_committed_up_to_that_second(
    private_mariadb: PrivateMariaDB, history: History, tmp_path: Path
):
    """Into another (hostile) name, across a FLUSH BINARY LOGS: rows 1-6 (6 at exactly the
    stop second), the table created before the stop with its row, the table dropped after it
    still there; nothing of the other database; the server logs the replay under new GTIDs."""
    server, h = private_mariadb, history
    assert h.position.file != server.binlog_files()[-1].name, "the history spans two files"
    gtid_before = server.query(None, "SELECT @@gtid_binlog_pos")[0][0]
    other_before = _rows(server, h.other, "u")
    result = _block(server).replay_binlog(
        _files(server), database=h.source, target=h.target, start_position=h.position,
        stop_time=h.stop, workdir=tmp_path,
    )  # fmt: skip
    assert _rows(server, h.target) == _rows(server, h.source)[:6]
    assert [row[0] for row in _rows(server, h.target)] == [1, 2, 3, 4, 5, 6]
    assert _tables(server, h.target) == ["gone", "made", "t"]
    assert _rows(server, h.target, "made") == [(1,)] and _rows(server, h.target, "gone") == [(1,)]
    assert _rows(server, h.other, "u") == other_before  # not applied again, nor into target
    # row 4, row 5, CREATE TABLE made, its row; row 6
    assert (result.transactions, result.last_time, result.log_ends_before_stop) == (
        5, h.stop, False,
    )  # fmt: skip
    assert result.first_time == datetime.fromtimestamp(h.stop.timestamp() - 1, UTC)
    assert result.file == server.binlog_files()[-1].name and result.position > 4
    assert (
        len(result.skipped) == 1
        and "CREATE TABLE ... run from another default" in (result.skipped[0])
    ), result.skipped
    # the replayed changes were logged as new transactions of this server, not under their
    # old GTIDs (which would move the server's GTID position back)
    domain, server_id, seq = (int(x) for x in gtid_before.split("-"))
    gtid_after = server.query(None, "SELECT @@gtid_binlog_pos")[0][0]
    assert gtid_after == f"{domain}-{server_id}-{seq + 5}", (gtid_before, gtid_after)


def test_a_replay_into_the_database_own_hostile_name_and_past_the_end_of_the_log(
    private_mariadb: PrivateMariaDB, history: History, tmp_path: Path
):
    """The source itself brought back: dropped, the dump restored under its own name (space,
    quotes, %s, unicode), replayed to a time after the last event: everything, and the result
    says the log ends before the stop time."""
    server, h = private_mariadb, history
    position = _as_dumped(server, h)
    later = datetime.fromtimestamp(h.stop.timestamp() + 3600, UTC)
    result = _block(server).replay_binlog(
        _files(server), database=h.source, target=h.source, start_position=position,
        stop_time=later, workdir=tmp_path,
    )  # fmt: skip
    assert [row[0] for row in _rows(server, h.source)] == [1, 2, 3, 4, 5, 6, 7]
    assert _tables(server, h.source) == ["t"]  # made and gone dropped, as they were
    assert result.log_ends_before_stop and result.log_end_time is not None
    assert result.log_end_time <= later


def _as_dumped(server: PrivateMariaDB, h: History) -> BinlogPosition:
    """The source as it was at the dump (rows 1-3 and `gone`), written without logging:
    the binlog after the history's position holds just its changes."""
    server.execute(
        None,
        "SET sql_log_bin = 0",
        f"DROP DATABASE {server.q(h.source)}",
        f"CREATE DATABASE {server.q(h.source)} CHARACTER SET utf8mb4",
        f"USE {server.q(h.source)}",
        "CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(20)) ENGINE=InnoDB",
        "CREATE TABLE gone (id INT PRIMARY KEY) ENGINE=InnoDB",
        "INSERT INTO gone VALUES (1)",
        *(f"INSERT INTO t VALUES ({i}, 'dumped')" for i in (1, 2, 3)),
    )
    return h.position


@pytest.mark.parametrize("short", [10, 30], ids=["in-a-body", "in-a-header"])
def test_a_truncated_binlog_file_fails_naming_the_file_and_position(
    private_mariadb: PrivateMariaDB, history: History, tmp_path: Path, short: int
):
    """The last event is an Xid event (31 bytes): 10 bytes short cuts its body, 30 its
    header."""
    server, h = private_mariadb, history
    files = _files(server)
    name, opener = files[-1]
    data = opener().read()
    files[-1] = (name, lambda: io.BytesIO(data[:-short]))
    later = datetime.fromtimestamp(h.stop.timestamp() + 3600, UTC)
    with pytest.raises(DbBackupError) as err:
        _block(server).replay_binlog(
            files, database=h.source, target=h.target, start_position=h.position,
            stop_time=later, workdir=tmp_path,
        )  # fmt: skip
    message = str(err.value)
    assert f"binlog replay, {name} at position " in message, message
    assert "the file ends inside an event: it is truncated or damaged" in message


def test_names_rewrite_db_cannot_carry_are_refused_before_anything_runs(
    private_mariadb: PrivateMariaDB, history: History, tmp_path: Path
):
    server, h = private_mariadb, history
    before = _rows(server, h.target)
    for target, why in (("has blank", "contains a blank"), ("a->b", "contains '->'")):
        with pytest.raises(ConfigError) as err:
            _block(server).replay_binlog(
                _files(server), database=h.source, target=target, start_position=h.position,
                stop_time=h.stop, workdir=tmp_path,
            )  # fmt: skip
        assert f"target {target!r} {why}" in str(err.value)
        assert "rename it afterwards" in str(err.value)
        assert not server.exists(target)
    assert _rows(server, h.target) == before


def test_a_statement_naming_the_database_is_not_replayed_into_another_name(
    private_mariadb: PrivateMariaDB, history: History, tmp_path: Path
):
    """`USE db; CREATE TABLE db.x`: --rewrite-db renames only the default database, so the
    replay under another name would create x in the source: refused, naming the statement."""
    server, h = private_mariadb, history
    stop = h.stop.timestamp() + 10
    _at(server, int(stop), f"CREATE TABLE {server.q(h.source)}.x (id INT)", database=h.source)
    with pytest.raises(ConfigError) as err:
        _block(server).replay_binlog(
            _files(server), database=h.source, target=h.target, start_position=h.position,
            stop_time=datetime.fromtimestamp(stop, UTC), workdir=tmp_path,
        )  # fmt: skip
    assert "a statement (CREATE TABLE ...) run in the database names the database" in str(err.value)
    assert "x" not in _tables(server, h.target)


def test_a_wrong_password_is_in_no_argv_and_no_error(
    private_mariadb: PrivateMariaDB, history: History, tmp_path: Path, monkeypatch
):
    server, h = private_mariadb, history
    secret = "Wr0ng-" + uuid.uuid4().hex
    argvs: list[list[str]] = []

    class Recording(process.ToolProcess):
        def __enter__(self):  # noqa: ANN204
            argvs.append(self.argv)
            return super().__enter__()

    monkeypatch.setattr(binlog_replay, "ToolProcess", Recording)
    block = _block(server, password=secret)
    block._server_version = server.query(None, "SELECT VERSION()")[0][0]  # skip the login
    with pytest.raises(DbBackupError) as err:
        block.replay_binlog(
            _files(server), database=h.source, target=h.target, start_position=h.position,
            stop_time=h.stop, workdir=tmp_path,
        )  # fmt: skip
    assert "Access denied" in str(err.value)
    assert argvs and not any(secret in arg for argv in argvs for arg in argv)
    assert secret not in str(err.value) and secret not in repr(err.value.__cause__)


def test_a_stop_ends_the_replay_and_both_clients(
    private_mariadb: PrivateMariaDB, history: History, tmp_path: Path, monkeypatch
):
    """SIGINT while the replay waits for binlog bytes that do not come: both children are
    killed and the replay ends Interrupted."""
    server, h = private_mariadb, history
    read_end, write_end = os.pipe()
    children: list[process.ToolProcess] = []

    class Recording(process.ToolProcess):
        def __enter__(self):  # noqa: ANN204
            children.append(self)
            return super().__enter__()

    monkeypatch.setattr(binlog_replay, "ToolProcess", Recording)
    files = [(h.position.file, lambda: os.fdopen(read_end, "rb"))]
    data = (server.data / h.position.file).read_bytes()
    os.write(write_end, data[:4096])  # then nothing: the feeder waits for more

    def stop_when_both_run() -> None:
        while len(children) < 2 or any(c.proc is None for c in children):
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=stop_when_both_run, daemon=True).start()
    closing = threading.Lock()

    def close_once() -> bool:  # at the end, or after 60 s if the stop did not end the replay
        if closing.acquire(blocking=False):
            os.close(write_end)
            return True
        return False

    threading.Timer(60, close_once).start()
    try:
        with process.stop_on_signals(), pytest.raises(Interrupted):
            _block(server).replay_binlog(
                files, database=h.source, target=h.target, start_position=h.position,
                stop_time=h.stop, workdir=tmp_path,
            )  # fmt: skip
    finally:
        ended_first = close_once()
        with process.stop_on_signals():
            pass  # the next run starts with the handlers back
    assert ended_first, "the replay waited for its stream to end instead of stopping"
    assert [c.name for c in children] == ["mariadb", "mariadb-binlog"]
    assert all(c.proc is not None and c.proc.returncode == -signal.SIGKILL for c in children)


@pytest.mark.parametrize(
    ("file", "position", "error"),
    [
        ("binlog.999999", 4, "the start position's file binlog.999999 is not among the binlog"),
        (None, 5, "the start position 5 is inside an event"),
        (None, 1 << 30, "before the start position 1073741824"),
    ],
)
def test_a_start_position_that_does_not_fit_the_files_is_refused(
    private_mariadb: PrivateMariaDB, history: History, tmp_path: Path, file, position, error
):
    server, h = private_mariadb, history
    start = BinlogPosition(file=file or h.position.file, position=position, gtid="")
    with pytest.raises(DbBackupError) as err:
        _block(server).replay_binlog(
            _files(server), database=h.source, target=h.target, start_position=start,
            stop_time=h.stop, workdir=tmp_path,
        )  # fmt: skip
    assert error in str(err.value)
    assert [row[0] for row in _rows(server, h.target)] == [1, 2, 3]
