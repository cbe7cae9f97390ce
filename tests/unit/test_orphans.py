"""Prune of what killed archive runs and base backups leave (tasks/orphans.py): a directory
of pieces without a manifest goes once older than the garbage grace by the store's clock;
a young one (a run under way) stays, and files dbbackup does not write are never deleted."""

from __future__ import annotations

import os
import time
from pathlib import Path

from prefect_dbbackup.blocks import LocalBackupStorage
from prefect_dbbackup.tasks.archive_manifest import archive_prefix
from prefect_dbbackup.tasks.archive_prune import plan_archive_prune


def _put(root: Path, key: str, hours_old: float) -> None:
    path = root / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    then = time.time() - hours_old * 3600
    os.utime(path, (then, then))


def test_a_killed_runs_pieces_go_after_the_grace_and_nothing_else(tmp_path: Path) -> None:
    root = tmp_path / "store"
    storage = LocalBackupStorage(path=str(root))
    prefix = archive_prefix("srv")
    old, young, planted = (
        "20261201T000000Z-aaaa",
        "20261207T000000Z-bbbb",
        "20261202T000000Z-cccc",
    )
    _put(root, f"{prefix}{old}/piece-000.zst.age", 30)
    _put(root, f"{prefix}{old}/piece-001.zst.age", 29)
    _put(root, f"{prefix}{old}/notes.txt", 40)  # not a name a run writes
    _put(root, f"{prefix}{young}/piece-000.zst.age", 1)  # a run under way, or just killed
    _put(root, f"{prefix}{planted}/README", 50)  # nothing of ours at all
    items = {i.backup_id: i for i in plan_archive_prune(storage, "srv", grace_hours=24)}
    assert set(items) == {old, young}
    assert not items[old].keep and items[old].objects == [
        f"{prefix}{old}/piece-000.zst.age",
        f"{prefix}{old}/piece-001.zst.age",
    ]
    assert items[old].foreign == [f"{prefix}{old}/notes.txt"]
    assert items[young].keep and "within the garbage grace" in items[young].reasons[0]
