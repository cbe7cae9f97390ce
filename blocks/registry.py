"""Load blocks by name, with errors that say what to do."""

from __future__ import annotations

import difflib

import httpx
from prefect.blocks.core import Block
from prefect.client.orchestration import get_client
from prefect_dbbackup.blocks.encryption import AgeEncryption
from prefect_dbbackup.blocks.mysql import MySQLServer
from prefect_dbbackup.blocks.postgres import PostgresServer
from prefect_dbbackup.blocks.s3 import S3BackupStorage
from prefect_dbbackup.blocks.server import DatabaseServer
from prefect_dbbackup.blocks.storage import BackupStorage, LocalBackupStorage
from prefect_dbbackup.tasks.errors import ConfigError

SERVER_TYPES: tuple[type[DatabaseServer], ...] = (PostgresServer, MySQLServer)
STORAGE_TYPES: tuple[type[BackupStorage], ...] = (LocalBackupStorage, S3BackupStorage)


def _load_one_of(name: str, types: tuple[type[Block], ...], what: str) -> Block:
    found = []
    for block_type in types:
        try:
            found.append(block_type.load(name))
        except ValueError:
            continue
    slugs = " or ".join(t.get_block_type_slug() for t in types)
    if not found:
        close = difflib.get_close_matches(name, _names_of(types), n=3)
        hint = f"did you mean {' or '.join(map(repr, close))}? Otherwise c" if close else "C"
        raise ConfigError(
            f"no {what} block named {name!r} (types {slugs}). {hint}reate it with "
            "`dbbackup apply CONFIG` or in the Prefect UI"
        )
    if len(found) > 1:
        raise ConfigError(f"{name!r} names several {what} blocks ({slugs}): rename one")
    return found[0]


def _names_of(types: tuple[type[Block], ...]) -> list[str]:
    """The names of the existing blocks of these types (for a 'did you mean')."""
    names: list[str] = []
    with get_client(sync_client=True) as client:
        for block_type in types:
            try:
                docs = client.read_block_documents_by_type(block_type.get_block_type_slug())
            except httpx.HTTPStatusError:
                continue  # the type was never registered: no names
            names += [d.name for d in docs if d.name and not d.is_anonymous]
    return names


def load_server(name: str) -> DatabaseServer:
    """The postgres-server or mysql-server block with this name."""
    return _load_one_of(name, SERVER_TYPES, "database server")  # type: ignore[return-value]


def load_storage(name: str) -> BackupStorage:
    """The backup storage block with this name."""
    return _load_one_of(name, STORAGE_TYPES, "backup storage")  # type: ignore[return-value]


def load_encryption(name: str) -> AgeEncryption:
    """The age-encryption block with this name."""
    return _load_one_of(name, (AgeEncryption,), "age-encryption")  # type: ignore[return-value]
