"""Which PostgreSQL client tools to run: the installed client closest to the server's version.

pg_dump refuses a server newer than itself ("aborting because of server version
mismatch"). A newer client is no better, seen with PostgreSQL 15 to 18 here:
pg_restore reads only archives of a pg_dump no newer than its own format (17 and 18
share one, 16 had the one before), and pg_restore 17 and newer cannot restore into
16 or older (it sets transaction_timeout, which those servers do not know). So a
backup of a 16 server written by pg_dump 18 could not be restored into any 16
server. Without `bin_dir`, the server block therefore looks at every directory on
PATH and at the usual install locations, reads each pg_dump's major version, and
takes the OLDEST directory whose major is at least the server's: the server's own
version when it is installed. A restore asks for at least the target server's
version and the version of the pg_dump that wrote the backup. All tools of a run
(pg_dump, pg_dumpall, pg_restore) come from that one directory.
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


def choose_client(found: Sequence[tuple[str, int]], need: int) -> tuple[str, int] | None:
    """The oldest (directory, major) with a major of at least need; the first found on a tie.

    None when every client found is older.
    """
    fit = [client for client in found if client[1] >= need]
    return min(fit, key=lambda client: client[1]) if fit else None


def _major(server_version: str) -> int:
    match = re.match(r"\d+", server_version)
    return int(match.group()) if match else 0


def needed_major(server_version: str, backup_major: int | None = None) -> int:
    """The lowest client major for a server (and for a backup written by pg_dump backup_major)."""
    return max(_major(server_version), backup_major or 0)


def _requirement(server_version: str, backup_major: int | None) -> str:
    what = f"the server (PostgreSQL {server_version})"
    if backup_major is not None and backup_major > _major(server_version):
        what += f" and the pg_dump {backup_major} that wrote the backup"
    return what


def _listing(found: Sequence[tuple[str, int]]) -> str:
    return ", ".join(f"{directory} ({major})" for directory, major in found) or "none"


def chosen_note(
    choice: tuple[str, int],
    found: Sequence[tuple[str, int]],
    server_version: str,
    backup_major: int | None = None,
) -> str:
    """The log line saying which client a run uses, and why."""
    note = (
        f"PostgreSQL client tools: {choice[0]} (version {choice[1]}), the oldest installed "
        f"client at least as new as {_requirement(server_version, backup_major)}; "
        f"found: {_listing(found)}"
    )
    server = _major(server_version)
    if choice[1] > server and all(major != server for _, major in found):
        note += (
            f". No PostgreSQL {server} client is installed, and a newer one can fail where the "
            f"server's own would not: pg_restore 17 and newer cannot restore into PostgreSQL 16 "
            f"or older, so what pg_dump 17 or newer writes of such a server restores only into "
            f"17 or newer. Install postgresql-client-{server} to keep backups restorable into "
            "the server's own version"
        )
    return note


def missing_client_message(
    found: Sequence[tuple[str, int]],
    server_version: str,
    where: str,
    backup_major: int | None = None,
) -> str:
    """The error when no installed client is new enough, and how to fix it."""
    need = needed_major(server_version, backup_major)
    searched = ", ".join(("PATH", *INSTALL_GLOBS))
    return (
        f"no PostgreSQL client on this machine can work with the server at {where}: the client "
        f"must be at least as new as {_requirement(server_version, backup_major)}, version "
        f"{need} or newer. Found: {_listing(found)} (searched {searched}). Install the "
        f"PostgreSQL {need} client tools: Debian/Ubuntu `apt install postgresql-client-{need}` "
        f"(from apt.postgresql.org), RHEL `dnf install postgresql{need}`, Homebrew "
        f"`brew install postgresql@{need}`; or set bin_dir on the server block to a directory "
        f"holding pg_dump, pg_dumpall and pg_restore {need}."
    )
