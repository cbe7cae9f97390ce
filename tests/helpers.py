"""Test helpers: admin access to the real servers, per-test blocks, table fingerprints."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pymysql
import pyrage
import zstandard
from psycopg import sql
from typer.testing import CliRunner

from tests.s3server import ACCESS_KEY, SECRET_KEY, SeaweedFS

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
MY = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}


@dataclass(kw_only=True)
class PgAdmin:
    """Superuser helper for a PostgreSQL server (default: the machine's, 127.0.0.1:5432)."""

    host: str = PG["host"]
    port: int = PG["port"]

    def connect(self, database: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(
            host=self.host, port=self.port, user=PG["user"], dbname=database, autocommit=True
        )

    def create(self, name: str) -> None:
        with self.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def drop(self, name: str) -> None:
        with self.connect() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def exists(self, name: str) -> bool:
        with self.connect() as conn:
            return bool(
                conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            )

    def execute(self, database: str, statements: str) -> None:
        with self.connect(database) as conn:
            conn.execute(statements)

    def query(self, database: str, statement: str, params: tuple = ()) -> list[tuple]:
        with self.connect(database) as conn:
            return conn.execute(statement, params).fetchall()

    def table_fingerprints(self, database: str) -> dict[str, tuple[int, str]]:
        """(row count, md5 of all rows in a stable order) for every user table."""
        with self.connect(database) as conn:
            tables = conn.execute(
                "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r','p','m') "
                "AND n.nspname NOT IN ('pg_catalog','information_schema') "
                "AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1"
            ).fetchall()
            result = {}
            for (table,) in tables:
                row = conn.execute(
                    f"SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') "
                    f"FROM {table} t"
                ).fetchone()
                result[table] = (row[0], row[1])
            return result


@dataclass(kw_only=True)
class MyAdmin:
    """root helper for a MariaDB server (default: the machine's, 127.0.0.1:3306)."""

    host: str = MY["host"]
    port: int = MY["port"]

    def connect(self, database: str | None = None) -> pymysql.Connection:
        return pymysql.connect(
            **{**MY, "host": self.host, "port": self.port},
            database=database,
            charset="utf8mb4",
            autocommit=True,
        )

    @staticmethod
    def q(name: str) -> str:
        return "`" + name.replace("`", "``") + "`"

    def create(self, name: str) -> None:
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {self.q(name)} CHARACTER SET utf8mb4")

    def drop(self, name: str) -> None:
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {self.q(name)}")

    def exists(self, name: str) -> bool:
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (name,))
            return cur.fetchone() is not None

    def execute(self, database: str, *statements: str) -> None:
        with self.connect(database) as conn, conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)

    def query(self, database: str | None, statement: str, params: tuple = ()) -> list[tuple]:
        with self.connect(database) as conn, conn.cursor() as cur:
            cur.execute(statement, params)
            return list(cur.fetchall())

    def table_fingerprints(self, database: str) -> dict[str, tuple[int, str]]:
        """(row count, sha256 of all rows sorted) for every base table."""
        result = {}
        with self.connect(database) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s "
                "AND TABLE_TYPE = 'BASE TABLE' ORDER BY 1",
                (database,),
            )
            for (table,) in cur.fetchall():
                cur.execute(f"SELECT * FROM {self.q(table)}")
                rows = sorted(repr(r) for r in cur.fetchall())
                result[table] = (len(rows), hashlib.sha256("\n".join(rows).encode()).hexdigest())
        return result


def signing_fields(pem: str | None = None) -> dict[str, object]:
    """Storage block fields with a manifest signing key (default: one per test session)."""
    from prefect_dbbackup.blocks import signing
    from pydantic import SecretStr

    pem = pem or session_signing_key()
    public = signing.load_signing_key(pem, "test key").public_key()
    return {
        "manifest_signing_key": SecretStr(pem),
        "manifest_verify_keys": [signing.public_key_text(public)],
    }


@functools.cache
def session_signing_key() -> str:
    """One manifest signing key (PEM) for tests that build storage blocks by hand."""
    from prefect_dbbackup.blocks import signing

    return signing.generate_signing_key()


def plant_manifest(storage, server: str, database: str, backup_id: str):  # noqa: ANN001, ANN201
    """Store a minimal signed manifest, as a writer would (prune reads manifests, not data)."""
    from datetime import datetime

    from prefect_dbbackup.blocks.engines import POSTGRES
    from prefect_dbbackup.tasks.catalog import publish_manifest
    from prefect_dbbackup.tasks.layout import GLOBALS_SEGMENT
    from prefect_dbbackup.tasks.manifest import Manifest, StreamStats

    kind = "globals" if database == GLOBALS_SEGMENT else "database"
    when = datetime.strptime(backup_id.split("-")[0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    manifest = Manifest(
        tool_version="test",
        server=server,
        server_type="postgres",
        server_version="15",
        client="pg_dump",
        client_version="15",
        database=database,
        backup_id=backup_id,
        kind=kind,
        started_at=when,
        finished_at=when,
        object_name=POSTGRES.object_name(kind),
        dump_format="pg_custom" if kind == "database" else "sql",
        stats=StreamStats(raw_bytes=1, compressed_bytes=1, stored_bytes=1, sha256="0" * 64),
        recipients=[],
    )
    publish_manifest(storage, manifest)
    return manifest


@dataclass
class BlockEnv:
    """Uniquely named blocks saved in the test Prefect API, and a CLI runner using them."""

    pg: str
    my: str
    storage: str
    encryption: str
    storage_path: Path
    identity_file: Path
    recipient: str
    bucket: str | None = None
    s3_prefix: str = ""
    signing_key: str = ""  # PEM of the storage blocks' manifest signing key

    def signing_fields(self) -> dict[str, object]:
        """The storage block fields that make its backups signed (and checked)."""
        return signing_fields(self.signing_key)

    def resign(self, manifest_path: Path) -> None:
        """Sign an edited manifest file of local storage again, as a writer would."""
        from prefect_dbbackup.blocks import signing
        from prefect_dbbackup.tasks.layout import SIGNATURE_NAME

        key = signing.load_signing_key(self.signing_key, "test key")
        manifest_path.with_name(SIGNATURE_NAME).write_bytes(
            signing.sign(key, manifest_path.read_bytes())
        )

    @classmethod
    def create(cls, tmp_path: Path, identity_file: Path, recipient: str) -> BlockEnv:
        from prefect_dbbackup.blocks import (
            AgeEncryption,
            LocalBackupStorage,
            MySQLServer,
            PostgresServer,
            signing,
        )

        tag = uuid.uuid4().hex[:8]
        env = cls(
            pg=f"pg-{tag}",
            my=f"my-{tag}",
            storage=f"store-{tag}",
            encryption=f"keys-{tag}",
            storage_path=tmp_path / "backups",
            identity_file=identity_file,
            recipient=recipient,
            signing_key=signing.generate_signing_key(),
        )
        PostgresServer(host=PG["host"], port=PG["port"], user=PG["user"]).save(env.pg)
        MySQLServer(host=MY["host"], port=MY["port"], user=MY["user"]).save(env.my)
        LocalBackupStorage(path=str(env.storage_path), **env.signing_fields()).save(env.storage)
        AgeEncryption(recipients=[recipient], identity_file=str(identity_file)).save(env.encryption)
        return env

    def use_s3(self, server: SeaweedFS, *, object_lock: bool = False, **fields: object) -> BlockEnv:
        """This env with its storage block under a new prefix of a bucket on a real S3 server.

        Tests share two buckets (plain and object-locked): SeaweedFS gives each bucket
        volumes of its own, so one bucket per test would exhaust them.
        """
        from prefect_aws import AwsCredentials
        from prefect_dbbackup.blocks import S3BackupStorage

        tag = uuid.uuid4().hex[:8]
        bucket = server.make_bucket(
            "dbb-locked" if object_lock else "dbb-tests", object_lock=object_lock
        )
        credentials = AwsCredentials(
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=fields.pop("secret", SECRET_KEY)
        )
        S3BackupStorage(
            bucket=bucket,
            prefix=f"backups-{tag}",
            region="us-east-1",
            endpoint_url=server.endpoint,
            path_style=True,
            credentials=credentials,
            **{**self.signing_fields(), **fields},
        ).save(f"s3-{tag}")
        return replace(self, storage=f"s3-{tag}", bucket=bucket, s3_prefix=f"backups-{tag}/")

    def with_dedup(self, s3: SeaweedFS | None = None, **fields: object) -> BlockEnv:
        """This env with a deduplicating storage block (a new local dir, or a new S3 prefix)
        and a fresh dedup key."""
        from prefect_dbbackup.blocks import LocalBackupStorage
        from prefect_dbbackup.blocks.storage_keys import new_dedup_key

        fields = {"dedup": True, "dedup_key": new_dedup_key(), **fields}
        if s3 is not None:
            return self.use_s3(s3, **fields)
        tag = uuid.uuid4().hex[:8]
        path = self.storage_path.with_name(f"dedup-{tag}")
        LocalBackupStorage(path=str(path), **self.signing_fields(), **fields).save(f"dedup-{tag}")
        return replace(self, storage=f"dedup-{tag}", storage_path=path)

    def in_memory(self) -> BlockEnv:
        """This env with its storage block a new memory storage (blocks/memory.py), saved
        by name like the others: for flow tests where the kind of storage does not matter."""
        from prefect_dbbackup.blocks.memory import MemoryBackupStorage

        tag = uuid.uuid4().hex[:8]
        MemoryBackupStorage(space=tag, **self.signing_fields()).save(f"mem-{tag}")
        return replace(self, storage=f"mem-{tag}")

    def cli(self, *args: str) -> CliResult:
        """Run `dbbackup ARGS` in-process with this env's storage and encryption blocks."""
        from prefect_dbbackup.flows.cli import app

        command = list(args)
        defaults = {"--storage": self.storage}
        pitr = ("archive", "base-backup", "restore-cluster")
        if command and command[0] in ("backup", "restore", "check", *pitr):
            defaults["--encryption"] = self.encryption
        if command and command[0] in (
            *("backup", "restore", "list", "status", "prune", "check", *pitr),
        ):
            for option, value in defaults.items():
                if option not in command:
                    command += [option, value]
        result = CliRunner().invoke(app, command, catch_exceptions=False)
        return CliResult(result.exit_code, result.stdout, result.stderr)


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def age_gc_marks(storage_root: Path, seconds: float) -> None:
    """Make the chunk collections marked on a local storage `seconds` older by every clock a
    sweep reads (tasks/dedup/gc._Collector.age): the mark file's store time (mtime) and the
    marker's wall clock and boottime in it. Instead of sleeping through a grace period."""
    marks = sorted((storage_root / "_dedup" / "gc").glob("*.json"))
    assert marks, f"no chunk collection is marked under {storage_root}"
    for mark in marks:
        record = json.loads(mark.read_text())
        wall = datetime.fromisoformat(record["wall"]) - timedelta(seconds=seconds)
        record |= {"wall": wall.isoformat(), "boottime": record["boottime"] - seconds}
        stat = mark.stat()
        mark.write_text(json.dumps(record))
        os.utime(mark, (stat.st_atime - seconds, stat.st_mtime - seconds))


def stored_objects(
    storage_path: Path, suffix: str = ".age", with_globals: bool = False
) -> list[Path]:
    """Stored backup objects under a local storage root (the _globals series left out)."""
    found = sorted(storage_path.rglob(f"*{suffix}"))
    return [p for p in found if with_globals or "_globals" not in p.parts]


# --- what Prefect recorded (found by run id or parameters, never by a date-built name) ---
def flow_runs_of(flow_name: str, **parameters: object) -> list:
    """Flow runs of the flow `flow_name` whose parameters include `parameters`, oldest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    runs: list = []
    with get_client(sync_client=True) as client:
        while True:  # every page: a long suite makes more runs than one page holds
            page = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                sort=FlowRunSort.START_TIME_ASC,
                limit=200,
                offset=len(runs),
            )
            runs += page
            if len(page) < 200:
                break
    return [r for r in runs if all(r.parameters.get(k) == v for k, v in parameters.items())]


def run_logs_of(flow_run_id: object) -> list:
    """Every log record the API holds of one flow run (its task runs' included), oldest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter
    from prefect.client.schemas.sorting import LogSort

    logs: list = []
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_logs(
                log_filter=LogFilter(flow_run_id={"any_": [flow_run_id]}),
                sort=LogSort.TIMESTAMP_ASC,
                limit=200,
                offset=len(logs),
            )
            logs += page
            if len(page) < 200:
                return logs


def task_runs_of(flow_run_id: object) -> list:
    """Every task run of one flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter

    with get_client(sync_client=True) as client:
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [flow_run_id]}))


def newest_artifact(key: str) -> str:
    """The markdown of the newest artifact with this key, from the test Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        (latest,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    return latest.data


def archive_runs(env: BlockEnv, server: str) -> list[tuple[Path, dict]]:
    """(directory, manifest) of each archive run stored on env's local storage, oldest first."""
    from prefect_dbbackup.tasks.archive_manifest import ARCHIVE_SEGMENT
    from prefect_dbbackup.tasks.layout import encode_name

    root = env.storage_path / encode_name(server) / ARCHIVE_SEGMENT
    runs = sorted(root.glob("*/manifest.json")) if root.exists() else []
    return [(path.parent, json.loads(path.read_text())) for path in runs]


def reassembled_log(env: BlockEnv, server: str, skip: Path | None = None) -> dict[str, bytes]:
    """Each archived log file (binlog, WAL segment), its pieces decrypted, decompressed and
    joined in order; every piece must start where the one before it ended. skip: a run left
    out."""
    identity = pyrage.x25519.Identity.from_str(
        next(
            line
            for line in env.identity_file.read_text().splitlines()
            if line.startswith("AGE-SECRET-KEY-")
        )
    )
    files: dict[str, bytes] = {}
    pieces = [(d, p) for d, m in archive_runs(env, server) if d != skip for p in m["pieces"]]
    for directory, piece in sorted(pieces, key=lambda dp: (dp[1]["file"], dp[1]["start"])):
        data = pyrage.decrypt((directory / piece["object_name"]).read_bytes(), [identity])
        data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
        so_far = files.get(piece["file"], b"")
        assert piece["start"] == len(so_far), piece
        assert len(data) == piece["end"] - piece["start"]
        files[piece["file"]] = so_far + data
    return files
