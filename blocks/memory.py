"""In-memory backup storage: objects in a dict of this process, for fast tests of flows.

A storage kind of blocks/kinds.py, so a saved one loads by name like any storage; but not
exported from `prefect_dbbackup.blocks` (`prefect block register` does not offer it) and no
`dbbackup apply` kind: nothing it holds survives the process (docs/architecture.md,
"Memory storage").
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import threading
from collections.abc import Collection, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, ClassVar

from prefect_dbbackup.blocks.errors import StorageError
from prefect_dbbackup.blocks.storage import (
    SMALL_OBJECT_LIMIT,
    BackupStorage,
    ObjectNotFound,
    check_key,
    list_prefix,
    spool_mismatch,
    too_large,
)
from pydantic import Field

_SPACES: dict[str, dict[str, bytes]] = {}
_TIMES: dict[str, dict[str, datetime]] = {}
_LOCK = threading.Lock()


class MemoryBackupStorage(BackupStorage):
    """Backups in process memory, shared by every instance with the same `space`.

    Example:
        ```python
        from prefect_dbbackup.blocks.memory import MemoryBackupStorage

        storage = MemoryBackupStorage.load("BLOCK_NAME")
        print(storage.list_keys(""))
        ```
    """

    read_concurrency: ClassVar[int] = 1  # a local read: no round trip to overlap

    _block_type_name = "Memory Backup Storage"
    _documentation_url = "https://docs.prefect.io/v3/concepts/blocks"
    _block_type_slug = "memory-backup-storage"
    _description = "Keeps backups in the memory of one process (tests only: nothing survives)."

    space: str = Field(description="Name of the in-memory area; instances with one name share it.")

    def _objects(self) -> dict[str, bytes]:
        return _SPACES.setdefault(self.space, {})

    def clock(self) -> datetime:
        """The store times of objects in memory are this process's clock."""
        return datetime.now(UTC)

    def describe(self) -> str:
        return f"memory:{self.space}"

    def check(self) -> None:
        """Memory is always there."""

    def put_file(self, key: str, source: Path, sha256: str | None = None) -> None:
        """Read the whole file, check its digest, then store it in one step."""
        check_key(key)
        try:
            data = source.read_bytes()
        except OSError as exc:
            raise StorageError(f"cannot read {source}: {exc.strerror}") from None
        digest = hashlib.sha256(data).hexdigest()
        if sha256 is not None and digest != sha256:
            raise spool_mismatch(source, sha256, digest)
        self.put_bytes(key, data)

    def put_bytes(self, key: str, data: bytes) -> None:
        check_key(key)
        with _LOCK:
            self._objects()[key] = bytes(data)
            _TIMES.setdefault(self.space, {})[key] = datetime.now(UTC)

    def get_bytes(self, key: str, limit: int = SMALL_OBJECT_LIMIT) -> bytes:
        data = self._get(key)
        if len(data) > limit:
            raise too_large(key, len(data), limit)
        return data

    def _get(self, key: str) -> bytes:
        check_key(key)
        with _LOCK:
            data = self._objects().get(key)
        if data is None:
            raise ObjectNotFound(f"no object {key} in {self.describe()}")
        return data

    @contextlib.contextmanager
    def open_read(self, key: str, workdir: Path) -> Iterator[BinaryIO]:
        with io.BytesIO(self._get(key)) as f:  # shares the bytes until written to
            yield f

    def list_keys(self, prefix: str = "") -> list[str]:
        prefix = list_prefix(prefix)
        with _LOCK:
            return sorted(k for k in self._objects() if k.startswith(prefix))

    def list_modified(self, prefix: str = "") -> dict[str, datetime]:
        keys = self.list_keys(prefix)
        with _LOCK:
            times = _TIMES.get(self.space, {})
            return {k: times[k] for k in keys if k in times}

    def exists(self, key: str) -> bool:
        check_key(key)
        with _LOCK:
            return key in self._objects()

    def stored_size(self, key: str) -> int | None:
        check_key(key)
        with _LOCK:
            data = self._objects().get(key)
        return None if data is None else len(data)

    def copy(self, source: str, target: str) -> None:
        check_key(target)
        data = self._get(source)
        self.put_bytes(target, data)

    def delete(self, key: str) -> None:
        check_key(key)
        with _LOCK:
            self._objects().pop(key, None)

    def collect_garbage(self, prefix: str, before: datetime, names: Collection[str]) -> list[str]:
        """A put is one dict assignment: nothing is ever half written."""
        list_prefix(prefix)
        return []
