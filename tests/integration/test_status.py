"""`dbbackup status` after real backups of a small PostgreSQL database: the rows, --json,
late by the deployment's schedule, the artifacts read back from the Prefect API, exit codes."""

from __future__ import annotations

import json
from datetime import timedelta

from prefect_dbbackup.flows.health import FLEET_KEY, health_key
from prefect_dbbackup.tasks.layout import GLOBALS_SEGMENT


def _latest_markdown(key: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    assert found, f"no artifact {key} in the Prefect API"
    return str(found[0].data)


def _versions(key: str) -> int:
    """How many times the artifact `key` was published."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        return len(
            client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
        )


def _rows(result) -> dict:  # noqa: ANN001
    return {(r["database"], r["kind"]): r for r in json.loads(result.stdout)}


def _stored(env, db: str) -> dict:  # noqa: ANN001
    """`list --json` of the database's backups, newest last (what the storage holds)."""
    result = env.cli("list", env.pg, "-d", db, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_status_after_real_backups(env, pg_db, pg_admin):
    """Rows read from real backups: age, size and its change, verify result, trust; the
    users/roles row apart; the artifacts of the server and of the fleet in the API."""
    db = pg_db()
    pg_admin.execute(
        db, "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a')"
    )
    assert env.cli("backup", env.pg, "-d", db).exit_code == 0
    pg_admin.execute(db, "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(2, 20000) g")
    assert env.cli("backup", env.pg, "-d", db).exit_code == 0
    first, second = _stored(env, db)

    result = env.cli("status", env.pg, "--json")
    assert result.exit_code == 0, result.output
    rows = _rows(result)
    assert set(rows) == {(db, "database"), (GLOBALS_SEGMENT, "users")}
    row = rows[db, "database"]
    assert (row["state"], row["late"], row["trust"], row["verify"]) == (
        "ok",
        False,
        "signed",
        "none",
    )
    assert row["backup_id"] == second["backup_id"]
    assert row["stored_bytes"] == second["stored_bytes"]
    assert row["change_bytes"] == second["stored_bytes"] - first["stored_bytes"] > 0
    assert 0 <= row["age_seconds"] < 600

    text = env.cli("status", env.pg)
    assert "1 database: 1 ok" in text.stdout, text.output  # _globals is no database
    assert "(users/roles)" in text.stdout

    # the artifact the backup run refreshed, read back from the API; the fleet's table is
    # published by `status` of every server
    mine = _latest_markdown(health_key(env.pg))
    assert db in mine and second["backup_id"] in mine and "| ok |" in mine
    assert env.cli("status", "--storage", env.storage).exit_code in (0, 1)
    assert db in _latest_markdown(FLEET_KEY)

    # verify writes its signed record: the row says ok, and so does the artifact it refreshed
    assert (
        env.cli(
            "verify", env.pg, "-d", db, "--storage", env.storage, "--encryption", env.encryption
        ).exit_code
        == 0
    )
    row = _rows(env.cli("status", env.pg, "--json"))[db, "database"]
    assert row["verify"] == "ok" and row["verified_at"]
    assert "| ok 20" in _latest_markdown(health_key(env.pg))

    # a prune run refreshes it too (a new version of the artifact)
    before = _versions(health_key(env.pg))
    pruned = env.cli("prune", env.pg, "--dry-run", "--storage", env.storage)
    assert pruned.exit_code == 0, pruned.output
    assert _versions(health_key(env.pg)) == before + 1


def test_late_by_the_deployment_schedule_and_exit_codes(env, pg_db, tmp_path):
    """A backup-server deployment scheduled every 0.2 s makes a backup older than that late
    (margin 0); --interval-hours overrides it; an unknown server exits 3 with a did-you-mean."""
    from prefect.client.schemas.schedules import IntervalSchedule
    from prefect_dbbackup.flows.backup import backup_server

    db = pg_db()
    assert env.cli("backup", env.pg, "-d", db).exit_code == 0
    deployment = backup_server.to_deployment(
        name=env.pg,
        tags=["dbbackup"],
        schedules=[IntervalSchedule(interval=timedelta(milliseconds=200))],
    )
    deployment_id = deployment.apply()
    try:
        prom = tmp_path / "metrics.prom"
        result = env.cli(
            "status", env.pg, "--margin-hours", "0", "--prometheus", str(prom), "--json"
        )
        assert result.exit_code == 1, result.output  # a row is not ok
        row = _rows(result)[db, "database"]
        assert (row["state"], row["late"], row["interval_seconds"]) == ("late", True, 0.2)
        assert f'dbbackup_backup_late{{server="{env.pg}",database="{db}",kind="database"}} 1.0' in (
            prom.read_text()
        )
        ok = env.cli("status", env.pg, "--interval-hours", "24", "--json")
        assert _rows(ok)[db, "database"]["state"] == "ok" and ok.exit_code == 0
    finally:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            client.delete_deployment(deployment_id)

    typo = env.cli("status", env.pg[:-1] + "x")
    assert typo.exit_code == 3
    assert "Did you mean" in typo.output and env.pg in typo.output
