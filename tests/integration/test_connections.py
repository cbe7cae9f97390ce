"""Unix sockets and database-level locale settings survive a backup and restore."""

from __future__ import annotations

import uuid

from prefect_dbbackup.blocks import MySQLServer, PostgresServer


def test_mysql_over_its_unix_socket(env, my_db, my_admin, cleanup_my):
    db = my_db()
    my_admin.execute(
        db, "CREATE TABLE t (id int PRIMARY KEY, v text)", "INSERT INTO t VALUES (1, 'a'), (2, 'b')"
    )
    server = f"my-socket-{uuid.uuid4().hex[:8]}"
    socket = my_admin.query(None, "SELECT @@socket")[0][0]
    MySQLServer(host=socket, user="root").save(server)
    assert env.cli("backup", server, "-d", db).exit_code == 0
    target = db + "_s"
    cleanup_my.append(target)
    result = env.cli("restore", server, db, "--into", target)
    assert result.exit_code == 0, result.output
    assert my_admin.table_fingerprints(target) == my_admin.table_fingerprints(db)


def test_postgres_over_its_unix_socket_keeps_an_icu_locale(env, pg_admin, cleanup_pg):
    db = f"dbb_icu_{uuid.uuid4().hex[:8]}"
    cleanup_pg.append(db)
    with pg_admin.connect() as conn:
        conn.execute(
            f"CREATE DATABASE \"{db}\" TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'de-DE' "
            "LOCALE 'C.UTF-8'"
        )
    pg_admin.execute(db, "CREATE TABLE t AS SELECT unnest(ARRAY['a', 'ä', 'b', 'z']) AS w")
    server = f"pg-socket-{uuid.uuid4().hex[:8]}"
    socket_dir = pg_admin.query("postgres", "SHOW unix_socket_directories")[0][0].split(",")[0]
    PostgresServer(host=socket_dir, user="postgres").save(server)
    assert env.cli("backup", server, "-d", db).exit_code == 0
    target = db + "_r"
    cleanup_pg.append(target)
    result = env.cli("restore", server, db, "--into", target)
    assert result.exit_code == 0, result.output

    locale = "SELECT datlocprovider, daticulocale, datcollate FROM pg_database WHERE datname = %s"
    assert pg_admin.query("postgres", locale, (target,)) == pg_admin.query(
        "postgres", locale, (db,)
    )
    order = "SELECT string_agg(w, '' ORDER BY w) FROM t"
    assert pg_admin.query(target, order) == pg_admin.query(db, order) == [("aäbz",)]
