"""The flows take a block instance or a saved block's name for server, storage and
encryption (docs/python-api.md): an unsaved block's series is its describe(), a loaded one's
its name; Prefect validates both forms, and no secret of a block reaches the parameters the
Prefect API stores."""

from __future__ import annotations

import json
import uuid

import pytest
from pydantic import SecretStr

from tests.helpers import PG, flow_runs_of, signing_fields


@pytest.fixture
def unsaved(tmp_path, identity_file, recipient):
    """Unsaved blocks whose every secret is unique: a password (trust auth ignores it), an
    inline identity and a signing key."""
    from prefect_dbbackup import AgeEncryption, LocalBackupStorage, PostgresServer

    password = f"pw-{uuid.uuid4().hex}"
    identity = next(
        line for line in identity_file.read_text().splitlines() if line.startswith("AGE-")
    )
    fields = signing_fields()
    server = PostgresServer(**PG, password=SecretStr(password), backup_users=False)
    storage = LocalBackupStorage(path=str(tmp_path / "backups"), **fields)
    encryption = AgeEncryption(recipients=[recipient], identity=SecretStr(identity))
    secrets = [password, identity, fields["manifest_signing_key"].get_secret_value()]
    return server, storage, encryption, secrets


def _stored_parameters(flow_name: str, run_id: object) -> str:
    """The parameters of one flow run as the Prefect API holds them (JSON text)."""
    (run,) = [r for r in flow_runs_of(flow_name) if r.id == run_id]
    return json.dumps(run.parameters)


def test_unsaved_blocks_back_up_prune_and_restore_with_no_secret_in_the_api(
    unsaved, pg_db, pg_admin, cleanup_pg
):
    from prefect_dbbackup import RetentionPolicy, backup_server, restore_database
    from prefect_dbbackup.tasks.catalog import list_backups

    server, storage, encryption, secrets = unsaved
    db = pg_db()
    pg_admin.execute(db, "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2);")
    keep_one = RetentionPolicy(keep_last=1)
    states = [
        backup_server(server, storage, encryption, [db], retention=keep_one, return_state=True)
        for _ in range(2)
    ]
    reports = [s.result() for s in states]
    series = "postgres@127.0.0.1:5432"  # an unsaved server's describe()
    assert {r.server for r in reports} == {series}
    assert [(o.database, o.status) for o in reports[1].outcomes] == [(db, "ok")]
    # pruned after the second backup: the series holds only the newest backup
    assert [m.backup_id for m in list_backups(storage, series, db)] == [
        reports[1].outcomes[0].backup_id
    ]

    target = f"{db}_copy"
    cleanup_pg.append(target)
    state = restore_database(
        server, db, storage, encryption, target_database=target, return_state=True
    )
    assert state.result().target_database == target
    assert pg_admin.query(target, "SELECT id FROM t ORDER BY id") == [(1,), (2,)]

    for name, s in [("backup-server", states[0]), ("restore-database", state)]:
        (run,) = [r for r in flow_runs_of(name) if r.id == s.state_details.flow_run_id]
        assert run.name.startswith(f"{name.split('-')[0]}-{series}-"), run.name
        stored = json.dumps(run.parameters) + run.name
        assert "**********" in stored  # the block's fields are there, its secrets masked
        assert [secret for secret in secrets if secret in stored] == []


def test_a_loaded_block_writes_the_series_of_its_name_and_names_still_work(env, pg_db, pg_admin):
    """A block loaded by name (or given by name) names its series as the CLI does: a backup
    taken with PostgresServer.load(name) is verified and pruned by name."""
    from prefect_dbbackup import (
        LocalBackupStorage,
        PostgresServer,
        backup_server,
        prune_backups,
        verify_backups,
    )

    db = pg_db()
    pg_admin.execute(db, "CREATE TABLE t (id int); INSERT INTO t VALUES (7);")
    report = backup_server(
        PostgresServer.load(env.pg), LocalBackupStorage.load(env.storage), env.encryption, [db]
    )
    assert report.server == env.pg
    verified = verify_backups(env.pg, env.storage, env.encryption, databases=[db])
    assert [(o.database, o.status, o.rows) for o in verified.outcomes] == [(db, "ok", 1)]
    items = prune_backups(PostgresServer.load(env.pg), env.storage, database=db, dry_run=True)
    assert [(i.database, i.backup_id) for i in items] == [(db, report.outcomes[0].backup_id)]
    (run,) = flow_runs_of("prune-backups", dry_run=True, database=db)
    assert run.name == f"prune-{env.pg}"


def test_a_block_of_the_wrong_role_is_refused(prefect_api, tmp_path) -> None:
    """Prefect's parameter validation refuses a storage block given as the server."""
    from prefect.exceptions import ParameterTypeError
    from prefect_dbbackup import LocalBackupStorage, backup_server

    with pytest.raises(ParameterTypeError, match="server"):
        backup_server(LocalBackupStorage(path=str(tmp_path)), "x", "y")
