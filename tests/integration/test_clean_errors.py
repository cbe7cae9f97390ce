"""Unsafe storage keys and passphrase-protected identities end in a clear message, exit 3."""

from __future__ import annotations

import json
import uuid

import pyrage
import pytest

from tests.helpers import BlockEnv


def _backup(env: BlockEnv, pg_db, pg_admin) -> str:  # noqa: ANN001
    db = pg_db()
    pg_admin.execute(db, "CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2)")
    result = env.cli("backup", env.pg, "--database", db)
    assert result.exit_code == 0, result.output
    return db


def _clean_failure(result, code: int, *needles: str) -> None:  # noqa: ANN001
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.stderr, result.stderr


@pytest.mark.parametrize("backup_id", ["../../../etc", "/etc/passwd"])  # more: unit tests
def test_unsafe_backup_id_from_the_command_line_exits_3(
    env, pg_db, pg_admin, cleanup_pg, backup_id
):
    db = pg_db()  # no backup needed: the id is refused before storage is read
    target = f"dbb_never_{uuid.uuid4().hex[:8]}"
    cleanup_pg.append(target)
    result = env.cli("restore", env.pg, db, "--into", target, "--backup-id", backup_id)
    _clean_failure(result, 3, "is not a backup id", "20261127T031500Z-3f9a")
    result = env.cli(
        "restore-users",
        env.pg,
        "--backup-id",
        backup_id,
        "--dry-run",
        "--storage",
        env.storage,
        "--encryption",
        env.encryption,
    )
    _clean_failure(result, 3, "is not a backup id")
    assert not pg_admin.exists(target)


def test_unsafe_keys_in_a_manifest_exit_3_and_restore_nothing(env, pg_db, pg_admin, cleanup_pg):
    db = _backup(env, pg_db, pg_admin)
    (manifest_path,) = [
        p for p in env.storage_path.rglob("manifest.json") if "_globals" not in p.parts
    ]
    original = json.loads(manifest_path.read_text())
    target = db + "_restored"
    cleanup_pg.append(target)
    # signed again, as a writer with a stolen signing key could: the manifest no longer
    # matches where it sits, so it is never the latest backup and nothing is read
    for field, value in [("object_name", "../../../../../etc/passwd"), ("backup_id", "../../..")]:
        manifest_path.write_text(json.dumps({**original, field: value}))
        env.resign(manifest_path)
        result = env.cli("restore", env.pg, db, "--into", target)
        _clean_failure(result, 3, "no complete backup", "with a valid signature")
        assert not pg_admin.exists(target)
    manifest_path.write_text(json.dumps(original))
    env.resign(manifest_path)
    result = env.cli("restore", env.pg, db, "--into", target)
    assert result.exit_code == 0, result.output
    assert pg_admin.query(target, "SELECT id FROM t ORDER BY id") == [(1,), (2,)]


def test_passphrase_protected_identity_says_how_to_decrypt_it(
    env, pg_db, pg_admin, cleanup_pg, tmp_path
):
    db = _backup(env, pg_db, pg_admin)
    protected = tmp_path / "key.age"
    protected.write_bytes(pyrage.passphrase.encrypt(env.identity_file.read_bytes(), "hunter2"))
    target = db + "_restored"
    cleanup_pg.append(target)
    result = env.cli("restore", env.pg, db, "--into", target, "--identity-file", str(protected))
    _clean_failure(result, 3, str(protected), "passphrase-protected", "age -d key.age > key.txt")
    assert not pg_admin.exists(target)

    binary = tmp_path / "binary.key"
    binary.write_bytes(b"\xff\xfe\x00garbage\x80")
    result = env.cli("restore", env.pg, db, "--into", target, "--identity-file", str(binary))
    _clean_failure(result, 3, str(binary), "not a text file of age identities")
    assert not pg_admin.exists(target)

    # decrypted as the message says, the same key restores the backup
    plain = tmp_path / "key.txt"
    plain.write_bytes(pyrage.passphrase.decrypt(protected.read_bytes(), "hunter2"))
    result = env.cli("restore", env.pg, db, "--into", target, "--identity-file", str(plain))
    assert result.exit_code == 0, result.output


def test_armored_passphrase_identity_is_recognised_inline():
    from prefect_dbbackup.blocks.encryption import parse_identities
    from prefect_dbbackup.blocks.errors import ConfigError

    armored = "-----BEGIN AGE ENCRYPTED FILE-----\nYWdlLWVuY3J5cHRpb24ub3JnL3YxCi0+\n"
    with pytest.raises(ConfigError, match="passphrase-protected"):
        parse_identities(armored, "the block's identity")
