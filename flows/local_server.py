"""The local Prefect server that `dbbackup` uses when no Prefect API is configured.

Without `PREFECT_API_URL` (in the environment or the active Prefect profile), the
first command starts one `prefect server start` in the background on 127.0.0.1
(port 4200 when free, else a free one; the port is kept in `dbbackup-server/port`, so
the UI's address stays the same across restarts; `DBBACKUP_SERVER_PORT` names another,
or 0 for any free one), and every later command reuses it: a
command pays its imports
and API calls, not a server start. The server keeps its SQLite database under
`PREFECT_HOME` (made 0700: the database holds the key that decrypts the secret
blocks). Its state lives in `PREFECT_HOME/dbbackup-server/`: `server.json`
(pid, the pid's start time, home, port, Prefect version), `api-auth` (0600, the
per-home API secret), `server.log` and a lock file, so that two commands
started at the same moment start one server.

Prove, then talk: the recorded server is used, or signalled, only when it is proven
to be this home's: the pid's start time (/proc/<pid>/stat) is the recorded one and its
command line and environment show `prefect server start` for this `PREFECT_HOME`; and
before anything is sent to the port, every socket listening there belongs to that
process or its children. Only then does a client get the API secret, which the server
requires of every request (`PREFECT_SERVER_API_AUTH_STRING`), so that no other local
user reads the blocks. A state that is not proven (a reused pid, another home's server,
someone else on the port) is forgotten without a signal, and a new server starts (on
the recorded port when it is free). One of ours that is unhealthy, of another Prefect
version or without the current secret is stopped and replaced. All of this reads a few
/proc files: the start stays fast.

A configured API (a remote server, Prefect Cloud) always wins and is never
touched. `DBBACKUP_PREFECT_SERVER=ephemeral` keeps Prefect's temporary in-process
API instead (one-off containers).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

import httpx
from prefect_dbbackup.blocks.errors import ConfigError
from prefect_dbbackup.flows import db_template, procfs
from prefect_dbbackup.flows.files import replace_file

OPT_OUT_VARIABLE = "DBBACKUP_PREFECT_SERVER"
START_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 15.0
DEFAULT_PORT = 4200  # Prefect's own: the UI address people know
PORT_VARIABLE = "DBBACKUP_SERVER_PORT"
PORT_ATTEMPTS = 3  # starts on another free port when a program takes the chosen one first
SERVER_AUTH_SETTING = "PREFECT_SERVER_API_AUTH_STRING"


@dataclass(frozen=True)
class ServerState:
    """What `server.json` records of a started local server."""

    pid: int
    port: int
    prefect_version: str
    started_at: float
    start_ticks: int | None = None  # /proc/<pid>/stat field 22 (None: an older dbbackup's file)
    home: str = ""

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


def secret_path() -> Path:
    """The per-home API secret's file."""
    return state_dir() / "api-auth"


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


def _port_setting() -> int | None:
    """DBBACKUP_SERVER_PORT: a port (it wins), 0 (any free port), unset (None)."""
    raw = os.environ.get(PORT_VARIABLE, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or not (int(raw) == 0 or 1024 <= int(raw) <= 65535):
        raise ConfigError(f"{PORT_VARIABLE}={raw!r}: a port from 1024 to 65535, or 0 for any")
    return int(raw)


def _remembered_port() -> int | None:
    """The port to start on: DBBACKUP_SERVER_PORT when it names one; else the port this
    home's server had last (kept across stops); else 4200 (None with the setting 0: any
    free port). Only ever a port to start on: what answers there is proven ours before use."""
    setting = _port_setting()
    if setting:
        return setting
    try:
        port = int((state_dir() / "port").read_text().strip())
    except (OSError, ValueError):
        return DEFAULT_PORT if setting is None else None
    return port if 1024 <= port <= 65535 else DEFAULT_PORT


def _remember_port(port: int) -> None:
    replace_file(state_dir() / "port", f"{port}\n", 0o600, state_dir() / "port.tmp")


def _write_state(state: ServerState) -> None:
    path = state_dir() / "server.json"
    replace_file(path, json.dumps(asdict(state)), 0o600, path.with_suffix(".tmp"))


def _api_secret() -> str:
    """This home's API secret, made once (0600, owned by this user, not a link)."""
    path = secret_path()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return _read_secret(path)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_urlsafe(32))
    return _read_secret(path)


def _read_secret(path: Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise ConfigError(f"cannot read the local server's API secret {path}: {exc}") from None
    with os.fdopen(fd) as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
            raise ConfigError(
                f"the local server's API secret {path} is not a private file of this user "
                "(mode 0600): remove it, and `dbbackup server start` makes a new one"
            )
        secret = handle.read().strip()
    if not secret:
        raise ConfigError(f"the local server's API secret {path} is empty: remove it")
    return secret


def _this_home() -> str:
    return str(prefect_home().resolve())


def _same_process(state: ServerState) -> bool:
    """True when state.pid is still the process that was recorded (not a reused pid)."""
    ticks = procfs.start_ticks(state.pid)
    if ticks is None:
        return False
    if state.start_ticks is not None:
        return ticks == state.start_ticks
    # a state file of an older dbbackup: the process must have started just before it
    began = procfs.started_at(ticks)
    return state.started_at - START_TIMEOUT_SECONDS - 5 <= began <= state.started_at + 1


def _home_of(pid: int) -> str | None:
    """The PREFECT_HOME a process uses, from its environment (which only its owner can
    read): an older dbbackup started its server without setting it."""
    env = procfs.environ(pid)
    if not env:
        return None
    raw = env.get("PREFECT_HOME") or "~/.prefect"
    if raw == "~" or raw.startswith("~/"):
        raw = env.get("HOME", "/nonexistent") + raw[1:]
    path = Path(raw).expanduser()
    if not path.is_absolute():
        cwd = procfs.cwd(pid)
        if cwd is None:
            return None
        path = Path(cwd) / path
    return str(path.resolve())


def _serves_this_home(pid: int) -> bool:
    """True when pid runs `prefect server start` for this PREFECT_HOME."""
    args = procfs.cmdline(pid)
    if not (any("prefect" in a for a in args) and "server" in args and "start" in args):
        return False
    return _home_of(pid) == _this_home()


def _owns(state: ServerState) -> bool:
    """True when the recorded pid is proven to be this home's server (signal it only then)."""
    if state.home and state.home != _this_home():
        return False
    return _same_process(state) and _serves_this_home(state.pid)


def _listener_is(pid: int, port: int) -> bool:
    """True when every socket a connection to 127.0.0.1:port reaches belongs to pid or
    its children (and there is one)."""
    listening = procfs.loopback_listeners(port)
    return bool(listening) and listening <= procfs.socket_inodes(procfs.with_descendants(pid))


def _trusted(state: ServerState) -> bool:
    """True when the process and the port are proven ours: only then is anything sent."""
    return _owns(state) and _listener_is(state.pid, state.port)


def _has_secret(state: ServerState, secret: str) -> bool:
    return procfs.environ(state.pid).get(SERVER_AUTH_SETTING) == secret


def healthy(state: ServerState, timeout: float = 2.0) -> bool:
    """True when the recorded server answers its health check (ask only a trusted one)."""
    try:
        response = httpx.get(f"{state.api_url}/health", timeout=timeout)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def _usable(state: ServerState, secret: str) -> bool:
    return (
        state.prefect_version == version("prefect")
        and _trusted(state)
        and _has_secret(state, secret)
        and healthy(state)
    )


def client_environment(state: ServerState) -> dict[str, str]:
    """What a client of the (proven) local server needs: its URL and this home's secret."""
    return {"PREFECT_API_URL": state.api_url, "PREFECT_API_AUTH_STRING": _api_secret()}


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


def _port(preferred: int | None) -> int:
    """The preferred port when it is free (a stable URL), else a free one."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", preferred or 0))
        except OSError:
            s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _terminate(state: ServerState) -> None:
    """Stop a recorded server (its whole process group), only if it is proven ours."""
    if not _owns(state):
        return
    ticks = procfs.start_ticks(state.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(state.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    while time.monotonic() < deadline and procfs.start_ticks(state.pid) == ticks:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(state.pid, os.WNOHANG)
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(state.pid, signal.SIGKILL)


def _forget(state: ServerState) -> None:
    """Drop a recorded server: stop it if it is proven ours, never signal anything else."""
    _terminate(state)
    (state_dir() / "server.json").unlink(missing_ok=True)


class PortTaken(ConfigError):
    """The port chosen for the server was taken by another program before it bound it."""


def _spawn(port: int, secret: str, seeded: bool) -> ServerState:
    """Start the server on port and wait until it is proven ours and healthy. PortTaken
    when another program took the port between its probe and the server's bind. A
    database just seeded from the template holds Prefect's block types: this start does
    not register them (nor records that it did: the next start lets Prefect check)."""
    home = _this_home()
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(
        PREFECT_HOME=home,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_API_URL=f"http://127.0.0.1:{port}/api",
        **{SERVER_AUTH_SETTING: secret},
    )
    if seeded:
        env.update(
            PREFECT_SERVER_REGISTER_BLOCKS_ON_START="false",
            PREFECT_SERVER_MEMOIZE_BLOCK_AUTO_REGISTRATION="false",
        )
    log = open(state_dir() / "server.log", "ab")  # noqa: SIM115 (handed to the child)
    start = log.tell()  # this start's output begins here
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
    ticks = procfs.start_ticks(process.pid)
    state = ServerState(process.pid, port, version("prefect"), time.time(), ticks, home)
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            with open(state_dir() / "server.log", "rb") as output:
                output.seek(start)
                tail = output.read().decode(errors="replace")[-1500:]
            # Prefect's own check ("Port N is already in use") or uvicorn's bind (errno 98)
            if "already in use" in tail.lower():
                raise PortTaken(f"port {port} was taken before the local Prefect server bound it")
            raise ConfigError(
                f"the local Prefect server did not start (exit {process.returncode}); "
                f"its log {state_dir() / 'server.log'} ends with:\n{tail}"
            )
        if _listener_is(process.pid, port) and healthy(state):
            _write_state(state)
            _remember_port(port)
            secure_home(prefect_home())
            return state
        time.sleep(0.25)
    _terminate(state)
    raise ConfigError(
        f"the local Prefect server did not answer within {START_TIMEOUT_SECONDS:.0f} s; "
        f"see {state_dir() / 'server.log'}"
    )


def ensure_running() -> tuple[ServerState, bool]:
    """The running local server, proven ours, started if needed: (state, started_now)."""
    if not procfs.available():
        raise ConfigError(
            "dbbackup's local Prefect server needs Linux's /proc to prove that the server "
            "it talks to is its own; set PREFECT_API_URL to a Prefect server, or "
            f"{OPT_OUT_VARIABLE}=ephemeral"
        )
    secure_home(prefect_home())
    with _locked():
        secret = _api_secret()
        state = read_state()
        if state is not None and _usable(state, secret):
            return state, False
        if state is not None:
            _forget(state)  # stale, foreign, unhealthy, outdated: signalled only if ours
        database = db_template.home_database(prefect_home())
        seeded, line = db_template.seed(database) if database else (False, None)
        _log_line(line)
        started = _start(state.port if state else _remembered_port(), secret, seeded)
        if db_template.wanted(database):
            db_template.build_in_background()  # for the next new home
        return started, True


def _start(preferred: int | None, secret: str, seeded: bool) -> ServerState:
    for _attempt in range(PORT_ATTEMPTS - 1):
        with contextlib.suppress(PortTaken):  # another program won the race: another port
            return _spawn(_port(preferred), secret, seeded)
        preferred = None
    return _spawn(_port(None), secret, seeded)


def _log_line(line: str | None) -> None:
    """Add one of dbbackup's own lines to the server log."""
    if line:
        with open(state_dir() / "server.log", "a") as log:
            log.write(f"dbbackup: {line}\n")


def stop() -> ServerState | None:
    """Stop the local server; the state it had, or None when none proven ours was recorded
    (a stale state is removed, nothing is signalled)."""
    with _locked():
        state = read_state()
        if state is None:
            return None
        proven = _owns(state)
        _forget(state)
        return state if proven else None


def status() -> ServerState | None:
    """The local server if it is proven ours and answers, else None."""
    state = read_state()
    return state if state is not None and _trusted(state) and healthy(state) else None
