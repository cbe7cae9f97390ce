"""Ed25519 manifest signatures: keys, signing, checking. Pure logic, no Prefect.

Formats (an operator can check every one of them with openssl, see docs/security.md):
- signing key: PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), as `openssl genpkey -algorithm
  ed25519` writes it;
- public key: `dbbackup-ed25519:` + base64 of the DER SubjectPublicKeyInfo, so
  `base64 -d | openssl pkey -pubin -inform DER` reads it;
- signature: `manifest.json.sig` next to `manifest.json` (and `verified.json.sig` next to
  a verify record), a small JSON document naming the algorithm, the public key and the
  base64 Ed25519 signature of the signed file's exact bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from prefect_dbbackup.blocks.errors import ConfigError

PUBLIC_PREFIX = "dbbackup-ed25519:"
ALGORITHM = "ed25519"
MAX_SIGNATURE_BYTES = 4096


class BadSignature(Exception):
    """A signature document that is malformed or made by none of the trusted keys."""


def generate_signing_key() -> str:
    """A new Ed25519 signing key as PKCS#8 PEM text."""
    key = Ed25519PrivateKey.generate()
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def write_signing_key_file(path: Path, *, force: bool = False) -> str:
    """Write a new signing key to path (0600, refusing to overwrite unless force);
    return its public key text, for manifest_verify_keys."""
    from prefect_dbbackup.blocks.encryption import write_secret_file

    pem = generate_signing_key()
    write_secret_file(path, pem, force=force)
    return public_key_text(load_signing_key(pem, "new key").public_key())


def load_signing_key(pem: str, source: str) -> Ed25519PrivateKey:
    """Parse a PEM signing key; `source` names where it came from (never its content)."""
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError):
        raise ConfigError(
            f"{source} is not an unencrypted Ed25519 signing key (PEM, BEGIN PRIVATE KEY): "
            "create one with `dbbackup signing-keygen -o FILE`"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{source} is not an Ed25519 key")
    return key


def public_key_text(key: Ed25519PublicKey) -> str:
    """The configuration form of a public key: dbbackup-ed25519:BASE64(DER)."""
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return PUBLIC_PREFIX + base64.b64encode(der).decode()


def parse_public_key(text: str) -> Ed25519PublicKey:
    """Parse dbbackup-ed25519:BASE64(DER); a malformed key is a configuration error."""
    text = text.strip()
    if not text.startswith(PUBLIC_PREFIX):
        raise ConfigError(f"not a manifest verify key (dbbackup-ed25519:...): {text[:40]!r}")
    try:
        der = base64.b64decode(text[len(PUBLIC_PREFIX) :], validate=True)
        key = serialization.load_der_public_key(der)
    except (ValueError, binascii.Error):
        raise ConfigError(f"malformed manifest verify key: {text[:40]!r}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"manifest verify key is not an Ed25519 key: {text[:40]!r}")
    return key


def key_id(key: Ed25519PublicKey) -> str:
    """Short fingerprint of a public key, for messages."""
    return "sha256:" + hashlib.sha256(public_key_text(key).encode()).hexdigest()[:16]


def sign(key: Ed25519PrivateKey, data: bytes) -> bytes:
    """The signature document (manifest.json.sig) of data's exact bytes."""
    document = {
        "algorithm": ALGORITHM,
        "key": public_key_text(key.public_key()),
        "signature": base64.b64encode(key.sign(data)).decode(),
    }
    return (json.dumps(document, indent=2) + "\n").encode()


def check(
    document: bytes, data: bytes, keys: list[Ed25519PublicKey], what: str = "manifest"
) -> Ed25519PublicKey:
    """The trusted key whose signature of data (a `what`) this document holds; BadSignature
    otherwise."""
    if len(document) > MAX_SIGNATURE_BYTES:
        raise BadSignature(f"signature file is {len(document)} bytes, not a signature")
    try:
        parsed = json.loads(document)
        algorithm, signature = parsed["algorithm"], base64.b64decode(parsed["signature"])
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise BadSignature("signature file is malformed") from None
    if algorithm != ALGORITHM:
        raise BadSignature(f"unknown signature algorithm {str(algorithm)[:20]!r}")
    for key in keys:
        try:
            key.verify(signature, data)
        except InvalidSignature:
            continue
        return key
    raise BadSignature(
        f"the signature does not match the {what}'s bytes under any of the storage's "
        f"{len(keys)} manifest verify key(s) (tampered, or signed by an unknown key)"
    )
