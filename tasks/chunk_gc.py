"""Garbage collection of chunks: after retention removed manifests, the chunks no backup
names any more go, in two phases and without a lock (docs/dedup.md, "Garbage collection").

- Mark: write `_dedup/gc/{mark}.json` (its store time is the mark's time), list the
  storage, read every manifest, and move each chunk that no manifest names to
  `_dedup/fossils/{mark}/`. Readers still find it there.
- Sweep (a later prune, once the store's clock is dedup_grace_hours past the mark): read
  every manifest again; a fossil one of them names is copied back to chunks/, the others
  are deleted. Only sweeps delete chunk data.
A backup that relied on a chunk writes its manifest within dedup_fence_hours or checks
its chunks again (tasks/chunks.ChunkWriter.fence); the grace exceeds fence plus the mark's
own time budget, so a sweep always sees the manifest of every backup relying on a fossil.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

from prefect import task
from prefect.cache_policies import NONE
from prefect_dbbackup.blocks.errors import ObjectLocked, StorageError
from prefect_dbbackup.blocks.storage import BackupStorage, ObjectNotFound
from prefect_dbbackup.tasks.catalog import READERS
from prefect_dbbackup.tasks.chunks import (
    CHUNKS,
    GC,
    KEYS,
    boottime,
    chunk_key,
    fossil_key,
    move_chunk,
    parse_chunk_key,
)
from prefect_dbbackup.tasks.layout import parse_manifest_key
from prefect_dbbackup.tasks.logs import run_logger
from pydantic import BaseModel


class ChunkCollection(BaseModel):
    """What one garbage collection of a storage's chunks did (or would do, dry run)."""

    mark: str | None = None
    chunks: int = 0  # in chunks/ when the collection listed the storage
    named: int = 0  # distinct chunk ids the manifests name
    set_aside: int = 0  # moved to fossils/{mark}/ (unreferenced)
    resurrected: int = 0  # fossils of swept marks named again by a manifest
    deleted: int = 0
    swept: list[str] = []  # marks whose sweep finished
    waiting: list[str] = []  # marks younger than the grace period
    locked: list[str] = []  # keys kept under object lock
    unfinished: bool = False  # the mark ran out of its time budget; the next prune goes on


def uses_chunks(storage: BackupStorage) -> bool:
    """Whether the storage holds (or will hold) chunked backups: dedup on, or a dedup key
    copy left by an earlier configuration."""
    return storage.dedup or bool(storage.list_keys(KEYS))


def named_chunks(storage: BackupStorage, manifest_keys: list[str]) -> set[str]:
    """Every chunk id any manifest names, whatever its trust. Read as plain JSON, so a
    manifest of a newer version, or one that fails its signature, still protects its chunks."""

    def ids(key: str) -> list[str]:
        try:
            document = json.loads(storage.get_bytes(key))
        except ObjectNotFound:  # removed since the listing
            return []
        except ValueError:
            run_logger().warning("manifest %s is not JSON: it names no chunk", key)
            return []
        chunks = document.get("chunks") if isinstance(document, dict) else None
        order = chunks.get("order") if isinstance(chunks, dict) else None
        if not isinstance(order, list):
            return []
        return [
            entry[0]
            for entry in order
            if isinstance(entry, list) and entry and isinstance(entry[0], str)
        ]

    with ThreadPoolExecutor(READERS, thread_name_prefix="gc-manifests") as pool:
        return {cid for found in pool.map(ids, manifest_keys) for cid in found}


def _mark_name() -> str:
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"


class _Collector:
    def __init__(self, storage: BackupStorage, dry_run: bool) -> None:
        self.storage, self.dry_run = storage, dry_run
        self.result = ChunkCollection()
        self.log = run_logger()

    def sweep(self, mark: str, fossils: list[str], named: set[str], present: set[str]) -> None:
        """Phase 2 of one mark: named fossils go back to chunks/, the others are deleted."""
        kept = False
        for key in fossils:
            rset, cid = parse_chunk_key(key)  # type: ignore[misc]
            try:
                if cid in named:
                    if chunk_key(rset, cid) not in present and not self.dry_run:
                        with contextlib.suppress(ObjectNotFound):  # another sweep was first
                            move_chunk(self.storage, key, chunk_key(rset, cid))
                    self.result.resurrected += 1
                else:
                    self.result.deleted += 1
                if not self.dry_run:
                    self.storage.delete(key)
            except ObjectLocked as exc:
                kept = True
                self.result.locked.append(key)
                self.log.info("kept %s: %s", key, exc)
        if not kept and not self.dry_run:
            self.storage.delete(f"{GC}/{mark}.json")
        self.result.swept.append(mark)

    def mark(self, mark: str, chunks: dict[str, str], named: set[str], budget: float) -> None:
        """Phase 1: set aside the chunks no manifest names, within the time budget."""
        started = boottime()
        for key, cid in chunks.items():
            if cid in named:
                continue
            if boottime() - started > budget:
                self.result.unfinished = True
                self.log.warning(
                    "chunk collection %s stopped after %.0f s (its time budget): the next "
                    "prune goes on",
                    mark,
                    budget,
                )
                return
            if until := self.storage.locked_until(key):
                self.result.locked.append(key)
                self.log.info("kept %s: under object lock until %s", key, f"{until:%Y-%m-%d}")
                continue
            rset, _ = parse_chunk_key(key)  # type: ignore[misc]
            if not self.dry_run:
                with contextlib.suppress(ObjectNotFound):  # a concurrent mark moved it
                    move_chunk(self.storage, key, fossil_key(mark, rset, cid))
            self.result.set_aside += 1


def collect_chunks(storage: BackupStorage, *, dry_run: bool = False) -> ChunkCollection:
    """One garbage collection of the storage's chunks: sweep the marks past the grace
    period, then mark the chunks no manifest names (see the module docstring)."""
    collector = _Collector(storage, dry_run)
    result = collector.result
    grace = timedelta(hours=storage.dedup_grace_hours)
    budget = (storage.dedup_grace_hours - storage.dedup_fence_hours) * 3600 / 2
    mark = _mark_name()
    mark_file = f"{GC}/{mark}.json"
    if not dry_run:  # written first: its store time is this collection's "now"
        storage.put_bytes(mark_file, json.dumps({"version": 1, "mark": mark}).encode())
    listing = storage.list_modified("")
    if dry_run:
        now = max(listing.values(), default=datetime.now(UTC))
    elif mark_file in listing:
        now = listing[mark_file]
    else:
        raise StorageError(
            f"the storage did not list {mark_file} just written: its listing lags behind; "
            "chunk collection skipped, nothing was moved"
        )
    manifests = [k for k in listing if parse_manifest_key(k) is not None]
    named = named_chunks(storage, manifests)
    chunks: dict[str, str] = {}
    fossils: dict[str, list[str]] = {}
    for key in listing:
        parsed = parse_chunk_key(key)
        if parsed is None:
            continue
        if key.startswith(CHUNKS + "/"):
            chunks[key] = parsed[1]
        else:
            fossils.setdefault(key.split("/")[2], []).append(key)
    result.chunks, result.named, result.mark = len(chunks), len(named), mark
    for key, stamp in sorted(listing.items()):
        other = key.removeprefix(GC + "/").removesuffix(".json")
        if not key.startswith(GC + "/") or other == mark or "/" in other:
            continue
        if now - stamp >= grace:
            collector.sweep(other, fossils.get(other, []), named, set(chunks))
        else:
            result.waiting.append(other)
    collector.mark(mark, chunks, named, budget)
    if not dry_run and result.set_aside == 0:
        storage.delete(mark_file)  # nothing set aside: no sweep needed
        result.mark = None
    collector.log.info(
        "chunks of %s: %d stored, %d named by backups; %s %d unreferenced; swept %d "
        "collection(s) (%d chunk(s) deleted, %d named again and kept); %d waiting for the "
        "grace period; %d kept under object lock",
        storage.describe(),
        result.chunks,
        result.named,
        "would set aside" if dry_run else "set aside",
        result.set_aside,
        len(result.swept),
        result.deleted,
        result.resurrected,
        len(result.waiting),
        len(result.locked),
    )
    return result


collect_chunks_task = task(
    collect_chunks, name="collect-chunks", task_run_name="collect-chunks", cache_policy=NONE
)
