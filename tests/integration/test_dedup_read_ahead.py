"""A deduplicated backup reads its dump ahead of the chunking (tasks/stream.ReadAhead, one
hashing thread, issue #28): a dump many times the read-ahead comes back equal; a dump client
killed while the chunking is held up fails the backup and stores no manifest; no thread of
the backup outlives it."""

from __future__ import annotations

import os
import signal
import threading

from prefect_dbbackup.blocks.registry import load_storage
from prefect_dbbackup.tasks.catalog import list_backups
from prefect_dbbackup.tasks.dedup.writer import ChunkWriter
from prefect_dbbackup.tasks.stream import READ_AHEAD, READ_SIZE

from tests.integration.test_interrupt import _pg_dumps_of, _wait_for, _written

# ~150 MB of pg_dump output: more than the read-ahead, the chunker's buffer, the chunks
# waiting for their id and those in flight together (~80 MiB at most)
TABLE = (
    "CREATE TABLE t (id int PRIMARY KEY, v text);"
    "INSERT INTO t SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 1100000) g;"
)


def _backup_threads() -> list[str]:
    """Names of the threads a chunked backup starts, still alive."""
    prefixes = ("read-ahead", "chunk-ids_", "chunks_")
    return [t.name for t in threading.enumerate() if t.name.startswith(prefixes)]


def test_a_dump_many_times_the_read_ahead_comes_back_equal(env, pg_db, pg_admin, cleanup_pg):
    env = env.with_dedup()
    db = pg_db()
    pg_admin.execute(db, TABLE)
    result = env.cli("backup", env.pg, "--database", db)
    assert result.exit_code == 0, result.output
    assert _backup_threads() == []
    (manifest,) = list_backups(load_storage(env.storage), env.pg, db)
    assert manifest.chunks.raw_bytes > 5 * READ_AHEAD * READ_SIZE
    target = db + "_r"
    cleanup_pg.append(target)
    result = env.cli("restore", env.pg, db, "--into", target)  # checks the stream HMAC
    assert result.exit_code == 0, result.output
    assert pg_admin.table_fingerprints(target) == pg_admin.table_fingerprints(db)


def test_a_dump_client_killed_mid_stream_fails_the_backup(env, pg_db, pg_admin, monkeypatch):
    """The chunk uploads are held (a gate before the real store), so pg_dump fills the
    read-ahead and the pipe and waits, well before its end; it is killed there."""
    env = env.with_dedup()
    db = pg_db()
    pg_admin.execute(db, TABLE)
    gate, store_one = threading.Event(), ChunkWriter._store_one

    def held(self: ChunkWriter, cid: str, data: bytes) -> None:
        gate.wait()
        store_one(self, cid, data)

    monkeypatch.setattr(ChunkWriter, "_store_one", held)
    killed: list[int] = []

    def kill_mid_stream() -> None:
        try:
            _wait_for(lambda: _pg_dumps_of(db), 180, "pg_dump to start", 0.01)
            [pid] = _pg_dumps_of(db)
            _wait_for(lambda: _written(pid) > 2 * READ_AHEAD * READ_SIZE, 60, "32 MiB", 0.01)
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        finally:
            gate.set()

    killer = threading.Thread(target=kill_mid_stream)
    killer.start()
    try:
        result = env.cli("backup", env.pg, "--database", db)
    finally:
        gate.set()
        killer.join()
    assert killed, "pg_dump was not killed"
    assert result.exit_code == 2, result.output
    assert "killed by signal 9" in result.output
    assert list_backups(load_storage(env.storage), env.pg, db) == []
    assert _backup_threads() == []
