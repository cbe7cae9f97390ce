"""Backup storage blocks: where encrypted dumps and their manifests live."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import stat
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from prefect.blocks.core import Block
from prefect_dbbackup.blocks import signing
from prefect_dbbackup.blocks.errors import ConfigError, DiskFull, IntegrityError, StorageError
from pydantic import Field, SecretStr, model_validator

CHUNK = 1 << 20


def spool_mismatch(source: Path, expected: str, actual: str) -> IntegrityError:
    """The error for a file whose sha256 is no longer the one taken while writing it."""
    return IntegrityError(
        f"{source} no longer has the sha256 taken while it was written ({actual[:16]}... "
        f"instead of {expected[:16]}...): the work dir's disk damaged it. Nothing was stored; "
        "run the backup again"
    )


TEMP_NAME = re.compile(r"\.tmp-(?:(?P<name>.+)\.)?[a-z0-9_]{8}")
"""Our temp files: `.tmp-NAME.XXXXXXXX` (older versions wrote `.tmp-XXXXXXXX`)."""

KEY_SEGMENT = re.compile(r"[A-Za-z0-9_~%-][A-Za-z0-9._~%-]{0,254}")
"""One key segment: what tasks/layout.py's encoding produces, at most 255 characters (a
file name), never empty, '.', '..' or hidden (names starting with '.' are the storages'
own: local temp files)."""
MAX_KEY = 1024  # S3's limit on a whole key


def new_dedup_key() -> str:
    """A new dedup key, as stored in a block or key file (64 hex digits)."""
    return secrets.token_hex(32)


MAX_GC_HOURS = 8760.0  # a year, as blocks/bounds.MAX_HOURS on main


def check_gc_hours(grace: float, fence: float) -> None:
    """ValueError unless (grace, fence) are usable chunk GC parameters (docs/dedup.md):
    finite, positive, at most MAX_GC_HOURS, and the fence below the grace."""
    for name, hours in (("dedup_grace_hours", grace), ("dedup_fence_hours", fence)):
        if not isinstance(hours, int | float) or not 0 < hours <= MAX_GC_HOURS:
            raise ValueError(f"{name} must be a number of hours in (0, {MAX_GC_HOURS}]")
    if fence >= grace:
        raise ValueError(
            "dedup_fence_hours must be below dedup_grace_hours (docs/dedup.md): a chunk a "
            "backup relies on could be deleted"
        )


class UnsafeKey(ConfigError):
    """A storage key outside the contract (see BackupStorage); no storage accepts it."""


class ObjectNotFound(StorageError):
    """No object is stored under the key: a retry will not make it appear."""

    retryable = False


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


class BackupStorage(Block, ABC):
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
    (restore, verify, list, prune) the public keys they trust.
    """

    manifest_signing_key: SecretStr | None = Field(
        default=None,
        description="Ed25519 key (PEM) that signs the manifests of new backups; backup "
        "workers need it. `dbbackup signing-keygen -o FILE` creates one.",
    )
    manifest_signing_key_file: str | None = Field(
        default=None,
        description="Path to the signing key file, used when manifest_signing_key is empty.",
    )
    manifest_verify_keys: list[str] = Field(
        default_factory=list,
        description="Public keys (dbbackup-ed25519:...) whose manifest signatures are trusted; "
        "several for key rotation. Empty: the signing key's own public key.",
    )

    dedup: bool = Field(
        default=False,
        description="Store new database backups as deduplicated chunks, each compressed and "
        "encrypted on its own (docs/dedup.md). Existing backups stay readable either way.",
    )
    dedup_key: SecretStr | None = Field(
        default=None,
        description="The storage's dedup key (64 hex digits): every writer of a deduplicating "
        "storage needs it. `dbbackup apply` makes one; `dbbackup dedup-keygen` writes one.",
    )
    dedup_key_file: str | None = Field(
        default=None, description="Path to the dedup key file, used when dedup_key is empty."
    )
    dedup_grace_hours: float = Field(
        default=24,
        gt=0,
        description="Chunks a prune sets aside are deleted by a prune at least this long "
        "after (docs/dedup.md, garbage collection). Stored once in the storage by its first "
        "writer: a block whose value differs gets a warning, the storage's value wins.",
    )
    dedup_fence_hours: float = Field(
        default=20,
        gt=0,
        description="A backup that took longer than this between finding its chunks and "
        "writing its manifest checks them again. Below dedup_grace_hours; stored once in "
        "the storage, like it.",
    )

    @model_validator(mode="after")
    def _fence_below_grace(self) -> BackupStorage:
        check_gc_hours(self.dedup_grace_hours, self.dedup_fence_hours)
        return self

    def dedup_secret(self) -> bytes | None:
        """The 32-byte dedup key, or None when the block has none (ConfigError: malformed)."""
        if self.dedup_key is not None:
            text, source = self.dedup_key.get_secret_value(), "dedup_key"
        elif self.dedup_key_file:
            path = Path(self.dedup_key_file).expanduser()
            source = f"dedup key file {path}"
            try:
                text = path.read_text()
            except OSError as exc:
                raise ConfigError(f"cannot read {source}: {exc.strerror}") from None
        else:
            return None
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
        if len(lines) != 1 or not re.fullmatch(r"[0-9a-f]{64}", lines[0]):
            raise ConfigError(
                f"{source} of storage {self.describe()} is not a dedup key (64 hex digits); "
                "`dbbackup dedup-keygen -o FILE` makes one"
            )
        return bytes.fromhex(lines[0])

    def locked_until(self, key: str) -> datetime | None:
        """Until when object lock keeps the object from being deleted; None: not locked."""
        return None

    @abstractmethod
    def list_modified(self, prefix: str = "") -> dict[str, datetime]:
        """Every key under prefix (as list_keys) with the time the store last wrote it.

        The store's own clock: the garbage collector of chunks compares only times of
        one store, never a worker's clock with it."""

    def manifest_signer(self) -> Ed25519PrivateKey:
        """The signing key; fails closed (ConfigError) when there is none or it is not trusted."""
        if self.manifest_signing_key is not None:
            text, source = self.manifest_signing_key.get_secret_value(), "manifest_signing_key"
        elif self.manifest_signing_key_file:
            path = Path(self.manifest_signing_key_file).expanduser()
            source = f"manifest signing key file {path}"
            try:
                text = path.read_text()
            except OSError as exc:
                raise ConfigError(f"cannot read {source}: {exc.strerror}") from None
        else:
            raise ConfigError(
                f"storage {self.describe()} has no manifest signing key: refusing to write an "
                "unsigned backup. Create one with `dbbackup signing-keygen -o FILE` and set "
                "manifest_signing_key_file (or manifest_signing_key) on the storage block"
            )
        key = signing.load_signing_key(text, source)
        trusted = [signing.public_key_text(k) for k in self._configured_verify_keys()]
        public = signing.public_key_text(key.public_key())
        if trusted and public not in trusted:
            raise ConfigError(
                f"the manifest signing key of storage {self.describe()} ({public}) is not in its "
                "manifest_verify_keys: its backups would be refused at restore; add it there"
            )
        return key

    def _configured_verify_keys(self) -> list[Ed25519PublicKey]:
        return [signing.parse_public_key(text) for text in self.manifest_verify_keys]

    def manifest_verifiers(self) -> list[Ed25519PublicKey]:
        """Public keys whose signatures are trusted: the configured ones, else the signing
        key's own; empty when neither is set (then no manifest counts as signed)."""
        configured = self._configured_verify_keys()
        if configured or (self.manifest_signing_key is None and not self.manifest_signing_key_file):
            return configured
        return [self.manifest_signer().public_key()]

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


class LocalBackupStorage(BackupStorage):
    """Backups in a directory on a local or mounted disk."""

    _block_type_name = "Local Backup Storage"
    _block_type_slug = "local-backup-storage"
    _description = "Stores backups under a directory (local disk, NFS, ...)."

    path: str = Field(description="Root directory of the backups.")

    @property
    def root(self) -> Path:
        return Path(self.path).expanduser().resolve()

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _read_error(self, key: str, exc: OSError) -> StorageError:
        """ObjectNotFound for a key with no file (the root itself is fine), else StorageError."""
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR):
            return StorageError(f"cannot read {self._path(key)}: {exc.strerror}")
        self._check_root()
        return ObjectNotFound(f"no object {key} in backup storage {self.root}")

    def describe(self) -> str:
        return str(self.root)

    def _write_atomic(self, key: str, write: callable) -> None:
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".tmp-{target.name}.", dir=target.parent)
            try:
                with os.fdopen(fd, "wb") as f:
                    write(f)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, target)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            dir_fd = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull(
                    f"backup storage {self.root} is full ({exc.strerror}): free space (remove "
                    "old backups), then run the backup again"
                ) from None
            raise StorageError(f"cannot write {target}: {exc.strerror}") from None

    def put_file(self, key: str, source: Path, sha256: str | None = None) -> None:
        """Copy through a temp file (fsync, rename). The copied bytes are hashed on the way
        and their count is checked on the written file before the rename: no network is
        in between, so a read-back (served from the page cache) would prove no more."""

        path = self._path(key)
        try:
            src = open(source, "rb")  # noqa: SIM115
        except OSError as exc:
            raise StorageError(f"cannot read {source}: {exc.strerror}") from None

        def copy(f: BinaryIO) -> None:
            digest = hashlib.sha256()
            while block := src.read(CHUNK):
                digest.update(block)
                f.write(block)
            if sha256 is not None and digest.hexdigest() != sha256:
                raise spool_mismatch(source, sha256, digest.hexdigest())
            f.flush()
            if os.fstat(f.fileno()).st_size != src.tell():
                raise StorageError(f"{path} is short after writing: try again")

        with src:
            self._write_atomic(key, copy)

    def put_bytes(self, key: str, data: bytes) -> None:
        self._write_atomic(key, lambda f: f.write(data))

    def get_bytes(self, key: str, limit: int = SMALL_OBJECT_LIMIT) -> bytes:
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                data = f.read(limit + 1)
        except OSError as exc:
            raise self._read_error(key, exc) from None
        if len(data) > limit:
            raise too_large(key, os.stat(path).st_size, limit)
        return data

    @contextlib.contextmanager
    def open_read(self, key: str, workdir: Path) -> Iterator[BinaryIO]:
        path = self._path(key)
        try:
            f = open(path, "rb")  # noqa: SIM115
        except OSError as exc:
            raise self._read_error(key, exc) from None
        with f:
            yield f

    def list_keys(self, prefix: str = "") -> list[str]:
        """Walk the directory under prefix. A root not created yet holds no keys; one that
        cannot be read (a stale NFS mount, EIO) is a StorageError, never a shorter list."""
        root, prefix = self.root, list_prefix(prefix)
        self._check_root()

        def failed(exc: OSError) -> None:
            # a directory removed by a concurrent delete (or a file in the prefix's place)
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                raise StorageError(f"cannot list {exc.filename}: {exc.strerror}")

        keys = []
        for dirpath, dirs, files in os.walk(root / prefix, onerror=failed):
            rel = Path(dirpath).relative_to(root).as_posix()
            dirs[:] = [d for d in dirs if KEY_SEGMENT.fullmatch(d)]
            keys.extend(f"{rel}/{name}".removeprefix("./") for name in files)
        return sorted(k for k in keys if is_safe_key(k))

    def list_modified(self, prefix: str = "") -> dict[str, datetime]:
        found = {}
        for key in self.list_keys(prefix):
            with contextlib.suppress(FileNotFoundError):  # deleted since the listing
                found[key] = datetime.fromtimestamp(self._path(key).stat().st_mtime, UTC)
        return found

    def _check_root(self) -> None:
        """StorageError unless the root is a directory or does not exist yet."""
        try:
            if not stat.S_ISDIR(os.stat(self.root).st_mode):
                raise StorageError(f"backup storage {self.root} is not a directory")
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise StorageError(
                    f"cannot reach backup storage {self.root}: {exc.strerror}"
                ) from None

    def exists(self, key: str) -> bool:
        path = self._path(key)
        try:
            return stat.S_ISREG(os.stat(path).st_mode)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                raise StorageError(f"cannot check {path}: {exc.strerror}") from None
        self._check_root()
        return False

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(
                f"cannot create backup storage {self.root}: {exc.strerror}"
            ) from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise ConfigError(f"backup storage {self.root} is not writable by this worker")

    def collect_garbage(self, prefix: str, before: datetime, names: Collection[str]) -> list[str]:
        """Remove temp files of interrupted writes (`.tmp-NAME.XXXXXXXX`, NAME in names)."""
        start = self.root / list_prefix(prefix)
        removed = []
        for tmp in start.rglob(".tmp-*") if start.is_dir() else []:
            match = TEMP_NAME.fullmatch(tmp.name)
            if match is None or match["name"] not in (None, *names) or not tmp.is_file():
                continue
            with contextlib.suppress(FileNotFoundError):
                if datetime.fromtimestamp(tmp.stat().st_mtime, UTC) < before:
                    tmp.unlink()
                    removed.append(tmp.relative_to(self.root).as_posix())
        return removed

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except OSError as exc:
            # no file under key (nothing there, a directory, a file as parent): nothing to do
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR):
                raise StorageError(f"cannot delete {path}: {exc.strerror}") from None
            self._check_root()
            return
        # remove now-empty directories up to the root
        parent = path.parent
        while parent != self.root:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent
