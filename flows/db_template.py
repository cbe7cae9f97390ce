"""A pre-migrated SQLite database for the local server's first start in a new PREFECT_HOME.

Prefect's server migrates a new SQLite database through ~116 Alembic migrations before it
answers (~8 s), then registers its block types (~1.5 s). The template is that database
once, freshly migrated with Prefect's block types registered and nothing else (no
encryption key, no blocks), kept per user, Prefect version and set of installed Prefect
collections in `$XDG_CACHE_HOME/dbbackup/prefect-<version>-<collections>.db` (default
`~/.cache`, 0700). Before a home's first start its `prefect.db` is copied from the template
(a private copy, checked, then linked into place: an existing database is never replaced);
that start neither migrates nor registers block types, the next start of the home lets
Prefect register them again (its own check), and a later Prefect migrates the database
forward like any other. A damaged template is removed and the start falls back to
Prefect's migrations. The template is built in the background after a first start that
found none (built in a temp directory, checked, renamed: a killed build leaves no template).
`DBBACKUP_DB_TEMPLATE=off` never uses or builds one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
from importlib.metadata import entry_points, version
from pathlib import Path

from prefect_dbbackup.flows.text import printable

TEMPLATE_VARIABLE = "DBBACKUP_DB_TEMPLATE"
BUILD_TIMEOUT_SECONDS = 900.0
_SIDE_FILES = ("-wal", "-shm", "-journal")
# the only tables of a template that hold rows: Alembic's revision, Prefect's block types
_TEMPLATE_TABLES = frozenset(
    {"alembic_version", "block_type", "block_schema", "block_schema_reference"}
)
# Prefect's block types into the database, as its server's start does (the block classes
# its server imports and the installed collections'): Prefect's own registration code
_REGISTER = [
    "-c",
    "import asyncio, prefect.plugins, prefect.server.api.server\n"
    "from prefect.server.database import provide_database_interface\n"
    "from prefect.server.models.block_registration import run_block_auto_registration\n"
    "async def register():\n"
    "    prefect.plugins.load_prefect_collections()\n"
    "    async with await provide_database_interface().session() as session:\n"
    "        await run_block_auto_registration(session=session)\n"
    "asyncio.run(register())\n",
]


def cache_dir() -> Path:
    """The per-user directory of the templates."""
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "dbbackup"


def template_path() -> Path:
    """The template of this Prefect version and these Prefect collections (their block
    types are registered in it)."""
    collections = sorted(
        f"{point.dist.name}=={point.dist.version}"
        for point in entry_points(group="prefect.collections")
        if point.dist is not None
    )
    key = hashlib.sha256("\n".join(collections).encode()).hexdigest()[:12]
    return cache_dir() / f"prefect-{version('prefect')}-{key}.db"


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
    unstamped, without Prefect's block types, or holding data besides them (an encryption
    key would be shared between homes; blocks, runs or deployments would appear in each)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=rw", uri=True)) as db:
            checked = db.execute("PRAGMA quick_check").fetchall()
            if checked != [("ok",)]:
                return f"damaged ({checked[0][0]})"
            if not db.execute("SELECT version_num FROM alembic_version").fetchall():
                return "no Alembic revision"
            if not db.execute("SELECT count(*) FROM block_type").fetchone()[0]:
                return "no block types"
            tables = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
            holding = sorted(
                name
                for (name,) in tables
                if name not in _TEMPLATE_TABLES
                and not name.startswith("sqlite_")
                and db.execute(
                    f'SELECT EXISTS (SELECT 1 FROM "{name.replace(chr(34), 2 * chr(34))}")'
                ).fetchone()[0]
            )
            if holding:
                return f"not empty ({', '.join(map(printable, holding[:5]))})"
    except sqlite3.Error as exc:
        return f"not a Prefect database ({exc})"
    return None


def seed(database: Path) -> tuple[bool, str | None]:
    """Before a first start (the caller holds the home's lock): copy the template into
    database when there is none. Returns whether it was copied (the start then need not
    register block types), and a line for the server log when a template was there but
    not used."""
    if any(Path(f"{database}{side}").exists() for side in ("", *_SIDE_FILES)):
        return False, None
    template = template_path()
    tmp = database.with_name(".prefect.db.template-copy")
    tmp.unlink(missing_ok=True)
    for side in _SIDE_FILES:
        Path(f"{tmp}{side}").unlink(missing_ok=True)
    try:
        source = os.open(template, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return False, None
    except OSError as exc:
        return False, f"database template {template} not used ({exc})"
    try:
        info = os.fstat(source)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
            return False, f"database template {template} not used (not a file of this user)"
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
        return False, f"database template {template} removed: {why}; Prefect migrates it"
    try:
        os.link(tmp, database)  # never over an existing database
    except FileExistsError:
        return False, None
    finally:
        tmp.unlink()
    return True, None


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
    database in a temp directory, Prefect's own block registration fills in the block
    types as its server's start does; it is checked, then renamed into place."""
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
            for step in (["-m", "prefect", "server", "database", "upgrade", "-y"], _REGISTER):
                subprocess.run(
                    [sys.executable, *step],
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
