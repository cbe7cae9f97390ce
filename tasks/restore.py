"""Restoring one backup: check it, then stream decrypt -> decompress -> restore client."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import pyrage
from prefect import task
from prefect.cache_policies import NONE
from prefect_dbbackup.blocks.encryption import AgeEncryption, recipient_fingerprint
from prefect_dbbackup.blocks.errors import (
    AuthError,
    ConfigError,
    DbBackupError,
    DiskFull,
    IntegrityError,
    Interrupted,
    TargetExists,
    is_disk_full,
)
from prefect_dbbackup.blocks.process import ToolProcess, interrupted
from prefect_dbbackup.blocks.server import DatabaseServer, ToolCommand, staging_name
from prefect_dbbackup.blocks.storage import BackupStorage
from prefect_dbbackup.tasks.dedup.reader import chunk_stream
from prefect_dbbackup.tasks.layout import backup_key
from prefect_dbbackup.tasks.logs import Logger, run_logger
from prefect_dbbackup.tasks.manifest import Manifest
from prefect_dbbackup.tasks.stream import (
    ReplacingWriter,
    Writable,
    check_stored,
    copy_lazily,
    decrypt_stream,
)
from pydantic import BaseModel


class RestoreResult(BaseModel):
    """What was restored where."""

    server: str
    database: str
    backup_id: str
    target_database: str
    replaced: bool
    stored_bytes: int
    seconds: float
    skipped: list[str] = []  # database properties the target did not take, and why


def check_object(f: BinaryIO, manifest: Manifest, what: str) -> None:
    """Fail unless the stored object has the manifest's size and sha256."""
    hint = ". Restore an older backup (dbbackup list) and check the storage."
    check_stored(f, manifest.stats, what, "the manifest", hint)


@contextlib.contextmanager
def open_checked(
    storage: BackupStorage, manifest: Manifest, workdir: Path, what: str
) -> Iterator[BinaryIO]:
    """The backup's stored object, open for reading, once its size and sha256 match the
    manifest. Its key comes from the manifest's series and kind, never from free text."""
    key = backup_key(
        manifest.server,
        manifest.database,
        manifest.backup_id,
        manifest.stored_object_name,
        manifest.kind,
    )
    with storage.open_read(key, workdir) as f:
        check_object(f, manifest, what)
        yield f


Feed = Callable[[Callable[[], Writable]], object]
"""Writes a backup's whole plaintext into the sink it opens (at the first byte); can be
called again for a second load."""


@contextlib.contextmanager
def plaintext_feed(
    storage: BackupStorage,
    manifest: Manifest,
    workdir: Path,
    what: str,
    identities: list[pyrage.x25519.Identity],
) -> Iterator[Feed]:
    """The plaintext of a backup, whole object or chunks, checked on the way."""
    if manifest.chunked:

        def from_chunks(open_sink: Callable[[], Writable]) -> None:
            with chunk_stream(storage, manifest, identities, what) as reader:
                copy_lazily(reader, open_sink)

        yield from_chunks
        return
    with open_checked(storage, manifest, workdir, what) as f:

        def from_object(open_sink: Callable[[], Writable]) -> None:
            f.seek(0)
            decrypt_stream(f, open_sink, identities)

        yield from_object


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
    jobs: int = 1,
) -> RestoreResult:
    """Restore one backup into target. Nothing touches target until the backup checks out."""
    log = run_logger()
    what = f"backup {manifest.backup_id} of {manifest.database!r} ({manifest.server})"
    server.engine.check_restorable(manifest)
    identities = encryption.identities(identity_file)
    exists = _check_target(server, manifest, target, replace, jobs)
    started = datetime.now(UTC)
    skipped: list[str] = []
    state = _StopState(server, target, manifest.backup_id, exists)
    with _stopped_says(state), plaintext_feed(storage, manifest, workdir, what, identities) as feed:

        def load(into: str) -> None:
            loader = _TargetLoader(server, into, manifest, workdir, log)
            skipped[:] = _load(loader, feed, what, identities, jobs)

        if exists:
            _replace(server, state, load, log)
        else:
            load(target)
    return RestoreResult(
        server=manifest.server,
        database=manifest.database,
        backup_id=manifest.backup_id,
        target_database=target,
        replaced=exists,
        stored_bytes=manifest.stats.stored_bytes,
        seconds=(datetime.now(UTC) - started).total_seconds(),
        skipped=skipped,
    )


def existing_target(server: DatabaseServer, target: str) -> TargetExists:
    """The refusal of a restore onto an existing database without replace."""
    return TargetExists(
        f"database {target!r} already exists on {server.describe()}: restore with "
        "--into NEW_NAME, or pass --replace to drop and replace it"
    )


def _check_target(
    server: DatabaseServer, manifest: Manifest, target: str, replace: bool, jobs: int
) -> bool:
    """Whether target exists, once the restore may go on: replace for an existing target,
    jobs the engine can run, a client fit for the target and the backup."""
    exists = server.database_exists(target)
    if exists and not replace:
        raise existing_target(server, target)
    if jobs > 1 and not server.engine.parallel_restore:
        raise ConfigError(f"--jobs: {server.engine.name} restores run one client, not in parallel")
    # a client fit for the target and the backup, before the target is touched
    if note := server.check_clients(manifest.client_version):
        run_logger().info(note)
    return exists


def _load(
    loader: _TargetLoader,
    feed: Feed,
    what: str,
    identities: list[pyrage.x25519.Identity],
    jobs: int,
) -> list[str]:
    """Load the backup into the loader's target, then its database properties; what the
    target did not take. A failure (Ctrl-C and cancellation too) drops a target it created
    and is re-raised as is."""
    try:
        with decrypt_errors(what, loader.manifest, identities):
            if jobs > 1:
                _restore_from_archive(feed, loader, loader.workdir, jobs)
            else:
                with contextlib.ExitStack() as stack:
                    feed(lambda: loader.open_stream(stack))
        return loader.apply_properties()
    except BaseException:  # Ctrl-C and cancellation too: cleaned up, re-raised as is
        loader.drop_if_created()
        raise


@contextlib.contextmanager
def decrypt_errors(
    what: str, manifest: Manifest, identities: list[pyrage.x25519.Identity]
) -> Iterator[None]:
    """Turn age failures into errors that say what to do."""
    try:
        yield
    except pyrage.DecryptError:
        mine = ", ".join(recipient_fingerprint(str(i.to_public())) for i in identities)
        raise AuthError(
            f"{what} cannot be decrypted with this identity (recipient {mine}); it was "
            f"encrypted to {', '.join(manifest.recipients)}. Use the matching identity file."
        ) from None
    except OSError as exc:
        if is_disk_full(exc):
            raise DiskFull(
                f"no space left while decrypting {what} into the work dir: set "
                "DBBACKUP_WORK_DIR to a disk with room for the uncompressed dump (or drop --jobs)"
            ) from None
        raise IntegrityError(f"{what} failed to decrypt: {exc}") from None


class _TargetLoader:
    """Creates the target database at the last moment and feeds the restore client."""

    def __init__(
        self,
        server: DatabaseServer,
        target: str,
        manifest: Manifest,
        workdir: Path,
        log: Logger,
    ) -> None:
        self.server, self.target = server, target
        self.manifest, self.workdir, self.log = manifest, workdir, log
        self.created = False

    def _create(self) -> None:
        self.server.create_database(self.target, self.manifest.create_options)
        self.created = True

    def _process(self, cmd: ToolCommand, stdin: bool) -> ToolProcess:
        return cmd.process(self.server.dump_timeout, stdin=stdin)

    def open_stream(self, stack: contextlib.ExitStack) -> BinaryIO | ReplacingWriter:
        """Create the target and start a client reading the dump on stdin."""
        cmd = stack.enter_context(self.server.restore_command(self.target, self.workdir))
        self._create()
        stdin = stack.enter_context(self._process(cmd, stdin=True)).stdin
        rewrite = self.server.restore_rewrite(self.manifest.database, self.target)
        if rewrite is None:
            return stdin
        writer = ReplacingWriter(stdin, *rewrite)
        # on success, write out the held-back tail before stdin is closed
        stack.push(lambda exc_type, *_: None if exc_type else writer.finish())
        return writer

    def load_archive(self, archive: Path, jobs: int) -> None:
        """Create the target and restore a plain archive file with parallel jobs."""
        with self.server.restore_command(self.target, self.workdir, archive, jobs) as cmd:
            self._create()
            with self._process(cmd, stdin=False):
                pass

    def apply_properties(self) -> list[str]:
        """Give the loaded target the database's own properties (comment, settings,
        privileges) recorded in the manifest; log and return what it did not take."""
        recorded = self.manifest.database_properties
        if recorded is None:  # a manifest from before they were recorded, or none to record
            return []
        skipped = self.server.apply_database_properties(self.target, recorded)
        for reason in skipped:
            self.log.warning("restore into %r: skipped %s", self.target, reason)
        return skipped

    def drop_if_created(self) -> None:
        """Drop a target this restore created (it is incomplete). Called while an error is
        on its way: a failure to drop is logged, so that error is the one raised."""
        if self.created:
            self.log.warning("restore into %r failed: dropping the partial database", self.target)
            try:
                self.server.drop_database(self.target)
            except Exception as exc:
                self.log.error("could not drop the partial database %r: %s", self.target, exc)


class RestoreStopped(Interrupted):
    """A restore stopped by a signal; its message says what the databases hold now."""


@dataclass
class _StopState:
    """Where a restore is, to tell what a stop leaves behind (the databases are looked at)."""

    server: DatabaseServer
    target: str
    backup_id: str
    replacing: bool
    staging: str = ""  # staging_name(target) unless given
    phase: str = "staging"  # --replace: "staging", then "swap" or "reload", then "cleanup"

    def __post_init__(self) -> None:
        self.staging = self.staging or staging_name(self.target)

    def describe(self) -> str:
        """What exists now and what to do, checked against the server."""
        exists = self.server.database_exists
        target, staging = repr(self.target), repr(self.staging)
        if not self.replacing:
            if exists(self.target):
                return f"{target} is only partly restored (dropping it failed): drop it"
            return f"nothing was restored into {target} (the partly restored database was dropped)"
        if self.phase == "staging":
            left = exists(self.staging)
            return f"nothing was restored into {target}: it is unchanged" + (
                f"; a partial staging copy {staging} is left: drop it" if left else ""
            )
        if self.phase == "swap":
            return self._describe_swap()
        again = (
            f"restore backup {self.backup_id} into {target} again (without --replace), "
            f"then drop {staging}"
        )
        if self.phase == "reload" and exists(self.target):
            return (
                f"{target} was dropped to be replaced and is only partly restored; a complete "
                f"restored copy is in {staging}. Drop {target}, then {again}"
            )
        if self.phase == "reload":
            return (
                f"{target} was dropped to be replaced and does not exist now; a complete restored "
                f"copy is in {staging}: use it as it is, or {again}"
            )
        return f"{target} is restored; drop the staging copy {staging} left behind"

    def _describe_swap(self) -> str:
        exists = self.server.database_exists
        target, staging, old = repr(self.target), repr(self.staging), repr(self.staging + "_old")
        if exists(self.staging) and exists(self.target):
            return (
                f"{target} is unchanged; a complete restored copy is in {staging}: run the "
                f"restore with --replace again, then drop {staging}"
            )
        if exists(self.staging):
            return (
                f"{target} does not exist now: the old database is {old}, the complete restored "
                f"copy is {staging}; rename {staging} to {target}, then drop {old}"
            )
        if exists(self.staging + "_old"):
            return f"{target} is the restored copy; the old database is left as {old}: drop it"
        return f"{target} is replaced by the restored copy"


@contextlib.contextmanager
def _stopped_says(state: _StopState) -> Iterator[None]:
    """A stop (Ctrl-C, SIGTERM) becomes a RestoreStopped saying what the databases hold."""
    try:
        yield
    except DbBackupError as exc:
        if (reason := interrupted()) is None:
            raise
        try:
            now = state.describe()
        except DbBackupError as unknown:
            now = (
                f"what {state.target!r} and {state.staging!r} hold now could not be checked "
                f"({unknown}): look before using them"
            )
        raise RestoreStopped(f"{reason}: {now}") from exc


def _replace(
    server: DatabaseServer, state: _StopState, load: Callable[[str], None], log: Logger
) -> None:
    """Replace an existing database only once the backup has restored completely.

    The backup goes into a staging database first; a failure there leaves the
    target untouched. PostgreSQL then swaps names; MySQL/MariaDB cannot rename
    a database, so the target is dropped and loaded a second time, and if that
    fails the staging copy is kept and named in the error. state follows the steps.
    """
    target, staging = state.target, state.staging
    load(staging)
    if server.engine.supports_rename:
        state.phase = "swap"
        with _explained(
            log,
            f"the backup restored into {staging!r} but swapping it into {target!r} failed",
            f"Check which of {target!r}, {staging!r} and {staging + '_old'!r} exist.",
        ):
            server.swap_database(staging, target)
        log.info("replaced %r with the restored copy", target)
        return
    log.warning("dropping %r to replace it with the restored backup", target)
    state.phase = "reload"
    server.drop_database(target)
    with _explained(
        log,
        f"restoring into {target!r} failed after it was dropped",
        f"A complete restored copy is in database {staging!r}",
    ):
        load(target)
    state.phase = "cleanup"
    server.drop_database(staging)


@contextlib.contextmanager
def _explained(log: Logger, failed: str, state: str) -> Iterator[None]:
    """An error inside becomes a DbBackupError saying `failed: error. state`; a stop (Ctrl-C,
    SIGTERM, Prefect cancellation) is raised unchanged, with `state` logged."""
    try:
        yield
    except BaseException as exc:
        if isinstance(exc, Exception) and not isinstance(exc, Interrupted):
            raise DbBackupError(f"{failed}: {exc}. {state}") from exc
        log.error("%s: the run was stopped. %s", failed, state)
        raise


def _restore_from_archive(feed: Feed, loader: _TargetLoader, workdir: Path, jobs: int) -> None:
    """pg_restore --jobs needs a seekable file: decrypt into the private work dir first."""
    archive = workdir / "restore.pgc"
    fd = os.open(archive, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as plain:
            feed(lambda: plain)
        loader.load_archive(archive, jobs)
    finally:
        archive.unlink(missing_ok=True)


# no retries: a restore that failed midway has dropped its partial target; rerun it by hand
restore_task = task(
    restore_backup, name="restore", task_run_name="restore-{target}", cache_policy=NONE
)
