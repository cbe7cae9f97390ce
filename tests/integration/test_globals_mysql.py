"""MariaDB users, roles and grants: backed up with every run, restored with restore-users.

Only accounts with this test's unique prefix are created, backed up (the block's
account_include), dropped and restored: other test runs share the server.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pymysql
import pytest
from prefect_dbbackup.flows.backup import backup_server  # noqa: F401  (configures logging before caplog listens)

from tests.helpers import MY, MyAdmin

HASH = re.compile(r"\*[0-9A-F]{40}")


@dataclass
class Accounts:
    """A role and two users with passwords and privileges at every level, on one database."""

    prefix: str
    block: str
    database: str
    password: str
    admin: MyAdmin

    @property
    def role(self) -> str:
        return f"{self.prefix}role"

    @property
    def users(self) -> list[tuple[str, str]]:
        return [(f"{self.prefix}app", "%"), (f"{self.prefix}ro", "10.0.0.%")]

    def names(self) -> list[str]:
        return [f"`{u}`@`{h}`" for u, h in self.users] + [f"`{self.role}`"]

    def listing(self) -> dict[str, list[str]]:
        """SHOW CREATE USER and SHOW GRANTS of every account (the backed-up truth)."""
        out = {}
        with self.admin.connect() as conn, conn.cursor() as cur:
            for name in self.names():
                rows = []
                if "@" in name:
                    cur.execute(f"SHOW CREATE USER {name}")
                    rows += [r[0] for r in cur.fetchall()]
                cur.execute(f"SHOW GRANTS FOR {name}")
                rows += sorted(r[0] for r in cur.fetchall())
                out[name] = rows
        return out

    def drop(self) -> None:
        with self.admin.connect() as conn, conn.cursor() as cur:
            for u, h in self.users:
                cur.execute(f"DROP USER IF EXISTS `{u}`@`{h}`")
            cur.execute(f"DROP ROLE IF EXISTS `{self.role}`")

    def drop_all(self) -> None:
        """Drop every account and role named with this test's prefix, however made (by the
        test, by a restore, half-made by a setup that failed)."""
        pattern = self.prefix.replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%") + "%"
        rows = self.admin.query(
            None, "SELECT User, Host, is_role FROM mysql.user WHERE User LIKE %s", (pattern,)
        )
        with self.admin.connect() as conn, conn.cursor() as cur:
            for user, host, is_role in rows:
                if is_role == "Y":
                    cur.execute(f"DROP ROLE IF EXISTS `{user}`")
                else:
                    cur.execute(f"DROP USER IF EXISTS `{user}`@`{host}`")
        assert not self.exists(), f"accounts named {self.prefix}* are left"

    def exists(self) -> bool:
        rows = self.admin.query(
            None, "SELECT count(*) FROM mysql.user WHERE User LIKE %s", (self.prefix + "%",)
        )
        return rows[0][0] > 0

    def login(self) -> tuple:
        """Log in as the app user with its original password; its default role is active."""
        with (
            pymysql.connect(
                host=MY["host"],
                port=MY["port"],
                user=f"{self.prefix}app",
                password=self.password,
                database=self.database,
            ) as conn,
            conn.cursor() as cur,
        ):
            cur.execute("SELECT CURRENT_ROLE(), (SELECT count(*) FROM t)")
            return cur.fetchone()


@pytest.fixture
def accounts(env, my_db, my_admin) -> Iterator[Accounts]:
    from prefect_dbbackup.blocks import MySQLServer

    prefix = f"dbbg{uuid.uuid4().hex[:6]}_"
    db = my_db()
    password = f"pw'\"\\:{uuid.uuid4().hex}"
    my_admin.execute(db, "CREATE TABLE t (a int, b int, c int)", "INSERT INTO t VALUES (1, 2, 3)")
    block = f"my-users-{prefix.rstrip('_')}"
    MySQLServer(host=MY["host"], port=MY["port"], user="root", account_include=[prefix + "*"]).save(
        block
    )
    acc = Accounts(prefix, block, db, password, my_admin)
    app, ro, role = f"`{prefix}app`@`%`", f"`{prefix}ro`@`10.0.0.%`", f"`{acc.role}`"
    try:
        _create_accounts(my_admin, db, app, ro, role, password)
        yield acc
    finally:
        acc.drop_all()


def _create_accounts(my_admin, db: str, app: str, ro: str, role: str, password: str) -> None:  # noqa: ANN001
    with my_admin.connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE ROLE {role}")
        cur.execute(f"GRANT SELECT ON `{db}`.* TO {role}")
        secret = conn.escape(password)
        cur.execute(f"CREATE USER {app} IDENTIFIED BY {secret} WITH MAX_QUERIES_PER_HOUR 100")
        cur.execute(f"GRANT PROCESS ON *.* TO {app}")  # server-wide
        cur.execute(f"GRANT INSERT, DELETE ON `{db}`.* TO {app}")  # database
        cur.execute(f"GRANT UPDATE ON `{db}`.`t` TO {app} WITH GRANT OPTION")  # table
        cur.execute(f"GRANT SELECT (a), UPDATE (b) ON `{db}`.`t` TO {app}")  # column
        cur.execute(f"GRANT {role} TO {app}")
        cur.execute(f"SET DEFAULT ROLE {role} FOR {app}")
        cur.execute(f"CREATE USER {ro} IDENTIFIED BY 'other-{uuid.uuid4().hex}' ACCOUNT LOCK")
        cur.execute(f"GRANT SELECT (c) ON `{db}`.`t` TO {ro}")


def _users(env, *args: str):
    return env.cli("restore-users", *args, "--storage", env.storage, "--encryption", env.encryption)


def test_users_come_back_with_their_grants_and_passwords(env, accounts, caplog):
    caplog.set_level(logging.DEBUG)
    original = accounts.listing()
    assert accounts.login() == (accounts.role, 1)

    result = env.cli("backup", accounts.block, "--database", accounts.database, "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["databases"]
    assert [(r["database"], r["status"]) for r in rows] == [
        (accounts.database, "ok"),
        ("_globals", "ok"),
    ]
    backup_id = rows[1]["backup_id"]
    assert backup_id == rows[0]["backup_id"]
    assert (env.storage_path / accounts.block / "_globals" / backup_id / "manifest.json").exists()

    accounts.drop()
    assert not accounts.exists()
    result = _users(env, accounts.block, "--json")
    assert result.exit_code == 0, result.output
    first = json.loads(result.stdout)
    assert sorted(first["accounts"]) == sorted(
        [f"{u}@{h}" for u, h in accounts.users] + [accounts.role]
    )
    assert first["skipped"] == []
    assert accounts.listing() == original
    assert accounts.login() == (accounts.role, 1)

    # a second restore finds every account as backed up: it runs nothing, fails on nothing
    again = _users(env, accounts.block, "--backup-id", backup_id, "--json")
    assert again.exit_code == 0, again.output
    second = json.loads(again.stdout)
    assert (second["applied"], second["unchanged"]) == (0, first["applied"])
    assert accounts.listing() == original

    # the hash is in the backup (that is the point) but never in what is shown or logged
    hashes = {h for rows in original.values() for r in rows for h in HASH.findall(r)}
    assert hashes
    dry = _users(env, accounts.block, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "IDENTIFIED BY PASSWORD '***'" in dry.stdout
    assert f"SET DEFAULT ROLE `{accounts.role}` FOR `{accounts.prefix}app`@`%`" in dry.stdout
    shown = result.output + again.output + dry.output + caplog.text
    assert not any(h in shown for h in hashes)
    assert accounts.password not in shown


def test_one_user_restores_alone_and_unknown_users_are_an_error(env, accounts):
    assert env.cli("backup", accounts.block, "-d", accounts.database).exit_code == 0
    accounts.drop()
    app = f"{accounts.prefix}app"
    result = _users(env, accounts.block, "--user", f"{app}@%", "--user", accounts.role)
    assert result.exit_code == 0, result.output
    assert accounts.login() == (accounts.role, 1)
    found = accounts.admin.query(
        None, "SELECT User FROM mysql.user WHERE User LIKE %s", (accounts.prefix + "%",)
    )
    assert sorted(r[0] for r in found) == sorted([app, accounts.role])

    missing = _users(env, accounts.block, "--user", "nobody_" + accounts.prefix)
    assert missing.exit_code == 3
    assert "no account 'nobody_" in missing.stderr


def test_restore_with_users_brings_back_the_database_and_its_accounts(
    env, accounts, my_admin, cleanup_my
):
    original = accounts.listing()
    assert env.cli("backup", accounts.block, "-d", accounts.database).exit_code == 0
    accounts.drop()
    my_admin.drop(accounts.database)

    # without the database, its table and column grants cannot be applied yet: skipped, said so
    early = _users(env, accounts.block)
    assert early.exit_code == 0, early.output
    assert "does not exist (yet)" in early.stdout and "ON `" in early.stdout
    accounts.drop()

    result = env.cli("restore", accounts.block, accounts.database, "--with-users", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["users"]["skipped"] == []
    assert accounts.listing() == original
    assert accounts.login() == (accounts.role, 1)


def test_a_globals_failure_fails_the_run(env, my_db, my_admin):
    """A login that may not read mysql.user: the databases back up, the _globals row fails."""
    from prefect_dbbackup.blocks import MySQLServer

    db = my_db()
    my_admin.execute(db, "CREATE TABLE t (a int)")
    user = f"dbbg{uuid.uuid4().hex[:6]}_dumper"
    try:  # from its creation on: a failing GRANT leaves no account behind either
        with my_admin.connect() as conn, conn.cursor() as cur:
            cur.execute(f"CREATE USER `{user}`@`%` IDENTIFIED BY 'x-{user}'")
            cur.execute(
                f"GRANT SELECT, LOCK TABLES, SHOW VIEW, EVENT, TRIGGER ON `{db}`.* TO `{user}`@`%`"
            )
        block = f"my-dumper-{uuid.uuid4().hex[:8]}"
        MySQLServer(host=MY["host"], user=user, password=f"x-{user}").save(block)
        result = env.cli("backup", block, "-d", db, "--json")
        assert result.exit_code == 1, result.output
        rows = {r["database"]: r for r in json.loads(result.stdout)["databases"]}
        assert rows[db]["status"] == "ok"
        assert rows["_globals"]["status"] == "failed"
        assert "may not read the accounts" in rows["_globals"]["error"]

        opted_out = block + "-nousers"
        MySQLServer(host=MY["host"], user=user, password=f"x-{user}", backup_users=False).save(
            opted_out
        )
        result = env.cli("backup", opted_out, "-d", db, "--json")
        assert result.exit_code == 0, result.output
        assert [r["database"] for r in json.loads(result.stdout)["databases"]] == [db]
    finally:
        with my_admin.connect() as conn, conn.cursor() as cur:
            cur.execute(f"DROP USER IF EXISTS `{user}`@`%`")


def _socket_root() -> pymysql.Connection:
    """root@localhost over the socket: unlike root@127.0.0.1 it may grant PROXY."""
    socket = MyAdmin().query(None, "SELECT @@socket")[0][0]
    return pymysql.connect(unix_socket=socket, user="root", autocommit=True)


def _grants(admin: MyAdmin, account: str) -> list[str]:
    return sorted(r[0] for r in admin.query(None, f"SHOW GRANTS FOR {account}"))


def test_statements_the_login_may_not_run_are_skipped_and_fail_the_run(
    env, accounts, my_admin, cleanup_my
):
    """A restoring login without GRANT OPTION on PROXY (as root@127.0.0.1 or a dedicated
    account on a stock MariaDB): the PROXY grant is skipped and named, everything else is
    restored, the run exits 1; the stock mysql@localhost account, unchanged, is left alone."""
    from prefect_dbbackup.blocks import MySQLServer

    proxy = f"`{accounts.prefix}px`@`localhost`"
    restorer, password = f"{accounts.prefix}restorer", f"r-{uuid.uuid4().hex}"
    try:
        with _socket_root() as conn, conn.cursor() as cur:
            cur.execute(f"CREATE USER {proxy} IDENTIFIED BY 'p-{uuid.uuid4().hex}'")
            cur.execute(f"GRANT SELECT ON `{accounts.database}`.* TO {proxy}")
            cur.execute(f"GRANT PROXY ON ''@'%' TO {proxy} WITH GRANT OPTION")
        stock = "`mysql`@`localhost`"
        stock_grants = _grants(my_admin, stock)
        assert any(g.startswith("GRANT PROXY") for g in stock_grants)
        original, proxy_grants = accounts.listing(), _grants(my_admin, proxy)
        block = accounts.block + "-stock"
        include = [accounts.prefix + "*", "mysql"]
        MySQLServer(host=MY["host"], port=MY["port"], user="root", account_include=include).save(
            block
        )
        result = env.cli("backup", block, "--database", accounts.database, "--json")
        assert result.exit_code == 0, result.output

        # created after the backup: it is not in it
        my_admin.execute(
            None,
            f"CREATE USER `{restorer}`@`%` IDENTIFIED BY '{password}'",
            f"GRANT ALL PRIVILEGES ON *.* TO `{restorer}`@`%` WITH GRANT OPTION",
        )
        as_restorer = block + "-restorer"
        MySQLServer(host=MY["host"], port=MY["port"], user=restorer, password=password).save(
            as_restorer
        )
        accounts.drop()
        my_admin.execute(None, f"DROP USER {proxy}")

        args = ["--from-server", block, "--storage", env.storage, "--encryption", env.encryption]
        partial = env.cli("restore-users", as_restorer, *args)
        assert partial.exit_code == 1, partial.output
        assert f"GRANT PROXY ON ``@`%` TO {proxy} WITH GRANT OPTION" in partial.stderr
        assert "may not run" in partial.stderr
        assert "mysql`@`localhost" not in partial.stderr
        # everything else came back, the PROXY grant did not, the stock account is untouched
        assert accounts.listing() == original
        assert accounts.login() == (accounts.role, 1)
        assert _grants(my_admin, proxy) == [g for g in proxy_grants if "PROXY" not in g]
        assert _grants(my_admin, stock) == stock_grants

        # run again: all in force but the refused grant, still exit 1 and named
        again = env.cli("restore-users", as_restorer, *args)
        assert again.exit_code == 1, again.output
        assert again.stderr.count("GRANT PROXY") == 1
        assert "0 statements applied" in again.stderr and "1 skipped" in again.stderr

        # restore --with-users: the database is restored, the refused grant named, exit 1
        target = accounts.database + "_copy"
        cleanup_my.append(target)
        both = env.cli("restore", as_restorer, accounts.database, "--into", target,
                       "--with-users", *args)  # fmt: skip
        assert both.exit_code == 1, both.output
        assert "users/roles restore incomplete" in both.stderr and "GRANT PROXY" in both.stderr
        assert f"restored {accounts.database!r} into {target!r};" in both.stderr
        assert my_admin.table_fingerprints(target) == my_admin.table_fingerprints(accounts.database)

        # with --json the reports are still printed (stdout), then the error line (stderr)
        users_json = env.cli("restore-users", as_restorer, "--json", *args)
        assert users_json.exit_code == 1, users_json.output
        report = json.loads(users_json.stdout)
        assert [s for s in report["refused"] if "GRANT PROXY" in s], report
        assert "GRANT PROXY" in users_json.stderr
        target_json = target + "_j"
        cleanup_my.append(target_json)
        both_json = env.cli("restore", as_restorer, accounts.database, "--into", target_json,
                            "--with-users", "--json", *args)  # fmt: skip
        assert both_json.exit_code == 1, both_json.output
        report = json.loads(both_json.stdout)
        assert report["target_database"] == target_json
        assert [s for s in report["users"]["refused"] if "GRANT PROXY" in s], report
        assert "users/roles restore incomplete" in both_json.stderr

        # a login the server refuses is still exit 4
        MySQLServer(host=MY["host"], port=MY["port"], user=restorer, password="wrong").save(
            as_restorer + "-badpw"
        )
        refused = env.cli("restore-users", as_restorer + "-badpw", *args)
        assert refused.exit_code == 4, refused.output
    finally:
        my_admin.execute(
            None, f"DROP USER IF EXISTS {proxy}", f"DROP USER IF EXISTS `{restorer}`@`%`"
        )
