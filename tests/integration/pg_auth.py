"""Password-protected logins for tests.

The machine's PostgreSQL trusts every local login, so a wrong password would
be accepted there. `pg_password_server` starts a private PostgreSQL 15 cluster
that requires scram-sha-256 over TCP; `my_password_user` creates a MariaDB
user with a password on the machine's MariaDB. Both passwords hold characters
that need escaping in a .pgpass file, a libpq conninfo, a MySQL option file,
SQL and a shell, plus a random core that cannot appear by accident.

Import the fixtures explicitly in a test module:
    from tests.integration.pg_auth import my_password_user, pg_password_server  # noqa: F401
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pymysql
import pytest
from psycopg import sql

from tests.helpers import MY, PgAdmin
from tests.pg_cluster import PrivateCluster


def tricky_password(core: str) -> str:
    """A password with quotes, backslash, colon, '#', '$', space around a unique core."""
    return f"p:w\\{core}'\"# $x"


@dataclass
class PgPasswordServer(PgAdmin):
    """A private PostgreSQL cluster: scram-sha-256 for TCP logins, trust on its own socket.

    `user`/`password` is a superuser login that must use its password over TCP
    (host/port); the PgAdmin methods (create, drop, execute, ...) connect as
    `postgres` over the cluster's unix socket.
    """

    user: str
    password: str
    password_core: str
    socket_dir: str

    def connect(self, database: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(
            host=self.socket_dir, port=self.port, user="postgres", dbname=database, autocommit=True
        )


@dataclass
class MyPasswordUser:
    """A MariaDB user with a password and all privileges, on the machine's MariaDB."""

    host: str
    port: int
    user: str
    password: str
    password_core: str


@pytest.fixture(scope="session")
def pg_password_server() -> Iterator[PgPasswordServer]:
    """A private PostgreSQL 15 cluster requiring scram-sha-256 for TCP logins."""
    cluster = PrivateCluster.new(prefix="dbb-scram-")
    try:
        cluster.start(
            hba="local all postgres trust\nhost all all 127.0.0.1/32 scram-sha-256\n",
            settings="-c password_encryption=scram-sha-256",
        )
        core = uuid.uuid4().hex
        server = PgPasswordServer(
            host="127.0.0.1",
            port=cluster.port,
            user=f"dbb_scram_{uuid.uuid4().hex[:8]}",
            password=tricky_password(core),
            password_core=core,
            socket_dir=cluster.socket_dir,
        )
        with server.connect() as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
                    sql.Identifier(server.user), sql.Literal(server.password)
                )
            )
        yield server
    finally:
        cluster.stop()


@pytest.fixture
def my_password_user() -> Iterator[MyPasswordUser]:
    """A MariaDB user 'dbb_u_...'@'%' with a password and ALL privileges; dropped afterwards."""
    core = uuid.uuid4().hex
    user = MyPasswordUser(
        host=MY["host"],
        port=MY["port"],
        user=f"dbb_u_{uuid.uuid4().hex[:8]}",
        password=tricky_password(core),
        password_core=core,
    )

    def admin() -> pymysql.Connection:
        return pymysql.connect(**MY, autocommit=True)

    with admin() as conn, conn.cursor() as cur:
        cur.execute("CREATE USER %s@'%%' IDENTIFIED BY %s", (user.user, user.password))
        cur.execute("GRANT ALL PRIVILEGES ON *.* TO %s@'%%'", (user.user,))
    try:
        yield user
    finally:
        with contextlib.suppress(pymysql.Error), admin() as conn, conn.cursor() as cur:
            cur.execute("DROP USER IF EXISTS %s@'%%'", (user.user,))
