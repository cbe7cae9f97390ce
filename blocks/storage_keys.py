"""The keys every storage block holds: the manifest signing key and the public keys trusted
to have signed (docs/security.md), and the dedup key with the settings of deduplicated
storage (docs/dedup.md). Where they come from (the block, or a key file it names), how they
are checked, and how a new dedup key is made."""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from prefect_dbbackup.blocks import signing
from prefect_dbbackup.blocks.bounds import MAX_HOURS, Hours
from prefect_dbbackup.blocks.errors import ConfigError
from pydantic import BaseModel, Field, SecretStr, model_validator


def new_dedup_key() -> str:
    """A new dedup key, as stored in a block or key file (64 hex digits)."""
    return secrets.token_hex(32)


def check_gc_hours(grace: float, fence: float) -> None:
    """ValueError unless (grace, fence) are usable chunk GC parameters (docs/dedup.md):
    finite, positive, at most MAX_HOURS, and the fence below the grace."""
    for name, hours in (("dedup_grace_hours", grace), ("dedup_fence_hours", fence)):
        if not isinstance(hours, int | float) or not 0 < hours <= MAX_HOURS:
            raise ValueError(f"{name} must be a number of hours in (0, {MAX_HOURS}]")
    if fence >= grace:
        raise ValueError(
            "dedup_fence_hours must be below dedup_grace_hours (docs/dedup.md): a chunk a "
            "backup relies on could be deleted"
        )


def _key_text(
    secret: SecretStr | None, file: str | None, field: str, what: str
) -> tuple[str, str] | None:
    """A key's text and where it came from (for messages): the block's field, else the file
    it names; None when neither is set (ConfigError: the file cannot be read)."""
    if secret is not None:
        return secret.get_secret_value(), field
    if not file:
        return None
    path = Path(file).expanduser()
    source = f"{what} file {path}"
    try:
        return path.read_text(), source
    except OSError as exc:
        raise ConfigError(f"cannot read {source}: {exc.strerror}") from None


class StorageKeys(BaseModel):
    """The key fields of a storage block (a base of BackupStorage, listed first)."""

    if TYPE_CHECKING:  # BackupStorage's: where the storage is, for messages

        def describe(self) -> str: ...

    manifest_signing_key: SecretStr | None = Field(
        default=None,
        description="Ed25519 key (PEM) that signs the manifests of new backups; backup "
        "workers need it. `dbbackup signing-keygen -o FILE` creates one.",
    )
    manifest_signing_key_file: str | None = Field(
        default=None,
        description="Path to the signing key file, used when manifest_signing_key is empty.",
    )
    manifest_verify_keys: list[str] = Field(
        default_factory=list,
        description="Public keys (dbbackup-ed25519:...) whose manifest signatures are trusted; "
        "several for key rotation. Empty: the signing key's own public key.",
    )

    dedup: bool = Field(
        default=False,
        description="Store new database backups as deduplicated chunks, each compressed and "
        "encrypted on its own (docs/dedup.md). Existing backups stay readable either way.",
    )
    dedup_key: SecretStr | None = Field(
        default=None,
        description="The storage's dedup key (64 hex digits): every writer of a deduplicating "
        "storage needs it. `dbbackup apply` makes one; `dbbackup dedup-keygen` writes one.",
    )
    dedup_key_file: str | None = Field(
        default=None, description="Path to the dedup key file, used when dedup_key is empty."
    )
    dedup_grace_hours: Hours = Field(
        default=24,
        gt=0,
        description="Chunks a prune sets aside are deleted by a prune at least this long "
        "after (docs/dedup.md, garbage collection). Stored once in the storage by its first "
        "writer: a block whose value differs gets a warning, the storage's value wins.",
    )
    dedup_fence_hours: Hours = Field(
        default=20,
        gt=0,
        description="A backup that took longer than this between finding its chunks and "
        "writing its manifest checks them again. Below dedup_grace_hours; stored once in "
        "the storage, like it.",
    )

    @model_validator(mode="after")
    def _fence_below_grace(self) -> StorageKeys:
        check_gc_hours(self.dedup_grace_hours, self.dedup_fence_hours)
        return self

    def dedup_secret(self) -> bytes | None:
        """The 32-byte dedup key, or None when the block has none (ConfigError: malformed)."""
        found = _key_text(self.dedup_key, self.dedup_key_file, "dedup_key", "dedup key")
        if found is None:
            return None
        text, source = found
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
        if len(lines) != 1 or not re.fullmatch(r"[0-9a-f]{64}", lines[0]):
            raise ConfigError(
                f"{source} of storage {self.describe()} is not a dedup key (64 hex digits); "
                "`dbbackup dedup-keygen -o FILE` makes one"
            )
        return bytes.fromhex(lines[0])

    def manifest_signer(self) -> Ed25519PrivateKey:
        """The signing key; fails closed (ConfigError) when there is none or it is not trusted."""
        found = _key_text(
            self.manifest_signing_key,
            self.manifest_signing_key_file,
            "manifest_signing_key",
            "manifest signing key",
        )
        if found is None:
            raise ConfigError(
                f"storage {self.describe()} has no manifest signing key: refusing to write an "
                "unsigned backup. Create one with `dbbackup signing-keygen -o FILE` and set "
                "manifest_signing_key_file (or manifest_signing_key) on the storage block"
            )
        key = signing.load_signing_key(*found)
        trusted = [signing.public_key_text(k) for k in self._configured_verify_keys()]
        public = signing.public_key_text(key.public_key())
        if trusted and public not in trusted:
            raise ConfigError(
                f"the manifest signing key of storage {self.describe()} ({public}) is not in its "
                "manifest_verify_keys: its backups would be refused at restore; add it there"
            )
        return key

    def _configured_verify_keys(self) -> list[Ed25519PublicKey]:
        return [signing.parse_public_key(text) for text in self.manifest_verify_keys]

    def manifest_verifiers(self) -> list[Ed25519PublicKey]:
        """Public keys whose signatures are trusted: the configured ones, else the signing
        key's own; empty when neither is set (then no manifest counts as signed)."""
        configured = self._configured_verify_keys()
        if configured or (self.manifest_signing_key is None and not self.manifest_signing_key_file):
            return configured
        return [self.manifest_signer().public_key()]
