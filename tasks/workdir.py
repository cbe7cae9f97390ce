"""Private working directories for spool files and credentials files.

Each directory records the process that owns it (`.owner`: pid and the process's
start time). A run killed outright (SIGKILL, OOM) cannot remove its directory, and
that directory may hold credentials files (`pgpass-*`, `my.cnf-*`) and ciphertext
spools: the next run removes every directory whose owner process is gone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

OWNER_FILE = ".owner"


def process_start(pid: int) -> str | None:
    """The start time of a live process (field 22 of /proc/PID/stat), or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _owner_alive(directory: Path) -> bool:
    """False only when the directory's recorded owner process is certainly gone."""
    try:
        pid_text, started = (directory / OWNER_FILE).read_text().split()
        pid = int(pid_text)
    except (OSError, ValueError):
        return True  # not one of ours (or still being created): leave it
    return process_start(pid) == started


def remove_stale_workdirs(parent: Path, prefix: str = "dbbackup-") -> list[Path]:
    """Remove the work dirs under parent that were left by processes which no longer run."""
    removed = []
    with contextlib.suppress(OSError):
        for directory in parent.iterdir():
            ours = directory.name.startswith(prefix) and directory.is_dir()
            if ours and not _owner_alive(directory):
                shutil.rmtree(directory, ignore_errors=True)
                removed.append(directory)
    return removed


@contextlib.contextmanager
def private_workdir(prefix: str = "dbbackup-") -> Iterator[Path]:
    """A 0700 directory (under $DBBACKUP_WORK_DIR or the system temp dir), removed afterwards;
    work dirs of dead runs found beside it are removed first."""
    parent = os.environ.get("DBBACKUP_WORK_DIR") or None
    if parent:
        Path(parent).mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        (path / OWNER_FILE).write_text(f"{os.getpid()} {process_start(os.getpid())}\n")
        remove_stale_workdirs(path.parent, prefix)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
