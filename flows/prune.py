"""The prune_backups flow: apply a server's GFS retention policy to its stored backups."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event
from prefect.runtime import flow_run
from prefect_dbbackup.blocks.registry import load_server, load_storage, name_of
from prefect_dbbackup.blocks.retention import RetentionPolicy
from prefect_dbbackup.blocks.server import DatabaseServer
from prefect_dbbackup.blocks.storage import BackupStorage
from prefect_dbbackup.flows.artifacts import artifact_key, md
from prefect_dbbackup.flows.crashed_runs import recorded_run
from prefect_dbbackup.flows.health import refresh_health
from prefect_dbbackup.tasks.archive_prune import archived, prune_archive_task
from prefect_dbbackup.tasks.base_prune import prune_base_task
from prefect_dbbackup.tasks.dedup.gc import ChunkCollection, collect_chunks_task, uses_chunks
from prefect_dbbackup.tasks.events import database_resource, server_related
from prefect_dbbackup.tasks.prune import PruneItem, prune_task


def policy_for(server: str | DatabaseServer, retention: RetentionPolicy | None) -> RetentionPolicy:
    """The flow parameter if given, else the server block's policy, else keep everything."""
    if retention is not None:
        return retention
    return load_server(server).retention or RetentionPolicy()


def _notes(item: PruneItem) -> str:
    notes = ["FUTURE-DATED: check the worker clock"] if item.future_dated else []
    if item.foreign:
        notes.append(f"left {len(item.foreign)} object(s) dbbackup did not write")
    return "; ".join(notes)


def chunk_lines(collection: ChunkCollection | None) -> list[str]:
    """The artifact's lines about the chunks of a deduplicating storage."""
    if collection is None:
        return []
    c = collection
    return [
        "",
        f"**Chunks:** {c.chunks} stored, {c.named} named by backups; {c.set_aside} "
        f"unreferenced set aside; {len(c.swept)} earlier collection(s) swept ({c.deleted} "
        f"deleted, {c.resurrected} named again and kept); {len(c.waiting)} waiting for the "
        f"grace period; {len(c.locked)} kept under object lock"
        + ("; stopped at its time budget, the next prune goes on" if c.unfinished else ""),
    ]


def publish_prune(
    server: str,
    items: list[PruneItem],
    dry_run: bool,
    collection: ChunkCollection | None = None,
) -> None:
    """A markdown artifact listing every backup with keep/remove and the reasons."""
    rows = [
        f"| {md(i.database)} | {md(i.backup_id)} | {'keep' if i.keep else 'remove'} | "
        f"{md(', '.join(i.reasons))} | {md(i.outcome)} | {md(_notes(i))} |"
        for i in items
    ]
    title = "Retention (dry run)" if dry_run else "Retention"
    create_markdown_artifact(
        key=artifact_key("prune", server),
        markdown="\n".join(
            [
                f"## {title} of {md(server)}",
                "",
                "| database | backup | decision | reasons | outcome | notes |",
                "|---|---|---|---|---|---|",
                *rows,
                *chunk_lines(collection),
            ]
        ),
        description=f"retention of {server}",
    )


def emit_future_dated(server: str, items: list[PruneItem]) -> None:
    """One `dbbackup.backup.future-dated` event per future-dated backup, for automations."""
    for item in items:
        if item.future_dated:
            emit_event(
                event="dbbackup.backup.future-dated",
                resource=database_resource(server, item.database),
                related=server_related(server),
                payload={"backup_id": item.backup_id, "backup_time": item.time.isoformat()},
            )


def report_prune(
    server: str,
    items: list[PruneItem],
    dry_run: bool = False,
    collection: ChunkCollection | None = None,
) -> None:
    """The artifact and the events of one prune (its own flow, or the end of a backup run)."""
    publish_prune(server, items, dry_run, collection)
    emit_future_dated(server, items)


def _run_name() -> str:
    return f"prune-{name_of(flow_run.parameters['server'])}"


@flow(name="prune-backups", flow_run_name=_run_name, validate_parameters=True)
@recorded_run
def prune_backups(
    server: str | DatabaseServer,
    storage: str | BackupStorage = "default",
    database: str | None = None,
    dry_run: bool = False,
    retention: RetentionPolicy | None = None,
) -> list[PruneItem]:
    """Remove the backups of `server` its retention policy does not keep.

    `retention` overrides the policy on the server block; with neither, nothing is
    removed. `database` limits pruning to one series (the chunks of a deduplicating
    storage are collected for every server: docs/dedup.md). dry_run removes nothing and
    reports what would go. Object-locked backups are kept and reported, not failed;
    so are future-dated backups (also a `dbbackup.backup.future-dated` event each)
    and objects in backup directories that dbbackup did not write.

    Example:
        ```python
        from prefect_dbbackup import RetentionPolicy, prune_backups

        items = prune_backups("local-pg", dry_run=True, retention=RetentionPolicy(keep_last=3))
        print([(i.database, i.backup_id, i.keep) for i in items])
        ```
    """
    policy = policy_for(server, retention)
    series = name_of(server)  # a block's saved name, or an unsaved one's describe()
    sto = load_storage(storage)
    items = prune_task(
        sto, series, policy, databases=[database] if database else None, dry_run=dry_run
    )
    if database is None and not policy.is_empty and archived(sto, series):
        base_items, bases = prune_base_task(sto, series, policy, dry_run=dry_run)
        items += base_items + prune_archive_task(
            sto, series, dry_run=dry_run, bases=bases, grace_hours=policy.garbage_grace_hours
        )
    # chunks are shared by every server of the storage: collected whatever was removed
    collection = collect_chunks_task(sto, dry_run=dry_run) if uses_chunks(sto) else None
    report_prune(series, items, dry_run, collection)
    refresh_health(sto, series)
    return items
