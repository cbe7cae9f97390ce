"""The globals script text: statements split, attributed to accounts, secrets masked."""

from __future__ import annotations

from prefect_dbbackup.blocks.users_sql import (
    MYSQL_SQL,
    POSTGRES_SQL,
    MySQLAccount,
    mysql_script,
    mysql_text,
    select_statements,
)

PG_DUMPALL = """--
-- PostgreSQL database cluster dump
--

\\restrict AbC123

SET default_transaction_read_only = off;
SET standard_conforming_strings = on;

CREATE ROLE "odd;name";
ALTER ROLE "odd;name" WITH LOGIN PASSWORD 'SCRAM-SHA-256$4096:c2FsdA==$k:s';
CREATE ROLE app;
ALTER ROLE app WITH LOGIN PASSWORD 'md5abc' VALID UNTIL '2040-01-01 00:00:00+00';
COMMENT ON ROLE app IS 'it''s; the app
on two lines';
ALTER ROLE app SET search_path TO 'a;b', 'public';
CREATE TABLESPACE fast OWNER app LOCATION '/ssd';
GRANT "odd;name" TO app WITH ADMIN OPTION GRANTED BY postgres;

\\unrestrict AbC123
"""


def test_pg_dumpall_output_splits_into_attributed_statements():
    statements = POSTGRES_SQL.parse_script(PG_DUMPALL)
    got = [(s.scope, s.subject, s.text.split()[0]) for s in statements]
    assert got == [
        ("session", None, "SET"),
        ("session", None, "SET"),
        ("account", "odd;name", "CREATE"),
        ("account", "odd;name", "ALTER"),
        ("account", "app", "CREATE"),
        ("account", "app", "ALTER"),
        ("account", "app", "COMMENT"),
        ("account", "app", "ALTER"),
        ("server", None, "CREATE"),
        ("account", "app", "GRANT"),
    ]
    assert statements[6].text == "COMMENT ON ROLE app IS 'it''s; the app\non two lines'"


def test_user_filter_keeps_session_statements_and_drops_tablespaces():
    statements = POSTGRES_SQL.parse_script(PG_DUMPALL)
    chosen = select_statements(statements, ["odd;name"], lambda _: True)
    assert [s.subject for s in chosen] == [None, None, "odd;name", "odd;name"]
    everything = select_statements(statements, None, lambda name: name != "app")
    assert [s.subject for s in everything if s.scope != "session"] == ["odd;name"] * 2 + [None]


def test_passwords_and_hashes_are_masked():
    pg = "ALTER ROLE app WITH LOGIN PASSWORD 'SCRAM-SHA-256$4096:x$y:z' VALID UNTIL 'infinity'"
    assert POSTGRES_SQL.mask(pg) == (
        "ALTER ROLE app WITH LOGIN PASSWORD '***' VALID UNTIL 'infinity'"
    )
    assert "SCRAM-SHA-256$4096:x$y:z" in POSTGRES_SQL.secrets_of(pg)
    cases = {
        "CREATE USER `u`@`%` IDENTIFIED BY PASSWORD '*AB12'": "IDENTIFIED BY PASSWORD '***'",
        "ALTER USER `u`@`%` IDENTIFIED VIA ed25519 USING 'x\\'y' OR unix_socket": "USING '***'",
        "CREATE USER u IDENTIFIED WITH 'caching_sha2_password' AS 0x2441": "AS '***'",
        "ALTER USER u IDENTIFIED BY 'plain'": "IDENTIFIED BY '***'",
        "SET PASSWORD FOR u = PASSWORD('plain')": "PASSWORD('***')",
    }
    for statement, masked in cases.items():
        assert masked in MYSQL_SQL.mask(statement), statement
    assert MYSQL_SQL.mask("GRANT SELECT ON `db`.* TO `u`@`%`") == (
        "GRANT SELECT ON `db`.* TO `u`@`%`"
    )


def test_mysql_statements_belong_to_the_grantee():
    script = mysql_script(
        [
            MySQLAccount("r", "", True, None, ["GRANT SELECT ON `db`.* TO `r`"]),
            MySQLAccount(
                "u@x",
                "%",
                False,
                "CREATE USER `u@x`@`%` IDENTIFIED BY PASSWORD '*AB' WITH MAX_QUERIES_PER_HOUR 5",
                [
                    "GRANT `r` TO `u@x`@`%`",
                    "SET DEFAULT ROLE `r` FOR `u@x`@`%`",
                    "GRANT SELECT (`to`), UPDATE (`b`) ON `db`.`t` TO `u@x`@`%` WITH GRANT OPTION",
                ],
            ),
        ]
    )
    statements = MYSQL_SQL.parse_script(script)
    assert [(s.text.split(" ", 2)[:2], s.subject, s.user) for s in statements] == [
        (["CREATE", "ROLE"], "r", "r"),
        (["CREATE", "USER"], "u@x@%", "u@x"),
        (["ALTER", "USER"], "u@x@%", "u@x"),
        (["GRANT", "SELECT"], "r", "r"),
        (["GRANT", "`r`"], "u@x@%", "u@x"),
        (["GRANT", "SELECT"], "u@x@%", "u@x"),
        (["SET", "DEFAULT"], "u@x@%", "u@x"),
    ]
    assert statements[1].text.startswith("CREATE USER IF NOT EXISTS `u@x`@`%` IDENTIFIED")
    assert (
        select_statements(statements, ["u@x"], lambda _: True) == statements[1:3] + statements[4:]
    )


def test_binary_hash_becomes_a_hex_literal():
    raw = b"CREATE USER `u`@`%` IDENTIFIED WITH 'caching_sha2_password' AS '$A$005$\x01\\'\xff'"
    text = mysql_text(raw)
    assert text == (
        "CREATE USER `u`@`%` IDENTIFIED WITH 'caching_sha2_password' AS 0x244124303035240127ff"
    )
    assert mysql_text("CREATE USER `café`@`%`".encode()) == "CREATE USER `café`@`%`"


def test_split_ignores_semicolons_in_quotes_and_comments():
    script = "-- a; comment\nGRANT `a;b` TO `u`@`%`; # x;\nCREATE ROLE 'r;'"
    assert MYSQL_SQL.split_statements(script) == ["GRANT `a;b` TO `u`@`%`", "CREATE ROLE 'r;'"]
