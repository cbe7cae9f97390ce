"""What an archive run or a base backup killed before its manifest leaves: a directory with
pieces (or a base backup's object) and no record that names them. Nothing lists or restores
them; prune removes them once every one is older than the policy's garbage grace, by the
store's own clock against the store's own write times (never this worker's clock), and only
the objects of the names such a run writes (anything else is left and reported)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection
from datetime import datetime, timedelta

from prefect_dbbackup.blocks.storage import BackupStorage, ObjectNotFound
from prefect_dbbackup.tasks.prune import PruneItem, backup_time


def orphan_items(
    storage: BackupStorage,
    modified: dict[str, datetime],
    recorded: Collection[str],
    is_own: Callable[[str], bool],
    label: str,
    grace_hours: float,
) -> list[PruneItem]:
    """One item per run directory under one prefix (modified: its keys with their store
    times) that holds objects of ours but is not in recorded (the run ids with a manifest):
    removed when its newest object is older than grace_hours on the store's clock."""
    by_run: dict[str, dict[str, datetime]] = defaultdict(dict)
    for key, stored in modified.items():
        parts = key.split("/")
        if len(parts) == 4 and parts[2] not in recorded:
            by_run[parts[2]][key] = stored
    if not by_run:
        return []
    try:
        store_now = storage.clock()
    except ObjectNotFound:
        return []
    items = []
    for run_id, keys in sorted(by_run.items()):
        try:
            started = backup_time(run_id)
        except ValueError:
            continue  # not a directory a run makes: never touched
        own = sorted(k for k in keys if is_own(k.rsplit("/", 1)[1]))
        if not own:
            continue
        age = store_now - max(keys[k] for k in own)
        young = age <= timedelta(hours=grace_hours)
        reason = (
            f"left by a run that did not finish, written {age.total_seconds() / 3600:.1f} h "
            f"ago by the store's clock: "
            + ("kept within the garbage grace" if young else "older than the garbage grace")
        )
        items.append(
            PruneItem(
                database=label,
                backup_id=run_id,
                time=started,
                complete=False,
                keep=young,
                reasons=[reason],
                objects=own,
                foreign=sorted(k for k in keys if k not in own),
            )
        )
    return items
