"""The check_backups flow: is every stored backup whole? (`dbbackup check`)"""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect_dbbackup.blocks.encryption import AgeEncryption
from prefect_dbbackup.blocks.errors import ReportedFailure
from prefect_dbbackup.blocks.registry import load_encryption, load_storage, name_of
from prefect_dbbackup.blocks.server import DatabaseServer
from prefect_dbbackup.blocks.storage import BackupStorage
from prefect_dbbackup.flows.artifacts import artifact_key, md
from prefect_dbbackup.flows.crashed_runs import recorded_run
from prefect_dbbackup.tasks.archive_check import (
    archived_servers,
    check_archive,
    check_base_backups,
)
from prefect_dbbackup.tasks.dedup.check import CheckReport, check_storage_task

SHOWN = 50  # findings listed in the artifact and the error message; the rest are counted


class CheckFailed(ReportedFailure):
    """The check found missing or damaged data (exit 1): the message names the backups."""

    exit_code = 1

    def __init__(self, report: CheckReport) -> None:
        stored = [f for f in report.findings if f.problem != "read fault"]
        if not stored:
            super().__init__(
                f"{len(report.findings)} chunk read(s) from {report.storage} arrived damaged "
                "and did not match the store's own checksum: nothing stored was found broken "
                "and nothing was moved. Check what sits between worker and storage (proxies, "
                "NICs), then run the check again",
                report,
            )
            return
        broken = sorted({b for f in stored for b in f.backups})
        named = ", ".join(broken[:SHOWN]) + (
            f" and {len(broken) - SHOWN} more" if len(broken) > SHOWN else ""
        )
        super().__init__(
            f"{len(stored)} problem(s) in {report.storage}, breaking {len(broken)} "
            f"backup(s): {named}. Restore those from an older backup; take a new backup now "
            "(it stores missing or damaged chunks again)",
            report,
        )


def summary_lines(r: CheckReport) -> list[str]:
    """The figures of a check, one line each (artifact and CLI)."""
    lines = [
        f"{r.backups} backup(s) checked ({r.chunked} deduplicated), "
        f"{r.chunks_named} chunk(s) named, {r.chunks_stored} stored"
        + (
            f", {r.unreferenced} named by no backup (the next prune sets them aside)"
            if r.unreferenced
            else ""
        ),
    ]
    if r.read_data:
        lines.append(f"{r.chunks_read} chunk(s) read, decrypted and matched against their ids")
    if r.archive_runs:
        lines.append(f"{r.archive_runs} log archive run(s) checked")
    if r.base_backups:
        lines.append(f"{r.base_backups} base backup(s) checked")
    if r.in_fossils:
        lines.append(
            f"{r.in_fossils} named chunk(s) set aside by a prune: a later prune puts them back"
        )
    return lines


def publish_check(r: CheckReport) -> None:
    """The run's markdown artifact: the figures, then every finding (up to SHOWN)."""
    rows = [
        f"| {f.problem} | {md(f.what)} | {md(f.detail)} | {md(', '.join(f.backups))} |"
        for f in r.findings[:SHOWN]
    ]
    more = ["", f"and {len(r.findings) - SHOWN} more"] if len(r.findings) > SHOWN else []
    create_markdown_artifact(
        key=artifact_key("check", r.server or "all"),
        markdown="\n".join(
            [
                f"## Check of {md(r.server or 'every server')} in {md(r.storage)}: "
                + ("ok" if r.ok else f"{len(r.findings)} problem(s)"),
                "",
                *(f"- {md(line)}" for line in summary_lines(r)),
                *(
                    ["", "| problem | what | detail | backups it breaks |", "|---|---|---|---|"]
                    + rows
                    if rows
                    else []
                ),
                *more,
            ]
        ),
        description=f"check of {r.server or 'every server'}",
    )


def _run_name() -> str:
    from prefect.runtime import flow_run

    server = flow_run.parameters.get("server")
    return f"check-{name_of(server) if server is not None else 'all'}"


@flow(name="check-backups", flow_run_name=_run_name, validate_parameters=True)
@recorded_run
def check_backups(
    server: str | DatabaseServer | None = None,
    storage: str | BackupStorage = "default",
    read_data: bool = False,
    encryption: str | AgeEncryption = "default",
    identity_file: str | None = None,
) -> CheckReport:
    """Check that every trusted backup (of `server`, or of every server) in the storage is
    whole: each chunk it names is stored (or set aside by a prune, where restores find it),
    each whole object is there, each dedup key has its copy. `read_data` also downloads
    every named chunk once, decrypts it with the identity (of the encryption block, or
    identity_file) and checks it against its id; damaged chunks are moved to
    `_dedup/damaged/` so that the next backup stores them again. Ends Failed (CheckFailed,
    naming the broken backups) when anything is wrong.

    Example:
        ```python
        from prefect_dbbackup import check_backups

        report = check_backups("local-pg", read_data=True)
        print(report.backups, report.ok)
        ```
    """
    sto = load_storage(storage)
    enc = load_encryption(encryption) if read_data else None
    if enc is not None:
        enc.identities(identity_file)  # no identity: a configuration error before any read
    series = name_of(server) if server is not None else None
    report = check_storage_task(sto, series, encryption=enc, identity_file=identity_file)
    for name in [series] if series is not None else archived_servers(sto):
        runs, findings = check_archive(sto, name, read_data)
        bases, base_findings = check_base_backups(sto, name, read_data)
        report.archive_runs += runs
        report.base_backups += bases
        report.findings += findings + base_findings
    publish_check(report)
    if not report.ok:
        raise CheckFailed(report)
    return report
