"""dbbackup.yaml parsing: env expansion, validation, relative paths (no Prefect API needed)."""

from __future__ import annotations

import pyrage
import pytest
from prefect_dbbackup.blocks import PostgresServer
from prefect_dbbackup.blocks.errors import ConfigError
from prefect_dbbackup.flows.config import load_config


def _write(tmp_path, text: str):
    path = tmp_path / "dbbackup.yaml"
    path.write_text(text)
    return path


def test_full_config_builds_typed_blocks(tmp_path, monkeypatch):
    monkeypatch.setenv("PGPASS_ENV", "s3cret")
    identity = pyrage.x25519.Identity.generate()
    (tmp_path / "id.txt").write_text(f"{identity}\n")
    path = _write(
        tmp_path,
        """
servers:
  local-pg: {type: postgres, host: 127.0.0.1, port: 5432, user: postgres, password: "${PGPASS_ENV}", include: ["*"], exclude: ["scratch_*"]}
  local-my: {type: mysql, host: 127.0.0.1, port: 3306, user: root, pitr: true}
storage:
  default: {type: local, path: ./backups}
encryption:
  default: {identity_file: ./id.txt}
""",
    )
    loaded = load_config(path)
    blocks = {(type(b).__name__, n): b for n, b in loaded}
    pg = blocks["PostgresServer", "local-pg"]
    assert isinstance(pg, PostgresServer)
    assert pg.password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(pg)
    assert pg.exclude == ["scratch_*"]
    assert blocks["MySQLServer", "local-my"].user == "root"
    assert blocks["MySQLServer", "local-my"].pitr is True and pg.pitr is False
    assert blocks["LocalBackupStorage", "default"].path == str(tmp_path / "backups")
    enc = blocks["AgeEncryption", "default"]
    assert enc.recipients == [str(identity.to_public())]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("servers: [1, 2", "not valid YAML"),
        ("servers:\n  x: {type: oracle}", "type must be one of"),
        ("servers:\n  x: {type: postgres, hots: a}", "unknown setting(s) hots"),
        ("servers:\n  x: {type: postgres, password: '${NOPE_NOT_SET}'}", "NOPE_NOT_SET is not set"),
        ("servers:\n  x: {type: postgres, port: many}", "port"),
        ("servers:\n  x: {type: mysql, pitr: sometimes}", "pitr"),
        ("backup: {}", "unknown section"),
        ("encryption:\n  default: {recipients: []}", "no recipients"),
        ("encryption:\n  default: {recipients: [age1notakey]}", "not an age X25519 recipient"),
    ],
)
def test_bad_config_says_what_is_wrong(tmp_path, monkeypatch, text, message):
    monkeypatch.delenv("NOPE_NOT_SET", raising=False)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(_write(tmp_path, text))


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ("servers:\n  x: {type: postgres, port: 99999999}", "port"),
        ("servers:\n  x: {type: mysql, port: 0}", "port"),
        ("servers:\n  x: {type: postgres, connect_timeout: 0}", "connect_timeout"),
        ("servers:\n  x: {type: mysql, dump_timeout: 1e300}", "dump_timeout"),
        ("servers:\n  x: {type: postgres, dump_timeout: -5}", "dump_timeout"),
        ("servers:\n  x: {type: postgres, retention: {keep_last: 1e30}}", "keep_last"),
        ("servers:\n  x: {type: mysql, retention: {keep_daily: 10000000000}}", "keep_daily"),
        (
            "servers:\n  x: {type: postgres, retention: {garbage_grace_hours: .inf}}",
            "garbage_grace",
        ),
        ("servers:\n  x: {type: postgres, retention: {future_tolerance_hours: 1e308}}", "future"),
        ("servers:\n  x: {type: postgres, retention: {future_tolerance_hours: .nan}}", "future"),
        ("storage:\n  s: {type: local, path: /b, dedup_grace_hours: 1e308}", "dedup_grace_hours"),
        ("storage:\n  s: {type: local, path: /b, dedup_grace_hours: .inf}", "dedup_grace_hours"),
        ("storage:\n  s: {type: local, path: /b, dedup_grace_hours: .nan}", "dedup_grace_hours"),
        ("storage:\n  s: {type: local, path: /b, dedup_fence_hours: -.inf}", "dedup_fence_hours"),
        ("storage:\n  s: {type: s3, bucket: backups-x, read_timeout: .inf}", "read_timeout"),
        ("storage:\n  s: {type: s3, bucket: backups-x, connect_timeout: 1e9}", "connect_timeout"),
    ],
)
def test_numbers_out_of_their_documented_range_are_refused_naming_the_field(tmp_path, entry, field):
    """Infinite, NaN, huge or negative numbers are a configuration error that names the
    field (apply saves nothing), not a block every later run fails to use."""
    with pytest.raises(ConfigError, match=field):
        load_config(_write(tmp_path, entry))


def test_the_documented_bounds_themselves_are_accepted(tmp_path):
    blocks = dict(
        load_config(
            _write(
                tmp_path,
                "servers:\n  x: {type: postgres, port: 65535, connect_timeout: 3600, "
                "dump_timeout: 2592000, retention: {keep_last: 1000000, "
                "future_tolerance_hours: 8760, garbage_grace_hours: 8760}}\n"
                "storage:\n  s: {type: local, path: /b, dedup_grace_hours: 8760, "
                "dedup_fence_hours: 8759}\n",
            )
        )
    )
    assert blocks["x"].port == 65535 and blocks["s"].dedup_grace_hours == 8760


def test_a_lost_or_different_dedup_key_is_recovered_from_the_storage_never_made_anew(tmp_path):
    """apply's key decision (flows/config._give_dedup_key) on a storage holding a key copy:
    no identity -> exit 3 with how to recover; the config's identity file -> the storage's
    key; a block key with no copy there (made by an older apply after a lost Prefect
    database) -> the storage's key again, said so."""
    from types import SimpleNamespace

    from prefect_dbbackup.blocks.storage_keys import new_dedup_key
    from prefect_dbbackup.flows.config import _give_dedup_key, _identities
    from prefect_dbbackup.tasks.dedup.keys import DedupKey, ensure_key_copy

    identity = pyrage.x25519.Identity.generate()
    (tmp_path / "id.txt").write_text(f"{identity}\n")
    config = _write(
        tmp_path,
        "storage:\n  s: {type: local, path: ./b, dedup: true}\n"
        "encryption:\n  e: {identity_file: ./id.txt}\n",
    )
    blocks = load_config(config)
    storage, encryption = blocks[0][1], blocks[1][1]
    key = DedupKey(bytes.fromhex(new_dedup_key()))
    ensure_key_copy(storage, key, encryption)

    with pytest.raises(ConfigError, match="--identity-file"):
        _give_dedup_key(storage, None, list)
    assert storage.dedup_key is None
    note = _give_dedup_key(storage, None, _identities(blocks, None))
    assert storage.dedup_secret() == key.secret and key.key_id in note
    storage.dedup_key = None
    stale = SimpleNamespace(data={"dedup_key": new_dedup_key()})
    assert _give_dedup_key(storage, stale, _identities(blocks, None)) == note
    assert storage.dedup_secret() == key.secret
    storage.dedup_key = None
    own = SimpleNamespace(data={"dedup_key": key.secret.hex()})
    assert _give_dedup_key(storage, own, list) is None and storage.dedup_secret() == key.secret
