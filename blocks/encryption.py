"""age encryption keys: recipients for backups, an identity for restore and verify."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import stat
from datetime import UTC, datetime
from pathlib import Path

import pyrage
from prefect.blocks.core import Block
from prefect_dbbackup.blocks.errors import ConfigError
from prefect_dbbackup.blocks.schema_cache import CachedSchema
from pydantic import Field, SecretStr

AGE_HEADERS = (b"age-encryption.org/", b"-----BEGIN AGE ENCRYPTED FILE-----")


def _encrypted_identity(source: str) -> ConfigError:
    return ConfigError(
        f"{source} is passphrase-protected (an age-encrypted file, not a plain identity): "
        "decrypt it first with `age -d key.age > key.txt` (keep key.txt 0600, or decrypt it "
        "to a tmpfs) and use key.txt"
    )


def parse_identities(text: str, source: str) -> list[pyrage.x25519.Identity]:
    """Parse age identities (AGE-SECRET-KEY-1...) from an identity file's text."""
    if text.lstrip().encode().startswith(AGE_HEADERS):
        raise _encrypted_identity(source)
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
    source = f"identity file {path}"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read age identity file {path}: {exc.strerror}") from None
    if data.lstrip().startswith(AGE_HEADERS):
        raise _encrypted_identity(source)
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise ConfigError(
            f"{source} is not a text file of age identities (AGE-SECRET-KEY-1...)"
        ) from None
    return parse_identities(text, source)


def _check_private_dir(directory: Path) -> None:
    """Refuse a directory where another local user could swap or read a secret file."""
    st = directory.stat()
    if st.st_uid not in (os.geteuid(), 0):
        raise ConfigError(
            f"{directory} belongs to another user (uid {st.st_uid}): refusing to write a secret "
            "key there; use a directory you own (e.g. ~/.config/dbbackup)"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
        raise ConfigError(
            f"{directory} is writable by other users (mode {stat.S_IMODE(st.st_mode):o}) "
            "without the sticky bit: refusing to write a secret key there; "
            f"use a private directory or `chmod go-w {directory}`"
        )


def _make_private_dirs(directory: Path) -> None:
    """Create directory and its missing parents with mode 0700 (whatever the umask)."""
    missing = [d for d in (directory, *directory.parents) if not d.exists()]
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=0o700)
            d.chmod(0o700)


def write_secret_file(path: str | Path, content: str, *, force: bool = False) -> Path:
    """Write a secret (key) file readable by its owner only (0600), all or nothing.

    The content goes into a fresh temporary file in the target directory (O_EXCL,
    O_NOFOLLOW: a file or symlink planted by someone else is never opened), is
    fsynced, then moved into place. An existing file is replaced only with force.
    Missing directories are created 0700; a directory another user owns, or that
    is group/world-writable without the sticky bit, is refused.
    """
    path = Path(path).expanduser().absolute()
    try:
        _make_private_dirs(path.parent)
        _check_private_dir(path.parent)
        if os.path.lexists(path) and not force:
            raise ConfigError(f"{path} exists; refusing to overwrite a key (use --force)")
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, 0o600)
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            with os.fdopen(fd, "w") as f:
                f.write(content)
                f.flush()
                os.fsync(f.fileno())
            if force:
                os.replace(tmp, path)
            else:
                try:
                    os.link(tmp, path)  # fails if the target appeared meanwhile
                except FileExistsError:
                    raise ConfigError(
                        f"{path} exists; refusing to overwrite a key (use --force)"
                    ) from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise ConfigError(f"cannot write the key file {path}: {exc.strerror}") from None
    return path


def write_identity_file(path: str | Path, *, force: bool = False) -> str:
    """Create a new age identity in a private file (see write_secret_file); return its
    recipient (public key)."""
    identity = pyrage.x25519.Identity.generate()
    recipient = str(identity.to_public())
    write_secret_file(
        path,
        f"# created: {datetime.now(UTC).isoformat(timespec='seconds')}\n"
        f"# public key: {recipient}\n{identity}\n",
        force=force,
    )
    return recipient


class AgeEncryption(CachedSchema, Block):
    """age (age-encryption.org) keys. Backups need only the public recipients;
    restore and verify need an identity (private key), inline or as a file path.

    Example:
        ```python
        from prefect_dbbackup import AgeEncryption, restore_database

        keys = AgeEncryption.load("BLOCK_NAME")
        restore_database("local-pg", "shop", encryption=keys, target_database="shop_copy")
        ```
    """

    _block_type_name = "Age Encryption"
    _documentation_url = "https://age-encryption.org/v1"
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


def recipient_fingerprint(recipient: str) -> str:
    """Short, stable fingerprint of a public age recipient."""
    return "sha256:" + hashlib.sha256(recipient.encode()).hexdigest()[:16]
