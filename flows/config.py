"""`dbbackup apply`: turn a dbbackup.yaml into Prefect blocks, idempotently."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from prefect.blocks.core import Block
from prefect_dbbackup.blocks.encryption import AgeEncryption
from prefect_dbbackup.blocks.mysql import MySQLServer
from prefect_dbbackup.blocks.postgres import PostgresServer
from prefect_dbbackup.blocks.registry import SERVER_TYPES
from prefect_dbbackup.blocks.s3 import S3BackupStorage
from prefect_dbbackup.blocks.signing import public_key_text
from prefect_dbbackup.blocks.storage import BackupStorage, LocalBackupStorage
from prefect_dbbackup.tasks.errors import ConfigError
from pydantic import SecretStr, ValidationError

SERVER_KINDS: dict[str, type[Block]] = {"postgres": PostgresServer, "mysql": MySQLServer}
STORAGE_KINDS: dict[str, type[Block]] = {"local": LocalBackupStorage, "s3": S3BackupStorage}
PATH_FIELDS = {"path", "identity_file", "sslrootcert", "bin_dir", "manifest_signing_key_file"}
OPERATIONS_SECTIONS = ("schedules", "limits")  # read by flows/operations.py, not blocks
VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env(value: Any, where: str) -> Any:
    """Replace ${VAR} in every string with the environment's value; a missing VAR is an error."""
    if isinstance(value, str):

        def sub(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in os.environ:
                raise ConfigError(f"{where}: environment variable {name} is not set")
            return os.environ[name]

        return VAR.sub(sub, value)
    if isinstance(value, list):
        return [expand_env(v, where) for v in value]
    if isinstance(value, dict):
        return {k: expand_env(v, f"{where}.{k}") for k, v in value.items()}
    return value


def _build(kind: type[Block], fields: dict[str, Any], where: str, base: Path) -> Block:
    unknown = set(fields) - set(kind.model_fields)
    if unknown:
        allowed = ", ".join(sorted(f for f in kind.model_fields if not f.startswith("_")))
        raise ConfigError(
            f"{where}: unknown setting(s) {', '.join(sorted(unknown))}; allowed: {allowed}"
        )
    for name in PATH_FIELDS & set(fields):
        if isinstance(fields[name], str):
            fields[name] = str((base / Path(fields[name]).expanduser()).resolve())
    try:
        return kind(**fields)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{where}: {problems}") from None


def _entries(config: dict[str, Any], section: str) -> dict[str, dict[str, Any]]:
    entries = config.get(section) or {}
    if not isinstance(entries, dict) or not all(isinstance(v, dict) for v in entries.values()):
        raise ConfigError(f"'{section}' must map names to settings")
    return entries


def _typed(entries: dict, kinds: dict[str, type[Block]], section: str, base: Path) -> list:
    blocks = []
    for name, raw in entries.items():
        fields = expand_env(dict(raw), f"{section}.{name}")
        kind_name = fields.pop("type", None)
        if kind_name not in kinds:
            raise ConfigError(f"{section}.{name}: type must be one of {', '.join(kinds)}")
        blocks.append((str(name), _build(kinds[kind_name], fields, f"{section}.{name}", base)))
    return blocks


def load_config(path: Path) -> list[tuple[str, Block]]:
    """Parse and validate a config file into (block name, block) pairs; nothing is saved."""
    try:
        config = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path} must be a mapping with servers, storage and encryption")
    unknown = set(config) - {"servers", "storage", "encryption", *OPERATIONS_SECTIONS}
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(sorted(unknown))}")
    base = path.parent.resolve()
    blocks = _typed(_entries(config, "servers"), SERVER_KINDS, "servers", base)
    storages = _typed(_entries(config, "storage"), STORAGE_KINDS, "storage", base)
    for name, block in storages:
        _check_signing(block, f"storage.{name}")
    blocks += storages
    for name, raw in _entries(config, "encryption").items():
        where = f"encryption.{name}"
        block = _build(AgeEncryption, expand_env(dict(raw), where), where, base)
        try:
            if not block.recipients and (block.identity or block.identity_file):
                block.recipients = [str(i.to_public()) for i in block.identities()]
            block.recipient_keys()  # validates; fails closed on none
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        blocks.append((str(name), block))
    return blocks


def _check_signing(storage: BackupStorage, where: str) -> None:
    """Validate the manifest keys of a storage entry; with a signing key and no verify
    keys, trust the signing key's own public key (like recipients from an identity)."""
    try:
        if storage.manifest_verify_keys:
            storage.manifest_verifiers()  # every key must parse
        if storage.manifest_signing_key is not None or storage.manifest_signing_key_file:
            signer = storage.manifest_signer()  # readable, and trusted by the verify keys
            if not storage.manifest_verify_keys:
                storage.manifest_verify_keys = [public_key_text(signer.public_key())]
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _check_server_names(blocks: list[tuple[str, Block]]) -> None:
    """Refuse a server name already used by a block of the other engine (before saving any)."""
    for name, block in blocks:
        kind = type(block)
        if kind not in SERVER_TYPES:
            continue
        for other in SERVER_TYPES:
            if other is not kind and _exists(other, name):
                raise ConfigError(
                    f"servers.{name}: a {other.get_block_type_slug()} block is already named "
                    f"{name!r}; delete it first (prefect block delete) or pick another name"
                )


def _comparable(block: Block) -> dict[str, Any]:
    """Field values with secrets revealed and nested blocks (S3 credentials) unfolded."""

    def plain(value: Any) -> Any:
        if isinstance(value, SecretStr):
            return value.get_secret_value()
        if isinstance(value, Block):
            return _comparable(value)
        return value

    return {f: plain(getattr(block, f)) for f in type(block).model_fields}


def apply_config(path: Path) -> list[tuple[str, str, str]]:
    """Create or update the blocks of a config file.

    Returns (block type slug, name, created|updated|unchanged) for each block.
    """
    blocks = load_config(path)
    _check_server_names(blocks)
    changes = []
    for name, block in blocks:
        kind = type(block)
        try:
            existing = kind.load(name)
        except ValueError:
            existing = None
        if existing is not None and _comparable(existing) == _comparable(block):
            status = "unchanged"
        else:
            try:
                block.save(name, overwrite=True)
            except ValueError as exc:
                raise ConfigError(f"cannot save block {name!r}: {exc}") from None
            status = "created" if existing is None else "updated"
        changes.append((kind.get_block_type_slug(), name, status))
    return changes


def _exists(kind: type[Block], name: str) -> bool:
    try:
        kind.load(name)
    except ValueError:
        return False
    return True
