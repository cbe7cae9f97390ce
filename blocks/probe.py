"""Find the database servers that run on this machine, for `dbbackup init`.

Each engine's usual local addresses (127.0.0.1 and its Unix socket) are tried with a
short timeout, and an address counts only when the server there speaks the engine's
protocol: PostgreSQL answers an SSLRequest with `S` or `N`, MariaDB/MySQL greets a new
connection with a handshake packet. Nothing logs in and no credential is sent.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SSL_REQUEST = struct.pack("!ii", 8, 80877103)  # PostgreSQL's SSLRequest message
MYSQL_PROTOCOL_V10 = 10
MYSQL_ERROR_PACKET = 0xFF  # a greeting that refuses this host is still MySQL's protocol


def _speaks_postgres(conn: socket.socket) -> bool:
    conn.sendall(SSL_REQUEST)
    return conn.recv(1) in (b"S", b"N")


def _speaks_mysql(conn: socket.socket) -> bool:
    header = conn.recv(5)  # 3-byte length, sequence id, first payload byte
    return (
        len(header) == 5
        and header[3] == 0
        and header[4]
        in (
            MYSQL_PROTOCOL_V10,
            MYSQL_ERROR_PACKET,
        )
    )


@dataclass(frozen=True)
class LocalEngine:
    """Where one engine's server usually listens on a machine, and how it is recognised."""

    label: str  # for people: "PostgreSQL"
    config_type: str  # the `type:` of its dbbackup.yaml entry
    name: str  # the server's name in the starter config
    user: str  # the administrator login a fresh install has
    sockets: tuple[str, ...]  # socket file paths; {port} is the probed port
    socket_host_is_dir: bool  # PostgreSQL's `host` is the socket's directory, MySQL's the file
    speaks: Callable[[socket.socket], bool]


POSTGRES = LocalEngine(
    label="PostgreSQL",
    config_type="postgres",
    name="local-pg",
    user="postgres",
    sockets=("/var/run/postgresql/.s.PGSQL.{port}",),
    socket_host_is_dir=True,
    speaks=_speaks_postgres,
)
MYSQL = LocalEngine(
    label="MariaDB/MySQL",
    config_type="mysql",
    name="local-my",
    user="root",
    sockets=("/run/mysqld/mysqld.sock", "/var/run/mysqld/mysqld.sock"),
    socket_host_is_dir=False,
    speaks=_speaks_mysql,
)
LOCAL_ENGINES = (POSTGRES, MYSQL)


@dataclass(frozen=True)
class FoundServer:
    """A server that answered: what a config entry needs to reach it."""

    engine: LocalEngine
    host: str  # 127.0.0.1, or the socket (directory for PostgreSQL, file for MySQL)
    port: int


def _answers(engine: LocalEngine, family: int, address: object, timeout: float) -> bool:
    try:
        with socket.socket(family, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(address)
            return engine.speaks(conn)
    except OSError:  # refused, timed out, reset, no such socket
        return False


def probe(engine: LocalEngine, port: int, timeout: float = 1.0) -> FoundServer | None:
    """The engine's server on 127.0.0.1:port, else on one of its sockets; None if none
    answers in its protocol within timeout (per address)."""
    if _answers(engine, socket.AF_INET, ("127.0.0.1", port), timeout):
        return FoundServer(engine, "127.0.0.1", port)
    for pattern in engine.sockets:
        path = pattern.format(port=port)
        if _answers(engine, socket.AF_UNIX, path, timeout):
            host = str(Path(path).parent) if engine.socket_host_is_dir else path
            return FoundServer(engine, host, port)
    return None


def addresses(engine: LocalEngine, port: int) -> str:
    """The addresses probe tries, for a message."""
    return " and ".join([f"127.0.0.1:{port}", *(s.format(port=port) for s in engine.sockets)])
