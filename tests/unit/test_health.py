"""Backup health read from a real local storage holding manifests written by the product's
own writer (publish_manifest): states, trust, future-dated backups, the users/roles row,
the artifact key of any server name, and the Prometheus file parsed back."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prefect_dbbackup.blocks.local_storage import LocalBackupStorage
from prefect_dbbackup.flows.health import FLEET_KEY, health_key, text_lines
from prefect_dbbackup.flows.prometheus import exposition, write_textfile
from prefect_dbbackup.tasks.health import health_rows, summary
from prefect_dbbackup.tasks.layout import GLOBALS_SEGMENT, SIGNATURE_NAME
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import plant_manifest, signing_fields

HOSTILE = 'we"ird\\n%_Na\nme'  # a quote, a backslash then n, a percent, a real newline


def _id(when: datetime) -> str:
    return f"{when:%Y%m%dT%H%M%SZ}-abcd"


@pytest.fixture
def store(tmp_path: Path) -> LocalBackupStorage:
    return LocalBackupStorage(path=str(tmp_path / "store"), **signing_fields())


def _by_db(rows: list) -> dict:
    return {(r.server, r.database, r.kind): r for r in rows}


def test_rows_of_a_fleet(store: LocalBackupStorage) -> None:
    """Newest good backup per series, its size change, late past the interval, the users
    row apart, and a server block with no backups at all."""
    now = datetime.now(UTC)
    old = plant_manifest(store, "srv", "shop", _id(now - timedelta(hours=30)))
    new = plant_manifest(store, "srv", "shop", _id(now - timedelta(hours=3)))
    plant_manifest(store, "srv", GLOBALS_SEGMENT, _id(now - timedelta(hours=3)))
    plant_manifest(store, "srv2", "crm", _id(now - timedelta(hours=30)))
    rows = health_rows(store, also_servers=["empty", "srv"], now=now)
    by = _by_db(rows)
    shop = by["srv", "shop", "database"]
    assert (shop.state, shop.late, shop.trust, shop.backup_id) == (
        "ok",
        False,
        "signed",
        new.backup_id,
    )
    assert shop.change_bytes == new.stats.stored_bytes - old.stats.stored_bytes
    assert shop.age_seconds == pytest.approx(3 * 3600, abs=2)
    assert by["srv", GLOBALS_SEGMENT, "users"].state == "ok"
    assert (by["srv2", "crm", "database"].state, by["srv2", "crm", "database"].late) == (
        "late",
        True,
    )
    assert by["empty", "", "server"].state == "no-backups"
    assert len(rows) == 4  # 'srv' has backups: no extra row for it
    assert summary(rows) == "2 databases: 1 late, 1 ok"  # the users/roles row is no database
    # a shorter schedule makes the 3 h old backup late
    late = _by_db(health_rows(store, "srv", intervals={"srv": timedelta(hours=1)}, now=now))
    assert late["srv", "shop", "database"].state == "late"


def test_future_dated_is_never_fresh(store: LocalBackupStorage) -> None:
    """A signed backup dated 3 days ahead is not the newest good one: the row says
    future-dated, its age and id are the real newest one's."""
    now = datetime.now(UTC)
    real = plant_manifest(store, "srv", "shop", _id(now - timedelta(hours=1)))
    ahead = plant_manifest(store, "srv", "shop", _id(now + timedelta(days=3)))
    (row,) = health_rows(store, "srv", now=now)
    assert (row.state, row.future_dated, row.backup_id) == ("future-dated", True, real.backup_id)
    assert ahead.backup_id in row.note and "in the future" in row.note
    assert any("future-dated" in line for line in text_lines([row], fleet=False))


def test_trust_on_unsigned_and_signing_storages(store: LocalBackupStorage, tmp_path: Path) -> None:
    """A storage without verify keys shows its backups as unsigned; on a signing storage an
    unsigned manifest is no fact: the older signed one is used, and the newer one named."""
    now = datetime.now(UTC)
    signed = plant_manifest(store, "srv", "shop", _id(now - timedelta(hours=2)))
    planted = plant_manifest(store, "srv", "shop", _id(now - timedelta(hours=1)))
    sig = tmp_path / "store/srv/shop" / planted.backup_id / SIGNATURE_NAME
    sig.unlink()
    (row,) = health_rows(store, "srv", now=now)
    assert (row.backup_id, row.trust) == (signed.backup_id, "signed")
    assert f"newer backup {planted.backup_id} is unsigned" in row.note
    unsigned = LocalBackupStorage(path=str(tmp_path / "store"))
    (row,) = health_rows(unsigned, "srv", now=now)
    assert (row.backup_id, row.trust, row.state) == (planted.backup_id, "unsigned", "ok")


@pytest.mark.parametrize("name", [HOSTILE, "%", "___", "Backup_Health", "a-b", "A_B", "é"])
def test_health_key_of_any_server_name(name: str) -> None:
    """Only lowercase letters, digits and dashes; never the fleet's key; two names that
    differ never share one."""
    key = health_key(name)
    assert re.fullmatch(r"[a-z0-9-]+", key), key
    assert key != FLEET_KEY and key.startswith(FLEET_KEY + "-")
    others = {health_key(n) for n in [HOSTILE, "%", "___", "Backup_Health", "a-b", "A_B", "é"]}
    assert len(others) == 7
    assert health_key("local-pg") == "backup-health-local-pg"


def test_prometheus_file_parsed_back(store: LocalBackupStorage, tmp_path: Path) -> None:
    """The file written for the textfile collector parses with prometheus_client's parser,
    with the hostile database name back exactly and the figures of the rows."""
    now = datetime.now(UTC)
    m = plant_manifest(store, "srv", HOSTILE, _id(now - timedelta(hours=3)))
    rows = health_rows(store, also_servers=["empty"], now=now)
    path = tmp_path / "dbbackup.prom"
    write_textfile(path, exposition(rows))
    samples = {
        (s.name, s.labels["server"], s.labels["database"], s.labels["kind"]): s.value
        for family in text_string_to_metric_families(path.read_text())
        for s in family.samples
    }
    key = ("srv", HOSTILE, "database")
    assert samples[("dbbackup_backup_size_bytes", *key)] == m.stats.stored_bytes
    assert samples[("dbbackup_last_success_timestamp_seconds", *key)] == m.finished_at.timestamp()
    assert samples[("dbbackup_backup_late", *key)] == 0
    assert samples[("dbbackup_verify_ok", *key)] == 0
    assert samples[("dbbackup_backup_signed", *key)] == 1
    assert samples[("dbbackup_backup_late", "empty", "", "server")] == 1
    assert ("dbbackup_backup_size_bytes", "empty", "", "server") not in samples
    assert os.stat(path).st_mode & 0o777 == 0o644


def test_metrics_file_never_written_through_a_planted_link(tmp_path: Path) -> None:
    """A symbolic link planted at FILE.tmp is replaced, not followed: its target is intact,
    FILE holds the metrics, and no temp file is left."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    path = tmp_path / "dbbackup.prom"
    (tmp_path / "dbbackup.prom.tmp").symlink_to(victim)
    write_textfile(path, "# metrics\n")
    assert victim.read_text() == "precious\n"
    assert path.read_text() == "# metrics\n" and not path.is_symlink()
    assert not (tmp_path / "dbbackup.prom.tmp").exists()
