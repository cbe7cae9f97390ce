"""`dbbackup check`: every chunk a backup names is stored; with read_data, every stored
chunk decrypts and matches its id (docs/dedup.md, "Checking a deduplicating storage").

One listing of the storage and one read of every trusted manifest find what is missing.
Reading data downloads each named chunk once (not once per backup naming it). A read never
destroys: each read is checked against the store's own checksum (or a second read), and a
chunk that does not open is read again. Only a chunk the store itself holds damaged (the
reads agree, the store's checksum matches, it does not open) is copied to
`_dedup/damaged/` inside the store and, once the copy is confirmed, removed from chunks/,
so that the next backup producing it stores a good copy. A read that does not match the
store is a read fault: reported, nothing moved. The backups a chunk breaks are named.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import pyrage
from prefect import task
from prefect.cache_policies import NONE
from prefect_dbbackup.blocks.encryption import AgeEncryption, recipient_fingerprint
from prefect_dbbackup.blocks.errors import DbBackupError, IntegrityError
from prefect_dbbackup.blocks.storage import BackupStorage, ObjectNotFound, ReadFault
from prefect_dbbackup.tasks.catalog import read_manifests, signature_key
from prefect_dbbackup.tasks.dedup.keys import DedupKey, key_copy_key, open_key_copy, reader_key
from prefect_dbbackup.tasks.dedup.layout import (
    CHUNKS,
    IN_FLIGHT,
    MAX_STORED,
    chunk_key,
    damaged_key,
    parse_chunk_key,
    recipient_set,
)
from prefect_dbbackup.tasks.dedup.reader import fetch_checked, fossil_marks, open_chunk
from prefect_dbbackup.tasks.layout import backup_key, parse_manifest_key
from prefect_dbbackup.tasks.logs import run_logger
from prefect_dbbackup.tasks.manifest import Manifest
from pydantic import BaseModel

Problem = Literal["missing", "damaged", "read fault", "unread", "key copy", "refused", "gap"]
Verdict = tuple[Problem, str] | None  # what reading one chunk found


class Finding(BaseModel):
    """One thing wrong: a chunk, a stored object, a key copy or a manifest, and the
    backups (server/database/backup_id) it breaks."""

    problem: Problem
    what: str
    detail: str
    backups: list[str]


class CheckReport(BaseModel):
    """What one check of a storage found."""

    storage: str
    server: str | None
    read_data: bool
    backups: int = 0  # trusted manifests checked
    chunked: int = 0  # of them, deduplicated backups
    chunks_named: int = 0  # distinct chunks the checked backups name
    chunks_stored: int = 0  # in chunks/ (all servers)
    in_fossils: int = 0  # named chunks a prune set aside: a later prune puts them back
    unreferenced: int | None = None  # stored, named by no backup (only without a server)
    chunks_read: int = 0
    archive_runs: int = 0  # log archive runs checked (point-in-time recovery)
    base_backups: int = 0  # PostgreSQL base backups checked (point-in-time recovery)
    findings: list[Finding] = []

    @property
    def ok(self) -> bool:
        return not self.findings


def _label(m: Manifest) -> str:
    return f"{m.server}/{m.database}/{m.backup_id}"


class _Checker:
    def __init__(self, storage: BackupStorage, server: str | None, read_data: bool) -> None:
        self.storage = storage
        self.report = CheckReport(storage=storage.describe(), server=server, read_data=read_data)
        self.listing = set(storage.list_keys(""))
        # (rset, id) -> every trusted backup naming the chunk
        self.named: dict[tuple[str, str], list[Manifest]] = defaultdict(list)
        # (key_id, rset) -> the chunked backups written with that key for those recipients
        self.groups: dict[tuple[str, str], list[Manifest]] = defaultdict(list)
        self.lengths: dict[tuple[str, str], int] = {}  # (rset, id) -> plaintext length

    def add(self, finding: Finding) -> None:
        self.report.findings.append(finding)
        run_logger().error(
            "%s %s (%s): breaks %s",
            finding.problem,
            finding.what,
            finding.detail,
            ", ".join(finding.backups),
        )

    def manifests(self, server: str | None) -> list[Manifest]:
        """The trusted manifests (of server), every other one reported as refused."""
        wanted = []
        for key in sorted(self.listing):
            parsed = parse_manifest_key(key)
            if parsed is not None and (server is None or parsed[0] == server):
                wanted.append((key, signature_key(key) in self.listing))
        entries = read_manifests(self.storage, wanted, self.storage.manifest_verifiers())
        trusted = []
        for e in entries:
            if e is None:  # removed since the listing (a prune beside)
                continue
            if e.usable() and e.manifest is not None:
                trusted.append(e.manifest)
            else:
                self.add(
                    Finding(
                        problem="refused",
                        what=e.key,
                        detail=f"manifest {e.trust}: {e.problem}; its chunks are not checked",
                        backups=[f"{e.server}/{e.database}/{e.backup_id}"],
                    )
                )
        return trusted

    def index(self, manifests: list[Manifest]) -> None:
        """Name every chunk of the chunked backups; check whole objects and key copies."""
        for m in manifests:
            if m.chunks is None:
                key = backup_key(m.server, m.database, m.backup_id, m.stored_object_name, m.kind)
                if key not in self.listing:
                    self.add(
                        Finding(
                            problem="missing", what=key, detail="stored object", backups=[_label(m)]
                        )
                    )
                continue
            rset = recipient_set(m.recipients)
            self.groups[(m.chunks.key_id, rset)].append(m)
            for cid, length in dict(m.chunks.order).items():
                self.named[(rset, cid)].append(m)
                self.lengths[(rset, cid)] = length
        for (key_id, rset), group in self.groups.items():
            if key_copy_key(key_id, rset) not in self.listing:
                self.add(
                    Finding(
                        problem="key copy",
                        what=key_copy_key(key_id, rset),
                        detail="missing: the identity alone cannot restore these; a backup to "
                        "the storage with the same dedup key and recipients writes it again",
                        backups=[_label(m) for m in group],
                    )
                )
        self.report.backups = len(manifests)
        self.report.chunked = sum(m.chunks is not None for m in manifests)
        self.report.chunks_named = len(self.named)

    def presence(self) -> list[tuple[str, str]]:
        """Report named chunks stored nowhere; return those in chunks/ or fossils/."""
        stored, fossils = set(), set()
        for key in self.listing:
            parsed = parse_chunk_key(key)
            if parsed is not None:
                (stored if key.startswith(CHUNKS + "/") else fossils).add(parsed)
        self.report.chunks_stored = len(stored)
        if self.report.server is None:
            self.report.unreferenced = len(stored - self.named.keys())
        found = []
        for ref, manifests in self.named.items():
            if ref in stored:
                found.append(ref)
            elif ref in fossils:
                self.report.in_fossils += 1
                found.append(ref)
            else:
                self.add(self._finding("missing", ref, "not in the storage", manifests))
        return found

    def _finding(
        self, problem: Problem, ref: tuple[str, str], detail: str, manifests: list[Manifest]
    ) -> Finding:
        return Finding(
            problem=problem,
            what=f"chunk {ref[1]}",
            detail=detail,
            backups=[_label(m) for m in manifests],
        )

    def keys(self, identities: list[pyrage.x25519.Identity]) -> dict[tuple[str, str], DedupKey]:
        """The dedup key of each (key_id, rset) group this identity can read; each key copy
        opened too. Groups that cannot be read are reported once, with their backups."""
        mine = {recipient_fingerprint(str(i.to_public())) for i in identities}
        keys: dict[tuple[str, str], DedupKey] = {}
        for (key_id, rset), group in self.groups.items():
            labels = [_label(m) for m in group]
            if not mine & set(group[0].recipients):
                self.add(
                    Finding(
                        problem="unread",
                        what=f"recipient set {rset}",
                        detail="this identity is not one of these backups' recipients: check "
                        "them with theirs",
                        backups=labels,
                    )
                )
                continue
            try:
                open_key_copy(self.storage, key_id, rset, identities)
            except ObjectNotFound:
                pass  # reported by index()
            except DbBackupError as exc:
                self.add(
                    Finding(
                        problem="key copy",
                        what=key_copy_key(key_id, rset),
                        detail=str(exc),
                        backups=labels,
                    )
                )
            try:
                keys[(key_id, rset)] = reader_key(self.storage, group[0].chunks, rset, identities)  # type: ignore[arg-type]
            except DbBackupError as exc:
                self.add(
                    Finding(
                        problem="unread",
                        what=f"dedup key {key_id}",
                        detail=str(exc),
                        backups=labels,
                    )
                )
        return keys

    def read(self, refs: list[tuple[str, str]], identities: list[pyrage.x25519.Identity]) -> None:
        """Fetch, decrypt and check each chunk once; move damaged ones aside."""
        keys = self.keys(identities)
        readable = [
            ref
            for ref in refs
            if (self.named[ref][0].chunks.key_id, ref[0]) in keys  # type: ignore[union-attr]
        ]
        marks = fossil_marks(self.storage)

        def one(ref: tuple[str, str]) -> Verdict:
            m = self.named[ref][0]
            key = keys[(m.chunks.key_id, ref[0])]  # type: ignore[union-attr]
            try:
                return self._verdict(ref, marks, key, identities)
            except ObjectNotFound:
                return "missing", "removed while the check ran"
            except ReadFault as exc:
                return "read fault", f"{exc}; nothing was moved: run the check again"

        pool = ThreadPoolExecutor(2 * IN_FLIGHT, thread_name_prefix="check")
        try:
            self._judge(readable, pool.map(one, readable))
        finally:  # Ctrl-C or a storage error: the reads not started are dropped, not waited for
            pool.shutdown(wait=True, cancel_futures=True)

    def _verdict(
        self,
        ref: tuple[str, str],
        marks: list[str],
        key: DedupKey,
        identities: list[pyrage.x25519.Identity],
    ) -> Verdict:
        """Read one chunk (checked, retried) and open it; a chunk that does not open is read
        again: "damaged" only when both reads return the same bytes."""
        blob = fetch_checked(self.storage, *ref, marks)
        try:
            open_chunk(blob, ref[1], self.lengths[ref], key, identities)
        except IntegrityError as exc:
            if fetch_checked(self.storage, *ref, marks) != blob:
                raise ReadFault(f"two checked reads of chunk {ref[1]} disagree") from None
            return "damaged", str(exc) + self._set_damaged_aside(ref, blob)
        return None

    def _judge(self, readable: list[tuple[str, str]], verdicts: Iterator[Verdict]) -> None:
        """Count each chunk read; report each problem."""
        for ref, verdict in zip(readable, verdicts, strict=True):
            self.report.chunks_read += 1
            if verdict is not None:
                problem, detail = verdict
                self.add(self._finding(problem, ref, detail, self.named[ref]))

    def _set_damaged_aside(self, ref: tuple[str, str], blob: bytes) -> str:
        """Copy a chunk the store holds damaged (blob) to damaged/ inside the store; only
        once the copy is confirmed and still holds blob (a backup may have stored a good
        copy meanwhile), remove it from chunks/. Returns what was done, for the finding."""
        source, target = chunk_key(*ref), damaged_key(*ref)
        if source not in self.listing:
            return ""  # read from a prune's fossils: its sweep decides
        try:
            self.storage.copy(source, target)
            if self.storage.get_checked(target, MAX_STORED) != blob:
                return "; not set aside: it was stored again while it was checked"
            self.storage.delete(source)
        except DbBackupError as exc:
            run_logger().warning("could not set damaged %s aside: %s", source, exc)
            return f"; not set aside ({exc})"
        return f"; set aside to {target}"


def check_storage(
    storage: BackupStorage,
    server: str | None = None,
    *,
    encryption: AgeEncryption | None = None,
    identity_file: str | None = None,
) -> CheckReport:
    """Check the backups (of server, or all) in storage; with an encryption block, read
    every chunk they name with its identity (or identity_file's). Problems are in the
    report's findings, never raised."""
    checker = _Checker(storage, server, encryption is not None)
    checker.index(checker.manifests(server))
    present = checker.presence()
    if encryption is not None:
        checker.read(present, encryption.identities(identity_file))
    r = checker.report
    run_logger().info(
        "checked %d backup(s) (%d deduplicated) in %s: %d chunk(s) named, %d stored, "
        "%d read; %d in a prune's fossils; %d problem(s)",
        r.backups,
        r.chunked,
        r.storage,
        r.chunks_named,
        r.chunks_stored,
        r.chunks_read,
        r.in_fossils,
        len(r.findings),
    )
    return r


check_storage_task = task(
    check_storage, name="check-storage", task_run_name="check-storage", cache_policy=NONE
)
