"""Point-in-time recovery after losing the server (docs/pitr.md): a MariaDB killed with
kill -9 and its data directory deleted is restored on another server from its dump and
archive, to as far as the archive goes: every row committed before the last archive run
began is back, and the rows restored are exactly the first ones written (none skipped)."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid

import pytest

from tests.mariadb_private import PrivateMariaDB


@pytest.fixture
def lost_and_new(env):
    """(the server to lose, the one to restore on): two private MariaDB servers."""
    lost, new = PrivateMariaDB.start(server_id=7), PrivateMariaDB.start(server_id=8)
    yield lost, new
    lost.stop()
    new.stop()


def test_a_killed_server_is_restored_to_its_last_archived_commit(env, lost_and_new):
    from prefect_dbbackup.blocks import MySQLServer

    lost, new = lost_and_new
    tag = uuid.uuid4().hex[:8]
    lost_name, new_name, db = f"lost-{tag}", f"new-{tag}", f"orders {tag}"
    for name, server in ((lost_name, lost), (new_name, new)):
        MySQLServer(host="127.0.0.1", port=server.port, user="root", pitr=True).save(name)
    lost.create(db)
    lost.execute(db, "CREATE TABLE t (id INT PRIMARY KEY, at DOUBLE) ENGINE=InnoDB")
    assert env.cli("archive", lost_name).exit_code == 0
    assert env.cli("backup", lost_name, "-d", db).exit_code == 0

    committed: list[tuple[int, float]] = []  # (id, time the commit returned)
    stop = threading.Event()

    def writer() -> None:
        with lost.connect(db) as conn, conn.cursor() as cur:
            while not stop.is_set():
                row = len(committed) + 1
                try:
                    cur.execute("INSERT INTO t VALUES (%s, %s)", (row, time.time()))
                    conn.commit()
                except Exception:  # noqa: BLE001 (the server was killed under it)
                    return
                committed.append((row, time.time()))
                time.sleep(0.01)

    thread = threading.Thread(target=writer)
    thread.start()
    last_run_began = 0.0
    try:
        for _ in range(3):
            time.sleep(1.0)
            began = time.time()
            assert env.cli("archive", lost_name).exit_code == 0
            last_run_began = began
        time.sleep(0.5)  # commits after the last run: lost with the server
        os.kill(lost.process.pid, signal.SIGKILL)
        lost.process.wait(timeout=30)
    finally:
        stop.set()
        thread.join(timeout=30)
    lost.stop()  # the data directory is gone

    restored = env.cli("restore", new_name, db, "--from-server", lost_name, "--to-time", "latest")
    assert restored.exit_code == 0, restored.output
    ids = [row[0] for row in new.query(db, "SELECT id FROM t ORDER BY id")]
    assert ids == list(range(1, len(ids) + 1))  # a prefix of what was written: no hole
    before_last_run = [row for row, at in committed if at < last_run_began]
    assert len(ids) >= len(before_last_run) > 0
    assert len(ids) <= len(committed) + 1  # a commit may land before its reply is read
