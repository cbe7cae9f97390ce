"""Which PostgreSQL client tools to run: the newest installed client at least as new as the server.

pg_dump refuses a server newer than itself ("aborting because of server version
mismatch"), and pg_restore may not read what a newer pg_dump wrote; an older
server is fine for a newer client. So without `bin_dir` the server block looks
at every directory on PATH and at the usual install locations, reads each
pg_dump's major version, and takes the newest directory whose major is at least
the server's. All tools of a run (pg_dump, pg_dumpall, pg_restore) come from
that one directory.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

CLIENT_TOOLS = ("pg_dump", "pg_dumpall", "pg_restore")

# where packages install their versioned clients, searched after PATH
INSTALL_GLOBS = (
    "/usr/lib/postgresql/*/bin",  # Debian, Ubuntu
    "/usr/pgsql-*/bin",  # RHEL and its relatives (PGDG packages)
    "/opt/homebrew/opt/postgresql@*/bin",  # Homebrew, Apple silicon
    "/usr/local/opt/postgresql@*/bin",  # Homebrew, Intel
    "/opt/homebrew/bin",
)


def candidate_dirs(search_path: str, patterns: Iterable[str] | None = None) -> list[Path]:
    """Directories holding pg_dump, pg_dumpall and pg_restore, each once, PATH entries first.

    A pg_dump that is a symlink counts as the directory it points into (Homebrew's
    bin, RHEL's alternatives), so that every tool comes from one installation. Debian's
    /usr/bin/pg_dump is pg_wrapper, which runs the client of the local cluster's
    version whatever server it connects to: it is skipped, the versioned directories
    it dispatches to are candidates of their own.
    """
    entries = [e for e in search_path.split(os.pathsep) if e]
    for pattern in INSTALL_GLOBS if patterns is None else patterns:
        entries += sorted(glob.glob(pattern), key=_natural)
    found: dict[Path, None] = {}
    for entry in entries:
        real = Path(entry, "pg_dump").resolve()
        if real.name != "pg_dump":
            continue
        if all(_executable(real.parent / tool) for tool in CLIENT_TOOLS):
            found.setdefault(real.parent)
    return list(found)


def _natural(text: str) -> list[int | str]:
    """Sort key putting postgresql/9 before postgresql/10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def client_major(version_line: str) -> int | None:
    """The major version in `pg_dump --version` output ("pg_dump (PostgreSQL) 17.2" -> 17)."""
    match = re.search(r"\)\s*(\d+)", version_line) or re.search(r"(\d+)(?:\.\d+)?", version_line)
    return int(match.group(1)) if match else None


def choose_client(found: Sequence[tuple[str, int]], server_major: int) -> tuple[str, int] | None:
    """The newest (directory, major) at least as new as the server; the first found on a tie.

    None when every client found is older than the server.
    """
    fit = [client for client in found if client[1] >= server_major]
    return max(fit, key=lambda client: client[1]) if fit else None


def _listing(found: Sequence[tuple[str, int]]) -> str:
    return ", ".join(f"{directory} ({major})" for directory, major in found) or "none"


def chosen_note(
    choice: tuple[str, int], found: Sequence[tuple[str, int]], server_version: str
) -> str:
    """The log line saying which client a run uses, and why."""
    return (
        f"PostgreSQL client tools: {choice[0]} (version {choice[1]}), the newest installed "
        f"client at least as new as the server (PostgreSQL {server_version}); "
        f"found: {_listing(found)}"
    )


def missing_client_message(
    found: Sequence[tuple[str, int]], server_version: str, where: str
) -> str:
    """The error when no installed client is new enough for the server, and how to fix it."""
    major = re.match(r"\d+", server_version)
    need = major.group() if major else server_version
    searched = ", ".join(("PATH", *INSTALL_GLOBS))
    return (
        f"no PostgreSQL client on this machine can back up or restore the server at {where}, "
        f"which runs PostgreSQL {server_version}: pg_dump and pg_restore must be version "
        f"{need} or newer. Found: {_listing(found)} (searched {searched}). Install the "
        f"PostgreSQL {need} client tools (or newer): Debian/Ubuntu `apt install "
        f"postgresql-client-{need}` (from apt.postgresql.org), RHEL `dnf install "
        f"postgresql{need}`, Homebrew `brew install postgresql@{need}`; or set bin_dir on the "
        f"server block to a directory holding pg_dump, pg_dumpall and pg_restore {need} or newer."
    )
