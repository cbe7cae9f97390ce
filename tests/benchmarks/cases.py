"""The benchmark cases: each one is dbbackup next to the bare tool it has to keep up with."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.benchmarks import data
from tests.benchmarks.cli_latency import CLI
from tests.benchmarks.harness import Group, Variant, VariantFailed, run_once
from tests.helpers import MY, PG

REPO = Path(__file__).resolve().parents[2]
PG_ARGS = ["-h", PG["host"], "-p", str(PG["port"]), "-U", PG["user"]]
MY_ARGS = [f"-h{MY['host']}", f"-P{MY['port']}", f"-u{MY['user']}"]
CASES = (
    "pg-backup",
    "my-backup",
    "pg-restore",
    "my-restore",
    "rss",
    "many",
    "tiny",
    "s3",
    "pg-cli",
)
TINY_CONCURRENCY = (1, 2)
MANY_CONCURRENCY = (1, 2, 4)


@dataclass
class Context:
    """What every case needs: where to write, which sizes, keys, and the Prefect API."""

    work: Path
    sizes: data.Sizes
    recipient: str
    identity: Path
    prefect_env: dict[str, str] | None = None  # PREFECT_API_URL of the benchmark's own server
    s3_endpoint: str | None = None
    s3_bucket: str = "dbb-bench"

    def env(self) -> dict[str, str]:
        """Environment of a worker: its own work dir and the benchmark's Prefect API.

        The dump task asks the API for a per-host concurrency limit, so even the
        task path outside a flow needs one (without it Prefect would start a
        temporary server inside every worker).
        """
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
        env.update(
            # the caller's PYTHONPATH after the repo: a worktree's package dir wins
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            DBBACKUP_WORK_DIR=str(self.work / "spool"),
            PREFECT_HOME=str(self.work / "prefect-home"),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
        )
        if self.prefect_env:
            env.update(self.prefect_env)
        return env

    def worker(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "tests.benchmarks.worker", *args]

    def path(self, name: str) -> Path:
        return self.work / name


def _remove(path: Path):  # noqa: ANN202
    def remove() -> None:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

    return remove


def _same_content(content, source: str, target: str):  # noqa: ANN001, ANN202
    """A check: the restored target has the source's row counts and checksums."""

    def check() -> None:
        expected, got = content(source), content(target)
        if got != expected or not expected:
            raise VariantFailed(f"{target} does not match {source}: {got} != {expected}")
        data.log(f"checked {target}: {sum(n for n, _ in got.values())} rows match {source}")

    return check


def _shell(command: str) -> list[str]:
    return ["bash", "-o", "pipefail", "-c", command]


def backup_variant(
    ctx: Context, name: str, engine: str, database: str, *tuning: str, store: Path | None = None
) -> Variant:
    """dbbackup's dump task + upload task (local storage) in a worker process."""
    store = store or ctx.path(f"store-{engine}")
    argv = ctx.worker("backup", "--engine", engine, "--database", database)
    argv += ["--storage", str(store), "--recipient", ctx.recipient, *tuning]
    return Variant(name, argv, env=ctx.env(), after=_remove(store))


def pg_dump_variant(ctx: Context, name: str, database: str, *options: str) -> Variant:
    out = ctx.path("bare.pgc")
    argv = ["pg_dump", "-Fc", *options, *PG_ARGS, "-f", str(out), database]
    return Variant(name, argv, after=_remove(out))


def pg_backup(ctx: Context) -> Group:
    db = data.ensure_pg(ctx.sizes.pg_bytes)
    return Group(
        "1. PostgreSQL backup",
        [
            _with_baseline(backup_variant(ctx, "pg backup: dbbackup", "pg", db), "pg_dump -Fc -Z0"),
            pg_dump_variant(ctx, "pg_dump -Fc -Z0", db, "-Z0"),
            _with_baseline(pg_dump_variant(ctx, "pg_dump -Fc (gzip)", db), "pg_dump -Fc -Z0"),
        ],
    )


def _with_baseline(variant: Variant, baseline: str) -> Variant:
    variant.baseline = baseline
    return variant


def my_backup(ctx: Context) -> Group:
    db = data.ensure_my(ctx.sizes.my_bytes)
    out = ctx.path("bare.sql")
    bare = " ".join(shlex.quote(a) for a in ["mariadb-dump", "--single-transaction", *MY_ARGS, db])
    return Group(
        "2. MariaDB backup",
        [
            _with_baseline(backup_variant(ctx, "my backup: dbbackup", "my", db), "mariadb-dump"),
            Variant("mariadb-dump", _shell(f"{bare} > {out}"), after=_remove(out)),
            _with_baseline(
                backup_variant(ctx, "my backup: dbbackup zstd -1", "my", db, "--level", "1"),
                "mariadb-dump",
            ),
        ],
    )


def pg_restore(ctx: Context) -> Group:
    db = data.ensure_pg(ctx.sizes.pg_bytes)
    store, archive = ctx.path("restore-src-pg"), ctx.path("restore.pgc")
    target = f"{data.PREFIX}restore_pg"

    def setup() -> None:
        _remove(store)()
        run_once(backup_variant(ctx, "source backup", "pg", db, store=store))
        run_once(Variant("archive", ["pg_dump", "-Fc", "-Z0", *PG_ARGS, "-f", str(archive), db]))

    drop = lambda: data.pg.drop(target)  # noqa: E731
    same = _same_content(data.pg_content, db, target)
    conn = " ".join(shlex.quote(a) for a in PG_ARGS)
    bare = (
        f"createdb {conn} {target} && pg_restore --exit-on-error --no-owner {conn} "
        f"-d {target} {shlex.quote(str(archive))}"
    )
    subject = ctx.worker("restore", "--engine", "pg", "--database", db, "--storage", str(store))
    subject += ["--identity", str(ctx.identity), "--target", target]
    return Group(
        "3a. PostgreSQL restore",
        [
            Variant("pg restore: dbbackup", subject, "pg_restore", ctx.env(), drop, same),
            Variant("pg_restore", _shell(bare), after=drop, check=same),
        ],
        setup=setup,
        warmup=False,
    )


def my_restore(ctx: Context) -> Group:
    db = data.ensure_my(ctx.sizes.my_bytes)
    store, dump = ctx.path("restore-src-my"), ctx.path("restore.sql")
    target = f"{data.PREFIX}restore_my"
    conn = " ".join(shlex.quote(a) for a in MY_ARGS)

    def setup() -> None:
        _remove(store)()
        run_once(backup_variant(ctx, "source backup", "my", db, store=store))
        run_once(Variant("dump", _shell(f"mariadb-dump --single-transaction {conn} {db} > {dump}")))

    drop = lambda: data.my.drop(target)  # noqa: E731
    same = _same_content(data.my_content, db, target)
    bare = (
        f"mariadb {conn} -e 'CREATE DATABASE {target}' && "
        f"mariadb {conn} --binary-mode {target} < {shlex.quote(str(dump))}"
    )
    subject = ctx.worker("restore", "--engine", "my", "--database", db, "--storage", str(store))
    subject += ["--identity", str(ctx.identity), "--target", target]
    return Group(
        "3b. MariaDB restore",
        [
            Variant("my restore: dbbackup", subject, "mariadb < file", ctx.env(), drop, same),
            Variant("mariadb < file", _shell(bare), after=drop, check=same),
        ],
        setup=setup,
        warmup=False,
    )


def rss(ctx: Context) -> Group:
    """The small database's backup; its RSS is compared with case 1's (the large one)."""
    db = data.ensure_pg(ctx.sizes.small_pg_bytes)
    return Group(
        "4. Peak RSS, small database",
        [
            _with_baseline(
                backup_variant(ctx, "pg backup small: dbbackup", "pg", db), "pg_dump -Fc -Z0 small"
            ),
            pg_dump_variant(ctx, "pg_dump -Fc -Z0 small", db, "-Z0"),
        ],
    )


def _flow_variant(ctx: Context, name: str, databases: list[str], concurrency: int) -> Variant:
    argv = ctx.worker("flow", "--databases", ",".join(databases))
    argv += ["--concurrency", str(concurrency)]
    return Variant(name, argv, env=ctx.env(), after=_remove(ctx.path("flow-store")))


def _each_db(ctx: Context, databases: list[str], parallel: int, pipeline: str) -> list[str]:
    """A shell loop (xargs -P parallel) running pipeline for each database ({} is its name)."""
    out = ctx.path("bare-many")
    names = shlex.quote("\n".join(databases))
    script = shlex.quote(f"set -o pipefail; {pipeline}")
    loop = f"printf '%s\\n' {names} | xargs -P {parallel} -I{{}} bash -c {script}"
    return _shell(f"mkdir -p {out} && cd {out} && {loop}")


def _pg_dump_each(ctx: Context, databases: list[str], parallel: int) -> list[str]:
    conn = " ".join(shlex.quote(a) for a in PG_ARGS)
    return _each_db(ctx, databases, parallel, f"pg_dump -Fc -Z0 {conn} -f {{}}.pgc {{}}")


def _pg_dump_zstd_age_each(ctx: Context, databases: list[str], parallel: int) -> list[str]:
    """What dbbackup does for each database, as a shell loop: pg_dump | zstd | age."""
    conn = " ".join(shlex.quote(a) for a in PG_ARGS)
    pipeline = f"pg_dump -Fc -Z0 {conn} {{}} | zstd -q -3 | age -r {ctx.recipient} > {{}}.age"
    return _each_db(ctx, databases, parallel, pipeline)


def many(ctx: Context) -> Group:
    dbs = data.ensure_pg_copies(ctx.sizes.many_bytes, data.MANY_COUNT)
    variants = []
    for c in MANY_CONCURRENCY:
        bare = f"{len(dbs)} dbs pg_dump x{c} parallel"
        flow = _flow_variant(ctx, f"{len(dbs)} dbs backup_server concurrency={c}", dbs, c)
        variants += [
            _with_baseline(flow, bare),
            Variant(bare, _pg_dump_each(ctx, dbs, c), after=_remove(ctx.path("bare-many"))),
        ]
    return Group("5. Many databases", variants)


def tiny_flow(count: int, concurrency: int) -> str:
    return f"{count} tiny dbs: backup_server concurrency={concurrency}"


def tiny_bare(count: int, concurrency: int) -> str:
    return f"{count} tiny dbs: shell loop pg_dump, zstd, age x{concurrency}"


def tiny(ctx: Context) -> Group:
    """Orchestration overhead: many tiny databases, flow vs a shell loop at the same
    concurrency, at each of data.TINY_COUNTS (the cost per database must stay flat)."""
    variants = []
    for count in data.TINY_COUNTS:
        dbs = data.ensure_tiny(count)
        for c in TINY_CONCURRENCY:
            bare = tiny_bare(count, c)
            variants += [
                _with_baseline(_flow_variant(ctx, tiny_flow(count, c), dbs, c), bare),
                Variant(
                    bare,
                    _pg_dump_zstd_age_each(ctx, dbs, c),
                    after=_remove(ctx.path("bare-many")),
                ),
            ]
    return Group("6. Orchestration overhead", variants, warmup=False)


def s3(ctx: Context) -> Group:
    case = "7. S3 upload"
    if not (REPO / "blocks" / "s3.py").exists():
        return Group(case, [], skipped="not run: blocks/s3.py does not exist yet")
    if not ctx.s3_endpoint:
        return Group(case, [], skipped="not run: no --s3-endpoint (or DBB_BENCH_S3_ENDPOINT)")
    source = ctx.path("s3-object.bin")
    size = ctx.sizes.pg_bytes // 5  # about what a compressed, encrypted dump of pg_bytes stores

    def setup() -> None:
        with open(source, "wb") as f:
            for _ in range(size >> 20):
                f.write(os.urandom(1 << 20))

    common = ["--endpoint", ctx.s3_endpoint, "--bucket", ctx.s3_bucket, "--file", str(source)]
    env = ctx.env()
    env.setdefault("AWS_ACCESS_KEY_ID", "bench")
    env.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    return Group(
        case,
        [
            Variant(
                "S3BackupStorage.put_file", ctx.worker("s3", *common), "boto3 upload_file", env
            ),
            Variant("boto3 upload_file", ctx.worker("s3", "--boto3", *common), env=env),
        ],
        setup=setup,
    )


CLI_SERVER = "bench-cli"  # the pg-cli case's server block, saved by `dbbackup apply`
PG_CLI, PG_PIPE = "pg backup: dbbackup CLI", "shell pipeline pg_dump -Fc -Z0, zstd -T2, age"
PG_CLI_GZIP = "pg_dump -Fc (gzip), next to the CLI"
PG_CLI_TINY = "pg backup: dbbackup CLI, a one-table database"  # the fixed cost of a run


def pg_cli(ctx: Context) -> Group:
    """`dbbackup backup` as a user runs it (a child process: imports, Prefect flow run,
    blocks from the API) next to the shell pipeline doing the same work, and pg_dump -Fc."""
    db = data.ensure_pg(ctx.sizes.pg_bytes)
    home, store, out = ctx.path("cli"), ctx.path("cli-store"), ctx.path("bare.age")
    config, signing = home / "dbbackup.yaml", home / "signing.key"

    def setup() -> None:  # the blocks in the benchmark's API: the CLI reads no yaml when run
        home.mkdir(exist_ok=True)
        keygen = [*CLI, "signing-keygen", "-o", str(signing)]
        run_once(Variant("signing-keygen", keygen, env=ctx.env()))
        server = {"type": "postgres", **PG, "backup_users": False}
        storage = {"type": "local", "path": str(store), "manifest_signing_key_file": str(signing)}
        blocks = {
            "servers": {CLI_SERVER: server},
            "storage": {"default": storage},
            "encryption": {"default": {"identity_file": str(ctx.identity)}},
        }
        config.write_text(json.dumps(blocks, indent=2))  # JSON is YAML
        run_once(Variant("apply", [*CLI, "apply", str(config)], env=ctx.env()))

    def stored() -> None:
        if not list((store / CLI_SERVER / db).glob("*/manifest.json")):
            raise VariantFailed(f"{PG_CLI}: no manifest of {db} under {store}")
        data.log(f"checked {store}: a backup of {db}")

    conn = " ".join(shlex.quote(a) for a in PG_ARGS)
    pipeline = f"pg_dump -Fc -Z0 {conn} {db} | zstd -q -T2 -3 | age -r {ctx.recipient}"
    pipeline += f" > {shlex.quote(str(out))}"
    cli = [*CLI, "backup", CLI_SERVER, "-d", db]
    tiny = [*CLI, "backup", CLI_SERVER, "-d", data.ensure_tiny(1)[0]]
    return Group(
        "8. PostgreSQL backup, CLI end to end",
        [
            Variant(PG_CLI, cli, PG_PIPE, ctx.env(), _remove(store), stored, cwd=ctx.work),
            Variant(PG_CLI_TINY, tiny, PG_PIPE, ctx.env(), _remove(store), cwd=ctx.work),
            Variant(PG_PIPE, _shell(pipeline), after=_remove(out)),
            _with_baseline(pg_dump_variant(ctx, PG_CLI_GZIP, db), PG_PIPE),
        ],
        setup=setup,
    )


BUILDERS = {
    "pg-backup": pg_backup,
    "my-backup": my_backup,
    "pg-restore": pg_restore,
    "my-restore": my_restore,
    "rss": rss,
    "many": many,
    "tiny": tiny,
    "s3": s3,
    "pg-cli": pg_cli,
}
