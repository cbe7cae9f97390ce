"""docs/dedup.md ("Object lock") and docs/dedup-design.md (rule 3): chunk garbage collection
never removes an object-locked chunk. It is kept and counted in the prune artifact ("kept
under object lock"), and collected by a later prune once its lock has expired.

Against the test S3 server (SeaweedFS), which enforces object lock: a bucket created with
object lock, retention set on each PUT, DeleteObject of a locked version refused. The
block locks for a day (its least); a lock is made to expire by shortening it with the
GOVERNANCE bypass, as an administrator can.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from prefect_dbbackup.blocks.registry import load_storage
from prefect_dbbackup.flows.artifacts import artifact_key
from prefect_dbbackup.tasks.catalog import list_backups
from prefect_dbbackup.tasks.dedup.gc import collect_chunks
from prefect_dbbackup.tasks.dedup.layout import CHUNKS, FOSSILS, GC, parse_chunk_key
from prefect_dbbackup.tasks.layout import MANIFEST_NAME, SIGNATURE_NAME, backup_key

from tests.helpers import newest_artifact
from tests.integration.cli_process import wait_for


def _ids(storage, area: str) -> dict[str, str]:  # noqa: ANN001
    """chunk id -> key of the chunks stored under area."""
    return {parse_chunk_key(k)[1]: k for k in storage.list_keys(area) if parse_chunk_key(k)}


def _versions(client, bucket: str, full: str) -> list[str]:  # noqa: ANN001
    listing = client.list_object_versions(Bucket=bucket, Prefix=full)
    found = listing.get("Versions", []) + listing.get("DeleteMarkers", [])
    return [v["VersionId"] for v in found if v["Key"] == full]


def _remove_locked_backup(env, client, manifest) -> None:  # noqa: ANN001
    """What retention would do to a backup, past its manifest's lock: an administrator's
    delete with the GOVERNANCE bypass."""
    for name in (MANIFEST_NAME, SIGNATURE_NAME):
        key = backup_key(manifest.server, manifest.database, manifest.backup_id, name)
        full = env.s3_prefix + key
        for version in _versions(client, env.bucket, full):
            client.delete_object(
                Bucket=env.bucket, Key=full, VersionId=version, BypassGovernanceRetention=True
            )


def _expire_locks(env, client, storage, keys: list[str]) -> None:  # noqa: ANN001
    """Shorten the lock of every version of keys to a second from now, and wait until
    dbbackup sees none of them locked."""
    until = datetime.now(UTC) + timedelta(seconds=1)
    for key in keys:
        full = env.s3_prefix + key
        for version in _versions(client, env.bucket, full):
            client.put_object_retention(
                Bucket=env.bucket, Key=full, VersionId=version, BypassGovernanceRetention=True,
                Retention={"Mode": "GOVERNANCE", "RetainUntilDate": until},
            )  # fmt: skip
    wait_for(lambda: not any(storage.locked_until(k) for k in keys), 30, "the locks to expire", 0.2)


def _chunk_line(server: str) -> str:
    """The chunks line of the newest prune artifact of server."""
    data = newest_artifact(artifact_key("prune", server))
    (line,) = [line for line in data.splitlines() if line.startswith("**Chunks:**")]
    return line


def test_locked_chunks_are_kept_then_collected_once_their_lock_expired(
    env, s3_server, pg_db, pg_admin
):
    env = env.with_dedup(
        s3_server, object_lock=True, object_lock_mode="GOVERNANCE", object_lock_days=1,
        dedup_grace_hours=2 / 3600, dedup_fence_hours=1 / 3600,
    )  # fmt: skip
    x, y = pg_db(), pg_db()
    for db in (x, y):
        pg_admin.execute(
            db, f"CREATE TABLE t AS SELECT g, md5('{db}' || g) AS v FROM generate_series(1, 3000) g"
        )
        assert env.cli("backup", env.pg, "--database", db).exit_code == 0
    storage = load_storage(env.storage)
    (mx,), (my,) = list_backups(storage, env.pg, x), list_backups(storage, env.pg, y)
    of_y = {c for c, _ in my.chunks.order}
    only_x = {c for c, _ in mx.chunks.order} - of_y
    assert only_x
    client = s3_server.client()
    _remove_locked_backup(env, client, mx)

    # under lock: not moved, counted in the artifact
    assert env.cli("prune", env.pg).exit_code == 0
    line = _chunk_line(env.pg)
    assert "0 unreferenced set aside" in line and f"{len(only_x)} kept under object lock" in line
    assert only_x | of_y == set(_ids(storage, CHUNKS)) and not _ids(storage, FOSSILS)
    # its mark file, locked too, stays: an empty collection, swept (of nothing) later
    assert all(storage.locked_until(k) for k in storage.list_keys(GC))

    # its lock expired: the next prune sets it aside, the copy in fossils/ locked anew
    _expire_locks(env, client, storage, [_ids(storage, CHUNKS)[c] for c in only_x])
    marked = collect_chunks(storage)
    assert marked.set_aside == len(only_x) and not marked.locked
    fossils = _ids(storage, FOSSILS)
    assert set(fossils) == only_x and set(_ids(storage, CHUNKS)) == of_y
    assert all(storage.locked_until(k) for k in fossils.values())

    # past the grace: the sweep cannot delete the locked fossils, keeps them and the mark
    time.sleep(2.5)  # the grace is measured by the store's clock, in whole seconds
    kept = collect_chunks(storage)
    assert marked.mark in kept.swept and kept.deleted == 0
    assert set(kept.locked) == set(fossils.values())
    assert set(_ids(storage, FOSSILS)) == only_x and storage.list_keys(GC)

    # their lock expired (and the mark files'): the next sweep deletes them
    _expire_locks(env, client, storage, [*fossils.values(), *storage.list_keys(GC)])
    swept = collect_chunks(storage)
    assert marked.mark in swept.swept and not swept.locked
    assert swept.deleted == len(only_x)
    assert not _ids(storage, FOSSILS) and f"{GC}/{marked.mark}.json" not in storage.list_keys(GC)
    assert set(_ids(storage, CHUNKS)) == of_y  # (every prune leaves its locked mark file)
