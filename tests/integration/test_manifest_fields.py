"""What a backup's manifest records (docs/architecture.md, "Storage layout and manifest"):
every field, in its stored order, with the values a database backup (whole object or
chunks) and the users/roles backup of the same run give it. A restore, verify, list and
prune of an older backup read these fields back, so they must not drift."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prefect_dbbackup.blocks import PostgresServer
from prefect_dbbackup.blocks.encryption import recipient_fingerprint

FIELDS = [
    "format_version",
    "tool_version",
    "server",
    "server_type",
    "server_version",
    "client",
    "client_version",
    "database",
    "backup_id",
    "kind",
    "started_at",
    "finished_at",
    "object_name",
    "dump_format",
    "format",
    "chunks",
    "compression",
    "encryption",
    "stats",
    "recipients",
    "dump_options",
    "create_options",
    "tables",
    "row_counts",
    "database_properties",
    "binlog",
]


def _manifests(storage_path: Path) -> dict[str, dict]:
    """The manifests of a local storage by series (database, or _globals)."""
    found = [json.loads(p.read_text()) for p in storage_path.rglob("manifest.json")]
    return {m["database"]: m for m in found}


def _common(m: dict, env, backup_id: str) -> None:  # noqa: ANN001
    """What every manifest of one run of env's PostgreSQL server holds."""
    assert list(m) == FIELDS
    assert m["format_version"] == 1
    assert m["server"] == env.pg and m["server_type"] == "postgres"
    assert re.fullmatch(r"\d+\.\d+.*", m["server_version"]), m["server_version"]
    assert m["client_version"].startswith(f"{m['client']} (PostgreSQL) ")
    assert m["backup_id"] == backup_id
    assert m["started_at"] <= m["finished_at"]
    assert (m["compression"], m["encryption"]) == ("zstd", "age")
    assert m["recipients"] == [recipient_fingerprint(env.recipient)]
    assert set(m["stats"]) == {"raw_bytes", "compressed_bytes", "stored_bytes", "sha256"}


@pytest.mark.parametrize("dedup", [False, True], ids=["object", "chunks"])
def test_a_postgres_run_records_every_manifest_field(env, dedup, pg_db, pg_admin):
    env = env.with_dedup() if dedup else env
    db = pg_db()
    pg_admin.execute(db, "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 300) g")
    result = env.cli("backup", env.pg, "-d", db)
    assert result.exit_code == 0, result.output
    manifests = _manifests(env.storage_path)
    assert set(manifests) == {db, "_globals"}
    m, users = manifests[db], manifests["_globals"]
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{4}", m["backup_id"]), m["backup_id"]

    _common(m, env, m["backup_id"])
    assert (m["client"], m["database"], m["kind"]) == ("pg_dump", db, "database")
    assert (m["object_name"], m["dump_format"]) == ("dump.pgc.zst.age", "pg_custom")
    assert m["format"] == ("chunks-v1" if dedup else "object")
    if dedup:
        assert m["chunks"]["raw_bytes"] == m["stats"]["raw_bytes"]
        assert m["stats"]["sha256"] == m["chunks"]["stream_hmac"]
        assert not list(env.storage_path.rglob("dump.pgc.zst.age"))
    else:
        assert m["chunks"] is None
        [stored] = env.storage_path.rglob("dump.pgc.zst.age")
        assert stored.stat().st_size == m["stats"]["stored_bytes"]
    assert m["dump_options"] == list(PostgresServer.engine.dump_options)
    assert set(m["create_options"]) >= {"encoding", "lc_collate", "lc_ctype"}
    assert m["tables"] == ["public.t"]
    assert m["row_counts"] == {"public.t": 300}
    assert m["database_properties"] is not None

    # the users/roles of the same run: the same source, no database facts, always an object
    _common(users, env, m["backup_id"])
    assert (users["client"], users["kind"]) == ("pg_dumpall", "globals")
    assert (users["object_name"], users["dump_format"]) == ("globals.sql.zst.age", "sql")
    assert (users["format"], users["chunks"]) == ("object", None)
    assert users["server_version"] == m["server_version"]
    assert users["create_options"] == {}
    assert [users[k] for k in ("tables", "row_counts", "database_properties")] == [None] * 3
    assert m["binlog"] is None and users["binlog"] is None  # no pitr on this server
