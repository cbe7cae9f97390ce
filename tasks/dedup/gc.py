"""Garbage collection of chunks: after retention removed manifests, the chunks no backup
names any more go, in two phases and without a lock (docs/dedup.md, "Garbage collection").

- Mark: write `_dedup/gc/{mark}.json` (its store time is the mark's time; it records the
  marker's wall clock and boottime), list the storage, read every manifest, and move each
  chunk that no manifest names to `_dedup/fossils/{mark}/`. Readers still find it there.
  After each write the marker checks its time budget and its mark file, and undoes a move
  that came too late (frozen past the grace, or its mark already swept).
- Sweep (a later prune, once the mark is dedup_grace_hours old by every clock at hand):
  read every manifest again; a fossil one of them names is copied back to chunks/, the
  others are deleted. Only sweeps delete chunk data. Fossils whose mark file is gone go
  back to chunks/.
Grace and fence are the storage's own (tasks/dedup/layout.gc_parameters). A backup that
relied on a chunk writes its manifest within the fence or checks its chunks again
(tasks/dedup/writer.ChunkWriter.fence), and checks them once more after its manifest; the grace
exceeds fence plus the mark's own time budget, so a sweep always sees the manifest of
every backup relying on a fossil.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from prefect import task
from prefect.cache_policies import NONE
from prefect_dbbackup.blocks.errors import DiskFull, ObjectLocked, StorageError
from prefect_dbbackup.blocks.storage import BackupStorage, ObjectNotFound
from prefect_dbbackup.tasks.catalog import read_each
from prefect_dbbackup.tasks.dedup.layout import (
    CHUNKS,
    GC,
    KEYS,
    MAX_STORED,
    boot_id,
    boottime,
    chunk_key,
    fossil_key,
    gc_parameters,
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
    orphans: int = 0  # fossils of collections already swept, put back to chunks/
    unfinished: bool = False  # the mark stopped early (time budget, full): the next prune goes on


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

    return {
        cid for found in read_each(storage, ids, manifest_keys, "gc-manifests") for cid in found
    }


def move_chunk(storage: BackupStorage, source: str, target: str) -> None:
    """Copy a stored chunk, then delete the source (every store accepts this; a kill in
    between leaves two copies, never none)."""
    storage.put_bytes(target, storage.get_bytes(source, MAX_STORED))
    storage.delete(source)


def _mark_name() -> str:
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"


def _mark_record(mark: str) -> bytes:
    """The mark file: the marker's clocks, so a sweep can tell a clock step (_Collector.age)."""
    record = {
        "version": 2,
        "mark": mark,
        "wall": datetime.now(UTC).isoformat(),
        "boottime": boottime(),
        "boot": boot_id(),
    }
    return json.dumps(record).encode()


class _Collector:
    def __init__(self, storage: BackupStorage, dry_run: bool, grace: timedelta) -> None:
        self.storage, self.dry_run, self.grace = storage, dry_run, grace
        self.result = ChunkCollection()
        self.log = run_logger()

    def age(self, mark: str, stamp: datetime, now: datetime) -> timedelta:
        """How old a mark is: the least of what every clock at hand says. The storage's
        clock (store times), this worker's wall clock against the marker's, and on the
        marker's own boot the boottime, which no clock step moves. A step of one clock
        cannot make a mark look older than it is; a planted mark file can only delay."""
        ages = {"the storage's clock": now - stamp}
        try:
            record = json.loads(self.storage.get_bytes(f"{GC}/{mark}.json"))
        except (ObjectNotFound, ValueError):
            record = None
        if isinstance(record, dict):  # a version 1 mark file has neither clock
            with contextlib.suppress(KeyError, TypeError, ValueError, OverflowError):
                wall = datetime.fromisoformat(record["wall"])
                ages["the workers' wall clocks"] = datetime.now(UTC) - wall
            with contextlib.suppress(KeyError, TypeError, ValueError, OverflowError):
                if record.get("boot") == boot_id() != "":  # "": boots unknown
                    started = float(record["boottime"])
                    ages["this machine's boottime"] = timedelta(seconds=boottime() - started)
        age = min(ages.values())
        if ages["the storage's clock"] >= self.grace > age:
            self.log.warning(
                "collection %s is past the grace period by the storage's clock (%s) but not "
                "by %s (%s): a clock stepped; its sweep waits",
                mark,
                ages["the storage's clock"],
                min(ages, key=ages.__getitem__),
                age,
            )
        return age

    def sweep(self, mark: str, fossils: list[str], named: set[str], present: set[str]) -> None:
        """Phase 2 of one mark: fossils no manifest names are deleted (first: they free
        space on a full storage), the named ones go back to chunks/."""
        kept = False
        for key in sorted(fossils, key=lambda k: parse_chunk_key(k)[1] in named):  # type: ignore[index]
            rset, cid = parse_chunk_key(key)  # type: ignore[misc]
            try:
                if cid in named:
                    if chunk_key(rset, cid) not in present and not self.dry_run:
                        with contextlib.suppress(ObjectNotFound):  # another sweep was first
                            move_chunk(self.storage, key, chunk_key(rset, cid))
                    self.result.resurrected += 1
                if not self.dry_run:
                    self.storage.delete(key)
                if cid not in named:  # counted once gone: a locked fossil is kept, not deleted
                    self.result.deleted += 1
            except ObjectLocked as exc:
                kept = True
                self.result.locked.append(key)
                self.log.info("kept %s: %s", key, exc)
        if not kept and not self.dry_run:
            delete_mark_file(self.storage, f"{GC}/{mark}.json")
        self.result.swept.append(mark)

    def restore_orphans(self, orphans: list[str], present: set[str]) -> None:
        """Fossils whose mark file is gone (a marker that resumed after its mark was swept,
        or was killed then) are never deleted unread: they go back to chunks/, and the next
        mark collects them properly."""
        for key in orphans:
            rset, cid = parse_chunk_key(key)  # type: ignore[misc]
            target = chunk_key(rset, cid)
            if not self.dry_run:
                with contextlib.suppress(ObjectNotFound):  # moved back by another prune
                    if target in present:
                        self.storage.delete(key)  # a copy is in chunks/
                    else:
                        move_chunk(self.storage, key, target)
            self.result.orphans += 1
        if orphans:
            self.log.warning(
                "%d chunk(s) set aside by collections already swept: %s to chunks/",
                len(orphans),
                "would put them back" if self.dry_run else "put back",
            )

    def set_aside(self, key: str, fossil: str, in_time: Callable[[], bool]) -> bool:
        """Move one chunk to its fossil while the mark is in time (checked after each
        write: a marker frozen past the grace in between undoes its move); False: not
        moved."""
        blob = self.storage.get_bytes(key, MAX_STORED)
        self.storage.put_bytes(fossil, blob)
        if not in_time():
            self.storage.delete(fossil)
            return False
        self.storage.delete(key)
        if not in_time():
            self.storage.put_bytes(key, blob)  # back from memory: the fossil may be swept
            self.storage.delete(fossil)
            return False
        return True

    def mark(self, mark: str, chunks: dict[str, str], named: set[str], budget: float) -> None:
        """Phase 1: set aside the chunks no manifest names, within the time budget and
        while the mark file is there (a sweep of this mark deletes it)."""
        started = boottime()
        mark_file = f"{GC}/{mark}.json"

        def in_time() -> bool:
            return boottime() - started <= budget and self.storage.exists(mark_file)

        for key, cid in chunks.items():
            if cid in named:
                continue
            if boottime() - started > budget:
                self._stop(mark, f"after {budget:.0f} s (its time budget)")
                return
            if until := self.storage.locked_until(key):
                self.result.locked.append(key)
                self.log.info("kept %s: under object lock until %s", key, f"{until:%Y-%m-%d}")
                continue
            rset, _ = parse_chunk_key(key)  # type: ignore[misc]
            if not self.dry_run:
                try:
                    if not self.set_aside(key, fossil_key(mark, rset, cid), in_time):
                        self._stop(mark, "late: past its time budget or already swept")
                        return
                except ObjectNotFound:  # a concurrent mark moved it
                    continue
            self.result.set_aside += 1

    def _stop(self, mark: str, why: str) -> None:
        self.result.unfinished = True
        self.log.warning("chunk collection %s stopped %s: the next prune goes on", mark, why)


def delete_mark_file(storage: BackupStorage, key: str) -> None:
    """Delete a mark file; one under object lock stays until its lock expires (a later
    prune finds the mark with nothing set aside, sweeps nothing and tries again)."""
    try:
        storage.delete(key)
    except ObjectLocked as exc:
        run_logger().info("kept %s: %s", key, exc)


def _start_mark(storage: BackupStorage, mark_file: str, mark: str) -> bool:
    """Write the mark file (its store time is this collection's "now"); False when the
    storage is full: then this prune only sweeps, which frees space."""
    try:
        storage.put_bytes(mark_file, _mark_record(mark))
    except DiskFull as exc:
        run_logger().warning(
            "%s: this prune only sweeps earlier collections (that frees space) and sets "
            "nothing aside; run prune again once there is room",
            exc,
        )
        return False
    return True


def _now(listing: dict[str, datetime], mark_file: str | None) -> datetime:
    """The storage's "now": the store time of the mark file just written; without one, the
    newest store time listed (earlier than the real now, so no mark looks older)."""
    if mark_file is None:
        return max(listing.values(), default=datetime.min.replace(tzinfo=UTC))
    if mark_file not in listing:
        raise StorageError(
            f"the storage did not list {mark_file} just written: its listing lags behind; "
            "chunk collection skipped, nothing was moved"
        )
    return listing[mark_file]


def collect_chunks(storage: BackupStorage, *, dry_run: bool = False) -> ChunkCollection:
    """One garbage collection of the storage's chunks: sweep the marks past the grace
    period, put back orphaned fossils, then mark the chunks no manifest names (see the
    module docstring)."""
    params = gc_parameters(storage, write=not dry_run)
    collector = _Collector(storage, dry_run, timedelta(hours=params.grace_hours))
    result = collector.result
    mark = _mark_name()
    mark_file: str | None = f"{GC}/{mark}.json"
    if dry_run or not _start_mark(storage, mark_file, mark):
        mark_file = None
    listing = storage.list_modified("")
    now = _now(listing, mark_file)
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
    marks = set()
    for key, stamp in sorted(listing.items()):
        other = key.removeprefix(GC + "/").removesuffix(".json")
        if not key.startswith(GC + "/") or "/" in other:
            continue
        marks.add(other)
        if other == mark:
            continue
        if collector.age(other, stamp, now) >= collector.grace:
            collector.sweep(other, fossils.get(other, []), named, set(chunks))
        else:
            result.waiting.append(other)
    if mark_file is None and not dry_run:
        result.mark, result.unfinished = None, True
    else:
        orphans = [k for m, keys in fossils.items() if m not in marks for k in keys]
        collector.restore_orphans(orphans, set(chunks))
        collector.mark(mark, chunks, named, params.budget_seconds)
    if mark_file is not None and result.set_aside == 0:
        delete_mark_file(storage, mark_file)  # nothing set aside: no sweep needed
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
