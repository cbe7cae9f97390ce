"""Benchmark databases: built once, found again by name and a marker table holding their size.

Every name starts with dbb_bench_ (the example config excludes dbb_*). A database
is complete only when its marker row says so: an interrupted build is rebuilt.
Drop them all with `python3 -m tests.benchmarks.run --drop-data`.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass

from psycopg import sql

from tests.helpers import PG, MyAdmin, PgAdmin

PREFIX = "dbb_bench_"
MARKER = "dbb_bench_marker"
MB = 10**6
TINY_COUNTS = (100, 1000)  # the tiny case measures each count
MANY_COUNT = 8


@dataclass(frozen=True)
class Sizes:
    """Database sizes of one run profile (--size)."""

    label: str
    pg_bytes: int
    my_bytes: int
    small_pg_bytes: int  # the "100 MB" database of the RSS comparison
    many_bytes: int  # each of the MANY_COUNT databases


PROFILES = {
    "100MB": Sizes("100mb", 100 * MB, 50 * MB, 100 * MB, 12 * MB),
    "1GB": Sizes("1gb", 1000 * MB, 500 * MB, 100 * MB, 100 * MB),
}

pg, my = PgAdmin(), MyAdmin()


def log(message: str) -> None:
    print(f"[data] {message}", flush=True)


def pg_content(database: str) -> dict[str, tuple[int, int]]:
    """(row count, order-independent checksum of the rows) per table, streamed by the server
    (the string_agg fingerprint of tests.helpers would not fit a large table in memory)."""
    tables = pg.query(
        database,
        "SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) FROM pg_tables "
        "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
    )
    return {
        t: tuple(
            pg.query(
                database,
                f"SELECT count(*), coalesce(sum(hashtextextended(r::text, 0)::numeric), 0) "
                f"FROM {t} r",
            )[0]
        )
        for (t,) in tables
    }


def my_content(database: str) -> dict[str, tuple[int, int]]:
    """(row count, CHECKSUM TABLE) per base table."""
    tables = my.query(
        None,
        "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s "
        "AND TABLE_TYPE = 'BASE TABLE' ORDER BY 1",
        (database,),
    )
    content = {}
    for (table,) in tables:
        ref = f"{my.q(database)}.{my.q(table)}"
        [(count,)] = my.query(None, f"SELECT count(*) FROM {ref}")
        [(_, checksum)] = my.query(None, f"CHECKSUM TABLE {ref} EXTENDED")
        content[table] = (count, checksum)
    return content


def size_name(nbytes: int) -> str:
    return f"{nbytes // MB}mb"


# --- PostgreSQL -------------------------------------------------------------


def _pg_marker(name: str) -> int | None:
    if not pg.exists(name):
        return None
    rows = pg.query(name, f"SELECT to_regclass('{MARKER}') IS NOT NULL")
    if not rows[0][0]:
        return None
    return pg.query(name, f"SELECT max(target_bytes) FROM {MARKER}")[0][0]


def _pg_size(name: str) -> int:
    return pg.query("postgres", "SELECT pg_database_size(%s)", (name,))[0][0]


def ensure_pg(nbytes: int) -> str:
    """A PostgreSQL database of about nbytes: pgbench tables (~60%) plus jsonb/text rows."""
    name = f"{PREFIX}pg_{size_name(nbytes)}"
    if _pg_marker(name) == nbytes:
        return name
    log(f"building {name} (~{nbytes // MB} MB)")
    started = time.monotonic()
    pg.drop(name)
    pg.create(name)
    scale = max(1, round(0.6 * nbytes / (15.5 * MB)))
    subprocess.run(
        ["pgbench", "-i", "-q", "-s", str(scale), "-h", PG["host"], "-p", str(PG["port"])]
        + ["-U", PG["user"], name],
        check=True,
        capture_output=True,
    )
    pg.execute(
        name,
        "CREATE TABLE docs (id bigint PRIMARY KEY, created timestamptz, doc jsonb, body text)",
    )
    next_id = 1
    while (size := _pg_size(name)) < 0.97 * nbytes:
        rows = int(min(200_000, max(2_000, (nbytes - size) / 600)))
        pg.execute(
            name,
            "INSERT INTO docs SELECT g, now() - g * interval '1 second', jsonb_build_object("
            "'user', g % 1000, 'tags', jsonb_build_array(md5(g::text), g % 7), "
            "'score', random(), 'name', 'customer ' || (g % 5000)), "
            "repeat(md5(random()::text) || ' lorem ipsum dolor sit amet ', 6) "
            f"FROM generate_series({next_id}, {next_id + rows - 1}) g",
        )
        next_id += rows
    pg.execute(name, "VACUUM ANALYZE")
    pg.execute(name, f"CREATE TABLE {MARKER} (target_bytes bigint)")
    pg.execute(name, f"INSERT INTO {MARKER} VALUES ({nbytes})")
    log(f"built {name}: {_pg_size(name) / MB:.0f} MB in {time.monotonic() - started:.0f} s")
    return name


def _pg_copy(template: str, name: str) -> None:
    with pg.connect() as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        )


def ensure_pg_copies(nbytes: int, count: int) -> list[str]:
    """count PostgreSQL databases of about nbytes each (template copies of one built db)."""
    template = ensure_pg(nbytes)
    names = [f"{PREFIX}many_{size_name(nbytes)}_{i}" for i in range(count)]
    for name in names:
        if _pg_marker(name) != nbytes:
            pg.drop(name)
            _pg_copy(template, name)
    return names


def ensure_tiny(count: int) -> list[str]:
    """count tiny PostgreSQL databases (one table of 100 rows each)."""
    template = f"{PREFIX}tiny_template"
    if _pg_marker(template) != 0:
        pg.drop(template)
        pg.create(template)
        pg.execute(
            template,
            "CREATE TABLE t (id int PRIMARY KEY, v text);"
            "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 100) g;"
            f"CREATE TABLE {MARKER} (target_bytes bigint); INSERT INTO {MARKER} VALUES (0)",
        )
    existing = {r[0] for r in pg.query("postgres", "SELECT datname FROM pg_database")}
    names = [f"{PREFIX}tiny_{i:03d}" for i in range(count)]
    # CREATE DATABASE ... TEMPLATE is atomic: a copy that exists is complete
    missing = [n for n in names if n not in existing]
    if missing:
        log(f"creating {len(missing)} tiny databases")
    for name in missing:
        _pg_copy(template, name)
    return names


# --- MariaDB ----------------------------------------------------------------


def _my_marker(name: str) -> int | None:
    if not my.exists(name):
        return None
    rows = my.query(
        None,
        "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
        (name, MARKER),
    )
    if not rows:
        return None
    return my.query(name, f"SELECT max(target_bytes) FROM {MARKER}")[0][0]


def _my_size(name: str) -> int:
    rows = my.query(
        None,
        "SELECT coalesce(sum(DATA_LENGTH + INDEX_LENGTH), 0) FROM information_schema.TABLES "
        "WHERE TABLE_SCHEMA = %s",
        (name,),
    )
    return int(rows[0][0])


def ensure_my(nbytes: int) -> str:
    """A MariaDB database of about nbytes: an orders table with text notes and an index."""
    name = f"{PREFIX}my_{size_name(nbytes)}"
    if _my_marker(name) == nbytes:
        return name
    log(f"building {name} (~{nbytes // MB} MB)")
    started = time.monotonic()
    my.drop(name)
    my.create(name)
    my.execute(
        name,
        "CREATE TABLE orders (id bigint PRIMARY KEY, customer int NOT NULL, sku varchar(32), "
        "qty int, price decimal(10,2), created datetime, note text, KEY (customer)) "
        "ENGINE=InnoDB",
    )
    next_id = 1
    while (size := _my_size(name)) < 0.97 * nbytes:
        rows = int(min(200_000, max(2_000, (nbytes - size) / 320)))
        my.execute(
            name,
            "INSERT INTO orders SELECT seq, seq % 50000, concat('SKU-', seq % 9973), seq % 17, "
            "(seq % 10000) / 100, '2024-01-01' + INTERVAL (seq % 31536000) SECOND, "
            "repeat(concat(md5(rand()), ' lorem ipsum dolor '), 4) "
            f"FROM seq_{next_id}_to_{next_id + rows - 1}",
            "ANALYZE TABLE orders",
        )
        next_id += rows
    my.execute(
        name,
        f"CREATE TABLE {MARKER} (target_bytes bigint)",
        f"INSERT INTO {MARKER} VALUES ({nbytes})",
    )
    log(f"built {name}: {_my_size(name) / MB:.0f} MB in {time.monotonic() - started:.0f} s")
    return name


# --- cleanup ----------------------------------------------------------------


def drop_all() -> list[str]:
    """Drop every dbb_bench_* database on both servers; return their names."""
    pg_names = [
        r[0]
        for r in pg.query(
            "postgres", "SELECT datname FROM pg_database WHERE datname LIKE 'dbb\\_bench\\_%'"
        )
    ]
    my_names = [
        r[0]
        for r in my.query(
            None,
            "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA "
            "WHERE SCHEMA_NAME LIKE 'dbb\\_bench\\_%'",
        )
    ]
    for name in pg_names:
        pg.drop(name)
    for name in my_names:
        my.drop(name)
    return pg_names + my_names
