"""`local-backup-storage`: backups in a directory on a local or mounted disk, reached one
directory at a time without following a symbolic link (O_NOFOLLOW)."""

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
from collections.abc import Collection, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, ClassVar

from prefect_dbbackup.blocks.errors import ConfigError, DiskFull, IntegrityError, StorageError
from prefect_dbbackup.blocks.storage import (
    CHUNK,
    KEY_SEGMENT,
    SMALL_OBJECT_LIMIT,
    BackupStorage,
    ObjectNotFound,
    check_key,
    is_safe_key,
    list_prefix,
    spool_mismatch,
    too_large,
)
from pydantic import Field

TEMP_NAME = re.compile(r"\.tmp-(?:(?P<name>.+)\.)?[a-z0-9_]{8}")
"""Our temp files: `.tmp-NAME.XXXXXXXX` (older versions wrote `.tmp-XXXXXXXX`)."""

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

    Example:
        ```python
        from prefect_dbbackup import LocalBackupStorage, backup_server

        storage = LocalBackupStorage.load("BLOCK_NAME")
        backup_server("local-pg", storage=storage)
        ```
    """

    read_concurrency: ClassVar[int] = 1  # a local read: no round trip to overlap

    _block_type_name = "Local Backup Storage"
    _documentation_url = "https://docs.prefect.io/v3/concepts/blocks"
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
