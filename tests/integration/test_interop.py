"""Backups are plain age + zstd files: the reference CLIs read them without dbbackup."""

from __future__ import annotations

import io
import subprocess

import pyrage
from prefect_dbbackup.flows.cli import app
from prefect_dbbackup.tasks.stream import decrypt_stream
from typer.testing import CliRunner

from tests.helpers import stored_objects


def _decrypt_with_reference_tools(obj, identity_file, out_path):
    age = subprocess.Popen(
        ["age", "-d", "-i", str(identity_file), str(obj)], stdout=subprocess.PIPE
    )
    with open(out_path, "wb") as out:
        subprocess.run(["zstd", "-d", "-c"], stdin=age.stdout, stdout=out, check=True)
    assert age.wait() == 0


def test_postgres_object_restores_with_age_zstd_and_pg_restore(
    env, pg_db, pg_admin, tmp_path, cleanup_pg
):
    db = pg_db()
    pg_admin.execute(
        db,
        "CREATE TABLE t AS SELECT g AS id, repeat('x', g % 50) AS v FROM generate_series(1, 2000) g",
    )
    assert env.cli("backup", env.pg, "-d", db).exit_code == 0
    [obj] = stored_objects(env.storage_path)
    assert obj.name == "dump.pgc.zst.age"
    dump = tmp_path / "dump.pgc"
    _decrypt_with_reference_tools(obj, env.identity_file, dump)

    target = db + "_by_hand"
    cleanup_pg.append(target)
    pg_admin.create(target)
    subprocess.run(
        [
            "pg_restore",
            "--exit-on-error",
            "--no-owner",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            target,
            str(dump),
        ],
        check=True,
    )
    assert pg_admin.table_fingerprints(target) == pg_admin.table_fingerprints(db)


def test_mysql_object_restores_with_age_zstd_and_mariadb(
    env, my_db, my_admin, tmp_path, cleanup_my
):
    db = my_db()
    my_admin.execute(
        db,
        "CREATE TABLE t (id int PRIMARY KEY, b blob)",
        "INSERT INTO t VALUES (1, 0x00ff10), (2, NULL)",
    )
    assert env.cli("backup", env.my, "-d", db).exit_code == 0
    [obj] = stored_objects(env.storage_path)
    assert obj.name == "dump.sql.zst.age"
    dump = tmp_path / "dump.sql"
    _decrypt_with_reference_tools(obj, env.identity_file, dump)
    assert b"CREATE DATABASE" not in dump.read_bytes() and b"\nUSE " not in dump.read_bytes()

    target = db + "_by_hand"
    cleanup_my.append(target)
    my_admin.create(target)
    with open(dump, "rb") as f:
        subprocess.run(["mariadb", "-h", "127.0.0.1", "-uroot", target], stdin=f, check=True)
    assert my_admin.table_fingerprints(target) == my_admin.table_fingerprints(db)


def test_file_written_by_age_and_zstd_cli_decrypts_with_our_stream(tmp_path):
    identity = pyrage.x25519.Identity.generate()
    data = b"".join(b"line %d\n" % i for i in range(100_000))
    zst = subprocess.run(["zstd", "-c", "-3"], input=data, capture_output=True, check=True).stdout
    blob = subprocess.run(
        ["age", "-r", str(identity.to_public())], input=zst, capture_output=True, check=True
    ).stdout
    sink = io.BytesIO()
    decrypt_stream(io.BytesIO(blob), lambda: sink, [identity])
    assert sink.getvalue() == data


def test_keygen_writes_a_private_identity_the_age_cli_accepts(tmp_path):
    path = tmp_path / "keys" / "identity.txt"
    result = CliRunner().invoke(app, ["keygen", "--output", str(path)])
    assert result.exit_code == 0, result.output
    recipient = result.stdout.strip().splitlines()[-1]
    assert path.stat().st_mode & 0o777 == 0o600
    derived = subprocess.run(
        ["age-keygen", "-y", str(path)], capture_output=True, text=True, check=True
    )
    assert derived.stdout.strip() == recipient
    again = CliRunner().invoke(app, ["keygen", "--output", str(path)])
    assert again.exit_code != 0 and "refusing to overwrite" in again.output
