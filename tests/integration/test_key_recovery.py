"""Keys a restore needs survive the loss of the Prefect database (issue #23, case 10): the
next `apply` never makes a new dedup key for a storage that holds copies of its key; it
recovers the key from the storage with the identity, or says how to."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pyrage
from prefect_dbbackup.blocks import LocalBackupStorage
from prefect_dbbackup.blocks.storage_keys import new_dedup_key
from prefect_dbbackup.tasks.dedup.keys import DedupKey, key_copy_key
from prefect_dbbackup.tasks.dedup.layout import CHUNKS, KEYS
from typer.testing import CliRunner

from tests.helpers import CliResult

TABLE = (
    "CREATE TABLE t (id int PRIMARY KEY, v text);"
    "INSERT INTO t SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 20000) g;"
)


def _cli(*args: str) -> CliResult:
    from prefect_dbbackup.flows.cli import app

    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    return CliResult(result.exit_code, result.stdout, result.stderr)


def _lose_the_prefect_blocks(names: dict[str, str]) -> None:
    """What deleting the Prefect database does to this config's blocks."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for slug, name in names.items():
            client.delete_block_document(client.read_block_document_by_name(name, slug).id)


def _plant_a_newer_key_copy(root: Path, recipient: str) -> None:
    """A key copy anyone can write (the recipients are public), newer than the real one:
    recovery takes the key the signed backups name, not the newest copy."""
    (real,) = (root / KEYS).iterdir()
    rset = real.name.split(".")[1]
    planted = DedupKey(bytes.fromhex(new_dedup_key()))
    record = {"version": 1, "key_id": planted.key_id, "key": planted.secret.hex()}
    blob = pyrage.encrypt(
        json.dumps(record).encode(), [pyrage.x25519.Recipient.from_str(recipient)]
    )
    (root / key_copy_key(planted.key_id, rset)).write_bytes(blob)


def test_apply_after_the_prefect_blocks_are_lost_recovers_the_dedup_key(
    env, pg_db, pg_admin, cleanup_pg, tmp_path
):
    tag = uuid.uuid4().hex[:8]
    server, storage, encryption = f"pg-{tag}", f"st-{tag}", f"en-{tag}"
    signing_key = tmp_path / "signing.key"
    signing_key.write_text(env.signing_key)
    root = tmp_path / "dedup-backups"
    config = tmp_path / "dbbackup.yaml"
    config.write_text(
        f"servers:\n  {server}: {{type: postgres, host: 127.0.0.1, port: 5432}}\n"
        f"storage:\n  {storage}: {{type: local, path: {root}, dedup: true, "
        f"manifest_signing_key_file: {signing_key}}}\n"
        f"encryption:\n  {encryption}: {{recipients: ['{env.recipient}']}}\n"
    )
    db = pg_db()
    pg_admin.execute(db, TABLE)
    assert _cli("apply", str(config)).exit_code == 0
    key = LocalBackupStorage.load(storage).dedup_key.get_secret_value()
    run = ("backup", server, "-d", db, "--storage", storage, "--encryption", encryption)
    assert _cli(*run).exit_code == 0
    chunks = sorted(p for p in (root / CHUNKS).rglob("*") if p.is_file())

    _plant_a_newer_key_copy(root, env.recipient)
    _lose_the_prefect_blocks(
        {"local-backup-storage": storage, "age-encryption": encryption, "postgres-server": server}
    )
    refused = _cli("apply", str(config))
    assert refused.exit_code == 3, refused.output
    assert "--identity-file" in refused.stderr and "dedup key" in refused.stderr
    recovered = _cli("apply", str(config), "--identity-file", str(env.identity_file))
    assert recovered.exit_code == 0, recovered.output
    assert "recovered the dedup key" in recovered.stderr and key not in recovered.output
    assert LocalBackupStorage.load(storage).dedup_key.get_secret_value() == key

    pg_admin.execute(db, "INSERT INTO t VALUES (0, 'after the loss')")
    assert _cli(*run).exit_code == 0
    new_chunks = sorted(p for p in (root / CHUNKS).rglob("*") if p.is_file())
    assert set(chunks) < set(new_chunks) and len(new_chunks) - len(chunks) <= 2  # reused
    listed = json.loads(_cli("list", server, "-d", db, "--storage", storage, "--json").stdout)
    assert len(listed) == 2
    for n, entry in enumerate(listed):
        target = f"{db}_{n}"
        cleanup_pg.append(target)
        result = _cli(
            "restore", server, db, "--into", target, "--backup-id", entry["backup_id"],
            "--storage", storage, "--encryption", encryption,
            "--identity-file", str(env.identity_file),
        )  # fmt: skip
        assert result.exit_code == 0, result.output
    assert pg_admin.table_fingerprints(f"{db}_1") == pg_admin.table_fingerprints(db)
    assert pg_admin.query(f"{db}_0", "SELECT count(*) FROM t WHERE id = 0") == [(0,)]
