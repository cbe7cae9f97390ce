"""Pruning: apply a retention policy to the backups in storage, one series at a time.

Only objects whose names dbbackup writes are ever deleted (OWN_NAMES); anything else in
a backup directory is reported and left alone.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from prefect import task
from prefect.cache_policies import NONE
from prefect_dbbackup.blocks.engines import stored_object_names
from prefect_dbbackup.blocks.errors import ConfigError, DbBackupError, ObjectLocked
from prefect_dbbackup.blocks.retention import BackupRef, RetentionPolicy, plan
from prefect_dbbackup.blocks.storage import BackupStorage, ObjectNotFound
from prefect_dbbackup.tasks.catalog import StoredManifest, manifest_trust
from prefect_dbbackup.tasks.layout import (
    BACKUP_ID_FORMAT,
    GLOBALS_SEGMENT,
    MANIFEST_NAME,
    SIGNATURE_NAME,
    VERIFIED_NAME,
    VERIFIED_SIGNATURE_NAME,
    decode_name,
    series_prefix,
)
from prefect_dbbackup.tasks.logs import Logger, run_logger
from prefect_dbbackup.tasks.verify_record import REDO, record_key, verified_backups
from pydantic import BaseModel

OWN_NAMES = frozenset(
    {MANIFEST_NAME, SIGNATURE_NAME, VERIFIED_NAME, VERIFIED_SIGNATURE_NAME, *stored_object_names()}
)
"""The object names dbbackup writes in a backup directory: the only ones prune deletes."""
FOREIGN = "not written by dbbackup"
CLOCK_SLACK = timedelta(minutes=1)  # a store's clock is read to the second, over a network


class ClockDisagrees(DbBackupError):
    """This worker's clock and the storage's disagree beyond the tolerance: prune refuses."""


class PruneItem(BaseModel):
    """One stored backup, the policy's decision on it, and what pruning did."""

    database: str
    backup_id: str
    time: datetime
    complete: bool
    keep: bool
    reasons: list[str]
    future_dated: bool = False
    verified: bool = False
    outcome: str = "kept"
    objects: list[str] = []
    foreign: list[str] = []


def backup_time(backup_id: str) -> datetime:
    """Start time (UTC) encoded in a backup id."""
    return datetime.strptime(backup_id.split("-")[0], BACKUP_ID_FORMAT).replace(tzinfo=UTC)


def _segment_name(segment: str) -> str:
    return GLOBALS_SEGMENT if segment == GLOBALS_SEGMENT else decode_name(segment)


def _prefixes(server: str, databases: list[str] | None) -> list[str]:
    """Key prefixes of the named series (the globals series included), or of the server."""
    if not databases:
        return [series_prefix(server)]
    return [
        series_prefix(server, kind="globals")
        if db == GLOBALS_SEGMENT
        else series_prefix(server, db)
        for db in databases
    ]


def stored_backups(
    storage: BackupStorage, server: str, databases: list[str] | None = None
) -> dict[str, dict[str, dict[str, datetime]]]:
    """database -> backup_id -> key -> store time, for every backup (complete or not) of a
    server."""
    found: dict[str, dict[str, dict[str, datetime]]] = defaultdict(lambda: defaultdict(dict))
    for prefix in _prefixes(server, databases):
        for key, stored in storage.list_modified(prefix).items():
            parts = key.split("/")
            if len(parts) != 4:
                continue
            try:
                backup_time(parts[2])
                database = _segment_name(parts[1])
            except (ValueError, ConfigError):
                continue  # not a backup directory of ours
            found[database][parts[2]][key] = stored
    return found


def _is_own(key: str) -> bool:
    return key.rsplit("/", 1)[-1] in OWN_NAMES


def plan_prune(
    storage: BackupStorage,
    server: str,
    policy: RetentionPolicy,
    now: datetime,
    databases: list[str] | None = None,
    written: Collection[str] = (),
) -> list[PruneItem]:
    """The policy's decision on every stored backup of a server, series by series.

    A directory holding only objects dbbackup does not write is no backup: it is
    listed as kept, with those objects under `foreign`.
    """
    items = []
    verifiers = storage.manifest_verifiers()
    for database, backups in sorted(stored_backups(storage, server, databases).items()):
        own = {bid: [k for k in keys if _is_own(k)] for bid, keys in backups.items()}
        foreign = {bid: [k for k in keys if not _is_own(k)] for bid, keys in backups.items()}
        names = {bid: {k.rsplit("/", 1)[-1] for k in keys} for bid, keys in own.items() if keys}
        entries = manifest_trust(storage, {bid: own[bid] for bid in names}, verifiers)
        trust = {bid: e.trust if e else None for bid, e in entries.items()}
        verified = _verified(storage, entries, names, verifiers)
        # only a manifest with a valid signature makes a backup complete for retention
        refs = [
            BackupRef(
                bid,
                backup_time(bid),
                trust[bid] == "signed",
                bid in verified,
                next((t for k, t in backups[bid].items() if k.endswith("/" + MANIFEST_NAME)), None),
            )
            for bid in names
        ]
        for d in plan(refs, policy, now, written):
            items.append(
                PruneItem(
                    database=database,
                    backup_id=d.backup_id,
                    time=d.time,
                    complete=trust[d.backup_id] == "signed",
                    keep=d.keep,
                    reasons=d.reasons,
                    future_dated=d.future_dated,
                    verified=d.backup_id in verified,
                    objects=sorted(own[d.backup_id]),
                    foreign=sorted(foreign[d.backup_id]),
                )
            )
            _keep_untrusted(items[-1], trust[d.backup_id])
        items.extend(
            PruneItem(
                database=database,
                backup_id=bid,
                time=backup_time(bid),
                complete=False,
                keep=True,
                reasons=[FOREIGN],
                outcome="left alone",
                foreign=sorted(keys),
            )
            for bid, keys in sorted(foreign.items(), reverse=True)
            if bid not in names
        )
    return items


def _verified(
    storage: BackupStorage,
    entries: dict[str, StoredManifest | None],
    names: dict[str, set[str]],
    verifiers: list[Ed25519PublicKey],
) -> set[str]:
    """Ids of the signed backups whose verify record counts (signed, and bound to that
    backup: tasks/verify_record.py); every other record is reported and ignored."""
    records = {
        bid: (e, VERIFIED_SIGNATURE_NAME in names[bid])
        for bid, e in entries.items()
        if e is not None and e.trust == "signed" and VERIFIED_NAME in names[bid]
    }
    problems = verified_backups(storage, records, verifiers) if records else {}
    for bid, problem in problems.items():
        if problem is not None:
            run_logger().warning(
                "ignoring verify record %s: %s. It does not count for retention: %s",
                record_key(records[bid][0]),
                problem,
                REDO,
            )
    return {bid for bid, problem in problems.items() if problem is None}


def _keep_untrusted(item: PruneItem, trust: str | None) -> None:
    """A backup whose manifest is unsigned, invalid or unreadable never counts for retention,
    and is never deleted either: it may be a backup from before signing (docs/security.md)."""
    if trust in (None, "signed"):
        return
    item.keep = True
    item.reasons = [f"{trust} manifest: not counted, kept for review (docs/security.md)"]


def _report(item: PruneItem, now: datetime, log: Logger) -> None:
    """Warn about a future-dated backup and about objects prune leaves because they are not ours."""
    if item.future_dated:
        log.warning(
            "backup %s of %r is dated %s, %.1f h ahead of this worker's clock or more than the "
            "tolerance ahead of the time the storage wrote its manifest: kept, and never "
            "counted by retention or taken as latest. Check the clock of the worker that wrote "
            "it; if nobody did, it was planted: remove it by hand",
            item.backup_id,
            item.database,
            f"{item.time:%Y-%m-%d %H:%M}Z",
            (item.time - now).total_seconds() / 3600,
        )
    if item.foreign:
        log.warning(
            "left %d object(s) in backup directory %s of %r that dbbackup did not write: %s",
            len(item.foreign),
            item.backup_id,
            item.database,
            ", ".join(map(repr, item.foreign[:5])) + (" ..." if len(item.foreign) > 5 else ""),
        )


def check_clock(storage: BackupStorage, policy: RetentionPolicy) -> datetime:
    """This worker's clock, once the storage's own clock confirms it within the policy's
    future_tolerance_hours (ClockDisagrees otherwise): every age prune judges by comes
    from it, so a fast clock would make real backups and uploads in flight look old."""
    try:
        store = storage.clock()
    except ObjectNotFound:  # nothing stored yet: nothing to judge or delete
        return datetime.now(UTC)
    now = datetime.now(UTC)
    bound = timedelta(hours=policy.future_tolerance_hours) + CLOCK_SLACK
    if abs(now - store) > bound:
        hours = (now - store).total_seconds() / 3600
        raise ClockDisagrees(
            f"this worker's clock ({now:%Y-%m-%d %H:%M:%S}Z) is {abs(hours):.1f} h "
            f"{'ahead of' if hours > 0 else 'behind'} the clock of storage {storage.describe()} "
            f"({store:%Y-%m-%d %H:%M:%S}Z), more than the retention's future_tolerance_hours "
            f"({policy.future_tolerance_hours:g}): prune deleted nothing. Set the worker's time "
            "right (NTP), then prune again"
        )
    return now


def remove_backup(storage: BackupStorage, item: PruneItem) -> None:
    """Delete one backup, manifest first: a half-deleted backup no longer counts as existing."""
    manifest_first = sorted(item.objects, key=lambda k: not k.endswith("/" + MANIFEST_NAME))
    for key in manifest_first:
        storage.delete(key)


def apply_items(
    storage: BackupStorage, items: list[PruneItem], now: datetime, dry_run: bool
) -> None:
    """Carry out a plan: each item reported, the ones not kept removed (dry_run: marked
    `would remove`); an object-locked backup is kept with a note."""
    log = run_logger()
    for item in items:
        _report(item, now, log)
        if item.keep:
            continue
        if dry_run:
            item.outcome = "would remove"
            continue
        try:
            remove_backup(storage, item)
            item.outcome = "removed"
        except ObjectLocked as exc:
            item.outcome = f"locked: {exc}"
            log.info("kept %s of %r: %s", item.backup_id, item.database, exc)


def prune(
    storage: BackupStorage,
    server: str,
    policy: RetentionPolicy,
    *,
    databases: list[str] | None = None,
    dry_run: bool = False,
    now: datetime | None = None,
    written: Collection[str] = (),
) -> list[PruneItem]:
    """Apply a policy to a server's backups (or only some series); dry_run deletes nothing.

    `written`: backup ids the calling run stored, kept whatever the policy says.
    `now`: the time to judge by (tests); by default this worker's clock, checked against
    the storage's first (check_clock: nothing is deleted when they disagree).
    Object-locked backups are skipped with a note; incomplete uploads older than the
    policy's grace period are cleaned up as garbage. Future-dated backups and objects
    dbbackup did not write are kept and reported (log, and the items' fields).
    """
    log = run_logger()
    if now is None:
        now = check_clock(storage, policy) if not policy.is_empty else datetime.now(UTC)
    items = plan_prune(storage, server, policy, now, databases, written)
    apply_items(storage, items, now, dry_run)
    if not dry_run and not policy.is_empty:
        before = now - timedelta(hours=policy.garbage_grace_hours)
        for prefix in _prefixes(server, databases):
            for key in storage.collect_garbage(prefix, before, OWN_NAMES):
                log.info("removed an incomplete upload left by an earlier run: %s", key)
    removed = [i for i in items if i.outcome in ("removed", "would remove")]
    locked = [i for i in items if i.outcome.startswith("locked")]
    log.info(
        "retention on %s: %d backup(s), %d kept, %d %s, %d locked",
        server,
        len(items),
        len(items) - len(removed) - len(locked),
        len(removed),
        "to remove (dry run)" if dry_run else "removed",
        len(locked),
    )
    return items


prune_task = task(
    prune,
    name="prune",
    task_run_name="prune-{server}",
    cache_policy=NONE,
)
