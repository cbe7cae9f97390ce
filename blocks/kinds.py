"""The block types of dbbackup, each named once.

One record per block type: its role, Prefect block type slug, module and class, and the
`type:` a dbbackup.yaml gives it. The lazy exports of `prefect_dbbackup.blocks`, loading a
block by name (`blocks/registry.py`) and the kinds `dbbackup apply` accepts
(`flows/config.py`) all derive from `KINDS`. Nothing here imports a block module: a class
is imported when it is first used (the S3 storage pulls in boto3 and prefect-aws, the
servers SQLAlchemy).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from prefect.blocks.core import Block

Role = Literal["server", "storage", "encryption"]


@dataclass(frozen=True)
class BlockKind:
    """One block type: where its class lives and the names it goes by."""

    role: Role
    slug: str  # the Prefect block type slug (the class's `_block_type_slug`)
    module: str  # the module under prefect_dbbackup.blocks that defines the class
    class_name: str
    config_name: str | None = None  # `type:` in dbbackup.yaml; None: not written in a config
    exported: bool = True  # exported by prefect_dbbackup.blocks (`prefect block register -m`)

    def block_class(self) -> type[Block]:
        """The block class (importing its module on first use)."""
        return getattr(import_module(f"prefect_dbbackup.blocks.{self.module}"), self.class_name)


KINDS: tuple[BlockKind, ...] = (
    BlockKind("server", "postgres-server", "postgres", "PostgresServer", "postgres"),
    BlockKind("server", "mysql-server", "mysql", "MySQLServer", "mysql"),
    BlockKind("storage", "local-backup-storage", "local_storage", "LocalBackupStorage", "local"),
    BlockKind("storage", "s3-backup-storage", "s3", "S3BackupStorage", "s3"),
    # fast tests only: loadable by name, but neither exported nor a config kind, since
    # nothing it holds outlives the process (docs/architecture.md, "Memory storage")
    BlockKind("storage", "memory-backup-storage", "memory", "MemoryBackupStorage", exported=False),
    # the config's `encryption:` section holds only this kind: it has no `type:`
    BlockKind("encryption", "age-encryption", "encryption", "AgeEncryption"),
)


def by_slug(role: Role) -> dict[str, BlockKind]:
    """The kinds of a role by block type slug, in table order."""
    return {k.slug: k for k in KINDS if k.role == role}


def by_config_name(role: Role) -> dict[str, BlockKind]:
    """The kinds of a role a dbbackup.yaml may name, by their `type:`."""
    return {k.config_name: k for k in KINDS if k.role == role and k.config_name}


def exported_modules() -> dict[str, str]:
    """Module of each exported block class, by class name."""
    return {k.class_name: k.module for k in KINDS if k.exported}
