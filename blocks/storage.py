"""Backup storage blocks: where encrypted dumps and their manifests live."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
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
from pydantic import Field, SecretStr

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


class BackupStorage(Block, ABC):
    """What every storage offers; keys are '/'-separated and already safe.

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
    def get_bytes(self, key: str) -> bytes:
        """Read a small object."""

    @abstractmethod
    @contextlib.contextmanager
    def open_read(self, key: str, workdir: Path) -> Iterator[BinaryIO]:
        """A seekable binary file with the object's content."""

    @abstractmethod
    def list_keys(self, prefix: str = "") -> list[str]:
        """Every key under prefix, sorted."""

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
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in key.split("/")):
            raise ValueError(f"unsafe storage key: {key!r}")
        return self.root / key

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

        def copy(f: BinaryIO) -> None:
            digest = hashlib.sha256()
            with open(source, "rb") as src:
                while block := src.read(CHUNK):
                    digest.update(block)
                    f.write(block)
                size = src.tell()
            if sha256 is not None and digest.hexdigest() != sha256:
                raise spool_mismatch(source, sha256, digest.hexdigest())
            f.flush()
            if os.fstat(f.fileno()).st_size != size:
                raise StorageError(f"{self._path(key)} is short after writing: try again")

        self._write_atomic(key, copy)

    def put_bytes(self, key: str, data: bytes) -> None:
        self._write_atomic(key, lambda f: f.write(data))

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except OSError as exc:
            raise StorageError(f"cannot read {self._path(key)}: {exc.strerror}") from None

    @contextlib.contextmanager
    def open_read(self, key: str, workdir: Path) -> Iterator[BinaryIO]:
        try:
            f = open(self._path(key), "rb")  # noqa: SIM115
        except OSError as exc:
            raise StorageError(f"cannot read {self._path(key)}: {exc.strerror}") from None
        with f:
            yield f

    def list_keys(self, prefix: str = "") -> list[str]:
        root = self.root
        start = root / prefix.rstrip("/") if prefix else root
        if not start.is_dir():
            return []
        keys = []
        for dirpath, _dirs, files in os.walk(start):
            rel = Path(dirpath).relative_to(root)
            keys.extend((rel / name).as_posix() for name in files if not name.startswith(".tmp-"))
        return sorted(k for k in keys if k.startswith(prefix))

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

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
        start = self.root / prefix.rstrip("/") if prefix else self.root
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
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        # remove now-empty directories up to the root
        parent = path.parent
        while parent != self.root:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent
