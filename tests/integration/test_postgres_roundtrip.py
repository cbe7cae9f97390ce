"""PostgreSQL round trips: what a backup holds comes back equal, whatever the schema or name.

Every test backs up with the real `dbbackup` CLI (pg_dump -> zstd -> age -> local
storage), restores with it (pg_restore), and compares source and restored
database through the catalogs and the data, never against hard-coded results.
"""

from __future__ import annotations

import hashlib
import json
import uuid

import pytest
from typer.testing import CliRunner

from tests.helpers import CliResult

# --- the rich schema ------------------------------------------------------

SCHEMA_SQL = r"""
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN positive_int AS integer CONSTRAINT positive CHECK (VALUE > 0);

CREATE TABLE kinds (
    id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    gone text,
    payload bytea,
    doc json,
    docb jsonb,
    ints integer[],
    texts text[],
    amount numeric,
    at timestamptz,
    feeling mood,
    qty positive_int,
    label text,
    label_length integer GENERATED ALWAYS AS (length(label)) STORED,
    updated_count integer NOT NULL DEFAULT 0
);
ALTER TABLE kinds DROP COLUMN gone;
COMMENT ON TABLE kinds IS 'one row per awkward value ✓';
COMMENT ON COLUMN kinds.payload IS 'raw bytes, NULs included';

CREATE FUNCTION bump_updated_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_count := OLD.updated_count + 1;
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION bump_updated_count() IS 'counts updates of a row';
CREATE TRIGGER kinds_bump BEFORE UPDATE ON kinds
    FOR EACH ROW EXECUTE FUNCTION bump_updated_count();

CREATE VIEW happy_kinds AS SELECT id, label FROM kinds WHERE feeling = 'happy';

CREATE TABLE events (id bigint NOT NULL, happened date NOT NULL, note text)
    PARTITION BY RANGE (happened);
CREATE TABLE events_2023 PARTITION OF events FOR VALUES FROM ('2023-01-01') TO ('2024-01-01');
CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE events_later PARTITION OF events DEFAULT;
INSERT INTO events SELECT g, date '2023-01-01' + g * 3, 'event ' || g
    FROM generate_series(0, 299) g;
CREATE MATERIALIZED VIEW event_months AS
    SELECT date_trunc('month', happened) AS month, count(*) AS n FROM events GROUP BY 1;

CREATE TABLE documents (id serial PRIMARY KEY, name text NOT NULL, content oid NOT NULL);
INSERT INTO documents (name, content) VALUES
    ('small', lo_from_bytea(0, '\x00ff00'::bytea)),
    ('empty', lo_from_bytea(0, ''::bytea)),
    ('all bytes', lo_from_bytea(0, (SELECT decode(string_agg(lpad(to_hex(b), 2, '0'), ''
                                     ORDER BY b), 'hex') FROM generate_series(0, 255) b))),
    ('big', lo_from_bytea(0, decode(repeat('00ff7f80', 60000), 'hex')));
DO $$ BEGIN
    EXECUTE format('COMMENT ON LARGE OBJECT %s IS %L',
                   (SELECT content FROM documents WHERE name = 'small'), 'tiny blob');
END $$;

CREATE SEQUENCE ticket_seq START 100 INCREMENT 7;
SELECT setval('ticket_seq', 4242, true);
CREATE SEQUENCE untouched_seq;
CREATE SEQUENCE rewound_seq;
SELECT setval('rewound_seq', 77, false);

CREATE SCHEMA "Other Schema";
COMMENT ON SCHEMA "Other Schema" IS 'a second schema';
CREATE TABLE "Other Schema"."Mixed Case" (
    id serial PRIMARY KEY,
    kind_id integer REFERENCES public.kinds (id),
    tags text[]
);
"""

# the parts that need contrib extensions (absent from some builds, e.g. the PostgreSQL 16 wheel)
CONTRIB_SQL = """
CREATE EXTENSION citext;
CREATE EXTENSION hstore;
CREATE EXTENSION pg_trgm;
ALTER TABLE kinds ADD COLUMN email citext UNIQUE, ADD COLUMN attrs hstore;
CREATE INDEX kinds_label_trgm ON kinds USING gin (label gin_trgm_ops);
"""
CONTRIB_EXTENSIONS = ("citext", "hstore", "pg_trgm")

ALL_BYTES = bytes(range(256))
TEXTS = [
    "emoji 😀🎉👩‍👩‍👧",
    "CJK 漢字 かな 한국어",
    "combining e\u0301 vs precomposed \u00e9",
    "RTL שלום مرحبا",
    "controls tab\there\nnewline\r\\backslash 'single' \"double\" \u200b",
    "",
]
# payload, json, jsonb, int[], text[], numeric, timestamptz, enum, domain, label, citext, hstore
KIND_ROWS = [
    (
        ALL_BYTES,
        '{"b": 1,  "a": 2, "a": 3}',
        '{"nested": {"x": [1, "two", null, true, 1.50]}, "u": "é😀"}',
        [1, None, -3],
        ["a", None, "with,comma", 'with "quote"', "", "NULL"],
        "3.14159265358979323846264338327950288419716939937510582097494459230781640628620899",
        "2024-02-29 23:59:59.999999+05:30",
        "happy",
        1,
        TEXTS[0],
        "Alice@Example.COM",
        '"color"=>"blue", "size"=>NULL',
    ),
    (
        b"\x00\x00nul\x00bytes\x00",
        "[]",
        "{}",
        [],
        [],
        "-0.000000000000000000000000000000000000000000000000000000000001",
        "infinity",
        "sad",
        2147483647,
        TEXTS[1],
        "bob@example.com",
        "",
    ),
    (
        b"",
        "null",
        '"just a string"',
        None,
        None,
        "NaN",
        "-infinity",
        "ok",
        None,
        TEXTS[2],
        None,
        None,
    ),
    (
        None,
        None,
        None,
        [0],
        [None],
        "1e100",
        "1970-01-01 00:00:00+00",
        None,
        7,
        TEXTS[3],
        "c@x",
        None,
    ),
    (
        ALL_BYTES[::-1],
        '{"x": "\\u0000"}',
        "[1, [2, [3]]]",
        None,
        ["ü"],
        "0",
        None,
        "happy",
        3,
        TEXTS[4],
        "d@x",
        None,
    ),
    (
        b"\xff" * 10000,
        "1",
        "2",
        [2, 3],
        ["x"],
        "12345678901234567890.0987654321",
        None,
        None,
        None,
        TEXTS[5],
        "e@x",
        "a=>b",
    ),
]
INSERT_KIND = (
    "INSERT INTO kinds (payload, doc, docb, ints, texts, amount, at, feeling, qty, label{}) "
    "VALUES (%s, %s::json, %s::jsonb, %s::int[], %s::text[], %s::numeric, "
    "%s::timestamptz, %s::mood, %s, %s{})"
)

USER_NAMESPACE = "n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'"
INVENTORY_QUERIES = {
    "schemas": f"""
        SELECT n.nspname, coalesce(obj_description(n.oid, 'pg_namespace'), '')
        FROM pg_namespace n WHERE {USER_NAMESPACE} ORDER BY 1""",
    "relations": f"""
        SELECT n.nspname, c.relname, c.relkind::text, c.relpersistence::text, c.relispopulated,
               coalesce(pg_get_expr(c.relpartbound, c.oid), ''),
               coalesce(obj_description(c.oid, 'pg_class'), '')
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE {USER_NAMESPACE} ORDER BY 1, 2""",
    "columns": f"""
        SELECT n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod),
               a.attnotnull, a.attidentity::text, a.attgenerated::text,
               coalesce(pg_get_expr(d.adbin, d.adrelid), ''),
               coalesce(col_description(c.oid, a.attnum), '')
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE {USER_NAMESPACE} AND a.attnum > 0 AND NOT a.attisdropped
          AND c.relkind IN ('r', 'p', 'v', 'm')
        ORDER BY n.nspname, c.relname, a.attnum""",
    "constraints": f"""
        SELECT n.nspname, c.conrelid::regclass::text, c.contypid::regtype::text, c.conname,
               c.contype::text, pg_get_constraintdef(c.oid)
        FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
        WHERE {USER_NAMESPACE} ORDER BY 1, 2, 3, 4""",
    "indexes": """
        SELECT schemaname, tablename, indexname, indexdef FROM pg_indexes
        WHERE schemaname !~ '^pg_' AND schemaname <> 'information_schema' ORDER BY 1, 2, 3""",
    "views": f"""
        SELECT n.nspname, c.relname, pg_get_viewdef(c.oid)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE {USER_NAMESPACE} AND c.relkind IN ('v', 'm') ORDER BY 1, 2""",
    "functions": f"""
        SELECT n.nspname, p.proname, pg_get_function_identity_arguments(p.oid),
               p.prokind::text, l.lanname, p.prosrc,
               coalesce(obj_description(p.oid, 'pg_proc'), '')
        FROM pg_proc p
        JOIN pg_namespace n ON n.oid = p.pronamespace
        JOIN pg_language l ON l.oid = p.prolang
        WHERE {USER_NAMESPACE} ORDER BY 1, 2, 3""",
    "types": f"""
        SELECT n.nspname, t.typname, t.typtype::text, coalesce(format_type(t.typbasetype, NULL), '')
        FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
        WHERE {USER_NAMESPACE} ORDER BY 1, 2""",
    "enum labels": """
        SELECT t.typname, e.enumlabel FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid
        ORDER BY t.typname, e.enumsortorder""",
    "triggers": """
        SELECT tgrelid::regclass::text, tgname, tgenabled::text, pg_get_triggerdef(oid)
        FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1, 2""",
    "extensions": """
        SELECT e.extname, e.extversion, n.nspname
        FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace ORDER BY 1""",
}


def has_contrib(pg_admin) -> bool:
    """Whether the server can create the contrib extensions the rich schema uses."""
    available = pg_admin.query(
        "postgres",
        "SELECT count(*) FROM pg_available_extensions WHERE name = ANY(%s)",
        (list(CONTRIB_EXTENSIONS),),
    )
    return available[0][0] == len(CONTRIB_EXTENSIONS)


def build_rich_schema(pg_admin, db: str, contrib: bool = True) -> None:
    """Create every kind of object and awkward value the round trip must carry
    (without contrib: all but the citext and hstore columns and the trigram index)."""
    with pg_admin.connect(db) as conn:
        conn.execute(SCHEMA_SQL)
        insert, rows = INSERT_KIND.format("", ""), [row[:-2] for row in KIND_ROWS]
        if contrib:
            conn.execute(CONTRIB_SQL)
            insert, rows = INSERT_KIND.format(", email, attrs", ", %s, %s::hstore"), KIND_ROWS
        with conn.cursor() as cur:
            cur.executemany(insert, rows)
        # the trigger has fired once before the backup: updated_count must come back as 1
        conn.execute("UPDATE kinds SET label = label WHERE id = 1")
        # the identity sequence is advanced past the rows it handed out
        conn.execute("SELECT setval(pg_get_serial_sequence('kinds', 'id'), 1000)")
        conn.execute(
            'INSERT INTO "Other Schema"."Mixed Case" (kind_id, tags) '
            "SELECT id, ARRAY[label, NULL] FROM kinds"
        )


def inventory(pg_admin, db: str) -> dict[str, list[tuple]]:
    """Names and definitions of the objects in the user schemas, with their comments."""
    return {what: pg_admin.query(db, query) for what, query in INVENTORY_QUERIES.items()}


def sequence_states(pg_admin, db: str) -> dict[str, tuple]:
    """(last_value, is_called, start, increment, min, max, cache, cycle) of every sequence."""
    with pg_admin.connect(db) as conn:
        names = conn.execute(
            "SELECT c.oid::regclass::text, s.seqstart, s.seqincrement, s.seqmin, s.seqmax, "
            "s.seqcache, s.seqcycle FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid "
            "ORDER BY 1"
        ).fetchall()
        states = {}
        for name, *options in names:
            last_value, is_called = conn.execute(
                f"SELECT last_value, is_called FROM {name}"
            ).fetchone()
            states[name] = (last_value, is_called, *options)
        return states


def large_objects(pg_admin, db: str) -> list[tuple[int, int, str, str | None]]:
    """(oid, size, sha256, comment) of every large object, in oid order."""
    with pg_admin.connect(db) as conn:
        rows = conn.execute(
            "SELECT oid::bigint, lo_get(oid), obj_description(oid, 'pg_largeobject') "
            "FROM pg_largeobject_metadata ORDER BY oid"
        ).fetchall()
    return [(oid, len(data), hashlib.sha256(data).hexdigest(), note) for oid, data, note in rows]


# --- CLI helpers ----------------------------------------------------------


def backup(env, db: str) -> str:
    """Back up one database with `dbbackup backup --json`; return its backup id."""
    result = env.cli("backup", env.pg, "--database", db, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [(d["database"], d["status"]) for d in report["databases"]] == [
        (db, "ok"),
        ("_globals", "ok"),  # the server's users/roles, backed up with every run
    ]
    return report["databases"][0]["backup_id"]


def restore_named(env, database: str, *options: str) -> CliResult:
    """`dbbackup restore OPTIONS -- SERVER DATABASE`: `--` keeps a name like '-x' an argument."""
    from prefect_dbbackup.flows.cli import app

    args = ["restore", *options, "--storage", env.storage, "--encryption", env.encryption]
    result = CliRunner().invoke(app, [*args, "--", env.pg, database], catch_exceptions=False)
    return CliResult(result.exit_code, result.stdout, result.stderr)


def suffix() -> str:
    """A short random tag that keeps database names unique per run."""
    return uuid.uuid4().hex[:6]


def exactly_63_bytes(prefix: str) -> str:
    """prefix + a random tag, padded to PostgreSQL's 63-byte identifier limit."""
    name = f"{prefix}{suffix()}-"
    name += "x" * (63 - len(name.encode()))
    assert len(name.encode()) == 63
    return name


def fill_small_table(pg_admin, db: str) -> None:
    """A table whose rows include the database's own name."""
    with pg_admin.connect(db) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, name text)")
        conn.execute("INSERT INTO items VALUES (1, %s), (2, 'two'), (3, NULL), (4, '😀')", (db,))


# --- tests ----------------------------------------------------------------


def test_rich_schema_round_trips_exactly(env, pg_db, pg_admin, cleanup_pg):
    """Every data type, object kind, sequence state and large object comes back equal."""
    db = pg_db()
    build_rich_schema(pg_admin, db)
    source_tables = pg_admin.table_fingerprints(db)
    # intent: each partition and the populated materialized view hold rows
    for table in ("public.events_2023", "public.events_2024", "public.events_later"):
        assert source_tables[table][0] > 0
    assert source_tables["public.event_months"][0] > 0

    backup(env, db)
    target = f"{db}_restored"
    cleanup_pg.append(target)
    result = env.cli("restore", env.pg, db, "--into", target)
    assert result.exit_code == 0, result.output

    assert pg_admin.table_fingerprints(target) == source_tables
    assert inventory(pg_admin, target) == inventory(pg_admin, db)
    assert sequence_states(pg_admin, target) == sequence_states(pg_admin, db)
    assert large_objects(pg_admin, target) == large_objects(pg_admin, db)


def test_restored_trigger_and_identity_keep_working(env, pg_db, pg_admin, cleanup_pg):
    """After a restore the trigger fires and the identity continues where the source would."""
    db = pg_db()
    build_rich_schema(pg_admin, db)
    backup(env, db)
    target = f"{db}_restored"
    cleanup_pg.append(target)
    assert env.cli("restore", env.pg, db, "--into", target).exit_code == 0

    def exercise(name: str) -> tuple:
        with pg_admin.connect(name) as conn:
            (count,) = conn.execute(
                "UPDATE kinds SET label = label || '!' WHERE id = 1 RETURNING updated_count"
            ).fetchone()
            (new_id,) = conn.execute(
                "INSERT INTO kinds (label) VALUES ('after') RETURNING id"
            ).fetchone()
            (ticket,) = conn.execute("SELECT nextval('ticket_seq')").fetchone()
            (rewound,) = conn.execute("SELECT nextval('rewound_seq')").fetchone()
            return count, new_id, ticket, rewound

    assert exercise(target) == exercise(db)


ODD_NAMES = {
    "space": (lambda: f"with space {suffix()}", lambda: f"restored copy {suffix()}"),
    "quotes": (lambda: f'it\'s "quoted" {suffix()}', lambda: f"\"dq\" 'sq' {suffix()}"),
    "unicode": (lambda: f"données-é😀 {suffix()}", lambda: f"恢复-ü😀 {suffix()}"),
    "leading-dash": (lambda: f"-leading {suffix()}", lambda: f"--also-leading {suffix()}"),
    "63-bytes": (lambda: exactly_63_bytes("long-"), lambda: exactly_63_bytes("long-target-é-")),
}


@pytest.mark.parametrize("kind", list(ODD_NAMES))
def test_odd_database_name_round_trips(kind, env, pg_db, pg_admin, cleanup_pg):
    """A database with an awkward name is backed up, listed and restored under its exact name."""
    make_source, make_target = ODD_NAMES[kind]
    db, target = make_source(), make_target()
    pg_db(db)
    assert pg_admin.exists(db)  # not silently truncated or altered by PostgreSQL
    fill_small_table(pg_admin, db)

    backup_id = backup(env, db)
    listed = env.cli("list", env.pg, "--database", db, "--json")
    assert listed.exit_code == 0, listed.output
    assert [(b["database"], b["backup_id"]) for b in json.loads(listed.stdout)] == [(db, backup_id)]

    cleanup_pg.append(target)
    result = restore_named(env, db, "--into", target)
    assert result.exit_code == 0, result.output
    assert pg_admin.exists(target)
    assert pg_admin.table_fingerprints(target) == pg_admin.table_fingerprints(db)


def change_content(pg_admin, db: str) -> None:
    """Alter rows, drop some and add a table: the database no longer matches its backup."""
    pg_admin.execute(
        db,
        "UPDATE t SET v = 'changed' WHERE id <= 10;"
        "DELETE FROM t WHERE id > 900;"
        "CREATE TABLE added_later (x int); INSERT INTO added_later VALUES (1);",
    )


def make_table(pg_admin, db: str) -> None:
    pg_admin.execute(
        db,
        "CREATE TABLE t (id int PRIMARY KEY, v text);"
        "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 1000) g;",
    )


def test_restore_with_replace_over_existing_database_restores_backup_state(env, pg_db, pg_admin):
    """--replace drops the existing database and puts back exactly the backed-up content."""
    db = pg_db()
    make_table(pg_admin, db)
    at_backup = pg_admin.table_fingerprints(db)
    backup(env, db)
    change_content(pg_admin, db)
    assert pg_admin.table_fingerprints(db) != at_backup

    result = env.cli("restore", env.pg, db, "--replace")
    assert result.exit_code == 0, result.output
    assert pg_admin.table_fingerprints(db) == at_backup


def test_restore_over_existing_database_without_replace_refuses(env, pg_db, pg_admin, cleanup_pg):
    """Without --replace an existing target is left untouched and the CLI exits 3."""
    db = pg_db()
    make_table(pg_admin, db)
    backup(env, db)
    change_content(pg_admin, db)
    before = pg_admin.table_fingerprints(db)

    result = env.cli("restore", env.pg, db)
    assert result.exit_code == 3, result.output
    assert "--replace" in result.output  # the message says how to proceed
    assert pg_admin.table_fingerprints(db) == before

    # the same holds for an existing database named with --into
    other = pg_db()
    make_table(pg_admin, other)
    change_content(pg_admin, other)
    before_other = pg_admin.table_fingerprints(other)
    result = env.cli("restore", env.pg, db, "--into", other)
    assert result.exit_code == 3, result.output
    assert pg_admin.table_fingerprints(other) == before_other


def test_restore_specific_backup_id(env, pg_db, pg_admin, cleanup_pg):
    """--backup-id picks that backup, not the latest one."""
    db = pg_db()
    make_table(pg_admin, db)
    first_state = pg_admin.table_fingerprints(db)
    first_id = backup(env, db)
    change_content(pg_admin, db)
    second_state = pg_admin.table_fingerprints(db)
    second_id = backup(env, db)
    assert first_id != second_id and first_state != second_state

    for backup_id, expected in ((first_id, first_state), (second_id, second_state)):
        target = f"{db}_{backup_id}"
        cleanup_pg.append(target)
        result = env.cli("restore", env.pg, db, "--into", target, "--backup-id", backup_id)
        assert result.exit_code == 0, result.output
        assert pg_admin.table_fingerprints(target) == expected, backup_id
