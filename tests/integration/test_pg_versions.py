"""PostgreSQL 16, 17 and 18: round trips, the upgrade path from 15, and the choice of client.

The other versions are private clusters of PyPI wheels (tests/pg_cluster.py, one per
version per session); the machine's PostgreSQL 15 is where the upgrade path starts.
Backups and restores run through the real CLI with the comparisons of
test_postgres_roundtrip.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import replace

import pytest
from prefect_dbbackup.blocks import PostgresServer, pg_clients

from tests.helpers import BlockEnv
from tests.integration.test_postgres_roundtrip import (
    backup,
    build_rich_schema,
    has_contrib,
    inventory,
    large_objects,
    sequence_states,
    suffix,
)
from tests.pg_cluster import DEBIAN_15, WHEELS, PrivateCluster

VERSIONS = sorted(WHEELS)
# one worker starts the private clusters (one per version per worker) for the whole module
pytestmark = [pytest.mark.xdist_group("pg_versions"), pytest.mark.slow]


def on_cluster(env: BlockEnv, cluster: PrivateCluster, **fields: object) -> BlockEnv:
    """env whose `pg` server block is the cluster (fields: e.g. bin_dir)."""
    name = f"pg{cluster.major()}-{uuid.uuid4().hex[:8]}"
    PostgresServer(host=cluster.host, port=cluster.port, user="postgres", **fields).save(name)
    return replace(env, pg=name)


def database_manifest(env: BlockEnv, db: str) -> dict:
    [path] = [p for p in env.storage_path.rglob("manifest.json") if "_globals" not in p.parts]
    manifest = json.loads(path.read_text())
    assert manifest["database"] == db
    return manifest


def client_notes(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.getMessage().startswith("PostgreSQL client tools: ")
    ]


@pytest.fixture
def wheel_clients(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Put the clients of these wheel versions (default: all) first on PATH."""

    def put_on_path(*majors: int) -> None:
        dirs = [WHEELS[m].bin_dir() for m in majors or VERSIONS]
        if None in dirs:
            pytest.skip("the PostgreSQL 16-18 wheels are not installed: pip install -e '.[test]'")
        monkeypatch.setenv("PATH", os.pathsep.join([*map(str, dirs), os.environ["PATH"]]))

    return put_on_path


@pytest.fixture
def only_debian_15(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hide every newer client: the client search sees PostgreSQL 15's directory only."""
    monkeypatch.setenv("PATH", str(DEBIAN_15))
    monkeypatch.setattr(pg_clients, "INSTALL_GLOBS", ())


@pytest.mark.parametrize("major", VERSIONS)
def test_round_trip_with_the_versions_own_client(major, env, pg_versions):
    """Back up and restore on PostgreSQL `major` with its own client: everything equal."""
    cluster = pg_versions(major)
    there = on_cluster(env, cluster, bin_dir=str(WHEELS[major].bin_dir()))
    db = f"dbb_v{major}_{suffix()}"
    cluster.create(db)
    build_rich_schema(cluster, db, contrib=has_contrib(cluster))
    backup(there, db)
    manifest = database_manifest(there, db)
    assert manifest["server_version"].startswith(f"{major}.")
    assert manifest["client_version"].startswith(f"pg_dump (PostgreSQL) {major}.")

    target = f"{db}_restored"
    result = there.cli("restore", there.pg, db, "--into", target)
    assert result.exit_code == 0, result.output
    assert cluster.table_fingerprints(target) == cluster.table_fingerprints(db)
    assert inventory(cluster, target) == inventory(cluster, db)
    assert sequence_states(cluster, target) == sequence_states(cluster, db)
    assert large_objects(cluster, target) == large_objects(cluster, db)


@pytest.mark.parametrize("major", VERSIONS)
def test_a_15_backup_restores_into_a_newer_server(
    major, env, pg_versions, pg_db, pg_admin, wheel_clients, caplog
):
    """The upgrade path: a backup of PostgreSQL 15 restored into `major`, with the client
    chosen for the target: its own version, out of 15 to 18."""
    caplog.set_level(logging.INFO)
    wheel_clients()
    cluster = pg_versions(major)
    db = pg_db()
    build_rich_schema(pg_admin, db, contrib=has_contrib(cluster))
    backup(env, db)

    there = on_cluster(env, cluster)  # no bin_dir: the client is chosen
    target = f"{db}_from15"
    result = there.cli("restore", there.pg, db, "--from-server", env.pg, "--into", target)
    assert result.exit_code == 0, result.output
    assert cluster.table_fingerprints(target) == pg_admin.table_fingerprints(db)
    assert sequence_states(cluster, target) == sequence_states(pg_admin, db)
    assert large_objects(cluster, target) == large_objects(pg_admin, db)
    restore_note = client_notes(caplog)[-1]
    assert restore_note.startswith(
        f"PostgreSQL client tools: {WHEELS[major].bin_dir()} (version {major})"
    )


@pytest.mark.parametrize(("installed", "chosen"), [(VERSIONS, 16), ([17, 18], 17)])
def test_a_backup_uses_the_client_closest_to_the_server(
    installed, chosen, env, pg_versions, wheel_clients, caplog, monkeypatch
):
    """Without bin_dir, a PostgreSQL 16 server is dumped with client 16 when installed, else
    with the next one up (17), and the run says which one and why (warning of the latter)."""
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(pg_clients, "INSTALL_GLOBS", ())  # only the wheels: a fixed set
    wheel_clients(*installed)
    cluster = pg_versions(16)
    there = on_cluster(env, cluster)
    db = f"dbb_closest_{suffix()}"
    cluster.create(db)
    cluster.execute(
        db, "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a')"
    )
    backup(there, db)
    client = database_manifest(there, db)["client_version"]
    assert client.startswith(f"pg_dump (PostgreSQL) {chosen}.")
    [note] = client_notes(caplog)
    assert note.startswith(
        f"PostgreSQL client tools: {WHEELS[chosen].bin_dir()} (version {chosen})"
    )
    assert "PostgreSQL 16.2" in note
    assert ("No PostgreSQL 16 client is installed" in note) == (chosen != 16)


def test_bin_dir_with_an_older_client_is_refused_before_any_dump(env, pg_versions):
    """bin_dir holding pg_dump 15 against a PostgreSQL 16 server: exit 3, nothing stored."""
    cluster = pg_versions(16)
    there = on_cluster(env, cluster, bin_dir=str(DEBIAN_15))
    db = f"dbb_old_{suffix()}"
    cluster.create(db)
    result = there.cli("backup", there.pg, "-d", db)
    assert result.exit_code == 3, result.output
    assert f"{DEBIAN_15}/pg_dump is version 15" in result.output
    assert "runs 16: pg_dump cannot dump a newer server" in result.output
    assert not list(env.storage_path.rglob("manifest.json"))


def test_only_an_older_client_installed_fails_backup_and_restore_with_the_fix(
    env, pg_versions, pg_db, only_debian_15
):
    """No client as new as the server: backup and restore end with exit 3 before touching
    anything, naming the server version, the clients found and how to install one."""
    cluster = pg_versions(16)
    there = on_cluster(env, cluster)
    db = f"dbb_none_{suffix()}"
    cluster.create(db)
    result = there.cli("backup", there.pg, "-d", db)
    assert result.exit_code == 3, result.output
    for expected in (
        f"the server at postgres@127.0.0.1:{cluster.port}",
        "at least as new as the server (PostgreSQL 16.2)",
        f"Found: {DEBIAN_15} (15)",
        "apt install postgresql-client-16",
        "set bin_dir",
    ):
        assert expected in result.output
    assert not list(env.storage_path.rglob("manifest.json"))

    source = pg_db()  # a backup of the 15 server (its own client fits) ...
    backup(env, source)
    result = there.cli("restore", there.pg, source, "--from-server", env.pg, "--into", db + "_r")
    assert result.exit_code == 3, result.output  # ... cannot be restored into 16 with client 15
    assert "apt install postgresql-client-16" in result.output
    assert not cluster.exists(db + "_r")
