"""The commands of an incident, one after another, while two busy loops keep both cores at
100%: all succeed. They run as a user runs them (child processes, no configured Prefect
API), so they also exercise the local Prefect server starting and answering under load.
One of each command proves it; repeating the cycle (twenty commands once) proved nothing more."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import session_signing_key

BUSY_LOOP = "while True: pass"


@pytest.fixture
def busy_cores() -> Iterator[None]:
    """Two processes that never sleep (one per core of the CI machine)."""
    loops = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(2)]
    try:
        yield
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()


@pytest.mark.slow
@pytest.mark.timeout(900)  # commands on cores kept busy: slow by design
def test_each_command_under_full_cpu_load_succeeds(
    tmp_path: Path, pg_db, pg_admin, cleanup_pg, identity_file: Path, busy_cores
) -> None:
    db = pg_db()
    pg_admin.execute(
        db,
        "CREATE TABLE items (id int PRIMARY KEY, name text);"
        "INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 2000) g;",
    )
    target = f"{db}_restored"
    cleanup_pg.append(target)
    (tmp_path / "signing.key").write_text(session_signing_key())
    config = tmp_path / "dbbackup.yaml"
    config.write_text(
        f"servers:\n  load-pg: {{type: postgres, user: postgres, include: ['{db}'], "
        "backup_users: false}\n"
        f"storage:\n  default: {{type: local, path: {tmp_path / 'backups'}, "
        f"manifest_signing_key_file: {tmp_path / 'signing.key'}}}\n"
        f"encryption:\n  default: {{identity_file: {identity_file}}}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DBBACKUP_WORK_DIR": str(tmp_path / "work"),
    }

    def dbbackup(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", "from prefect_dbbackup.flows.cli import main; main()", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, f"dbbackup {' '.join(args)}:\n{done.stderr}"
        return done.stdout

    commands = [
        ("apply", str(config)),
        ("backup", "load-pg"),
        ("backup", "load-pg"),
        ("list", "load-pg", "--database", db),
        ("restore", "load-pg", db, "--into", target, "--replace"),
        ("verify", "load-pg", "--database", db),
        ("apply", str(config)),  # again: idempotent with the server already running
    ]
    try:
        outputs = [dbbackup(*command) for command in commands]
        assert pg_admin.table_fingerprints(target) == pg_admin.table_fingerprints(db)
        # both backups are listed
        assert outputs[3].count(db) == 2, outputs[3]
    finally:
        subprocess.run(
            [sys.executable, "-c", "from prefect_dbbackup.flows.cli import main; main()"]
            + ["server", "stop"],
            env=env,
            capture_output=True,
            timeout=120,
        )
