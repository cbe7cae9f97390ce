"""Hostile database names (`%`, `:name`, quotes, newlines, unicode, leading `-`) on both engines.

A name must reach the server exactly: `ft_%` is never `ft_%%` (SQLAlchemy's identifier
preparer doubles `%`; `text()` reads `:name` as a bind parameter). The DDL layer is
checked with generated names on the real servers; the CLI with explicit round trips,
each next to decoy databases whose names a misquoting would hit.

What the servers accept (seen on PostgreSQL 15 and MariaDB 10.11): PostgreSQL takes any
character but NUL and cuts names at 63 bytes (dbbackup refuses longer names instead);
MariaDB takes `/`, `\\`, `.`, quotes, backticks, newlines and control characters, but no
trailing space, no character outside the BMP (1300 Invalid utf8mb4 character string)
and at most 64 characters.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prefect_dbbackup.blocks import MySQLServer, PostgresServer
from prefect_dbbackup.blocks.errors import ConfigError
from prefect_dbbackup.blocks.server import DatabaseServer
from psycopg import sql as pgsql

from tests.helpers import MY, PG, MyAdmin, PgAdmin

HOSTILE = list("%:?\\'\"`\n ;$()/.-é€ßsxn") + ["%%", "%s", "%(x)s", ":name", "\t"]


@dataclass
class Engine:
    """One real server: the block under test and an admin that quotes on its own."""

    name: str
    block: DatabaseServer
    admin: PgAdmin | MyAdmin

    def named(self, prefix: str) -> set[str]:
        rows = (
            self.admin.query("postgres", "SELECT datname FROM pg_database")
            if self.name == "postgres"
            else self.admin.query(None, "SHOW DATABASES")
        )
        return {r[0] for r in rows if r[0].startswith(prefix)}

    def add_table(self, database: str, table: str, value: str) -> None:
        # no parameters: with them, the drivers read a `%` in the table name as a placeholder
        if self.name == "postgres":
            with self.admin.connect(database) as conn:
                conn.execute(pgsql.SQL("CREATE TABLE {} (v text)").format(pgsql.Identifier(table)))
                conn.execute(
                    pgsql.SQL("INSERT INTO {} VALUES ({})").format(
                        pgsql.Identifier(table), pgsql.Literal(value)
                    )
                )
        else:
            with self.admin.connect(database) as conn, conn.cursor() as cur:
                cur.execute(f"CREATE TABLE {MyAdmin.q(table)} (v text)")
                cur.execute(f"INSERT INTO {MyAdmin.q(table)} VALUES ({conn.escape(value)})")

    def values(self, database: str, table: str) -> list[str]:
        if self.name == "postgres":
            with self.admin.connect(database) as conn:
                query = pgsql.SQL("SELECT v FROM {}").format(pgsql.Identifier(table))
                return [r[0] for r in conn.execute(query)]
        with self.admin.connect(database) as conn, conn.cursor() as cur:
            cur.execute(f"SELECT v FROM {MyAdmin.q(table)}")
            return [r[0] for r in cur.fetchall()]


@pytest.fixture(params=["postgres", "mysql"])
def engine(request: pytest.FixtureRequest) -> Engine:
    if request.param == "postgres":
        return Engine("postgres", PostgresServer(**PG), PgAdmin())
    return Engine("mysql", MySQLServer(**MY), MyAdmin())


def suffixes(engine: str) -> st.SearchStrategy[str]:
    alphabet = HOSTILE + (["😀", "\x01"] if engine == "postgres" else [])
    names = st.lists(st.sampled_from(alphabet), min_size=1, max_size=8).map("".join)
    # MariaDB refuses trailing white space; both engines limit the length (an 11 char prefix)
    return names.filter(lambda s: not s[-1].isspace() and len(s.encode()) <= 48)


def decoys_of(suffix: str) -> set[str]:
    """Names a misquoting of suffix would reach: `%` doubled or halved, `:name` dropped."""
    decoys = {
        suffix.replace("%", "%%"),
        suffix.replace("%%", "%"),
        suffix.replace(":name", ""),
        suffix.replace("``", "`"),
    } - {suffix, ""}
    # like the names themselves: none ends in white space (MariaDB refuses it: '\t:name')
    return {d for d in decoys if not d[-1].isspace()}


def test_ddl_reaches_the_server_with_the_exact_name(engine: Engine) -> None:
    """create, exists, count rows, rename (PostgreSQL) and drop with generated names, next to
    decoys: afterwards exactly the expected databases exist, and no decoy was touched."""
    prefix = f"hn{uuid.uuid4().hex[:8]}_"

    @settings(
        max_examples=10,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        database=None,
    )
    @given(suffix=suffixes(engine.name))
    def check(suffix: str) -> None:
        name, decoys = prefix + suffix, {prefix + d for d in decoys_of(suffix)}
        block = engine.block
        try:
            for decoy in decoys:
                engine.admin.create(decoy)
            block.create_database(name, {})
            assert engine.named(prefix) == decoys | {name}
            assert block.database_exists(name)
            engine.add_table(name, suffix, "payload")  # a hostile table name too
            assert block.table_row_counts(name) == {_recorded(engine, suffix): 1}
            if block.engine.supports_rename:
                target = prefix + "t" + suffix
                engine.admin.create(target)
                block.swap_database(name, target)
                assert engine.named(prefix) == decoys | {target}
                assert engine.values(target, suffix) == ["payload"]
                name = target
            block.drop_database(name)
            assert engine.named(prefix) == decoys
        finally:
            for leftover in engine.named(prefix):
                engine.admin.drop(leftover)

    check()


def _recorded(engine: Engine, table: str) -> str:
    """How the manifest names a table: PostgreSQL quote_ident's schema-qualified form."""
    if engine.name == "postgres":
        return "public." + engine.admin.query("postgres", "SELECT quote_ident(%s)", (table,))[0][0]
    return table


def test_postgres_refuses_a_name_it_would_truncate(pg_admin: PgAdmin) -> None:
    """63 bytes is the limit: `DROP DATABASE <64 bytes>` would drop the 63-byte database."""
    block = PostgresServer(**PG)
    short = f"hn{uuid.uuid4().hex[:8]}_" + "é" * 26  # 11 + 52 = 63 bytes
    pg_admin.create(short)
    try:
        with pytest.raises(ConfigError, match="at most 63 bytes"):
            block.drop_database(short + "x")
        with pytest.raises(ConfigError, match="at most 63 bytes"):
            block.create_database(short + "x", {})
        assert pg_admin.exists(short)
    finally:
        pg_admin.drop(short)


def _cli_round_trip(env, server: str, engine: Engine, names: dict[str, str]) -> None:
    """Back up, list, restore --replace, restore into new names and verify hostile names;
    every decoy keeps its own contents. names: source database -> its --into name."""
    admin, decoys = engine.admin, [d for s in names for d in (s + "%", s.replace(":name", ""))]
    fingerprints = {db: admin.table_fingerprints(db) for db in [*names, *decoys]}
    base = ["--storage", env.storage, "--encryption", env.encryption]

    result = env.cli("backup", server, *base, *(f"--database={db}" for db in names), "--json")
    assert result.exit_code == 0, result.output
    listed = json.loads(env.cli("list", server, "--json").stdout)
    assert {b["database"] for b in listed if b["kind"] == "database"} == set(names)

    for source, into in names.items():
        engine.add_table(source, "added_later", "x")  # --replace must bring back the backup
        result = env.cli("restore", *base, "--replace", "--", server, source)
        assert result.exit_code == 0, result.output
        result = env.cli("restore", *base, f"--into={into}", "--", server, source)
        assert result.exit_code == 0, result.output
        assert admin.table_fingerprints(source) == fingerprints[source]
        assert admin.table_fingerprints(into) == fingerprints[source]

    result = env.cli("verify", server, *base, "--json")
    assert result.exit_code == 0, result.output
    assert {d["database"] for d in json.loads(result.stdout)["databases"]} >= set(names)
    for decoy in decoys:
        assert admin.table_fingerprints(decoy) == fingerprints[decoy], decoy


def _hostile_databases(engine: Engine, make, tag: str, unicode: str) -> dict[str, str]:
    """Source databases with data (and their decoys, `%` doubled and `:name` left out)."""
    sources = {
        f"ft_{tag}_%": f"ft_{tag}_%%new",
        f"{tag} x:name %s %(x)s ?": f"{tag} q'\"`\\ \nx{unicode}",
        f"-{tag}-lead %%": f"-{tag}-into",
    }
    for source in sources:
        for db in (source, source + "%", source.replace(":name", "")):
            if not engine.admin.exists(db):
                make(db)
                engine.add_table(db, "t", f"rows of {db}")
    return sources


def test_postgres_hostile_names_round_trip_through_the_cli(env, pg_db, cleanup_pg) -> None:
    engine = Engine("postgres", PostgresServer(**PG), PgAdmin())
    names = _hostile_databases(engine, pg_db, uuid.uuid4().hex[:6], "é😀")
    cleanup_pg.extend(names.values())
    _cli_round_trip(env, env.pg, engine, names)


def test_mysql_hostile_names_round_trip_through_the_cli(env, my_db, cleanup_my) -> None:
    engine = Engine("mysql", MySQLServer(**MY), MyAdmin())
    names = _hostile_databases(engine, my_db, uuid.uuid4().hex[:6], "é€")
    cleanup_my.extend(names.values())
    _cli_round_trip(env, env.my, engine, names)


def test_mysql_names_of_64_non_ascii_characters_round_trip(env, my_db, cleanup_my) -> None:
    """64 characters is MariaDB's limit; percent-encoded they would be 384-576 characters,
    more than one key segment (a file name) holds: they are stored in the compact form."""
    tag = uuid.uuid4().hex[:4]
    source = my_db(tag + "é" * 30 + "€" * 30)
    into = tag + "é" * 60  # (MariaDB itself refuses 60 "€": its file name would be too long)
    assert len(source) == len(into) == 64
    cleanup_my.append(into)
    admin = MyAdmin()
    engine = Engine("mysql", MySQLServer(**MY), admin)
    engine.add_table(source, "t", "long name rows")
    base = ["--storage", env.storage, "--encryption", env.encryption]
    result = env.cli("backup", env.my, *base, f"--database={source}")
    assert result.exit_code == 0, result.output
    listed = json.loads(env.cli("list", env.my, "--json", "--database", source).stdout)
    assert [b["database"] for b in listed if b["kind"] == "database"] == [source]
    result = env.cli("restore", *base, f"--into={into}", "--", env.my, source)
    assert result.exit_code == 0, result.output
    assert admin.table_fingerprints(into) == admin.table_fingerprints(source)
    result = env.cli("verify", env.my, *base, "--database", source)
    assert result.exit_code == 0, result.output
