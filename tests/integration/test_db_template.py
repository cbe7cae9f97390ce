"""The local server's first start in a new PREFECT_HOME copies a pre-migrated database
template (per user, Prefect version and Prefect collections) instead of running Prefect's
~116 migrations and registering its block types; the copy is the home's own and holds the
block types Prefect's own start registers; a damaged template is dropped and Prefect
migrates as before; a template at an older revision is migrated forward by Prefect's own
start-up."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prefect_dbbackup.flows.db_template import template_path

from tests.integration.test_local_server import STARTED, _dbbackup, _env, pg_config

TEMPLATE_NAME = template_path().name
BUILDER = [sys.executable, "-m", "prefect_dbbackup.flows.db_template"]
pytestmark = pytest.mark.slow


def _query(database: Path, sql: str) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(database)) as db:
        return db.execute(sql).fetchall()


def _revision(database: Path) -> str:
    return _query(database, "SELECT version_num FROM alembic_version")[0][0]


def _block_types(database: Path) -> set[tuple]:
    """Each block type with the checksums of its schemas."""
    sql = (
        "SELECT t.slug, s.checksum FROM block_type t JOIN block_schema s ON s.block_type_id = t.id"
    )
    return set(_query(database, sql))


def _tables(database: Path) -> set[str]:
    return {n for (n,) in _query(database, "SELECT name FROM sqlite_master WHERE type='table'")}


def _wait_for(path: Path, seconds: float = 600) -> None:
    """Wait for the background build (a bound, not a timed assertion)."""
    deadline = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert path.exists(), f"{path} was not built"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One template built by dbbackup's builder, copied by the tests that need one."""
    cache = tmp_path_factory.mktemp("template-cache")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    subprocess.run(BUILDER, env={**env, "XDG_CACHE_HOME": str(cache)}, check=True)
    return cache / "dbbackup" / TEMPLATE_NAME


def _stop_all(*envs: dict[str, str]) -> None:
    for env in envs:
        _dbbackup(env, "server", "stop")


def test_new_homes_start_from_their_own_copy_of_the_template(
    tmp_path: Path, identity_file: Path, pg_db
) -> None:
    cache = tmp_path / "cache"
    template = cache / "dbbackup" / TEMPLATE_NAME
    first, second, third = (
        _env(tmp_path / name, XDG_CACHE_HOME=str(cache)) for name in ("one", "two", "three")
    )
    try:
        # no template yet: Prefect migrates, and the template is built for the next home
        assert STARTED in _dbbackup(first, "list", "srv").stderr
        _wait_for(template)
        assert stat.S_IMODE(template.stat().st_mode) == 0o600
        assert _query(template, "SELECT count(*) FROM configuration") == [(0,)]
        assert not list((cache / "dbbackup").glob("build-*"))
        with contextlib.closing(sqlite3.connect(template)) as db:
            db.execute("CREATE TABLE marker (x)")  # tells a copy of it apart
            db.commit()
        head = _revision(template)

        # two new homes at the same moment: each its own copy, at the head
        with ThreadPoolExecutor(2) as pool:
            done = list(pool.map(lambda env: _dbbackup(env, "list", "srv"), (second, third)))
        assert all(STARTED in d.stderr for d in done), [d.stderr for d in done]
        databases = [tmp_path / name / "prefect.db" for name in ("two", "three")]
        for database in databases:
            assert "marker" in _tables(database)
            assert _revision(database) == head
            assert stat.S_IMODE(database.stat().st_mode) == 0o600
        assert len({d.stat().st_ino for d in (template, *databases)}) == 3

        # the template's block types are those Prefect's own start registered in the first
        # home, and a later start (which lets Prefect check them) keeps them so
        registered = _block_types(tmp_path / "one" / "prefect.db")
        assert len(registered) > 40
        assert _block_types(template) == registered
        assert _block_types(databases[0]) == registered
        _dbbackup(second, "server", "stop")
        assert STARTED in _dbbackup(second, "list", "srv").stderr
        assert _block_types(databases[0]) == registered

        # the home that existed before keeps its database on a restart
        _dbbackup(first, "server", "stop")
        assert STARTED in _dbbackup(first, "list", "srv").stderr
        assert "marker" not in _tables(tmp_path / "one" / "prefect.db")

        # a backup in a home started from the template; its secrets stay in that home
        config = pg_config(tmp_path, identity_file)
        assert _dbbackup(second, "apply", str(config)).returncode == 0
        backed_up = _dbbackup(second, "backup", "pg-mine", "-d", pg_db())
        assert backed_up.returncode == 0, backed_up.stderr
        assert _query(databases[0], "SELECT count(*) FROM configuration") != [(0,)]
        assert _query(template, "SELECT count(*) FROM configuration") == [(0,)]
        assert _query(databases[1], "SELECT count(*) FROM configuration") == [(0,)]
    finally:
        _stop_all(first, second, third)


def test_a_damaged_template_is_dropped_and_prefect_migrates(tmp_path: Path, built: Path) -> None:
    template = tmp_path / "cache" / "dbbackup" / TEMPLATE_NAME
    template.parent.mkdir(parents=True)
    data = built.read_bytes()
    template.write_bytes(data[: len(data) // 2])  # a truncated copy
    env = _env(tmp_path / "home", XDG_CACHE_HOME=str(tmp_path / "cache"))
    try:
        assert STARTED in _dbbackup(env, "list", "srv").stderr
        log = (tmp_path / "home" / "dbbackup-server" / "server.log").read_text()
        assert f"dbbackup: database template {template} removed: " in log
        assert _revision(tmp_path / "home" / "prefect.db") == _revision(built)
        _wait_for(template)  # rebuilt whole in the background
        assert template.read_bytes()[:16] == b"SQLite format 3\x00"
        assert _query(template, "PRAGMA quick_check") == [("ok",)]
    finally:
        _stop_all(env)


def test_a_template_holding_anything_but_block_types_is_refused(
    tmp_path: Path, built: Path
) -> None:
    """What a template holds appears in every home made from it: an encryption key, a
    block, a run, or a table nobody knows is refused (named); Prefect's own are not."""
    from prefect_dbbackup.flows.db_template import problem

    assert problem(built) is None
    cases = {
        "configuration": "INSERT INTO configuration (id, key, value) VALUES ('1', 'k', '{}')",
        'pl"an\nted': 'CREATE TABLE "pl""an\nted" (x); INSERT INTO "pl""an\nted" VALUES (1)',
    }
    for table, sql in cases.items():
        copy = tmp_path / "copy.db"
        shutil.copy(built, copy)
        with contextlib.closing(sqlite3.connect(copy)) as db:
            db.executescript(sql)
        why = problem(copy)
        assert why is not None and why.startswith("not empty ("), why
        assert table.split("\n")[0] in why
        assert "\n" not in why  # a name with a line break stays on the log's one line
    shutil.copy(built, copy)
    with contextlib.closing(sqlite3.connect(copy)) as db:
        db.execute("DELETE FROM block_type")
        db.commit()
    assert problem(copy) == "no block types"


def test_a_template_at_an_older_revision_is_migrated_forward(tmp_path: Path, built: Path) -> None:
    template = tmp_path / "cache" / "dbbackup" / TEMPLATE_NAME
    template.parent.mkdir(parents=True)
    shutil.copy(built, template)
    head = _revision(built)
    older = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    older.update(
        PREFECT_HOME=str(tmp_path / "downgrade"),
        PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{template}",
    )
    subprocess.run(
        [sys.executable, "-m", "prefect", "server", "database", "downgrade", "--revision=-3", "-y"],
        env=older,
        check=True,
        capture_output=True,
    )
    assert _revision(template) != head
    env = _env(tmp_path / "home", XDG_CACHE_HOME=str(tmp_path / "cache"))
    try:
        done = _dbbackup(env, "list", "srv")
        assert STARTED in done.stderr, done.stderr
        database = tmp_path / "home" / "prefect.db"
        assert (
            "dbbackup: database template"
            not in (database.parent / "dbbackup-server" / "server.log").read_text()
        )
        assert _revision(database) == head
    finally:
        _stop_all(env)


def test_a_killed_build_leaves_no_template(tmp_path: Path) -> None:
    cache = tmp_path / "cache" / "dbbackup"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    builder = subprocess.Popen(BUILDER, env=env, start_new_session=True)
    deadline = time.monotonic() + 120
    while not list(cache.glob("build-*/prefect.db")) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(builder.pid, signal.SIGKILL)  # the builder and Prefect's migrations
    builder.wait()
    assert list(cache.glob("build-*")), "the build did not begin"
    assert not (cache / TEMPLATE_NAME).exists()
    subprocess.run(BUILDER, env=env, check=True)  # the next build clears the dead one
    assert _query(cache / TEMPLATE_NAME, "PRAGMA quick_check") == [("ok",)]
    assert [p.name for p in cache.glob("build-*")] == []
