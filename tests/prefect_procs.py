"""Real `prefect server` and `prefect worker` processes for the tests that need them.

Each process gets its own process group (stopped as a whole) and a log file; waits
have a deadline and fail naming what they waited for.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
DEADLINE = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check: Callable[[], Any], timeout: float = DEADLINE) -> Any:
    """Poll check() until it returns something truthy; fail naming `what` at the deadline."""
    end = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


def start(argv: list[str], env: dict[str, str], log: Path, cwd: Path = ROOT) -> subprocess.Popen:
    return subprocess.Popen(
        argv,
        env=env,
        cwd=cwd,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: killed as a whole at teardown
    )


def stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def prefect_env(home: Path, url: str, **extra: str) -> dict[str, str]:
    """This test process's environment without its Prefect settings, for a server at url."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return env | {
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.3",
        **extra,
    }


def start_server(env: dict[str, str], log: Path) -> subprocess.Popen:
    """`prefect server start` on PREFECT_API_URL's port, once it answers (migrations included)."""
    url = env["PREFECT_API_URL"]
    port = url.rsplit(":", 1)[1].split("/")[0]
    proc = start(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", port],
        env,
        log,
    )

    def healthy() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"prefect server exited with {proc.returncode}: see {log}")
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        return False

    try:
        wait_for("prefect server to answer", healthy)
    except BaseException:
        stop(proc)
        raise
    return proc
