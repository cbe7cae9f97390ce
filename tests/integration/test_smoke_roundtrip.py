"""The simplest promise: what was backed up comes back equal, on both engines."""

from __future__ import annotations

import json


def test_postgres_backup_then_restore_into_new_name(env, pg_db, pg_admin, cleanup_pg):
    db = pg_db()
    pg_admin.execute(
        db,
        "CREATE TABLE t (id int PRIMARY KEY, v text);"
        "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 5000) g;",
    )
    result = env.cli("backup", env.pg, "--database", db, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [d["status"] for d in report["databases"]] == ["ok"]

    target = db + "_restored"
    cleanup_pg.append(target)
    result = env.cli("restore", env.pg, db, "--into", target)
    assert result.exit_code == 0, result.output
    assert pg_admin.table_fingerprints(target) == pg_admin.table_fingerprints(db)


def test_mysql_backup_then_restore_into_new_name(env, my_db, my_admin, cleanup_my):
    db = my_db()
    my_admin.execute(
        db,
        "CREATE TABLE t (id int PRIMARY KEY, v varchar(64))",
        "INSERT INTO t SELECT seq, md5(seq) FROM seq_1_to_5000",
    )
    result = env.cli("backup", env.my, "--database", db)
    assert result.exit_code == 0, result.output
    target = db + "_restored"
    cleanup_my.append(target)
    result = env.cli("restore", env.my, db, "--into", target)
    assert result.exit_code == 0, result.output
    assert my_admin.table_fingerprints(target) == my_admin.table_fingerprints(db)
