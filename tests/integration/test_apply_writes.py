"""`dbbackup apply` writes only what changed: a second apply of the same file writes nothing."""

from __future__ import annotations

import uuid

from prefect_dbbackup.flows.cli import app
from typer.testing import CliRunner

SLUGS = ("postgres-server", "mysql-server", "s3-backup-storage", "age-encryption")


def _config(tag: str, recipient: str, port: int) -> str:
    return f"""
servers:
  pg-{tag}: {{type: postgres, host: 127.0.0.1, port: {port}, password: "${{DBB_APPLY_PW}}",
             exclude: &skip ["tmp_*", "scratch_*"]}}
  my-{tag}: {{type: mysql, host: 127.0.0.1, exclude: *skip}}
storage:
  s3-{tag}:
    type: s3
    bucket: backups-test
    endpoint_url: http://127.0.0.1:1
    credentials: {{aws_access_key_id: AKIA-{tag}, aws_secret_access_key: "${{DBB_APPLY_PW}}"}}
encryption:
  en-{tag}: {{recipients: ["{recipient}"]}}
"""


def _stamps(tag: str) -> dict[str, object]:
    """updated timestamp of every block document of this test, by name."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import PrefectHTTPStatusError

    stamps: dict[str, object] = {}
    with get_client(sync_client=True) as client:
        for slug in SLUGS:
            try:
                docs = client.read_block_documents_by_type(slug, include_secrets=False)
            except PrefectHTTPStatusError as exc:
                # A type nothing on this worker's server has registered yet has no documents.
                if exc.response.status_code != 404:
                    raise
                docs = []
            stamps.update({d.name: d.updated for d in docs if d.name and tag in d.name})
    return stamps


def test_second_apply_writes_nothing_and_a_changed_field_is_written(
    prefect_api, tmp_path, recipient, monkeypatch
):
    tag = uuid.uuid4().hex[:8]
    monkeypatch.setenv("DBB_APPLY_PW", "secret-" + tag)
    config = tmp_path / "dbbackup.yaml"
    config.write_text(_config(tag, recipient, 5432))
    run = CliRunner().invoke
    first = run(app, ["apply", str(config)])
    assert first.exit_code == 0, first.output
    assert first.stdout.count("created") == 4
    before = _stamps(tag)
    assert set(before) == {f"pg-{tag}", f"my-{tag}", f"s3-{tag}", f"en-{tag}"}

    second = run(app, ["apply", str(config)])
    assert second.exit_code == 0, second.output
    assert second.stdout.count("unchanged") == 4, second.stdout
    assert _stamps(tag) == before  # nothing was written

    config.write_text(_config(tag, recipient, 6543))
    third = run(app, ["apply", str(config)])
    assert third.exit_code == 0, third.output
    assert f"updated   postgres-server/pg-{tag}" in third.stdout
    assert third.stdout.count("unchanged") == 3
    after = _stamps(tag)
    assert after[f"pg-{tag}"] > before[f"pg-{tag}"]
    assert {k: v for k, v in after.items() if k != f"pg-{tag}"} == {
        k: v for k, v in before.items() if k != f"pg-{tag}"
    }
    from prefect_dbbackup.blocks import PostgresServer, S3BackupStorage

    assert PostgresServer.load(f"pg-{tag}").port == 6543
    s3 = S3BackupStorage.load(f"s3-{tag}")
    assert s3.credentials.aws_secret_access_key.get_secret_value() == "secret-" + tag

    monkeypatch.setenv("DBB_APPLY_PW", "rotated")  # a secret change is a change too
    fourth = run(app, ["apply", str(config)])
    assert f"updated   postgres-server/pg-{tag}" in fourth.stdout
    assert f"updated   s3-backup-storage/s3-{tag}" in fourth.stdout
    rotated = S3BackupStorage.load(f"s3-{tag}").credentials.aws_secret_access_key
    assert rotated.get_secret_value() == "rotated"


def test_a_block_name_prefect_rejects_is_found_before_anything_is_written(
    prefect_api, tmp_path, recipient
):
    from prefect_dbbackup.blocks import PostgresServer

    tag = uuid.uuid4().hex[:8]
    config = tmp_path / "dbbackup.yaml"
    config.write_text(
        f"servers:\n  ok-{tag}: {{type: postgres}}\n  Bad_Name/{tag}: {{type: postgres}}\n"
    )
    result = CliRunner().invoke(app, ["apply", str(config)])
    assert result.exit_code == 3, result.output
    assert f"cannot save block 'Bad_Name/{tag}'" in result.stderr
    assert f"ok-{tag}" not in _stamps(tag)
    try:
        PostgresServer.load(f"ok-{tag}")
    except ValueError:
        pass
    else:
        raise AssertionError("a block was saved before the bad name was found")


def test_apply_gives_a_deduplicating_storage_a_key_once_and_keeps_it(
    prefect_api, tmp_path, recipient
):
    """The key is made on the first apply and kept by every later one (a new key would
    silently start a new chunk namespace); it is never printed."""
    from prefect_dbbackup.blocks import LocalBackupStorage

    tag = uuid.uuid4().hex[:8]
    config = tmp_path / "dbbackup.yaml"
    config.write_text(
        f"storage:\n  dd-{tag}: {{type: local, path: {tmp_path / 'b'}, dedup: true}}\n"
        f"encryption:\n  en-{tag}: {{recipients: ['{recipient}']}}\n"
    )
    first = CliRunner().invoke(app, ["apply", str(config)])
    assert first.exit_code == 0, first.output
    key = LocalBackupStorage.load(f"dd-{tag}").dedup_key.get_secret_value()
    assert len(key) == 64 and key not in first.output
    second = CliRunner().invoke(app, ["apply", str(config)])
    assert f"unchanged local-backup-storage/dd-{tag}" in second.stdout, second.output
    assert LocalBackupStorage.load(f"dd-{tag}").dedup_key.get_secret_value() == key


def test_dedup_keygen_writes_a_private_key_file_a_storage_accepts(tmp_path):
    from prefect_dbbackup.blocks import LocalBackupStorage

    out = tmp_path / "keys" / "dedup.key"
    result = CliRunner().invoke(app, ["dedup-keygen", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.stat().st_mode & 0o777 == 0o600
    assert out.read_text().strip() not in result.output
    storage = LocalBackupStorage(path=str(tmp_path / "b"), dedup=True, dedup_key_file=str(out))
    assert storage.dedup_secret() == bytes.fromhex(out.read_text().strip())
    again = CliRunner().invoke(app, ["dedup-keygen", "-o", str(out)])
    assert again.exit_code != 0  # never overwrites a key without --force


def test_apply_refuses_numbers_out_of_range_with_exit_3_and_saves_nothing(prefect_api, tmp_path):
    """`dedup_grace_hours: 1e308` and a port of 99999999 used to be saved, then every
    prune died with a traceback: apply refuses them (exit 3, the fields named)."""
    from prefect_dbbackup.blocks import LocalBackupStorage

    tag = uuid.uuid4().hex[:8]
    config = tmp_path / "dbbackup.yaml"
    config.write_text(
        f"servers:\n  pg-{tag}: {{type: postgres, port: 99999999}}\n"
        f"storage:\n  st-{tag}: {{type: local, path: {tmp_path / 'b'}, dedup_grace_hours: 1e308}}\n"
    )
    result = CliRunner().invoke(app, ["apply", str(config)])
    assert result.exit_code == 3, result.output
    assert "port" in result.output and "Traceback" not in result.output
    config.write_text(
        f"storage:\n  st-{tag}: {{type: local, path: {tmp_path / 'b'}, dedup_grace_hours: .inf}}\n"
    )
    result = CliRunner().invoke(app, ["apply", str(config)])
    assert result.exit_code == 3 and "dedup_grace_hours" in result.output, result.output
    try:
        LocalBackupStorage.load(f"st-{tag}")
    except ValueError:
        pass
    else:
        raise AssertionError("apply saved a storage block with an infinite grace period")


def test_a_block_saved_with_a_value_out_of_range_is_a_configuration_error(env, tmp_path):
    """A block saved before the bounds existed (or in the UI) fails to load with exit 3
    naming the field, not with a traceback on every run."""
    from prefect_dbbackup.blocks import LocalBackupStorage

    name = f"bad-{uuid.uuid4().hex[:8]}"
    LocalBackupStorage.model_construct(
        path=str(tmp_path / "b"), dedup=True, dedup_grace_hours=1e308, dedup_fence_hours=20
    ).save(name)
    for command in (["prune", env.pg, "--storage", name], ["list", env.pg, "--storage", name]):
        result = env.cli(*command)
        assert result.exit_code == 3, result.output
        assert "dedup_grace_hours" in result.output and name in result.output, result.output
        assert "Traceback" not in result.output
