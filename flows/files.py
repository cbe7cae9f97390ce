"""Small files dbbackup writes outside the storage (the local server's state, the metrics
file): whole or not at all, and never through a link or file planted at the temp name."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def replace_file(path: Path, text: str, mode: int, tmp: Path) -> None:
    """Write path whole: tmp (anything planted there removed first, never followed) written,
    fsynced and renamed over path. On a failure (a full disk) tmp is removed and the error
    raised."""
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "w") as out:
            os.fchmod(out.fileno(), mode)  # the umask narrowed the create
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
