"""MySQL/MariaDB server block: discovery over PyMySQL, dumps with mariadb-dump/mysqldump."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, ClassVar

import pymysql
import sqlalchemy as sa
from prefect_dbbackup.blocks.binlog import BinlogPosition, BinlogPositionReader, plain_file_name
from prefect_dbbackup.blocks.binlog_events import BinlogScan, ReplayResult
from prefect_dbbackup.blocks.binlog_pieces import PieceFilter
from prefect_dbbackup.blocks.binlog_replay import BinlogFile, reader_argv, replay
from prefect_dbbackup.blocks.bounds import Port
from prefect_dbbackup.blocks.dump_rows import DumpRowCounter
from prefect_dbbackup.blocks.engines import MYSQL, Engine
from prefect_dbbackup.blocks.errors import (
    AuthError,
    ConfigError,
    ConnectionFailed,
    DatabaseNotFound,
    DbBackupError,
    IntegrityError,
    PermissionDenied,
)
from prefect_dbbackup.blocks.mysql_events import ShownEvent, events_script
from prefect_dbbackup.blocks.properties import DatabaseProperties
from prefect_dbbackup.blocks.server import DatabaseServer, ToolCommand, UsersDump, private_file
from prefect_dbbackup.blocks.users_sql import (
    MySQLAccount,
    backtick,
    mysql_script,
    mysql_text,
)
from pydantic import Field, PrivateAttr

log = logging.getLogger("dbbackup")

ACCOUNT_GONE = (1133, 1141, 1396)  # no such user / grant: dropped while we listed
MISSING_OBJECT = (1146, 1054, 1305)  # no such table / column / routine
NO_BACKSLASH_ESCAPES = "CONCAT(@@sql_mode, ',NO_BACKSLASH_ESCAPES')"
HISTORY_SINCE = (10, 11)  # mariadb-dump --dump-history, system_versioning_insert_history
LOGIN_REJECTED = (1045, 1698, 1251)  # bad password, unix_socket mismatch, auth plugin
# the login was accepted, a privilege is missing: on a database, a table or column,
# a server-wide one (RELOAD, PROCESS, ...), a routine
PRIVILEGE_MISSING = (1044, 1142, 1143, 1227, 1370)
# granting what the login holds without GRANT OPTION, creating a user through GRANT
GRANT_REFUSED = (1410,)


def version_tuple(text: str, client: bool = False) -> tuple[int, int]:
    """(major, minor) of a server version, or of a client's `--version` line."""
    patterns = [r"Distrib (\d+)\.(\d+)", r"Ver (\d+)\.(\d+)"] if client else [r"(\d+)\.(\d+)"]
    for pattern in patterns:
        match = re.search(pattern, text)
        if match:
            return int(match.group(1)), int(match.group(2))
    return (0, 0)


def option_value(value: str) -> str:
    """Quote a value for a MySQL option file."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


class MySQLServer(DatabaseServer):
    """A MySQL or MariaDB server.

    Example:
        ```python
        from prefect_dbbackup import MySQLServer, backup_server

        server = MySQLServer.load("BLOCK_NAME")
        print(server.list_databases())
        backup_server(server, databases=["shop"])
        ```
    """

    _block_type_name = "MySQL Server"
    _documentation_url = "https://mariadb.com/kb/en/mariadb-dump/"
    _block_type_slug = "mysql-server"
    _description = "A MySQL or MariaDB server to back up; credentials stay in this block."

    engine: ClassVar[Engine] = MYSQL

    port: Port = Field(default=3306)
    user: str = Field(default="root", description="Login used for dumps and restores.")
    zstd_level: int = Field(
        default=1,
        ge=1,
        le=19,
        description="zstd level of the dumps: 1 by default, because mariadb-dump already takes a "
        "whole core and SQL text at level 1 keeps pace with it (docs/performance.md).",
    )
    account_exclude: list[str] = Field(
        default_factory=lambda: list(MYSQL.system_accounts),
        description="Glob patterns of users/roles to skip (default: the server's own accounts).",
    )
    _history_plans: dict[str, tuple[bool, str | None]] = PrivateAttr(default_factory=dict)

    def _url(self, database: str | None) -> sa.URL:
        query = {"charset": "utf8mb4", "connect_timeout": str(self.connect_timeout)}
        socket = self.host.startswith("/")
        if socket:
            query["unix_socket"] = self.host
        return sa.URL.create(
            "mysql+pymysql",
            username=self.user,
            password=self.secret(),
            host="localhost" if socket else self.host,
            port=None if socket else self.port,
            database=database,
            query=query,
        )

    def _classify(self, exc: Exception) -> DbBackupError:
        text = self._error_text(exc)
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
        where = self.describe()
        if code in LOGIN_REJECTED:
            return AuthError(f"MySQL at {where} rejected the login: {text}")
        if code in PRIVILEGE_MISSING:
            return PermissionDenied(
                f"MySQL at {where}: the login {self.user!r} lacks a privilege: {text}. "
                f"Grant it to {self.user!r} (the error names it), then run again"
            )
        if code == 1049:
            return DatabaseNotFound(f"MySQL at {where}: {text}")
        if code in (2002, 2003, 2005, 2006, 2013):
            return ConnectionFailed(f"cannot connect to MySQL at {where}: {text}")
        return DbBackupError(f"MySQL at {where}: {text}")

    def _all_database_names(self, conn: sa.Connection) -> list[str]:
        return sorted(r[0] for r in conn.execute(sa.text("SHOW DATABASES")))

    def _table_refs(self, conn: sa.Connection, database: str) -> list[tuple[str, str]]:
        # system-versioned tables count with their history (--dump-history dumps it);
        # sequences are not tables
        rows = conn.execute(
            sa.text(
                "SELECT TABLE_NAME, TABLE_TYPE FROM information_schema.TABLES "
                "WHERE TABLE_SCHEMA = :db AND TABLE_TYPE IN ('BASE TABLE', 'SYSTEM VERSIONED') "
                "ORDER BY TABLE_NAME"
            ),
            {"db": database},
        )
        history = {"SYSTEM VERSIONED": " FOR SYSTEM_TIME ALL"}
        return [(name, self.quote(name) + history.get(kind, "")) for name, kind in rows]

    def database_options(self, conn: sa.Connection, database: str) -> dict[str, str]:
        row = conn.execute(
            sa.text(
                "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME "
                "FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = :n"
            ),
            {"n": database},
        ).one_or_none()
        if row is None:
            raise DatabaseNotFound(f"no database {database!r} on {self.describe()}")
        return {"character_set": row[0], "collation": row[1]}

    def database_properties(self, conn: sa.Connection, database: str) -> DatabaseProperties | None:
        """The database's COMMENT (MariaDB 10.5+), which a dump without --databases lacks."""
        if not self._has_schema_comments():
            return None
        comment = conn.execute(
            sa.text(
                "SELECT SCHEMA_COMMENT FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = :n"
            ),
            {"n": database},
        ).scalar_one_or_none()
        return DatabaseProperties(comment=comment) if comment else None

    def apply_database_properties(self, database: str, properties: DatabaseProperties) -> list[str]:
        """Set the recorded COMMENT on database (under its new name). The literal is written
        for a session with NO_BACKSLASH_ESCAPES, where only `'` is special (doubled): quotes,
        backslashes and newlines stay text whatever the server's sql_mode."""
        if not properties.comment:
            return []
        if not self._has_schema_comments():
            return [f"the database comment: {self.server_version()} keeps no database comments"]
        literal = "'" + properties.comment.replace("'", "''") + "'"
        with self.connect() as conn:
            self.run_sql(conn, f"SET SESSION sql_mode = {NO_BACKSLASH_ESCAPES}")
            self.run_sql(conn, f"ALTER DATABASE {self.quote(database)} COMMENT {literal}")
        return []

    def quote(self, name: str) -> str:
        return backtick(name)

    def create_database(self, database: str, options: dict[str, str]) -> None:
        with self.connect() as conn:
            sql = f"CREATE DATABASE {self.quote(database)}"
            options = self.checked_create_options(options)
            for key, clause in (("character_set", "CHARACTER SET"), ("collation", "COLLATE")):
                if options.get(key):
                    sql += f" {clause} {options[key]}"
            self.run_sql(conn, sql)

    def drop_database(self, database: str) -> None:
        with self.connect() as conn:
            self.run_sql(conn, f"DROP DATABASE IF EXISTS {self.quote(database)}")

    def users_script(self, workdir: Path) -> UsersDump:
        """SHOW CREATE USER (password hash and plugin) and SHOW GRANTS of every selected
        account and role, read as bytes so that binary hashes survive (as hex literals)."""
        try:
            accounts = self._read_accounts(self.account_selected)
        except pymysql.MySQLError as exc:
            error = self._classify(exc)
            if isinstance(error, PermissionDenied):
                raise PermissionDenied(
                    f"MySQL at {self.describe()}: the login {self.user!r} may not read the "
                    f"accounts ({self._error_text(exc)}); grant it SELECT on mysql.* or set "
                    "backup_users: false on the block"
                ) from None
            raise error from None
        client = f"PyMySQL {pymysql.__version__}"
        return UsersDump(mysql_script(accounts), "pymysql", client, ["SHOW CREATE USER"])

    def account_statements(self) -> set[str]:
        """Every account of this server as users_script writes it (all of them, whatever
        the block selects): a replayed statement found here is already in force."""
        try:
            accounts = self._read_accounts(lambda _: True)
        except pymysql.MySQLError as exc:
            error = self._classify(exc)
            if not isinstance(error, PermissionDenied):
                raise error from None
            log.warning("%s; every statement is replayed", error)
            return set()
        return set(self.engine.users_sql.split_statements(mysql_script(accounts)))

    def _read_accounts(self, selected: Callable[[str], bool]) -> list[MySQLAccount]:
        """The selected accounts' SHOW output; raises pymysql's error as it is."""
        role_column = "is_role = 'Y'" if self._is_mariadb() else "FALSE"
        accounts = []
        with self.connect() as conn:
            cursor = conn.connection.cursor()  # DBAPI: the text is sent as it is
            cursor.execute(f"SELECT User, Host, {role_column} FROM mysql.user ORDER BY 1, 2")
            listed = [(user, host, bool(role)) for user, host, role in cursor.fetchall()]
            cursor.execute("SET SESSION character_set_results = binary")
            for user, host, is_role in listed:
                if selected(user):
                    account = self._account(cursor, user, host, is_role)
                    accounts += [account] if account else []
        return accounts

    @staticmethod
    def _account(
        cursor: pymysql.cursors.Cursor, user: str, host: str, is_role: bool
    ) -> MySQLAccount | None:
        """One account's SHOW output; None if it was dropped since it was listed."""
        name = backtick(user) + ("" if is_role else "@" + backtick(host))

        def show(statement: str) -> list[str]:
            cursor.execute(statement)
            return [mysql_text(row[0]) for row in cursor.fetchall()]

        try:
            create = None if is_role else show(f"SHOW CREATE USER {name}")[0]
            return MySQLAccount(user, host, is_role, create, show(f"SHOW GRANTS FOR {name}"))
        except pymysql.MySQLError as exc:
            if exc.args and exc.args[0] in ACCOUNT_GONE:
                return None
            raise

    def _tolerated(self, statement: str, exc: Exception) -> str | None:
        code = exc.args[0] if exc.args else None
        if statement.upper().startswith("GRANT") and code in MISSING_OBJECT:
            return "the table, column or routine it grants on does not exist (yet)"
        return None

    def _denied(self, statement: str, exc: Exception) -> str | None:
        # on an open session an access-denied error is about this statement, not the login
        code = exc.args[0] if exc.args else None
        if code in LOGIN_REJECTED + PRIVILEGE_MISSING + GRANT_REFUSED:
            return f"{self.user!r} may not run it here: {self._error_text(exc)}"
        return None

    def _is_mariadb(self) -> bool:
        return "mariadb" in self.server_version().lower()

    def _has_schema_comments(self) -> bool:
        """Whether databases have a COMMENT (MariaDB 10.5+)."""
        return self._is_mariadb() and version_tuple(self.server_version()) >= (10, 5)

    def _inserts_history(self) -> bool:
        """Whether this server takes row_start/row_end on insert (MariaDB 10.11+:
        system_versioning_insert_history), so history can be dumped and restored."""
        return self._is_mariadb() and version_tuple(self.server_version()) >= HISTORY_SINCE

    def dump_row_counter(self, tables: list[str]) -> DumpRowCounter:
        """Rows counted in the dump's own INSERT statements (its snapshot, whatever runs)."""
        return DumpRowCounter(tables)

    def dump_options_for(self, database: str) -> list[str]:
        """The engine's dump options, --dump-history when the history can be dumped
        (_history_plan), and with pitr --master-data=2: the snapshot's binlog position as
        comments (blocks/binlog.py; no global read lock on MariaDB)."""
        history, _ = self._history_plan(database)
        return [
            *self.engine.dump_options,
            *(["--dump-history"] if history else []),
            *(["--master-data=2"] if self.pitr else []),
        ]

    def check_pitr(self) -> None:
        """With pitr on: ConfigError unless the server is MariaDB with log_bin ON and
        binlog_format ROW, and reports its consistent-snapshot binlog position (what
        mariadb-dump reads without a global read lock). Never changes a setting."""
        if not self.pitr:
            return
        if not self._is_mariadb():
            raise ConfigError(
                f"pitr: true on {self.describe()} ({self.server_version()}): point-in-time "
                "recovery is available for MariaDB servers only so far (docs/pitr.md); set "
                "pitr: false"
            )
        with self.connect() as conn:
            log_bin, binlog_format = self.run_sql(conn, "SELECT @@log_bin, @@binlog_format").one()
            status = dict(self.run_sql(conn, "SHOW STATUS LIKE 'Binlog_snapshot_%'").all())
        problems = []
        if not log_bin:
            problems.append("log_bin is OFF: set log_bin = <base name, e.g. mariadb-bin>")
        if str(binlog_format).upper() != "ROW":
            problems.append(f"binlog_format is {binlog_format}: set binlog_format = ROW")
        if log_bin and not status.get("Binlog_snapshot_file"):
            problems.append("the server reports no Binlog_snapshot_file: use MariaDB 10.x or newer")
        if problems:
            raise ConfigError(
                f"pitr: true, but {self.describe()} cannot record binlog positions: "
                f"{'; '.join(problems)}. Change it in the [mariadbd] section of the server's "
                "configuration and restart the server (dbbackup never changes server "
                "settings; docs/pitr.md)"
            )

    def log_files(self) -> list[tuple[str, int]]:
        """SHOW BINARY LOGS: (file, bytes written so far), oldest first; the last one is
        the file the server writes now."""
        self.check_pitr()
        try:
            with self.connect() as conn:
                rows = self.run_sql(conn, "SHOW BINARY LOGS").all()
        except PermissionDenied:
            raise PermissionDenied(
                f"MySQL at {self.describe()}: the login {self.user!r} may not list the binary "
                f"logs: grant it BINLOG MONITOR (MariaDB 10.5+; REPLICATION CLIENT before), "
                f"and REPLICATION SLAVE for the archive runs to read them (docs/pitr.md)"
            ) from None
        try:
            return [(plain_file_name(name), int(size)) for name, size, *_ in rows]
        except ValueError as exc:
            raise IntegrityError(f"MySQL at {self.describe()}: SHOW BINARY LOGS: {exc}") from None

    @contextlib.contextmanager
    def open_log(self, file: str, start: int, listed: int, workdir: Path) -> Iterator[BinaryIO]:
        """mariadb-binlog's output from start to the file's current end (_log_fetch_command):
        the binlog's own bytes, cut out by log_piece_filter."""
        with (
            self._log_fetch_command(file, start, workdir) as cmd,
            cmd.process(self.dump_timeout, stdout=True) as proc,
        ):
            assert proc.stdout is not None
            yield proc.stdout

    def log_client(self) -> tuple[str, str]:
        """mariadb-binlog (mysqlbinlog) and its version."""
        client = self.tool("mariadb-binlog", "mysqlbinlog")
        return os.path.basename(client), self.client_version(client)

    @contextlib.contextmanager
    def _log_fetch_command(self, file: str, start: int, workdir: Path) -> Iterator[ToolCommand]:
        """mariadb-binlog reading `file` from `start` over the replication protocol, raw.
        Raw output goes to a file named like the binlog in --result-file's directory: that
        name is a link to the client's own stdout in a private directory, so the bytes reach
        dbbackup through a pipe and never a file."""
        client = self.tool("mariadb-binlog", "mysqlbinlog")
        outlet = Path(tempfile.mkdtemp(prefix="binlog-", dir=workdir))
        try:
            (outlet / plain_file_name(file)).symlink_to("/dev/stdout")
            with self._defaults_file(workdir) as defaults:
                argv = [
                    client,
                    defaults,
                    "--read-from-remote-server",
                    "--raw",
                    f"--start-position={start}",
                    f"--result-file={outlet}/",
                    "--",
                    file,
                ]
                yield ToolCommand(argv, {}, self.secrets())
        finally:
            shutil.rmtree(outlet, ignore_errors=True)

    def log_piece_filter(self, file: str, start: int) -> PieceFilter:
        """Cuts mariadb-binlog's raw output to the file's own bytes (binlog_pieces.py)."""
        return PieceFilter(file, start)

    def dump_position_reader(self, what: str) -> BinlogPositionReader | None:
        """With pitr, the reader of the binlog position mariadb-dump writes (--master-data=2)."""
        return BinlogPositionReader(what) if self.pitr else None

    def _history_plan(self, database: str) -> tuple[bool, str | None]:
        """(whether to dump with --dump-history, why history is lost if it is), decided once
        per database and block instance: the dump and its manifest tell the same.

        It needs MariaDB and mariadb-dump 10.11+: a history dump of an older server could not
        be restored into the server it came from. mariadb-dump refuses the whole dump when a
        table keeps transaction-precise history (row start/end as BIGINT transaction ids).
        """
        if database not in self._history_plans:
            self._history_plans[database] = self._plan_history(database)
        return self._history_plans[database]

    def _plan_history(self, database: str) -> tuple[bool, str | None]:
        if not self._is_mariadb():
            return False, None  # MySQL has no system versioning
        with self.connect() as conn:
            versioned = conn.execute(
                sa.text(
                    "SELECT t.TABLE_NAME, c.DATA_TYPE FROM information_schema.TABLES t "
                    "LEFT JOIN information_schema.COLUMNS c ON c.TABLE_SCHEMA = t.TABLE_SCHEMA "
                    "AND c.TABLE_NAME = t.TABLE_NAME AND c.GENERATION_EXPRESSION = 'ROW START' "
                    "WHERE t.TABLE_SCHEMA = :db AND t.TABLE_TYPE = 'SYSTEM VERSIONED'"
                ),
                {"db": database},
            ).all()
        client = version_tuple(self.client_version(self.dump_client()), client=True)
        trx_precise = sorted(name for name, kind in versioned if kind == "bigint")
        if not self._inserts_history() or client < HISTORY_SINCE:
            lost = "that needs MariaDB and mariadb-dump 10.11 or newer"
            return False, lost if versioned else None
        if trx_precise:
            return False, f"{', '.join(trx_precise)} keep transaction-precise history"
        return True, None

    def dump_client(self) -> str:
        server = self.server_version()
        mariadb = "mariadb" in server.lower()
        names = ("mariadb-dump", "mysqldump") if mariadb else ("mysqldump", "mariadb-dump")
        path = self.tool(*names)
        client = self.client_version(path)
        client_mariadb = "mariadb" in client.lower()
        if client_mariadb != mariadb:
            log.warning(
                "%s (%s) dumps a %s server: install the server's own client tools if the "
                "dump or restore fails",
                path,
                client,
                "MariaDB" if mariadb else "MySQL",
            )
        elif version_tuple(client, client=True) < version_tuple(server):
            raise ConfigError(
                f"{path} ({client}) is older than the server at {self.describe()} ({server}): "
                "install a client at least as new and set bin_dir on the block"
            )
        return path

    def restore_rewrite(self, source: str, target: str) -> tuple[bytes, bytes] | None:
        """Retarget the dump's `ALTER DATABASE <source> CHARACTER SET` lines.

        mariadb-dump/mysqldump write them around routines created under another
        database collation; left alone they would alter (or fail on) the source.
        """
        if source == target:
            return None

        def statement(name: str) -> bytes:
            quoted = "`" + name.replace("`", "``") + "`"
            return f"\nALTER DATABASE {quoted} CHARACTER SET ".encode()

        return statement(source), statement(target)

    @contextlib.contextmanager
    def _defaults_file(self, workdir: Path) -> Iterator[str]:
        lines = ["[client]", f"user={option_value(self.user)}"]
        if self.host.startswith("/"):
            lines += ["host=localhost", f"socket={option_value(self.host)}"]
        else:
            lines += [f"host={option_value(self.host)}", f"port={self.port}", "protocol=TCP"]
        if self.secret() is not None:
            lines.append(f"password={option_value(self.secret())}")
        with private_file(workdir, "my.cnf", "\n".join(lines) + "\n") as path:
            yield f"--defaults-extra-file={path}"

    @contextlib.contextmanager
    def dump_command(
        self, database: str, workdir: Path, snapshot: str | None = None
    ) -> Iterator[ToolCommand]:
        # mariadb-dump takes its own snapshot (--single-transaction): none can be shared
        client = self.dump_client()
        options = self.dump_options_for(database)
        _, gap = self._history_plan(database)
        if gap:
            log.warning(
                "the history of the system-versioned tables of %r is not backed up, only "
                "their current rows: %s",
                database,
                gap,
            )
        trailer = events_script(self._events(database))  # see blocks/mysql_events.py
        with self._defaults_file(workdir) as defaults:
            # no --databases: the dump has no CREATE DATABASE/USE and restores under any name
            argv = [client, defaults, *options, "--", database]
            yield ToolCommand(argv, {}, self.secrets(), trailer)

    def _events(self, database: str) -> list[ShownEvent]:
        """SHOW CREATE EVENT of every event of database, the statement as stored bytes."""
        with self.connect() as conn:
            cursor = conn.connection.cursor()  # DBAPI: the text is sent as it is
            try:
                cursor.execute(
                    "SELECT EVENT_NAME FROM information_schema.EVENTS WHERE EVENT_SCHEMA = %s "
                    "ORDER BY EVENT_NAME",
                    (database,),
                )
                names = [name for (name,) in cursor.fetchall()]
                cursor.execute("SET SESSION character_set_results = binary")
                events = []
                for name in names:
                    cursor.execute(f"SHOW CREATE EVENT {self.quote(database)}.{self.quote(name)}")
                    _, mode, zone, create, client, collation, _ = cursor.fetchone()
                    text = [v.decode() for v in (mode, zone, client, collation)]
                    events.append(ShownEvent(name, text[0], text[1], create, *text[2:]))
            except pymysql.MySQLError as exc:
                raise self._classify(exc) from None
        return events

    @contextlib.contextmanager
    def restore_command(
        self, database: str, workdir: Path, archive: Path | None = None, jobs: int = 1
    ) -> Iterator[ToolCommand]:
        if archive is not None:
            raise ConfigError("MySQL/MariaDB dumps are restored from a stream, not an archive")
        client = (
            self.tool("mariadb", "mysql") if self._is_mariadb() else self.tool("mysql", "mariadb")
        )
        with self._defaults_file(workdir) as defaults:
            # --comments keeps comments inside routine, trigger and event bodies
            argv = [client, defaults, "--binary-mode", "--comments", f"--database={database}"]
            if self._inserts_history():
                # row_start/row_end of history rows are inserted as they were dumped
                # (the dump sets it too, inside a /*M!101100 */ comment)
                argv.insert(2, "--init-command=SET SESSION system_versioning_insert_history=1")
            yield ToolCommand(argv, {}, self.secrets())

    def replay_binlog(
        self,
        files: Iterable[BinlogFile],
        *,
        database: str,
        target: str,
        start_position: BinlogPosition,
        stop_time: datetime,
        workdir: Path,
    ) -> ReplayResult:
        """Replay database's events from start_position (earlier files are skipped) up to
        and including stop_time's second into target (docs/pitr.md, "Replaying the binlog to
        a time"). files: (name, opener of its bytes) in binlog order."""
        if stop_time.tzinfo is None:
            raise ConfigError(f"stop time {stop_time} has no time zone: give one (e.g. Z)")
        reader = reader_argv(self.tool("mariadb-binlog", "mysqlbinlog"), database, target)
        scan = BinlogScan(database, start_position, stop_time, into_other_name=target != database)
        with self.restore_command(target, workdir) as client:
            return replay(files, scan, reader, client, self.dump_timeout)
