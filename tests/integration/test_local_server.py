"""Without a configured Prefect API, `dbbackup` starts one local Prefect server on first
use and reuses it; a stale or outdated one is replaced; a configured API always wins.
What it signals or talks to is proven its own: a state file naming another process, or
another home's server, gets no signal and no request."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path

import httpx
import pytest

from tests.helpers import session_signing_key

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


@pytest.fixture
def other_home(tmp_path: Path):
    """A second PREFECT_HOME on the same machine (another home's server)."""
    home = tmp_path / "other-home"
    yield home
    _dbbackup(_env(home), "server", "stop")


# an HTTP server that answers like Prefect's health check, records every request, and
# whose command line reads like `prefect server start`
FAKE_API = """
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

class Handler(BaseHTTPRequestHandler):
    def answer(self):
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        with open(sys.argv[1], "a") as log:
            log.write(json.dumps([self.command, self.path, dict(self.headers),
                                  body.decode(errors="replace")]) + "\\n")
        out = b"true" if self.path.endswith("/health") else b"[]"
        self.send_response(200)
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = answer
    def log_message(self, *args):
        pass

server = HTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


@pytest.fixture
def fake_api(tmp_path: Path, home: Path):
    """(process, port, request log) of a live foreign API on 127.0.0.1 that even claims
    this PREFECT_HOME in its environment."""
    log = tmp_path / "requests.log"
    log.touch()
    process = subprocess.Popen(
        [sys.executable, "-c", FAKE_API, str(log), "prefect", "server", "start"],
        stdout=subprocess.PIPE,
        text=True,
        env=_env(home),
    )
    port = int(process.stdout.readline())
    yield process, port, log
    process.kill()
    process.wait()


def _record(home: Path, state: dict) -> None:
    (home / "dbbackup-server").mkdir(parents=True, exist_ok=True)
    (home / "dbbackup-server" / "server.json").write_text(json.dumps(state))


def pg_config(tmp_path: Path, identity_file: Path) -> Path:
    """A dbbackup.yaml for the local PostgreSQL server `pg-mine` and a local storage."""
    config = tmp_path / "dbbackup.yaml"
    (tmp_path / "signing.key").write_text(session_signing_key())
    config.write_text(
        "servers:\n  pg-mine: {type: postgres, user: postgres, backup_users: false}\n"
        f"storage:\n  default: {{type: local, path: {tmp_path / 'backups'}, "
        f"manifest_signing_key_file: {tmp_path / 'signing.key'}}}\n"
        f"encryption:\n  default: {{identity_file: {identity_file}}}\n"
    )
    return config


def _apply_with_password(env: dict[str, str], tmp_path: Path, password: str):
    config = tmp_path / "dbbackup.yaml"
    config.write_text(
        "servers:\n  pg-mine: {type: postgres, host: 127.0.0.1, port: 5432, "
        f'password: "{password}"}}\n'
    )
    return _dbbackup(env, "apply", str(config))


@pytest.mark.slow
def test_first_use_starts_one_server_that_later_commands_reuse(
    home: Path, tmp_path: Path, identity_file: Path, pg_db
) -> None:
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
    assert "Finished in state" not in failed.stderr  # refused before any flow run
    # an expected error inside a run: one line too; Prefect's own state line stays, and
    # --debug shows the traceback
    assert _dbbackup(env, "apply", str(pg_config(tmp_path, identity_file))).returncode == 0
    db = pg_db()
    backed_up = _dbbackup(env, "backup", "pg-mine", "-d", db)
    assert backed_up.returncode == 0, backed_up.stderr
    # the run's address in the UI, said once, at the stable port
    ui = f"http://127.0.0.1:{_state(home)['port']}/runs/flow-run/"
    assert backed_up.stderr.count(ui) == 1, backed_up.stderr
    other = tmp_path / "other-identity.txt"
    subprocess.run(["age-keygen", "-o", str(other)], check=True, capture_output=True)
    wrong_key = ["restore", "pg-mine", db, "--into", db + "_r", "--identity-file", str(other)]
    failed_run = _dbbackup(env, *wrong_key)
    errors = [line for line in failed_run.stderr.splitlines() if line.startswith("dbbackup: ")]
    assert failed_run.returncode == 4 and len(errors) == 1, failed_run.stderr
    assert "cannot be decrypted with this identity" in errors[0]
    assert "Traceback" not in failed_run.stderr
    assert "Still processing items" not in failed_run.stderr
    assert "Finished in state Failed" in failed_run.stderr  # Prefect's own lines stay
    debug = _dbbackup(env, *wrong_key, "--debug")
    assert debug.returncode == 4 and "Traceback" in debug.stderr

    status = _dbbackup(env, "server", "status")
    assert status.returncode == 0
    assert f"pid      {pid}" in status.stdout
    assert f"http://127.0.0.1:{_state(home)['port']}" in status.stdout

    stopped = _dbbackup(env, "server", "stop")
    assert stopped.stdout.strip() == "stopped"
    assert _gone(pid)
    assert _dbbackup(env, "server", "status").returncode == 1


@pytest.mark.parametrize("command", ["keygen", "signing-keygen", "dedup-keygen"])
def test_a_key_command_starts_no_server(home: Path, tmp_path: Path, command: str) -> None:
    """Making a key file needs no Prefect API (its command says so, @needs_api): with no API
    configured, no local server is started for it."""
    key = tmp_path / "key"
    done = _dbbackup(_env(home), command, "-o", str(key))
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and key.stat().st_size > 0
    assert STARTED not in done.stderr
    assert not (home / "dbbackup-server").exists(), f"{command} started a server"


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["backup"], "Missing argument 'server'"),
        (["backup", "srv", "--no-such-option"], "No such option: --no-such-option"),
        (["restore", "srv"], "Missing argument 'database'"),
    ],
)
def test_a_usage_error_is_answered_without_starting_a_server(
    home: Path, argv: list[str], said: str
) -> None:
    """A command line that does not parse is a usage error (exit 3), said at once: no local
    server is started for it (it took 6 s), no Prefect API is asked."""
    done = _dbbackup(_env(home), *argv)
    assert done.returncode == 3, done.stderr
    assert said in done.stderr
    assert STARTED not in done.stderr
    assert not (home / "dbbackup-server").exists(), f"{argv} started a server"


def test_a_new_homes_server_takes_4200_when_it_is_free(home: Path) -> None:
    """Prefect's own port by default (no DBBACKUP_SERVER_PORT); when another program holds
    it, a free port, which is kept from then on. No other test uses 4200 (conftest)."""
    env = _env(home)
    env.pop("DBBACKUP_SERVER_PORT")
    with socket.socket() as probe:
        free = probe.connect_ex(("127.0.0.1", 4200)) != 0
    assert _dbbackup(env, "server", "start").returncode == 0
    port = _state(home)["port"]
    assert (port == 4200) is free, f"4200 {'free' if free else 'taken'}, server on {port}"
    assert (home / "dbbackup-server" / "port").read_text().strip() == str(port)


@pytest.mark.parametrize("value", ["http", "80", "70000"])
def test_a_port_setting_that_is_no_port_is_refused_before_any_start(home: Path, value: str) -> None:
    done = _dbbackup({**_env(home), "DBBACKUP_SERVER_PORT": value}, "server", "start")
    assert done.returncode == 3, done.stderr
    assert f"DBBACKUP_SERVER_PORT={value!r}: a port from 1024 to 65535, or 0" in done.stderr
    assert not (home / "dbbackup-server" / "server.json").exists()


def test_a_restarted_server_keeps_its_port(home: Path) -> None:
    """The UI's address stays the same across a stop and a start (4200 when it was free at
    the first start, else the port chosen then), and `server status` prints it."""
    env = _env(home)
    assert _dbbackup(env, "server", "start").returncode == 0
    first = _state(home)["port"]
    assert (home / "dbbackup-server" / "port").read_text().strip() == str(first)
    assert _dbbackup(env, "server", "stop").stdout.strip() == "stopped"
    assert _dbbackup(env, "server", "start").returncode == 0
    assert _state(home)["port"] == first
    status = _dbbackup(env, "server", "status")
    assert status.returncode == 0 and f"http://127.0.0.1:{first}" in status.stdout


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
    current = _state(home)
    assert _alive(current["pid"])

    # the state file of an older dbbackup (no start time, no home) naming this server:
    # proven by the pid's start just before `started_at`, kept
    legacy = {k: v for k, v in current.items() if k not in ("start_ticks", "home")}
    (home / "dbbackup-server" / "server.json").write_text(json.dumps(legacy))
    done = _dbbackup(env, "list", "srv")
    assert NO_STORAGE in done.stderr and STARTED not in done.stderr
    assert _state(home) == legacy


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


def test_a_state_file_naming_a_foreign_process_gets_no_signal_and_no_request(
    home: Path, fake_api, tmp_path: Path
) -> None:
    """A stale server.json whose pid is reused by another program (its command line even
    reads `prefect server start`) and whose port that program answers like Prefect."""
    process, port, requests = fake_api
    env = _env(home)
    foreign = {"pid": process.pid, "port": port, "prefect_version": "0.0.1", "started_at": 0.0}

    # an outdated-looking server is stopped only if it is proven ours: this one is not
    _record(home, foreign)
    assert _dbbackup(env, "server", "stop").stdout.strip() == "not running"
    assert process.poll() is None, "dbbackup signalled a process that is not its server"
    assert not (home / "dbbackup-server" / "server.json").exists()  # the stale state is gone

    # nor when it differs from this home's recorded server only by its start time (the
    # same command line, PREFECT_HOME and listening socket: a reused pid)
    ticks = int(Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    _record(home, {**foreign, "start_ticks": ticks + 1, "home": str(home.resolve())})
    assert _dbbackup(env, "server", "stop").stdout.strip() == "not running"
    assert process.poll() is None

    # a current-looking one: dbbackup starts its own server instead of sending it blocks
    _record(home, {**foreign, "prefect_version": version("prefect")})
    done = _apply_with_password(env, tmp_path, "pw-sentinel-4711")
    assert done.returncode == 0, done.stderr
    assert STARTED in done.stderr
    ours = _state(home)
    assert ours["pid"] != process.pid and ours["port"] != port and _alive(ours["pid"])
    assert process.poll() is None
    sent = requests.read_text()
    assert "pw-sentinel-4711" not in sent and "pg-mine" not in sent
    assert sent == "", f"dbbackup talked to an API it did not prove its own: {sent[:300]}"

    # our own server's pid, but the port answered by someone else: nothing is sent there
    _record(home, {**ours, "port": port})
    done = _dbbackup(env, "list", "srv")
    assert STARTED in done.stderr and NO_STORAGE in done.stderr
    assert requests.read_text() == "" and process.poll() is None
    assert _state(home)["port"] != port


def test_another_homes_server_is_neither_stopped_nor_used(
    home: Path, other_home: Path, tmp_path: Path
) -> None:
    theirs_env = _env(other_home)
    assert _dbbackup(theirs_env, "server", "start").returncode == 0
    theirs = _state(other_home)
    # the local API requires this home's secret: another local user cannot read its blocks
    filter_url = f"http://127.0.0.1:{theirs['port']}/api/block_documents/filter"
    assert httpx.post(filter_url, json={}).status_code == 401
    secret = other_home / "dbbackup-server" / "api-auth"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600

    # their state file copied into this home (a restored backup of ~, a shared template)
    env = _env(home)
    _record(home, theirs)
    assert _dbbackup(env, "server", "stop").stdout.strip() == "not running"
    assert _alive(theirs["pid"]), "`server stop` in one home stopped another home's server"
    assert _dbbackup(theirs_env, "server", "status").returncode == 0

    # this home's blocks (and password) go to this home's own server, never to theirs
    _record(home, theirs)
    done = _apply_with_password(env, tmp_path, "pw-sentinel-4712")
    assert done.returncode == 0, done.stderr
    assert STARTED in done.stderr
    mine = _state(home)
    assert mine["pid"] != theirs["pid"] and mine["port"] != theirs["port"]
    token = base64.b64encode(secret.read_bytes()).decode()  # Prefect's Basic auth string
    their_blocks = httpx.post(filter_url, json={}, headers={"Authorization": f"Basic {token}"})
    assert their_blocks.status_code == 200
    assert "pg-mine" not in their_blocks.text
    assert _dbbackup(theirs_env, "server", "status").returncode == 0


def test_a_server_of_an_older_dbbackup_is_replaced_on_its_port(tmp_path: Path) -> None:
    """The upgrade: an older dbbackup started its server without PREFECT_HOME (the
    default ~/.prefect) and without the API secret, and recorded no start time. It is
    proven this home's by its start and environment, stopped, and a server with the
    secret takes over its port: never two servers on one database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(HOME=str(tmp_path), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    home = tmp_path / ".prefect"
    (home / "dbbackup-server").mkdir(parents=True)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    older = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
        + ["--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _record(
            home,
            {"pid": older.pid, "port": port, "prefect_version": version("prefect")}
            | {"started_at": time.time()},
        )
        deadline = time.monotonic() + 120
        while not _answers(port) and time.monotonic() < deadline:
            time.sleep(0.5)
        done = _dbbackup(env, "list", "srv")
        assert STARTED in done.stderr and NO_STORAGE in done.stderr
        assert older.wait(timeout=30) is not None
        assert _state(home)["port"] == port and _state(home)["pid"] != older.pid
    finally:
        _dbbackup(env, "server", "stop")
        if older.poll() is None:
            os.killpg(older.pid, signal.SIGKILL)
            older.wait()


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_port_another_program_takes_before_the_server_binds_it_is_given_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The free port dbbackup picks can be taken before the server binds it (a neighbour
    starting at the same moment): the server is started on another port, not reported as
    'did not start'. The race is forced: the first port handed out is one held open here."""
    from prefect_dbbackup.flows import local_server

    for name in [n for n in os.environ if n.startswith("PREFECT_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        held = taken.getsockname()[1]
        handed = []
        free = local_server._port

        def first_the_held_port(preferred: int | None) -> int:
            handed.append(held if not handed else free(preferred))
            return handed[-1]

        monkeypatch.setattr(local_server, "_port", first_the_held_port)
        try:
            state, started = local_server.ensure_running()
            assert started and handed[0] == held and state.port == handed[-1] != held
            assert local_server.healthy(state)
            log = (tmp_path / "prefect-home" / "dbbackup-server" / "server.log").read_text()
            assert f"Port {held} is already in use" in log  # the first start met the held port
        finally:
            local_server.stop()
