"""`dbbackup` as a user runs it: its own process, talking to the test's Prefect API.

For tests whose claim is about the process (its umask, its files, a kill -9): the
in-process CliRunner of tests/helpers.py shares the test's process and cannot show those.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

MAIN = "from prefect_dbbackup.flows.cli import main; main()"


def child_env(workdir: Path, **extra: str) -> dict[str, str]:
    """The test's environment without its Prefect settings, plus the test API's URL and a
    work dir of the test's own (DBBACKUP_WORK_DIR)."""
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_API_URL=str(PREFECT_API_URL.value()),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DBBACKUP_WORK_DIR=str(workdir),
        **extra,
    )
    return env


def storage_args(env, command: str) -> list[str]:  # noqa: ANN001
    """The --storage (and --encryption) options of a BlockEnv for `command`."""
    args = ["--storage", env.storage]
    if command in ("backup", "restore", "check"):
        args += ["--encryption", env.encryption]
    return args


def start_cli(
    argv: list[str], workdir: Path, *, umask: int | None = None, before: str = "", **extra: str
) -> subprocess.Popen[str]:
    """Start `dbbackup ARGV` (umask: set first in the child; before: Python run before main)."""
    preamble = f"import os; os.umask({umask:#o}); " if umask is not None else ""
    return subprocess.Popen(
        [sys.executable, "-c", f"{preamble}{before}\n{MAIN}", *argv],
        env=child_env(workdir, **extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_cli(
    argv: list[str], workdir: Path, *, umask: int | None = None, timeout: float = 300, **extra: str
) -> subprocess.CompletedProcess[str]:
    """Run `dbbackup ARGV` to its end (see start_cli)."""
    proc = start_cli(argv, workdir, umask=umask, **extra)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def wait_for(condition: Callable[[], object], seconds: float, what: str, step: float = 0.05):  # noqa: ANN201
    """condition()'s first true value; AssertionError naming `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        if found := condition():
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        time.sleep(step)
