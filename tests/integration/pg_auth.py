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
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pymysql
import pytest
from psycopg import sql

from tests.helpers import MY, PgAdmin

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (right now)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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

    host: str
    port: int
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


def _as_postgres(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["runuser", "-u", "postgres", "--", *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


@pytest.fixture(scope="session")
def pg_password_server() -> Iterator[PgPasswordServer]:
    """A private PostgreSQL 15 cluster requiring scram-sha-256 for TCP logins."""
    base = Path(tempfile.mkdtemp(prefix="dbb-scram-"))
    shutil.chown(base, "postgres", "postgres")
    data = base / "data"
    started = False
    try:
        init = _as_postgres(
            str(PG_BIN / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--no-sync",
        )
        assert init.returncode == 0, f"initdb failed: {init.stdout}\n{init.stderr}"
        # writing the existing file keeps its owner (postgres)
        (data / "pg_hba.conf").write_text(
            "local all postgres trust\nhost all all 127.0.0.1/32 scram-sha-256\n"
        )
        for _attempt in range(3):  # a free port can be taken between probe and bind
            port = free_port()
            start = _as_postgres(
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(data),
                "-w",
                "-t",
                "60",
                "-l",
                str(base / "server.log"),
                "-o",
                f"-c listen_addresses=127.0.0.1 -c port={port} "
                f"-c unix_socket_directories={base} -c fsync=off "
                "-c password_encryption=scram-sha-256",
                "start",
            )
            if start.returncode == 0:
                started = True
                break
        log = (base / "server.log").read_text() if (base / "server.log").exists() else ""
        assert started, f"pg_ctl start failed: {start.stdout}\n{start.stderr}\n{log}"

        core = uuid.uuid4().hex
        server = PgPasswordServer(
            host="127.0.0.1",
            port=port,
            user=f"dbb_scram_{uuid.uuid4().hex[:8]}",
            password=tricky_password(core),
            password_core=core,
            socket_dir=str(base),
        )
        with server.connect() as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
                    sql.Identifier(server.user), sql.Literal(server.password)
                )
            )
        yield server
    finally:
        if started:
            _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(base, ignore_errors=True)


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
