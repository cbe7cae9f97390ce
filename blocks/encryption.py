"""age encryption keys: recipients for backups, an identity for restore and verify."""

from __future__ import annotations

from pathlib import Path

import pyrage
from prefect.blocks.core import Block
from prefect_dbbackup.tasks.errors import ConfigError
from prefect_dbbackup.tasks.manifest import recipient_fingerprint
from pydantic import Field, SecretStr


def parse_identities(text: str, source: str) -> list[pyrage.x25519.Identity]:
    """Parse age identities (AGE-SECRET-KEY-1...) from an identity file's text."""
    identities = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            identities.append(pyrage.x25519.Identity.from_str(line))
        except pyrage.IdentityError:
            raise ConfigError(f"{source} holds a line that is not an age identity") from None
    if not identities:
        raise ConfigError(f"{source} holds no age identity (AGE-SECRET-KEY-1...)")
    return identities


def read_identity_file(path: str | Path) -> list[pyrage.x25519.Identity]:
    """Read identities from a file written by `dbbackup keygen` or `age-keygen`."""
    path = Path(path).expanduser()
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read age identity file {path}: {exc.strerror}") from None
    return parse_identities(text, f"identity file {path}")


class AgeEncryption(Block):
    """age (age-encryption.org) keys. Backups need only the public recipients;
    restore and verify need an identity (private key), inline or as a file path."""

    _block_type_name = "Age Encryption"
    _block_type_slug = "age-encryption"
    _description = "age public recipients for backups, and optionally the identity for restores."

    recipients: list[str] = Field(
        default_factory=list,
        description="age public keys (age1...); every backup is readable by each.",
    )
    identity: SecretStr | None = Field(
        default=None, description="age identity (AGE-SECRET-KEY-1...): only restore/verify need it."
    )
    identity_file: str | None = Field(
        default=None, description="Path to an age identity file, used when identity is empty."
    )

    def recipient_keys(self) -> list[pyrage.x25519.Recipient]:
        """Parsed recipients; fails closed when there are none or one is malformed."""
        if not self.recipients:
            raise ConfigError(
                "the age-encryption block has no recipients: refusing to write an unencrypted "
                "backup. Add a recipient (dbbackup keygen prints one)."
            )
        keys = []
        for recipient in self.recipients:
            try:
                keys.append(pyrage.x25519.Recipient.from_str(recipient.strip()))
            except pyrage.RecipientError:
                raise ConfigError(f"not an age X25519 recipient: {recipient!r}") from None
        return keys

    def fingerprints(self) -> list[str]:
        """Fingerprints of the recipients, recorded in each manifest."""
        return [recipient_fingerprint(r.strip()) for r in self.recipients]

    def identities(self, identity_file: str | None = None) -> list[pyrage.x25519.Identity]:
        """Identities to decrypt with: an explicit file first, then the block's own."""
        if identity_file:
            return read_identity_file(identity_file)
        if self.identity is not None:
            return parse_identities(self.identity.get_secret_value(), "the block's identity")
        if self.identity_file:
            return read_identity_file(self.identity_file)
        raise ConfigError(
            "no age identity to decrypt with: pass --identity-file, or set identity or "
            "identity_file on the age-encryption block"
        )
