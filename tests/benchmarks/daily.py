"""A copy of a benchmark database changed day by day, and a restic repository beside it.

Shared by the dedup benchmarks (dedup_chain: chunkers on dump files; dedup_pipeline:
dbbackup's own backups). Between two days about 1% of the rows are UPDATEd and 0.5%
INSERTed, either all over the tables (`uniform`), among the newest 5% of the rows (`hot`,
the append-mostly shape of most business data; `hot1`: the newest 1%, every one of them
updated), or 90% hot and 10% anywhere (`mixed`).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from pathlib import Path

from tests.benchmarks import data
from tests.helpers import MY, PG

HOT = {"hot": 0.05, "hot1": 0.01}  # share of the newest rows that the updates land in
PATTERNS = (*HOT, "mixed", "uniform")


class PgChain:
    """The PostgreSQL chain database, a template copy of the benchmark database."""

    name = f"{data.PREFIX}chain_pg"
    suffix = "pgc"

    def __init__(self, nbytes: int) -> None:
        self.template = data.ensure_pg(nbytes)

    def create(self) -> None:
        data.pg.drop(self.name)
        data._pg_copy(self.template, self.name)

    def drop(self) -> None:
        data.pg.drop(self.name)

    def dump(self, path: Path) -> None:
        argv = ["pg_dump", "-Fc", "-Z0", "-h", PG["host"], "-p", str(PG["port"])]
        argv += ["-U", PG["user"], "-f", str(path), self.name]
        subprocess.run(argv, check=True)

    def change(self, day: int, pattern: str) -> None:
        """About 1% of the rows updated and 0.5% inserted in both large tables."""
        statements = [f"SELECT setseed({(day % 97) / 100})"]
        for table, key, update, insert in (
            (
                "pgbench_accounts",
                "aid",
                "abalance = abalance + 1",
                "SELECT g, 1 + g / 100000, 0, '' FROM generate_series({a}, {b}) g",
            ),
            (
                "docs",
                "id",
                "doc = jsonb_set(doc, '{{score}}', to_jsonb(random()))",
                "SELECT g, now(), jsonb_build_object('user', g % 1000, 'score', random(), "
                "'name', 'customer ' || (g % 5000)), "
                "repeat(md5(random()::text) || ' lorem ipsum dolor sit amet ', 6) "
                "FROM generate_series({a}, {b}) g",
            ),
        ):
            [(count, top)] = data.pg.query(self.name, f"SELECT count(*), max({key}) FROM {table}")
            statements += [
                f"UPDATE {table} SET {update.format()} WHERE {key} > {low} AND random() < {share}"
                for low, share in _ranges(count, top, pattern)
            ]
            statements.append(
                f"INSERT INTO {table} " + insert.format(a=top + 1, b=top + count // 200)
            )
        with data.pg.connect(self.name) as conn:
            for statement in statements:
                conn.execute(statement)
            conn.execute("VACUUM ANALYZE")


class MyChain:
    """The MariaDB chain database, a table-by-table copy of the benchmark database."""

    name = f"{data.PREFIX}chain_my"
    suffix = "sql"

    def __init__(self, nbytes: int) -> None:
        self.template = data.ensure_my(nbytes)

    def create(self) -> None:
        data.my.drop(self.name)
        data.my.create(self.name)
        for (table,) in data.my.query(
            None,
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s",
            (self.template,),
        ):
            src, dst = f"{data.my.q(self.template)}.{table}", f"{data.my.q(self.name)}.{table}"
            data.my.execute(
                None, f"CREATE TABLE {dst} LIKE {src}", f"INSERT {dst} SELECT * FROM {src}"
            )

    def drop(self) -> None:
        data.my.drop(self.name)

    def dump(self, path: Path) -> None:
        argv = ["mariadb-dump", "--no-defaults", "-h", MY["host"], "-P", str(MY["port"]), "-u"]
        argv += [MY["user"], "--single-transaction", "--quick", "--routines", "--triggers"]
        argv += ["--hex-blob", "--default-character-set=utf8mb4", "--skip-dump-date"]
        argv += [f"--result-file={path}", self.name]
        subprocess.run(argv, check=True)

    def change(self, day: int, pattern: str) -> None:
        [(count, top)] = data.my.query(None, f"SELECT count(*), max(id) FROM {self.name}.orders")
        table = f"{data.my.q(self.name)}.orders"
        updates = [
            f"UPDATE {table} SET qty = qty + 1 WHERE id > {low} AND rand({day}) < {share}"
            for low, share in _ranges(count, top, pattern)
        ]
        data.my.execute(
            self.name,
            *updates,
            f"INSERT INTO {table} SELECT seq, seq % 50000, concat('SKU-', seq % 9973), "
            "seq % 17, (seq % 10000) / 100, '2024-01-01' + INTERVAL (seq % 31536000) SECOND, "
            "repeat(concat(md5(rand()), ' lorem ipsum dolor '), 4) "
            f"FROM seq_{top + 1}_to_{top + count // 200}",
        )


def _ranges(count: int, top: int, pattern: str) -> list[tuple[int, float]]:
    """(lowest key excluded, sampling probability) pairs so that ~1% of count rows are hit."""
    fraction = HOT.get(pattern, HOT["hot"])
    hot = (int(top - fraction * count), 0.01 / fraction)
    if pattern == "uniform":
        return [(0, 0.01)]
    if pattern == "mixed":  # 90% of the updates in the hot tail, 10% anywhere
        return [(hot[0], 0.9 * hot[1]), (0, 0.001)]
    return [hot]


def make_chain(engine: str, sizes: data.Sizes) -> PgChain | MyChain:
    """The chain database of an engine ("pg" or "my") for a size profile."""
    return PgChain(sizes.pg_bytes) if engine == "pg" else MyChain(sizes.my_bytes)


def tree_bytes(root: Path) -> int:
    """Bytes of all files under root (their apparent size, as `du -sb` counts them)."""
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


class Restic:
    """One restic repository in a scratch dir; the password only in the environment."""

    def __init__(self, root: Path) -> None:
        self.repo = root / "restic"
        self.env = {**os.environ, "RESTIC_PASSWORD": secrets.token_hex(16)}
        self.env["RESTIC_REPOSITORY"] = str(self.repo)
        self.env["RESTIC_CACHE_DIR"] = str(root / "restic-cache")
        subprocess.run(
            ["restic", "init", "--repository-version", "2"],
            env=self.env,
            check=True,
            capture_output=True,
        )

    def size(self) -> int:
        return tree_bytes(self.repo)

    def backup(self, path: Path, name: str) -> tuple[int, float]:
        before = self.size()
        started = time.perf_counter()
        with path.open("rb") as f:
            subprocess.run(
                ["restic", "backup", "--quiet", "--stdin", "--stdin-filename", name],
                stdin=f,
                env=self.env,
                check=True,
            )
        return self.size() - before, time.perf_counter() - started
