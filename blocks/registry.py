"""Load blocks by name, with errors that say what to do; a flow parameter that is a block
instance already is used as it is (the Python API: docs/python-api.md).

A block class is imported only when a block of its type is loaded: `dbbackup list` on a
local storage never imports boto3/prefect-aws, and nothing here imports SQLAlchemy unless
a database server block is loaded.
"""

from __future__ import annotations

import difflib
import sys
from typing import TYPE_CHECKING

import httpx
from prefect.blocks.core import Block
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect_dbbackup.blocks.bounds import validation_problems
from prefect_dbbackup.blocks.errors import ConfigError
from prefect_dbbackup.blocks.kinds import BlockKind, Role, by_slug
from pydantic import ValidationError

if TYPE_CHECKING:
    from prefect_dbbackup.blocks.encryption import AgeEncryption
    from prefect_dbbackup.blocks.server import DatabaseServer
    from prefect_dbbackup.blocks.storage import BackupStorage


WHAT: dict[Role, str] = {
    "server": "database server",
    "storage": "backup storage",
    "encryption": "age-encryption",
}


def check_names(
    *, server: str | None = None, storage: str | None = None, encryption: str | None = None
) -> None:
    """ConfigError (with a did-you-mean) unless each block named here exists, is of its
    role and is the only one of that name: one request per role, no secret fetched. A
    command checks its blocks this way before any flow run exists (no Failed run for a
    typo)."""
    named: dict[Role, str | None] = {"server": server, "storage": storage, "encryption": encryption}
    for role, name in named.items():
        if name is not None:
            _slug_of(name, role)


def _load_one_of(name: str, role: Role) -> Block:
    what = WHAT[role]
    types = by_slug(role)
    try:
        return types[_slug_of(name, role)].block_class().load(name)
    except RuntimeError as exc:  # Prefect's wrapper of a ValidationError
        if not isinstance(exc.__cause__, ValidationError):
            raise
        raise ConfigError(
            f"the {what} block {name!r} holds a setting dbbackup refuses "
            f"({validation_problems(exc.__cause__)}): correct it in dbbackup.yaml and run "
            "`dbbackup apply` (docs/configuration.md, bounds)"
        ) from None


def _slug_of(name: str, role: Role) -> str:
    """The block type of the one block of this role with this name; ConfigError when there
    is none (with the closest names) or several."""
    what = WHAT[role]
    types = by_slug(role)
    with get_client(sync_client=True) as client:
        found = sorted(set(_slugs_named(client, name, types)))
    slugs = " or ".join(slug for slug, kind in types.items() if kind.exported)
    if not found:
        close = difflib.get_close_matches(name, _names_of(types), n=3)
        hint = f"did you mean {' or '.join(map(repr, close))}? Otherwise c" if close else "C"
        raise ConfigError(
            f"no {what} block named {name!r} (types {slugs}). {hint}reate it with "
            "`dbbackup apply CONFIG` or in the Prefect UI"
        )
    if len(found) > 1:
        raise ConfigError(
            f"{name!r} names several {what} blocks ({' and '.join(found)}): rename one"
        )
    return found[0]


def _slugs_named(client: SyncPrefectClient, name: str, types: dict[str, BlockKind]) -> list[str]:
    """The types among these that have a block with this name: one request for all of
    them (secrets are not fetched)."""
    response = client.request(
        "POST",
        "/block_documents/filter",
        json={
            "block_documents": {"name": {"any_": [name]}, "is_anonymous": {"eq_": False}},
            "block_types": {"slug": {"any_": list(types)}},
            "include_secrets": False,
        },
    )
    response.raise_for_status()
    return [doc["block_type"]["slug"] for doc in response.json() if doc.get("block_type")]


def _names_of(slugs: dict[str, BlockKind]) -> list[str]:
    """The names of the existing blocks of these types (for a 'did you mean')."""
    names: list[str] = []
    with get_client(sync_client=True) as client:
        for slug in slugs:
            try:
                docs = client.read_block_documents_by_type(slug, include_secrets=False)
            except httpx.HTTPStatusError:
                continue  # the type was never registered: no names
            names += [d.name for d in docs if d.name and not d.is_anonymous]
    return names


def server_names() -> list[str]:
    """The names of the database server blocks (of every engine)."""
    return _names_of(by_slug("server"))


def unknown_server(name: str, suggestions: list[str]) -> ConfigError:
    """The error for a server name that is neither a server block nor a series in storage."""
    close = difflib.get_close_matches(name, suggestions, n=3)
    hint = f"Did you mean {' or '.join(map(repr, close))}? " if close else ""
    return ConfigError(
        f"{name!r} is no server: no server block and no backups of that name. {hint}"
        "`dbbackup list` takes a server block's name (a series in the storage)"
    )


def _of_role(block: object, role: Role) -> bool:
    """Whether block is an instance of one of the role's block types (only the types whose
    module is loaded can have instances: no other block module is imported)."""
    loaded = tuple(
        kind.block_class()
        for kind in by_slug(role).values()
        if f"prefect_dbbackup.blocks.{kind.module}" in sys.modules
    )
    return isinstance(block, loaded)


def _resolved(block: str | Block, role: Role) -> Block:
    """The saved block of this role named `block`, or `block` itself (a block instance)."""
    if isinstance(block, str):
        return _load_one_of(block, role)
    if not _of_role(block, role):
        raise ConfigError(
            f"{role} must be a {WHAT[role]} block or a saved one's name, not {type(block).__name__}"
        )
    return block


def block_name(block: Block) -> str:
    """What run names, reports and storage keys call a block: the name it was saved or
    loaded under, else (an unsaved block) its describe(), e.g. `postgres@db1:5432`."""
    name = block._block_document_name
    return name if name and not block._is_anonymous else block.describe()  # type: ignore[attr-defined]


def name_of(block: str | Block) -> str:
    """A flow parameter's name: a block's name as passed, or the block_name of an instance."""
    return block if isinstance(block, str) else block_name(block)


def load_server(server: str | DatabaseServer) -> DatabaseServer:
    """The postgres-server or mysql-server block with this name (or the block passed)."""
    return _resolved(server, "server")  # type: ignore[return-value]


def load_storage(storage: str | BackupStorage) -> BackupStorage:
    """The backup storage block with this name (or the block passed)."""
    return _resolved(storage, "storage")  # type: ignore[return-value]


def load_encryption(encryption: str | AgeEncryption) -> AgeEncryption:
    """The age-encryption block with this name (or the block passed)."""
    return _resolved(encryption, "encryption")  # type: ignore[return-value]
