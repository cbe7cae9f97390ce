"""Finding trusted backups: a backup exists only when its manifest does, and it is trusted
only when that manifest is signed by a trusted key and matches where it sits.

Every manifest read goes through `read_manifest`: the signature (manifest.json.sig)
is checked over the manifest's exact bytes, and the manifest's own server, database,
backup id, kind and object name must match its key. A manifest that fails is never
used by restore or verify, never counts for retention, and is reported (log, `list`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from prefect_dbbackup.blocks import signing
from prefect_dbbackup.blocks.errors import BackupNotFound, ConfigError, IntegrityError
from prefect_dbbackup.blocks.retention import DEFAULT_FUTURE_TOLERANCE_HOURS
from prefect_dbbackup.blocks.storage import BackupStorage, ObjectNotFound, ObjectTooLarge
from prefect_dbbackup.tasks.layout import (
    GLOBALS_SEGMENT,
    MANIFEST_NAME,
    SIGNATURE_NAME,
    backup_key,
    parse_manifest_key,
    series_prefix,
)
from prefect_dbbackup.tasks.logs import run_logger
from prefect_dbbackup.tasks.manifest import Manifest

READERS = 16  # manifests read at once (each read is a round trip to S3)
T = TypeVar("T")
R = TypeVar("R")
Trust = Literal["signed", "unsigned", "invalid", "unreadable"]


@dataclass
class StoredManifest:
    """One manifest in storage: where it sits, what it says, and whether to trust it."""

    key: str
    server: str
    database: str
    backup_id: str
    trust: Trust
    manifest: Manifest | None = None
    problem: str | None = None
    signed_by: str | None = None
    digest: str | None = None  # sha256 of the manifest's exact bytes, once read
    stored_at: datetime | None = None  # when the store wrote it (the store's clock)

    def usable(self, allow_unsigned: bool = False) -> bool:
        """Whether restore/verify may use it: signed, or unsigned when explicitly allowed."""
        return self.trust == "signed" or (allow_unsigned and self.trust == "unsigned")

    def refusal(self) -> IntegrityError:
        """The error restore raises for a manifest it will not use."""
        hint = f" {unsigned_hint(self.server, self.database, self.backup_id)}"
        hint = hint if self.trust == "unsigned" else ""
        return IntegrityError(
            f"refusing backup {self.backup_id} of {self.database!r} on {self.server!r}: "
            f"its manifest {self.key} is {self.trust}: {self.problem}.{hint}"
        )


def _restore_command(server: str, database: str) -> str:
    if database == GLOBALS_SEGMENT:
        return f"dbbackup restore-users {server}"
    return f"dbbackup restore {server} {database}"


def unsigned_hint(server: str, database: str, backup_id: str) -> str:
    """What to do about an unsigned backup: check it, then name it (never the bare flag)."""
    return (
        "If it is a backup from before manifests were signed: compare its size and time "
        f"(`dbbackup list {server} -d {database}`) with the run that made it; only if it is "
        f"yours, name it: `{_restore_command(server, database)} --backup-id {backup_id} "
        "--allow-unsigned`."
    )


def require_named_for_unsigned(
    server: str, database: str, backup_id: str, allow_unsigned: bool
) -> None:
    """allow_unsigned accepts one backup named by id, never 'latest': anyone who can write
    the storage can plant an unsigned backup newer than every real one."""
    if allow_unsigned and backup_id == "latest":
        raise ConfigError(
            "--allow-unsigned needs --backup-id: it accepts only an unsigned backup you name, "
            "never the latest (anyone who can write the storage can plant an unsigned backup "
            f"newer than yours). List the backups with `dbbackup list {server} -d {database}`, "
            "check the one you want against the run that made it, then pass "
            "--backup-id ID --allow-unsigned"
        )


def signature_key(manifest_key: str) -> str:
    """Key of the detached signature of a manifest."""
    return manifest_key[: -len(MANIFEST_NAME)] + SIGNATURE_NAME


def _location_problem(
    manifest: Manifest, server: str, database: str, backup_id: str, kind: str
) -> str | None:
    """Why a manifest does not belong where it sits (None when it does)."""
    said = (manifest.server, manifest.database, manifest.backup_id, manifest.kind)
    where = (server, database, backup_id, kind)
    if said != where:
        return (
            f"it says server {said[0]!r}, database {said[1]!r}, backup id {said[2]!r}, kind "
            f"{said[3]}, but it sits at server {where[0]!r}, database {where[1]!r}, backup id "
            f"{where[2]!r}, kind {where[3]} (copied or moved from elsewhere)"
        )
    if manifest.object_name != manifest.stored_object_name:
        return (
            f"it names object {manifest.object_name!r}; a {manifest.kind} backup of a "
            f"{manifest.server_type} server is always {manifest.stored_object_name!r}"
        )
    return None


def read_manifest(
    storage: BackupStorage,
    key: str,
    keys: list[Ed25519PublicKey],
    has_signature: bool | None = None,
) -> StoredManifest:
    """Read one manifest and decide whether to trust it; never raises for its content.

    `keys` are the trusted public keys (storage.manifest_verifiers()); `has_signature`
    says whether a listing showed the signature file (None: ask the storage).
    Storage errors (network, permissions) are raised: they say nothing about the backup;
    ObjectNotFound means the manifest was deleted since it was listed.
    """
    parsed = parse_manifest_key(key)
    if parsed is None:
        raise ValueError(f"not a manifest key: {key}")
    server, database, backup_id = parsed
    entry = StoredManifest(key, server, database, backup_id, "unreadable")
    try:
        data = storage.get_bytes(key)
    except ObjectTooLarge as exc:
        entry.problem = str(exc)
        return entry
    entry.digest = hashlib.sha256(data).hexdigest()
    try:
        entry.manifest = Manifest.from_bytes(data)
    except ValueError as exc:
        entry.problem = f"not a valid manifest ({_first_line(exc)})"
        return entry
    # the raw segment tells the globals series from a database named '_globals' (%5Fglobals)
    kind = "globals" if key.split("/")[1] == GLOBALS_SEGMENT else "database"
    entry.problem = _location_problem(entry.manifest, server, database, backup_id, kind)
    if entry.problem is not None:
        entry.trust = "invalid"
        return entry
    entry.trust, entry.problem, entry.signed_by = signature_trust(
        storage, key, data, keys, has_signature
    )
    return entry


def signature_trust(
    storage: BackupStorage,
    key: str,
    data: bytes,
    keys: list[Ed25519PublicKey],
    has_signature: bool | None = None,
) -> tuple[Trust, str | None, str | None]:
    """(trust, problem, signer's key id) of the manifest data read from key, by its detached
    signature (manifest.json.sig beside it) and the trusted keys."""
    sig_key = signature_key(key)
    if has_signature is None:
        has_signature = storage.exists(sig_key)
    if not has_signature:
        return "unsigned", f"there is no signature ({SIGNATURE_NAME})", None
    if not keys:
        problem = (
            f"storage {storage.describe()} has no manifest_verify_keys to check its signature with"
        )
        return "unsigned", problem, None
    try:
        signer = signing.check(storage.get_bytes(sig_key), data, keys)
    except ObjectNotFound:  # listed a moment ago: a prune is deleting this backup
        return "unsigned", f"its signature ({SIGNATURE_NAME}) disappeared", None
    except (signing.BadSignature, ObjectTooLarge) as exc:
        return "invalid", str(exc), None
    return "signed", None, signing.key_id(signer)


def _first_line(exc: Exception) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return "; ".join(lines[:3])[:300]


def publish_manifest(storage: BackupStorage, manifest: Manifest) -> str:
    """Sign and store a manifest: signature first, then the manifest (its presence is what
    makes the backup exist). Returns the manifest key."""
    m = manifest
    key = backup_key(m.server, m.database, m.backup_id, MANIFEST_NAME, m.kind)
    publish_signed(storage, key, m.to_bytes())
    return key


def publish_signed(storage: BackupStorage, key: str, data: bytes) -> None:
    """Store the manifest data at key, its signature (signature_key) first."""
    storage.put_bytes(signature_key(key), signing.sign(storage.manifest_signer(), data))
    storage.put_bytes(key, data)


def read_manifests(
    storage: BackupStorage, wanted: list[tuple[str, bool | None]], keys: list[Ed25519PublicKey]
) -> list[StoredManifest | None]:
    """read_manifest of each (key, has_signature), READERS at a time (a server's listing can
    hold thousands of manifests, each read a round trip to S3); None for a manifest deleted
    since it was listed (a prune running beside). The first storage error is raised."""

    def one(item: tuple[str, bool | None]) -> StoredManifest | None:
        try:
            return read_manifest(storage, item[0], keys, item[1])
        except ObjectNotFound:
            return None

    return read_each(storage, one, wanted, "manifests")


def read_each(
    storage: BackupStorage, read: Callable[[T], R], items: Sequence[T], name: str
) -> list[R]:
    """read(item) of each item, in order, as many at once as the storage gains from
    (`read_concurrency`: S3's round trips overlap; on a local disk the reads run in this
    thread, where threads would only contend for the interpreter)."""
    workers = min(READERS, storage.read_concurrency, len(items))
    if workers <= 1:
        return [read(item) for item in items]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name) as pool:
        return list(pool.map(read, items))


def scan_backups(
    storage: BackupStorage, server: str, database: str | None = None, kind: str = "database"
) -> list[StoredManifest]:
    """Every manifest of a server (or one database, or with kind 'globals' its users/roles
    series), trusted or not, oldest first."""
    keys = storage.manifest_verifiers()
    listed = storage.list_modified(series_prefix(server, database, kind))
    signatures = {k for k in listed if k.endswith("/" + SIGNATURE_NAME)}
    wanted = []
    for key in listed:
        parsed = parse_manifest_key(key)
        if parsed is None or parsed[0] != server:
            continue
        if database is not None and parsed[1] != database:
            continue
        wanted.append((key, signature_key(key) in signatures))
    entries = [e for e in read_manifests(storage, wanted, keys) if e is not None]
    for e in entries:
        e.stored_at = listed[e.key]
    # started_at (microseconds) orders two backups taken within the same second
    return sorted(
        entries,
        key=lambda e: (
            e.database,
            e.manifest.started_at.timestamp() if e.manifest else 0.0,
            e.backup_id,
        ),
    )


def warn_refused(entries: list[StoredManifest], allow_unsigned: bool = False) -> None:
    """Log one warning per manifest that restore, verify and retention will not use."""
    log = run_logger()
    for e in entries:
        if not e.usable(allow_unsigned):
            log.warning("skipping %s manifest %s: %s", e.trust, e.key, e.problem)


def list_backups(
    storage: BackupStorage,
    server: str,
    database: str | None = None,
    kind: str = "database",
    *,
    allow_unsigned: bool = False,
    latest: bool = False,
) -> list[Manifest]:
    """Manifests of the trusted backups of a server (or one database, or with kind
    'globals' its users/roles series), oldest first. Others are logged and skipped;
    `latest`: candidates for 'latest', future-dated ones skipped (not_future_dated)."""
    entries = scan_backups(storage, server, database, kind)
    warn_refused(entries, allow_unsigned)
    usable = [e for e in entries if e.manifest and e.usable(allow_unsigned)]
    return [e.manifest for e in (not_future_dated(usable) if latest else usable) if e.manifest]


def refused_latest(
    storage: BackupStorage, server: str, databases: list[str] | None = None
) -> list[StoredManifest]:
    """Manifests that would be the latest backup of their database but are not trusted
    (planted, tampered, unreadable, or unsigned and newer than every signed one)."""
    entries: list[StoredManifest] = []
    for database in dict.fromkeys(databases) if databases else [None]:
        entries += scan_backups(storage, server, database)
    refused: dict[str, list[StoredManifest]] = {}
    for e in sorted(entries, key=lambda e: e.backup_id):  # ids sort by time; a trusted one
        # clears the refusals older than it
        if e.usable():
            refused[e.database] = []
        elif e.database != GLOBALS_SEGMENT:
            refused.setdefault(e.database, []).append(e)
    return [e for found in refused.values() for e in found]


def find_backup(
    storage: BackupStorage,
    server: str,
    database: str,
    backup_id: str = "latest",
    *,
    kind: str = "database",
    allow_unsigned: bool = False,
) -> Manifest:
    """The manifest of one backup; 'latest' is the newest signed one.

    A backup asked for by id that is not trusted is refused with an IntegrityError;
    allow_unsigned (accepting an unsigned one) needs an id (ConfigError with 'latest').
    """
    require_named_for_unsigned(server, database, backup_id, allow_unsigned)
    if backup_id != "latest":
        key = backup_key(server, database, backup_id, MANIFEST_NAME, kind)
        if not storage.exists(key):
            raise BackupNotFound(
                f"no complete backup {backup_id} of {database!r} on {server!r} in "
                f"{storage.describe()}: `dbbackup list {server} --database ...` shows what exists"
            )
        try:
            entry = read_manifest(storage, key, storage.manifest_verifiers())
        except ObjectNotFound:
            raise BackupNotFound(
                f"backup {backup_id} of {database!r} on {server!r} was deleted while it was "
                f"read (a prune running?): `dbbackup list {server}` shows what exists"
            ) from None
        if not entry.usable(allow_unsigned) or entry.manifest is None:
            raise entry.refusal()
        return entry.manifest
    backups = list_backups(storage, server, database, kind, latest=True)
    if not backups:
        raise BackupNotFound(
            f"no complete backup of {database!r} on {server!r} with a valid signature in "
            f"{storage.describe()} (`dbbackup list` shows unsigned or invalid ones)"
        )
    return backups[-1]


def manifest_trust(
    storage: BackupStorage, backups: dict[str, list[str]], verifiers: list[Ed25519PublicKey]
) -> dict[str, StoredManifest | None]:
    """Prune's completeness hook: per backup id, the manifest among that backup's stored
    keys, read and judged (None: it has no manifest, or it was deleted since the listing).
    Only 'signed' counts for retention."""
    wanted: dict[str, tuple[str, bool | None]] = {}
    for backup_id, backup_keys in backups.items():
        manifest = next((k for k in backup_keys if k.endswith("/" + MANIFEST_NAME)), None)
        if manifest is not None:
            wanted[backup_id] = (manifest, signature_key(manifest) in backup_keys)
    entries = read_manifests(storage, list(wanted.values()), verifiers)
    read = dict(zip(wanted, entries, strict=True))
    return {bid: read.get(bid) for bid in backups}


def not_future_dated(
    entries: list[StoredManifest], now: datetime | None = None
) -> list[StoredManifest]:
    """The manifests not dated in the future beyond the default tolerance, of this worker's
    clock or of the time the store wrote them (a backup cannot start after its manifest
    was stored, whatever the clocks of the workers): 'latest' never picks a backup from
    a worker with a fast clock or a planted one; each skip is logged."""
    now = now or datetime.now(UTC)
    tolerance = timedelta(hours=DEFAULT_FUTURE_TOLERANCE_HOURS)
    kept = []
    for e in entries:
        assert e.manifest is not None
        bound = now if e.stored_at is None else min(now, e.stored_at)
        if e.manifest.started_at <= bound + tolerance:
            kept.append(e)
            continue
        run_logger().warning(
            "ignoring backup %s of %r as latest: it is dated %s, in the future (ahead of this "
            "worker's clock or of the time the storage wrote its manifest: a worker with a "
            "fast clock, or planted); name it with --backup-id to restore it anyway",
            e.backup_id,
            e.database,
            f"{e.manifest.started_at:%Y-%m-%d %H:%M}Z",
        )
    return kept
