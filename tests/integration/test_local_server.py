"""Without a configured Prefect API, `dbbackup` starts one local Prefect server on first
use and reuses it; a stale or outdated one is replaced; a configured API always wins."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

STARTED = "started a local Prefect server"
NO_STORAGE = "no backup storage block named 'default'"


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", **extra)
    return env


def _dbbackup(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The console script as a user runs it, in a child process."""
    return subprocess.run(
        [sys.executable, "-c", "from prefect_dbbackup.flows.cli import main; main()", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _state(home: Path) -> dict:
    return json.loads((home / "dbbackup-server" / "server.json").read_text())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _gone(pid: int, seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.2)
    return False


@pytest.fixture
def home(tmp_path: Path):
    home = tmp_path / "prefect-home"
    yield home
    _dbbackup(_env(home), "server", "stop")


def test_first_use_starts_one_server_that_later_commands_reuse(home: Path) -> None:
    env = _env(home)
    assert _dbbackup(env, "server", "status").returncode == 1
    assert _dbbackup(env, "keygen", "--help").returncode == 0
    assert not (home / "dbbackup-server" / "server.json").exists(), "--help started a server"

    # two commands at the same moment: one server, both reach its API
    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(lambda _: _dbbackup(env, "list", "srv"), range(2))
    for done in (first, second):
        assert done.returncode == 3, done.stderr
        assert NO_STORAGE in done.stderr
    assert [STARTED in d.stderr for d in (first, second)].count(True) == 1
    pid = _state(home)["pid"]
    assert _alive(pid)

    # the Prefect database holds the key to every secret block: private to its owner
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "prefect.db").stat().st_mode) == 0o600

    again = _dbbackup(env, "list", "srv")
    assert NO_STORAGE in again.stderr and STARTED not in again.stderr
    assert _state(home)["pid"] == pid

    # an expected error is said once, in one line, without a traceback (--debug shows it)
    failed = _dbbackup(env, "backup", "no-such-server")
    assert failed.returncode == 3
    errors = [line for line in failed.stderr.splitlines() if line.startswith("dbbackup: ")]
    assert errors == [
        "dbbackup: error: no database server block named 'no-such-server' (types "
        "postgres-server or mysql-server). Create it with `dbbackup apply CONFIG` or in the "
        "Prefect UI"
    ]
    assert "Traceback" not in failed.stderr
    assert "Still processing items" not in failed.stderr
    assert "Finished in state Failed" in failed.stderr  # Prefect's own lines stay
    debug = _dbbackup(env, "backup", "no-such-server", "--debug")
    assert debug.returncode == 3 and "Traceback" in debug.stderr

    status = _dbbackup(env, "server", "status")
    assert status.returncode == 0
    assert f"pid      {pid}" in status.stdout
    assert f"http://127.0.0.1:{_state(home)['port']}" in status.stdout

    stopped = _dbbackup(env, "server", "stop")
    assert stopped.stdout.strip() == "stopped"
    assert _gone(pid)
    assert _dbbackup(env, "server", "status").returncode == 1


def test_stale_and_outdated_servers_are_replaced(home: Path) -> None:
    env = _env(home)
    (home / "dbbackup-server").mkdir(parents=True)
    # a state file left by a killed server: dead pid, nothing on the port
    stale = {"pid": 2**22 - 7, "port": 9, "prefect_version": "3.9.1", "started_at": 0.0}
    (home / "dbbackup-server" / "server.json").write_text(json.dumps(stale))
    done = _dbbackup(env, "list", "srv")
    assert STARTED in done.stderr and NO_STORAGE in done.stderr
    first = _state(home)
    assert first["pid"] != stale["pid"] and _alive(first["pid"])

    # the same live server recorded as another Prefect version (an upgrade): restarted
    (home / "dbbackup-server" / "server.json").write_text(
        json.dumps({**first, "prefect_version": "0.0.1"})
    )
    done = _dbbackup(env, "list", "srv")
    assert STARTED in done.stderr and NO_STORAGE in done.stderr
    assert _gone(first["pid"])
    assert _alive(_state(home)["pid"])


def test_a_configured_api_is_used_and_no_server_is_started(tmp_path: Path) -> None:
    home = tmp_path / "home"
    # nothing listens on port 9: the command must try it, not start a local server
    env = _env(home, PREFECT_API_URL="http://127.0.0.1:9/api")
    done = _dbbackup(env, "list", "srv")
    assert done.returncode == 3
    assert "cannot reach the Prefect API at http://127.0.0.1:9/api" in done.stderr
    assert STARTED not in done.stderr
    assert not (home / "dbbackup-server" / "server.json").exists()

    opted_out = _env(tmp_path / "home2", DBBACKUP_PREFECT_SERVER="ephemeral")
    assert _dbbackup(opted_out, "server", "status").returncode == 1
    done = _dbbackup(opted_out, "list", "srv")
    # Prefect's own temporary API (whether it starts in time on a loaded machine or not)
    assert "Starting temporary server" in done.stderr
    assert STARTED not in done.stderr
    assert not (tmp_path / "home2" / "dbbackup-server" / "server.json").exists()
