"""Backup storage blocks: where encrypted dumps and their manifests live."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import secrets
import shutil
import stat
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from prefect.blocks.core import Block
from prefect_dbbackup.blocks import signing
from prefect_dbbackup.blocks.bounds import MAX_HOURS, Hours
from prefect_dbbackup.blocks.errors import ConfigError, DiskFull, IntegrityError, StorageError
from prefect_dbbackup.blocks.schema_cache import CachedSchema
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


def check_gc_hours(grace: float, fence: float) -> None:
    """ValueError unless (grace, fence) are usable chunk GC parameters (docs/dedup.md):
    finite, positive, at most MAX_HOURS, and the fence below the grace."""
    for name, hours in (("dedup_grace_hours", grace), ("dedup_fence_hours", fence)):
        if not isinstance(hours, int | float) or not 0 < hours <= MAX_HOURS:
            raise ValueError(f"{name} must be a number of hours in (0, {MAX_HOURS}]")
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


class BackupStorage(CachedSchema, Block, ABC):
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
    dedup_grace_hours: Hours = Field(
        default=24,
        gt=0,
        description="Chunks a prune sets aside are deleted by a prune at least this long "
        "after (docs/dedup.md, garbage collection). Stored once in the storage by its first "
        "writer: a block whose value differs gets a warning, the storage's value wins.",
    )
    dedup_fence_hours: Hours = Field(
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

    @abstractmethod
    def clock(self) -> datetime:
        """The store's own current time, the clock its store times are written with
        (prune bounds the worker's clock by it before it deletes anything)."""

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


DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # a FIFO never blocks
NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

log = logging.getLogger("dbbackup")


class ForeignLink(IntegrityError):
    """A symbolic link inside a local storage: dbbackup never writes one, and never reads,
    copies, moves or deletes anything through one (nor the link itself)."""


def _is_link(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode)
    except OSError:
        return False


class LocalBackupStorage(BackupStorage):
    """Backups in a directory on a local or mounted disk.

    The root may be a symbolic link (the operator's choice): it is resolved, and below it
    no link is ever followed. Every key is reached one directory at a time from the root
    (O_NOFOLLOW), so a link planted by anyone who can write the storage, as a file or a
    directory, is refused (ForeignLink) by reads, writes and deletes, and left out of
    listings with a warning; it is never deleted or copied.
    """

    _block_type_name = "Local Backup Storage"
    _block_type_slug = "local-backup-storage"
    _description = "Stores backups under a directory (local disk, NFS, ...)."

    path: str = Field(description="Root directory of the backups.")

    @property
    def root(self) -> Path:
        return Path(self.path).expanduser().resolve()

    def _path(self, key: str) -> Path:
        """Where key's file is, for messages (never opened by path)."""
        return self.root / check_key(key)

    def _foreign(self, rel: str) -> ForeignLink:
        return ForeignLink(
            f"{self.root / rel} in backup storage {self.root} is a symbolic link: dbbackup "
            "did not write it and never reads, copies or deletes through a link in its "
            "storage; find out who planted it, then remove it by hand"
        )

    @contextlib.contextmanager
    def _dir(self, parts: Sequence[str], create: bool = False) -> Iterator[int]:
        """A descriptor of the directory root/parts, opened one segment at a time without
        following links (ForeignLink on one; OSError as os.open raises it otherwise)."""
        fd = os.open(self.root, DIR_FLAGS)
        try:
            for depth, name in enumerate(parts, 1):
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(name, dir_fd=fd)
                try:
                    sub = os.open(name, DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR) and _is_link(name, fd):
                        raise self._foreign("/".join(parts[:depth])) from None
                    raise
                os.close(fd)
                fd = sub
            yield fd
        finally:
            os.close(fd)

    def _open_file(self, key: str) -> BinaryIO:
        """key's regular file, open for reading; no link followed on the way."""
        *parts, name = check_key(key).split("/")
        with self._dir(parts) as dir_fd:
            try:
                fd = os.open(name, FILE_FLAGS, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno == errno.ELOOP and _is_link(name, dir_fd):
                    raise self._foreign(key) from None
                raise
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            if stat.S_ISDIR(mode):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
            raise IntegrityError(
                f"{self._path(key)} is not a regular file: dbbackup did not write it; move "
                "it out of the storage"
            )
        return os.fdopen(fd, "rb")

    def _read_error(self, key: str, exc: OSError) -> StorageError:
        """ObjectNotFound for a key with no file (the root itself is fine), else StorageError."""
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR):
            return StorageError(f"cannot read {self._path(key)}: {exc.strerror}")
        self._check_root()
        return ObjectNotFound(f"no object {key} in backup storage {self.root}")

    def describe(self) -> str:
        return str(self.root)

    def _write_atomic(self, key: str, write: callable) -> None:
        """Write through a temp file beside the target (fsync, rename, fsync the directory);
        a link in the target's place or on its way is refused, never replaced."""
        *parts, name = check_key(key).split("/")
        target = self._path(key)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with self._dir(parts, create=True) as dir_fd:
                tmp = f".tmp-{name}.{secrets.token_hex(4)}"
                fd = os.open(tmp, NEW_FILE_FLAGS, 0o600, dir_fd=dir_fd)
                try:
                    with os.fdopen(fd, "wb") as f:
                        write(f)
                        f.flush()
                        os.fsync(f.fileno())
                    if _is_link(name, dir_fd):
                        raise self._foreign(key)
                    os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp, dir_fd=dir_fd)
                    raise
                os.fsync(dir_fd)
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
        try:
            with self._open_file(key) as f:
                data = f.read(limit + 1)
                size = os.fstat(f.fileno()).st_size
        except OSError as exc:
            raise self._read_error(key, exc) from None
        if len(data) > limit:
            raise too_large(key, size, limit)
        return data

    @contextlib.contextmanager
    def open_read(self, key: str, workdir: Path) -> Iterator[BinaryIO]:
        try:
            f = self._open_file(key)
        except OSError as exc:
            raise self._read_error(key, exc) from None
        with f:
            yield f

    def _scan(self, parts: Sequence[str], dir_fd: int) -> Iterator[tuple[str, int, os.DirEntry]]:
        """(relative dir, its descriptor, entry) for everything under dir_fd (root/parts),
        recursing into real directories with key-segment names only, never into links."""
        rel = "/".join(parts)
        with os.scandir(dir_fd) as it:
            entries = list(it)
        for entry in entries:
            yield rel, dir_fd, entry
            if entry.is_symlink() or not entry.is_dir(follow_symlinks=False):
                continue
            if not KEY_SEGMENT.fullmatch(entry.name):
                continue
            try:
                sub = os.open(entry.name, DIR_FLAGS, dir_fd=dir_fd)
            except OSError as exc:  # removed since, or replaced by a link: not a directory
                if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                    continue
                raise
            try:
                yield from self._scan([*parts, entry.name], sub)
            finally:
                os.close(sub)

    def _walk(self, prefix: str) -> Iterator[tuple[str, int, os.DirEntry]]:
        """_scan of root/prefix; nothing when it does not exist (or is not a directory).
        A link on the way is skipped with a warning; an unreadable directory (a stale NFS
        mount, EIO) is a StorageError, never a shorter list."""
        parts = [p for p in list_prefix(prefix).split("/") if p]
        self._check_root()
        try:
            with self._dir(parts) as dir_fd:
                yield from self._scan(parts, dir_fd)
        except ForeignLink as exc:
            log.warning("not listed: %s", exc)
        except OSError as exc:
            # a directory removed by a concurrent delete (or a file in the prefix's place)
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                raise StorageError(f"cannot list {self.root / prefix}: {exc.strerror}") from None

    def _listing(self, prefix: str, times: bool) -> dict[str, datetime | None]:
        """Every regular file under prefix that is a safe key (with its mtime if `times`);
        links are left out and said so once."""
        found: dict[str, datetime | None] = {}
        links = []
        for rel, _, entry in self._walk(prefix):
            key = f"{rel}/{entry.name}".removeprefix("/")
            if entry.is_symlink():
                links.append(key)
            elif entry.is_file(follow_symlinks=False) and is_safe_key(key):
                try:
                    st = entry.stat(follow_symlinks=False) if times else None
                except FileNotFoundError:  # deleted since the listing
                    continue
                found[key] = datetime.fromtimestamp(st.st_mtime, UTC) if st else None
        if links:
            log.warning(
                "backup storage %s: %d symbolic link(s) not listed (%s%s): dbbackup did not "
                "write them and never follows a link in its storage; remove them",
                self.root,
                len(links),
                ", ".join(links[:3]),
                ", ..." if len(links) > 3 else "",
            )
        return found

    def list_keys(self, prefix: str = "") -> list[str]:
        """Walk the directory under prefix. A root not created yet holds no keys; one that
        cannot be read (a stale NFS mount, EIO) is a StorageError, never a shorter list."""
        return sorted(self._listing(prefix, times=False))

    def list_modified(self, prefix: str = "") -> dict[str, datetime]:
        return self._listing(prefix, times=True)  # type: ignore[return-value]

    def clock(self) -> datetime:
        """The modification time of a probe file written in the root: the file system's
        clock (the NFS server's; for a local disk, this machine's kernel). ObjectNotFound
        when the root does not exist yet (nothing is stored)."""
        self._check_root()
        if not self.root.exists():
            raise ObjectNotFound(f"backup storage {self.root} does not exist yet")
        try:
            fd, probe = tempfile.mkstemp(prefix=".tmp-clock.", dir=self.root)
            try:
                return datetime.fromtimestamp(os.fstat(fd).st_mtime, UTC)
            finally:
                os.close(fd)
                os.unlink(probe)
        except OSError as exc:
            raise StorageError(
                f"cannot write a probe file in {self.root} to read its clock: {exc.strerror}"
            ) from None

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

    def _lstat(self, key: str) -> os.stat_result | None:
        """lstat of key's file (ForeignLink when it is a link), None when there is none."""
        *parts, name = check_key(key).split("/")
        try:
            with self._dir(parts) as dir_fd:
                st = os.lstat(name, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                raise StorageError(f"cannot check {self._path(key)}: {exc.strerror}") from None
            self._check_root()
            return None
        if stat.S_ISLNK(st.st_mode):
            raise self._foreign(key)
        return st

    def exists(self, key: str) -> bool:
        st = self._lstat(key)
        return st is not None and stat.S_ISREG(st.st_mode)

    def stored_size(self, key: str) -> int | None:
        """The size of the regular file under key; a link or anything else is no object."""
        path = self._path(key)
        try:
            st = os.lstat(path)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                raise StorageError(f"cannot check {path}: {exc.strerror}") from None
            self._check_root()
            return None
        return st.st_size if stat.S_ISREG(st.st_mode) else None

    def copy(self, source: str, target: str) -> None:
        """A hard link of the source's file under target (a temp name, then a rename): the
        copy is the stored file itself, never bytes read. Stores without hard links get a
        copy of the file, confirmed by comparing both files' sha256."""
        src, dst = self._path(source), self._path(target)
        if self.stored_size(source) is None:
            raise ObjectNotFound(f"no object {source} in backup storage {self.root}")
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.parent / f".tmp-{dst.name}.{secrets.token_hex(4)}"
            os.link(src, tmp, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP, errno.EXDEV):
                raise StorageError(f"cannot copy {src} to {dst}: {exc.strerror}") from None
            self._copy_file(source, target)
            return
        try:
            if not stat.S_ISREG(os.lstat(tmp).st_mode):  # src was swapped for a link meanwhile
                raise StorageError(f"{src} is not a regular file: not copied")
            os.replace(tmp, dst)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _copy_file(self, source: str, target: str) -> None:
        """Copy source's file under target through a temp file, then compare the two."""
        with self.open_read(source, self.root) as f:
            self._write_atomic(target, lambda out: shutil.copyfileobj(f, out, CHUNK))
        if self._sha256(source) != self._sha256(target):
            raise StorageError(f"the copy of {source} at {target} differs from it: try again")

    def _sha256(self, key: str) -> str:
        with self.open_read(key, self.root) as f:
            return hashlib.file_digest(f, "sha256").hexdigest()

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
        """Remove temp files of interrupted writes (`.tmp-NAME.XXXXXXXX`, NAME in names);
        never a link, nor anything below one."""
        removed = []
        for rel, dir_fd, entry in self._walk(prefix):
            match = TEMP_NAME.fullmatch(entry.name)
            if match is None or match["name"] not in (None, *names):
                continue
            with contextlib.suppress(FileNotFoundError):
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISREG(st.st_mode) and datetime.fromtimestamp(st.st_mtime, UTC) < before:
                    os.unlink(entry.name, dir_fd=dir_fd)
                    removed.append(f"{rel}/{entry.name}".removeprefix("/"))
        return removed

    def delete(self, key: str) -> None:
        """Unlink key's file, then the directories it leaves empty up to the root. A link
        (in key's place or on its way) is refused and left as it is."""
        *parts, name = check_key(key).split("/")
        st = self._lstat(key)
        if st is None or stat.S_ISDIR(st.st_mode):
            return  # nothing under key (a prefix is no object): nothing to do
        try:
            with self._dir(parts) as dir_fd:
                os.unlink(name, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR):
                raise StorageError(f"cannot delete {self._path(key)}: {exc.strerror}") from None
            return
        for depth in range(len(parts), 0, -1):  # rmdir never removes a link, nor follows one
            try:
                with self._dir(parts[: depth - 1]) as dir_fd:
                    os.rmdir(parts[depth - 1], dir_fd=dir_fd)
            except OSError:
                break
