"""Restoring one backup: check it, then stream decrypt -> decompress -> restore client."""

from __future__ import annotations

import contextlib
import logging
from datetime import UTC, datetime
from pathlib import Path

import pyrage
from prefect import task
from prefect.cache_policies import NONE
from pydantic import BaseModel

from blocks.encryption import AgeEncryption
from blocks.server import DatabaseServer
from blocks.storage import BackupStorage
from tasks.errors import AuthError, ConfigError, IntegrityError, TargetExists
from tasks.layout import backup_key
from tasks.manifest import Manifest, recipient_fingerprint
from tasks.process import ToolProcess
from tasks.stream import decrypt_stream, file_sha256


class RestoreResult(BaseModel):
    """What was restored where."""

    server: str
    database: str
    backup_id: str
    target_database: str
    replaced: bool
    stored_bytes: int
    seconds: float


def check_object(f, manifest: Manifest, what: str) -> None:  # noqa: ANN001
    """Fail unless the stored object has the manifest's size and sha256."""
    size = f.seek(0, 2)
    expected = manifest.stats.stored_bytes
    if size != expected:
        raise IntegrityError(
            f"{what} is truncated or damaged: {size} bytes stored, the manifest says {expected}. "
            "Restore an older backup (dbbackup list) and check the storage."
        )
    f.seek(0)
    if file_sha256(f) != manifest.stats.sha256:
        raise IntegrityError(
            f"{what} is corrupted: its sha256 does not match the manifest. "
            "Restore an older backup (dbbackup list) and check the storage."
        )
    f.seek(0)


def restore_backup(
    server: DatabaseServer,
    storage: BackupStorage,
    encryption: AgeEncryption,
    manifest: Manifest,
    target: str,
    workdir: Path,
    *,
    replace: bool = False,
    identity_file: str | None = None,
    logger: logging.Logger | logging.LoggerAdapter | None = None,
) -> RestoreResult:
    """Restore one backup into target. Nothing touches target until the backup checks out."""
    log = logger or logging.getLogger(__name__)
    what = f"backup {manifest.backup_id} of {manifest.database!r} ({manifest.server})"
    if manifest.server_type != server.server_type:
        raise ConfigError(
            f"{what} is a {manifest.server_type} dump; it cannot be restored into a "
            f"{server.server_type} server"
        )
    identities = encryption.identities(identity_file)
    exists = server.database_exists(target)
    if exists and not replace:
        raise TargetExists(
            f"database {target!r} already exists on {server.describe()}: restore with "
            "--into NEW_NAME, or pass --replace to drop and replace it"
        )
    started = datetime.now(UTC)
    key = backup_key(manifest.server, manifest.database, manifest.backup_id, manifest.object_name)
    created = False
    with storage.open_read(key, workdir) as f:
        check_object(f, manifest, what)
        try:
            with contextlib.ExitStack() as stack:

                def open_target():  # noqa: ANN202
                    nonlocal created
                    if exists:
                        log.warning("dropping existing database %r to replace it", target)
                        server.drop_database(target)
                    server.create_database(target, manifest.create_options)
                    created = True
                    cmd = stack.enter_context(server.restore_command(target, workdir))
                    proc = stack.enter_context(
                        ToolProcess(
                            cmd.argv,
                            env=cmd.env,
                            timeout=server.dump_timeout,
                            stdin=True,
                            secrets=cmd.secrets,
                        )
                    )
                    return proc.stdin

                decrypt_stream(f, open_target, identities)
        except pyrage.DecryptError:
            mine = ", ".join(recipient_fingerprint(str(i.to_public())) for i in identities)
            raise AuthError(
                f"{what} cannot be decrypted with this identity (recipient {mine}); it was "
                f"encrypted to {', '.join(manifest.recipients)}. Use the matching identity file."
            ) from None
        except OSError as exc:
            _drop_if_created(server, target, created, log)
            raise IntegrityError(f"{what} failed to decrypt: {exc}") from None
        except BaseException:
            _drop_if_created(server, target, created, log)
            raise
    return RestoreResult(
        server=manifest.server,
        database=manifest.database,
        backup_id=manifest.backup_id,
        target_database=target,
        replaced=exists,
        stored_bytes=manifest.stats.stored_bytes,
        seconds=(datetime.now(UTC) - started).total_seconds(),
    )


def _drop_if_created(
    server: DatabaseServer, target: str, created: bool, log: logging.Logger | logging.LoggerAdapter
) -> None:
    if created:
        log.warning("restore into %r failed: dropping the partly restored database", target)
        server.drop_database(target)


@task(name="restore", task_run_name="restore-{target}", cache_policy=NONE)
def restore_task(
    server: DatabaseServer,
    storage: BackupStorage,
    encryption: AgeEncryption,
    manifest: Manifest,
    target: str,
    workdir: Path,
    replace: bool = False,
    identity_file: str | None = None,
) -> RestoreResult:
    """Prefect task: restore one backup (no retries: a restore is not idempotent midway)."""
    from prefect import get_run_logger

    return restore_backup(
        server,
        storage,
        encryption,
        manifest,
        target,
        workdir,
        replace=replace,
        identity_file=identity_file,
        logger=get_run_logger(),
    )
