"""Listing and finding backups while a prune deletes some of them (manifest first, then the
rest): what was deleted since the listing is no longer there, never an error of the whole list."""

from __future__ import annotations

from datetime import datetime

import pytest
from prefect_dbbackup.blocks.errors import BackupNotFound
from prefect_dbbackup.blocks.local_storage import LocalBackupStorage
from prefect_dbbackup.tasks.catalog import find_backup, scan_backups
from prefect_dbbackup.tasks.layout import MANIFEST_NAME, SIGNATURE_NAME, backup_key

from tests.helpers import plant_manifest, signing_fields

KEPT, PRUNED = "20261120T010000Z-0001", "20261121T010000Z-0002"


class PrunedAfterListing(LocalBackupStorage):
    """Local storage on which a prune deletes `names` of backup PRUNED right after each
    listing (the race of a `list` beside a `prune`, made certain)."""

    _block_type_slug = "test-pruned-after-listing"  # never dispatched to in place of the real one
    names: tuple[str, ...] = (MANIFEST_NAME,)

    def list_modified(self, prefix: str = "") -> dict[str, datetime]:
        listed = super().list_modified(prefix)
        for name in self.names:
            self.delete(backup_key("srv", "shop", PRUNED, name))
        return listed


def _storage(tmp_path, names: tuple[str, ...]) -> PrunedAfterListing:
    storage = PrunedAfterListing(path=str(tmp_path), names=names, **signing_fields())
    for backup_id in (KEPT, PRUNED):
        plant_manifest(storage, "srv", "shop", backup_id)
    return storage


def test_a_backup_whose_manifest_went_after_the_listing_is_left_out(tmp_path):
    entries = scan_backups(_storage(tmp_path, (MANIFEST_NAME,)), "srv", "shop")
    assert [(e.backup_id, e.trust) for e in entries] == [(KEPT, "signed")]


def test_a_signature_that_went_after_the_listing_makes_the_backup_unsigned(tmp_path):
    entries = scan_backups(_storage(tmp_path, (SIGNATURE_NAME,)), "srv", "shop")
    assert [(e.backup_id, e.trust) for e in entries] == [(KEPT, "signed"), (PRUNED, "unsigned")]
    assert "disappeared" in entries[1].problem


def test_latest_is_the_newest_backup_still_there(tmp_path):
    storage = _storage(tmp_path, (MANIFEST_NAME, SIGNATURE_NAME))
    assert find_backup(storage, "srv", "shop").backup_id == KEPT


def test_a_backup_asked_for_by_id_and_deleted_meanwhile_is_not_found(tmp_path):
    storage = _storage(tmp_path, ())
    storage.delete(backup_key("srv", "shop", PRUNED, MANIFEST_NAME))
    with pytest.raises(BackupNotFound, match=PRUNED):
        find_backup(storage, "srv", "shop", PRUNED)
