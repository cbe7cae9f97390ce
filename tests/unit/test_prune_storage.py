"""prune() on a real directory: it touches only the series it is given, and is idempotent."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from prefect_dbbackup.blocks.local_storage import LocalBackupStorage
from prefect_dbbackup.blocks.retention import RetentionPolicy
from prefect_dbbackup.tasks.layout import (
    GLOBALS_SEGMENT,
    MANIFEST_NAME,
    VERIFIED_NAME,
    backup_key,
    new_backup_id,
)
from prefect_dbbackup.tasks.prune import backup_time, prune

from tests.helpers import plant_manifest, signing_fields

NOW = datetime(2026, 11, 27, 12, tzinfo=UTC)
SERIES = [("srv", "shop"), ("srv", "other"), ("srv", GLOBALS_SEGMENT), ("srv2", "shop")]

backups = st.lists(
    st.tuples(
        st.sampled_from(SERIES),
        st.integers(min_value=0, max_value=400 * 24),  # hours before NOW
        st.booleans(),  # complete
    ),
    max_size=40,
)
policies = st.builds(
    RetentionPolicy,
    keep_last=st.none() | st.integers(0, 3),
    keep_daily=st.none() | st.integers(0, 7),
    keep_weekly=st.none() | st.integers(0, 4),
    keep_monthly=st.none() | st.integers(0, 6),
    timezone=st.sampled_from(["UTC", "Europe/Berlin", "America/New_York"]),
)


def _key(server: str, database: str, backup_id: str, name: str) -> str:
    if database == GLOBALS_SEGMENT:
        return f"{server}/{GLOBALS_SEGMENT}/{backup_id}/{name}"
    return backup_key(server, database, backup_id, name)


def _store(storage: LocalBackupStorage, planted: list) -> None:
    for (server, database), hours, complete in planted:
        backup_id = new_backup_id(NOW - timedelta(hours=hours))
        storage.put_bytes(_key(server, database, backup_id, "dump.pgc.zst.age"), b"x")
        if complete:
            plant_manifest(storage, server, database, backup_id)


@settings(max_examples=40, deadline=None)
@given(backups, policies, st.sampled_from(["shop", GLOBALS_SEGMENT, None]))
def test_prune_touches_only_its_series_keeps_newest_and_is_idempotent(planted, policy, database):
    with tempfile.TemporaryDirectory() as root:
        storage = LocalBackupStorage(path=root, **signing_fields())
        _store(storage, planted)
        before = set(storage.list_keys())
        in_scope = f"srv/{database}/" if database else "srv/"

        items = prune(storage, "srv", policy, databases=[database] if database else None, now=NOW)

        after = set(storage.list_keys())
        assert {k for k in before if not k.startswith(in_scope)} <= after  # outside: untouched
        removed = {k for i in items if i.outcome == "removed" for k in i.objects}
        assert before - after == removed
        for name in {i.database for i in items}:
            complete = [i for i in items if i.database == name and i.complete]
            if complete:
                newest = max(complete, key=lambda i: (i.time, i.backup_id))
                assert newest.keep and newest.outcome == "kept"
        again = prune(storage, "srv", policy, databases=[database] if database else None, now=NOW)
        assert all(i.outcome == "kept" for i in again)
        assert set(storage.list_keys()) == after


def test_dry_run_deletes_nothing(tmp_path: Path):
    storage = LocalBackupStorage(path=str(tmp_path), **signing_fields())
    _store(storage, [(("srv", "shop"), h * 24, True) for h in range(10)])
    before = storage.list_keys()
    items = prune(storage, "srv", RetentionPolicy(keep_last=2), dry_run=True, now=NOW)
    assert [i.outcome for i in items] == ["kept"] * 2 + ["would remove"] * 8
    assert storage.list_keys() == before


def test_backup_time_is_the_id_timestamp():
    assert backup_time("20261127T031500Z-3f9a") == datetime(2026, 11, 27, 3, 15, tzinfo=UTC)


def test_only_names_dbbackup_writes_are_deleted_the_rest_is_reported(tmp_path: Path, caplog):
    storage = LocalBackupStorage(path=str(tmp_path), **signing_fields())
    _store(storage, [(("srv", "shop"), h * 24, True) for h in range(3)])
    mine = "srv/shop/20200101T000000Z-manual/my-own-copy.sql"
    beside = f"srv/shop/{new_backup_id(NOW - timedelta(days=9))}/"
    storage.put_bytes(mine, b"precious")
    for name in ("dump.pgc.zst.age", VERIFIED_NAME, "notes.txt"):  # incomplete: garbage
        storage.put_bytes(beside + name, b"x")
    (tmp_path / "srv/shop/.tmp-notes.txt.abcd1234").write_bytes(b"not ours either")

    items = {i.backup_id: i for i in prune(storage, "srv", RetentionPolicy(keep_last=1), now=NOW)}

    manual = items["20200101T000000Z-manual"]
    assert manual.keep and manual.outcome == "left alone" and manual.objects == []
    assert manual.reasons == ["not written by dbbackup"] and manual.foreign == [mine]
    old = items[beside.split("/")[2]]
    assert old.outcome == "removed" and old.foreign == [beside + "notes.txt"]
    assert len(old.objects) == 2
    left = storage.list_keys("srv/")
    assert mine in left and beside + "notes.txt" in left
    assert not any(k.startswith(beside) and not k.endswith("notes.txt") for k in left)
    assert (tmp_path / "srv/shop/.tmp-notes.txt.abcd1234").exists()
    assert "my-own-copy.sql" in caplog.text and "did not write" in caplog.text


def test_garbage_collection_removes_only_our_temp_names(tmp_path: Path):
    storage = LocalBackupStorage(path=str(tmp_path), **signing_fields())
    folder = tmp_path / "srv/shop/20261101T000000Z-0a0a"
    folder.mkdir(parents=True)
    ours = [".tmp-manifest.json.k2j_9xqa", ".tmp-dump.pgc.zst.age.0123abcd", ".tmp-ab12cd34"]
    theirs = [".tmp-my-copy.sql.0123abcd", ".tmp-", ".tmp-x", "dump.sql"]
    for name in ours + theirs:
        (folder / name).write_bytes(b"x")
    removed = storage.collect_garbage(
        "srv/", NOW + timedelta(days=3650), {MANIFEST_NAME, "dump.pgc.zst.age"}
    )
    assert sorted(removed) == sorted(f"srv/shop/20261101T000000Z-0a0a/{n}" for n in ours)
    assert sorted(p.name for p in folder.iterdir()) == sorted(theirs)


def test_what_the_run_wrote_survives_a_future_dated_backup(tmp_path: Path):
    storage = LocalBackupStorage(path=str(tmp_path), **signing_fields())
    bomb = new_backup_id(NOW + timedelta(days=365))
    storage.put_bytes(backup_key("srv", "shop", bomb, "dump.pgc.zst.age"), b"x")
    plant_manifest(storage, "srv", "shop", bomb)
    ids = []
    for day in range(4):  # four runs, one a day, each pruning with keep_last=2
        now = NOW + timedelta(days=day)
        ids.append(new_backup_id(now))
        storage.put_bytes(backup_key("srv", "shop", ids[-1], "dump.pgc.zst.age"), b"x")
        plant_manifest(storage, "srv", "shop", ids[-1])
        items = prune(storage, "srv", RetentionPolicy(keep_last=2), now=now, written=[ids[-1]])
        assert {i.backup_id for i in items if i.future_dated} == {bomb}
    assert {k.split("/")[2] for k in storage.list_keys("srv/")} == {bomb, ids[-1], ids[-2]}
