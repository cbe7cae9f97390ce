"""`restore --replace` over an existing database that fails, with the real clients and servers.

Each failure here is produced by the real pg_restore / mariadb client and the real
server (a role the dump grants to is gone, the restore session is killed on the
server, the stored object is damaged or the identity is wrong), never by a fake
client. What the operator relies on: the database that was to be replaced still
has exactly its old contents, and no staging database is left behind.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pyrage
import pytest
from prefect_dbbackup.blocks.server import STAGING_PREFIX, staging_prefix

from tests.helpers import BlockEnv, MyAdmin, PgAdmin, stored_objects


def _staging(admin: PgAdmin | MyAdmin, target: str) -> set[str]:
    """The staging databases of restores into target that exist now (only this test's:
    other tests' restores have staging databases of their own targets)."""
    if isinstance(admin, PgAdmin):
        rows = admin.query("postgres", "SELECT datname FROM pg_database")
    else:
        rows = admin.query(None, "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA")
    return {r[0] for r in rows if r[0].startswith(staging_prefix(target))}


def _existing_target(admin: PgAdmin | MyAdmin, make_db: Callable[[], str]) -> str:
    """A database with contents of its own, which a failed --replace must leave alone."""
    target = make_db()
    if isinstance(admin, PgAdmin):
        admin.execute(
            target,
            "CREATE TABLE keep (id int PRIMARY KEY, x text);"
            "INSERT INTO keep SELECT g, 'precious ' || g FROM generate_series(1, 300) g;",
        )
    else:
        admin.execute(
            target,
            "CREATE TABLE keep (id int PRIMARY KEY, x text)",
            "INSERT INTO keep SELECT seq, concat('precious ', seq) FROM seq_1_to_300",
        )
    return target


def _failed_replace_left_target_alone(
    env: BlockEnv, admin: PgAdmin | MyAdmin, server: str, db: str, target: str, *extra: str
) -> str:
    """Run `restore --replace` expected to fail; check the target and staging; return stderr."""
    before = admin.table_fingerprints(target)
    assert _staging(admin, target) == set()
    assert [rows for rows, _ in before.values()] == [300]  # the target's own table
    result = env.cli("restore", server, db, "--into", target, "--replace", *extra)
    assert result.exit_code != 0, result.output
    assert admin.exists(target)
    assert admin.table_fingerprints(target) == before
    assert _staging(admin, target) == set(), "a staging database was left behind"
    return result.stderr


# --- a real client failing midway ---------------------------------------------------------
def test_pg_restore_failing_on_a_missing_role_keeps_the_existing_target(env, pg_db, pg_admin):
    """The dump grants to a role the server no longer has: the real pg_restore fails after
    the data is loaded (privileges come last), so the staging copy is dropped, not swapped in."""
    db = pg_db()
    role = f"dbb_gone_{uuid.uuid4().hex[:8]}"
    pg_admin.execute(
        db,
        f"CREATE TABLE t (id int PRIMARY KEY, v text);"
        f"INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 2000) g;"
        f"CREATE ROLE {role} NOLOGIN; GRANT SELECT ON t TO {role};",
    )
    try:
        assert env.cli("backup", env.pg, "-d", db).exit_code == 0
    finally:
        pg_admin.execute(db, f"DROP OWNED BY {role}; DROP ROLE {role};")
    target = _existing_target(pg_admin, pg_db)
    stderr = _failed_replace_left_target_alone(env, pg_admin, env.pg, db, target)
    assert f'role "{role}" does not exist' in stderr and "pg_restore" in stderr

    # the same backup restores into a new name once the role exists again
    pg_admin.execute("postgres", f"CREATE ROLE {role} NOLOGIN")
    try:
        fresh = db + "_ok"
        try:
            result = env.cli("restore", env.pg, db, "--into", fresh)
            assert result.exit_code == 0, result.output
            assert pg_admin.table_fingerprints(fresh) == pg_admin.table_fingerprints(db)
        finally:
            pg_admin.drop(fresh)
    finally:
        pg_admin.execute("postgres", f"DROP ROLE {role}")


class _Killer(threading.Thread):
    """Ends the first restore session found in a new staging database, from the server side."""

    def __init__(self, find: Callable[[], list[int]], kill: Callable[[int], None]) -> None:
        super().__init__(daemon=True)
        self.find, self.kill = find, kill
        self.killed: list[int] = []
        self.stop = threading.Event()

        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set() and not self.killed:
                for pid in self.find():
                    self.kill(pid)
                    self.killed.append(pid)
                time.sleep(0.02)
        except BaseException as exc:  # reported by the test, not lost in this thread
            self.error = exc


def test_pg_restore_session_terminated_by_the_server_keeps_the_existing_target(
    env, pg_db, pg_admin
):
    """pg_terminate_backend() of the real pg_restore's session while it builds an index."""
    db = pg_db()
    # an index whose expression stalls only inside a staging database: the restore is
    # certainly still running when the session is terminated; the source builds it at once
    pg_admin.execute(
        db,
        "CREATE TABLE t (id int PRIMARY KEY, v text);"
        "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 2000) g;"
        "CREATE FUNCTION stall(x int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$ BEGIN "
        f"IF current_database() LIKE '{STAGING_PREFIX}%' THEN PERFORM pg_sleep(60); END IF; "
        "RETURN x; END $$;"
        "CREATE TABLE one (id int); INSERT INTO one VALUES (1);"
        "CREATE INDEX one_stall ON one (stall(id));",  # one row: stalls once, 60 s at most
    )
    assert env.cli("backup", env.pg, "-d", db).exit_code == 0
    target = _existing_target(pg_admin, pg_db)
    own = staging_prefix(target)  # this restore's staging database, not another test's

    def restoring() -> list[int]:
        rows = pg_admin.query(
            "postgres",
            "SELECT pid, datname FROM pg_stat_activity WHERE application_name = 'pg_restore' "
            "AND query LIKE 'CREATE INDEX%%'",
        )
        return [pid for pid, name in rows if name.startswith(own)]

    def terminate(pid: int) -> None:
        pg_admin.query("postgres", "SELECT pg_terminate_backend(%s)", (pid,))

    killer = _Killer(restoring, terminate)
    killer.start()
    try:
        stderr = _failed_replace_left_target_alone(env, pg_admin, env.pg, db, target)
    finally:
        killer.stop.set()
        killer.join()
    assert killer.error is None, killer.error
    assert len(killer.killed) == 1
    assert "terminating connection due to administrator command" in stderr


def test_mariadb_restore_session_killed_by_the_server_keeps_the_existing_target(
    env, my_db, my_admin
):
    """KILL of the real mariadb client's session while it loads the staging database."""
    db = my_db()
    my_admin.execute(
        db,
        "CREATE TABLE t (id int PRIMARY KEY, v varchar(64))",
        "INSERT INTO t SELECT seq, concat(md5(seq), md5(seq + 1)) FROM seq_1_to_150000",
    )
    assert env.cli("backup", env.my, "-d", db).exit_code == 0
    target = _existing_target(my_admin, my_db)
    own = staging_prefix(target)  # this restore's staging database, not another test's

    def restoring() -> list[int]:
        rows = my_admin.query(None, "SELECT ID, DB FROM information_schema.PROCESSLIST")
        return [i for i, name in rows if name and name.startswith(own)]

    def kill(connection: int) -> None:
        my_admin.execute(None, f"KILL CONNECTION {int(connection)}")

    killer = _Killer(restoring, kill)
    killer.start()
    try:
        stderr = _failed_replace_left_target_alone(env, my_admin, env.my, db, target)
    finally:
        killer.stop.set()
        killer.join()
    assert killer.error is None, killer.error
    assert killer.killed, "the restore ended before its session could be killed"
    assert "mariadb" in stderr


# --- damaged backups and wrong keys ------------------------------------------------------
def _other_identity(tmp_path: Path) -> Path:
    other = pyrage.x25519.Identity.generate()
    path = tmp_path / "other-identity.txt"
    path.write_text(f"# public key: {other.to_public()}\n{other}\n")
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("engine", ["postgres", "mysql"])
def test_wrong_identity_and_damaged_objects_with_replace_keep_the_existing_target(
    env, engine, pg_db, pg_admin, my_db, my_admin, tmp_path
):
    if engine == "postgres":
        admin, make_db, server = pg_admin, pg_db, env.pg
        db = make_db()
        pg_admin.execute(
            db,
            "CREATE TABLE t (id int PRIMARY KEY, v text);"
            "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 2000) g;",
        )
    else:
        admin, make_db, server = my_admin, my_db, env.my
        db = make_db()
        my_admin.execute(
            db,
            "CREATE TABLE t (id int PRIMARY KEY, v varchar(64))",
            "INSERT INTO t SELECT seq, md5(seq) FROM seq_1_to_2000",
        )
    assert env.cli("backup", server, "-d", db).exit_code == 0
    [obj] = stored_objects(env.storage_path)
    good = obj.read_bytes()
    target = _existing_target(admin, make_db)

    stderr = _failed_replace_left_target_alone(
        env, admin, server, db, target, "--identity-file", str(_other_identity(tmp_path))
    )
    assert "cannot be decrypted with this identity" in stderr

    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 0x01
    obj.write_bytes(bytes(flipped))
    stderr = _failed_replace_left_target_alone(env, admin, server, db, target)
    assert "corrupted" in stderr and "sha256" in stderr

    obj.write_bytes(good[: len(good) // 2])
    stderr = _failed_replace_left_target_alone(env, admin, server, db, target)
    assert "truncated" in stderr

    # the intact object does replace it: the checks above were about the damage
    obj.write_bytes(good)
    result = env.cli("restore", server, db, "--into", target, "--replace")
    assert result.exit_code == 0, result.output
    assert admin.table_fingerprints(target) == admin.table_fingerprints(db)
