"""Verify records: the signed, location-bound fact that a backup passed verify.

`verified.json` sits next to the manifest it checked, signed like a manifest
(`verified.json.sig`, Ed25519, the storage's manifest signing key and verify keys).
It names the server, database, kind and backup id, the stored object's sha256 (of a
chunked backup: its stream_hmac) and the sha256 of the manifest's exact bytes.
Retention counts a backup as verified only when its record's signature checks and
every one of these fields matches where the record sits and that backup's manifest;
any other record (unsigned, from before records were signed, copied from another
backup, or for a manifest replaced since) is ignored with a warning: a planted
record can never make prune delete more.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from prefect_dbbackup.blocks import signing
from prefect_dbbackup.blocks.errors import ConfigError
from prefect_dbbackup.blocks.storage import BackupStorage, ObjectNotFound, ObjectTooLarge
from prefect_dbbackup.tasks.catalog import StoredManifest, read_each
from prefect_dbbackup.tasks.layout import VERIFIED_NAME, VERIFIED_SIGNATURE_NAME

RECORD_VERSION = 2  # version 1 (unversioned): unsigned records of earlier releases
BOUND_FIELDS = ("server", "database", "kind", "backup_id", "sha256", "manifest_sha256")
REDO = "run `dbbackup verify` on that backup again to re-create it"


def record_signer(storage: BackupStorage) -> Ed25519PrivateKey:
    """The key verify signs its records with; a ConfigError (before anything is restored)
    when the storage has none: an unsigned record would never count for retention."""
    try:
        return storage.manifest_signer()
    except ConfigError as exc:
        raise ConfigError(
            "verify signs the record retention trusts with the storage's manifest signing key "
            f"and cannot: {exc}"
        ) from None


def record_key(entry: StoredManifest, name: str = VERIFIED_NAME) -> str:
    """Key of the verify record (or its signature) next to a manifest."""
    return entry.key.rsplit("/", 1)[0] + "/" + name


def _expected(entry: StoredManifest) -> dict[str, str]:
    """The fields a record must hold to count for this manifest, where it sits."""
    assert entry.manifest is not None and entry.digest is not None
    m = entry.manifest
    return {
        "server": entry.server,
        "database": entry.database,
        "kind": m.kind,
        "backup_id": entry.backup_id,
        "sha256": m.stats.sha256,
        "manifest_sha256": entry.digest,
    }


def write_record(storage: BackupStorage, entry: StoredManifest, details: dict[str, object]) -> str:
    """Sign and store the record of a signed manifest that passed verify: signature first,
    then the record. `details`: what was checked (shown, not trusted). Returns its key."""
    record = {"version": RECORD_VERSION, **_expected(entry), **details}
    record["verified_at"] = datetime.now(UTC).isoformat()
    data = (json.dumps(record, indent=2) + "\n").encode()
    key = record_key(entry)
    storage.put_bytes(
        record_key(entry, VERIFIED_SIGNATURE_NAME), signing.sign(record_signer(storage), data)
    )
    storage.put_bytes(key, data)
    return key


def record_problem(
    storage: BackupStorage,
    entry: StoredManifest,
    keys: list[Ed25519PublicKey],
    has_signature: bool,
) -> str | None:
    """Why the verify record next to a signed manifest does not count (None: it does)."""
    if not has_signature:
        return (
            f"it has no signature ({VERIFIED_SIGNATURE_NAME}): written by a release before "
            "verify records were signed, or planted"
        )
    try:
        data = storage.get_bytes(record_key(entry))
        document = storage.get_bytes(record_key(entry, VERIFIED_SIGNATURE_NAME))
        signing.check(document, data, keys, what="record")
    except ObjectNotFound:
        return "it disappeared while it was read (a prune running beside?)"
    except (signing.BadSignature, ObjectTooLarge) as exc:
        return str(exc)
    try:
        record = json.loads(data)
        said = {name: record.get(name) for name in BOUND_FIELDS}
    except (ValueError, AttributeError):
        return "it is not a verify record"
    wrong = [name for name, value in _expected(entry).items() if said[name] != value]
    if wrong:
        return (
            f"its {', '.join(wrong)} do not match this backup (copied from another backup, or "
            "its manifest was replaced since)"
        )
    return None


def verified_backups(
    storage: BackupStorage,
    records: dict[str, tuple[StoredManifest, bool]],
    keys: list[Ed25519PublicKey],
) -> dict[str, str | None]:
    """record_problem per backup id ({id: (signed manifest, has record signature)}),
    read at once where the storage gains from it: each check is two round trips to S3."""

    def one(item: tuple[StoredManifest, bool]) -> str | None:
        return record_problem(storage, item[0], keys, item[1])

    return dict(
        zip(records, read_each(storage, one, list(records.values()), "records"), strict=True)
    )
