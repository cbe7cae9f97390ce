"""docs/configuration.md (local-backup-storage) and docs/security.md: stored objects and
manifests are created with mode 0600 whatever the umask; directories follow the umask.

`dbbackup` runs in its own process with a permissive umask, as a careless cron job would.
Every file under the storage is checked, not a sample: objects, manifests, signatures,
chunks, fossils, the dedup key copy and the GC files.
"""

from __future__ import annotations

import stat
from pathlib import Path

from prefect_dbbackup.blocks.registry import load_storage
from prefect_dbbackup.tasks.catalog import list_backups
from prefect_dbbackup.tasks.dedup.layout import CHUNKS, FOSSILS, GC, KEYS
from prefect_dbbackup.tasks.layout import MANIFEST_NAME, SIGNATURE_NAME, backup_key

from tests.integration.cli_process import run_cli, storage_args

TABLE = "CREATE TABLE t AS SELECT g, md5(g::text) AS v FROM generate_series(1, 2000) g"


def _modes(root: Path) -> tuple[dict[str, int], dict[str, int]]:
    """(file -> mode, directory -> mode) of everything under root, root included."""
    files, dirs = {}, {".": stat.S_IMODE(root.lstat().st_mode)}
    for path in root.rglob("*"):
        mode = path.lstat().st_mode
        assert not stat.S_ISLNK(mode), path
        (dirs if stat.S_ISDIR(mode) else files)[str(path.relative_to(root))] = stat.S_IMODE(mode)
    return files, dirs


def _backup(env, db: str, tmp_path: Path, umask: int) -> None:  # noqa: ANN001
    argv = ["backup", env.pg, "-d", db, *storage_args(env, "backup")]
    done = run_cli(argv, tmp_path / "work", umask=umask)
    assert done.returncode == 0, done.stderr


def _assert_modes(root: Path, umask: int) -> dict[str, int]:
    files, dirs = _modes(root)
    assert {f: oct(m) for f, m in files.items() if m != 0o600} == {}
    want = 0o777 & ~umask
    assert {d: oct(m) for d, m in dirs.items() if m != want} == {}, f"umask {umask:#o}"
    return files


def test_plain_backup_files_are_0600_whatever_the_umask(env, pg_db, pg_admin, tmp_path):
    db = pg_db()
    pg_admin.execute(db, TABLE)
    _backup(env, db, tmp_path, umask=0o000)
    files = _assert_modes(env.storage_path, umask=0o000)
    names = {Path(f).name for f in files}
    assert {MANIFEST_NAME, SIGNATURE_NAME, "dump.pgc.zst.age"} <= names, sorted(files)


def test_dedup_backup_and_prune_files_are_0600_whatever_the_umask(env, pg_db, pg_admin, tmp_path):
    env = env.with_dedup(dedup_grace_hours=2 / 3600, dedup_fence_hours=1 / 3600)
    db = pg_db()
    pg_admin.execute(db, TABLE)
    umask = 0o022  # another umask than the plain test's: directories follow it
    _backup(env, db, tmp_path, umask=umask)
    files = _assert_modes(env.storage_path, umask=umask)
    assert {CHUNKS, KEYS} <= {"/".join(Path(f).parts[:2]) for f in files}, sorted(files)
    storage = load_storage(env.storage)
    (manifest,) = list_backups(storage, env.pg, db)
    for name in (MANIFEST_NAME, SIGNATURE_NAME):  # as retention would: its chunks are garbage
        storage.delete(backup_key(env.pg, db, manifest.backup_id, name, manifest.kind))
    pruned = run_cli(["prune", env.pg, *storage_args(env, "prune")], tmp_path / "work", umask=umask)
    assert pruned.returncode == 0, pruned.stderr
    files = _assert_modes(env.storage_path, umask=umask)
    areas = {"/".join(Path(f).parts[:2]) for f in files}
    assert {FOSSILS, GC} <= areas, sorted(files)
