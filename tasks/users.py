"""Users, roles and grants: the `_globals` series of a server.

Backup: the server block writes its accounts as SQL (pg_dumpall --roles-only,
or SHOW CREATE USER / SHOW GRANTS), the accounts the block selects are kept,
and the script goes through the same zstd -> age -> spool path as a database
dump; tasks.backup.store_with_retries stores it, manifest last, under
{server}/_globals/{backup_id}/.

Restore: the stored script is checked against its manifest, decrypted in
memory (it is small), filtered (--user) and replayed one statement at a
time, idempotently. Passwords and hashes are masked in everything shown.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

from prefect import task
from prefect.cache_policies import NONE
from prefect_dbbackup.blocks.encryption import AgeEncryption
from prefect_dbbackup.blocks.errors import (
    BackupNotFound,
    DbBackupError,
    ReportedFailure,
    redact,
)
from prefect_dbbackup.blocks.server import DatabaseServer, Skip
from prefect_dbbackup.blocks.storage import BackupStorage
from prefect_dbbackup.blocks.users_sql import (
    Statement,
    UsersSql,
    matches,
    render,
    select_statements,
)
from prefect_dbbackup.tasks.backup import (
    BackupRun,
    DumpResult,
    DumpSource,
    StoredBackup,
    _retry_if_transient,
    store_with_retries,
)
from prefect_dbbackup.tasks.catalog import (
    find_backup,
    list_backups,
    require_named_for_unsigned,
)
from prefect_dbbackup.tasks.layout import GLOBALS_SEGMENT, MANIFEST_NAME, backup_key
from prefect_dbbackup.tasks.logs import run_logger
from prefect_dbbackup.tasks.manifest import Manifest
from prefect_dbbackup.tasks.restore import decrypt_errors, open_checked
from prefect_dbbackup.tasks.spool import spool_path, spooling, write_spool
from prefect_dbbackup.tasks.stream import decrypt_stream
from pydantic import BaseModel


def users_note(manifest: Manifest) -> str | None:
    """What an operator must know about a globals backup (passwords left out)."""
    if "--no-role-passwords" in manifest.dump_options:
        return "login is not a superuser: role passwords not backed up (--no-role-passwords)"
    return None


def dump_users(run: BackupRun) -> DumpResult:
    """Write the server's selected users/roles and grants into an encrypted spool file."""
    server, server_name = run.server, run.server_name
    log = run_logger()
    recipients = run.encryption.recipient_keys()
    started = datetime.now(UTC)
    dump = server.users_script(run.workdir)
    statements = select_statements(
        server.engine.users_sql.parse_script(dump.script), None, server.account_selected
    )
    accounts = sorted({s.subject for s in statements if s.subject})
    script = render(
        statements, f"users/roles of {server_name} ({server.server_version()}), {run.backup_id}"
    )
    spool = spool_path(run.workdir, "globals", GLOBALS_SEGMENT, run.backup_id)
    with spooling(spool, "the users/roles"):
        stats = write_spool(
            io.BytesIO(script.encode()),
            spool,
            recipients,
            level=run.zstd_level,
            threads=run.threads,
        )
    if dump.note:
        log.warning("users/roles of %s: %s", server_name, dump.note)
    log.info(
        "backed up %d users/roles of %s (%d statements)",
        len(accounts),
        server_name,
        len(statements),
    )
    source = DumpSource(started, server.server_version(), dump.client, dump.client_version)
    manifest = run.manifest(
        GLOBALS_SEGMENT,
        source,
        stats,
        kind="globals",
        dump_format="sql",
        dump_options=dump.options,
    )
    return DumpResult(spool=str(spool), manifest=manifest)


def find_users_backup(
    storage: BackupStorage,
    server: str,
    backup_id: str = "latest",
    at_or_before: bool = False,
    *,
    allow_unsigned: bool = False,
) -> Manifest:
    """A users/roles backup: by id, the newest, or (at_or_before) the newest not after backup_id.

    backup ids sort by time, so the globals taken with (or before) a database
    backup are the ones that match it. Only signed manifests (tasks/catalog.py) count;
    allow_unsigned accepts an unsigned one only by its exact id, never as the newest.
    """
    require_named_for_unsigned(server, GLOBALS_SEGMENT, backup_id, allow_unsigned)
    if backup_id != "latest":
        named = storage.exists(
            backup_key(server, GLOBALS_SEGMENT, backup_id, MANIFEST_NAME, "globals")
        )
        if named and (allow_unsigned or not at_or_before):
            return find_backup(
                storage,
                server,
                GLOBALS_SEGMENT,
                backup_id,
                kind="globals",
                allow_unsigned=allow_unsigned,
            )
        if not at_or_before:
            raise BackupNotFound(
                f"no users/roles backup {backup_id} of {server!r} in {storage.describe()}: "
                f"`dbbackup list {server}` shows the _globals backups"
            )
    listed = list_backups(storage, server, kind="globals", latest=backup_id == "latest")
    found = [m for m in listed if backup_id == "latest" or m.backup_id <= backup_id]
    if not found:
        which = "" if backup_id == "latest" else f" at or before {backup_id}"
        raise BackupNotFound(f"no users/roles backup{which} of {server!r} in {storage.describe()}")
    return found[-1]


class UsersResult(BaseModel):
    """What a users/roles restore did (statements masked: no password or hash)."""

    server: str
    backup_id: str
    dry_run: bool
    accounts: list[str]
    statements: list[str]
    applied: int = 0
    unchanged: int = 0  # already in force on the target: not run
    skipped: list[str] = []
    refused: list[str] = []  # among skipped: the restoring login may not run them
    note: str | None = None


class UsersPartlyRestored(ReportedFailure):
    """Some users/roles statements were refused to the restoring login; the rest applied.

    `report` is what did happen (the users restore's result, or the whole restore's when it
    ran with --with-users), so that it can still be shown."""

    exit_code = 1


def read_users(
    storage: BackupStorage,
    encryption: AgeEncryption,
    manifest: Manifest,
    workdir: Path,
    identity_file: str | None = None,
) -> str:
    """The decrypted script of a users/roles backup, after the size and sha256 check."""
    what = f"users/roles backup {manifest.backup_id} of {manifest.server}"
    identities = encryption.identities(identity_file)
    plain = io.BytesIO()
    with (
        open_checked(storage, manifest, workdir, what) as f,
        decrypt_errors(what, manifest, identities),
    ):
        decrypt_stream(f, lambda: plain, identities)
    return plain.getvalue().decode()


def replay_users(
    server: DatabaseServer,
    storage: BackupStorage,
    encryption: AgeEncryption,
    manifest: Manifest,
    workdir: Path,
    *,
    users: list[str] | None = None,
    dry_run: bool = False,
    identity_file: str | None = None,
) -> UsersResult:
    """Replay a users/roles backup into server: every account, or only `users`.

    Idempotent: existing accounts are updated (ALTER), never duplicated; grants
    are added, never revoked. The login the restore runs as is left alone.
    """
    log = run_logger()
    server.engine.check_restorable(manifest)
    sql = server.engine.users_sql
    script = read_users(storage, encryption, manifest, workdir, identity_file)
    statements = select_statements(sql.parse_script(script), users, lambda _: True)
    accounts = sorted({s.subject for s in statements if s.subject})
    missing = [u for u in users or [] if not any(matches(s, [u]) for s in statements)]
    if missing:
        raise BackupNotFound(
            f"no account {', '.join(map(repr, missing))} in users/roles backup "
            f"{manifest.backup_id} of {manifest.server}"
        )
    me = server.current_login()
    if me in accounts:
        log.warning("leaving %s alone: it is the login this restore runs as", me)
        statements = [s for s in statements if s.subject != me]
        accounts.remove(me)
    result = UsersResult(
        server=manifest.server,
        backup_id=manifest.backup_id,
        dry_run=dry_run,
        accounts=accounts,
        statements=[sql.mask(s.text) for s in statements],
        note=users_note(manifest),
    )
    if dry_run:
        return result
    _replay(server, statements, sql, result)
    for line in result.skipped:
        (log.warning if line in result.refused else log.info)("skipped %s", line)
    summary = (
        f"{len(accounts)} users/roles from backup {manifest.backup_id} into {server.describe()}: "
        f"{result.applied} statements applied, {result.unchanged} already in force, "
        f"{len(result.skipped)} skipped"
    )
    if result.refused:
        raise UsersPartlyRestored(
            f"users/roles restore incomplete: {summary} ({len(result.refused)} refused to the "
            "login): "
            f"{'; '.join(result.skipped)}. Everything else was applied. Run restore-users again "
            "as a login that holds these privileges (and may grant them), or leave those "
            "accounts out with --user",
            result,
        )
    log.info("restored %s", summary)
    return result


def _replay(
    server: DatabaseServer, statements: list[Statement], sql: UsersSql, result: UsersResult
) -> None:
    """Run the statements not already in force; a refused one is skipped, and so are the
    later failures of its account (a user whose CREATE was refused cannot be granted to)."""
    in_force = server.account_statements()
    refused_accounts: set[str | None] = set()
    with server.replay_session() as run:
        for i, s in enumerate(statements):
            if s.text in in_force:
                result.unchanged += 1
                continue
            try:
                skip = run(s.text)
            except DbBackupError as exc:
                message = redact(str(exc), sql.secrets_of(s.text))
                if s.subject is None or s.subject not in refused_accounts:
                    raise type(exc)(
                        f"statement {i + 1} of {len(statements)} "
                        f"({first_words(s.text, sql)}) failed: {message}"
                    ) from None
                skip = Skip(f"an earlier statement of {s.subject} was refused: {message}", True)
            if skip is None:
                result.applied += 1
                continue
            line = f"{first_words(s.text, sql)}: {skip.reason}"
            result.skipped.append(line)
            if skip.denied:
                result.refused.append(line)
                refused_accounts.add(s.subject)


def first_words(statement: str, sql: UsersSql, limit: int = 80) -> str:
    """A short, masked form of a statement for messages."""
    text = " ".join(sql.mask(statement).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def back_up_users(
    server: DatabaseServer,
    server_name: str,
    encryption: AgeEncryption,
    storage: BackupStorage,
    workdir: Path,
    backup_id: str,
) -> StoredBackup:
    """Dump the server's users/roles and grants, then store them (one task run; the
    script is small: the block's zstd level, one thread)."""
    run = BackupRun(server, server_name, encryption, storage, workdir, backup_id, threads=1)
    return store_with_retries(storage, dump_users(run))


back_up_users_task = task(
    back_up_users,
    name="users",
    task_run_name="users-{server_name}",
    cache_policy=NONE,
    retries=1,
    retry_delay_seconds=30,
    retry_condition_fn=_retry_if_transient,
)

# no retries: like a database restore, rerun it by hand (it is idempotent)
restore_users_task = task(
    replay_users, name="restore-users", task_run_name="restore-users", cache_policy=NONE
)
