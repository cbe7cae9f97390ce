"""The backup storage contract: what every storage offers (`BackupStorage`), the rules of
its keys, the errors its reads raise, and its limits. The storages are blocks/local_storage.py,
blocks/s3.py and blocks/memory.py; the keys a storage block holds are blocks/storage_keys.py."""

from __future__ import annotations

import contextlib
import re
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterator
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, ClassVar

from prefect.blocks.core import Block
from prefect_dbbackup.blocks.errors import ConfigError, IntegrityError, StorageError
from prefect_dbbackup.blocks.schema_cache import CachedSchema
from prefect_dbbackup.blocks.storage_keys import StorageKeys

CHUNK = 1 << 20


def spool_mismatch(source: Path, expected: str, actual: str) -> IntegrityError:
    """The error for a file whose sha256 is no longer the one taken while writing it."""
    return IntegrityError(
        f"{source} no longer has the sha256 taken while it was written ({actual[:16]}... "
        f"instead of {expected[:16]}...): the work dir's disk damaged it. Nothing was stored; "
        "run the backup again"
    )


KEY_SEGMENT = re.compile(r"[A-Za-z0-9_~%-][A-Za-z0-9._~%-]{0,254}")
"""One key segment: what tasks/layout.py's encoding produces, at most 255 characters (a
file name), never empty, '.', '..' or hidden (names starting with '.' are the storages'
own: local temp files)."""
MAX_KEY = 1024  # S3's limit on a whole key


class UnsafeKey(ConfigError):
    """A storage key outside the contract (see BackupStorage); no storage accepts it."""


class ObjectNotFound(StorageError):
    """No object is stored under the key: a retry will not make it appear."""

    retryable = False


class ReadFault(StorageError):
    """What a read returned is not what the store holds (its checksum, or a second read,
    disagrees): damaged on the way, not in the store. A retry may read it whole."""


SMALL_OBJECT_LIMIT = 64 * 2**20
"""The most get_bytes reads: far above any manifest or signature dbbackup writes, far below
what would exhaust memory if something else planted a huge object under such a name."""


class ObjectTooLarge(IntegrityError):
    """get_bytes found an object larger than its limit: dbbackup did not write it."""


def too_large(key: str, size: int, limit: int) -> ObjectTooLarge:
    """The error for an object of `size` bytes read with `limit`."""
    return ObjectTooLarge(
        f"object {key} holds {size} bytes, more than the {limit} any manifest or signature "
        "of dbbackup holds: it was not written by dbbackup; move it out of the storage"
    )


def is_safe_key(key: object) -> bool:
    """Whether key is a storage key every storage accepts (see BackupStorage)."""
    return (
        isinstance(key, str)
        and 0 < len(key) <= MAX_KEY
        and all(KEY_SEGMENT.fullmatch(segment) for segment in key.split("/"))
    )


def check_key(key: str) -> str:
    """key itself if it is safe; UnsafeKey otherwise."""
    if not is_safe_key(key):
        raise UnsafeKey(
            f"unsafe storage key {key!r}: keys are '/'-separated segments of letters, digits "
            "and . _ ~ % - (no empty, '.', '..' or hidden segment, at most 255 characters "
            f"each and {MAX_KEY} in all)"
        )
    return key


def list_prefix(prefix: str) -> str:
    """The normalized form of a list_keys prefix: '' or whole segments ending with '/'."""
    prefix = prefix.removesuffix("/") if isinstance(prefix, str) else prefix
    return "" if prefix == "" else check_key(prefix) + "/"


class BackupStorage(StorageKeys, CachedSchema, Block, ABC):
    """What every storage offers (the contract tests/integration/test_storage_contract.py
    runs against each storage).

    Keys: '/'-separated segments of `A-Za-z0-9._~%-`, none empty, '.', '..' or starting
    with '.', each at most 255 characters, at most 1024 in all. Every method refuses
    any other key (and list_keys any other prefix) with UnsafeKey before touching the
    store. A key and a key under it (`a` and `a/b`) must not both be written.
    Objects: put_* replace the object under the key all at once; a put that fails or is
    interrupted leaves the previous object (or none) visible, never a part.
    Reads of a key with no object raise ObjectNotFound (a StorageError that is not
    retried); a store that cannot be reached raises a retryable StorageError (AuthError/
    ConfigError when credentials or configuration are wrong).
    Manifests are signed (docs/security.md): writers need a signing key, readers
    (restore, verify, list, prune) the public keys they trust (the fields of StorageKeys).
    """

    # small objects worth reading at once (tasks/catalog.read_each): a remote store's round
    # trips overlap; a local disk sets 1 (threads there only contend for the interpreter)
    read_concurrency: ClassVar[int] = 16

    def locked_until(self, key: str) -> datetime | None:
        """Until when object lock keeps the object from being deleted; None: not locked."""
        return None

    @abstractmethod
    def list_modified(self, prefix: str = "") -> dict[str, datetime]:
        """Every key under prefix (as list_keys) with the time the store last wrote it.

        The store's own clock: the garbage collector of chunks compares only times of
        one store, never a worker's clock with it."""

    @abstractmethod
    def clock(self) -> datetime:
        """The store's own current time, the clock its store times are written with
        (prune bounds the worker's clock by it before it deletes anything)."""

    @abstractmethod
    def put_file(self, key: str, source: Path, sha256: str | None = None) -> None:
        """Store a local file under key atomically (all or nothing).

        Returns only once the stored object is confirmed to be the file (size and a
        checksum; how is up to the store). On a mismatch the object is deleted and a
        retryable StorageError names the key. `sha256`: the file's expected digest; a
        file that no longer has it (a spool damaged since it was written) is refused
        with IntegrityError before anything is stored.
        """

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Store a small object (a manifest) atomically, confirmed like put_file."""

    @abstractmethod
    def get_bytes(self, key: str, limit: int = SMALL_OBJECT_LIMIT) -> bytes:
        """Read a small object whole; ObjectNotFound when there is none, ObjectTooLarge
        (nothing held in memory beyond limit) when it holds more than limit bytes."""

    def get_checked(self, key: str, limit: int = SMALL_OBJECT_LIMIT) -> bytes:
        """get_bytes, confirmed to be what the store holds: against the store's own checksum
        where it has one, else by a second read (ReadFault when they disagree)."""
        first = self.get_bytes(key, limit)
        if self.get_bytes(key, limit) != first:
            raise ReadFault(
                f"two reads of {key} in {self.describe()} returned different bytes: the "
                "storage or the path to it damages reads"
            )
        return first

    @abstractmethod
    def stored_size(self, key: str) -> int | None:
        """The size of the object under key (one HEAD or stat), None when there is none."""

    @abstractmethod
    def copy(self, source: str, target: str) -> None:
        """Copy an object inside the store (never through this worker's memory), replacing
        target all at once, and confirm the copy (StorageError, source untouched, when it
        is not the source). ObjectNotFound when source has no object."""

    @abstractmethod
    @contextlib.contextmanager
    def open_read(self, key: str, workdir: Path) -> Iterator[BinaryIO]:
        """A seekable binary file with the object's content (ObjectNotFound when there is
        none); large objects are streamed, never held in memory whole. `workdir`: a private
        directory a storage may download into."""

    @abstractmethod
    def list_keys(self, prefix: str = "") -> list[str]:
        """Every key under prefix, sorted.

        The prefix is whole segments, with or without a trailing '/': `srv/shop` lists
        `srv/shop/...`, never `srv/shop2/...` (and `srv/sh` lists nothing). '' lists
        everything. Objects whose names are not safe keys (written by something else)
        are not listed.
        """

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored under key."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete one object; a missing object is not an error."""

    @abstractmethod
    def describe(self) -> str:
        """Where this storage is, for logs and summaries."""

    @abstractmethod
    def check(self) -> None:
        """Fail fast (before any dump) when the storage cannot be reached or written."""

    @abstractmethod
    def collect_garbage(self, prefix: str, before: datetime, names: Collection[str]) -> list[str]:
        """Remove half-written uploads under prefix started before `before`; return their keys.

        Only uploads of objects named in `names` (the names dbbackup writes) are touched.
        """
