"""The local Prefect server that `dbbackup` uses when no Prefect API is configured.

Without `PREFECT_API_URL` (in the environment or the active Prefect profile), the
first command starts one `prefect server start` in the background on 127.0.0.1
and a free port, and every later command reuses it: a command pays its imports
and API calls, not a server start. The server keeps its SQLite database under
`PREFECT_HOME` (made 0700: the database holds the key that decrypts the secret
blocks). Its state lives in `PREFECT_HOME/dbbackup-server/`: `server.json`
(pid, port, Prefect version), `server.log` and a lock file, so that two commands
started at the same moment start one server. A stale state file (dead pid, dead
port) or a server of another Prefect version (after an upgrade) is replaced.

A configured API (a remote server, Prefect Cloud) always wins and is never
touched. `DBBACKUP_PREFECT_SERVER=ephemeral` keeps Prefect's temporary in-process
API instead (one-off containers).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

import httpx
from prefect_dbbackup.blocks.errors import ConfigError

OPT_OUT_VARIABLE = "DBBACKUP_PREFECT_SERVER"
START_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 15.0


@dataclass(frozen=True)
class ServerState:
    """What `server.json` records of a started local server."""

    pid: int
    port: int
    prefect_version: str
    started_at: float

    @property
    def api_url(self) -> str:
        """The API address clients use."""
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def ui_url(self) -> str:
        """The address of the Prefect UI."""
        return f"http://127.0.0.1:{self.port}"


def prefect_home() -> Path:
    """PREFECT_HOME as Prefect resolves it (without importing Prefect)."""
    return Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser()


def state_dir() -> Path:
    """Where the local server's state file, log and lock live."""
    return prefect_home() / "dbbackup-server"


def configured_api_url() -> str | None:
    """The API URL that Prefect's settings resolve to, if any (env, profile, prefect.toml)."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    return str(url) if url else None


def secure_home(home: Path) -> None:
    """Create PREFECT_HOME 0700 and make its SQLite database 0600."""
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    home.chmod(0o700)
    for name in ("prefect.db", "prefect.db-wal", "prefect.db-shm"):
        with contextlib.suppress(FileNotFoundError):
            (home / name).chmod(0o600)


def read_state() -> ServerState | None:
    """The recorded server, or None when there is no (readable) state file."""
    try:
        data = json.loads((state_dir() / "server.json").read_text())
        return ServerState(**data)
    except (OSError, ValueError, TypeError):
        return None


def _write_state(state: ServerState) -> None:
    path = state_dir() / "server.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state)))
    os.replace(tmp, path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_our_server(pid: int) -> bool:
    """True when pid runs `prefect server start` (not a reused pid of another program)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"prefect" in b" ".join(cmdline) and b"server" in cmdline and b"start" in cmdline


def healthy(state: ServerState, timeout: float = 2.0) -> bool:
    """True when the recorded server answers its health check."""
    try:
        response = httpx.get(f"{state.api_url}/health", timeout=timeout)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def _usable(state: ServerState | None) -> bool:
    return (
        state is not None
        and state.prefect_version == version("prefect")
        and _pid_alive(state.pid)
        and healthy(state)
    )


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    directory = state_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(directory / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _terminate(state: ServerState) -> None:
    """Stop a recorded server (its whole process group), if it is still ours."""
    if not (_pid_alive(state.pid) and _is_our_server(state.pid)):
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(state.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    while time.monotonic() < deadline and _pid_alive(state.pid):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(state.pid, os.WNOHANG)
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(state.pid, signal.SIGKILL)


def _spawn() -> ServerState:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env["PREFECT_UI_API_URL"] = f"http://127.0.0.1:{port}/api"
    log = open(state_dir() / "server.log", "ab")  # noqa: SIM115 (handed to the child)
    with log:
        process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start"]
            + ["--host", "127.0.0.1", "--port", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    state = ServerState(process.pid, port, version("prefect"), time.time())
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = (state_dir() / "server.log").read_text(errors="replace")[-1500:]
            raise ConfigError(
                f"the local Prefect server did not start (exit {process.returncode}); "
                f"its log {state_dir() / 'server.log'} ends with:\n{tail}"
            )
        if healthy(state):
            _write_state(state)
            secure_home(prefect_home())
            return state
        time.sleep(0.25)
    _terminate(state)
    raise ConfigError(
        f"the local Prefect server did not answer within {START_TIMEOUT_SECONDS:.0f} s; "
        f"see {state_dir() / 'server.log'}"
    )


def ensure_running() -> tuple[ServerState, bool]:
    """The running local server, started if needed: (state, started_now)."""
    secure_home(prefect_home())
    with _locked():
        state = read_state()
        if _usable(state):
            return state, False  # type: ignore[return-value]
        if state is not None:
            _terminate(state)  # stale, unhealthy, or of another Prefect version
        return _spawn(), True


def stop() -> ServerState | None:
    """Stop the local server; the state it had, or None when none was recorded."""
    with _locked():
        state = read_state()
        if state is not None:
            _terminate(state)
            (state_dir() / "server.json").unlink(missing_ok=True)
        return state


def status() -> ServerState | None:
    """The local server if it runs and answers, else None."""
    state = read_state()
    return state if state is not None and _pid_alive(state.pid) and healthy(state) else None
