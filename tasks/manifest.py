"""The manifest: the record that makes a backup exist. Written last, read first."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from prefect_dbbackup.blocks.engines import ENGINES, BackupKind, EngineName
from prefect_dbbackup.blocks.properties import DatabaseProperties
from pydantic import BaseModel, Field, model_validator

FORMAT_VERSION = 1


class StreamStats(BaseModel):
    """Byte counts and hash of one dump stream."""

    raw_bytes: int
    compressed_bytes: int
    stored_bytes: int
    sha256: str


class Manifest(BaseModel):
    """Everything needed to find, check and restore one backup."""

    format_version: int = FORMAT_VERSION
    tool_version: str
    server: str
    server_type: EngineName
    server_version: str
    client: str
    client_version: str
    database: str
    backup_id: str
    kind: BackupKind = "database"
    started_at: datetime
    finished_at: datetime
    object_name: str
    dump_format: Literal["pg_custom", "sql"]
    compression: str = "zstd"
    encryption: str = "age"
    stats: StreamStats
    recipients: list[str] = Field(description="sha256 fingerprints of the age recipients")
    dump_options: list[str] = Field(default_factory=list)
    create_options: dict[str, str] = Field(
        default_factory=dict, description="encoding/collation to recreate the database with"
    )
    tables: list[str] | None = Field(
        default=None, description="tables the dump has data of (None: taken before verify existed)"
    )
    row_counts: dict[str, int] | None = Field(
        default=None, description="PostgreSQL: exact rows per table in the dump's own snapshot"
    )
    database_properties: DatabaseProperties | None = Field(
        default=None, description="comment, settings, privileges of the database (PostgreSQL)"
    )

    @model_validator(mode="after")
    def _known_create_options(self) -> Manifest:
        ENGINES[self.server_type].check_create_options(self.create_options)
        return self

    @property
    def stored_object_name(self) -> str:
        """The name of the backup's object, fixed by its kind and engine."""
        return ENGINES[self.server_type].object_name(self.kind)

    @property
    def seconds(self) -> float:
        """Wall time of the dump."""
        return (self.finished_at - self.started_at).total_seconds()

    def to_bytes(self) -> bytes:
        """Serialised form stored next to the backup."""
        return self.model_dump_json(indent=2).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        """Parse a stored manifest."""
        return cls.model_validate_json(data)
