"""What PostgreSQL and MySQL/MariaDB server blocks share: discovery, DDL, credentials files."""

from __future__ import annotations

import contextlib
import contextvars
import fnmatch
import functools
import hashlib
import os
import secrets
import shutil
import subprocess
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, ClassVar, Protocol

import sqlalchemy as sa
from prefect.blocks.core import Block
from prefect_dbbackup.blocks.binlog import BinlogPosition
from prefect_dbbackup.blocks.binlog_events import ReplayResult
from prefect_dbbackup.blocks.binlog_pieces import PieceSummary
from prefect_dbbackup.blocks.bounds import MAX_CONNECT_SECONDS, MAX_DUMP_SECONDS
from prefect_dbbackup.blocks.engines import Engine
from prefect_dbbackup.blocks.errors import ConfigError, DatabaseNotFound, DbBackupError, redact
from prefect_dbbackup.blocks.process import ToolProcess, child_env
from prefect_dbbackup.blocks.properties import DatabaseProperties
from prefect_dbbackup.blocks.retention import RetentionPolicy
from prefect_dbbackup.blocks.schema_cache import CachedSchema
from pydantic import Field, PrivateAttr, SecretStr

STAGING_PREFIX = "dbbackup_staging_"
SCRATCH_PREFIX = "dbbackup_verify_"
# databases dbbackup creates for itself: never discovered, never backed up
INTERNAL_PREFIXES = (STAGING_PREFIX, SCRATCH_PREFIX)


def staging_prefix(target: str) -> str:
    """How the name of every staging database of a restore into target starts: the
    prefix, then 8 hex digits of the target's name (its sha256), so which target a
    staging database was for can be told from its name."""
    return f"{STAGING_PREFIX}{hashlib.sha256(target.encode()).hexdigest()[:8]}_"


def staging_name(target: str) -> str:
    """A new staging database name for a restore into target: staging_prefix(target) and
    8 random hex digits (34 characters; `_old` appended stays within both servers' limit)."""
    return staging_prefix(target) + secrets.token_hex(4)


@dataclass
class ToolCommand:
    """A client invocation: argv and environment hold no secret, only file paths."""

    argv: list[str]
    env: dict[str, str]  # only what dbbackup sets: the rest comes from process.child_env
    secrets: list[str] = field(default_factory=list)
    trailer: bytes = b""  # appended to the tool's output (what the tool itself cannot dump)

    def process(self, timeout: float, *, stdin: bool = False, stdout: bool = False) -> ToolProcess:
        """The client, to be entered as a context (its secrets redacted from its errors)."""
        return ToolProcess(
            self.argv,
            env=self.env,
            timeout=timeout,
            stdin=stdin,
            stdout=stdout,
            secrets=self.secrets,
        )


@dataclass
class DumpSnapshot:
    """What a dump contains, recorded just before it (PostgreSQL: in the dump's own snapshot)."""

    tables: list[str]
    row_counts: dict[str, int] | None = None
    snapshot_id: str | None = None
    options: dict[str, str] = field(default_factory=dict)  # see database_options
    properties: DatabaseProperties | None = None  # see database_properties


@dataclass(frozen=True)
class Skip:
    """Why a globals statement was not applied on replay; denied: the login may not run it."""

    reason: str
    denied: bool = False


@dataclass
class UsersDump:
    """A server's users/roles and grants as a SQL script, and how it was taken."""

    script: str
    client: str
    client_version: str
    options: list[str]
    note: str | None = None  # e.g. passwords left out because the login may not read them


@contextlib.contextmanager
def private_file(directory: Path, name: str, content: str) -> Iterator[Path]:
    """Write a 0600 file with a unique name (for a password) and remove it afterwards."""
    fd, raw_path = tempfile.mkstemp(prefix=f"{name}-", dir=directory)
    path = Path(raw_path)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(content)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@functools.lru_cache(maxsize=64)
def _version_line(path: str, mtime_ns: int) -> str:
    """`path --version` (Debian's clients are Perl wrappers: ~0.1 s a call)."""
    return subprocess.run(
        [path, "--version"], capture_output=True, text=True, check=False, env=child_env()
    ).stdout.strip()


# the database the next connection of a shared engine opens (None: the URL's own)
_CONNECT_TO: contextvars.ContextVar[str | None] = contextvars.ContextVar("connect_to", default=None)


@functools.lru_cache(maxsize=16)
def _shared_engine(url: sa.URL) -> sa.Engine:
    """One engine per login (URL without the database a connection picks): the dialect
    is set up once, not on every connection. NullPool: every connection is closed when
    released, so a run over 1,000 databases never holds more than it uses."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    probe = "dbbackup-probe-name"
    _, params = engine.dialect.create_connect_args(url.set(database=probe))
    param = next(k for k, v in params.items() if v == probe)  # psycopg: dbname; pymysql: database

    @sa.event.listens_for(engine, "do_connect")
    def _pick_database(dialect, record, cargs, cparams) -> None:  # noqa: ANN001
        if (database := _CONNECT_TO.get()) is not None:
            cparams[param] = database

    return engine


class RowCounter(Protocol):
    """Counts the rows of each table in a dump stream as it passes by."""

    def feed(self, data: bytes | memoryview) -> None: ...

    def finish(self) -> dict[str, int] | None: ...


class PositionReader(Protocol):
    """Reads the log position a dump client writes into its output, as it passes by."""

    def feed(self, data: bytes | memoryview) -> None: ...

    def finish(self) -> BinlogPosition: ...


class PieceReader(Protocol):
    """Reads a log fetch's output (blocks/binlog_pieces.py's PieceFilter)."""

    def feed(self, data: bytes | memoryview) -> bytes: ...

    def finish(self) -> PieceSummary: ...


class DatabaseServer(CachedSchema, Block, ABC):
    """A database server to back up. Subclasses know one engine; its facts are in
    `engine` (blocks/engines.py), its behaviour in these methods.

    An engine must implement (abstract): _url, _classify, _all_database_names,
    _table_refs, quote, database_options, create_database, drop_database,
    dump_client, dump_command, restore_command, users_script, _tolerated.

    It may override (defaults suit an engine without the feature): check_clients,
    check_pitr, log_files, open_log, log_piece_filter, log_client, log_archived, log_held,
    base_backup_command, base_backup_client, replay_binlog,
    dump_position_reader,
    dump_options_for, dump_snapshot, dump_row_counter, table_row_counts,
    database_properties, apply_database_properties, restore_rewrite, swap_database
    (required when engine.supports_rename), account_statements, _denied; for block
    settings of its own, list_databases and tool. The rest is shared.
    """

    engine: ClassVar[Engine]  # every fact about the engine (blocks/engines.py)

    def checked_create_options(self, options: dict[str, str]) -> dict[str, str]:
        """The manifest's create options, checked before they are inlined in CREATE DATABASE."""
        try:
            self.engine.check_create_options(options)
        except ValueError as exc:
            raise ConfigError(f"unexpected database option in manifest: {exc}") from None
        return options

    host: str = Field(default="127.0.0.1", description="Host name, IP, or unix socket directory.")
    user: str = Field(description="Login used for dumps and restores.")
    password: SecretStr | None = Field(default=None, description="Password of the login.")
    include: list[str] = Field(
        default_factory=lambda: ["*"], description="Glob patterns of databases to back up."
    )
    exclude: list[str] = Field(
        default_factory=list, description="Glob patterns of databases to skip."
    )
    bin_dir: str | None = Field(
        default=None,
        description="Directory of the client tools; default: PostgreSQL the installed client "
        "closest to the server's version, at least as new (PATH and the usual install "
        "locations), MySQL/MariaDB the first found on PATH.",
    )
    backup_users: bool = Field(
        default=True, description="Also back up users/roles and grants (the _globals series)."
    )
    account_include: list[str] = Field(
        default_factory=lambda: ["*"], description="Glob patterns of users/roles to back up."
    )
    account_exclude: list[str] = Field(
        default_factory=list, description="Glob patterns of users/roles to skip."
    )
    _server_version: str | None = PrivateAttr(default=None)
    connect_timeout: int = Field(
        default=10,
        ge=1,
        le=MAX_CONNECT_SECONDS,
        description="Seconds to wait for a connection (1-3600).",
    )
    dump_timeout: int = Field(
        default=6 * 3600,
        ge=1,
        le=MAX_DUMP_SECONDS,
        description="Seconds after which a dump or restore is killed (at most 30 days).",
    )
    zstd_level: int = Field(
        default=3,
        ge=1,
        le=19,
        description="zstd level of this server's dumps (a flow's zstd_level overrides it).",
    )
    retention: RetentionPolicy | None = Field(
        default=None,
        description="GFS retention of this server's backups (keep_last/hourly/daily/weekly/"
        "monthly/yearly, timezone); empty keeps everything. A flow parameter overrides it.",
    )
    pitr: bool = Field(
        default=False,
        description="Point-in-time recovery (docs/pitr.md), after the server's settings were "
        "checked (never changed). MariaDB: every dump records its binlog position; "
        "PostgreSQL: base backups and a WAL archive. Not MySQL.",
    )

    # --- engine specifics -------------------------------------------------
    @abstractmethod
    def _url(self, database: str | None) -> sa.URL: ...

    @abstractmethod
    def _classify(self, exc: Exception) -> DbBackupError: ...

    @abstractmethod
    def _all_database_names(self, conn: sa.Connection) -> list[str]: ...

    @abstractmethod
    def _table_refs(self, conn: sa.Connection, database: str) -> list[tuple[str, str]]:
        """(name as the manifest records it, SQL reference) of each table a dump has data of."""

    @abstractmethod
    def users_script(self, workdir: Path) -> UsersDump:
        """Users/roles, memberships and server-wide grants as a replayable SQL script."""

    @abstractmethod
    def _tolerated(self, statement: str, exc: Exception) -> str | None:
        """Why a failed globals statement may be skipped on replay, or None: it is an error."""

    def _denied(self, statement: str, exc: Exception) -> str | None:
        """Why the login may not run a globals statement (a privilege it lacks), or None."""
        return None

    def account_statements(self) -> set[str]:
        """The statements the target's current accounts would be backed up as: replaying
        one of them changes nothing (default: none known, everything is replayed)."""
        return set()

    @abstractmethod
    def database_options(self, conn: sa.Connection, database: str) -> dict[str, str]:
        """Creation options (encoding, collation) to recreate the database with, read on
        conn (any database of the server); DatabaseNotFound if it does not exist."""

    @abstractmethod
    def create_database(self, database: str, options: dict[str, str]) -> None:
        """Create an empty database."""

    @abstractmethod
    def drop_database(self, database: str) -> None:
        """Drop a database if it exists."""

    @abstractmethod
    def dump_client(self) -> str:
        """Path of the dump tool after checking it suits the server."""

    def check_clients(self, backup_client: str | None = None) -> str | None:
        """Choose the client tools before anything runs, for this server and (restore) a
        backup written by the client backup_client (its version line, from the manifest);
        ConfigError when none suits. Returns a line saying which and why, or None."""
        return None

    @abstractmethod
    @contextlib.contextmanager
    def dump_command(
        self, database: str, workdir: Path, snapshot: str | None = None
    ) -> Iterator[ToolCommand]:
        """The dump invocation writing one database to stdout (in an exported snapshot)."""

    @abstractmethod
    @contextlib.contextmanager
    def restore_command(
        self, database: str, workdir: Path, archive: Path | None = None, jobs: int = 1
    ) -> Iterator[ToolCommand]:
        """The restore invocation: reading the dump on stdin, or from an archive file with jobs."""

    def check_pitr(self) -> None:
        """With pitr on, ConfigError naming each server setting that point-in-time recovery
        lacks and how to change it (default: the engine has no point-in-time recovery yet)."""
        if self.pitr:
            raise ConfigError(
                f"pitr: true on {self.describe()}: point-in-time recovery is not available for "
                f"{self.engine.name} servers yet (MariaDB only, docs/pitr.md); set pitr: false"
            )

    def log_files(self) -> list[tuple[str, int]]:
        """The server's transaction log files (name, bytes written so far), oldest first,
        for point-in-time archives (default: the engine has none yet)."""
        raise self._no_archives()

    def _no_archives(self) -> ConfigError:
        return ConfigError(
            f"{self.describe()}: this is not available for {self.engine.name} servers "
            "(point-in-time recovery: MariaDB dumps + binlog, PostgreSQL base backups + WAL; "
            "docs/pitr.md)"
        )

    def open_log(
        self, file: str, start: int, listed: int, workdir: Path
    ) -> contextlib.AbstractContextManager[BinaryIO]:
        """A reader of log file `file` from byte `start` to at least `listed` (its size when
        log_files listed it), as log_piece_filter reads it (default: none, see log_files)."""
        raise self._no_archives()

    def log_piece_filter(self, file: str, start: int) -> PieceReader:
        """What cuts open_log's output to the file's own bytes from start, checking it on
        the way (default: none, see log_files)."""
        raise self._no_archives()

    def log_client(self) -> tuple[str, str]:
        """(name, version) of what reads the log, for an archive run's manifest."""
        raise self._no_archives()

    def base_backup_command(self, workdir: Path) -> contextlib.AbstractContextManager[ToolCommand]:
        """The client that writes a physical base backup of the whole server to stdout, and
        reports its log start and end on stderr (default: none, see log_files)."""
        raise self._no_archives()

    def base_backup_client(self) -> tuple[str, str]:
        """(name, version) of base_backup_command's client."""
        raise self._no_archives()

    def log_held(self) -> tuple[int, str] | None:
        """(bytes, state) of the log the server holds back for the archive runs (None: the
        engine holds none back, or nothing is held yet)."""
        return None

    def log_archived(self, file: str, position: int) -> None:
        """Told once an archive run's manifest is stored: the log before byte position of
        file is safe (an engine that holds the log back for the archive may let it go now;
        default: nothing to do)."""

    def replay_binlog(
        self,
        files: Iterable[tuple[str, Callable[[], contextlib.AbstractContextManager[BinaryIO]]]],
        *,
        database: str,
        target: str,
        start_position: BinlogPosition,
        stop_time: datetime,
        workdir: Path,
    ) -> ReplayResult:
        """Replay database's logged changes from start_position up to stop_time into target
        (files: (name, opener of its bytes) in log order; default: none, see log_files)."""
        raise self._no_archives()

    def dump_position_reader(self, what: str) -> PositionReader | None:
        """A reader of the log position a dump's own output records (pitr), fed the
        client's output; None when dumps record none (default)."""
        return None

    def dump_row_counter(self, tables: list[str]) -> RowCounter | None:
        """A counter of the rows in this engine's dump stream, for engines whose dump takes
        a snapshot nobody can share (default None: counts come from dump_snapshot)."""
        return None

    def dump_options_for(self, database: str) -> list[str]:
        """The options a dump of database runs with (recorded in its manifest)."""
        return list(self.engine.dump_options)

    def swap_database(self, replacement: str, target: str) -> None:
        """Put replacement in target's place and drop the old target (engines that rename)."""
        raise NotImplementedError

    def database_properties(self, conn: sa.Connection, database: str) -> DatabaseProperties | None:
        """Properties of the database itself that its dump does not carry (None: none),
        read on conn."""
        return None

    def apply_database_properties(self, database: str, properties: DatabaseProperties) -> list[str]:
        """Give a restored database the recorded properties; returns what was skipped, and why."""
        return []

    def restore_rewrite(self, source: str, target: str) -> tuple[bytes, bytes] | None:
        """A (old, new) byte replacement that retargets a dump of source to target, if needed."""
        return None

    # --- shared -----------------------------------------------------------
    def secret(self) -> str | None:
        """The password, for writing credentials files only."""
        return self.password.get_secret_value() if self.password else None

    def secrets(self) -> list[str]:
        """What a client's error output must never show."""
        return [secret] if (secret := self.secret()) else []

    def server_clock(self) -> datetime:
        """The server's own clock now (UTC): the clock its log's event times come from."""
        with self.connect() as conn:
            seconds = conn.execute(sa.text(self.engine.clock_query)).scalar_one()
        return datetime.fromtimestamp(float(seconds), UTC)

    def server_version(self) -> str:
        """The server's version string, asked once per block instance."""
        if self._server_version is None:
            with self.connect() as conn:
                self._server_version = conn.execute(sa.text(self.engine.version_query)).scalar_one()
        return self._server_version

    def current_login(self) -> str:
        """The account this block logs in as (a replay leaves it alone)."""
        with self.connect() as conn:
            return conn.execute(sa.text(self.engine.login_query)).scalar_one()

    def account_selected(self, name: str) -> bool:
        """Whether a user/role name matches account_include and not account_exclude."""
        return any(fnmatch.fnmatchcase(name, p) for p in self.account_include) and not any(
            fnmatch.fnmatchcase(name, p) for p in self.account_exclude
        )

    @contextlib.contextmanager
    def replay_session(self) -> Iterator[Callable[[str], Skip | None]]:
        """Run globals statements one by one on one connection. Each call returns None
        when the statement was applied, or why it was skipped (_tolerated, _denied)."""
        with self.connect() as conn:
            dbapi = conn.connection  # no bind-parameter parsing of ':' or '%' in the text
            # only what the server or its driver reports is classified: anything else is a
            # bug in dbbackup, raised as it is (never retried as a lost connection)
            server_error = conn.dialect.loaded_dbapi.Error

            def run(statement: str) -> str | None:
                cursor = dbapi.cursor()
                try:
                    cursor.execute(statement)
                except server_error as exc:
                    if (reason := self._tolerated(statement, exc)) is not None:
                        return Skip(reason)
                    if (reason := self._denied(statement, exc)) is not None:
                        return Skip(reason, denied=True)
                    raise self._classify(exc) from None
                finally:
                    cursor.close()
                return None

            yield run

    def describe(self) -> str:
        """user@host:port, never the password."""
        return f"{self.user}@{self.host}:{getattr(self, 'port', '')}"

    @contextlib.contextmanager
    def connect(
        self, database: str | None = None, isolation_level: str = "AUTOCOMMIT"
    ) -> Iterator[sa.Connection]:
        """An autocommit (or other isolation level) connection; errors become specific, redacted."""
        engine = _shared_engine(self._url(None))
        try:
            token = _CONNECT_TO.set(database)
            try:
                conn = engine.connect()
            finally:
                _CONNECT_TO.reset(token)
            with conn:
                yield conn.execution_options(isolation_level=isolation_level)
        except sa.exc.DBAPIError as exc:
            raise self._classify(exc.orig or exc) from None

    def _error_text(self, exc: Exception) -> str:
        text = str(exc).strip().splitlines()
        return redact(text[0] if text else type(exc).__name__, [self.secret()])

    @abstractmethod
    def quote(self, name: str) -> str:
        """An identifier quoted for this engine, exactly: a `%` or `:` in it stays as it is.

        SQLAlchemy's identifier preparer doubles `%` for pyformat drivers; combined
        with SQL run without parameters, `ft_%` became `ft_%%`. Quote here and run
        the text with run_sql only.
        """

    @staticmethod
    def run_sql(conn: sa.Connection, sql: str) -> sa.CursorResult:
        """Run SQL text exactly as written: no bind parameters (`:name`), no paramstyle (`%`)."""
        return conn.execution_options(no_parameters=True).exec_driver_sql(sql)

    def list_databases(self) -> list[str]:
        """User databases matching include and not exclude; system databases never."""
        with self.connect() as conn:
            names = self._all_database_names(conn)
        return [
            n
            for n in names
            if n not in self.engine.system_databases
            and not n.startswith(INTERNAL_PREFIXES)
            and any(fnmatch.fnmatchcase(n, p) for p in self.include)
            and not any(fnmatch.fnmatchcase(n, p) for p in self.exclude)
        ]

    def databases_named(self, prefix: str) -> list[str]:
        """Every database whose name starts with prefix (e.g. verify's scratch databases)."""
        with self.connect() as conn:
            return [n for n in self._all_database_names(conn) if n.startswith(prefix)]

    @classmethod
    def _count_rows(cls, conn: sa.Connection, refs: list[tuple[str, str]]) -> dict[str, int]:
        return {
            name: cls.run_sql(conn, f"SELECT count(*) FROM {ref}").scalar_one()
            for name, ref in refs
        }

    def table_row_counts(self, database: str) -> dict[str, int]:
        """Exact row count of every table a dump has data of (one full scan per table)."""
        with self.connect(database) as conn:
            return self._count_rows(conn, self._table_refs(conn, database))

    @contextlib.contextmanager
    def dump_snapshot(
        self, database: str, gate: contextlib.AbstractContextManager | None = None
    ) -> Iterator[DumpSnapshot]:
        """Record the tables a dump is about to contain and the database's options and
        properties, on one connection; then hold `gate` (a concurrency slot) while the
        body dumps. PostgreSQL also exports its snapshot."""
        with self.connect(database) as conn:
            tables = [name for name, _ in self._table_refs(conn, database)]
            options = self.database_options(conn, database)
            properties = self.database_properties(conn, database)
        with gate or contextlib.nullcontext():
            yield DumpSnapshot(tables=tables, options=options, properties=properties)

    def database_exists(self, database: str) -> bool:
        """Whether the database exists (system ones included)."""
        with self.connect() as conn:
            return database in self._all_database_names(conn)

    def select_databases(self, requested: list[str] | None) -> list[str]:
        """The databases to back up: the requested ones (which must exist) or discovery.

        Discovery that finds nothing is an error: a backup run that silently backs
        up nothing would look healthy while protecting nothing.
        """
        if not requested:
            found = self.list_databases()
            if not found:
                raise ConfigError(
                    f"no database on {self.describe()} matches include={self.include} "
                    f"exclude={self.exclude} (system databases are always skipped): "
                    "nothing to back up; check the block's include/exclude"
                )
            return found
        with self.connect() as conn:
            existing = set(self._all_database_names(conn))
        missing = [d for d in requested if d not in existing]
        if missing:
            raise DatabaseNotFound(
                f"no database {', '.join(repr(m) for m in missing)} on {self.describe()}"
            )
        return list(dict.fromkeys(requested))

    def tool(self, *names: str) -> str:
        """Full path of the first client tool found (bin_dir first, then PATH)."""
        for name in names:
            if self.bin_dir:
                candidate = Path(self.bin_dir) / name
                if candidate.is_file() and os.access(candidate, os.X_OK):
                    return str(candidate)
            else:
                found = shutil.which(name)
                if found:
                    return found
        where = self.bin_dir or "PATH"
        raise ConfigError(f"none of {', '.join(names)} found in {where}: install the client tools")

    @staticmethod
    def client_version(path: str) -> str:
        """The version line a client tool prints, asked once per binary (until it changes)."""
        return _version_line(path, os.stat(path).st_mtime_ns)
