"""The command line as an operator uses it: apply a config, back up, list."""

from __future__ import annotations

import json
import uuid

from prefect_dbbackup.flows.cli import app
from typer.testing import CliRunner


def _apply(path):
    return CliRunner().invoke(app, ["apply", str(path)])


def test_apply_is_idempotent_and_reports_changes(prefect_api, tmp_path, recipient, monkeypatch):
    tag = uuid.uuid4().hex[:8]
    monkeypatch.setenv("DBB_TEST_PW", "pw-" + tag)
    config = tmp_path / "dbbackup.yaml"
    config.write_text(
        f"""
servers:
  pg-{tag}: {{type: postgres, host: 127.0.0.1, user: postgres, password: "${{DBB_TEST_PW}}"}}
storage:
  st-{tag}: {{type: local, path: ./backups}}
encryption:
  en-{tag}: {{recipients: ["{recipient}"]}}
"""
    )
    first = _apply(config)
    assert first.exit_code == 0, first.output
    assert first.stdout.split() == [
        "created", f"postgres-server/pg-{tag}",
        "created", f"local-backup-storage/st-{tag}",
        "created", f"age-encryption/en-{tag}",
    ]  # fmt: skip
    second = _apply(config)
    assert second.stdout.count("unchanged") == 3

    monkeypatch.setenv("DBB_TEST_PW", "rotated")
    third = _apply(config)
    assert f"updated   postgres-server/pg-{tag}" in third.stdout
    assert third.stdout.count("unchanged") == 2

    from prefect_dbbackup.blocks import LocalBackupStorage, PostgresServer

    assert PostgresServer.load(f"pg-{tag}").password.get_secret_value() == "rotated"
    assert LocalBackupStorage.load(f"st-{tag}").path == str(tmp_path / "backups")


def test_apply_refuses_a_server_name_taken_by_the_other_engine(prefect_api, tmp_path):
    tag = uuid.uuid4().hex[:8]
    config = tmp_path / "a.yaml"
    config.write_text(f"servers:\n  srv-{tag}: {{type: postgres}}\n")
    assert _apply(config).exit_code == 0
    config.write_text(f"servers:\n  srv-{tag}: {{type: mysql}}\n")
    result = _apply(config)
    assert result.exit_code == 3
    assert "already named" in result.stderr


def test_backup_all_discovered_databases_and_list_them(env, pg_db, pg_admin, cleanup_pg):
    from prefect_dbbackup.blocks import PostgresServer

    tag = uuid.uuid4().hex[:6]
    dbs = [pg_db(f"dbb_{tag}_a"), pg_db(f"dbb_{tag}_b"), pg_db(f"dbb_{tag}_skip")]
    for n, db in enumerate(dbs):
        pg_admin.execute(
            db,
            f"CREATE TABLE t AS SELECT '{db}'::text AS name, g, md5((g * {n + 1})::text) AS v "
            "FROM generate_series(1, 3000) g",
        )
    server = f"pg-only-{tag}"
    PostgresServer(
        host="127.0.0.1", user="postgres", include=[f"dbb_{tag}_*"], exclude=["*_skip"]
    ).save(server)

    result = env.cli("backup", server, "--json", "--concurrency", "2")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [d["database"] for d in report["databases"]] == [*dbs[:2], "_globals"]
    assert all(d["status"] == "ok" and d["stored_bytes"] > 0 for d in report["databases"])

    listed = json.loads(env.cli("list", server, "--json").stdout)
    assert [b["kind"] for b in listed] == ["globals", "database", "database"]
    assert [(b["database"], b["backup_id"]) for b in listed[1:]] == [
        (d["database"], d["backup_id"]) for d in report["databases"][:2]
    ]
    assert set(listed[0]) >= {
        "server",
        "database",
        "backup_id",
        "stored_bytes",
        "raw_bytes",
        "sha256",
    }
    only_a = json.loads(env.cli("list", server, "--database", dbs[0], "--json").stdout)
    assert [b["database"] for b in only_a] == [dbs[0]]

    # the two dumps that ran at once each restore to their own database's contents
    for db in dbs[:2]:
        target = f"{db}_back"
        cleanup_pg.append(target)
        result = env.cli("restore", server, db, "--into", target)
        assert result.exit_code == 0, result.output
        assert pg_admin.table_fingerprints(target) == pg_admin.table_fingerprints(db)
    assert pg_admin.table_fingerprints(dbs[0]) != pg_admin.table_fingerprints(dbs[1])


def test_backup_without_manifest_does_not_exist(env, pg_db, pg_admin):
    db = pg_db()
    assert env.cli("backup", env.pg, "-d", db).exit_code == 0
    [manifest] = list((env.storage_path / env.pg / db).rglob("manifest.json"))
    manifest.unlink()
    listed = json.loads(env.cli("list", env.pg, "--json").stdout)
    assert [b["kind"] for b in listed] == ["globals"]
    result = env.cli("restore", env.pg, db, "--into", db + "_x")
    assert result.exit_code == 3
    assert "no complete backup" in result.stderr
    assert not pg_admin.exists(db + "_x")


def test_discovery_that_finds_nothing_fails_instead_of_looking_healthy(env):
    from prefect_dbbackup.blocks import PostgresServer

    server = f"pg-none-{uuid.uuid4().hex[:6]}"
    PostgresServer(host="127.0.0.1", user="postgres", include=["no_such_prefix_*"]).save(server)
    result = env.cli("backup", server)
    assert result.exit_code == 3
    assert "matches include=['no_such_prefix_*']" in result.stderr
    assert not env.storage_path.exists() or not list(env.storage_path.rglob("*"))


def test_a_block_name_typo_suggests_the_closest_names(env):
    result = env.cli("backup", env.pg[:-1])
    assert result.exit_code == 3, result.output
    assert f"no database server block named {env.pg[:-1]!r}" in result.stderr
    assert "did you mean" in result.stderr and repr(env.pg) in result.stderr
    far = env.cli("backup", "zzzzzzzzzzzzzzzzzzzz")
    assert far.exit_code == 3 and "did you mean" not in far.stderr


def test_a_name_two_server_blocks_share_is_refused_naming_both_types(env, pg_db):
    """Possible through the Prefect UI (apply refuses it): neither block is guessed."""
    from prefect_dbbackup.blocks import MySQLServer, PostgresServer

    name = f"twin-{uuid.uuid4().hex[:6]}"
    PostgresServer(host="127.0.0.1", user="postgres").save(name)
    MySQLServer(host="127.0.0.1", user="root").save(name)
    result = env.cli("backup", name, "-d", pg_db())
    assert result.exit_code == 3, result.output
    assert f"{name!r} names several database server blocks" in result.stderr
    assert "mysql-server and postgres-server" in result.stderr
    assert not env.storage_path.exists() or not list(env.storage_path.rglob("*"))


def test_list_of_an_unknown_server_exits_3_with_a_did_you_mean(env, pg_db, pg_admin):
    """A typo is not an empty series; a server never backed up is; a series whose server
    block is gone (the server was lost) still lists its backups."""
    from prefect_dbbackup.blocks import PostgresServer

    typo = env.cli("list", env.pg + "x")
    assert typo.exit_code == 3, typo.output
    assert f"{env.pg + 'x'!r} is no server" in typo.stderr and repr(env.pg) in typo.stderr
    never = env.cli("list", env.pg)
    assert never.exit_code == 0 and f"no complete backups of {env.pg}" in never.stderr
    assert json.loads(env.cli("list", env.pg, "--json").stdout) == []

    lost = f"lost-{uuid.uuid4().hex[:6]}"
    PostgresServer(host="127.0.0.1", user="postgres", backup_users=False).save(lost)
    db = pg_db()
    pg_admin.execute(db, "CREATE TABLE t (id int)")
    assert env.cli("backup", lost, "-d", db).exit_code == 0
    PostgresServer.delete(lost)
    listed = env.cli("list", lost, "--json")
    assert listed.exit_code == 0, listed.output
    assert [row["database"] for row in json.loads(listed.stdout)] == [db]


def test_a_misspelled_block_makes_no_flow_run(env, pg_db):
    """Input errors are caught before a flow run exists: nothing Failed in the UI for a typo
    (read from the Prefect API), exit 3 with a did-you-mean."""
    from tests.helpers import flow_runs_of

    db = pg_db()
    typo = env.pg + "x"
    cases = {
        "backup-server": (["backup", typo, "-d", db], {"server": typo}),
        "restore-database": (["restore", typo, db, "--into", db + "_r"], {"server": typo}),
        "verify-backups": (["verify", typo], {"server": typo}),
        "prune-backups": (["prune", typo], {"server": typo}),
        "restore-users": (["restore-users", typo], {"server": typo}),
    }
    for flow_name, (argv, parameters) in cases.items():
        result = env.cli(*argv)
        assert result.exit_code == 3, (argv, result.output)
        assert f"no database server block named {typo!r}" in result.stderr
        assert repr(env.pg) in result.stderr  # did you mean
        assert flow_runs_of(flow_name, **parameters) == [], f"{argv} created a flow run"
    storage_typo = env.cli("backup", env.pg, "-d", db, "--storage", env.storage + "x")
    assert storage_typo.exit_code == 3 and "no backup storage block named" in storage_typo.stderr
    assert flow_runs_of("backup-server", storage=env.storage + "x") == []
    keys_typo = env.cli("backup", env.pg, "-d", db, "--encryption", env.encryption + "x")
    assert keys_typo.exit_code == 3 and "no age-encryption block named" in keys_typo.stderr
    assert flow_runs_of("backup-server", encryption=env.encryption + "x") == []


def test_input_errors_found_on_the_server_or_storage_make_no_flow_run(env, pg_db, pg_admin):
    """A database not on the server, a restore onto an existing database without --replace
    and a backup that is not in the storage are refused (exit 3, saying what to do) before a
    flow run exists; a restore that can go on still runs and restores."""
    from tests.helpers import flow_runs_of

    db = pg_db()
    pg_admin.execute(db, "CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2)")
    nosuch = f"dbb_nosuch_{uuid.uuid4().hex[:8]}"
    result = env.cli("backup", env.pg, "-d", db, "-d", nosuch)
    assert result.exit_code == 3, result.output
    assert f"no database {nosuch!r} on" in result.stderr
    assert flow_runs_of("backup-server", server=env.pg, databases=[db, nosuch]) == []

    assert env.cli("backup", env.pg, "-d", db).exit_code == 0
    existing = pg_db()
    pg_admin.execute(existing, "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('mine')")
    result = env.cli("restore", env.pg, db, "--into", existing)
    assert result.exit_code == 3, result.output
    assert f"database {existing!r} already exists" in result.stderr and "--replace" in result.stderr
    assert pg_admin.query(existing, "SELECT v FROM kept") == [("mine",)]
    result = env.cli("restore", env.pg, nosuch, "--into", nosuch + "_r")
    assert result.exit_code == 3, result.output
    assert f"no complete backup of {nosuch!r}" in result.stderr
    for target in (existing, nosuch + "_r"):
        assert flow_runs_of("restore-database", target_database=target) == []

    replaced = env.cli("restore", env.pg, db, "--into", existing, "--replace")
    assert replaced.exit_code == 0, replaced.output
    assert pg_admin.query(existing, "SELECT id FROM t ORDER BY id") == [(1,), (2,)]
    assert len(flow_runs_of("restore-database", target_database=existing)) == 1
