"""The world one seed runs in: two real databases (PostgreSQL and MariaDB) whose data the
steps change, the blocks naming them, a storage (local or S3, dedup on or off), the keys,
and the commands run as a user runs them (in this process, or a `dbbackup` subprocess that
a fault can kill, freeze or run with a shifted clock)."""

from __future__ import annotations

import logging
import os
import random
import secrets
import signal
import subprocess
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pyrage

from tests.helpers import MY, PG, MyAdmin, PgAdmin
from tests.invariants.clock import shifted_clock

REPO = Path(__file__).resolve().parents[2]
ENGINES = ("pg", "my")
# a small GFS policy: with every backup on one day, the daily slot is the newest backup
RETENTION = {"keep_last": 2, "keep_daily": 1}
GRACE_HOURS = 20 / 3600  # chunk GC: fossils older than 20 s go at the next prune
FENCE_HOURS = 2 / 3600


@dataclass
class Keys:
    """Every secret of the world; none may show up outside where it belongs (I4)."""

    identity_file: Path
    identity: str  # AGE-SECRET-KEY-...
    recipient: str
    signing_pem: str
    signing_key_file: Path  # a worker's signing key file: the target of planted links
    dedup_key_file: Path  # a worker's dedup key file: another target
    dedup_key: str
    canary_password: str

    @classmethod
    def make(cls, root: Path) -> Keys:
        from prefect_dbbackup.blocks import signing
        from prefect_dbbackup.blocks.storage_keys import new_dedup_key

        root.mkdir(parents=True, exist_ok=True)
        identity = pyrage.x25519.Identity.generate()
        identity_file = root / "identity.txt"
        identity_file.write_text(f"# public key: {identity.to_public()}\n{identity}\n")
        identity_file.chmod(0o600)
        pem = signing.generate_signing_key()
        key_file = root / "signing.key"
        key_file.write_text(pem)
        key_file.chmod(0o600)
        dedup_key = new_dedup_key()
        dedup_file = root / "dedup.key"
        dedup_file.write_text(dedup_key + "\n")
        dedup_file.chmod(0o600)
        return cls(
            identity_file=identity_file,
            identity=str(identity),
            recipient=str(identity.to_public()),
            signing_pem=pem,
            signing_key_file=key_file,
            dedup_key_file=dedup_file,
            dedup_key=dedup_key,
            canary_password=f"inv-canary-{secrets.token_hex(8)}",
        )

    def needles(self) -> dict[str, bytes]:
        """What must never appear in an output, a log or a storage object."""
        body = "".join(
            line for line in self.signing_pem.splitlines() if line and not line.startswith("-----")
        )
        return {
            "canary password": self.canary_password.encode(),
            "age identity": self.identity.encode(),
            "age identity (tail)": self.identity[-24:].encode(),
            "signing key": body.encode(),
            "signing key (tail)": body[-24:].encode(),
            "dedup key": self.dedup_key.encode(),
            "dedup key (bytes)": bytes.fromhex(self.dedup_key),
        }


@dataclass
class Result:
    """What one command did: exit code, output, the log lines it wrote, how it ended."""

    argv: list[str]
    code: int
    stdout: str
    stderr: str
    logs: str = ""
    fault: str = ""  # what was done to it ("" if nothing)
    killed: bool = False  # ended by the fault (kill -9): no exit code to judge

    @property
    def text(self) -> str:
        return self.stdout + self.stderr + self.logs


class _LogCapture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(record.getMessage())
            if record.exc_info:
                self.lines.append("".join(traceback.format_exception(*record.exc_info)))
        except Exception:  # noqa: BLE001
            self.lines.append(repr(record.msg))


@dataclass
class World:
    """Databases, blocks and storage of one seed run."""

    root: Path
    keys: Keys
    storage_kind: str  # "local" or "s3"
    dedup: bool
    s3: object | None = None  # tests.s3server.SeaweedFS
    proxy: object | None = None  # tests.invariants.faults.FaultyS3Reads in front of s3
    disk_mb: int = 0  # local storage on a tmpfs of this size (a real full disk), 0: none
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    pg: PgAdmin = field(default_factory=PgAdmin)
    my: MyAdmin = field(default_factory=MyAdmin)

    def __post_init__(self) -> None:
        self.db = f"inv_{self.tag}"
        self.servers = {"pg": f"inv-pg-{self.tag}", "my": f"inv-my-{self.tag}"}
        self.storage = f"inv-store-{self.tag}"
        self.encryption = f"inv-keys-{self.tag}"
        self.storage_path = self.root / "storage"
        self.workdir = self.root / "work"
        self.next_id = 1
        self.scratch: list[tuple[str, str]] = []
        self._storage = None
        self._seen: dict[str, tuple] = {}  # storage object -> version already scanned

    # --- setup and teardown ---
    def setup(self) -> None:
        from prefect_dbbackup.blocks import AgeEncryption, MySQLServer, PostgresServer

        self.pg.drop(self.db)
        self.pg.create(self.db)
        self.my.drop(self.db)
        self.my.create(self.db)
        self.pg.execute(
            self.db,
            "CREATE TABLE items (id int PRIMARY KEY, v text);"
            "CREATE TABLE big (id int PRIMARY KEY, v text);"
            "INSERT INTO big SELECT g, md5(g::text) || md5((g * 7)::text)"
            " FROM generate_series(1, 60000) g;",
        )
        self.my.execute(
            self.db,
            "CREATE TABLE items (id int PRIMARY KEY, v varchar(200))",
            "CREATE TABLE big (id int PRIMARY KEY, v varchar(200))",
            "INSERT INTO big SELECT seq, concat(md5(seq), md5(seq * 7)) FROM seq_1_to_30000",
        )
        # the password is a canary: trust auth ignores it, it must never be seen (I4)
        PostgresServer(
            host=PG["host"],
            port=PG["port"],
            user=PG["user"],
            password=self.keys.canary_password,
            retention=RETENTION,
            backup_users=False,
            count_rows=False,
        ).save(self.servers["pg"])
        MySQLServer(
            host=MY["host"], port=MY["port"], user=MY["user"], retention=RETENTION,
            backup_users=False,
        ).save(self.servers["my"])  # fmt: skip
        AgeEncryption(
            recipients=[self.keys.recipient], identity_file=str(self.keys.identity_file)
        ).save(self.encryption)
        if self.disk_mb:
            self.storage_path.mkdir(parents=True)
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={self.disk_mb}m", "tmpfs",
                 str(self.storage_path)],
                check=True,
            )  # fmt: skip
        self._save_storage()
        self.workdir.mkdir(parents=True, exist_ok=True)

    def _save_storage(self) -> None:
        from prefect_dbbackup.blocks import LocalBackupStorage
        from pydantic import SecretStr

        from tests.helpers import signing_fields

        fields: dict[str, object] = signing_fields(self.keys.signing_pem)
        if self.dedup:
            fields |= {
                "dedup": True,
                "dedup_key": SecretStr(self.keys.dedup_key),
                "dedup_grace_hours": GRACE_HOURS,
                "dedup_fence_hours": FENCE_HOURS,
            }
        if self.storage_kind == "local":
            LocalBackupStorage(path=str(self.storage_path), **fields).save(self.storage)
            return
        from prefect_aws import AwsCredentials
        from prefect_dbbackup.blocks import S3BackupStorage

        from tests.s3server import ACCESS_KEY, SECRET_KEY

        bucket = self.s3.make_bucket("dbb-tests")
        endpoint = self.proxy.endpoint if self.proxy is not None else self.s3.endpoint
        S3BackupStorage(
            bucket=bucket,
            prefix=f"inv-{self.tag}",
            region="us-east-1",
            endpoint_url=endpoint,
            path_style=True,
            credentials=AwsCredentials(
                aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY
            ),
            **fields,
        ).save(self.storage)

    def teardown(self) -> None:
        for admin in (self.pg, self.my):
            admin.drop(self.db)
        for engine, name in self.scratch:
            self.admin(engine).drop(name)
        if self.disk_mb:
            subprocess.run(["umount", "-l", str(self.storage_path)], check=True)

    # --- data ---
    def admin(self, engine: str) -> PgAdmin | MyAdmin:
        return self.pg if engine == "pg" else self.my

    def change_data(self, rng: random.Random, engine: str) -> str:
        """Insert, update and delete a few rows of `items` (sometimes of `big`); what it did."""
        new = [
            (self.next_id + i, secrets.token_hex(rng.randint(4, 40)))
            for i in range(rng.randint(0, 6))
        ]
        self.next_id += len(new)
        statements = [f"INSERT INTO items VALUES ({i}, '{v}')" for i, v in new]
        if rng.random() < 0.5:
            statements.append(
                f"UPDATE items SET v = concat(v, 'u{rng.randint(0, 9)}') WHERE id % 3 = {rng.randint(0, 2)}"
            )
        if rng.random() < 0.4:
            statements.append(f"DELETE FROM items WHERE id % 5 = {rng.randint(0, 4)}")
        if rng.random() < 0.2:
            statements.append(
                f"UPDATE big SET v = '{secrets.token_hex(16)}' WHERE id = {rng.randint(1, 5000)}"
            )
        admin = self.admin(engine)
        if engine == "pg":
            admin.execute(self.db, ";".join(statements) or "SELECT 1")
        elif statements:
            admin.execute(self.db, *statements)
        return f"{len(new)} inserts, {len(statements) - len(new)} updates/deletes"

    def fingerprint(self, engine: str, database: str | None = None) -> dict:
        return self.admin(engine).table_fingerprints(database or self.db)

    def scratch_name(self, engine: str) -> str:
        name = f"inv_r_{uuid.uuid4().hex[:10]}"
        self.scratch.append((engine, name))
        return name

    # --- storage ---
    def load_storage(self):  # noqa: ANN201
        from prefect_dbbackup.blocks.registry import load_storage

        if self._storage is None:
            self._storage = load_storage(self.storage)
        return self._storage

    def listing(self, engine: str) -> dict[str, str]:
        """backup id -> trust of every manifest of the engine's series."""
        from prefect_dbbackup.tasks.catalog import scan_backups

        entries = scan_backups(self.load_storage(), self.servers[engine], self.db)
        return {e.backup_id: e.trust for e in entries}

    def manifest(self, engine: str, backup_id: str):  # noqa: ANN201
        from prefect_dbbackup.tasks.catalog import scan_backups

        for e in scan_backups(self.load_storage(), self.servers[engine], self.db):
            if e.backup_id == backup_id and e.trust == "signed":
                return e.manifest
        return None

    def chunk_ids(self) -> set[str]:
        """Ids of the chunks stored in `chunks/` (not those set aside)."""
        from prefect_dbbackup.tasks.dedup.layout import CHUNKS, parse_chunk_key

        keys = self.load_storage().list_keys(CHUNKS + "/")
        return {parsed[1] for parsed in map(parse_chunk_key, keys) if parsed}

    def changed_objects(self) -> dict[str, bytes]:
        """Every regular object in storage that is new or changed since the last call
        (links are not followed: they are not objects)."""
        if self.storage_kind == "local":
            listed = {
                str(p.relative_to(self.storage_path)): (p, p.stat().st_size, p.stat().st_mtime_ns)
                for p in self.storage_path.rglob("*")
                if p.is_file() and not p.is_symlink()
            }
            read = lambda key: listed[key][0].read_bytes()  # noqa: E731
            versions = {k: v[1:] for k, v in listed.items()}
        else:
            client, prefix = self.s3.client(), f"inv-{self.tag}/"
            versions = {}
            for page in client.get_paginator("list_objects_v2").paginate(
                Bucket="dbb-tests", Prefix=prefix
            ):
                for item in page.get("Contents", []):
                    versions[item["Key"][len(prefix) :]] = (item["ETag"], item["Size"])

            def read(key: str) -> bytes:
                return client.get_object(Bucket="dbb-tests", Key=prefix + key)["Body"].read()

        changed = {k for k, v in versions.items() if self._seen.get(k) != v}
        self._seen = versions
        return {key: read(key) for key in changed}

    def redate_written_since(self, since: float, seconds: float) -> None:
        """Date every file written since `since` `seconds` later (earlier if negative): what
        a local or NFS storage whose clock stepped shows."""
        for path in self.storage_path.rglob("*"):
            if path.is_file() and not path.is_symlink():
                stat = path.stat()
                if stat.st_mtime >= since:
                    os.utime(path, (stat.st_atime, stat.st_mtime + seconds))

    # --- commands ---
    def argv(self, command: str, *args: str) -> list[str]:
        argv = [command, *args]
        if command in ("backup", "restore", "list", "prune", "check", "verify"):
            argv += ["--storage", self.storage]
        if command in ("backup", "restore", "check", "verify"):
            argv += ["--encryption", self.encryption]
        return argv

    def run(self, argv: list[str], clock: float = 0) -> Result:
        """`dbbackup ARGV` in this process (the fast way), dbbackup's clock shifted."""
        from prefect_dbbackup.flows.cli import app
        from typer.testing import CliRunner

        capture = _LogCapture()
        loggers = [logging.getLogger(), logging.getLogger("prefect")]
        for logger in loggers:
            logger.addHandler(capture)
        try:
            with shifted_clock(clock):
                result = CliRunner().invoke(app, argv, catch_exceptions=True)
        finally:
            for logger in loggers:
                logger.removeHandler(capture)
        stderr = result.stderr
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            stderr += "".join(traceback.format_exception(result.exception))
        return Result(argv, result.exit_code, result.stdout, stderr, "\n".join(capture.lines))

    def spawn(self, argv: list[str], clock: float = 0) -> subprocess.Popen[str]:
        """`dbbackup ARGV` as its own process (the test Prefect API), clock shifted."""
        from prefect.settings import PREFECT_API_URL

        child = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        child.update(
            PREFECT_API_URL=str(PREFECT_API_URL.value()),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            DBBACKUP_WORK_DIR=str(self.workdir),
            PYTHONPATH=os.pathsep.join(
                p for p in (os.environ.get("PYTHONPATH", ""), str(REPO)) if p
            ),
        )
        code = (
            f"import tests.invariants.clock as c; c.install({clock!r}); "
            "from prefect_dbbackup.flows.cli import main; main()"
        )
        return subprocess.Popen(
            [sys.executable, "-c", code, *argv],
            env=child,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def run_with_signal(
        self, argv: list[str], rng: random.Random, kind: str, clock: float = 0
    ) -> Result:
        """Run as a subprocess; kill -9 it, or SIGSTOP/SIGCONT it, at a random moment."""
        process = self.spawn(argv, clock)
        delay = rng.uniform(2.5, 7.5)  # the child needs ~4 s to import before it acts
        fault = ""
        try:
            try:
                process.wait(delay)
                fault = f"{kind} after {delay:.1f}s: too late, the command had ended"
            except subprocess.TimeoutExpired:
                if kind == "kill9":
                    process.send_signal(signal.SIGKILL)
                    fault = f"kill -9 after {delay:.1f}s"
                else:
                    frozen = rng.uniform(0.5, 8.0)
                    process.send_signal(signal.SIGSTOP)
                    time.sleep(frozen)
                    process.send_signal(signal.SIGCONT)
                    fault = f"SIGSTOP after {delay:.1f}s for {frozen:.1f}s"
            stdout, stderr = process.communicate(timeout=300)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        killed = process.returncode == -signal.SIGKILL
        return Result(argv, process.returncode, stdout, stderr, "", fault, killed)
