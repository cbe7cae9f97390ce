"""docs/dedup.md, "Faults": a kill -9 of a prune leaves a half-done mark or sweep, which the
next prune finishes; no chunk a kept backup names is lost meanwhile, and the garbage goes.

A real `dbbackup prune` process is run in short steps (SIGSTOP/SIGCONT) and killed with
SIGKILL at the moment the storage shows its mark (or sweep) half done. The setup is
test_dedup_gc's: X's backup removed (its chunks are garbage), Y's kept.

Also docs/dedup.md, "Garbage collection": a mark stops after its time budget and the next
prune goes on. A real prune is held (SIGSTOP) mid-mark past the storage's budget, then let
go: it stops, exits 0 (every backup is whole) saying so, and the next prune goes on.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from prefect_dbbackup.blocks.registry import load_storage
from prefect_dbbackup.tasks.catalog import list_backups
from prefect_dbbackup.tasks.dedup.layout import CHUNKS, FOSSILS, GC, boottime, gc_parameters

from tests.helpers import age_gc_marks
from tests.integration.cli_process import start_cli, storage_args, wait_for
from tests.integration.test_dedup_gc import _chunk_ids, _remove_backup, _restore_equals
from tests.integration.test_dedup_gc_object_lock import _chunk_line

GRACE, FENCE = 10, 1  # seconds; a mark's time budget is half their difference


def _files(root: Path, area: str) -> set[str]:
    """Names of the chunk files under area (temp files left out; os.walk skips a directory
    the prune removes meanwhile)."""
    return {n for _, _, names in os.walk(root / area) for n in names if not n.startswith(".")}


def _stop_when(cli: subprocess.Popen, moment, what: str) -> None:  # noqa: ANN001
    """Run cli in steps of 5 ms; leave it stopped (SIGSTOP) as soon as moment() is true
    between two steps."""
    wait_for(lambda: cli.poll() is not None or moment(), 300, what, step=0.002)
    os.kill(cli.pid, signal.SIGSTOP)
    while not moment():
        assert cli.poll() is None, f"the prune ended before {what}: {cli.communicate()[1]}"
        os.kill(cli.pid, signal.SIGCONT)
        time.sleep(0.005)
        os.kill(cli.pid, signal.SIGSTOP)


def _kill_when(cli: subprocess.Popen, moment, what: str) -> None:  # noqa: ANN001
    """Run cli in steps of 5 ms; SIGKILL it as soon as moment() is true between two steps."""
    try:
        _stop_when(cli, moment, what)
    finally:
        if cli.poll() is None:
            os.kill(cli.pid, signal.SIGKILL)
        cli.communicate()
    assert cli.returncode == -signal.SIGKILL


def _x_removed_y_kept(env, pg_db, pg_admin):  # noqa: ANN001, ANN202
    """test_dedup_gc's setup on env's storage: X's backup removed (~15 chunks of garbage: a
    mark and a sweep have enough moves and deletes that a poll every few ms sees one half
    done, even under load), Y's kept. (storage, y, Y's chunk ids, the garbage's)"""
    x, y = pg_db(), pg_db()
    pg_admin.execute(
        x, "CREATE TABLE t AS SELECT g, md5(random()::text) AS v FROM generate_series(1, 400000) g"
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
    assert len(garbage) >= 10, garbage
    _remove_backup(storage, mx)
    return storage, y, of_y, garbage


def test_a_prune_killed_in_its_mark_and_in_its_sweep_is_finished_by_the_next(
    env, pg_db, pg_admin, cleanup_pg, tmp_path
):
    env = env.with_dedup(dedup_grace_hours=GRACE / 3600, dedup_fence_hours=FENCE / 3600)
    storage, y, of_y, garbage = _x_removed_y_kept(env, pg_db, pg_admin)
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


def test_a_prune_whose_mark_runs_past_its_time_budget_stops_and_the_next_goes_on(
    env, pg_db, pg_admin, cleanup_pg, tmp_path
):
    """docs/dedup.md: "A mark stops after its time budget ...; the next prune goes on".
    The budget is the storage's own (half of grace minus fence, from
    _dedup/gc-parameters.json); a real prune is held (SIGSTOP) mid-mark until that much
    boottime passed, then let go."""
    grace, fence = 60, 52  # seconds: a budget of 4 s; a grace no mark reaches unaged
    env = env.with_dedup(dedup_grace_hours=grace / 3600, dedup_fence_hours=fence / 3600)
    storage, y, of_y, garbage = _x_removed_y_kept(env, pg_db, pg_admin)
    budget = gc_parameters(storage, write=False).budget_seconds
    assert budget == pytest.approx((grace - fence) / 2)  # as the backups stored it
    root, argv = env.storage_path, ["prune", env.pg, *storage_args(env, "prune")]

    def moved_one_and_goes_on() -> bool:
        """A chunk moved (its fossil there, gone from chunks/), the next one's fossil
        written, garbage left: the mark is past at least one whole move, not done."""
        fossils, chunks = _files(root, FOSSILS), _files(root, CHUNKS)
        return len(fossils) >= 2 and bool(fossils - chunks) and bool(garbage & chunks)

    cli = start_cli(argv, tmp_path / "work", PREFECT_HOME=str(tmp_path / "home"))
    try:
        _stop_when(cli, moved_one_and_goes_on, "its mark to set one chunk aside and go on")
        held = boottime()
        wait_for(lambda: boottime() - held > budget, budget + 60, "the mark's time budget", 0.1)
        os.kill(cli.pid, signal.SIGCONT)
        out, err = cli.communicate(timeout=300)
    finally:
        if cli.poll() is None:
            os.kill(cli.pid, signal.SIGKILL)
            cli.communicate()
    # no exit 1: every backup is whole, only garbage waits; and it says so
    assert cli.returncode == 0, err
    assert re.search(
        r"chunk collection \S+ stopped (after \d+ s \(its time budget\)|late: past its time "
        r"budget or already swept): the next prune goes on",
        out + err,
    ), out + err
    assert "stopped at its time budget, the next prune goes on" in _chunk_line(env.pg)
    chunks, fossils = _chunk_ids(storage, CHUNKS), _chunk_ids(storage, FOSSILS)
    assert of_y <= chunks  # what Y names was never touched
    assert garbage & chunks, "the mark did not stop: it set all the garbage aside"
    assert fossils, "the stopped mark undid the move it had finished in time"
    # each chunk in one place: a mark deletes nothing, a late move was undone
    assert garbage == (chunks - of_y) | fossils and not chunks & fossils

    # the next prune goes on: the rest is set aside, within its own budget
    assert env.cli("prune", env.pg).exit_code == 0
    assert "stopped" not in _chunk_line(env.pg)
    assert not garbage & _chunk_ids(storage, CHUNKS)
    assert _chunk_ids(storage, FOSSILS) == garbage

    # once past the grace, a prune sweeps both marks: nothing but what Y names is left
    age_gc_marks(root, grace + 1)
    marks = set(storage.list_keys(GC))
    assert env.cli("prune", env.pg).exit_code == 0
    assert not _chunk_ids(storage, FOSSILS)
    assert not marks & set(storage.list_keys(GC))
    assert _chunk_ids(storage, CHUNKS) == of_y
    _restore_equals(env, pg_admin, cleanup_pg, y, "r")
