"""`dbbackup check` of the log archive (binlog, WAL) and of PostgreSQL base backups: every
piece a trusted run lists, and every trusted base backup, is stored at its recorded size
(with read_data: its sha256 read back), the stretches of log follow each other without a
gap, and manifests that are not trusted are named (docs/pitr.md)."""

from __future__ import annotations

from pathlib import Path

from prefect_dbbackup.blocks.errors import ConfigError, IntegrityError
from prefect_dbbackup.blocks.storage import BackupStorage, ObjectNotFound
from prefect_dbbackup.tasks.archive import read_archive
from prefect_dbbackup.tasks.archive_manifest import ARCHIVE_SEGMENT, archive_key
from prefect_dbbackup.tasks.base_backup import BASE_OBJECT, BASE_SEGMENT, base_backups, base_key
from prefect_dbbackup.tasks.dedup.check import Finding
from prefect_dbbackup.tasks.layout import decode_name
from prefect_dbbackup.tasks.pitr import StoredPart, stretches
from prefect_dbbackup.tasks.stream import check_stored
from prefect_dbbackup.tasks.workdir import private_workdir


def archived_servers(storage: BackupStorage) -> list[str]:
    """The servers with an archive in storage."""
    found = set()
    for key in storage.list_keys(""):
        parts = key.split("/")
        if len(parts) == 4 and parts[1] in (ARCHIVE_SEGMENT, BASE_SEGMENT):
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
                part = StoredPart(key, piece.stats, piece.end - piece.start, key, "its archive run")
                where = f"{label}/{run.run_id}"
                detail = f"{piece.file} {piece.start}..{piece.end}"
                findings += _check_part(storage, part, where, detail, read_data, workdir)
    found = stretches(state.trusted)
    for a, b in zip(found, found[1:], strict=False):
        findings.append(
            Finding(
                problem="gap",
                what=f"{label}: {a.last.file}:{a.last.end} .. {b.first.file}:{b.first.start}",
                detail="the log between them is not archived: a restore to a time cannot cross it",
                backups=[label],
            )
        )
    return len(state.trusted), findings


def check_base_backups(
    storage: BackupStorage, server: str, read_data: bool
) -> tuple[int, list[Finding]]:
    """(base backups checked, findings) of server: refused manifests, and each trusted base
    backup's object stored at its recorded size (read_data: its sha256)."""
    stored = base_backups(storage, server).all()
    label = f"{server}/{BASE_SEGMENT}"
    findings = [
        Finding(problem="refused", what=r.key, detail=r.problem or "", backups=[label])
        for r in stored
        if r.problem is not None
    ]
    trusted = [r.manifest for r in stored if r.problem is None and r.manifest is not None]
    with private_workdir() as workdir:
        for base in trusted:
            key = base_key(server, base.run_id, BASE_OBJECT)
            part = StoredPart(key, base.stats, base.stats.raw_bytes, key, "its manifest")
            detail = f"base backup, WAL {base.start_lsn} .. {base.end_lsn}"
            findings += _check_part(
                storage, part, f"{label}/{base.run_id}", detail, read_data, workdir
            )
    return len(trusted), findings


def _check_part(
    storage: BackupStorage,
    part: StoredPart,
    where: str,
    detail: str,
    read_data: bool,
    workdir: Path,
) -> list[Finding]:
    """The finding about one stored object (none when it is fine): missing, or damaged (its
    size; with read_data, its sha256)."""
    size = storage.stored_size(part.key)
    if size is None:
        return [Finding(problem="missing", what=part.key, detail=detail, backups=[where])]
    if size != part.stats.stored_bytes:
        detail = f"{size} bytes stored, its record says {part.stats.stored_bytes}"
        return [Finding(problem="damaged", what=part.key, detail=detail, backups=[where])]
    if read_data:
        try:
            with storage.open_read(part.key, workdir) as f:
                check_stored(f, part.stats, part.what, part.source)
        except (IntegrityError, ObjectNotFound) as exc:
            return [Finding(problem="damaged", what=part.key, detail=str(exc), backups=[where])]
    return []
