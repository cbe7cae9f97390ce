"""docs/dedup.md, "Faults": a kill -9 of a prune leaves a half-done mark or sweep, which the
next prune finishes; no chunk a kept backup names is lost meanwhile, and the garbage goes.

A real `dbbackup prune` process is run in short steps (SIGSTOP/SIGCONT) and killed with
SIGKILL at the moment the storage shows its mark (or sweep) half done. The setup is
test_dedup_gc's: X's backup removed (its chunks are garbage), Y's kept.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from prefect_dbbackup.blocks.registry import load_storage
from prefect_dbbackup.tasks.catalog import list_backups
from prefect_dbbackup.tasks.chunks import CHUNKS, FOSSILS, GC

from tests.integration.cli_process import start_cli, storage_args, wait_for
from tests.integration.test_dedup_gc import _chunk_ids, _remove_backup, _restore_equals

GRACE, FENCE = 10, 1  # seconds; a mark's time budget is half their difference


def _files(root: Path, area: str) -> set[str]:
    """Names of the chunk files under area (temp files left out; os.walk skips a directory
    the prune removes meanwhile)."""
    return {n for _, _, names in os.walk(root / area) for n in names if not n.startswith(".")}


def _kill_when(cli: subprocess.Popen, moment, what: str) -> None:  # noqa: ANN001
    """Run cli in steps of 5 ms; SIGKILL it as soon as moment() is true between two steps."""
    wait_for(lambda: cli.poll() is not None or moment(), 300, what, step=0.002)
    os.kill(cli.pid, signal.SIGSTOP)
    try:
        while not moment():
            assert cli.poll() is None, f"the prune ended before {what}: {cli.communicate()[1]}"
            os.kill(cli.pid, signal.SIGCONT)
            time.sleep(0.005)
            os.kill(cli.pid, signal.SIGSTOP)
    finally:
        if cli.poll() is None:
            os.kill(cli.pid, signal.SIGKILL)
        cli.communicate()
    assert cli.returncode == -signal.SIGKILL


def test_a_prune_killed_in_its_mark_and_in_its_sweep_is_finished_by_the_next(
    env, pg_db, pg_admin, cleanup_pg, tmp_path
):
    env = env.with_dedup(dedup_grace_hours=GRACE / 3600, dedup_fence_hours=FENCE / 3600)
    x, y = pg_db(), pg_db()
    pg_admin.execute(  # several chunks of garbage: a mark has several moves to make
        x, "CREATE TABLE t AS SELECT g, md5(random()::text) AS v FROM generate_series(1, 120000) g"
    )
    pg_admin.execute(
        y, "CREATE TABLE t AS SELECT g, md5(g::text) AS v FROM generate_series(1, 3000) g"
    )
    for db in (x, y):
        assert env.cli("backup", env.pg, "--database", db).exit_code == 0
    storage = load_storage(env.storage)
    (mx,), (my,) = list_backups(storage, env.pg, x), list_backups(storage, env.pg, y)
    of_y = {c for c, _ in my.chunks.order}
    garbage = {c for c, _ in mx.chunks.order} - of_y
    assert len(garbage) >= 3, garbage
    _remove_backup(storage, mx)
    home = str(tmp_path / "home")  # the killed runs' records stay in the test's own dir
    root, argv = env.storage_path, ["prune", env.pg, *storage_args(env, "prune")]

    # kill -9 in the mark: some garbage set aside, some still in chunks/
    def mark_half_done() -> bool:
        return bool(_files(root, FOSSILS)) and bool(garbage & set(_files(root, CHUNKS)))

    _kill_when(
        start_cli(argv, tmp_path / "work", PREFECT_HOME=home),
        mark_half_done,
        "its mark was half done",
    )
    assert of_y <= set(_files(root, CHUNKS))  # what Y names was never touched
    assert env.cli("prune", env.pg).exit_code == 0  # goes on: the rest is set aside
    assert not garbage & _chunk_ids(storage, CHUNKS)
    fossils = _chunk_ids(storage, FOSSILS)
    assert fossils <= garbage and len(fossils) >= 2, "the first mark was swept already"

    # kill -9 in the sweep: some fossils deleted, some not yet
    wait_for(
        lambda: all(time.time() - p.stat().st_mtime > GRACE + 1 for p in (root / GC).iterdir()),
        60, "the marks to pass their grace", 0.2,
    )  # fmt: skip

    marks = set(storage.list_keys(GC))

    def sweep_half_done() -> bool:
        return 0 < len(_files(root, FOSSILS)) < len(fossils)

    _kill_when(
        start_cli(argv, tmp_path / "work", PREFECT_HOME=home),
        sweep_half_done,
        "its sweep was half done",
    )
    assert env.cli("prune", env.pg).exit_code == 0  # finishes the sweep
    assert not _chunk_ids(storage, FOSSILS)
    # the swept marks are gone (the killed prune's own mark, empty, waits for its grace)
    assert not marks & set(storage.list_keys(GC))
    assert _chunk_ids(storage, CHUNKS) == of_y
    _restore_equals(env, pg_admin, cleanup_pg, y, "r")
