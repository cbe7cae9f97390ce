"""Private working directories for spool files and credentials files."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def private_workdir(prefix: str = "dbbackup-") -> Iterator[Path]:
    """A 0700 directory (under $DBBACKUP_WORK_DIR or the system temp dir), removed afterwards."""
    parent = os.environ.get("DBBACKUP_WORK_DIR") or None
    if parent:
        Path(parent).mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
