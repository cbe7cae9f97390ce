"""Bad input fails with the right exit code, a message naming what failed, and loses nothing.

Exit codes: 1 some databases failed, 2 all failed / restore failed, 3 configuration
or usage error, 4 authentication or credentials error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import textwrap
import uuid
from dataclasses import replace
from pathlib import Path

import pyrage
import pytest
from prefect_dbbackup.blocks.server import staging_prefix

from tests.helpers import PG, BlockEnv, flow_runs_of, run_logs_of, stored_objects, task_runs_of
from tests.integration.pg_auth import my_password_user, pg_password_server  # noqa: F401
from tests.pg_cluster import free_port


# --- helpers ---------------------------------------------------------------
def save(block, prefix: str) -> str:  # noqa: ANN001
    """Save a block under a unique name and return the name."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    block.save(name)
    return name


def stored_files(root: Path) -> list[Path]:
    """Every file under a storage root (none when it was never created)."""
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def listed(env: BlockEnv, server: str) -> list[dict]:
    """The database backups of a server (its users/roles series left out)."""
    result = env.cli("list", server, "--json")
    assert result.exit_code == 0, result.output
    return [b for b in json.loads(result.stdout) if b["kind"] == "database"]


def fill_pg(admin, db: str, rows: int = 2000) -> None:  # noqa: ANN001
    admin.execute(
        db,
        "CREATE TABLE t (id int PRIMARY KEY, v text);"
        f"INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, {rows}) g;",
    )


def fill_my(admin, db: str, rows: int = 2000) -> None:  # noqa: ANN001
    admin.execute(
        db,
        "CREATE TABLE t (id int PRIMARY KEY, v varchar(64))",
        f"INSERT INTO t SELECT seq, md5(seq) FROM seq_1_to_{rows}",
    )


def only_object(env: BlockEnv) -> Path:
    objects = stored_objects(env.storage_path)
    assert len(objects) == 1, objects
    return objects[0]


def pg_backup(env: BlockEnv, pg_db, pg_admin) -> str:  # noqa: ANN001
    db = pg_db()
    fill_pg(pg_admin, db)
    result = env.cli("backup", env.pg, "--database", db)
    assert result.exit_code == 0, result.output
    return db


# --- logins ------------------------------------------------------------------
def test_mysql_wrong_password_exits_4(env, my_db, my_admin, my_password_user):  # noqa: F811
    from prefect_dbbackup.blocks import MySQLServer

    db = my_db()
    fill_my(my_admin, db)
    u = my_password_user
    wrong = save(
        MySQLServer(host=u.host, port=u.port, user=u.user, password="not-" + u.password_core),
        "my-wrongpw",
    )
    result = env.cli("backup", wrong, "--database", db)
    assert result.exit_code == 4, result.output
    assert "rejected the login" in result.stderr
    assert u.user in result.stderr and "Access denied" in result.stderr
    assert stored_files(env.storage_path) == []

    # the same login with its real password works: the failure was the password
    right = save(
        MySQLServer(host=u.host, port=u.port, user=u.user, password=u.password), "my-rightpw"
    )
    result = env.cli("backup", right, "--database", db)
    assert result.exit_code == 0, result.output
    assert [b["database"] for b in listed(env, right)] == [db]


def test_postgres_wrong_password_exits_4_and_right_password_round_trips(
    env,
    pg_password_server,  # noqa: F811
):
    from prefect_dbbackup.blocks import PostgresServer

    srv = pg_password_server
    db = f"dbb_{uuid.uuid4().hex[:10]}"
    target = db + "_restored"
    srv.create(db)
    try:
        fill_pg(srv, db)
        wrong = save(
            PostgresServer(
                host=srv.host, port=srv.port, user=srv.user, password="not-" + srv.password_core
            ),
            "pg-wrongpw",
        )
        result = env.cli("backup", wrong, "--database", db)
        assert result.exit_code == 4, result.output
        assert "rejected the login" in result.stderr
        assert "password authentication failed" in result.stderr and srv.user in result.stderr
        assert stored_files(env.storage_path) == []

        # no password at all: libpq must not prompt, it fails as a login error
        nopw = save(PostgresServer(host=srv.host, port=srv.port, user=srv.user), "pg-nopw")
        result = env.cli("backup", nopw, "--database", db)
        assert result.exit_code == 4, result.output

        # right password: pg_dump and pg_restore authenticate through the 0600 passfile
        name = save(
            PostgresServer(host=srv.host, port=srv.port, user=srv.user, password=srv.password),
            "pg-scram",
        )
        result = env.cli("backup", name, "--database", db)
        assert result.exit_code == 0, result.output
        result = env.cli("restore", name, db, "--into", target)
        assert result.exit_code == 0, result.output
        assert srv.table_fingerprints(target) == srv.table_fingerprints(db)
        assert srv.table_fingerprints(target)["public.t"][0] == 2000

        # the password was rotated on the server but not in the block: restore is refused
        # before anything is created
        PostgresServer(
            host=srv.host, port=srv.port, user=srv.user, password="rotated-" + srv.password_core
        ).save(name, overwrite=True)
        result = env.cli("restore", name, db, "--into", target + "_2")
        assert result.exit_code == 4, result.output
        assert "password authentication failed" in result.stderr
        assert not srv.exists(target + "_2")
        assert len(stored_objects(env.storage_path)) == 1
    finally:
        for name in (db, target, target + "_2"):
            srv.drop(name)


def test_postgres_unknown_role_exits_4(env, pg_db):
    from prefect_dbbackup.blocks import PostgresServer

    db = pg_db()
    role = f"dbb_norole_{uuid.uuid4().hex[:8]}"
    name = save(PostgresServer(host=PG["host"], port=PG["port"], user=role), "pg-norole")
    result = env.cli("backup", name, "--database", db)
    assert result.exit_code == 4, result.output
    assert role in result.stderr and "does not exist" in result.stderr
    assert stored_files(env.storage_path) == []


@pytest.mark.parametrize("engine", ["postgres", "mysql"])
def test_unreachable_server_fails_quickly_saying_it_cannot_connect(env, engine):
    from prefect_dbbackup.blocks import MySQLServer, PostgresServer

    port = free_port()
    kind = PostgresServer if engine == "postgres" else MySQLServer
    name = save(kind(host="127.0.0.1", port=port, user="nobody"), f"{engine}-down")
    result = env.cli("backup", name)
    assert result.exit_code == 2, result.output
    assert "cannot connect" in result.stderr and str(port) in result.stderr
    assert "timeout" not in result.stderr.lower()  # refused at once, not waited out
    # it failed at discovery: the run is Failed and no dump was ever started
    [run] = flow_runs_of("backup-server", server=name)
    assert run.state.is_failed() and task_runs_of(run.id) == []
    assert stored_files(env.storage_path) == []


# --- names: databases, blocks, backups ----------------------------------------
@pytest.mark.parametrize("engine", ["postgres", "mysql"])
def test_unknown_database_exits_3_and_backs_up_nothing(env, engine, pg_db, my_db):
    existing = pg_db() if engine == "postgres" else my_db()
    server = env.pg if engine == "postgres" else env.my
    missing = f"dbb_nosuch_{uuid.uuid4().hex[:8]}"
    result = env.cli("backup", server, "--database", missing)
    assert result.exit_code == 3, result.output
    assert missing in result.stderr

    # one missing name among existing ones: nothing is backed up, not even the existing one
    result = env.cli("backup", server, "--database", existing, "--database", missing)
    assert result.exit_code == 3, result.output
    assert missing in result.stderr
    assert stored_files(env.storage_path) == []


def test_unknown_server_storage_and_encryption_blocks_exit_3(env, pg_db):
    db = pg_db()
    nosuch = f"nosuch-{uuid.uuid4().hex[:8]}"
    cases = [
        (env, ("backup", nosuch), "database server"),
        (env, ("restore", nosuch, db), "database server"),
        (replace(env, storage=nosuch), ("backup", env.pg, "--database", db), "backup storage"),
        (replace(env, storage=nosuch), ("list", env.pg), "backup storage"),
        (replace(env, storage=nosuch), ("restore", env.pg, db), "backup storage"),
        (replace(env, encryption=nosuch), ("backup", env.pg, "--database", db), "age-encryption"),
    ]
    for case_env, args, what in cases:
        result = case_env.cli(*args)
        assert result.exit_code == 3, (args, result.output)
        assert nosuch in result.stderr and what in result.stderr, (args, result.stderr)
    assert stored_files(env.storage_path) == []


def test_restore_of_missing_backup_exits_3(env, pg_db, pg_admin):
    db = pg_backup(env, pg_db, pg_admin)
    never = f"dbb_never_{uuid.uuid4().hex[:8]}"
    result = env.cli("restore", env.pg, never)
    assert result.exit_code == 3, result.output
    assert never in result.stderr and "no complete backup" in result.stderr

    result = env.cli("restore", env.pg, db, "--backup-id", "20000101T000000Z-dead")
    assert result.exit_code == 3, result.output
    assert "20000101T000000Z-dead" in result.stderr
    assert not pg_admin.exists(never)


def test_backup_of_another_engine_exits_3_and_creates_no_target(env, pg_db, pg_admin, my_admin):
    """A PostgreSQL backup (database and users/roles) is refused by a MySQL server, named."""
    db = pg_backup(env, pg_db, pg_admin)
    [backup_id] = [b["backup_id"] for b in listed(env, env.pg) if b["database"] == db]
    target = f"dbb_other_{uuid.uuid4().hex[:8]}"
    result = env.cli("restore", env.my, db, "--from-server", env.pg, "--into", target)
    assert result.exit_code == 3, result.output
    assert (
        f"backup {backup_id} of {db!r} ({env.pg}) is a postgres dump; it cannot be restored "
        "into a mysql server"
    ) in " ".join(result.stderr.split())
    assert not my_admin.exists(target)

    result = env.cli(
        "restore-users", env.my, "--from-server", env.pg, "--dry-run",
        "--storage", env.storage, "--encryption", env.encryption,
    )  # fmt: skip
    assert result.exit_code == 3, result.output
    assert "is from a postgres server; it cannot be restored into a mysql server" in " ".join(
        result.stderr.split()
    )


# --- dbbackup apply ------------------------------------------------------------
APPLY_CASES = {
    "invalid-yaml": ("servers: [unclosed\n  x: {{", "not valid YAML"),
    "unknown-setting": (
        """
        servers:
          {ok}:
            type: postgres
            host: 127.0.0.1
          {bad}:
            type: postgres
            hots: 127.0.0.1
        """,
        "unknown setting(s) hots",
    ),
    "missing-var": (
        """
        servers:
          {ok}:
            type: postgres
          {bad}:
            type: mysql
            password: "${{{var}}}"
        """,
        "environment variable {var} is not set",
    ),
    "unknown-type": (
        """
        servers:
          {ok}:
            type: postgres
          {bad}:
            type: oracle
        """,
        "type must be one of",
    ),
    "unknown-section": (
        """
        servers:
          {ok}:
            type: postgres
        backups: {{}}
        """,
        "unknown section(s) backups",
    ),
    "no-recipients": (
        """
        servers:
          {ok}:
            type: postgres
        encryption:
          {bad}:
            recipients: []
        """,
        "no recipients",
    ),
    "bad-recipient": (
        """
        servers:
          {ok}:
            type: postgres
        encryption:
          {bad}:
            recipients: ["age1notakey"]
        """,
        "not an age X25519 recipient",
    ),
}


@pytest.mark.parametrize("case", sorted(APPLY_CASES))
def test_apply_bad_config_exits_3_and_creates_nothing(env, tmp_path, monkeypatch, case):
    from prefect_dbbackup.blocks import PostgresServer

    tag = uuid.uuid4().hex[:8]
    ok, bad, var = f"ok-{tag}", f"bad-{tag}", f"DBB_UNSET_{tag.upper()}"
    monkeypatch.delenv(var, raising=False)
    text, expected = APPLY_CASES[case]
    config = tmp_path / "dbbackup.yaml"
    config.write_text(textwrap.dedent(text.format(ok=ok, bad=bad, var=var)))
    result = env.cli("apply", str(config))
    assert result.exit_code == 3, result.output
    assert expected.format(var=var) in result.stderr
    if case in ("unknown-setting", "missing-var", "unknown-type"):
        assert bad in result.stderr  # which entry of the file
    # the file is validated as a whole before anything is saved
    with pytest.raises(ValueError):
        PostgresServer.load(ok)


def test_apply_unreadable_config_exits_3(env, tmp_path):
    missing = tmp_path / "nope.yaml"
    result = env.cli("apply", str(missing))
    assert result.exit_code == 3, result.output
    assert str(missing) in result.stderr


# --- keys ------------------------------------------------------------------------
def test_wrong_identity_exits_4_and_creates_no_target(env, pg_db, pg_admin, cleanup_pg, tmp_path):
    db = pg_backup(env, pg_db, pg_admin)
    other = pyrage.x25519.Identity.generate()
    other_file = tmp_path / "other-identity.txt"
    other_file.write_text(f"# public key: {other.to_public()}\n{other}\n")
    other_file.chmod(0o600)
    target = db + "_restored"
    cleanup_pg.append(target)
    result = env.cli("restore", env.pg, db, "--into", target, "--identity-file", str(other_file))
    assert result.exit_code == 4, result.output
    assert "cannot be decrypted with this identity" in result.stderr
    assert not pg_admin.exists(target)
    # the UI shows the one line too: as the run's state message and in its logs, and no
    # traceback (that is for PREFECT_LOGGING_LEVEL=DEBUG, and for bugs)
    [run] = flow_runs_of("restore-database", target_database=target)
    assert run.state.is_failed() and "\n" not in run.state.message
    assert "cannot be decrypted with this identity" in run.state.message
    logs = run_logs_of(run.id)
    errors = [log.message for log in logs if log.level >= logging.ERROR]
    assert any("cannot be decrypted with this identity" in m for m in errors), errors
    assert not [m for m in (log.message for log in logs) if "Traceback" in m]
    # the backup is intact: the right identity restores it
    result = env.cli("restore", env.pg, db, "--into", target)
    assert result.exit_code == 0, result.output
    assert pg_admin.table_fingerprints(target) == pg_admin.table_fingerprints(db)


def test_identity_file_that_is_not_an_identity_exits_3(env, pg_db, pg_admin, cleanup_pg, tmp_path):
    db = pg_backup(env, pg_db, pg_admin)
    junk = tmp_path / "junk.txt"
    junk.write_text("this is not a key\n")
    target = db + "_restored"
    cleanup_pg.append(target)
    result = env.cli("restore", env.pg, db, "--into", target, "--identity-file", str(junk))
    assert result.exit_code == 3, result.output
    assert str(junk) in result.stderr
    missing = tmp_path / "no-such-identity.txt"
    result = env.cli("restore", env.pg, db, "--into", target, "--identity-file", str(missing))
    assert result.exit_code == 3, result.output
    assert str(missing) in result.stderr
    assert not pg_admin.exists(target)
    # both refused while the command line was read: no Failed run in the UI
    assert flow_runs_of("restore-database", target_database=target) == []


def test_missing_identity_exits_3(env, pg_db, pg_admin, cleanup_pg):
    from prefect_dbbackup.blocks import AgeEncryption

    # a worker that holds only the public key can back up...
    public_only = replace(
        env, encryption=save(AgeEncryption(recipients=[env.recipient]), "keys-public")
    )
    db = pg_db()
    fill_pg(pg_admin, db)
    result = public_only.cli("backup", env.pg, "--database", db)
    assert result.exit_code == 0, result.output
    # ...but cannot restore
    target = db + "_restored"
    cleanup_pg.append(target)
    result = public_only.cli("restore", env.pg, db, "--into", target)
    assert result.exit_code == 3, result.output
    assert "no age identity" in result.stderr
    assert not pg_admin.exists(target)
    # the identity file makes the same backup restorable
    result = public_only.cli(
        "restore", env.pg, db, "--into", target, "--identity-file", str(env.identity_file)
    )
    assert result.exit_code == 0, result.output
    assert pg_admin.table_fingerprints(target) == pg_admin.table_fingerprints(db)


@pytest.mark.parametrize(
    ("recipients", "expected"),
    [([], "no recipients"), (["age1notakey"], "not an age X25519 recipient")],
    ids=["none", "malformed"],
)
def test_encryption_fails_closed_exits_3_and_writes_nothing(
    env, pg_db, pg_admin, recipients, expected
):
    from prefect_dbbackup.blocks import AgeEncryption

    db = pg_db()
    fill_pg(pg_admin, db)
    keys = save(
        AgeEncryption(recipients=recipients, identity_file=str(env.identity_file)), "keys-bad"
    )
    result = replace(env, encryption=keys).cli("backup", env.pg, "--database", db)
    assert result.exit_code == 3, result.output
    assert expected in result.stderr
    assert stored_files(env.storage_path) == []
    assert listed(env, env.pg) == []


# --- damaged storage ---------------------------------------------------------------
def test_flipped_byte_exits_2_and_creates_no_target(env, pg_db, pg_admin, cleanup_pg):
    db = pg_backup(env, pg_db, pg_admin)
    obj = only_object(env)
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0x01
    obj.write_bytes(bytes(data))
    target = db + "_restored"
    cleanup_pg.append(target)
    result = env.cli("restore", env.pg, db, "--into", target)
    assert result.exit_code == 2, result.output
    assert "corrupted" in result.stderr and "sha256" in result.stderr
    assert not pg_admin.exists(target)
    # nothing was deleted: the damaged backup is still there to be examined
    assert obj.exists() and (obj.parent / "manifest.json").exists()
    assert [b["database"] for b in listed(env, env.pg)] == [db]


def test_truncated_object_exits_2_and_creates_no_target(env, pg_db, pg_admin, cleanup_pg):
    db = pg_backup(env, pg_db, pg_admin)
    obj = only_object(env)
    data = obj.read_bytes()
    obj.write_bytes(data[: len(data) // 2])
    target = db + "_restored"
    cleanup_pg.append(target)
    result = env.cli("restore", env.pg, db, "--into", target)
    assert result.exit_code == 2, result.output
    assert "truncated" in result.stderr
    assert str(len(data) // 2) in result.stderr and str(len(data)) in result.stderr
    assert not pg_admin.exists(target)


@pytest.mark.parametrize("engine", ["postgres", "mysql"])
def test_tampered_object_with_matching_manifest_fails_and_drops_partial_target(
    env, engine, pg_db, pg_admin, my_db, my_admin, cleanup_pg, cleanup_my
):
    """Someone who can rewrite the manifest too: age's authenticated chunks still catch it,
    and a target that was already being restored into is dropped."""
    if engine == "postgres":
        db, admin, server, cleanup = pg_db(), pg_admin, env.pg, cleanup_pg
        pg_admin.execute(
            db,
            "CREATE TABLE r (id int PRIMARY KEY, b bytea);"
            "INSERT INTO r SELECT g, decode(md5(random()::text) || md5(random()::text), 'hex') "
            "FROM generate_series(1, 30000) g;",
        )
    else:
        db, admin, server, cleanup = my_db(), my_admin, env.my, cleanup_my
        my_admin.execute(
            db,
            "CREATE TABLE r (id int PRIMARY KEY, b varbinary(32))",
            "INSERT INTO r SELECT seq, RANDOM_BYTES(32) FROM seq_1_to_30000",
        )
    result = env.cli("backup", server, "--database", db)
    assert result.exit_code == 0, result.output
    obj = only_object(env)
    data = bytearray(obj.read_bytes())
    assert len(data) > 4 * 65536, "the object must span several age chunks"
    data[len(data) * 3 // 4] ^= 0x01  # a later chunk: the first ones decrypt fine
    obj.write_bytes(bytes(data))
    manifest_path = obj.parent / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["stats"]["sha256"] = hashlib.sha256(data).hexdigest()
    manifest_path.write_text(json.dumps(manifest))
    env.resign(manifest_path)  # a consistent forgery by the key holder: age still catches it

    target = db + "_restored"
    cleanup.append(target)
    result = env.cli("restore", server, db, "--into", target)
    assert result.exit_code == 2, result.output
    assert "failed to decrypt" in result.stderr and db in result.stderr
    assert not admin.exists(target)


def test_target_exists_without_replace_exits_3_and_leaves_it_alone(
    env, pg_db, pg_admin, my_db, my_admin
):
    db = pg_backup(env, pg_db, pg_admin)
    target = pg_db()
    pg_admin.execute(target, "CREATE TABLE keep (x text); INSERT INTO keep VALUES ('precious');")
    before = pg_admin.table_fingerprints(target)
    result = env.cli("restore", env.pg, db, "--into", target)
    assert result.exit_code == 3, result.output
    assert target in result.stderr and "--replace" in result.stderr
    assert pg_admin.table_fingerprints(target) == before

    # restoring over the source itself (no --into) is refused the same way
    result = env.cli("restore", env.pg, db)
    assert result.exit_code == 3, result.output
    assert pg_admin.table_fingerprints(db)["public.t"][0] == 2000

    # MariaDB too
    mdb = my_db()
    fill_my(my_admin, mdb)
    result = env.cli("backup", env.my, "--database", mdb)
    assert result.exit_code == 0, result.output
    mtarget = my_db()
    my_admin.execute(mtarget, "CREATE TABLE keep (x text)", "INSERT INTO keep VALUES ('precious')")
    mbefore = my_admin.table_fingerprints(mtarget)
    result = env.cli("restore", env.my, mdb, "--into", mtarget)
    assert result.exit_code == 3, result.output
    assert mtarget in result.stderr
    assert my_admin.table_fingerprints(mtarget) == mbefore


def test_failing_restore_with_replace_keeps_the_existing_target(env, pg_db, pg_admin, tmp_path):
    from prefect_dbbackup.blocks import PostgresServer

    db = pg_backup(env, pg_db, pg_admin)
    target = pg_db()
    pg_admin.execute(target, "CREATE TABLE keep (x text); INSERT INTO keep VALUES ('precious');")
    before = pg_admin.table_fingerprints(target)
    # the same server block, now with a pg_restore that fails after reading the whole dump
    # (as a real one does when the server runs out of disk space)
    marker = f"could not extend file: No space left on device {uuid.uuid4().hex[:8]}"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "pg_restore"
    script.write_text(
        f"#!/bin/sh\ncat > /dev/null\necho 'pg_restore: error: {marker}' >&2\nexit 1\n"
    )
    script.chmod(0o755)
    PostgresServer(
        host=PG["host"], port=PG["port"], user=PG["user"], bin_dir=str(bin_dir), backup_users=False
    ).save(env.pg, overwrite=True)
    result = env.cli("restore", env.pg, db, "--into", target, "--replace")
    assert result.exit_code == 2, result.output
    assert marker in result.stderr
    # the restore failed: the database it was meant to replace must still be there, unchanged
    assert pg_admin.exists(target)
    assert pg_admin.table_fingerprints(target) == before


# --- failing dumps --------------------------------------------------------------------
def fake_pg_dump(directory: Path, body: str) -> Path:
    """A bin_dir whose pg_dump reports version 15 and otherwise runs body."""
    directory.mkdir()
    script = directory / "pg_dump"
    script.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "--version" ]; then echo "pg_dump (PostgreSQL) 15.99"; exit 0; fi\n' + body
    )
    script.chmod(0o755)
    return directory


def assert_nothing_left(env: BlockEnv, server: str, workdir: Path) -> None:
    manifests = [p for p in stored_files(env.storage_path) if p.name == "manifest.json"]
    assert [p for p in manifests if "_globals" not in p.parts] == []
    assert stored_objects(env.storage_path) == []
    assert listed(env, server) == []
    assert list(workdir.iterdir()) == [], "spool or credentials files were left behind"


def test_dump_failing_midway_leaves_no_manifest_and_no_spool(env, pg_db, tmp_path, monkeypatch):
    from prefect_dbbackup.blocks import PostgresServer

    db = pg_db()
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.setenv("DBBACKUP_WORK_DIR", str(workdir))
    marker = f"simulated failure {uuid.uuid4().hex[:8]}"
    bin_dir = fake_pg_dump(
        tmp_path / "bin",
        # a partial dump on stdout, then an error
        f"head -c 300000 /dev/urandom\necho 'pg_dump: error: {marker}' >&2\nexit 1\n",
    )
    name = save(
        PostgresServer(
            host=PG["host"],
            port=PG["port"],
            user=PG["user"],
            bin_dir=str(bin_dir),
            backup_users=False,
        ),
        "pg-fake",
    )
    result = env.cli("backup", name, "--database", db, "--json")
    assert result.exit_code == 2, result.output
    assert marker in result.stderr and "pg_dump exited 1" in result.stderr
    report = json.loads(result.stdout)
    assert report["exit_code"] == 2
    assert [(d["database"], d["status"]) for d in report["databases"]] == [(db, "failed")]
    assert marker in report["databases"][0]["error"]
    assert_nothing_left(env, name, workdir)


def test_dump_over_its_time_limit_is_killed_with_its_children(env, pg_db, tmp_path, monkeypatch):
    from prefect_dbbackup.blocks import PostgresServer

    db = pg_db()
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.setenv("DBBACKUP_WORK_DIR", str(workdir))
    pidfile, finished = tmp_path / "child.pid", tmp_path / "child.finished"
    # a stuck dump: some output, then a child that holds stdout open and would run for two
    # minutes; it leaves a mark only if it is not killed
    bin_dir = fake_pg_dump(
        tmp_path / "bin",
        f"head -c 100000 /dev/urandom\n(sleep 120; echo done > {finished}) &\n"
        f"echo $! > {pidfile}\nwait\n",
    )
    name = save(
        PostgresServer(
            host=PG["host"],
            port=PG["port"],
            user=PG["user"],
            bin_dir=str(bin_dir),
            backup_users=False,
            dump_timeout=1,
        ),
        "pg-stuck",
    )
    result = env.cli("backup", name, "--database", db)
    assert result.exit_code == 2, result.output
    assert "exceeded its time limit of 1s" in result.stderr
    assert not finished.exists(), "the dump's child ran to its end: it was not killed"
    child = int(pidfile.read_text())
    stat = Path(f"/proc/{child}/stat")
    state = stat.read_text().rsplit(")", 1)[1].split()[0] if stat.exists() else "gone"
    assert state in ("gone", "Z", "X"), f"the dump's child {child} still runs ({state})"
    assert_nothing_left(env, name, workdir)


def test_one_failing_database_does_not_stop_the_others(env, my_db, my_admin, cleanup_my):
    good, broken = my_db(), my_db()
    fill_my(my_admin, good)
    # a view whose table is gone: mariadb-dump fails on it
    my_admin.execute(
        broken,
        "CREATE TABLE gone (a int)",
        "CREATE VIEW v AS SELECT a FROM gone",
        "DROP TABLE gone",
    )
    result = env.cli("backup", env.my, "--database", broken, "--database", good, "--json")
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["exit_code"] == 1
    status = {d["database"]: d for d in report["databases"]}
    assert status[good]["status"] == "ok" and status[broken]["status"] == "failed"
    assert "mariadb-dump" in status[broken]["error"]
    assert "references invalid table" in status[broken]["error"]
    assert broken in result.stderr and "1 of 2 databases" in result.stderr  # users apart

    assert [b["database"] for b in listed(env, env.my)] == [good]
    assert len(stored_objects(env.storage_path)) == 1
    target = good + "_restored"
    cleanup_my.append(target)
    result = env.cli("restore", env.my, good, "--into", target)
    assert result.exit_code == 0, result.output
    assert my_admin.table_fingerprints(target) == my_admin.table_fingerprints(good)
    result = env.cli("restore", env.my, broken, "--into", broken + "_restored")
    assert result.exit_code == 3, result.output
    assert not my_admin.exists(broken + "_restored")


def fake_mariadb(directory: Path, fail_on_call: int) -> Path:
    """A bin_dir whose `mariadb` client is the real one, except call N reads all input and fails."""
    import shutil

    directory.mkdir()
    counter = directory / "calls"
    counter.write_text("0")
    script = directory / "mariadb"
    script.write_text(
        "#!/bin/sh\n"
        f"n=$(( $(cat {counter}) + 1 )); echo $n > {counter}\n"
        f'if [ "$n" = "{fail_on_call}" ]; then cat > /dev/null; '
        "echo 'ERROR 1114 (HY000): The table is full' >&2; exit 1; fi\n"
        f'exec {shutil.which("mariadb")} "$@"\n'
    )
    script.chmod(0o755)
    for tool in ("mariadb-dump",):
        (directory / tool).symlink_to(shutil.which(tool))
    return directory


def _my_replace_setup(env, my_db, my_admin, tmp_path, fail_on_call: int):  # noqa: ANN001, ANN202
    from prefect_dbbackup.blocks import MySQLServer

    db = my_db()
    my_admin.execute(db, "CREATE TABLE t (id int PRIMARY KEY)", "INSERT INTO t VALUES (1), (2)")
    target = my_db()
    my_admin.execute(target, "CREATE TABLE keep (x text)", "INSERT INTO keep VALUES ('precious')")
    server = f"my-flaky-{uuid.uuid4().hex[:8]}"
    bin_dir = fake_mariadb(tmp_path / "bin", fail_on_call)
    MySQLServer(host="127.0.0.1", user="root", bin_dir=str(bin_dir), backup_users=False).save(
        server
    )
    assert env.cli("backup", server, "-d", db).exit_code == 0
    return server, db, target


def _staging_databases(my_admin, target: str) -> set[str]:  # noqa: ANN001
    """The staging databases of restores into target (not another test's)."""
    own = staging_prefix(target)
    return {r[0] for r in my_admin.query(None, "SHOW DATABASES") if r[0].startswith(own)}


def test_mysql_replace_that_fails_keeps_the_existing_target(env, my_db, my_admin, tmp_path):
    """The first load goes into a staging database: its failure leaves the target as it was."""
    server, db, target = _my_replace_setup(env, my_db, my_admin, tmp_path, fail_on_call=1)
    before = my_admin.table_fingerprints(target)
    assert _staging_databases(my_admin, target) == set()
    result = env.cli("restore", server, db, "--into", target, "--replace")
    assert result.exit_code == 2, result.output
    assert "The table is full" in result.stderr
    assert my_admin.table_fingerprints(target) == before
    assert _staging_databases(my_admin, target) == set(), "a staging database was left"


def test_mysql_replace_failing_on_the_second_load_keeps_a_complete_copy(
    env, my_db, my_admin, tmp_path, cleanup_my
):
    """MariaDB cannot rename a database: if the reload into the target fails, the verified
    staging copy stays and the error names it."""
    server, db, target = _my_replace_setup(env, my_db, my_admin, tmp_path, fail_on_call=2)
    assert _staging_databases(my_admin, target) == set()
    result = env.cli("restore", server, db, "--into", target, "--replace")
    assert result.exit_code == 2, result.output
    [staging] = _staging_databases(my_admin, target)
    cleanup_my.append(staging)
    assert f"complete restored copy is in database '{staging}'" in result.stderr
    assert my_admin.table_fingerprints(staging) == my_admin.table_fingerprints(db)
    # the target was dropped for the reload; its partial reload is dropped too, so no
    # half-loaded database carries the target's name
    assert not my_admin.exists(target)
