"""Manifest signatures and the trust rules of the catalog, on a real directory (no Prefect API)."""

from __future__ import annotations

import base64
import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prefect_dbbackup.blocks import signing
from prefect_dbbackup.blocks.errors import BackupNotFound, ConfigError, IntegrityError
from prefect_dbbackup.blocks.local_storage import LocalBackupStorage
from prefect_dbbackup.blocks.retention import RetentionPolicy
from prefect_dbbackup.tasks import catalog
from prefect_dbbackup.tasks.catalog import (
    find_backup,
    list_backups,
    manifest_trust,
    publish_manifest,
    read_manifest,
    scan_backups,
)
from prefect_dbbackup.tasks.layout import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    VERIFIED_NAME,
    VERIFIED_SIGNATURE_NAME,
    backup_key,
    new_backup_id,
)
from prefect_dbbackup.tasks.manifest import Manifest
from prefect_dbbackup.tasks.prune import prune
from prefect_dbbackup.tasks.verify_record import record_signer, write_record

from tests.helpers import plant_manifest, signing_fields

OLD, NEW = "20261101T000000Z-aaaa", "20261120T000000Z-bbbb"


@pytest.fixture
def storage(tmp_path: Path) -> LocalBackupStorage:
    return LocalBackupStorage(path=str(tmp_path / "store"), **signing_fields())


def _path(storage: LocalBackupStorage, database: str, backup_id: str, name: str) -> Path:
    return storage.root / backup_key("srv", database, backup_id, name)


def _copy_backup(storage, database: str, backup_id: str, to_db: str, to_id: str) -> None:
    """What a storage-only attacker does: copy a backup's files to another place, unchanged."""
    for name in (MANIFEST_NAME, SIGNATURE_NAME):
        target = _path(storage, to_db, to_id, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(_path(storage, database, backup_id, name).read_bytes())


def test_signature_round_trip_rotation_and_refusals():
    old, new = (signing.load_signing_key(signing.generate_signing_key(), "k") for _ in range(2))
    data = b'{"backup_id": "x"}'
    document = signing.sign(old, data)
    keys = [signing.parse_public_key(signing.public_key_text(k.public_key())) for k in (new, old)]
    assert signing.key_id(signing.check(document, data, keys)) == signing.key_id(old.public_key())
    with pytest.raises(signing.BadSignature, match="does not match"):
        signing.check(document, data.replace(b"x", b"y"), keys)
    with pytest.raises(signing.BadSignature, match="does not match"):
        signing.check(document, data, keys[:1])  # the old key is no longer trusted
    with pytest.raises(signing.BadSignature, match="malformed"):
        signing.check(b"not json", data, keys)
    with pytest.raises(ConfigError, match="dbbackup-ed25519"):
        signing.parse_public_key("age1qqqq")
    with pytest.raises(ConfigError, match="signing-keygen"):
        signing.load_signing_key("-----BEGIN PRIVATE KEY-----\nAAAA\n", "the block's key")


def test_an_operator_can_check_a_signature_with_openssl(tmp_path: Path):
    """The hand check of docs/security.md, step by step."""
    key = signing.load_signing_key(signing.generate_signing_key(), "k")
    manifest = tmp_path / MANIFEST_NAME
    manifest.write_bytes(b'{"database": "shop"}\n')
    document = signing.sign(key, manifest.read_bytes())
    (tmp_path / "sig.bin").write_bytes(base64.b64decode(json.loads(document)["signature"]))
    public = signing.public_key_text(key.public_key()).removeprefix(signing.PUBLIC_PREFIX)
    (tmp_path / "pub.der").write_bytes(base64.b64decode(public))
    openssl = ["openssl", "pkeyutl", "-verify", "-pubin", "-keyform", "DER", "-rawin"]
    check = [*openssl, "-inkey", "pub.der", "-in", MANIFEST_NAME, "-sigfile", "sig.bin"]
    done = subprocess.run(check, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0 and "Verified Successfully" in done.stdout, done.stderr
    manifest.write_bytes(b'{"database": "shoq"}\n')
    assert subprocess.run(check, cwd=tmp_path, capture_output=True).returncode != 0


def test_a_writer_without_a_signing_key_fails_closed(tmp_path: Path):
    bare = LocalBackupStorage(path=str(tmp_path))
    with pytest.raises(ConfigError, match="refusing to write an unsigned backup"):
        bare.manifest_signer()
    other = signing_fields(signing.generate_signing_key())["manifest_verify_keys"]
    untrusted = LocalBackupStorage(
        path=str(tmp_path), **{**signing_fields(), "manifest_verify_keys": other}
    )
    with pytest.raises(ConfigError, match="not in its manifest_verify_keys"):
        untrusted.manifest_signer()


def test_only_signed_manifests_in_place_are_trusted(storage: LocalBackupStorage):
    plant_manifest(storage, "srv", "shop", OLD)
    plant_manifest(storage, "srv", "other", OLD)
    # planted: a newer unsigned manifest
    planted = Manifest.from_bytes(_path(storage, "shop", OLD, MANIFEST_NAME).read_bytes())
    planted.backup_id = "20261130T000000Z-cccc"
    storage.put_bytes(
        backup_key("srv", "shop", planted.backup_id, MANIFEST_NAME), planted.to_bytes()
    )
    # roll-back: an old backup copied, signature and all, under a newer id
    _copy_backup(storage, "shop", OLD, "shop", NEW)
    # swap: database other's backup copied into shop's series
    _copy_backup(storage, "other", OLD, "shop", "20261125T000000Z-dddd")
    # unreadable: garbage under a newer id
    storage.put_bytes(backup_key("srv", "shop", "20261129T000000Z-eeee", MANIFEST_NAME), b"{")

    trust = {e.backup_id: (e.trust, e.problem) for e in scan_backups(storage, "srv", "shop")}
    assert trust[OLD] == ("signed", None)
    assert trust[planted.backup_id][0] == "unsigned"
    assert trust[NEW][0] == "invalid" and f"backup id {OLD!r}" in trust[NEW][1]
    swapped = trust["20261125T000000Z-dddd"]
    assert swapped[0] == "invalid" and "database 'other'" in swapped[1]
    assert "database 'shop'" in swapped[1]
    assert trust["20261129T000000Z-eeee"][0] == "unreadable"

    assert find_backup(storage, "srv", "shop").backup_id == OLD  # never a planted one
    # one unreadable (or untrusted) manifest does not break the listing of the whole server
    listed = {(m.database, m.backup_id) for m in list_backups(storage, "srv")}
    assert listed == {("shop", OLD), ("other", OLD)}
    for backup_id in (planted.backup_id, NEW, "20261125T000000Z-dddd"):
        with pytest.raises(IntegrityError, match="refusing backup") as refused:
            find_backup(storage, "srv", "shop", backup_id)
        assert ("--allow-unsigned" in str(refused.value)) == (backup_id == planted.backup_id)
    unsigned = find_backup(storage, "srv", "shop", planted.backup_id, allow_unsigned=True)
    assert unsigned.backup_id == planted.backup_id
    with pytest.raises(IntegrityError, match="invalid"):  # never: a mismatch is not "unsigned"
        find_backup(storage, "srv", "shop", NEW, allow_unsigned=True)


def test_a_flipped_byte_in_a_manifest_is_refused(storage: LocalBackupStorage):
    plant_manifest(storage, "srv", "shop", OLD)
    path = _path(storage, "shop", OLD, MANIFEST_NAME)
    path.write_bytes(path.read_bytes().replace(b'"raw_bytes": 1', b'"raw_bytes": 7'))
    with pytest.raises(IntegrityError, match="invalid: the signature does not match"):
        find_backup(storage, "srv", "shop", OLD)
    with pytest.raises(BackupNotFound, match="with a valid signature"):
        find_backup(storage, "srv", "shop")


def test_edited_create_options_are_refused():
    base = dict(
        tool_version="t", server="srv", server_type="postgres", server_version="15",
        client="pg_dump", client_version="15", database="shop", backup_id=OLD,
        started_at=datetime(2026, 11, 1, tzinfo=UTC), finished_at=datetime(2026, 11, 1, tzinfo=UTC),
        object_name="dump.pgc.zst.age", dump_format="pg_custom",
        stats={"raw_bytes": 1, "compressed_bytes": 1, "stored_bytes": 1, "sha256": "0" * 64},
        recipients=[],
    )  # fmt: skip
    Manifest(**base, create_options={"encoding": "UTF8", "lc_collate": "en_US.UTF-8"})
    with pytest.raises(ValueError, match="'template'.*never created with"):
        Manifest(**base, create_options={"template": "template1"})
    with pytest.raises(ValueError, match="not a plain name"):
        Manifest(**base, create_options={"encoding": "UTF8' TEMPLATE template1 --"})
    with pytest.raises(ValueError, match="never created with"):  # a MySQL option on PostgreSQL
        Manifest(**base, create_options={"character_set": "latin1"})


def test_prune_never_counts_an_untrusted_backup_and_never_deletes_it(storage):
    plant_manifest(storage, "srv", "shop", OLD)
    _copy_backup(storage, "shop", OLD, "shop", NEW)  # roll-back attempt: newer, invalid
    storage.put_bytes(backup_key("srv", "shop", "20261121T000000Z-ffff", MANIFEST_NAME), b"{")
    keys = storage.list_keys("srv/shop/" + NEW)
    [entry] = manifest_trust(storage, {NEW: keys}, storage.manifest_verifiers()).values()
    assert entry.trust == "invalid"

    items = {i.backup_id: i for i in prune(storage, "srv", RetentionPolicy(keep_last=1))}
    assert items[OLD].keep and "newest" in items[OLD].reasons  # the planted one is not newest
    assert items[NEW].keep and not items[NEW].complete
    assert items[NEW].reasons == [
        "invalid manifest: not counted, kept for review (docs/security.md)"
    ]
    assert items["20261121T000000Z-ffff"].keep and not items["20261121T000000Z-ffff"].complete
    assert storage.exists(backup_key("srv", "shop", NEW, MANIFEST_NAME))


def test_signing_keygen_and_apply_make_a_storage_that_signs_and_trusts(tmp_path: Path):
    from prefect_dbbackup.flows.cli import app
    from prefect_dbbackup.flows.config import load_config
    from typer.testing import CliRunner

    key_file = tmp_path / "keys" / "signing.key"
    made = CliRunner().invoke(app, ["signing-keygen", "-o", str(key_file)])
    assert made.exit_code == 0, made.output
    public = made.stdout.strip()
    assert public.startswith("dbbackup-ed25519:") and key_file.stat().st_mode & 0o777 == 0o600
    again = CliRunner().invoke(app, ["signing-keygen", "-o", str(key_file)])
    assert again.exit_code == 3 and "refusing to overwrite" in again.output
    assert [p.name for p in key_file.parent.iterdir()] == ["signing.key"]  # no temp file left

    config = tmp_path / "dbbackup.yaml"
    config.write_text(
        "storage:\n  default: {type: local, path: ./b, manifest_signing_key_file: keys/signing.key}\n"
        f"  reader: {{type: local, path: ./b, manifest_verify_keys: ['{public}']}}\n"
    )
    blocks = dict(load_config(config))
    assert blocks["default"].manifest_verify_keys == [public]  # derived, like recipients
    assert blocks["default"].manifest_signing_key_file == str(key_file)
    plant_manifest(blocks["default"], "srv", "shop", OLD)
    [entry] = scan_backups(blocks["reader"], "srv", "shop")  # a reader without the secret key
    assert entry.trust == "signed"

    config.write_text("storage:\n  default: {type: local, path: ./b, manifest_verify_keys: [x]}\n")
    with pytest.raises(ConfigError, match="storage.default: not a manifest verify key"):
        load_config(config)


def test_a_database_named_like_the_globals_series_is_trusted_in_its_own_folder(storage):
    plant_manifest(storage, "srv", "_globals", OLD)  # the users/roles series
    manifest = Manifest.from_bytes(
        storage.get_bytes(backup_key("srv", "_globals", OLD, MANIFEST_NAME, "globals"))
    )
    manifest.kind, manifest.object_name, manifest.backup_id = "database", "dump.pgc.zst.age", NEW
    publish_manifest(storage, manifest)  # a user database literally named '_globals'
    trust = {(e.backup_id, e.trust) for e in scan_backups(storage, "srv")}
    assert trust == {(OLD, "signed"), (NEW, "signed")}


def _record(storage: LocalBackupStorage, database: str, backup_id: str) -> str:
    """A valid signed verify record, as verify writes it after a backup passed."""
    key = backup_key("srv", database, backup_id, MANIFEST_NAME)
    entry = read_manifest(storage, key, storage.manifest_verifiers())
    return write_record(storage, entry, {"checked": "row counts", "tables": 1, "rows": 1})


def test_only_a_signed_verify_record_bound_to_its_backup_counts_for_retention(
    storage: LocalBackupStorage, caplog
):
    old, mid, new, other = (f"202611{d}T000000Z-000{d[1]}" for d in ("01", "02", "03", "04"))
    for backup_id in (old, mid, new, other):
        plant_manifest(storage, "srv", "shop", backup_id)
    plant_manifest(storage, "srv", "other", old)
    record = _record(storage, "shop", old)  # the real one
    _record(storage, "other", old)
    copied = {
        # copied as is into newer backups of the series, and from another series
        mid: (f"srv/shop/{old}", "backup_id, manifest_sha256 do not match"),
        other: (f"srv/other/{old}", "database, backup_id, manifest_sha256 do not match"),
    }
    for backup_id, (source, _) in copied.items():
        for name in (VERIFIED_NAME, VERIFIED_SIGNATURE_NAME):
            storage.put_bytes(f"srv/shop/{backup_id}/{name}", storage.get_bytes(f"{source}/{name}"))
    # an unsigned record, as releases before signed records wrote them
    storage.put_bytes(
        f"srv/shop/{new}/{VERIFIED_NAME}",
        json.dumps({"backup_id": new, "sha256": "0" * 64}).encode(),
    )
    policy = RetentionPolicy(keep_last=1)

    items = {
        i.backup_id: i for i in prune(storage, "srv", policy, databases=["shop"], dry_run=True)
    }
    assert items[old].keep and items[old].reasons == ["newest verified"] and items[old].verified
    assert [b for b, i in items.items() if i.verified] == [old]
    for _, problem in copied.values():
        assert problem in caplog.text
    assert (
        f"ignoring verify record srv/shop/{new}/{VERIFIED_NAME}: it has no signature" in caplog.text
    )
    assert "run `dbbackup verify` on that backup again" in caplog.text

    # signed by a key the storage does not trust, or the manifest replaced since: not counted
    stranger = signing.load_signing_key(signing.generate_signing_key(), "k")
    storage.put_bytes(record + ".sig", signing.sign(stranger, storage.get_bytes(record)))
    items = {
        i.backup_id: i for i in prune(storage, "srv", policy, databases=["shop"], dry_run=True)
    }
    assert not any(i.verified for i in items.values()) and items[old].outcome == "would remove"
    assert "does not match the record's bytes" in caplog.text
    _record(storage, "shop", old)
    plant_manifest(storage, "srv", "shop", old)  # re-signed, other bytes: not what was verified
    path = _path(storage, "shop", old, MANIFEST_NAME)
    path.write_bytes(path.read_bytes().replace(b'"tool_version": "test"', b'"tool_version": "x"'))
    (path.parent / SIGNATURE_NAME).write_bytes(
        signing.sign(storage.manifest_signer(), path.read_bytes())
    )
    items = {
        i.backup_id: i for i in prune(storage, "srv", policy, databases=["shop"], dry_run=True)
    }
    assert not items[old].verified
    assert "its manifest_sha256 do not match" in caplog.text


def test_verify_without_a_signing_key_fails_before_restoring(tmp_path: Path):
    storage = LocalBackupStorage(
        path=str(tmp_path), manifest_verify_keys=signing_fields()["manifest_verify_keys"]
    )
    with pytest.raises(ConfigError, match="verify signs the record retention trusts"):
        record_signer(storage)


def test_latest_skips_a_backup_dated_after_its_manifest_was_stored_on_a_fast_clock(
    storage: LocalBackupStorage, monkeypatch, caplog
):
    real = datetime.now(UTC) - timedelta(hours=2)
    good = plant_manifest(storage, "srv", "shop", new_backup_id(real))
    fast = plant_manifest(storage, "srv", "shop", new_backup_id(real + timedelta(days=300)))

    class YearFast(datetime):
        @classmethod
        def now(cls, tz=None):  # noqa: ANN001, ANN206
            return datetime.now(tz) + timedelta(days=365)

    monkeypatch.setattr(catalog, "datetime", YearFast)  # this worker's clock is a year fast
    assert find_backup(storage, "srv", "shop").backup_id == good.backup_id
    assert f"ignoring backup {fast.backup_id} of 'shop' as latest" in caplog.text
    assert find_backup(storage, "srv", "shop", fast.backup_id).backup_id == fast.backup_id
