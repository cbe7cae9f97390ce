"""A pre-migrated SQLite database for the local server's first start in a new PREFECT_HOME.

Prefect's server migrates a new SQLite database through ~116 Alembic migrations before it
answers (~8 s). The template is that database once, freshly migrated and empty (only
`alembic_version` has a row: no encryption key, no blocks), kept per user and per Prefect
version in `$XDG_CACHE_HOME/dbbackup/prefect-<version>.db` (default `~/.cache`, 0700).
Before a home's first start its `prefect.db` is copied from the template (a private copy,
checked, then linked into place: an existing database is never replaced); Prefect's own
start-up then finds it at its head and migrates nothing, and a later Prefect migrates it
forward like any other database. A damaged template is removed and the start falls back to
Prefect's migrations. The template is built in the background after a first start that
found none (built in a temp directory, checked, renamed: a killed build leaves no template).
`DBBACKUP_DB_TEMPLATE=off` never uses or builds one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

TEMPLATE_VARIABLE = "DBBACKUP_DB_TEMPLATE"
BUILD_TIMEOUT_SECONDS = 900.0
_SIDE_FILES = ("-wal", "-shm", "-journal")


def cache_dir() -> Path:
    """The per-user directory of the templates."""
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "dbbackup"


def template_path() -> Path:
    """This Prefect version's template."""
    return cache_dir() / f"prefect-{version('prefect')}.db"


def home_database(home: Path) -> Path | None:
    """The SQLite file the local server will use in home, or None when the template does
    not apply: turned off, or another database configured for Prefect's server."""
    if os.environ.get(TEMPLATE_VARIABLE, "").strip().lower() in ("off", "0", "false", "no"):
        return None
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    url = settings.server.database.connection_url
    if url is None or url.get_secret_value() != f"sqlite+aiosqlite:///{settings.home}/prefect.db":
        return None
    return home / "prefect.db"


def problem(path: Path) -> str | None:
    """Why the database at path is no fresh template (None: it is one): unreadable, damaged,
    unstamped, or holding data (an encryption key would be shared between homes)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=rw", uri=True)) as db:
            checked = db.execute("PRAGMA quick_check").fetchall()
            if checked != [("ok",)]:
                return f"damaged ({checked[0][0]})"
            if not db.execute("SELECT version_num FROM alembic_version").fetchall():
                return "no Alembic revision"
            if db.execute("SELECT count(*) FROM configuration").fetchone()[0]:
                return "not empty"
    except sqlite3.Error as exc:
        return f"not a Prefect database ({exc})"
    return None


def seed(database: Path) -> str | None:
    """Before a first start (the caller holds the home's lock): copy the template into
    database when there is none. Returns a line for the server log when a template was
    there but not used; None when it was copied, or when there is none (yet)."""
    if any(Path(f"{database}{side}").exists() for side in ("", *_SIDE_FILES)):
        return None
    template = template_path()
    tmp = database.with_name(".prefect.db.template-copy")
    tmp.unlink(missing_ok=True)
    for side in _SIDE_FILES:
        Path(f"{tmp}{side}").unlink(missing_ok=True)
    try:
        source = os.open(template, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"database template {template} not used ({exc})"
    try:
        info = os.fstat(source)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
            return f"database template {template} not used (not a file of this user)"
        target = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(target, "wb") as out, os.fdopen(os.dup(source), "rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
    finally:
        os.close(source)
    why = problem(tmp)
    if why is not None:
        tmp.unlink()
        template.unlink(missing_ok=True)  # rebuilt after this start
        return f"database template {template} removed: {why}; Prefect migrates the new database"
    try:
        os.link(tmp, database)  # never over an existing database
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return None


def wanted(database: Path | None) -> bool:
    """True when a first start should build the template afterwards."""
    return database is not None and not template_path().exists()


def build_in_background() -> None:
    """Build the template in a detached, niced process (one per user at a time)."""
    subprocess.Popen(
        [sys.executable, "-m", "prefect_dbbackup.flows.db_template"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def build() -> Path | None:
    """Build this Prefect version's template unless it exists or another process is
    building it (None). Prefect's own `prefect server database upgrade` migrates a new
    database in a temp directory; it is checked, then renamed into place."""
    directory = cache_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    with os.fdopen(os.open(directory / "build.lock", os.O_RDWR | os.O_CREAT, 0o600)) as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        template = template_path()
        if template.exists():
            return None
        for stale in directory.glob("build-*"):  # killed builds: the lock proves them dead
            shutil.rmtree(stale, ignore_errors=True)
        for old in directory.glob("prefect-*.db"):  # other Prefect versions
            old.unlink(missing_ok=True)
        work = Path(tempfile.mkdtemp(prefix="build-", dir=directory))
        try:
            database = work / "prefect.db"
            env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
            env.update(
                PREFECT_HOME=str(work),
                PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{database}",
                PREFECT_SERVER_ANALYTICS_ENABLED="false",
            )
            subprocess.run(
                [sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"],
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                check=True,
                timeout=BUILD_TIMEOUT_SECONDS,
            )
            why = problem(database)
            if why is not None:
                raise RuntimeError(f"the new database template is {why}")
            database.chmod(0o600)
            os.replace(database, template)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return template


if __name__ == "__main__":
    os.nice(10)
    build()
