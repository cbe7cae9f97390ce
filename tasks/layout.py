"""Storage key layout, safe encoding of names, and backup ids.

Layout: {server}/{database}/{backup_id}/{object}; the globals series uses the
reserved database segment `_globals`. Names are percent-encoded so that any
database name (spaces, quotes, '/', unicode, leading '-' or '.') maps to one
safe key segment and back.
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime
from urllib.parse import quote, unquote

from prefect_dbbackup.blocks.errors import ConfigError

MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.json.sig"  # Ed25519 signature of the manifest, written before it
VERIFIED_NAME = "verified.json"  # written by verify next to the manifest it checked
VERIFIED_SIGNATURE_NAME = "verified.json.sig"  # its signature, written before it
GLOBALS_SEGMENT = "_globals"
BACKUP_ID_FORMAT = "%Y%m%dT%H%M%SZ"
BACKUP_ID = re.compile(r"[0-9]{8}T[0-9]{6}Z-[0-9a-f]{4}")  # what new_backup_id makes
SAFE_OBJECT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*")  # no '/', no '..'


SEGMENT_MAX = 255  # a key segment is a file name on local storage
# The compact form of a name whose percent-encoding is too long (64 non-ASCII characters,
# as MariaDB allows, percent-encode to up to 576): '%u', then each character as three
# base64url digits (18 bits), or '~' and four digits above that. '%u' never starts a
# percent-encoding ('u' is not a hex digit), so the two forms cannot be confused.
COMPACT = "%u"
DIGITS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _digits(value: int, count: int) -> str:
    return "".join(DIGITS[(value >> (6 * i)) & 63] for i in reversed(range(count)))


def _compact(name: str) -> str:
    out = [COMPACT]
    for char in name:
        code = ord(char)
        out.append(_digits(code, 3) if code < 1 << 18 else "~" + _digits(code, 4))
    return "".join(out)


def _expand(segment: str) -> str:
    chars, i = [], len(COMPACT)
    while i < len(segment):
        width = 4 if segment[i] == "~" else 3
        i += width == 4
        digits = segment[i : i + width]
        if len(digits) != width or any(d not in DIGITS for d in digits):
            raise ConfigError(f"malformed compact name segment {segment!r}")
        chars.append(chr(sum(DIGITS.index(d) << (6 * k) for k, d in enumerate(reversed(digits)))))
        i += width
    return "".join(chars)


def encode_name(name: str) -> str:
    """Encode a server or database name as one safe, reversible key segment of at most
    255 characters (percent-encoding, or the compact form when that is too long)."""
    if not name:
        raise ConfigError("an empty server or database name cannot be stored")
    encoded = quote(name, safe="")
    if encoded[0] in "-.":
        encoded = f"%{ord(encoded[0]):02X}{encoded[1:]}"
    if encoded.startswith("_"):
        # keep '_globals' (and any other '_' segment) reserved for our own series
        encoded = "%5F" + encoded[1:]
    if len(encoded) > SEGMENT_MAX:
        encoded = _compact(name)
    if len(encoded) > SEGMENT_MAX:
        raise ConfigError(
            f"the name {name[:40]!r}... is too long to store ({len(name)} characters; "
            "PostgreSQL and MariaDB names are at most 64)"
        )
    return encoded


def decode_name(segment: str) -> str:
    """Inverse of encode_name. Only the one segment encode_name makes for a name decodes
    (ConfigError otherwise): a planted alias (`%41` for `A`, a compact form of a short
    name) cannot pass for another database's series."""
    name = _expand(segment) if segment.startswith(COMPACT) else unquote(segment)
    try:
        canonical = encode_name(name)
    except (ConfigError, UnicodeError):  # empty, too long, or a lone surrogate
        canonical = None
    if canonical != segment:
        raise ConfigError(f"key segment {segment!r} is not one dbbackup writes")
    return name


def new_backup_id(now: datetime | None = None) -> str:
    """A backup id that sorts by time: UTC timestamp plus 4 random hex digits."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{now.strftime(BACKUP_ID_FORMAT)}-{secrets.token_hex(2)}"


def check_backup_id(backup_id: str) -> str:
    """backup_id itself if it has the form new_backup_id makes; a ConfigError otherwise.

    Ids reach storage keys from the command line, flow parameters and manifests:
    this keeps '..', '/', empty or absolute segments out of every key.
    """
    if not isinstance(backup_id, str) or not BACKUP_ID.fullmatch(backup_id):
        raise ConfigError(
            f"{backup_id!r} is not a backup id: one looks like 20261127T031500Z-3f9a "
            "(UTC time and 4 hex digits); `dbbackup list SERVER` shows them"
        )
    return backup_id


def check_object_name(name: str) -> str:
    """name itself if it is one safe key segment (no '/', '..', empty or hidden name)."""
    if not isinstance(name, str) or not SAFE_OBJECT_NAME.fullmatch(name):
        raise ConfigError(f"unsafe object name {name!r} in a manifest: refusing to use it")
    return name


def series_prefix(server: str, database: str | None = None, kind: str = "database") -> str:
    """Key prefix of a server, of one database series on it, or of its globals series."""
    if kind == "globals":
        return f"{encode_name(server)}/{GLOBALS_SEGMENT}/"
    if database is None:
        return encode_name(server) + "/"
    return f"{encode_name(server)}/{encode_name(database)}/"


def backup_key(
    server: str, database: str, backup_id: str, name: str, kind: str = "database"
) -> str:
    """Key of one object of one backup (kind 'globals': the users/roles series).

    The backup id and object name are checked (ConfigError), wherever they came from.
    """
    check_backup_id(backup_id)
    check_object_name(name)
    return f"{series_prefix(server, database, kind)}{backup_id}/{name}"


def parse_manifest_key(key: str) -> tuple[str, str, str] | None:
    """(server, database, backup_id) of a manifest key, or None if key is not a manifest.

    The globals series decodes to database '_globals'.
    """
    parts = key.split("/")
    if len(parts) != 4 or parts[3] != MANIFEST_NAME:
        return None
    server, database, backup_id, _ = parts
    try:
        db = GLOBALS_SEGMENT if database == GLOBALS_SEGMENT else decode_name(database)
        return decode_name(server), db, backup_id
    except ConfigError:
        return None  # not a key dbbackup writes (planted, or another tool's)
