"""Garbage collection of chunks (docs/dedup.md): unreferenced chunks go, and a chunk that a
running backup relies on is never deleted, whatever a prune does meanwhile.

The race tests stop a backup of database Y between "these chunks exist" and "manifest
written" (at its fence check). Y's table chunks are shared with database X (the same rows);
X's backup is then removed (as retention would) and a full prune runs.
"""

from __future__ import annotations

import threading
import time

import pytest
from prefect_dbbackup.blocks.registry import load_storage
from prefect_dbbackup.flows.backup import backup_server
from prefect_dbbackup.flows.backup_report import BackupFailed
from prefect_dbbackup.tasks.catalog import list_backups
from prefect_dbbackup.tasks.dedup.gc import collect_chunks
from prefect_dbbackup.tasks.dedup.layout import CHUNKS, FOSSILS, parse_chunk_key
from prefect_dbbackup.tasks.dedup.writer import ChunkWriter
from prefect_dbbackup.tasks.layout import MANIFEST_NAME, SIGNATURE_NAME, backup_key

from tests.helpers import age_gc_marks

ROWS = 40_000
TABLE = (
    "CREATE TABLE t (id int PRIMARY KEY, v text);"
    f"INSERT INTO t SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, {ROWS}) g;"
)


def _chunk_ids(storage, area: str) -> set[str]:  # noqa: ANN001
    return {parse_chunk_key(k)[1] for k in storage.list_keys(area) if parse_chunk_key(k)}


def _remove_backup(storage, manifest) -> None:  # noqa: ANN001
    """What retention does to a backup: its manifest (and signature) go."""
    for name in (MANIFEST_NAME, SIGNATURE_NAME):
        storage.delete(
            backup_key(manifest.server, manifest.database, manifest.backup_id, name, manifest.kind)
        )


class PausedBackup:
    """A backup of one database running in a thread, stopped at its fence check (after
    every chunk was found or stored, before the manifest) until resume()."""

    def __init__(self, env, database: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
        self.reached, self.go = threading.Event(), threading.Event()
        self.writer = None
        self.error: BaseException | None = None
        original = ChunkWriter.fence

        def paused_fence(writer, chunks, fence_seconds):  # noqa: ANN001, ANN202
            self.writer = writer
            self.reached.set()
            assert self.go.wait(120)
            return original(writer, chunks, fence_seconds)

        monkeypatch.setattr(ChunkWriter, "fence", paused_fence)

        def run() -> None:
            try:
                backup_server(
                    server=env.pg, storage=env.storage, encryption=env.encryption,
                    databases=[database],
                )  # fmt: skip
            except BaseException as exc:  # noqa: BLE001
                self.error = exc

        self.thread = threading.Thread(target=run)
        self.thread.start()
        assert self.reached.wait(120), "the backup never reached its manifest"

    def resume(self) -> BaseException | None:
        self.go.set()
        self.thread.join(120)
        return self.error


def _pair(pg_db, pg_admin, env):  # noqa: ANN001, ANN202
    """Databases X and Y with the same rows, and a stored backup of X."""
    x, y = pg_db(), pg_db()
    pg_admin.execute(x, TABLE)
    pg_admin.execute(y, TABLE)
    assert env.cli("backup", env.pg, "--database", x).exit_code == 0
    storage = load_storage(env.storage)
    (mx,) = list_backups(storage, env.pg, x)
    return x, y, storage, mx


def _restore_equals(env, pg_admin, cleanup_pg, source: str, suffix: str) -> None:  # noqa: ANN001
    target = f"{source}_{suffix}"
    cleanup_pg.append(target)
    result = env.cli("restore", env.pg, source, "--into", target)
    assert result.exit_code == 0, result.output
    assert pg_admin.table_fingerprints(target) == pg_admin.table_fingerprints(source)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_prune_sets_aside_then_deletes_unreferenced_chunks(
    env, pg_db, pg_admin, cleanup_pg, request, where
):
    s3 = request.getfixturevalue("s3_server") if where == "s3" else None
    env = env.with_dedup(s3, dedup_grace_hours=3 / 3600, dedup_fence_hours=1 / 3600)
    x, y, storage, mx = _pair(pg_db, pg_admin, env)
    assert env.cli("backup", env.pg, "--database", y).exit_code == 0
    (my,) = list_backups(storage, env.pg, y)
    only_x = {c for c, _ in mx.chunks.order} - {c for c, _ in my.chunks.order}
    assert only_x  # at least the chunk holding X's own archive header
    _remove_backup(storage, mx)

    assert env.cli("prune", env.pg).exit_code == 0  # mark: set aside, nothing deleted
    assert _chunk_ids(storage, FOSSILS) == only_x
    assert not _chunk_ids(storage, CHUNKS) & only_x
    time.sleep(3.5)
    assert env.cli("prune", env.pg).exit_code == 0  # sweep, past the grace period
    assert not _chunk_ids(storage, FOSSILS)
    assert _chunk_ids(storage, CHUNKS) == {c for c, _ in my.chunks.order}
    assert not storage.list_keys("_dedup/gc")
    _restore_equals(env, pg_admin, cleanup_pg, y, "r")


def test_backup_resumed_within_the_fence_survives_a_full_prune(
    env, pg_db, pg_admin, cleanup_pg, monkeypatch
):
    """Resumed within the fence: the manifest is written at once, then the backup copies
    back the chunks set aside meanwhile; the sweep after the grace period finds them named."""
    env = env.with_dedup(dedup_grace_hours=40 / 3600, dedup_fence_hours=30 / 3600)
    x, y, storage, mx = _pair(pg_db, pg_admin, env)
    paused = PausedBackup(env, y, monkeypatch)
    assert paused.writer.reused >= 1  # Y relies on chunks only X's backup named
    _remove_backup(storage, mx)
    assert env.cli("prune", env.pg).exit_code == 0  # full prune: retention, then chunks
    set_aside = _chunk_ids(storage, FOSSILS)
    assert paused.resume() is None
    (my,) = list_backups(storage, env.pg, y)
    # the chunks Y relies on were set aside while it ran: no manifest named them then
    assert set_aside & {c for c, _ in my.chunks.order}
    _restore_equals(env, pg_admin, cleanup_pg, y, "r1")

    age_gc_marks(env.storage_path, 41)  # past the grace by every clock, without waiting
    assert env.cli("prune", env.pg).exit_code == 0  # the sweep finds Y's manifest
    assert not _chunk_ids(storage, FOSSILS)
    assert {c for c, _ in my.chunks.order} <= _chunk_ids(storage, CHUNKS)
    _restore_equals(env, pg_admin, cleanup_pg, y, "r2")


def test_backup_resumed_after_the_fence_brings_its_chunks_back(
    env, pg_db, pg_admin, cleanup_pg, monkeypatch
):
    env = env.with_dedup(dedup_grace_hours=60 / 3600, dedup_fence_hours=1 / 3600)
    x, y, storage, mx = _pair(pg_db, pg_admin, env)
    paused = PausedBackup(env, y, monkeypatch)
    _remove_backup(storage, mx)
    collect_chunks(storage)
    assert _chunk_ids(storage, FOSSILS)
    time.sleep(1.5)  # past the fence, before the sweep
    assert paused.resume() is None
    (my,) = list_backups(storage, env.pg, y)
    assert {c for c, _ in my.chunks.order} <= _chunk_ids(storage, CHUNKS)
    _restore_equals(env, pg_admin, cleanup_pg, y, "r")


def test_backup_resumed_after_the_sweep_fails_without_a_manifest_and_the_retry_works(
    env, pg_db, pg_admin, cleanup_pg, monkeypatch
):
    env = env.with_dedup(dedup_grace_hours=2 / 3600, dedup_fence_hours=1 / 3600)
    x, y, storage, mx = _pair(pg_db, pg_admin, env)
    paused = PausedBackup(env, y, monkeypatch)
    _remove_backup(storage, mx)
    collect_chunks(storage)  # mark
    time.sleep(2.5)  # real time: the paused backup's fence must pass too
    collect_chunks(storage)  # sweep: no manifest names them, so they are deleted
    assert not _chunk_ids(storage, FOSSILS)
    error = paused.resume()
    assert isinstance(error, BackupFailed)
    assert "vanished during the backup" in str(error.report.failed[0].error)
    assert list_backups(storage, env.pg, y) == []  # no manifest naming a deleted chunk
    monkeypatch.undo()
    assert env.cli("backup", env.pg, "--database", y).exit_code == 0  # uploads them again
    (my,) = list_backups(storage, env.pg, y)
    assert {c for c, _ in my.chunks.order} <= _chunk_ids(storage, CHUNKS)
    _restore_equals(env, pg_admin, cleanup_pg, y, "r")


def test_restore_of_a_backup_whose_chunk_is_gone_names_it(env, pg_db, pg_admin, cleanup_pg):
    env = env.with_dedup()
    x, _, storage, mx = _pair(pg_db, pg_admin, env)
    cid = mx.chunks.order[-1][0]
    (key,) = [k for k in storage.list_keys(CHUNKS) if k.endswith(cid)]
    storage.delete(key)
    target = x + "_r"
    cleanup_pg.append(target)
    result = env.cli("restore", env.pg, x, "--into", target)
    assert result.exit_code != 0
    assert f"chunk {cid} is missing" in result.output
    assert not pg_admin.exists(target)  # the partial restore was dropped
