"""PostgreSQL server block: discovery over psycopg, dumps with pg_dump -Fc."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, ClassVar

import psycopg
import sqlalchemy as sa
from prefect_dbbackup.blocks import pg_clients, postgres_wal
from prefect_dbbackup.blocks.bounds import Port
from prefect_dbbackup.blocks.engines import POSTGRES, Engine
from prefect_dbbackup.blocks.errors import (
    AuthError,
    ConfigError,
    ConnectionFailed,
    DatabaseNotFound,
    DbBackupError,
    PermissionDenied,
    ToolFailed,
)
from prefect_dbbackup.blocks.postgres_properties import property_statements, read_properties
from prefect_dbbackup.blocks.process import ToolProcess
from prefect_dbbackup.blocks.properties import DatabaseProperties
from prefect_dbbackup.blocks.server import (
    DatabaseServer,
    DumpSnapshot,
    ToolCommand,
    UsersDump,
    private_file,
)
from prefect_dbbackup.blocks.wal import WalPieceFilter, WalReader, parse_segment
from psycopg import sql as pgsql
from pydantic import Field, PrivateAttr

log = logging.getLogger("dbbackup")

DUMP_APPLICATION = "dbbackup-dump-"  # application_name prefix of pg_dump's sessions
AUTH_MARKERS = (
    "password authentication failed",
    "authentication failed",
    "no password supplied",
    "pg_hba.conf",
)
# SQLSTATE classes of a statement the server refused, not of a failing server or
# connection: data exception (a bad value), access rule violation (missing role,
# privilege), object state (a setting that cannot be set per database), unsupported
REFUSED_STATEMENT = frozenset({"22", "42", "55", "0A"})

# Tables pg_dump writes data for: ordinary tables, which include the leaf partitions
# (a partitioned parent holds no rows itself), unlogged ones too; not temporary
# tables, views, materialized views (refreshed on restore), foreign tables, the
# catalogs, or tables that belong to an extension.
DUMPED_TABLES = """
SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS name
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND c.relpersistence <> 't'
  AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'
  AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                  AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1
"""


def conninfo_value(value: str) -> str:
    """Quote a libpq conninfo value."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def passfile_field(value: str) -> str:
    """Escape a field of a .pgpass line."""
    return value.replace("\\", "\\\\").replace(":", "\\:")


class PostgresServer(DatabaseServer):
    """A PostgreSQL server (any version pg_dump on this machine supports).

    Example:
        ```python
        from prefect_dbbackup import PostgresServer, backup_server

        server = PostgresServer.load("BLOCK_NAME")
        print(server.list_databases())
        backup_server(server, databases=["shop"])
        ```
    """

    _block_type_name = "Postgres Server"
    _documentation_url = "https://www.postgresql.org/docs/current/libpq-connect.html"
    _block_type_slug = "postgres-server"
    _description = "A PostgreSQL server to back up with pg_dump; credentials stay in this block."

    engine: ClassVar[Engine] = POSTGRES

    port: Port = Field(default=5432)
    user: str = Field(default="postgres", description="Login used for dumps and restores.")
    sslmode: str | None = Field(default=None, description="libpq sslmode (e.g. verify-full).")
    sslrootcert: str | None = Field(default=None, description="CA certificate file for TLS.")
    maintenance_database: str = Field(
        default="postgres", description="Database to connect to for discovery and CREATE DATABASE."
    )
    include_postgres_database: bool = Field(
        default=False, description="Also back up the 'postgres' database."
    )
    dump_tablespaces: bool = Field(
        default=False,
        description="Back up tablespaces with the roles (pg_dumpall --globals-only).",
    )
    count_rows: bool = Field(
        default=True,
        description="Count every table's rows in the dump's own snapshot (one full scan per "
        "table) so verify can require exact row counts; off: verify compares table lists only.",
    )
    pitr_slot: str = Field(
        default="dbbackup",
        pattern=r"^[a-z0-9_]{1,63}$",
        description="The physical replication slot that holds the WAL back for the archive "
        "runs (made on the first run; one per block: two blocks of one server need two).",
    )
    # (client directory, why it was chosen), see check_clients
    _client_choice: tuple[str, str | None] | None = PrivateAttr(default=None)

    def list_databases(self) -> list[str]:
        names = super().list_databases()
        if self.include_postgres_database and "postgres" not in names:
            with self.connect() as conn:
                if "postgres" in self._all_database_names(conn):
                    names.append("postgres")
        return names

    def _url(self, database: str | None) -> sa.URL:
        query = {
            k: v for k, v in (("sslmode", self.sslmode), ("sslrootcert", self.sslrootcert)) if v
        }
        return sa.URL.create(
            "postgresql+psycopg",
            username=self.user,
            password=self.secret(),
            host=self.host,
            port=self.port,
            database=database or self.maintenance_database,
            query={**query, "connect_timeout": str(self.connect_timeout)},
        )

    def _classify(self, exc: Exception) -> DbBackupError:
        text = self._error_text(exc)
        low = text.lower()
        where = self.describe()
        state = getattr(exc, "sqlstate", None) or ""
        auth = any(m in low for m in AUTH_MARKERS) or ("role" in low and "does not exist" in low)
        if state.startswith("28") or auth:
            return AuthError(f"PostgreSQL at {where} rejected the login: {text}")
        if state == "3D000" or ("database" in low and "does not exist" in low):
            return DatabaseNotFound(f"PostgreSQL at {where}: {text}")
        if state == "42501":  # insufficient_privilege: the login itself was accepted
            return PermissionDenied(
                f"PostgreSQL at {where}: the role {self.user!r} lacks a privilege: {text}. "
                f"Grant it to {self.user!r} (the error names it), then run again"
            )
        if state and not state.startswith("08"):
            # the server answered: a permission problem, an object in use, ...
            return DbBackupError(f"PostgreSQL at {where}: {text}")
        return ConnectionFailed(f"cannot connect to PostgreSQL at {where}: {text}")

    def _all_database_names(self, conn: sa.Connection) -> list[str]:
        rows = conn.execute(
            sa.text("SELECT datname FROM pg_database WHERE datallowconn ORDER BY datname")
        )
        return [r[0] for r in rows]

    def _table_refs(self, conn: sa.Connection, database: str) -> list[tuple[str, str]]:
        # quote_ident's output is both the recorded name and a safe SQL reference
        return [(name, name) for (name,) in conn.execute(sa.text(DUMPED_TABLES))]

    @contextlib.contextmanager
    def dump_snapshot(
        self, database: str, gate: contextlib.AbstractContextManager | None = None
    ) -> Iterator[DumpSnapshot]:
        """Export a snapshot and keep it open while pg_dump --snapshot runs.

        `gate` (a concurrency slot) is entered once the connection is open and the
        database's options are read, before the snapshot is taken: waiting for it
        holds no transaction. With count_rows, the rows are counted in that same
        snapshot on this connection while pg_dump runs (not before it), so counting
        adds little wall time; the counts are set on the snapshot record when the
        body ends.
        """
        with self.connect(database) as conn:
            options = self.database_options(conn, database)
            properties = self.database_properties(conn, database)
            with gate or contextlib.nullcontext():
                self.run_sql(conn, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                try:
                    snapshot = conn.execute(sa.text("SELECT pg_export_snapshot()")).scalar_one()
                    refs = self._table_refs(conn, database)
                    record = DumpSnapshot(
                        [name for name, _ in refs],
                        snapshot_id=snapshot,
                        options=options,
                        properties=properties,
                    )
                    if not self.count_rows:
                        yield record
                    else:
                        yield from self._counting(conn, refs, database, record)
                finally:
                    with contextlib.suppress(sa.exc.DBAPIError):  # pg_dump is done with it
                        self.run_sql(conn, "ROLLBACK")

    def _counting(
        self, conn: sa.Connection, refs: list[tuple[str, str]], database: str, record: DumpSnapshot
    ) -> Iterator[DumpSnapshot]:
        """Yield record while the rows are counted on conn, then set its row counts."""
        with ThreadPoolExecutor(1, thread_name_prefix="count-rows") as pool:
            counting = pool.submit(self._count_in_time, conn, refs, database)
            try:
                yield record
            except BaseException:
                with contextlib.suppress(Exception):  # stop counting for a failed dump
                    conn.connection.dbapi_connection.cancel()
                raise
            record.row_counts = counting.result()

    def _count_in_time(
        self, conn: sa.Connection, refs: list[tuple[str, str]], database: str
    ) -> dict[str, int]:
        """Row counts, each bounded by dump_timeout like the dump (a lock blocks count(*) too)."""
        conn.execute(sa.text(f"SET LOCAL statement_timeout = {int(self.dump_timeout) * 1000}"))
        try:
            return self._count_rows(conn, refs)
        except sa.exc.DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) != "57014":  # query_canceled
                raise
            raise ToolFailed(
                f"counting the rows of {database!r} exceeded the time limit of "
                f"{self.dump_timeout}s (dump_timeout): a table is locked or very large; set "
                "count_rows: false on the server block to dump without exact row counts"
            ) from None

    def table_row_counts(self, database: str) -> dict[str, int]:
        """Exact row counts under this session's own limits: a restored database's
        defaults (ALTER DATABASE ... SET statement_timeout, lock_timeout, search_path)
        must not stop or redirect verify's count."""
        with self.connect(database) as conn:
            conn.execute(
                sa.text(
                    "SELECT set_config('statement_timeout', :ms, false), "
                    "set_config('lock_timeout', '0', false), "
                    "set_config('search_path', 'pg_catalog', false)"
                ),
                {"ms": str(int(self.dump_timeout) * 1000)},
            )
            return self._count_rows(conn, self._table_refs(conn, database))

    def _server_major(self) -> int:
        return int(re.match(r"\d+", self.server_version()).group())

    def database_options(self, conn: sa.Connection, database: str) -> dict[str, str]:
        row = conn.execute(
            sa.text(
                "SELECT pg_encoding_to_char(encoding) AS encoding, to_jsonb(d) AS d "
                "FROM pg_database d WHERE datname = :n"
            ),
            {"n": database},
        ).one_or_none()
        if row is None:
            raise DatabaseNotFound(f"no database {database!r} on {self.describe()}")
        columns = row.d  # column names differ between versions (daticulocale -> datlocale)
        options = {"encoding": row.encoding, "lc_collate": columns["datcollate"]}
        options["lc_ctype"] = columns["datctype"]
        provider = {"i": "icu", "b": "builtin"}.get(columns.get("datlocprovider") or "c")
        locale = columns.get("daticulocale") or columns.get("datlocale")
        if provider and locale:
            options["locale_provider"] = provider
            options["icu_locale" if provider == "icu" else "builtin_locale"] = locale
        return options

    def database_properties(self, conn: sa.Connection, database: str) -> DatabaseProperties | None:
        """Comment, connection limit, settings and privileges of the database (see
        postgres_properties): what pg_dump writes only with --create."""
        properties = read_properties(conn, database)
        if properties is None:
            raise DatabaseNotFound(f"no database {database!r} on {self.describe()}")
        return properties

    def apply_database_properties(self, database: str, properties: DatabaseProperties) -> list[str]:
        """Replay the recorded properties onto database (under its new name). A statement
        the server refuses (a role that does not exist here, a setting this version does
        not know, a privilege the login lacks) is skipped and returned with the reason;
        losing the connection is an error."""
        skipped: list[str] = []
        with self.connect() as conn:
            roles = {name for (name,) in conn.execute(sa.text("SELECT rolname FROM pg_roles"))}
            dbapi = conn.connection.dbapi_connection

            def literal(value: str) -> str:
                return pgsql.Literal(value).as_string(dbapi)

            for what, statement in property_statements(
                database, properties, roles, literal, skipped
            ):
                try:
                    self.run_sql(conn, statement)
                except sa.exc.DBAPIError as exc:
                    state = getattr(exc.orig, "sqlstate", None) or ""
                    if state[:2] not in REFUSED_STATEMENT:
                        raise self._classify(exc.orig or exc) from None
                    skipped.append(f"{what}: {self._error_text(exc.orig or exc)}")
        return skipped

    # --- the WAL archive (blocks/wal.py, blocks/postgres_wal.py) ---------------
    def check_pitr(self) -> None:
        """With pitr on: ConfigError naming each setting that keeps the WAL from being
        archived (wal_level, a standby, the segment size). Never changes a setting."""
        if self.pitr:
            with self.connect() as conn:
                postgres_wal.check_wal_archiving(conn, self.describe())

    def log_files(self) -> list[tuple[str, int]]:
        """The WAL segments the slot holds, up to the flush position (the last one open)."""
        try:
            with self.connect() as conn:
                return postgres_wal.wal_files(conn, self.pitr_slot, self.describe())
        except PermissionDenied as exc:
            raise PermissionDenied(
                f"{exc}. Archiving the WAL needs {postgres_wal.GRANTS.format(user=self.user)} "
                "(docs/pitr.md)"
            ) from None

    @contextlib.contextmanager
    def open_log(self, file: str, start: int, listed: int, workdir: Path) -> Iterator[BinaryIO]:
        """Bytes [start, listed) of the segment, through SQL: never a file in between."""
        with self.connect() as conn:
            yield WalReader(
                lambda offset, length: postgres_wal.read_wal(conn, file, offset, length),
                start,
                listed,
            )

    def log_piece_filter(self, file: str, start: int) -> WalPieceFilter:
        """Checks every WAL page header of the piece (blocks/wal.py)."""
        return WalPieceFilter(file, start)

    def log_client(self) -> tuple[str, str]:
        """The archive reads through SQL: psycopg, and the server's version."""
        return "psycopg", psycopg.__version__

    @contextlib.contextmanager
    def base_backup_command(self, workdir: Path) -> Iterator[ToolCommand]:
        """pg_basebackup: tar on stdout (with its backup_label and backup_manifest), no WAL
        (the archive holds it), a fast checkpoint."""
        argv = [self.tool("pg_basebackup"), "--pgdata=-", "--format=tar", "--wal-method=none"]
        argv += ["--checkpoint=fast", "--no-password"]
        with self._credentials(workdir) as env:
            argv += ["--dbname", self.conninfo(self.maintenance_database)]
            yield ToolCommand(argv, env, self.secrets())

    def base_backup_client(self) -> tuple[str, str]:
        """pg_basebackup and its version."""
        client = self.tool("pg_basebackup")
        return os.path.basename(client), self.client_version(client)

    def log_held(self) -> tuple[int, str] | None:
        """The WAL dbbackup's slot holds on the server, and the slot's wal_status."""
        with self.connect() as conn:
            return postgres_wal.slot_held(conn, self.pitr_slot)

    def log_archived(self, file: str, position: int) -> None:
        """The slot moves on to where the archive now ends."""
        with self.connect() as conn:
            postgres_wal.advance_slot(conn, self.pitr_slot, parse_segment(file)[1] + position)

    def quote(self, name: str) -> str:
        """psycopg's identifier quoting; a name PostgreSQL would truncate is refused.

        PostgreSQL cuts identifiers to 63 bytes (engine.name_limit) with only a notice:
        `DROP DATABASE` of a longer name would drop the database its first 63 bytes name.
        """
        limit = self.engine.name_limit
        if "\0" in name or len(name.encode()) > limit:
            raise ConfigError(
                f"database name {name!r} is not valid on PostgreSQL: at most {limit} bytes "
                "(UTF-8), no NUL character"
            )
        return pgsql.Identifier(name).as_string()

    def create_database(self, database: str, options: dict[str, str]) -> None:
        with self.connect() as conn:
            sql = f"CREATE DATABASE {self.quote(database)} TEMPLATE template0"
            for key, value in self.checked_create_options(options).items():
                sql += f" {key.upper()} " + (value if key == "locale_provider" else f"'{value}'")
            self.run_sql(conn, sql)

    @staticmethod
    def _disconnect(conn: sa.Connection, database: str) -> None:
        # works on every version (DROP ... WITH (FORCE) needs 13+)
        conn.execute(
            sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = :n AND pid <> pg_backend_pid()"
            ),
            {"n": database},
        )

    def drop_database(self, database: str) -> None:
        with self.connect() as conn:
            self._disconnect(conn, database)
            self.run_sql(conn, f"DROP DATABASE IF EXISTS {self.quote(database)}")

    def swap_database(self, replacement: str, target: str) -> None:
        retired = f"{replacement}_old"
        q = self.quote
        with self.connect() as conn:
            self._disconnect(conn, target)
            self.run_sql(conn, f"ALTER DATABASE {q(target)} RENAME TO {q(retired)}")
            self.run_sql(conn, f"ALTER DATABASE {q(replacement)} RENAME TO {q(target)}")
        self.drop_database(retired)

    def client_dir(self) -> Path:
        """The directory every client tool of this block comes from (see check_clients)."""
        if self._client_choice is None:
            self.check_clients()
        assert self._client_choice is not None
        return Path(self._client_choice[0])

    def check_clients(self, backup_client: str | None = None) -> str | None:
        """Choose the client directory: bin_dir when set (its pg_dump must be at least the
        server's version), else the oldest installed client at least as new as the server
        and as the pg_dump that wrote backup_client's backup (see pg_clients)."""
        server = self._server_major()
        if self.bin_dir:
            path = Path(self.bin_dir, "pg_dump")
            if path.is_file():  # else a restore-only directory (a dump fails in tool())
                self._check_dump_client(path, server)
            self._client_choice = (self.bin_dir, None)
            return None
        version = self.server_version()
        backup = pg_clients.client_major(backup_client) if backup_client else None
        found = self.installed_clients()
        choice = pg_clients.choose_client(found, pg_clients.needed_major(version, backup))
        if choice is None:
            raise ConfigError(
                pg_clients.missing_client_message(found, version, self.describe(), backup)
            )
        note = pg_clients.chosen_note(choice, found, version, backup)
        self._client_choice = (choice[0], note)
        return note

    def _check_dump_client(self, path: Path, server: int) -> None:
        client = pg_clients.client_major(self.client_version(str(path)))
        if client is None:
            raise ConfigError(f"cannot tell the version of {path}")
        if client < server:
            raise ConfigError(
                f"{path} is version {client} but the server at {self.describe()} runs "
                f"{server}: pg_dump cannot dump a newer server. Install PostgreSQL {server} "
                "client tools and set bin_dir on the block to their directory (or unset it "
                "to use the installed client closest to the server's version)."
            )

    def installed_clients(self) -> list[tuple[str, int]]:
        """(directory, major version) of every PostgreSQL client found on PATH and in the
        usual install locations; a pg_dump whose version cannot be read is left out."""
        found = []
        for directory in pg_clients.candidate_dirs(os.environ.get("PATH", os.defpath)):
            major = pg_clients.client_major(self.client_version(str(directory / "pg_dump")))
            if major is not None:
                found.append((str(directory), major))
        return found

    def tool(self, *names: str) -> str:
        """Full path of the first of names in client_dir()."""
        directory = self.client_dir()
        for name in names:
            candidate = directory / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
        raise ConfigError(
            f"none of {', '.join(names)} found in {directory}: install the client tools"
        )

    def dump_client(self, name: str = "pg_dump") -> str:
        return self.tool(name)

    def users_script(self, workdir: Path) -> UsersDump:
        """pg_dumpall --roles-only (--globals-only with tablespaces); without superuser,
        --no-role-passwords, because only a superuser may read password hashes."""
        with self.connect() as conn:
            superuser = conn.execute(
                sa.text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            ).scalar_one()
        options = ["--globals-only" if self.dump_tablespaces else "--roles-only"]
        note = None
        if not superuser:
            options.append("--no-role-passwords")
            note = f"{self.user} is not a superuser: role passwords are not in this backup"
        client = self.dump_client("pg_dumpall")
        argv = [client, *options, "--no-password", "--dbname"]
        with (
            self._credentials(workdir) as env,
            ToolProcess(
                [*argv, self.conninfo(self.maintenance_database)],
                env=env,
                timeout=self.dump_timeout,
                stdout=True,
                secrets=self.secrets(),
            ) as proc,
        ):
            assert proc.stdout is not None
            script = proc.stdout.read().decode()
        return UsersDump(script, client, self.client_version(client), options, note)

    def _tolerated(self, statement: str, exc: Exception) -> str | None:
        # replay is idempotent: CREATE ROLE/TABLESPACE of one that exists is skipped,
        # the ALTER ROLE that follows it in the script brings it up to date
        created = re.match(r"CREATE\s+(ROLE|TABLESPACE)\b", statement, re.IGNORECASE)
        if created and getattr(exc, "sqlstate", None) == "42710":
            return f"{created.group(1).lower()} exists"
        return None

    def conninfo(self, database: str) -> str:
        """libpq connection string for the client tools (no password: that is the passfile's)."""
        parts = {
            "host": self.host,
            "port": str(self.port),
            "user": self.user,
            "dbname": database,
            "connect_timeout": str(self.connect_timeout),
            "sslmode": self.sslmode,
            "sslrootcert": self.sslrootcert,
        }
        return " ".join(f"{k}={conninfo_value(v)}" for k, v in parts.items() if v)

    @contextlib.contextmanager
    def _credentials(self, workdir: Path) -> Iterator[dict[str, str]]:
        secret = self.secret()
        if secret is None:
            yield {}
            return
        line = f"*:*:*:{passfile_field(self.user)}:{passfile_field(secret)}\n"
        with private_file(workdir, "pgpass", line) as path:
            yield {"PGPASSFILE": str(path)}

    @contextlib.contextmanager
    def dump_command(
        self, database: str, workdir: Path, snapshot: str | None = None
    ) -> Iterator[ToolCommand]:
        """pg_dump under a unique application_name: if the dump fails (killed at dump_timeout,
        say), its server session is terminated too, or it would wait on a lock for hours."""
        argv = [self.dump_client(), *self.dump_options_for(database), "--no-password"]
        if snapshot:
            argv.append(f"--snapshot={snapshot}")
        app = f"{DUMP_APPLICATION}{secrets.token_hex(6)}"
        with self._credentials(workdir) as env:
            argv += ["--dbname", self.conninfo(database)]
            try:
                yield ToolCommand(argv, {**env, "PGAPPNAME": app}, self.secrets())
            except BaseException:
                self._terminate_sessions(app)
                raise

    def _terminate_sessions(self, application_name: str) -> None:
        """End the server sessions a killed client left (a backend waiting on a lock does
        not notice that its client is gone); a failure here only logs."""
        try:
            with self.connect() as conn:
                ended = conn.execute(
                    sa.text(
                        "SELECT count(*) FILTER (WHERE ended) FROM ("
                        "SELECT pg_terminate_backend(pid) AS ended FROM pg_stat_activity "
                        "WHERE application_name = :app AND pid <> pg_backend_pid()) s"
                    ),
                    {"app": application_name},
                ).scalar_one()
        except DbBackupError as exc:
            log.warning("could not end the server session of %s: %s", application_name, exc)
            return
        if ended:
            log.warning(
                "terminated %d server session(s) of the failed dump %s", ended, application_name
            )

    @contextlib.contextmanager
    def restore_command(
        self, database: str, workdir: Path, archive: Path | None = None, jobs: int = 1
    ) -> Iterator[ToolCommand]:
        argv = [self.tool("pg_restore"), "--exit-on-error", "--no-owner", "--no-password"]
        if archive is not None:
            argv.append(f"--jobs={max(1, jobs)}")
        argv += ["--dbname", self.conninfo(database)]
        if archive is not None:
            argv.append(str(archive))
        with self._credentials(workdir) as env:
            yield ToolCommand(argv, env, self.secrets())
