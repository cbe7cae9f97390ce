"""`dbbackup apply`: turn a dbbackup.yaml into Prefect blocks, idempotently."""

from __future__ import annotations

import contextlib
import functools
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, get_args

import httpx
import pyrage
import yaml
from prefect.blocks.core import Block
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import BlockDocumentCreate, BlockDocumentUpdate
from prefect.client.schemas.objects import BlockDocument
from prefect_dbbackup.blocks.bounds import validation_problems
from prefect_dbbackup.blocks.encryption import AgeEncryption, read_identity_file
from prefect_dbbackup.blocks.errors import ConfigError, StorageError
from prefect_dbbackup.blocks.kinds import BlockKind, by_config_name, by_slug
from prefect_dbbackup.blocks.signing import public_key_text
from prefect_dbbackup.blocks.storage import BackupStorage
from prefect_dbbackup.blocks.storage_keys import new_dedup_key
from pydantic import SecretStr, ValidationError

PATH_FIELDS = {
    "path",
    "identity_file",
    "sslrootcert",
    "bin_dir",
    "manifest_signing_key_file",
    "dedup_key_file",
}
CREATED = {"name", "block_schema_id", "block_type_id", "data", "is_anonymous"}
UPDATED = {"block_schema_id", "data"}
OPERATIONS_SECTIONS = ("schedules", "limits")  # read by flows/operations.py, not blocks
VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


# nodes that YAML aliases may add beyond the file's own: enough for `<<: *defaults` on
# thousands of servers, far below a "billion laughs" alias bomb (10^9 nodes from 500 bytes)
ALIAS_NODES_BASE = 100_000
ALIAS_NODES_PER_NODE = 10


def _expanded_size(root: yaml.Node, source: str) -> tuple[int, int]:
    """(nodes in the file, nodes after every alias is expanded); refuses recursive aliases."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise ConfigError(f"{source}: a YAML alias refers to itself (recursive structure)")
        active.add(key)
        if isinstance(node, yaml.SequenceNode):
            total = 1 + sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in node.value)
        else:
            total = 1
        active.discard(key)
        sizes[key] = total
        return total

    expanded = size(root)
    return len(sizes), expanded


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses documents whose aliases expand beyond a budget."""

    def get_single_node(self) -> yaml.Node | None:
        node = super().get_single_node()
        if node is not None:
            own, expanded = _expanded_size(node, self.name)
            budget = ALIAS_NODES_BASE + ALIAS_NODES_PER_NODE * own
            if expanded - own > budget:
                raise ConfigError(
                    f"{self.name}: YAML aliases (*name) expand {own} nodes into {expanded}, more "
                    f"than the {budget} allowed: an alias bomb, or write the repeated "
                    "settings out"
                )
        return node


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML text safely (plain types only, alias expansion bounded); ConfigError if bad."""
    loader = _BoundedLoader(text)
    loader.name = source
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} is not valid YAML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{source}: YAML nested too deeply") from None
    finally:
        loader.dispose()


def read_yaml(path: Path) -> Any:
    """Read and parse a YAML file with parse_yaml; an unreadable file is a ConfigError."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a UTF-8 text file") from None
    return parse_yaml(text, str(path))


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
        raise ConfigError(f"{where}: {validation_problems(exc)}") from None


def _entries(config: dict[str, Any], section: str) -> dict[str, dict[str, Any]]:
    entries = config.get(section) or {}
    if not isinstance(entries, dict) or not all(isinstance(v, dict) for v in entries.values()):
        raise ConfigError(f"'{section}' must map names to settings")
    return entries


def _typed(entries: dict, kinds: dict[str, BlockKind], section: str, base: Path) -> list:
    """(name, block) of each entry of a section, built as the kind its `type:` names; only
    the kinds a config uses are imported."""
    blocks = []
    for name, raw in entries.items():
        fields = expand_env(dict(raw), f"{section}.{name}")
        kind_name = fields.pop("type", None)
        if kind_name not in kinds:
            raise ConfigError(f"{section}.{name}: type must be one of {', '.join(kinds)}")
        kind = kinds[kind_name].block_class()
        blocks.append((str(name), _build(kind, fields, f"{section}.{name}", base)))
    return blocks


def load_config(path: Path) -> list[tuple[str, Block]]:
    """Parse and validate a config file into (block name, block) pairs; nothing is saved."""
    config = read_yaml(path)
    if not isinstance(config, dict):
        raise ConfigError(f"{path} must be a mapping with servers, storage and encryption")
    unknown = set(config) - {"servers", "storage", "encryption", *OPERATIONS_SECTIONS}
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(sorted(unknown))}")
    base = path.parent.resolve()
    blocks = _typed(_entries(config, "servers"), by_config_name("server"), "servers", base)
    storages = _typed(_entries(config, "storage"), by_config_name("storage"), "storage", base)
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


def _give_dedup_key(
    storage: BackupStorage,
    document: BlockDocument | None,
    identities: Callable[[], list[pyrage.x25519.Identity]],
) -> str | None:
    """A deduplicating storage without a key in the file keeps the key its block has while
    that key is the storage's (it has a copy there, or the storage holds no copy), else
    gets the storage's key back from its copy (opened with `identities`); only a storage
    without any copy gets a new key. A storage's key never changes behind its writers'
    back, nor after the Prefect database was lost. Returns what was recovered, if anything.
    """
    if not storage.dedup or storage.dedup_key is not None or storage.dedup_key_file:
        return None
    from prefect_dbbackup.tasks.dedup.keys import DedupKey, key_copies, recover_key

    stored = (document.data if document is not None else {}).get("dedup_key")
    if isinstance(stored, SecretStr):
        stored = stored.get_secret_value()
    stored = stored if isinstance(stored, str) and stored else None
    try:
        copies = key_copies(storage)
    except StorageError as exc:
        if stored is None:  # a new key could replace one the storage holds: no guess
            raise ConfigError(
                f"cannot look for the dedup key of storage {storage.describe()} in the storage "
                f"({exc}): apply makes no new key without checking; run it again once the "
                "storage is reachable"
            ) from None
        copies = []  # the block's own key stays: nothing is replaced
    if stored is not None:
        storage.dedup_key = SecretStr(stored)
        key_id = DedupKey(storage.dedup_secret()).key_id  # type: ignore[arg-type]
        if not copies or key_id in {c[1] for c in copies}:
            return None
    if not copies:
        storage.dedup_key = SecretStr(new_dedup_key())
        return None
    key = recover_key(storage, identities(), copies)
    storage.dedup_key = SecretStr(key.secret.hex())
    return f"recovered the dedup key {key.key_id} of storage {storage.describe()} from its copy"


def _existing(slugs: set[str]) -> dict[str, dict[str, BlockDocument]]:
    """Every named block document of these types, by type slug and name: one API read per
    type."""
    found: dict[str, dict[str, BlockDocument]] = {}
    with get_client(sync_client=True) as client:
        for slug in slugs:
            try:
                docs = client.read_block_documents_by_type(slug, include_secrets=True)
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code != 404:
                    raise
                docs = []  # the block type was never registered
            found[slug] = {d.name: d for d in docs if d.name and not d.is_anonymous}
    return found


def _check_server_names(
    blocks: list[tuple[str, Block]], existing: dict[str, dict[str, BlockDocument]]
) -> None:
    """Refuse a server name already used by a block of the other engine (before saving any)."""
    servers = by_slug("server")
    for name, block in blocks:
        slug = block.get_block_type_slug()
        if slug not in servers:
            continue
        for other in servers:
            if other != slug and name in existing[other]:
                raise ConfigError(
                    f"servers.{name}: a {other} block is already named "
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


def _unchanged(block: Block, document: BlockDocument) -> bool:
    """Whether a stored block document holds exactly the fields of block (secrets included)."""
    try:
        stored = type(block)._from_block_document(document)
    except (ValueError, TypeError):  # saved by an older schema that no longer validates
        return False
    return _comparable(stored) == _comparable(block)


def _block_classes(kinds: set[type[Block]]) -> set[type[Block]]:
    """kinds and the block classes nested in their fields (S3 credentials)."""
    found = set(kinds)
    for kind in kinds:
        for field in kind.model_fields.values():
            for t in (field.annotation, *get_args(field.annotation)):
                if isinstance(t, type) and issubclass(t, Block):
                    found.add(t)
    return found


@contextlib.contextmanager
def _schemas_cached(kinds: set[type[Block]]) -> Iterator[None]:
    """Cache each block class's JSON schema while many blocks are serialised.

    Prefect regenerates the schema for every field of every block it serialises
    (Block._field_has_secrets): ~1 s per block on a busy machine. The schema of a
    class never changes, so apply caches it for the duration and restores the method.
    """
    saved = []
    for kind in _block_classes(kinds):
        saved.append((kind, kind.__dict__.get("model_json_schema")))
        kind.model_json_schema = staticmethod(functools.cache(kind.model_json_schema))
    try:
        yield
    finally:
        for kind, original in saved:
            if original is None:
                del kind.model_json_schema
            else:
                kind.model_json_schema = original


def _request(
    name: str, block: Block, document: BlockDocument | None
) -> tuple[Any, BlockDocumentCreate | BlockDocumentUpdate]:
    """(id to update or None, request) that saves block under name; ConfigError if invalid."""
    try:
        new = block._to_block_document(name=name, include_secrets=True)
        if document is None:
            return None, BlockDocumentCreate(**new.model_dump(include=CREATED))
        return document.id, BlockDocumentUpdate(**new.model_dump(include=UPDATED))
    except ValueError as exc:
        raise ConfigError(f"cannot save block {name!r}: {exc}") from None


def _identities(
    blocks: list[tuple[str, Block]], identity_file: Path | None
) -> Callable[[], list[pyrage.x25519.Identity]]:
    """What opens a dedup key copy: the given identity file, then the identities of the
    config's encryption blocks (read only when needed)."""

    def read() -> list[pyrage.x25519.Identity]:
        found = read_identity_file(str(identity_file)) if identity_file else []
        for _, block in blocks:
            if isinstance(block, AgeEncryption) and (block.identity or block.identity_file):
                found += block.identities()
        return found

    return read


def apply_config(
    path: Path, identity_file: Path | None = None, notes: list[str] | None = None
) -> list[tuple[str, str, str]]:
    """Create or update the blocks of a config file.

    Reads the existing blocks once (one API call per block type) and writes only the
    blocks that are new or changed; names are validated before anything is written.
    Returns (block type slug, name, created|updated|unchanged) for each block; what it
    recovered (a dedup key, from the storage) is appended to `notes`.
    """
    blocks = load_config(path)
    existing = _existing({b.get_block_type_slug() for _, b in blocks} | set(by_slug("server")))
    _check_server_names(blocks, existing)
    identities = _identities(blocks, identity_file)
    plan = []
    for name, block in blocks:
        document = existing[block.get_block_type_slug()].get(name)
        if isinstance(block, BackupStorage):
            note = _give_dedup_key(block, document, identities)
            if note is not None and notes is not None:
                notes.append(note)
        if document is not None and _unchanged(block, document):
            plan.append((name, block, document, "unchanged"))
        else:
            plan.append((name, block, document, "created" if document is None else "updated"))
    writes = [(n, b, d) for n, b, d, status in plan if status != "unchanged"]
    for kind in {type(b) for _, b, _ in writes}:
        kind.register_type_and_schema()  # once per type, not once per block
    requests: list[tuple[Any, BlockDocumentCreate | BlockDocumentUpdate]] = []
    with _schemas_cached({type(b) for _, b, _ in writes}):
        for name, block, document in writes:
            requests.append(_request(name, block, document))
    with get_client(sync_client=True) as client:
        for document_id, request in requests:
            if document_id is None:
                client.create_block_document(request)
            else:
                client.update_block_document(document_id, request)
    return [(type(b).get_block_type_slug(), n, status) for n, b, _, status in plan]
