"""The manifest: the record that makes a backup exist. Written last, read first."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

from prefect_dbbackup.blocks.binlog import BinlogPosition
from prefect_dbbackup.blocks.engines import ENGINES, BackupKind, EngineName
from prefect_dbbackup.blocks.properties import DatabaseProperties
from pydantic import BaseModel, Field, model_validator

FORMAT_VERSION = 1
CHUNK_ID = re.compile(r"[0-9a-f]{64}")


class StreamStats(BaseModel):
    """Byte counts and hash of one dump stream."""

    raw_bytes: int
    compressed_bytes: int
    stored_bytes: int
    sha256: str = Field(description="of the stored object; of a chunked backup: its stream_hmac")


class ChunkList(BaseModel):
    """The chunks of a deduplicated backup, in stream order (docs/dedup.md)."""

    key_id: str = Field(description="names the storage's dedup key the ids are keyed with")
    chunker: dict[str, str | int]
    id: Literal["hmac-sha256"] = "hmac-sha256"
    raw_bytes: int
    stream_hmac: str = Field(description="HMAC-SHA256 of the whole plaintext stream (hex)")
    new: int = Field(description="chunks this backup uploaded")
    reused: int = Field(description="chunks already stored that this backup names")
    new_stored_bytes: int
    order: list[tuple[str, int]] = Field(description="[chunk id, plaintext length] in order")
    stored_sizes: list[int] | None = Field(
        default=None,
        description="bytes of each chunk of order as stored when this backup found or wrote "
        "it; the next backup of the series stores again a chunk whose size changed "
        "(None: written before sizes were recorded)",
    )

    @model_validator(mode="after")
    def _lengths_add_up(self) -> ChunkList:
        if sum(length for _, length in self.order) != self.raw_bytes:
            raise ValueError("chunk lengths do not add up to raw_bytes")
        if self.stored_sizes is not None and len(self.stored_sizes) != len(self.order):
            raise ValueError("stored_sizes and order differ in length")
        if not all(CHUNK_ID.fullmatch(cid) for cid, _ in self.order):
            raise ValueError("a chunk id is not 64 hex digits")
        return self


class MadeBy(BaseModel):
    """Who made a stored record: the format, dbbackup's version, the server and the client
    tool (the first fields of every manifest, in this order)."""

    format_version: int = FORMAT_VERSION
    tool_version: str
    server: str
    server_type: EngineName
    server_version: str
    client: str
    client_version: str


class Manifest(MadeBy):
    """Everything needed to find, check and restore one backup."""

    database: str
    backup_id: str
    kind: BackupKind = "database"
    started_at: datetime
    finished_at: datetime
    object_name: str
    dump_format: Literal["pg_custom", "sql"]
    format: Literal["object", "chunks-v1"] = Field(
        default="object", description="object: one encrypted file; chunks-v1: chunks (dedup)"
    )
    chunks: ChunkList | None = None
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
    binlog: BinlogPosition | None = Field(
        default=None,
        description="pitr (MariaDB): the binlog position of the dump's snapshot (docs/pitr.md)",
    )

    @model_validator(mode="after")
    def _known_create_options(self) -> Manifest:
        ENGINES[self.server_type].check_create_options(self.create_options)
        if (self.format == "chunks-v1") != (self.chunks is not None):
            raise ValueError(f"format {self.format} with{'out' * (self.chunks is None)} chunks")
        return self

    @property
    def chunked(self) -> bool:
        """Whether the backup is stored as deduplicated chunks (no object of its own)."""
        return self.chunks is not None

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
