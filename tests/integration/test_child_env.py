"""The dump and restore clients get an allow-listed environment: the worker's cloud
credentials and tokens never reach them. The real clients run, behind wrappers that
record the environment they were started with."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest
from prefect_dbbackup.blocks import MySQLServer, PostgresServer

from tests.helpers import MY, PG

SECRETS = {
    "AWS_SECRET_ACCESS_KEY": "aws-secret-" + uuid.uuid4().hex,
    "ACME_API_TOKEN": "acme-token-" + uuid.uuid4().hex,
}
PG_CLIENTS = Path("/usr/lib/postgresql/15/bin")


def _recording_clients(bin_dir: Path, record_dir: Path, clients: dict[str, str]) -> None:
    """A wrapper per client in bin_dir: writes its environment to record_dir, then execs
    the real client."""
    bin_dir.mkdir()
    record_dir.mkdir()
    for name, real in clients.items():
        wrapper = bin_dir / name
        wrapper.write_text(f'#!/bin/sh\nenv > "{record_dir}/{name}.$$"\nexec "{real}" "$@"\n')
        wrapper.chmod(0o755)


def _recorded(record_dir: Path) -> dict[str, list[dict[str, str]]]:
    """Client name -> the environments it was started with."""
    seen: dict[str, list[dict[str, str]]] = {}
    for path in record_dir.iterdir():
        lines = path.read_text().splitlines()
        variables = dict(line.split("=", 1) for line in lines if "=" in line)
        seen.setdefault(path.name.split(".")[0], []).append(variables)
    return seen


def _assert_no_secret(seen: dict[str, list[dict[str, str]]]) -> None:
    for client, environments in seen.items():
        for variables in environments:
            text = repr(variables)
            for name, value in SECRETS.items():
                assert name not in variables and value not in text, f"{client} got {name}"


@pytest.fixture
def worker_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)


def test_postgres_clients_get_no_worker_secret(
    env, pg_db, pg_admin, cleanup_pg, tmp_path, worker_secrets
):
    db = pg_db()
    pg_admin.execute(
        db, "CREATE TABLE t AS SELECT g, md5(g::text) AS h FROM generate_series(1, 500) g"
    )
    clients = {name: str(PG_CLIENTS / name) for name in ("pg_dump", "pg_dumpall", "pg_restore")}
    records = tmp_path / "records"
    _recording_clients(tmp_path / "bin", records, clients)
    server = f"pg-env-{uuid.uuid4().hex[:6]}"
    # a password (trust auth ignores it): the clients get a PGPASSFILE, dbbackup's own
    PostgresServer(**PG, password="unused-with-trust", bin_dir=str(tmp_path / "bin")).save(server)
    assert env.cli("backup", server, "-d", db).exit_code == 0
    target = f"{db}_copy"
    cleanup_pg.append(target)
    restored = env.cli("restore", server, db, "--into", target)
    assert restored.exit_code == 0, restored.output
    assert pg_admin.table_fingerprints(target) == pg_admin.table_fingerprints(db)
    seen = _recorded(records)
    assert {"pg_dump", "pg_dumpall", "pg_restore"} <= set(seen)
    _assert_no_secret(seen)
    [dump_env] = [v for v in seen["pg_dump"] if "PGAPPNAME" in v]  # the dump, not --version
    assert "PGPASSFILE" in dump_env and dump_env["PATH"]


def test_mariadb_clients_get_no_worker_secret(
    env, my_db, my_admin, cleanup_my, tmp_path, worker_secrets
):
    db = my_db()
    my_admin.execute(db, "CREATE TABLE t (id INT PRIMARY KEY, h CHAR(32))")
    my_admin.execute(db, "INSERT INTO t SELECT seq, md5(seq) FROM seq_1_to_500")
    clients = {name: shutil.which(name) for name in ("mariadb-dump", "mariadb")}
    records = tmp_path / "records"
    _recording_clients(tmp_path / "bin", records, clients)
    server = f"my-env-{uuid.uuid4().hex[:6]}"
    MySQLServer(**MY, bin_dir=str(tmp_path / "bin")).save(server)
    assert env.cli("backup", server, "-d", db).exit_code == 0
    target = f"{db}_copy"
    cleanup_my.append(target)
    restored = env.cli("restore", server, db, "--into", target)
    assert restored.exit_code == 0, restored.output
    assert my_admin.table_fingerprints(target) == my_admin.table_fingerprints(db)
    seen = _recorded(records)
    assert {"mariadb-dump", "mariadb"} <= set(seen)
    _assert_no_secret(seen)
