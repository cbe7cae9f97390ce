"""Every fact about a database engine, one record per engine: the engine contract's data.

What its backups look like in storage, what it can do (rename a database, restore
in parallel), its system databases, dump options, name limit and users SQL
dialect. A server block names its engine (`DatabaseServer.engine`); manifests,
which are read without loading any server block, find the same record by the
manifest's `server_type`. Steps and flows never branch on the engine: they ask
this record or the server block. Light on purpose (no drivers): `dbbackup list`
reads it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from prefect_dbbackup.blocks.errors import ConfigError
from prefect_dbbackup.blocks.users_sql import MYSQL_SQL, POSTGRES_SQL, UsersSql

EngineName = Literal["postgres", "mysql"]
BackupKind = Literal["database", "globals"]
DumpFormat = Literal["pg_custom", "sql"]


class BackupRecord(Protocol):
    """What check_restorable reads of a manifest (tasks/manifest.py's Manifest)."""

    server: str
    server_type: str
    database: str
    backup_id: str
    kind: str


@dataclass(frozen=True, kw_only=True)
class Engine:
    """One engine's facts: how its backups are stored and recreated, what it can do."""

    name: EngineName
    dump_format: DumpFormat
    database_object: str  # the object name of a database backup
    users_object: str  # the object name of a users/roles backup
    # options create_database understands, and the syntax their values must have
    create_options: Mapping[str, str] = field(default_factory=dict)
    system_databases: frozenset[str]  # never discovered, never backed up
    dump_options: tuple[str, ...]  # the options every dump runs with (in its manifest)
    # the longest database name: PostgreSQL counts UTF-8 bytes, MySQL/MariaDB characters
    name_limit: int
    version_query: str  # SQL returning the server's version string
    login_query: str  # SQL returning the login as the server sees it (a role, or user@host)
    clock_query: str  # SQL returning the server's clock as seconds since the epoch (UTC)
    users_sql: UsersSql  # the dialect of its users/roles scripts
    # restore --replace: rename a staging database into place (else drop and reload)
    supports_rename: bool = False
    # restore --with-users: roles first (PostgreSQL: the database's grants and owners name
    # them), or after the database (MySQL: table grants need the tables)
    users_before_database: bool = False
    # restore --jobs N: the client restores an archive file in parallel
    parallel_restore: bool = False
    # accounts the server creates for itself: a server block's default account_exclude
    system_accounts: tuple[str, ...] = ()
    # how the manifest's row counts were taken (said in verify's log)
    row_counts_note: str = "exact, taken in the dump's own snapshot"
    # point-in-time archives: what the transaction log is called, and where a file's own
    # bytes start (a binlog position is after its 4 magic bytes; a WAL offset from 0)
    log_name: str = "binary log"
    log_kind: Literal["binlog", "wal"] = "binlog"  # an archive manifest's kind
    log_first_position: int = 4

    def object_name(self, kind: BackupKind) -> str:
        """The fixed name of a backup's stored object (never taken from a manifest)."""
        return self.database_object if kind == "database" else self.users_object

    def check_create_options(self, options: Mapping[str, str]) -> None:
        """ValueError unless every option is one this engine creates databases with, and
        its value a plain name (the values end up inlined in CREATE DATABASE)."""
        for key, value in options.items():
            if key not in self.create_options:
                raise ValueError(
                    f"create_options has {key!r}, which a {self.name} database is never "
                    f"created with (allowed: {', '.join(self.create_options)})"
                )
            if len(value) > 128 or not re.fullmatch(self.create_options[key], value):
                raise ValueError(f"create_options {key}={value[:64]!r} is not a plain name")

    def check_restorable(self, manifest: BackupRecord) -> None:
        """ConfigError unless the backup was taken from a server of this engine."""
        if manifest.server_type == self.name:
            return
        source, backup_id = manifest.server_type, manifest.backup_id
        if manifest.kind == "globals":
            what = f"users/roles backup {backup_id} is from a {source} server"
        else:
            series = f"{manifest.database!r} ({manifest.server})"
            what = f"backup {backup_id} of {series} is a {source} dump"
        raise ConfigError(f"{what}; it cannot be restored into a {self.name} server")


_PLAIN = r"[A-Za-z0-9_]+"
_LOCALE = r"[A-Za-z0-9_.@-]+"

POSTGRES = Engine(
    name="postgres",
    dump_format="pg_custom",
    database_object="dump.pgc.zst.age",
    users_object="globals.sql.zst.age",
    system_databases=frozenset({"template0", "template1", "postgres"}),
    dump_options=("--format=custom", "--compress=0"),
    name_limit=63,  # NAMEDATALEN - 1; PostgreSQL cuts longer names with only a notice
    version_query="SHOW server_version",
    login_query="SELECT current_user",
    clock_query="SELECT extract(epoch FROM clock_timestamp())",
    users_sql=POSTGRES_SQL,
    log_name="WAL",
    log_kind="wal",
    log_first_position=0,
    supports_rename=True,
    users_before_database=True,
    parallel_restore=True,
    create_options={
        "encoding": _PLAIN,
        "lc_collate": _LOCALE,
        "lc_ctype": _LOCALE,
        "locale_provider": r"libc|icu|builtin",
        "icu_locale": _LOCALE,
        "builtin_locale": _LOCALE,
    },
)
MYSQL = Engine(
    name="mysql",
    dump_format="sql",
    database_object="dump.sql.zst.age",
    users_object="globals.sql.zst.age",
    system_databases=frozenset({"mysql", "information_schema", "performance_schema", "sys"}),
    # PUBLIC is MariaDB 10.11's holder of grants to everyone
    system_accounts=("mariadb.sys", "mysql.sys", "mysql.session", "mysql.infoschema", "PUBLIC"),
    dump_options=(
        "--single-transaction",
        "--quick",
        "--routines",
        "--triggers",
        "--skip-events",  # appended from SHOW CREATE EVENT instead (blocks/mysql_events.py)
        "--hex-blob",
        "--default-character-set=utf8mb4",
    ),
    name_limit=64,
    version_query="SELECT VERSION()",
    login_query="SELECT CURRENT_USER()",
    clock_query="SELECT UNIX_TIMESTAMP(NOW(6))",
    users_sql=MYSQL_SQL,
    row_counts_note="exact, counted in the dump stream; system-versioned tables with their history",
    create_options={"character_set": _PLAIN, "collation": _PLAIN},
)
ENGINES: dict[str, Engine] = {e.name: e for e in (POSTGRES, MYSQL)}


def stored_object_names() -> frozenset[str]:
    """Every object name any engine's backups use."""
    return frozenset(n for e in ENGINES.values() for n in (e.database_object, e.users_object))
