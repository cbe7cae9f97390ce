"""Chunk GC under faults (docs/dedup.md, "Garbage collection"): a prune frozen in the middle
of its mark, clock steps between mark and sweep, blocks that disagree on the grace, and a
full storage. In each, a backup that exits 0 stays restorable.

The setup is test_dedup_gc's: databases X and Y share their rows; X's backup is removed
(as retention would) so that its chunks are unreferenced, while Y's backup relies on them.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from dataclasses import replace
from datetime import datetime, timedelta

import pytest
from prefect_dbbackup.blocks import LocalBackupStorage
from prefect_dbbackup.blocks.registry import load_storage
from prefect_dbbackup.blocks.storage_keys import new_dedup_key
from prefect_dbbackup.flows.backup_report import BackupFailed
from prefect_dbbackup.tasks.catalog import list_backups
from prefect_dbbackup.tasks.dedup import gc as dedup_gc
from prefect_dbbackup.tasks.dedup.gc import collect_chunks
from prefect_dbbackup.tasks.dedup.layout import CHUNKS, FOSSILS, GC, chunk_key, fossil_key

from tests.helpers import age_gc_marks
from tests.integration.test_dedup_gc import (
    PausedBackup,
    _chunk_ids,
    _pair,
    _remove_backup,
    _restore_equals,
)

BOTH = pytest.mark.parametrize("where", ["local", "s3"])


def _dedup(env, request: pytest.FixtureRequest, where: str, **fields: object):  # noqa: ANN001, ANN202
    """`env` with a deduplicating storage on local disk or on the real S3 server."""
    return env.with_dedup(request.getfixturevalue("s3_server") if where == "s3" else None, **fields)


class FrozenMark:
    """A prune (collect_chunks) in a thread, frozen inside the move of the first chunk of
    `target` it sets aside (in the fossils, not yet out of chunks/) until thaw()."""

    def __init__(self, storage, target: set[str], monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
        self.reached, self.go = threading.Event(), threading.Event()
        self.error: BaseException | None = None
        put = type(storage).put_bytes

        def frozen_put(store, key: str, data: bytes) -> None:  # noqa: ANN001
            put(store, key, data)
            if (
                key.startswith(FOSSILS)
                and key.rsplit("/", 1)[1] in target
                and threading.current_thread() is self.thread
                and not self.reached.is_set()
            ):
                self.reached.set()
                assert self.go.wait(120)

        monkeypatch.setattr(type(storage), "put_bytes", frozen_put)

        def run() -> None:
            try:
                collect_chunks(storage)
            except BaseException as exc:  # noqa: BLE001
                self.error = exc

        self.thread = threading.Thread(target=run)
        self.thread.start()
        assert self.reached.wait(120), "the prune never set a chunk aside"

    def thaw(self) -> BaseException | None:
        self.go.set()
        self.thread.join(120)
        return self.error


@BOTH
def test_a_mark_frozen_past_the_grace_leaves_the_chunks_a_new_backup_reuses(
    env, pg_db, pg_admin, cleanup_pg, monkeypatch, request, where
):
    """Issue #23 case 4: a prune frozen mid-move for longer than the grace, while a backup
    reuses the chunk and another prune sweeps that mark; on thawing it must not take the
    chunk out of chunks/."""
    env = _dedup(env, request, where, dedup_grace_hours=10 / 3600, dedup_fence_hours=1 / 3600)
    x, y, storage, mx = _pair(pg_db, pg_admin, env)
    assert env.cli("backup", env.pg, "--database", y).exit_code == 0
    (my1,) = list_backups(storage, env.pg, y)
    shared = {c for c, _ in mx.chunks.order} & {c for c, _ in my1.chunks.order}
    for gone in (mx, my1):
        _remove_backup(storage, gone)
    frozen = FrozenMark(storage, shared, monkeypatch)  # frozen inside a shared chunk's move
    assert env.cli("backup", env.pg, "--database", y).exit_code == 0  # reuses that chunk
    (my,) = list_backups(storage, env.pg, y)
    assert my.chunks.reused >= 1
    time.sleep(10.5)  # the frozen mark is past the grace
    assert env.cli("prune", env.pg).exit_code == 0  # sweeps it: Y names its fossils
    assert frozen.thaw() is None
    assert {c for c, _ in my.chunks.order} <= _chunk_ids(storage, CHUNKS)
    _restore_equals(env, pg_admin, cleanup_pg, y, "r")


@BOTH
def test_fossils_of_a_swept_mark_go_back_to_chunks(
    env, pg_db, pg_admin, cleanup_pg, request, where
):
    """A marker killed after its late move landed in a swept mark's fossils (no mark file
    any more): nothing deletes those fossils, the next prune puts them back."""
    env = _dedup(env, request, where)
    x, y, storage, mx = _pair(pg_db, pg_admin, env)
    first = mx.chunks.order[0][0]
    (key,) = [k for k in storage.list_keys(CHUNKS) if k.endswith(first)]
    rset, cid = key.split("/")[2], key.rsplit("/", 1)[1]
    orphan = fossil_key("20261206T031500Z-0a1b2c3d", rset, cid)
    storage.put_bytes(orphan, storage.get_bytes(key))
    storage.delete(key)
    assert not storage.list_keys(GC)  # no collection names that mark

    assert env.cli("prune", env.pg).exit_code == 0
    assert storage.exists(chunk_key(rset, cid)) and not storage.exists(orphan)
    _restore_equals(env, pg_admin, cleanup_pg, x, "r")


def _shift_clock(monkeypatch: pytest.MonkeyPatch, by: timedelta) -> None:
    """dbbackup's wall clock (the GC's datetime), `by` ahead."""

    class Shifted(datetime):
        @classmethod
        def now(cls, tz=None):  # noqa: ANN001, ANN206
            return datetime.now(tz) + by

    monkeypatch.setattr(dedup_gc, "datetime", Shifted)


def test_a_clock_step_between_mark_and_sweep_deletes_no_chunk_a_backup_relies_on(
    env, pg_db, pg_admin, cleanup_pg, monkeypatch, caplog
):
    """Issue #23 case 5: local storage, whose clock is the worker's, steps two hours forward
    (past the grace) while a backup that reused set-aside chunks is within its fence."""
    env = env.with_dedup(dedup_grace_hours=1, dedup_fence_hours=0.5)
    x, y, storage, mx = _pair(pg_db, pg_admin, env)
    paused = PausedBackup(env, y, monkeypatch)
    _remove_backup(storage, mx)
    mark = collect_chunks(storage).mark  # sets aside the chunks Y relies on
    assert mark and _chunk_ids(storage, FOSSILS)
    step = timedelta(hours=2)
    mark_file = env.storage_path / f"{GC}/{mark}.json"
    stamp = mark_file.stat().st_mtime - step.total_seconds()
    os.utime(mark_file, (stamp, stamp))  # the mark's store time, seen after the step
    _shift_clock(monkeypatch, step)

    collect_chunks(storage)  # no manifest names Y's chunks yet
    assert paused.resume() is None  # within its fence: no second look at its chunks
    _restore_equals(env, pg_admin, cleanup_pg, y, "r")
    assert "a clock stepped; its sweep waits" in caplog.text


@BOTH
def test_blocks_with_a_shorter_grace_collect_with_the_storages_grace(
    env, pg_db, pg_admin, cleanup_pg, monkeypatch, caplog, request, where
):
    """Issue #23 case 5: a second block on the same storage with a grace of seconds must not
    sweep chunks that a backup of the first block (grace 1 h) relies on."""
    env = _dedup(env, request, where, dedup_grace_hours=1, dedup_fence_hours=0.5)
    x, y, storage, mx = _pair(pg_db, pg_admin, env)
    hasty = storage.model_copy(
        update={"dedup_grace_hours": 2 / 3600, "dedup_fence_hours": 1 / 3600}
    )
    paused = PausedBackup(env, y, monkeypatch)
    _remove_backup(storage, mx)
    assert collect_chunks(hasty).set_aside
    time.sleep(2.5)
    collect_chunks(hasty)
    assert paused.resume() is None
    _restore_equals(env, pg_admin, cleanup_pg, y, "r")
    assert "the storage's values apply" in caplog.text


def _fill(root) -> None:  # noqa: ANN001
    """Write a file into the storage until the kernel says its disk is full."""
    fd = os.open(root / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)


def test_prune_of_a_full_storage_sweeps_and_frees_space(env, pg_db, pg_admin, tiny_disk, caplog):
    """Issue #23 case 12: on a full deduplicating storage the backup's error names the
    storage, and prune (the remedy) still sweeps the collections past their grace."""
    name = f"tiny-{uuid.uuid4().hex[:8]}"
    path = tiny_disk / "backups"
    LocalBackupStorage(
        path=str(path), dedup=True, dedup_key=new_dedup_key(), dedup_grace_hours=2 / 3600,
        dedup_fence_hours=1 / 3600, **env.signing_fields(),
    ).save(name)  # fmt: skip
    env = replace(env, storage=name, storage_path=path)
    x = pg_db()
    pg_admin.execute(
        x, "CREATE TABLE t AS SELECT g, md5(random()::text) AS v FROM generate_series(1, 1500) g"
    )
    assert env.cli("backup", env.pg, "-d", x).exit_code == 0
    storage = load_storage(name)
    (mx,) = list_backups(storage, env.pg, x)
    _remove_backup(storage, mx)
    assert collect_chunks(storage).set_aside
    age_gc_marks(path, 2.5)  # past the grace; then other writers fill the storage
    _fill(path)

    y = pg_db()
    pg_admin.execute(
        y, "CREATE TABLE t AS SELECT g, md5(random()::text) AS v FROM generate_series(1, 9000) g"
    )
    backup = env.cli("backup", env.pg, "-d", y)
    assert backup.exit_code != 0
    assert f"backup storage {path} is full" in backup.output
    assert "work dir" not in backup.output

    free = os.statvfs(tiny_disk).f_bfree
    prune = env.cli("prune", env.pg)
    assert prune.exit_code == 0, prune.output
    assert not _chunk_ids(storage, FOSSILS)  # the mark past its grace was swept
    assert os.statvfs(tiny_disk).f_bfree > free
    assert "this prune only sweeps earlier collections" in caplog.text  # the run's log


@BOTH
def test_a_backup_whose_reused_chunks_vanish_before_its_manifest_fails_naming_them(
    env, pg_db, pg_admin, monkeypatch, request, where
):
    """No exit 0 for work not done: whatever removed the chunks a backup reused while it
    ran (a prune under a fault no rule above covers, a person), the backup checks them
    after writing its manifest and fails naming them."""
    env = _dedup(env, request, where)
    x, y, storage, mx = _pair(pg_db, pg_admin, env)
    paused = PausedBackup(env, y, monkeypatch)
    assert paused.writer.reused >= 1
    of_x = {c for c, _ in mx.chunks.order}
    for key in storage.list_keys(CHUNKS):
        if key.rsplit("/", 1)[1] in of_x:
            storage.delete(key)
    error = paused.resume()
    assert isinstance(error, BackupFailed)
    message = str(error.report.failed[0].error)
    assert "cannot be restored" in message
    assert any(cid in message for cid in of_x)
