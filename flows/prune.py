"""The prune_backups flow: apply a server's GFS retention policy to its stored backups."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect_dbbackup.blocks.registry import load_server, load_storage
from prefect_dbbackup.flows.report import artifact_key
from prefect_dbbackup.tasks.prune import PruneItem, prune_task
from prefect_dbbackup.tasks.retention import RetentionPolicy


def policy_for(server: str, retention: RetentionPolicy | None) -> RetentionPolicy:
    """The flow parameter if given, else the server block's policy, else keep everything."""
    if retention is not None:
        return retention
    return load_server(server).retention or RetentionPolicy()


def publish_prune(server: str, items: list[PruneItem], dry_run: bool) -> None:
    """A markdown artifact listing every backup with keep/remove and the reasons."""
    rows = [
        f"| {i.database} | {i.backup_id} | {'keep' if i.keep else 'remove'} | "
        f"{', '.join(i.reasons)} | {i.outcome} |"
        for i in items
    ]
    title = "Retention (dry run)" if dry_run else "Retention"
    create_markdown_artifact(
        key=artifact_key("prune", server),
        markdown="\n".join(
            [
                f"## {title} of {server}",
                "",
                "| database | backup | decision | reasons | outcome |",
                "|---|---|---|---|---|",
                *rows,
            ]
        ),
        description=f"retention of {server}",
    )


@flow(name="prune-backups", flow_run_name="prune-{server}", validate_parameters=True)
def prune_backups(
    server: str,
    storage: str = "default",
    database: str | None = None,
    dry_run: bool = False,
    retention: RetentionPolicy | None = None,
) -> list[PruneItem]:
    """Remove the backups of `server` its retention policy does not keep.

    `retention` overrides the policy on the server block; with neither, nothing is
    removed. `database` limits pruning to one series. dry_run removes nothing and
    reports what would go. Object-locked backups are kept and reported, not failed.
    """
    policy = policy_for(server, retention)
    items = prune_task(
        load_storage(storage),
        server,
        policy,
        databases=[database] if database else None,
        dry_run=dry_run,
    )
    publish_prune(server, items, dry_run)
    return items
