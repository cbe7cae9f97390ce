"""Hostile and foreign state planted in the storage, as by someone who can write it.

Each planter returns a note for the step list, and records in the harness what must
survive (files dbbackup did not write, link targets) or what the plant destroyed (a
backup whose chunk was truncated is no longer expected to restore).
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.invariants.harness import Harness


def _newest_signed(listed: dict[str, str]) -> str | None:
    from tests.invariants.harness import backup_time

    signed = [i for i, t in listed.items() if t == "signed"]
    return max(signed, key=backup_time) if signed else None


def _backup_prefix(h: Harness, engine: str, backup_id: str) -> str:
    return f"{h.world.servers[engine]}/{h.world.db}/{backup_id}/"


def _put_foreign(h: Harness, key: str, data: bytes) -> None:
    """Write a file dbbackup did not write; it must survive every step (I4)."""
    world = h.world
    if world.storage_kind == "local":
        path = world.storage_path / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        h.must_survive[str(path)] = hashlib.sha256(data).hexdigest()
    else:
        world.load_storage().put_bytes(key, data)
        h.foreign_keys[key] = hashlib.sha256(data).hexdigest()


def foreign_file(h: Harness, engine: str, listed: dict[str, str]) -> str:
    newest = _newest_signed(listed)
    data = f"-- operator's own copy {secrets.token_hex(8)}\n".encode()
    key = (
        _backup_prefix(h, engine, newest) + "my-own-copy.sql"
        if newest and h.rng.random() < 0.7
        else f"ops-notes-{secrets.token_hex(3)}.txt"
    )
    _put_foreign(h, key, data)
    return f"wrote {key}"


def foreign_dir(h: Harness, engine: str, listed: dict[str, str]) -> str:
    key = _backup_prefix(h, engine, "20200101T000000Z-manual") + "notes.txt"
    _put_foreign(h, key, b"kept by hand\n")
    return f"wrote {key}"


def copy_backup(h: Harness, engine: str, listed: dict[str, str]) -> str:
    """A copy of the newest backup's manifest (and signature, objects) under a newer id."""
    from prefect_dbbackup.tasks.layout import new_backup_id

    from tests.invariants.harness import backup_time

    source = _newest_signed(listed)
    if source is None:
        return "nothing to copy"
    planted = new_backup_id(backup_time(source) + timedelta(minutes=1))
    storage = h.world.load_storage()
    prefix = _backup_prefix(h, engine, source)
    for key in storage.list_keys(prefix):
        if key.endswith("/verified.json"):
            continue
        storage.put_bytes(key.replace(source, planted, 1), storage.get_bytes(key, 1 << 30))
    return f"copied {source} to {planted}"


def verified_copy(h: Harness, engine: str, listed: dict[str, str]) -> str:
    """Case 2: the verified.json of a verified backup copied into the newest one's folder."""
    storage = h.world.load_storage()
    newest = _newest_signed(listed)
    verified = [k for k in h.alive(engine) if k.verified and k.backup_id != newest]
    if newest is None or not verified:
        return "no verified backup to copy from"
    source = h.rng.choice(verified).backup_id
    key = _backup_prefix(h, engine, source) + "verified.json"
    if key not in storage.list_keys(_backup_prefix(h, engine, source)):
        return f"{source} has no verified.json"
    storage.put_bytes(_backup_prefix(h, engine, newest) + "verified.json", storage.get_bytes(key))
    return f"copied verified.json of {source} into {newest}"


def truncate_chunk(h: Harness, engine: str, listed: dict[str, str]) -> str:
    """Case 6: one chunk of the newest backup truncated to 0 bytes."""
    from prefect_dbbackup.tasks.dedup.layout import CHUNKS, parse_chunk_key

    newest = _newest_signed(listed)
    manifest = h.world.manifest(engine, newest) if newest else None
    if manifest is None or manifest.chunks is None:
        return "no chunked backup"
    cid = h.rng.choice(manifest.chunks.order)[0]
    storage = h.world.load_storage()
    keys = [
        k for k in storage.list_keys(CHUNKS + "/") if (parse_chunk_key(k) or ("", ""))[1] == cid
    ]
    if not keys:
        return f"chunk {cid[:12]} not stored"
    storage.put_bytes(keys[0], b"")
    for known in h.alive(engine) + h.alive("my" if engine == "pg" else "pg"):
        m = h.world.manifest(known.engine, known.backup_id)
        if m is not None and m.chunks is not None and cid in {c for c, _ in m.chunks.order}:
            known.damaged = f"truncated at step {len(h.done)}"
    return f"truncated chunk {cid[:12]} of {newest}"


def chunk_symlink(h: Harness, engine: str, listed: dict[str, str]) -> str:
    """Case 7: a link named like a chunk, pointing at the worker's signing key file."""
    from prefect_dbbackup.tasks.dedup.layout import CHUNKS, parse_chunk_key

    storage = h.world.load_storage()
    chunks = [k for k in storage.list_keys(CHUNKS + "/") if parse_chunk_key(k)]
    if not chunks:
        return "no chunk to imitate"
    rset = parse_chunk_key(chunks[0])[0]
    cid = secrets.token_hex(32)
    link = h.world.storage_path / CHUNKS / rset / cid[:2] / cid
    link.parent.mkdir(parents=True, exist_ok=True)
    target = str(h.world.keys.signing_key_file)
    os.symlink(target, link)
    h.links[str(link)] = target
    return f"linked {link.relative_to(h.world.storage_path)} -> signing key"


def manifest_symlink(h: Harness, engine: str, listed: dict[str, str]) -> str:
    """Case 7: a backup whose manifest.json is a link to the identity or dedup key file."""
    from prefect_dbbackup.tasks.layout import new_backup_id

    from tests.invariants.harness import backup_time

    newest = _newest_signed(listed)
    if newest is None:
        return "no backup"
    planted = new_backup_id(backup_time(newest) + timedelta(minutes=2))
    folder = h.world.storage_path / _backup_prefix(h, engine, planted)
    folder.mkdir(parents=True, exist_ok=True)
    target = str(h.rng.choice([h.world.keys.identity_file, h.world.keys.dedup_key_file]))
    os.symlink(target, folder / "manifest.json")
    h.links[str(folder / "manifest.json")] = target
    return f"linked {planted}/manifest.json -> {Path(target).name}"


PLANTERS: dict[str, Callable[[Harness, str, dict[str, str]], str]] = {
    "foreign-file": foreign_file,
    "foreign-dir": foreign_dir,
    "copy-backup": copy_backup,
    "verified-copy": verified_copy,
    "truncate-chunk": truncate_chunk,
    "chunk-symlink": chunk_symlink,
    "manifest-symlink": manifest_symlink,
}
