"""Retention of PostgreSQL base backups: the server's retention policy (GFS) decides, as for
its dumps, on signed, location-bound base backups only; a base backup that is not trusted is
kept and reported. A removal deletes only the objects a base backup writes, manifest first
(docs/pitr.md). The archive's retention then keeps the WAL from the oldest kept base backup's
start on (tasks/archive_prune.py)."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

from prefect import task
from prefect.cache_policies import NONE
from prefect_dbbackup.blocks.retention import BackupRef, RetentionPolicy, plan
from prefect_dbbackup.blocks.storage import BackupStorage
from prefect_dbbackup.tasks.base_backup import (
    BASE_OBJECT,
    BASE_SEGMENT,
    BaseBackupManifest,
    base_backups,
    base_prefix,
)
from prefect_dbbackup.tasks.layout import MANIFEST_NAME, SIGNATURE_NAME
from prefect_dbbackup.tasks.orphans import orphan_items
from prefect_dbbackup.tasks.prune import PruneItem, apply_items, backup_time, check_clock

OWN = frozenset({BASE_OBJECT, MANIFEST_NAME, SIGNATURE_NAME})


def plan_base_prune(
    storage: BackupStorage, server: str, policy: RetentionPolicy, now: datetime
) -> tuple[list[PruneItem], list[BaseBackupManifest]]:
    """(one item per base backup directory: keep or remove, and why; the trusted base
    backups that stay)."""
    records = {r.run_id: r for r in base_backups(storage, server).all()}
    listed: dict[str, dict[str, datetime]] = defaultdict(dict)
    for key, stored in storage.list_modified(base_prefix(server)).items():
        parts = key.split("/")
        try:
            backup_time(parts[2])
        except (ValueError, IndexError):
            continue  # not a directory a base backup makes: never touched
        if len(parts) == 4:
            listed[parts[2]][key] = stored
    refs = []
    for run_id in records:
        manifest_key = next((k for k in listed[run_id] if k.endswith("/" + MANIFEST_NAME)), None)
        trusted = records[run_id].problem is None
        stored_at = listed[run_id].get(manifest_key) if manifest_key else None
        refs.append(BackupRef(run_id, backup_time(run_id), trusted, False, stored_at))
    items = []
    for decision in plan(refs, policy, now):
        record = records[decision.backup_id]
        keys = listed[decision.backup_id]
        keep, reasons = decision.keep, decision.reasons
        if record.problem is not None:
            keep, reasons = True, [f"not trusted ({record.problem}): left for you to check"]
        items.append(
            PruneItem(
                database=BASE_SEGMENT,
                backup_id=decision.backup_id,
                time=decision.time,
                complete=record.problem is None,
                keep=keep,
                reasons=reasons,
                future_dated=decision.future_dated,
                objects=sorted(k for k in keys if k.rsplit("/", 1)[1] in OWN),
                foreign=sorted(k for k in keys if k.rsplit("/", 1)[1] not in OWN),
            )
        )
    items += orphan_items(
        storage,
        {k: t for keys in listed.values() for k, t in keys.items()},
        records,
        lambda name: name in OWN,
        BASE_SEGMENT,
        policy.garbage_grace_hours,
    )
    kept_ids = {i.backup_id for i in items if i.keep}
    kept = [
        r.manifest
        for r in records.values()
        if r.problem is None and r.manifest is not None and r.run_id in kept_ids
    ]
    return items, kept


def prune_base_backups(
    storage: BackupStorage, server: str, policy: RetentionPolicy, dry_run: bool = False
) -> tuple[list[PruneItem], list[BaseBackupManifest]]:
    """Apply the policy to server's base backups (dry_run removes nothing); returns the
    items and the trusted base backups kept. Nothing is removed without a policy."""
    if policy.is_empty:
        stored = base_backups(storage, server).all()
        return [], [r.manifest for r in stored if r.problem is None and r.manifest is not None]
    now = check_clock(storage, policy)
    items, kept = plan_base_prune(storage, server, policy, now)
    apply_items(storage, items, now, dry_run)
    return items, kept


prune_base_task = task(
    prune_base_backups,
    name="prune-base-backups",
    task_run_name="prune-base-backups-{server}",
    cache_policy=NONE,
)
