"""A storage-only attacker against real backups (local and S3): planted, rolled-back, swapped
and edited manifests are refused; the newest signed backup is what restores."""

from __future__ import annotations

import json
import re
from datetime import timedelta

from prefect_dbbackup.blocks.registry import load_storage
from prefect_dbbackup.tasks.layout import MANIFEST_NAME, SIGNATURE_NAME, backup_key, new_backup_id
from prefect_dbbackup.tasks.manifest import Manifest
from prefect_dbbackup.tasks.prune import backup_time

PLANTED, ROLLED, SWAPPED = "20991231T000000Z-0001", "20991231T000000Z-0002", "20991231T000000Z-0003"


def _backup(env, db: str) -> str:
    result = env.cli("backup", env.pg, "--database", db, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(env.cli("list", env.pg, "-d", db, "--json").stdout)[-1]["backup_id"]


def test_planted_rolled_back_and_swapped_backups_are_refused(any_env, pg_db, pg_admin, cleanup_pg):
    env = any_env
    storage = load_storage(env.storage)
    shop, other = pg_db(), pg_db()
    pg_admin.execute(shop, "CREATE TABLE t (v text); INSERT INTO t VALUES ('old');")
    pg_admin.execute(other, "CREATE TABLE t (v text); INSERT INTO t VALUES ('other');")
    old = _backup(env, shop)
    pg_admin.execute(shop, "UPDATE t SET v = 'new'")
    new = _backup(env, shop)
    _backup(env, other)
    other_id = json.loads(env.cli("list", env.pg, "-d", other, "--json").stdout)[-1]["backup_id"]
    key = lambda db, bid, name: backup_key(env.pg, db, bid, name)  # noqa: E731

    def copy(db: str, bid: str, to_id: str, manifest: bytes | None = None, sig: bool = True):
        for name in ("dump.pgc.zst.age", SIGNATURE_NAME, MANIFEST_NAME):
            if name == SIGNATURE_NAME and not sig:
                continue
            data = storage.get_bytes(key(db, bid, name))
            if name == MANIFEST_NAME and manifest is not None:
                data = manifest
            storage.put_bytes(key(shop, to_id, name), data)

    # planted: the old object under a new, later id with a consistent but unsigned manifest
    planted = Manifest.from_bytes(storage.get_bytes(key(shop, old, MANIFEST_NAME)))
    planted.backup_id = PLANTED
    copy(shop, old, PLANTED, planted.to_bytes(), sig=False)
    # roll-back: the old backup copied as it is (signature included) under a later id
    copy(shop, old, ROLLED)
    # swap: the other database's backup copied into shop's series
    copy(other, other_id, SWAPPED)

    listed = {
        b["backup_id"]: b for b in json.loads(env.cli("list", env.pg, "-d", shop, "--json").stdout)
    }
    assert {b: listed[b]["trust"] for b in (old, new, PLANTED, ROLLED, SWAPPED)} == {
        old: "signed", new: "signed", PLANTED: "unsigned", ROLLED: "invalid", SWAPPED: "invalid",
    }  # fmt: skip
    lines = {
        line.split()[1]: line for line in env.cli("list", env.pg, "-d", shop).stdout.splitlines()
    }
    # a small backup in readable units, never "0.0 MB"
    assert re.search(r" \d+(\.\d)? (B|kB) stored  signed$", lines[new]), lines[new]
    assert lines[PLANTED].endswith("UNSIGNED: there is no signature (manifest.json.sig)")
    assert f"{SWAPPED}  INVALID: it says server" in lines[SWAPPED]
    assert f"database {other!r}" in lines[SWAPPED]

    # restore of the latest restores the newest signed backup, none of the later planted ones
    latest = shop + "_latest"
    cleanup_pg.append(latest)
    result = env.cli("restore", env.pg, shop, "--into", latest)
    assert result.exit_code == 0, result.output
    assert f"backup {new}" in result.stdout
    assert pg_admin.query(latest, "SELECT v FROM t") == [("new",)]

    for backup_id, why in ((PLANTED, "unsigned"), (ROLLED, "invalid"), (SWAPPED, "invalid")):
        target = f"{shop}_{backup_id[-1]}"
        cleanup_pg.append(target)
        result = env.cli("restore", env.pg, shop, "--into", target, "--backup-id", backup_id)
        assert result.exit_code == 2, result.output
        assert f"refusing backup {backup_id} of {shop!r}" in result.stderr and why in result.stderr
        assert not pg_admin.exists(target)
    swapped = env.cli("restore", env.pg, shop, "--into", "x", "--backup-id", SWAPPED).stderr
    assert f"database {other!r}" in swapped and f"database {shop!r}" in swapped

    # verify reports the refused manifests that claim to be newer than what it checked
    result = env.cli("verify", env.pg, "-d", shop, "--storage", env.storage,
                     "--encryption", env.encryption, "--json")  # fmt: skip
    assert result.exit_code == 1, result.output
    outcomes = {(o["backup_id"], o["status"]) for o in json.loads(result.stdout)["databases"]}
    assert outcomes == {
        (new, "ok"),
        (PLANTED, "refused"),
        (ROLLED, "refused"),
        (SWAPPED, "refused"),
    }


def test_allow_unsigned_restores_a_backup_from_before_signing(env, pg_db, pg_admin, cleanup_pg):
    db = pg_db()
    pg_admin.execute(db, "CREATE TABLE t AS SELECT g AS x FROM generate_series(1, 100) g")
    backup_id = _backup(env, db)
    sig = env.storage_path / backup_key(env.pg, db, backup_id, SIGNATURE_NAME)
    manifest = sig.with_name(MANIFEST_NAME)
    target = db + "_restored"
    cleanup_pg.append(target)

    # an edited create_options (a SQL_ASCII downgrade) no longer matches its signature
    signed = manifest.read_bytes()
    edited = json.loads(signed)
    edited["create_options"]["encoding"] = "SQL_ASCII"
    manifest.write_text(json.dumps(edited, indent=2))
    for extra in ([], ["--allow-unsigned"]):  # a bad signature is never "unsigned"
        result = env.cli("restore", env.pg, db, "--into", target, "--backup-id", backup_id, *extra)
        assert result.exit_code == 2, result.output
        assert "invalid: the signature does not match" in result.stderr
        assert not pg_admin.exists(target)

    # a backup taken before manifests were signed: refused unless named with --allow-unsigned
    manifest.write_bytes(signed)
    sig.unlink()
    refused = env.cli("restore", env.pg, db, "--into", target, "--backup-id", backup_id)
    assert refused.exit_code == 2, refused.output
    assert f"`dbbackup list {env.pg} -d {db}`" in refused.stderr
    assert f"--backup-id {backup_id} --allow-unsigned" in refused.stderr
    assert "with a valid signature" in env.cli("restore", env.pg, db, "--into", target).stderr
    result = env.cli(
        "restore", env.pg, db, "--into", target, "--backup-id", backup_id, "--allow-unsigned"
    )
    assert result.exit_code == 0, result.output
    assert pg_admin.table_fingerprints(target) == pg_admin.table_fingerprints(db)


def test_allow_unsigned_never_picks_the_latest_a_planted_newer_unsigned_backup(
    env, pg_db, pg_admin, cleanup_pg
):
    storage = load_storage(env.storage)
    db, evil = pg_db(), pg_db()
    pg_admin.execute(db, "CREATE TABLE t (v text); INSERT INTO t VALUES ('real');")
    pg_admin.execute(evil, "CREATE TABLE t (v text); INSERT INTO t VALUES ('planted');")
    real = _backup(env, db)
    source = _backup(env, evil)
    # planted: another database's backup, unsigned, under an id a minute after the real one
    planted = Manifest.from_bytes(
        storage.get_bytes(backup_key(env.pg, evil, source, MANIFEST_NAME))
    )
    planted.database = db
    planted.backup_id = new_backup_id(backup_time(real) + timedelta(minutes=1))
    data = storage.get_bytes(backup_key(env.pg, evil, source, "dump.pgc.zst.age"))
    storage.put_bytes(backup_key(env.pg, db, planted.backup_id, "dump.pgc.zst.age"), data)
    storage.put_bytes(backup_key(env.pg, db, planted.backup_id, MANIFEST_NAME), planted.to_bytes())
    target = db + "_restored"
    cleanup_pg.append(target)

    refused = env.cli("restore", env.pg, db, "--into", target, "--allow-unsigned")
    assert refused.exit_code == 3, refused.output
    assert "--allow-unsigned needs --backup-id" in refused.stderr
    assert f"`dbbackup list {env.pg} -d {db}`" in refused.stderr
    assert not pg_admin.exists(target)  # the planted backup was not restored
    users = env.cli("restore-users", env.pg, "--dry-run", "--allow-unsigned",
                    "--storage", env.storage, "--encryption", env.encryption)  # fmt: skip
    assert users.exit_code == 3 and "--allow-unsigned needs --backup-id" in users.stderr

    by_id = env.cli("restore", env.pg, db, "--into", target, "--backup-id", planted.backup_id)
    assert by_id.exit_code == 2 and "--allow-unsigned" in by_id.stderr
    assert "--backup-id ID --allow-unsigned" not in by_id.stderr  # names the id, not a bare flag
    assert f"`dbbackup list {env.pg} -d {db}`" in by_id.stderr
    assert not pg_admin.exists(target)

    latest = env.cli("restore", env.pg, db, "--into", target)
    assert latest.exit_code == 0, latest.output
    assert f"backup {real}" in latest.stdout
    assert pg_admin.query(target, "SELECT v FROM t") == [("real",)]


def test_a_planted_huge_manifest_is_refused_without_being_read_whole(
    env, pg_db, pg_admin, cleanup_pg
):
    """A storage-side attacker plants a manifest far larger than any dbbackup writes: `list`
    shows it unreadable (reading stops at the limit), and the real backup still restores."""
    from prefect_dbbackup.blocks.storage import SMALL_OBJECT_LIMIT

    storage = load_storage(env.storage)
    db = pg_db()
    pg_admin.execute(db, "CREATE TABLE t (v text); INSERT INTO t VALUES ('real');")
    real = _backup(env, db)
    storage.put_bytes(backup_key(env.pg, db, PLANTED, MANIFEST_NAME), bytes(SMALL_OBJECT_LIMIT + 1))

    listed = {
        b["backup_id"]: b for b in json.loads(env.cli("list", env.pg, "-d", db, "--json").stdout)
    }
    assert listed[real]["trust"] == "signed"
    assert listed[PLANTED]["trust"] == "unreadable"
    assert "not written by dbbackup" in listed[PLANTED]["problem"]

    target = db + "_latest"
    cleanup_pg.append(target)
    result = env.cli("restore", env.pg, db, "--into", target)
    assert result.exit_code == 0, result.output
    assert pg_admin.query(target, "SELECT v FROM t") == [("real",)]
