"""`dbbackup check` of the binary log archive: every piece a trusted run lists is stored at
its recorded size (with read_data: its sha256 read back), the stretches of log follow each
other without a gap, and run manifests that are not trusted are named (docs/pitr.md)."""

from __future__ import annotations

from prefect_dbbackup.blocks.errors import ConfigError, IntegrityError
from prefect_dbbackup.blocks.storage import BackupStorage, ObjectNotFound
from prefect_dbbackup.tasks.archive import read_archive
from prefect_dbbackup.tasks.archive_manifest import ARCHIVE_SEGMENT, archive_key
from prefect_dbbackup.tasks.dedup.check import Finding
from prefect_dbbackup.tasks.layout import decode_name
from prefect_dbbackup.tasks.pitr import check_piece, stretches
from prefect_dbbackup.tasks.workdir import private_workdir


def archived_servers(storage: BackupStorage) -> list[str]:
    """The servers with an archive in storage."""
    found = set()
    for key in storage.list_keys(""):
        parts = key.split("/")
        if len(parts) == 4 and parts[1] == ARCHIVE_SEGMENT:
            try:
                found.add(decode_name(parts[0]))
            except ConfigError:
                continue  # not a segment dbbackup writes
    return sorted(found)


def check_archive(
    storage: BackupStorage, server: str, read_data: bool
) -> tuple[int, list[Finding]]:
    """(runs checked, findings) of server's archive."""
    state = read_archive(storage, server)
    label = f"{server}/{ARCHIVE_SEGMENT}"
    findings = [
        Finding(problem="refused", what=r.key, detail=r.problem or "", backups=[label])
        for r in state.refused
    ]
    with private_workdir() as workdir:
        for run in state.trusted:
            for piece in run.pieces:
                key = archive_key(server, run.run_id, piece.object_name)
                where = [f"{label}/{run.run_id}"]
                size = storage.stored_size(key)
                if size is None:
                    findings.append(
                        Finding(
                            problem="missing",
                            what=key,
                            detail=f"{piece.file} {piece.start}..{piece.end}",
                            backups=where,
                        )
                    )
                elif size != piece.stats.stored_bytes:
                    detail = f"{size} bytes stored, its run says {piece.stats.stored_bytes}"
                    findings.append(
                        Finding(problem="damaged", what=key, detail=detail, backups=where)
                    )
                elif read_data:
                    try:
                        with storage.open_read(key, workdir) as f:
                            check_piece(f, piece, key)
                    except (IntegrityError, ObjectNotFound) as exc:
                        findings.append(
                            Finding(problem="damaged", what=key, detail=str(exc), backups=where)
                        )
    found = stretches(state.trusted)
    for a, b in zip(found, found[1:], strict=False):
        findings.append(
            Finding(
                problem="gap",
                what=f"{label}: {a.last.file}:{a.last.end} .. {b.first.file}:{b.first.start}",
                detail="the binary log between them is not archived: a restore to a time "
                "cannot cross it",
                backups=[label],
            )
        )
    return len(state.trusted), findings
