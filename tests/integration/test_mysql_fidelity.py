"""MariaDB restore fidelity: a corpus of less common features comes back equal.

System-versioned tables keep their history (row_start/row_end included), and verify
counts it; the database's COMMENT (hostile text) comes back; invisible and generated columns, CHECK constraints, MyISAM and Aria tables,
latin1 text and binary data, sequences, triggers, routines and events come back with the
same catalog (SHOW CREATE ..., information_schema) and the same contents, under a new name.
"""

from __future__ import annotations

import hashlib
import json

from tests.helpers import MyAdmin
from tests.integration.test_mysql_roundtrip import backup, restore, run, schema_objects

# quotes, backslashes, a newline and SQL that must stay text
COMMENT = "it's \\'; DROP DATABASE test; -- \" `x`\nsecond line \\n ☺ ''"
LATIN1 = "café ÿ ñ « » ° ± ¼ \\ ' \" end"
CORPUS = [
    # history: implicit columns, explicit invisible columns, partitioned by system time
    "CREATE TABLE prices (id INT PRIMARY KEY, amount DECIMAL(10,2)) WITH SYSTEM VERSIONING",
    """CREATE TABLE stock (id INT PRIMARY KEY, qty INT,
        valid_from TIMESTAMP(6) GENERATED ALWAYS AS ROW START INVISIBLE,
        valid_to TIMESTAMP(6) GENERATED ALWAYS AS ROW END INVISIBLE,
        PERIOD FOR SYSTEM_TIME (valid_from, valid_to)) WITH SYSTEM VERSIONING""",
    """CREATE TABLE events_log (id INT, note VARCHAR(50)) WITH SYSTEM VERSIONING
        PARTITION BY SYSTEM_TIME (PARTITION p_hist HISTORY, PARTITION p_now CURRENT)""",
    # invisible, generated columns and CHECK constraints
    """CREATE TABLE shapes (id INT AUTO_INCREMENT PRIMARY KEY,
        w INT NOT NULL CHECK (w > 0), h INT NOT NULL,
        secret VARCHAR(20) INVISIBLE DEFAULT 'hidden',
        area INT AS (w * h) STORED, label VARCHAR(40) AS (CONCAT(w, 'x', h)) VIRTUAL,
        CONSTRAINT square_ish CHECK (w < h * 10)) COMMENT 'shapes'""",
    # other engines, latin1 text and binary data
    """CREATE TABLE legacy (id INT PRIMARY KEY, txt VARCHAR(100), raw VARBINARY(64))
        ENGINE=MyISAM DEFAULT CHARSET=latin1""",
    "CREATE TABLE crash_safe (id INT PRIMARY KEY, b BLOB) ENGINE=Aria",
    # sequences with odd increments (NOCACHE: a cached range lives in server memory only)
    "CREATE SEQUENCE odd_seq START WITH 7 INCREMENT BY 3 MINVALUE 1 MAXVALUE 1000 CYCLE NOCACHE",
    "CREATE SEQUENCE down_seq START WITH -1 INCREMENT BY -5 MINVALUE -100 MAXVALUE -1 NOCACHE",
    # triggers, routines, events
    """CREATE TRIGGER shapes_bi BEFORE INSERT ON shapes FOR EACH ROW
        SET NEW.h = GREATEST(NEW.h, 1)""",
    """CREATE FUNCTION next_odd() RETURNS BIGINT NOT DETERMINISTIC
        RETURN NEXTVAL(odd_seq)""",
    """CREATE PROCEDURE restock(IN n INT) MODIFIES SQL DATA
        UPDATE stock SET qty = qty + n""",
    """CREATE EVENT nightly ON SCHEDULE EVERY 1 DAY STARTS '2037-01-01 03:00:00'
        ON COMPLETION PRESERVE DISABLE DO CALL restock(1)""",
]


def build_corpus(my_admin: MyAdmin, db: str) -> None:
    """The corpus schema, with history written by real updates and deletes."""
    run(my_admin, db, f"ALTER DATABASE {my_admin.q(db)} COMMENT %s", (COMMENT,))
    for statement in CORPUS:
        run(my_admin, db, statement)
    for statement in [
        "INSERT INTO prices VALUES (1, 9.99), (2, 5.00), (3, 1.25)",
        "UPDATE prices SET amount = amount * 2 WHERE id < 3",
        "DELETE FROM prices WHERE id = 3",
        "INSERT INTO stock (id, qty) VALUES (1, 10), (2, 0)",
        "UPDATE stock SET qty = 4 WHERE id = 1",
        "INSERT INTO events_log VALUES (1, 'created'), (2, 'second')",
        "UPDATE events_log SET note = 'changed' WHERE id = 1",
        "INSERT INTO shapes (w, h, secret) VALUES (2, 3, 'shh'), (5, 0, DEFAULT)",
        "INSERT INTO crash_safe VALUES (1, 0x00ff00), (2, '')",
        "SELECT NEXTVAL(odd_seq), NEXTVAL(odd_seq), NEXTVAL(down_seq)",
    ]:
        run(my_admin, db, statement)
    run(my_admin, db, "INSERT INTO legacy VALUES (1, %s, %s), (2, NULL, %s)",
        (LATIN1, bytes(range(64)), b""))  # fmt: skip


def contents(my_admin: MyAdmin, db: str) -> dict[str, tuple[int, str]]:
    """(rows, sha256) of every table with every column, invisible and row start/end
    included, and for system-versioned tables every version (FOR SYSTEM_TIME ALL)."""
    tables = my_admin.query(
        db,
        "SELECT TABLE_NAME, TABLE_TYPE FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s "
        "AND TABLE_TYPE IN ('BASE TABLE', 'SYSTEM VERSIONED', 'SEQUENCE') ORDER BY 1",
        (db,),
    )
    result = {}
    for name, kind in tables:
        listed = my_admin.query(
            db,
            "SELECT COLUMN_NAME, GENERATION_EXPRESSION FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION",
            (db, name),
        )
        columns = [my_admin.q(c) for c, _ in listed]
        source = my_admin.q(name)
        if kind == "SYSTEM VERSIONED":
            source += " FOR SYSTEM_TIME ALL"
            if "ROW START" not in [g for _, g in listed]:  # implicit row_start/row_end
                columns += ["ROW_START", "ROW_END"]
        rows = my_admin.query(db, f"SELECT {', '.join(columns)} FROM {source}")
        digest = hashlib.sha256("\n".join(sorted(map(repr, rows))).encode()).hexdigest()
        result[name] = (len(rows), digest)
    return result


def test_corpus_round_trip_keeps_catalog_contents_and_history(env, my_db, my_admin, cleanup_my):
    db = my_db()
    build_corpus(my_admin, db)
    source_objects, source_data = schema_objects(my_admin, db), contents(my_admin, db)
    # guard against comparing empty things: history rows exist, every kind is there
    assert source_data["prices"][0] == 5 and source_data["stock"][0] == 3
    assert source_data["events_log"][0] == 3
    kinds = {name: kind for name, kind, *_ in source_objects["tables"]}
    assert kinds["odd_seq"] == "SEQUENCE" and kinds["prices"] == "SYSTEM VERSIONED"
    assert len(source_objects["create_tables"]) == 8
    assert source_objects["schema"][0][2] == COMMENT

    outcome = backup(env, db)
    target = f"{db}_restored"
    cleanup_my.append(target)
    result = restore(env, db, "--into", target)
    assert result.exit_code == 0, result.output

    assert contents(my_admin, target) == source_data
    restored_objects = schema_objects(my_admin, target)
    # mariadb-dump spells Aria's default PAGE_CHECKSUM=1 out: the restored table lists it
    # among its create options (the same setting; SHOW CREATE TABLE is equal, below)
    restored_objects["tables"] = [
        (*row[:5], row[5].replace("page_checksum=1 ", "") if row[2] == "Aria" else row[5], *row[6:])
        for row in restored_objects["tables"]
    ]
    for kind, source in source_objects.items():
        assert restored_objects[kind] == source, kind
    # the history answers AS OF queries the same way
    as_of = "SELECT id, amount FROM prices FOR SYSTEM_TIME AS OF TIMESTAMP %s ORDER BY id"
    first_start = my_admin.query(db, "SELECT MIN(ROW_START) FROM prices FOR SYSTEM_TIME ALL")[0][0]
    assert my_admin.query(target, as_of, (first_start,)) == my_admin.query(
        db, as_of, (first_start,)
    )
    assert len(my_admin.query(db, as_of, (first_start,))) == 3
    # the sequences continue where they were
    next_values = "SELECT NEXTVAL(odd_seq), NEXTVAL(down_seq)"
    assert my_admin.query(target, next_values) == my_admin.query(db, next_values)

    verified = env.cli(
        "verify", env.my, "--database", db, "--storage", env.storage,
        "--encryption", env.encryption, "--json",
    )  # fmt: skip
    assert verified.exit_code == 0, verified.output
    [checked] = json.loads(verified.stdout)["databases"]
    assert checked["checked"] == "row counts" and checked["backup_id"] == outcome["backup_id"]
    tables = {k: v for k, v in source_data.items() if kinds[k] != "SEQUENCE"}
    assert checked["rows"] == sum(n for n, _ in tables.values())
