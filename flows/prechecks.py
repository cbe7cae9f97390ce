"""Input errors found before a flow run exists: a typo makes no Failed run in the UI.

The blocks' names are checked by blocks/registry.check_names; these are the checks that
need the server or the storage. Each refuses only what is certainly an input error (a
database that is not on a server that answered, a target that exists, a backup that is not
in the storage); a server or storage that cannot be reached now is left to the run, which
reports it where on-call looks and retries it.
"""

from __future__ import annotations

from prefect_dbbackup.blocks.errors import (
    BackupNotFound,
    ConfigError,
    DatabaseNotFound,
    DbBackupError,
)
from prefect_dbbackup.blocks.registry import load_server, load_storage
from prefect_dbbackup.blocks.server import DatabaseServer
from prefect_dbbackup.tasks.catalog import find_backup
from prefect_dbbackup.tasks.restore import existing_target

PROBE_SECONDS = 3  # connect timeout of a check: an unreachable server is the run's to report


def _probe(server: str) -> DatabaseServer:
    """The server block, with a short connect timeout for a check."""
    srv = load_server(server)
    return srv.model_copy(update={"connect_timeout": min(srv.connect_timeout, PROBE_SECONDS)})


def databases_on_server(server: str, databases: list[str] | None) -> None:
    """DatabaseNotFound (exit 3) when a requested database is not on the server."""
    if not databases:
        return
    try:
        _probe(server).select_databases(databases)
    except DatabaseNotFound:
        raise
    except DbBackupError:
        pass  # unreachable now, a rejected login...: the run reports (and retries) it


def restore_inputs(
    server: str,
    database: str,
    *,
    storage: str,
    target: str,
    replace: bool,
    backup_id: str,
    source_server: str | None,
    allow_unsigned: bool,
) -> None:
    """BackupNotFound when no such backup is in the storage, then TargetExists when the
    target exists without replace (both exit 3): the order the restore itself checks in."""
    try:
        find_backup(
            load_storage(storage),
            source_server or server,
            database,
            backup_id,
            allow_unsigned=allow_unsigned,
        )
    except (BackupNotFound, ConfigError):
        raise  # no such backup; --allow-unsigned without --backup-id
    except DbBackupError:
        pass  # a storage down now, a manifest refused...: the run reports it
    if not replace:
        srv = _probe(server)
        try:
            exists = srv.database_exists(target)
        except DbBackupError:
            exists = False  # unreachable now...: the run reports (and retries) it
        if exists:
            raise existing_target(srv, target)
