"""The dedup key of a storage and its subkeys, and the key's copies in the storage, each
encrypted to one recipient set: made by writers, recovered by `dbbackup apply`, opened by
readers (docs/dedup.md, "The dedup key")."""

from __future__ import annotations

import contextlib
import hmac
import json
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property

import pyrage
from prefect_dbbackup.blocks.encryption import AgeEncryption
from prefect_dbbackup.blocks.errors import AuthError, ConfigError, IntegrityError
from prefect_dbbackup.blocks.storage import BackupStorage, ObjectNotFound
from prefect_dbbackup.tasks.catalog import read_manifests, signature_key
from prefect_dbbackup.tasks.dedup.layout import AVG_SIZE, KEYS, MAX_SIZE, MIN_SIZE, recipient_set
from prefect_dbbackup.tasks.layout import parse_manifest_key
from prefect_dbbackup.tasks.manifest import ChunkList
from pyfastcdc import FastCDC


@dataclass(frozen=True)
class DedupKey:
    """A storage's dedup key and the subkeys derived from it (HMAC-SHA256 with a label)."""

    secret: bytes = field(repr=False)

    def _sub(self, label: str) -> bytes:
        return hmac.digest(self.secret, label.encode(), "sha256")

    @cached_property
    def key_id(self) -> str:
        """Public name of the key (16 hex digits), recorded in manifests."""
        return self._sub("dbbackup key id v1").hex()[:16]

    @cached_property
    def id_key(self) -> bytes:
        return self._sub("dbbackup chunk id v1")

    @cached_property
    def stream_key(self) -> bytes:
        return self._sub("dbbackup stream v1")

    def chunker(self) -> FastCDC:
        """The content-defined chunker, its gear table seeded from the key."""
        seed = int.from_bytes(self._sub("dbbackup fastcdc seed v1")[:8], "big") >> 1
        return FastCDC(AVG_SIZE, min_size=MIN_SIZE, max_size=MAX_SIZE, seed=seed)

    def chunk_id(self, data: bytes | memoryview) -> str:
        return hmac.digest(self.id_key, data, "sha256").hex()

    def stream_hmac(self) -> hmac.HMAC:
        return hmac.new(self.stream_key, digestmod="sha256")


def key_copy_key(key_id: str, rset: str) -> str:
    """Where the dedup key sits encrypted to one recipient set."""
    return f"{KEYS}/{key_id}.{rset}.age"


_COPIES_MADE: set[tuple[str, str, str]] = set()
_COPIES_LOCK = threading.Lock()


def ensure_key_copy(storage: BackupStorage, key: DedupKey, encryption: AgeEncryption) -> None:
    """Store the dedup key encrypted to the encryption block's recipients, unless a copy for
    that set is there: then the identity alone restores and checks every chunked backup."""
    rset = recipient_set(encryption.fingerprints())
    made = (storage.describe(), key.key_id, rset)
    with _COPIES_LOCK:
        if made in _COPIES_MADE:
            return
    where = key_copy_key(key.key_id, rset)
    if not storage.exists(where):
        record = {"version": 1, "key_id": key.key_id, "key": key.secret.hex()}
        storage.put_bytes(
            where, pyrage.encrypt(json.dumps(record).encode(), encryption.recipient_keys())
        )
    with _COPIES_LOCK:
        _COPIES_MADE.add(made)


def writer_key(storage: BackupStorage) -> DedupKey:
    """The key a backup writes chunks with: the storage block's (fails closed)."""
    secret = storage.dedup_secret()
    if secret is None:
        raise ConfigError(
            f"storage {storage.describe()} has dedup: true but no dedup key: run `dbbackup apply "
            "CONFIG --identity-file FILE` (it recovers the key from the storage's copy, or makes "
            "one for a storage that has none), or set dedup_key_file to the key's file"
        )
    return DedupKey(secret)


KEY_COPY = re.compile(r"(?P<key_id>[0-9a-f]{16})\.(?P<rset>[0-9a-f]{16})\.age")


def key_copies(storage: BackupStorage) -> list[tuple[datetime, str, str]]:
    """(store time, key id, recipient set) of every dedup key copy, newest first."""
    found = []
    for key, stamp in storage.list_modified(KEYS).items():
        match = KEY_COPY.fullmatch(key.removeprefix(KEYS + "/"))
        if match:
            found.append((stamp, match["key_id"], match["rset"]))
    return sorted(found, reverse=True)


def _newest_signed_key_id(storage: BackupStorage) -> str | None:
    """The key id of the newest chunked backup with a valid signature, if any: a key copy
    anyone could plant (recipients are public) never outranks the key backups use."""
    listed = set(storage.list_keys())
    wanted = [(k, signature_key(k) in listed) for k in listed if parse_manifest_key(k)]
    signed = [
        e.manifest
        for e in read_manifests(storage, wanted, storage.manifest_verifiers())
        if e is not None and e.trust == "signed" and e.manifest and e.manifest.chunks
    ]
    newest = max(signed, key=lambda m: m.started_at, default=None)
    return newest.chunks.key_id if newest else None  # type: ignore[union-attr]


def recover_key(
    storage: BackupStorage,
    identities: list[pyrage.x25519.Identity],
    copies: list[tuple[datetime, str, str]],
) -> DedupKey:
    """The storage's dedup key from its copies (key_copies): the key of the newest signed
    chunked backup, else the newest copy; ConfigError saying how to recover when no
    identity opens one."""
    wanted = _newest_signed_key_id(storage) if identities else None
    ordered = sorted(copies, key=lambda c: c[1] != wanted)  # stable: newest first otherwise
    for _, key_id, rset in ordered if identities else []:
        with contextlib.suppress(AuthError, IntegrityError, ObjectNotFound):
            return open_key_copy(storage, key_id, rset, identities)
    ids = ", ".join(sorted({c[1] for c in copies}))
    tried = "no identity was given" if not identities else "no given identity opens them"
    raise ConfigError(
        f"storage {storage.describe()} holds copies of its dedup key ({ids}, in {KEYS}/) but "
        f"the block has none and {tried}: a new key would silently stop sharing chunks with "
        "every backup stored. Recover it: `dbbackup apply CONFIG --identity-file FILE` with "
        "the identity of the storage's recipients (or an identity_file on the config's "
        "encryption block), or set dedup_key_file to the key's file"
    )


def open_key_copy(
    storage: BackupStorage, key_id: str, rset: str, identities: list[pyrage.x25519.Identity]
) -> DedupKey:
    """The dedup key `key_id` from its copy for recipient set `rset`, opened with the
    identity (ObjectNotFound when there is no copy; AuthError, IntegrityError)."""
    where = key_copy_key(key_id, rset)
    blob = storage.get_bytes(where)
    try:
        record = json.loads(pyrage.decrypt(blob, identities))
        key = DedupKey(bytes.fromhex(record["key"]))
    except pyrage.DecryptError:
        raise AuthError(
            f"the dedup key copy {where} does not open with this identity: use the identity "
            "of the backup's recipients"
        ) from None
    except (ValueError, KeyError, TypeError):
        raise IntegrityError(f"the dedup key copy {where} is damaged") from None
    if key.key_id != key_id:
        raise IntegrityError(
            f"the dedup key copy {where} holds key {key.key_id}, not {key_id}: it was "
            "replaced; restore it from a copy"
        )
    return key


def reader_key(
    storage: BackupStorage, chunks: ChunkList, rset: str, identities: list[pyrage.x25519.Identity]
) -> DedupKey:
    """The key a chunked backup was written with: the storage block's own when it is that
    key, else its copy in the storage (the identity opens it)."""
    try:
        secret, unusable = storage.dedup_secret(), ""
    except ConfigError as exc:  # a restore machine's block may point at no key file
        secret, unusable = None, f" ({exc})"
    if secret is not None and DedupKey(secret).key_id == chunks.key_id:
        return DedupKey(secret)
    try:
        return open_key_copy(storage, chunks.key_id, rset, identities)
    except ObjectNotFound:
        raise ConfigError(
            f"the dedup key {chunks.key_id} of this backup is neither in the storage "
            f"({key_copy_key(chunks.key_id, rset)}) nor on the storage block{unusable}: set "
            "the block's dedup_key (or dedup_key_file) to the key the backup was written with"
        ) from None
