"""A missing privilege is not a rejected login; a full work dir is not an S3 problem.

AuthError (exit 4) is for logins the server rejects. A login the server accepts but that
lacks a grant (MySQL 1044/1142/1227, PostgreSQL 42501) is PermissionDenied (exit 3), and
the message names the login and the privilege the server asked for.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from prefect_dbbackup.blocks import MySQLServer, PostgresServer
from prefect_dbbackup.blocks.errors import PermissionDenied

from tests.helpers import MY, PG


@pytest.fixture
def my_limited_user(my_admin) -> Iterator[tuple[str, str]]:
    """A MariaDB login with a password and no privilege at all (USAGE only)."""
    user = f"dbbp_{uuid.uuid4().hex[:8]}"
    password = f"pw-{uuid.uuid4().hex}"
    with my_admin.connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE USER `{user}`@`%` IDENTIFIED BY '{password}'")
    yield user, password
    with my_admin.connect() as conn, conn.cursor() as cur:
        cur.execute(f"DROP USER IF EXISTS `{user}`@`%`")


@pytest.fixture
def pg_limited_role(pg_admin) -> Iterator[str]:
    """A PostgreSQL role that may log in (trust auth) but not create databases."""
    role = f"dbbp_{uuid.uuid4().hex[:8]}"
    pg_admin.execute("postgres", f"CREATE ROLE {role} LOGIN NOCREATEDB")
    yield role
    pg_admin.execute("postgres", f"DROP ROLE IF EXISTS {role}")


def test_mysql_database_access_denied_is_a_privilege_error(my_db, my_limited_user) -> None:
    user, password = my_limited_user
    block = MySQLServer(host=MY["host"], port=MY["port"], user=user, password=password)
    with pytest.raises(PermissionDenied) as err:
        block.table_row_counts(my_db())  # 1044 Access denied ... to database
    message = str(err.value)
    assert f"the login {user!r} lacks a privilege" in message and "1044" in message
    assert "rejected the login" not in message and password not in message
    assert err.value.exit_code == 3 and not err.value.retryable


def test_mysql_restore_without_create_privilege_exits_3(
    env, my_db, my_admin, my_limited_user, cleanup_my
) -> None:
    db = my_db()
    my_admin.execute(db, "CREATE TABLE t (a int)", "INSERT INTO t VALUES (1)")
    assert env.cli("backup", env.my, "-d", db).exit_code == 0
    user, password = my_limited_user
    limited = f"my-limited-{uuid.uuid4().hex[:8]}"
    MySQLServer(host=MY["host"], port=MY["port"], user=user, password=password).save(limited)
    target = db + "_r"
    cleanup_my.append(target)
    result = env.cli("restore", limited, db, "--from-server", env.my, "--into", target)
    assert result.exit_code == 3, result.output
    assert f"the login {user!r} lacks a privilege" in result.stderr
    assert "Access denied" in result.stderr and "rejected the login" not in result.stderr
    assert not my_admin.exists(target)


def test_mysql_globals_without_select_on_mysql_user_names_the_grant(
    my_limited_user, my_admin
) -> None:
    user, password = my_limited_user
    block = MySQLServer(host=MY["host"], port=MY["port"], user=user, password=password)
    with pytest.raises(PermissionDenied) as err:
        block.users_script(None)  # 1142 SELECT command denied ... for table `mysql`.`user`
    assert "grant it SELECT on mysql.*" in str(err.value) and user in str(err.value)
    assert "rejected the login" not in str(err.value)


def test_postgres_restore_without_createdb_exits_3(
    env, pg_db, pg_admin, pg_limited_role, cleanup_pg
) -> None:
    db = pg_db()
    pg_admin.execute(db, "CREATE TABLE t AS SELECT 1 AS a")
    assert env.cli("backup", env.pg, "-d", db).exit_code == 0
    limited = f"pg-limited-{uuid.uuid4().hex[:8]}"
    PostgresServer(host=PG["host"], port=PG["port"], user=pg_limited_role).save(limited)
    target = db + "_r"
    cleanup_pg.append(target)
    result = env.cli("restore", limited, db, "--from-server", env.pg, "--into", target)
    assert result.exit_code == 3, result.output
    assert f"the role {pg_limited_role!r} lacks a privilege" in result.stderr
    assert "permission denied to create database" in result.stderr
    assert "rejected the login" not in result.stderr
    assert not pg_admin.exists(target)


def test_s3_download_into_a_full_work_dir_is_a_disk_error_without_s3_advice(
    s3_env, pg_db, pg_admin, cleanup_pg, tiny_disk, monkeypatch
) -> None:
    db = pg_db()
    pg_admin.execute(  # random text: about 2 MB stored, more than the work dir holds
        db,
        "CREATE TABLE t AS SELECT g, md5(random()::text) || md5(random()::text) AS v "
        "FROM generate_series(1, 30000) g",
    )
    assert s3_env.cli("backup", s3_env.pg, "-d", db).exit_code == 0
    monkeypatch.setenv("DBBACKUP_WORK_DIR", str(tiny_disk))
    target = db + "_r"
    cleanup_pg.append(target)
    result = s3_env.cli("restore", s3_env.pg, db, "--into", target)
    assert result.exit_code == 2, result.output
    assert "is full while downloading" in result.stderr and "DBBACKUP_WORK_DIR" in result.stderr
    assert "endpoint reachable" not in result.output and "retried" not in result.output
    assert not pg_admin.exists(target)
