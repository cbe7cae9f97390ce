"""PostgreSQL roles: backed up with every run (pg_dumpall --roles-only), restored with
restore-users or restore --with-users.

Roles are cluster-wide and other test runs share the cluster: only roles with this
test's unique prefix are created, backed up (the block's account_include), dropped
and restored. Password logins are checked on the private scram-sha-256 cluster.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from prefect_dbbackup.flows.backup import backup_server  # noqa: F401  (configures logging before caplog listens)
from psycopg import sql

from tests.helpers import PgAdmin
from tests.integration.pg_auth import pg_password_server  # noqa: F401

ROLES = """
SELECT rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin, rolreplication,
       rolbypassrls, rolconnlimit, rolvaliduntil, rolpassword,
       (SELECT setconfig FROM pg_db_role_setting WHERE setrole = a.oid AND setdatabase = 0),
       shobj_description(oid, 'pg_authid')
FROM pg_authid a WHERE rolname LIKE %(p)s ORDER BY 1
"""
MEMBERS = """
SELECT r.rolname, m.rolname, g.rolname, a.admin_option
FROM pg_auth_members a JOIN pg_roles r ON r.oid = a.roleid JOIN pg_roles m ON m.oid = a.member
JOIN pg_roles g ON g.oid = a.grantor
WHERE r.rolname LIKE %(p)s OR m.rolname LIKE %(p)s ORDER BY 1, 2
"""
ACLS = """
SELECT 'table', relacl::text FROM pg_class WHERE relname = 't'
UNION ALL
SELECT attname, attacl::text FROM pg_attribute
WHERE attrelid = 't'::regclass AND attacl IS NOT NULL ORDER BY 1
"""


@dataclass
class Roles:
    """Three roles with this test's prefix on one cluster: reader (NOLOGIN), app, admin."""

    prefix: str
    admin: PgAdmin
    password: str

    @property
    def names(self) -> list[str]:
        return [self.prefix + n for n in ("reader", "app", "admin")]

    def create(self, db: str) -> None:
        reader, app, admin = (sql.Identifier(n) for n in self.names)
        statements = [
            sql.SQL("CREATE ROLE {} NOLOGIN").format(reader),
            sql.SQL(
                "CREATE ROLE {} LOGIN CREATEDB CONNECTION LIMIT 5 VALID UNTIL '2040-01-01' "
                "PASSWORD {}"
            ).format(app, sql.Literal(self.password)),
            sql.SQL("CREATE ROLE {} LOGIN CREATEROLE PASSWORD {}").format(
                admin, sql.Literal("adm-" + self.password)
            ),
            sql.SQL("GRANT {} TO {} WITH ADMIN OPTION").format(reader, app),
            sql.SQL("GRANT pg_read_all_stats TO {}").format(admin),  # server-wide privilege
            sql.SQL("ALTER ROLE {} SET role = {}").format(app, sql.Literal(self.names[0])),
            sql.SQL("ALTER ROLE {} SET search_path = 'a;b', public").format(app),
            sql.SQL("COMMENT ON ROLE {} IS 'the app''s login'").format(app),
        ]
        with self.admin.connect() as conn:
            for statement in statements:
                conn.execute(statement)
        with self.admin.connect(db) as conn:
            conn.execute("CREATE TABLE t (a int, b int, c int); INSERT INTO t VALUES (1, 2, 3)")
            for statement in [
                "GRANT SELECT ON t TO {reader}",
                "GRANT INSERT ON t TO {app} WITH GRANT OPTION",
                "GRANT SELECT (a), UPDATE (b) ON t TO {app}",
                "GRANT CONNECT ON DATABASE {db} TO {admin}",
            ]:
                conn.execute(
                    sql.SQL(statement).format(
                        reader=reader, app=app, admin=admin, db=sql.Identifier(db)
                    )
                )

    def catalog(self) -> tuple[list[tuple], list[tuple]]:
        """Role attributes (password hash included) and memberships."""
        with self.admin.connect() as conn:
            p = {"p": self.prefix + "%"}
            return conn.execute(ROLES, p).fetchall(), conn.execute(MEMBERS, p).fetchall()

    def drop(self, *databases: str) -> None:
        with self.admin.connect() as conn:
            for db in databases:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db))
                )
            for name in reversed(self.names):
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
        drop_roles_named(self.admin, self.prefix)


def drop_roles_named(admin: PgAdmin, prefix: str) -> None:
    """Drop every role whose name starts with prefix (a test's own), however it was made;
    fail if one is left."""
    with admin.connect() as conn:
        rows = conn.execute("SELECT rolname FROM pg_roles").fetchall()
        for (name,) in rows:
            if name.startswith(prefix):
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
        left = [n for (n,) in conn.execute("SELECT rolname FROM pg_roles") if n.startswith(prefix)]
    assert left == [], f"roles left behind: {left}"


@pytest.fixture
def roles(pg_admin: PgAdmin) -> Iterator[Roles]:
    r = Roles(f"dbbg_{uuid.uuid4().hex[:8]}_", pg_admin, f"pw'\\:{uuid.uuid4().hex}")
    try:
        yield r
    finally:
        r.drop()


def _block(prefix: str, **fields) -> str:
    from prefect_dbbackup.blocks import PostgresServer

    name = f"pg-users-{uuid.uuid4().hex[:8]}"
    fields = {"host": "127.0.0.1", "user": "postgres", **fields}
    PostgresServer(account_include=[prefix + "*"], **fields).save(name)
    return name


def _users(env, *args: str):
    return env.cli("restore-users", *args, "--storage", env.storage, "--encryption", env.encryption)


def test_roles_and_privileges_come_back_with_the_database(env, roles, pg_db, caplog):
    caplog.set_level(logging.DEBUG)
    db = pg_db()
    roles.create(db)
    block = _block(roles.prefix)
    before, acls = roles.catalog(), roles.admin.query(db, ACLS)
    assert len(before[0]) == 3 and len(before[1]) == 2

    result = env.cli("backup", block, "--database", db, "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["databases"]
    assert [(r["database"], r["status"], r["note"]) for r in rows] == [
        (db, "ok", None),
        ("_globals", "ok", None),
    ]

    roles.drop(db)
    assert roles.catalog() == ([], [])
    result = env.cli("restore", block, db, "--with-users", "--json")
    assert result.exit_code == 0, result.output
    assert sorted(json.loads(result.stdout)["users"]["accounts"]) == sorted(roles.names)
    assert roles.catalog() == before
    assert roles.admin.query(db, ACLS) == acls

    # a second restore changes nothing: each CREATE ROLE is skipped, the rest re-applied
    again = _users(env, block, "--json")
    assert again.exit_code == 0, again.output
    assert sorted(json.loads(again.stdout)["skipped"]) == sorted(
        f"CREATE ROLE {n}: role exists" for n in roles.names
    )
    assert roles.catalog() == before

    # the hashes are backed up but never shown or logged
    hashes = [row[10] for row in before[0] if row[10]]
    assert len(hashes) == 2 and all(h.startswith("SCRAM-SHA-256$") for h in hashes)
    dry = _users(env, block, "--dry-run", "--user", roles.names[1])
    assert dry.exit_code == 0, dry.output
    assert "PASSWORD '***'" in dry.stdout and f"GRANT {roles.names[0]} TO" in dry.stdout
    assert roles.names[2] not in dry.stdout
    shown = result.output + again.output + dry.output + caplog.text
    assert not any(h in shown or h.split("$")[2] in shown for h in hashes)
    assert roles.password not in shown


def test_passwords_work_after_restore_and_a_non_superuser_backs_up_without_them(
    env,
    pg_password_server,  # noqa: F811
):
    srv = pg_password_server
    prefix = f"dbbg_{uuid.uuid4().hex[:8]}_"
    app, backup_login, password = prefix + "app", prefix + "backup", f"pw:{uuid.uuid4().hex}"
    db = f"dbb_{uuid.uuid4().hex[:10]}"
    admin_fields = {"host": srv.host, "port": srv.port, "user": srv.user, "password": srv.password}

    def login() -> str:
        with psycopg.connect(
            host=srv.host, port=srv.port, user=app, password=password, dbname=db
        ) as conn:
            return conn.execute("SELECT current_user").fetchone()[0]

    def drop_app() -> None:
        with srv.connect() as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(app)))

    try:  # from the first CREATE on: a failure half-way leaves nothing behind either
        srv.create(db)
        with srv.connect() as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(app), sql.Literal(password)
                )
            )
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(backup_login), sql.Literal("b-" + password)
                )
            )
        superuser = _block(prefix + "app", **admin_fields)
        assert env.cli("backup", superuser, "-d", db).exit_code == 0
        drop_app()
        result = _users(env, superuser)
        assert result.exit_code == 0, result.output
        assert login() == app

        # a login that is not a superuser cannot read password hashes: roles without them
        fields = {**admin_fields, "user": backup_login, "password": "b-" + password}
        limited = _block(prefix + "app", **fields)
        result = env.cli("backup", limited, "-d", db, "--json")
        assert result.exit_code == 0, result.output
        [_, users_row] = json.loads(result.stdout)["databases"]
        assert users_row["status"] == "ok" and "not a superuser" in users_row["note"]
        drop_app()
        result = _users(env, superuser, "--from-server", limited)
        assert result.exit_code == 0, result.output
        assert "role passwords not backed up" in result.stdout
        with srv.connect() as conn:
            row = conn.execute(
                "SELECT rolcanlogin, rolpassword FROM pg_authid WHERE rolname = %s", (app,)
            ).fetchone()
        assert row == (True, None)
        with pytest.raises(psycopg.OperationalError):
            login()
    finally:
        srv.drop(db)
        with srv.connect() as conn:
            for role in (app, backup_login):
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
