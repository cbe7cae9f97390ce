"""MariaDB round trips: every data type, schema object and odd database name comes back equal.

Each test builds a fresh database, backs it up with `dbbackup backup`, restores it with
`dbbackup restore` and compares the restored database with the source (never with
hard-coded values), so the assertions hold whatever MariaDB itself does with the data.
"""

from __future__ import annotations

import json
import uuid
from decimal import Decimal

import pytest
from typer.testing import CliRunner

from tests.helpers import BlockEnv, CliResult, MyAdmin

ALL_BYTES = bytes(range(256))
TRICKY_TEXT = (
    "emoji 😀🎉👩‍👩‍👧 CJK 漢字かなカナ한국어 café ünï "
    "quote ' dquote \" backslash \\ NUL \x00 CR \r LF \n ctrl-Z \x1a tab \t end"
)

# MariaDB keeps routine, trigger and column comment text in utf8mb3: 4-byte characters
# (emoji) there turn into '?' already in the source, so metadata uses BMP characters only.
SCHEMA = [
    "CREATE TABLE kinds (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(20) NOT NULL UNIQUE)",
    """CREATE TABLE items (
        id INT AUTO_INCREMENT PRIMARY KEY,
        kind_id INT NULL,
        label VARCHAR(100) COMMENT 'étiquette ☺',
        body MEDIUMTEXT,
        blob_small BLOB,
        blob_big LONGBLOB,
        raw VARBINARY(300),
        amount DECIMAL(30,10),
        ratio DOUBLE,
        happened DATETIME(6),
        stamped TIMESTAMP(6) NULL DEFAULT NULL,
        doc JSON,
        size ENUM('small', 'medium', 'large', 'ünïcode'),
        flags SET('red', 'green', 'blue'),
        qty INT NOT NULL DEFAULT 1,
        total DECIMAL(40,10) AS (amount * qty) STORED,
        label_upper VARCHAR(100) AS (UPPER(label)) VIRTUAL,
        doc_name VARCHAR(100) AS (JSON_VALUE(doc, '$.name')) VIRTUAL,
        CONSTRAINT items_kind FOREIGN KEY (kind_id) REFERENCES kinds (id)
    ) COMMENT 'items ✓'""",
    "CREATE TABLE audit (id INT AUTO_INCREMENT PRIMARY KEY, item_id INT, note VARCHAR(200))",
    # an AFTER INSERT trigger: restoring it before the data would double the audit rows
    """CREATE TRIGGER items_audit AFTER INSERT ON items FOR EACH ROW
        INSERT INTO audit (item_id, note) VALUES (NEW.id, CONCAT('added ', COALESCE(NEW.label, '∅')))""",
    """CREATE TRIGGER items_qty BEFORE INSERT ON items FOR EACH ROW
        BEGIN
            SET NEW.qty = GREATEST(NEW.qty, 1);
        END""",
    """CREATE VIEW kind_totals AS
        SELECT k.name, COUNT(i.id) AS n, SUM(i.total) AS total
        FROM kinds k LEFT JOIN items i ON i.kind_id = k.id GROUP BY k.name""",
    # sorts before the view it depends on
    "CREATE VIEW big_kinds AS SELECT name, total FROM kind_totals WHERE n > 1",
    """CREATE PROCEDURE item_summary(IN min_qty INT, OUT n INT)
        READS SQL DATA COMMENT 'résumé ☺'
        BEGIN
            SELECT COUNT(*) INTO n FROM items WHERE qty >= min_qty;
            SELECT id, label, total, label_upper FROM items WHERE qty >= min_qty ORDER BY id;
        END""",
    """CREATE FUNCTION kind_total(kind VARCHAR(20)) RETURNS DECIMAL(40,10)
        READS SQL DATA
        RETURN (SELECT COALESCE(SUM(i.total), 0) FROM items i
                JOIN kinds k ON k.id = i.kind_id WHERE k.name = kind)""",
    """CREATE FUNCTION greet(who VARCHAR(50)) RETURNS VARCHAR(100) DETERMINISTIC
        RETURN CONCAT('¡Hola ', who, ' ☺!')""",
    """CREATE EVENT purge_audit ON SCHEDULE EVERY 1 DAY STARTS '2037-01-01 03:00:00'
        ON COMPLETION PRESERVE ENABLE COMMENT 'nightly ☾'
        DO DELETE FROM audit WHERE note IS NULL""",
    """CREATE EVENT one_shot ON SCHEDULE AT '2037-06-01 00:00:00'
        ON COMPLETION PRESERVE DISABLE DO UPDATE items SET qty = qty + 1""",
]

ITEM_COLUMNS = (
    "kind_id, label, body, blob_small, blob_big, raw, amount, ratio, happened, stamped, doc, "
    "size, flags, qty"
)
ITEMS = [
    (
        1,
        "all bytes ☕",
        TRICKY_TEXT,
        ALL_BYTES,
        ALL_BYTES * 4096 + b"\x00" * 1000,
        b"\x00\x00'\"\\\x1a\n\r" + ALL_BYTES[::-1],
        Decimal("-12345678901234567890.0123456789"),
        0.1,
        "1000-01-01 00:00:00.000001",
        "1970-01-01 00:00:01.000001",
        '{"name": "café ☕", "n": [1, 2.5, null, true], "nested": {"emoji": "😀"}}',
        "ünïcode",
        "red,blue",
        3,
    ),
    (
        1,
        "nul\x00inside",
        "漢字 only",
        b"\x00",
        b"",
        b"",
        Decimal("99999999999999999999.9999999999"),
        -1.7976931348623157e308,
        "9999-12-31 23:59:59.999999",
        "2038-01-19 03:14:07.999999",
        '{"name": null}',
        "small",
        "",
        0,
    ),
    (
        2,
        "tiny",
        "",
        b"\xff" * 3,
        b"\x00" * 70000,
        b"\x00",
        Decimal("-0.0000000001"),
        1 / 3,
        "2024-02-29 12:34:56.789012",
        "2024-02-29 12:34:56.000000",
        "[]",
        "large",
        "red,green,blue",
        7,
    ),
    (None,) + (None,) * 12 + (1,),
]


def make_id() -> str:
    """A short random suffix that keeps names unique per run."""
    return uuid.uuid4().hex[:6]


def run(my_admin: MyAdmin, database: str, statement: str, params=None) -> None:
    """Execute one statement (with parameters) in UTC."""
    with my_admin.connect(database) as conn, conn.cursor() as cur:
        cur.execute("SET time_zone = '+00:00'")
        cur.execute(statement, params)


def build_rich_database(my_admin: MyAdmin, db: str) -> None:
    """Tables of every tricky type, views, triggers, routines and events, with data."""
    run(my_admin, db, f"ALTER DATABASE {my_admin.q(db)} COLLATE utf8mb4_unicode_520_ci")
    for statement in SCHEMA:
        run(my_admin, db, statement)
    run(my_admin, db, "INSERT INTO kinds (name) VALUES ('tools'), ('toys'), ('unused ✗')")
    placeholders = ", ".join(["%s"] * len(ITEMS[0]))
    for item in ITEMS:
        run(my_admin, db, f"INSERT INTO items ({ITEM_COLUMNS}) VALUES ({placeholders})", item)
    # counters past max(id): explicitly for items, by deleting the newest row for audit
    run(my_admin, db, "ALTER TABLE items AUTO_INCREMENT = 1000")
    run(my_admin, db, "DELETE FROM audit ORDER BY id DESC LIMIT 1")


def backup(env: BlockEnv, database: str) -> dict:
    """`dbbackup backup --database DB --json`; asserts success and returns the outcome."""
    result = env.cli("backup", env.my, "--database", database, "--json")
    assert result.exit_code == 0, result.output
    outcomes = json.loads(result.stdout)["databases"]
    # the server's users/roles are backed up with every run, as `_globals`
    assert [(o["database"], o["status"]) for o in outcomes] == [
        (database, "ok"),
        ("_globals", "ok"),
    ], outcomes
    return outcomes[0]


def restore(env: BlockEnv, database: str, *args: str) -> CliResult:
    """`dbbackup restore SERVER DATABASE ARGS`.

    A name starting with '-' would be read as an option, so like a user it goes after
    `--`, with every option before it: `dbbackup restore SERVER OPTIONS -- -name`.
    """
    if not database.startswith("-"):
        return env.cli("restore", env.my, database, *args)
    from prefect_dbbackup.flows.cli import app

    command = ["restore", env.my, *args, "--storage", env.storage]
    command += ["--encryption", env.encryption, "--", database]
    result = CliRunner().invoke(app, command, catch_exceptions=False)
    return CliResult(result.exit_code, result.stdout, result.stderr)


def schema_objects(my_admin: MyAdmin, db: str) -> dict[str, list[tuple]]:
    """Everything information_schema says about the objects of db (without timestamps)."""
    q = my_admin.q(db)
    objects = {
        "tables": my_admin.query(
            db,
            "SELECT TABLE_NAME, TABLE_TYPE, ENGINE, TABLE_COLLATION, AUTO_INCREMENT, "
            "CREATE_OPTIONS, TABLE_COMMENT FROM information_schema.TABLES "
            "WHERE TABLE_SCHEMA = %s ORDER BY TABLE_NAME",
            (db,),
        ),
        "columns": my_admin.query(
            db,
            "SELECT TABLE_NAME, COLUMN_NAME, ORDINAL_POSITION, COLUMN_DEFAULT, IS_NULLABLE, "
            "COLUMN_TYPE, CHARACTER_SET_NAME, COLLATION_NAME, EXTRA, COLUMN_COMMENT, "
            "IS_GENERATED, GENERATION_EXPRESSION FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA = %s ORDER BY TABLE_NAME, ORDINAL_POSITION",
            (db,),
        ),
        "views": [
            (name, definition.replace(q + ".", ""), *rest)
            for name, definition, *rest in my_admin.query(
                db,
                "SELECT TABLE_NAME, VIEW_DEFINITION, CHECK_OPTION, IS_UPDATABLE, DEFINER, "
                "SECURITY_TYPE, ALGORITHM FROM information_schema.VIEWS "
                "WHERE TABLE_SCHEMA = %s ORDER BY TABLE_NAME",
                (db,),
            )
        ],
        "routines": my_admin.query(
            db,
            "SELECT ROUTINE_NAME, ROUTINE_TYPE, DTD_IDENTIFIER, ROUTINE_DEFINITION, "
            "IS_DETERMINISTIC, SQL_DATA_ACCESS, SECURITY_TYPE, SQL_MODE, ROUTINE_COMMENT, "
            "DEFINER, CHARACTER_SET_CLIENT, COLLATION_CONNECTION, DATABASE_COLLATION "
            "FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = %s "
            "ORDER BY ROUTINE_TYPE, ROUTINE_NAME",
            (db,),
        ),
        "parameters": my_admin.query(
            db,
            "SELECT SPECIFIC_NAME, ORDINAL_POSITION, PARAMETER_MODE, PARAMETER_NAME, "
            "DTD_IDENTIFIER FROM information_schema.PARAMETERS WHERE SPECIFIC_SCHEMA = %s "
            "ORDER BY SPECIFIC_NAME, ORDINAL_POSITION",
            (db,),
        ),
        "triggers": my_admin.query(
            db,
            "SELECT TRIGGER_NAME, EVENT_MANIPULATION, EVENT_OBJECT_TABLE, ACTION_ORDER, "
            "ACTION_STATEMENT, ACTION_TIMING, SQL_MODE, DEFINER, CHARACTER_SET_CLIENT, "
            "COLLATION_CONNECTION, DATABASE_COLLATION FROM information_schema.TRIGGERS "
            "WHERE TRIGGER_SCHEMA = %s ORDER BY TRIGGER_NAME",
            (db,),
        ),
        "events": my_admin.query(
            db,
            "SELECT EVENT_NAME, DEFINER, TIME_ZONE, EVENT_BODY, EVENT_DEFINITION, EVENT_TYPE, "
            "EXECUTE_AT, INTERVAL_VALUE, INTERVAL_FIELD, SQL_MODE, STARTS, ENDS, STATUS, "
            "ON_COMPLETION, EVENT_COMMENT, CHARACTER_SET_CLIENT, COLLATION_CONNECTION, "
            "DATABASE_COLLATION FROM information_schema.EVENTS WHERE EVENT_SCHEMA = %s "
            "ORDER BY EVENT_NAME",
            (db,),
        ),
        "schema": my_admin.query(
            None,
            "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME, SCHEMA_COMMENT "
            "FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s",
            (db,),
        ),
    }
    objects["create_tables"] = [
        my_admin.query(
            db, f"SHOW CREATE {'SEQUENCE' if kind == 'SEQUENCE' else 'TABLE'} {my_admin.q(name)}"
        )[0]
        for name, kind, *_ in objects["tables"]
        if kind in ("BASE TABLE", "SYSTEM VERSIONED", "SEQUENCE")
    ]
    return objects


def call_routines(my_admin: MyAdmin, db: str) -> dict[str, object]:
    """Results of calling each routine and reading each view in db."""
    with my_admin.connect(db) as conn, conn.cursor() as cur:
        cur.execute("CALL item_summary(2, @n)")
        summary_rows = cur.fetchall()
        while cur.nextset():
            pass
        cur.execute("SELECT @n, kind_total('tools'), kind_total('toys'), greet('Zoë 漢')")
        scalars = cur.fetchone()
        cur.execute("SELECT * FROM kind_totals ORDER BY name")
        kind_totals = cur.fetchall()
        cur.execute("SELECT * FROM big_kinds ORDER BY name")
        big_kinds = cur.fetchall()
    return {
        "summary": summary_rows,
        "scalars": scalars,
        "kind_totals": kind_totals,
        "big_kinds": big_kinds,
    }


def insert_new_item(my_admin: MyAdmin, db: str) -> tuple:
    """Insert one row without an id; return it with its generated columns."""
    with my_admin.connect(db) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO items (kind_id, label, amount, qty, doc) "
            "VALUES (2, 'new ünï 😀', -1.5, 0, '{\"name\": \"neu ☃\"}')"
        )
        cur.execute(
            "SELECT id, qty, total, label_upper, doc_name FROM items WHERE id = LAST_INSERT_ID()"
        )
        row = cur.fetchone()
        cur.execute("SELECT item_id, note FROM audit ORDER BY id DESC LIMIT 1")
        return row, cur.fetchone()


def test_rich_database_round_trip(env, my_db, my_admin, cleanup_my):
    """Every tricky type and every schema object comes back equal, and still works."""
    db = my_db()
    build_rich_database(my_admin, db)
    source_objects = schema_objects(my_admin, db)
    # guard against comparing two empty lists
    assert sorted(r[0] for r in source_objects["tables"]) == [
        "audit",
        "big_kinds",
        "items",
        "kind_totals",
        "kinds",
    ]
    assert sorted(r[:2] for r in source_objects["routines"]) == [
        ("greet", "FUNCTION"),
        ("item_summary", "PROCEDURE"),
        ("kind_total", "FUNCTION"),
    ]
    assert sorted(r[0] for r in source_objects["triggers"]) == ["items_audit", "items_qty"]
    assert sorted(r[0] for r in source_objects["events"]) == ["one_shot", "purge_audit"]
    assert ("items", "BASE TABLE", 1000) in [r[:2] + r[4:5] for r in source_objects["tables"]]
    source_data = my_admin.table_fingerprints(db)
    assert source_data["items"][0] == len(ITEMS)

    backup(env, db)
    target = f"{db}_restored"
    cleanup_my.append(target)
    result = restore(env, db, "--into", target)
    assert result.exit_code == 0, result.output

    assert my_admin.table_fingerprints(target) == source_data
    restored_objects = schema_objects(my_admin, target)
    for kind, source in source_objects.items():
        assert restored_objects[kind] == source, kind
    assert call_routines(my_admin, target) == call_routines(my_admin, db)
    # the generated columns, the triggers and the AUTO_INCREMENT counter still work the same
    assert insert_new_item(my_admin, target) == insert_new_item(my_admin, db)


def odd_name(kind: str, tag: str) -> str:
    """A unique database name of one awkward kind."""
    names = {
        "space": f"with space {tag}",
        "quote": f"it's {tag}",
        # names the SQL escaping changes: mariadb-dump 10.11 cannot dump their events
        "dquote-backslash": f'say "hi" \\ {tag}',
        "newline": f"two\nlines {tag}",
        "backtick": f"back`tick {tag}",
        # MariaDB refuses 4-byte characters (emoji) in identifiers: BMP-only unicode
        "unicode": f"données-é-日本 {tag}",
        "leading-dash": f"-leading {tag}",
        "64-chars": f"long-{tag}-".ljust(64, "x"),
    }
    return names[kind]


ODD_KINDS = [
    "space",
    "quote",
    "dquote-backslash",
    "newline",
    "backtick",
    "unicode",
    "leading-dash",
    "64-chars",
]


@pytest.mark.parametrize("kind", ODD_KINDS)
def test_odd_database_name_round_trip(kind, env, my_db, my_admin, cleanup_my):
    """An awkward database name backs up, lists and restores into another awkward name,
    with its events (mariadb-dump cannot dump those of a name with a quote: appended)."""
    db = my_db(odd_name(kind, make_id()))
    if kind == "64-chars":
        assert len(db) == 64
    run(my_admin, db, "CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(50))")
    run(my_admin, db, "INSERT INTO t VALUES (1, 'un'), (2, 'deux ✓'), (3, NULL)")
    for sql_mode, statement in [
        (
            "DEFAULT",
            """CREATE EVENT `odd */ name ☾` ON SCHEDULE EVERY 1 DAY STARTS '2037-01-01 03:00:00'
            ON COMPLETION PRESERVE DISABLE COMMENT 'it''s \\\\ ;; note' DO BEGIN
            -- a comment; with a quote ' in it
            DELETE FROM t WHERE v = 'x;;y\\\\';
            END""",
        ),
        # (not a backslash in its COMMENT: SHOW CREATE EVENT doubles it whatever the
        # sql_mode, and a replay under NO_BACKSLASH_ESCAPES keeps both; mariadb-dump too)
        (
            "'ANSI_QUOTES,NO_BACKSLASH_ESCAPES'",
            """CREATE EVENT "plain" ON SCHEDULE AT '2037-06-01 00:00:00' COMMENT 'quote '' "'
            DO UPDATE t SET v = 'back\\slash'""",
        ),
    ]:
        with my_admin.connect(db) as conn, conn.cursor() as cur:
            cur.execute(f"SET sql_mode = {sql_mode}")
            cur.execute("SET time_zone = '+05:30'")
            cur.execute(statement)
    events = schema_objects(my_admin, db)["events"]
    assert len(events) == 2 and "NO_BACKSLASH_ESCAPES" in events[1][9]
    assert "\\" in events[0][4] + events[0][14] and "\\" in events[1][4]

    outcome = backup(env, db)
    listed = env.cli("list", env.my, "--database", db, "--json")
    assert listed.exit_code == 0, listed.output
    assert [(b["database"], b["backup_id"]) for b in json.loads(listed.stdout)] == [
        (db, outcome["backup_id"])
    ]

    target = odd_name(kind, make_id())
    cleanup_my.append(target)
    result = restore(env, db, "--into", target)
    assert result.exit_code == 0, result.output
    assert my_admin.exists(target)
    assert my_admin.table_fingerprints(target) == my_admin.table_fingerprints(db)
    assert schema_objects(my_admin, target)["events"] == events


def make_small_database(my_admin: MyAdmin, db: str, label: str) -> None:
    """One table named label with two rows that mention label."""
    run(my_admin, db, f"CREATE TABLE {label} (id INT PRIMARY KEY, v VARCHAR(50))")
    run(my_admin, db, f"INSERT INTO {label} VALUES (1, %s), (2, %s)", (label, label + " ✓"))


@pytest.mark.parametrize("in_place", [False, True], ids=["into-other", "in-place"])
def test_restore_onto_existing_database_needs_replace(in_place, env, my_db, my_admin, cleanup_my):
    """Without --replace an existing target is refused (exit 3) and untouched; with it, replaced."""
    source = my_db()
    make_small_database(my_admin, source, "backed_up")
    backed_up = my_admin.table_fingerprints(source)
    backup(env, source)

    if in_place:
        target, args = source, []
        run(my_admin, source, "DELETE FROM backed_up WHERE id = 1")
    else:
        target = my_db()
        args = ["--into", target]
    make_small_database(my_admin, target, "existing")
    before = my_admin.table_fingerprints(target)
    assert before != backed_up

    refused = restore(env, source, *args)
    assert refused.exit_code == 3, refused.output
    assert "already exists" in refused.output
    assert my_admin.table_fingerprints(target) == before

    replaced = restore(env, source, *args, "--replace")
    assert replaced.exit_code == 0, replaced.output
    assert my_admin.table_fingerprints(target) == backed_up


def body_texts(my_admin: MyAdmin, db: str) -> list[tuple]:
    """Source text of every routine, trigger and event body in db."""
    return [
        *my_admin.query(
            db,
            "SELECT ROUTINE_NAME, ROUTINE_DEFINITION FROM information_schema.ROUTINES "
            "WHERE ROUTINE_SCHEMA = %s ORDER BY 1",
            (db,),
        ),
        *my_admin.query(
            db,
            "SELECT TRIGGER_NAME, ACTION_STATEMENT FROM information_schema.TRIGGERS "
            "WHERE TRIGGER_SCHEMA = %s ORDER BY 1",
            (db,),
        ),
        *my_admin.query(
            db,
            "SELECT EVENT_NAME, EVENT_DEFINITION FROM information_schema.EVENTS "
            "WHERE EVENT_SCHEMA = %s ORDER BY 1",
            (db,),
        ),
    ]


def test_comments_in_routine_bodies_survive(env, my_db, my_admin, cleanup_my):
    """Comments inside procedure, function, trigger and event bodies come back verbatim."""
    db = my_db()
    for statement in [
        "CREATE TABLE t (id INT PRIMARY KEY, n INT)",
        """CREATE PROCEDURE p() BEGIN
            -- note: a line comment
            SELECT COUNT(*) FROM t; /* note: a block comment */
        END""",
        "CREATE FUNCTION f() RETURNS INT RETURN 1 /* note: see ticket 42 */",
        """CREATE TRIGGER t_bi BEFORE INSERT ON t FOR EACH ROW BEGIN
            # note: hash comment
            SET NEW.n = COALESCE(NEW.n, 0);
        END""",
        """CREATE EVENT e ON SCHEDULE EVERY 1 DAY STARTS '2037-01-01 00:00:00' DO BEGIN
            -- note: nightly cleanup
            DELETE FROM t WHERE n < 0;
        END""",
    ]:
        run(my_admin, db, statement)
    source = body_texts(my_admin, db)
    assert all("note:" in body for _, body in source), source

    backup(env, db)
    target = f"{db}_restored"
    cleanup_my.append(target)
    result = restore(env, db, "--into", target)
    assert result.exit_code == 0, result.output
    assert body_texts(my_admin, target) == source


def test_restore_under_new_name_when_source_is_gone(env, my_db, my_admin, cleanup_my):
    """A database whose default collation changed after its routines were created restores
    under a new name after the original was dropped (the disaster case, or another server)."""
    db = my_db()
    run(my_admin, db, "CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(20))")
    run(my_admin, db, "INSERT INTO t VALUES (1, 'a'), (2, 'b')")
    run(
        my_admin,
        db,
        "CREATE FUNCTION how_many() RETURNS INT READS SQL DATA RETURN (SELECT COUNT(*) FROM t)",
    )
    run(my_admin, db, f"ALTER DATABASE {my_admin.q(db)} CHARACTER SET latin1")
    data = my_admin.table_fingerprints(db)
    routines = schema_objects(my_admin, db)["routines"]
    backup(env, db)
    my_admin.drop(db)

    target = f"{db}_restored"
    cleanup_my.append(target)
    result = restore(env, db, "--into", target)
    assert result.exit_code == 0, result.output
    assert not my_admin.exists(db)
    assert my_admin.table_fingerprints(target) == data
    assert schema_objects(my_admin, target)["routines"] == routines
    assert my_admin.query(target, "SELECT how_many()") == [(2,)]
