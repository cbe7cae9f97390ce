"""Retention of the binary log archive: a run is removed once every piece it holds lies in
log files before the first file the oldest kept backup's replay reads (a replay from a
position reads that position's file from its start). Decided on signed, location-bound
manifests only, never by a clock; the newest run (where the next one goes on) and runs that
are not trusted are always kept, and a run removes only the objects an archive run writes
(its manifest, signature and the pieces it lists): anything else in its directory is left
and reported (docs/pitr.md)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from prefect import task
from prefect.cache_policies import NONE
from prefect_dbbackup.blocks.storage import BackupStorage
from prefect_dbbackup.tasks.archive import read_archive
from prefect_dbbackup.tasks.archive_manifest import (
    ARCHIVE_SEGMENT,
    PIECE_NAME,
    archive_prefix,
    file_order,
)
from prefect_dbbackup.tasks.base_backup import BaseBackupManifest
from prefect_dbbackup.tasks.catalog import scan_backups
from prefect_dbbackup.tasks.layout import MANIFEST_NAME, SIGNATURE_NAME
from prefect_dbbackup.tasks.logs import run_logger
from prefect_dbbackup.tasks.orphans import orphan_items
from prefect_dbbackup.tasks.prune import PruneItem, backup_time, remove_backup


def archived(storage: BackupStorage, server: str) -> bool:
    """Whether server has archive runs in storage (one listing)."""
    return bool(storage.list_keys(archive_prefix(server)))


def plan_archive_prune(
    storage: BackupStorage,
    server: str,
    bases: Sequence[BaseBackupManifest] = (),
    grace_hours: float = 24,
) -> list[PruneItem]:
    """One item per archive run of server: keep or remove, and why (bases: the PostgreSQL
    base backups kept, whose replay starts at their start segment); then one per directory a
    run killed before its manifest left (tasks/orphans.py, after grace_hours)."""
    state = read_archive(storage, server)
    dumps = [e.manifest for e in scan_backups(storage, server) if e.usable() and e.manifest]
    starts = sorted(
        [
            (file_order(m.binlog.file), m.binlog.file, m.backup_id, repr(m.database))
            for m in dumps
            if m.binlog is not None
        ]
        + [(file_order(b.start_file), b.start_file, b.run_id, "the cluster") for b in bases]
    )
    in_run: dict[str, list[str]] = defaultdict(list)  # run directory -> its keys
    for key in state.listed:
        in_run[key.rsplit("/", 1)[0]].append(key)
    newest = state.trusted[-1].run_id if state.trusted else None
    items = []
    for run in state.runs:
        manifest = run.manifest
        pieces = manifest.pieces if manifest else []
        own = {MANIFEST_NAME, SIGNATURE_NAME, *(p.object_name for p in pieces)}
        keys = in_run[run.key.rsplit("/", 1)[0]]
        objects = sorted(k for k in keys if k.rsplit("/", 1)[1] in own)
        foreign = sorted(k for k in keys if k.rsplit("/", 1)[1] not in own)
        time = manifest.started_at if manifest else None
        if run.problem is not None or manifest is None:
            keep, why = True, f"not trusted ({run.problem}): left for you to check"
        elif manifest.run_id == newest:
            keep, why = True, "the newest run: the next one goes on from its end"
        elif not starts:
            keep, why = True, "no kept backup records a log position yet"
        else:
            first, name, backup_id, database = starts[0]
            files = [file_order(p.file) for p in manifest.pieces] + [file_order(manifest.end.file)]
            keep = max(files) >= first
            why = (
                f"holds log from {name} on, which backup {backup_id} of {database} replays"
                if keep
                else f"before {name}, where the oldest kept backup ({backup_id} of {database}) "
                "starts"
            )
        items.append(
            PruneItem(
                database=ARCHIVE_SEGMENT,
                backup_id=run.run_id,
                time=time or backup_time(run.run_id),
                complete=manifest is not None,
                keep=keep,
                reasons=[why],
                objects=objects,
                foreign=foreign,
            )
        )
    return items + orphan_items(
        storage,
        storage.list_modified(archive_prefix(server)),
        {run.run_id for run in state.runs},
        lambda name: bool(PIECE_NAME.fullmatch(name)) or name == SIGNATURE_NAME,
        ARCHIVE_SEGMENT,
        grace_hours,
    )


def prune_archive(
    storage: BackupStorage,
    server: str,
    dry_run: bool = False,
    bases: Sequence[BaseBackupManifest] = (),
    grace_hours: float = 24,
) -> list[PruneItem]:
    """Remove the archive runs no kept backup needs (plan_archive_prune); dry_run removes
    nothing. Each run goes manifest first: a half-removed run no longer exists."""
    log = run_logger()
    items = plan_archive_prune(storage, server, bases, grace_hours)
    for item in items:
        if item.keep:
            continue
        if dry_run:
            item.outcome = "would remove"
        else:
            remove_backup(storage, item)
            item.outcome = "removed"
        log.info(
            "archive run %s of %s: %s (%s)", item.backup_id, server, item.outcome, item.reasons[0]
        )
        if item.foreign:
            log.warning(
                "left %d object(s) in archive run %s of %s that dbbackup did not write: %s",
                len(item.foreign),
                item.backup_id,
                server,
                ", ".join(map(repr, item.foreign[:5])),
            )
    return items


prune_archive_task = task(
    prune_archive, name="prune-archive", task_run_name="prune-archive-{server}", cache_policy=NONE
)
