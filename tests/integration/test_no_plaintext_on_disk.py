"""docs/architecture.md, "Data path": plaintext exists only in the pipe from the dump client
and in memory. While a real backup runs (its pg_dump stopped mid-dump, after megabytes of
rows passed into dbbackup), and once it is done, no file dbbackup holds open or wrote holds
the data: not as plaintext, not zstd-compressed. A file there is age ciphertext, or one of
dbbackup's own files that hold no dump data (the client's stderr, the credentials file,
manifests), and none of those holds the marker either.
"""

from __future__ import annotations

import os
import re
import signal
import time
import uuid
from pathlib import Path

import pytest
from prefect_dbbackup.blocks import PostgresServer
from prefect_dbbackup.blocks.registry import load_storage
from prefect_dbbackup.tasks.catalog import list_backups

from tests.helpers import PG
from tests.integration.cli_process import start_cli, storage_args, wait_for

AGE = b"age-encryption.org/v1\n"
ZSTD = b"\x28\xb5\x2f\xfd"
ROWS = 220_000  # ~20 MB of dump: ciphertext is on disk after about 10 MB of it
# a deduplicating backup reads up to 16 MiB ahead and stores whole chunks (docs/dedup.md):
# its ciphertext reaches the disk later, so its dump is three times as long
DEDUP_ROWS = 3 * ROWS
ON_DISK = 256 << 10  # ciphertext of the table's rows on disk at the check


def _pids_of(pid: int) -> list[int]:
    """pid and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += children.get(p, [])
    return found


def _pg_dump_of(root: int, db: str) -> int | None:
    for pid in _pids_of(root):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0].endswith(b"pg_dump") and any(db.encode() in a for a in argv):
            return pid
    return None


def _written(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError(f"no wchar in /proc/{pid}/io")


def _ciphertext(work: Path, storage: Path) -> int:
    """Bytes of the database's ciphertext on disk: its spool, or its chunks (temp files too)."""
    found = [*work.rglob("database.*.age"), *storage.glob("_dedup/chunks/**/*")]
    return sum(p.stat().st_size for p in found if p.is_file())


def _files(root: int, dirs: list[Path]) -> dict[str, Path]:
    """What to read -> where: every regular file the processes have open (deleted ones
    too, read through /proc), every file under dirs."""
    found = {}
    for pid in _pids_of(root):
        fds = Path(f"/proc/{pid}/fd")
        try:
            entries = list(fds.iterdir())
        except OSError:
            continue  # ended meanwhile
        for fd in entries:
            try:
                target = os.readlink(fd)
                if target.startswith("/") and fd.is_file():
                    found[f"open by {pid}: {target}"] = fd
            except OSError:
                continue
    for d in dirs:
        for path in d.rglob("*"):
            if path.is_file() and not path.is_symlink():
                found[str(path)] = path
    return found


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:  # removed since the listing
        return None


def _leaks(files: dict[str, Path], marker: bytes, own_files: re.Pattern[str]) -> list[str]:
    problems = []
    for name, path in files.items():
        data = _read(path)
        if data is None:
            continue
        if marker in data:
            problems.append(f"{name}: holds the marker in plaintext")
        elif ZSTD in data[:4096]:
            problems.append(f"{name}: holds zstd data (compressed plaintext)")
        elif data and not data.startswith(AGE) and not own_files.search(name):
            problems.append(f"{name}: neither age ciphertext nor a known dbbackup file")
    return problems


def _scan_tmp(since: float, marker: bytes) -> list[str]:
    """Files under /tmp changed since the backup started that hold the marker."""
    hits = []
    for top, _, names in os.walk("/tmp"):
        for name in names:
            path = Path(top, name)
            try:
                if path.is_symlink() or path.stat().st_mtime < since or not path.is_file():
                    continue
                with path.open("rb") as f:
                    while block := f.read(1 << 24):
                        if marker in block:
                            hits.append(str(path))
                            break
                        f.seek(-len(marker), os.SEEK_CUR)  # a marker across two reads
                        if len(block) <= len(marker):
                            break
            except OSError:
                continue
    return hits


# dbbackup's own files that hold no dump data: the client's stderr (an unnamed temp file in
# TMPDIR), the work dir's owner record, the run record in PREFECT_HOME, manifests and their
# signatures, the dedup storage's GC parameters
OWN_FILES = re.compile(
    r"/tmpdir/#\d+ \(deleted\)|/\.owner|/home/dbbackup-runs/[-0-9a-f]+\.json"
    r"|/manifest\.json(\.sig)?|/_dedup/gc-parameters\.json"
)


@pytest.mark.parametrize("dedup", [False, True], ids=["whole-object", "dedup"])
def test_no_plaintext_on_disk_while_a_dump_runs(env, pg_db, pg_admin, tmp_path, dedup):
    env = env.with_dedup() if dedup else env
    # zstd level 1: its multithreaded jobs are smaller, so ciphertext reaches the disk
    # sooner (at level 3 after about 12 MB); the level changes nothing else
    server = f"pg-level1-{uuid.uuid4().hex[:8]}"
    PostgresServer(**PG, zstd_level=1).save(server)
    marker = f"plaintext-marker-{uuid.uuid4().hex}"
    db = pg_db()
    pg_admin.execute(
        db,
        f"CREATE TABLE t AS SELECT g, '{marker}-' || md5(g::text) AS v "
        f"FROM generate_series(1, {DEDUP_ROWS if dedup else ROWS}) g",
    )
    work, tmp, home = tmp_path / "work", tmp_path / "tmpdir", tmp_path / "home"
    for d in (work, tmp, home):
        d.mkdir()
    dirs = [work, tmp, home, env.storage_path]
    started = time.time()
    cli = start_cli(
        ["backup", server, "-d", db, *storage_args(env, "backup")],
        work,
        TMPDIR=str(tmp),
        PREFECT_HOME=str(home),
    )
    try:
        dump = wait_for(lambda: _pg_dump_of(cli.pid, db), 300, "pg_dump to start", step=0.005)
        os.kill(dump, signal.SIGSTOP)
        # let it run in short steps until ciphertext of its rows is on disk
        while _ciphertext(work, env.storage_path) < ON_DISK:
            os.kill(dump, signal.SIGCONT)
            time.sleep(0.005)
            os.kill(dump, signal.SIGSTOP)
            assert cli.poll() is None, cli.communicate()[1]
        wait_for(lambda: Path(f"/proc/{dump}/stat").read_text().split(")")[1].split()[0] == "T",
                 10, "pg_dump to stop")  # fmt: skip
        written = _written(dump)
        files = _files(cli.pid, dirs)
        assert _leaks(files, marker.encode(), OWN_FILES) == []
        assert _scan_tmp(started, marker.encode()) == []
        os.kill(dump, signal.SIGCONT)
        _, stderr = cli.communicate(timeout=300)
        assert cli.returncode == 0, stderr
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.communicate()
    (manifest,) = list_backups(load_storage(env.storage), server, db)
    # mid-dump: pg_dump had megabytes left to write when the files were read
    assert written < manifest.stats.raw_bytes - (4 << 20), (written, manifest.stats.raw_bytes)
    assert _leaks(_files(cli.pid, dirs), marker.encode(), OWN_FILES) == []
    assert _scan_tmp(started, marker.encode()) == []
