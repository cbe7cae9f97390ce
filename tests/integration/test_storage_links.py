"""Links planted in a local storage by someone who can write it (issue #23, case 7): dbbackup
never follows one, so no prune copies a key file into the storage, and no list, restore
error or log shows a byte of what a planted link points at."""

from __future__ import annotations

import json
import time
from pathlib import Path

from prefect_dbbackup.blocks.registry import load_storage
from prefect_dbbackup.blocks.storage_keys import new_dedup_key
from prefect_dbbackup.tasks.catalog import list_backups
from prefect_dbbackup.tasks.dedup.layout import CHUNKS, parse_chunk_key
from prefect_dbbackup.tasks.layout import MANIFEST_NAME, backup_key

PLANTED = "20991231T000000Z-0001"
TABLE = "CREATE TABLE t (v text); INSERT INTO t SELECT md5(g::text) FROM generate_series(1, 500) g;"


def _regular_files(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.is_symlink()}


def test_prune_never_sets_aside_a_chunk_named_link_to_the_signing_key(
    env, pg_db, pg_admin, cleanup_pg, tmp_path
):
    env = env.with_dedup(dedup_grace_hours=3 / 3600, dedup_fence_hours=1 / 3600)
    key_file = tmp_path / "signing.key"
    key_file.write_text(env.signing_key)
    db = pg_db()
    pg_admin.execute(db, TABLE)
    assert env.cli("backup", env.pg, "--database", db).exit_code == 0
    storage = load_storage(env.storage)
    rset, cid = parse_chunk_key(storage.list_keys(CHUNKS)[0])
    fake = "f" * 64 if cid != "f" * 64 else "e" * 64
    link = env.storage_path / CHUNKS / rset / fake[:2] / fake
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(key_file)

    secret = env.signing_key.encode()
    for _ in range(2):  # the mark, then the sweep past the grace period
        result = env.cli("prune", env.pg)
        assert result.exit_code == 0, result.output
        assert not [p for p, data in _regular_files(env.storage_path).items() if secret in data]
        assert link.is_symlink() and link.readlink() == key_file
        time.sleep(3.5)
    assert key_file.read_text() == env.signing_key
    target = f"{db}_r"
    cleanup_pg.append(target)
    assert env.cli("restore", env.pg, db, "--into", target).exit_code == 0
    assert pg_admin.table_fingerprints(target) == pg_admin.table_fingerprints(db)


def test_manifest_links_to_key_files_show_nothing_of_them(
    env, pg_db, pg_admin, cleanup_pg, tmp_path, caplog
):
    """A manifest.json linked to the identity or the dedup key, and a server directory
    linked out of the storage: list, restore and the run logs never show their bytes."""
    db = pg_db()
    pg_admin.execute(db, TABLE)
    assert env.cli("backup", env.pg, "--database", db).exit_code == 0
    dedup_key = tmp_path / "dedup.key"
    dedup_key.write_text(new_dedup_key() + "\n")
    planted = {PLANTED: env.identity_file, PLANTED[:-1] + "2": dedup_key}
    for backup_id, target in planted.items():
        path = env.storage_path / backup_key(env.pg, db, backup_id, MANIFEST_NAME)
        path.parent.mkdir(parents=True)
        path.symlink_to(target)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / db).symlink_to(env.storage_path / env.pg / db)  # the real backups, seen twice
    (env.storage_path / "elsewhere").symlink_to(outside)

    outputs = [env.cli("list", env.pg, "-d", db, "--json"), env.cli("list", "elsewhere")]
    listed = json.loads(outputs[0].stdout)
    assert [b["backup_id"] for b in listed] and not set(planted) & {b["backup_id"] for b in listed}
    assert not list_backups(load_storage(env.storage), "elsewhere", db)
    for backup_id in planted:
        result = env.cli("restore", env.pg, db, "--into", f"{db}_x", "--backup-id", backup_id)
        assert result.exit_code != 0
        outputs.append(result)
    target = f"{db}_r"
    cleanup_pg.append(target)
    outputs.append(env.cli("restore", env.pg, db, "--into", target))
    assert outputs[-1].exit_code == 0, outputs[-1].output
    secrets = [
        env.identity_file.read_text().split("AGE-SECRET-KEY-")[1].strip()[-20:],
        dedup_key.read_text().strip()[-20:],
    ]
    seen = "".join(o.output for o in outputs) + caplog.text
    assert not [s for s in secrets if s in seen]
    assert all((env.storage_path / backup_key(env.pg, db, b, MANIFEST_NAME)).is_symlink()
               for b in planted)  # fmt: skip
