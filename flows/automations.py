"""`dbbackup automations apply`: create or update the automations shipped as YAML files.

A file is one Prefect automation (the fields of `prefect automation create
--from-file`) with two additions: `${server}` in any string makes the file a
template applied once per configured server, and a `send-notification`
action names its block as `block: ${notify}` (TYPE/NAME, e.g.
`slack-webhook/dbbackup-alerts`) instead of a block document id.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from string import Template
from typing import Any

from prefect.automations import Automation
from prefect.client.orchestration import get_client
from prefect.events.schemas.automations import AutomationCore
from prefect.exceptions import ObjectNotFound
from prefect_dbbackup.blocks.errors import ConfigError
from prefect_dbbackup.flows.config import parse_yaml
from pydantic import ValidationError

AUTOMATIONS_DIR = Path(str(files("prefect_dbbackup.deployments").joinpath("automations")))
COMPARED = ("description", "enabled", "trigger", "actions", "actions_on_trigger")


def _substitute(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, str):
        return Template(value).safe_substitute(names)
    if isinstance(value, list):
        return [_substitute(v, names) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, names) for k, v in value.items()}
    return value


def _notification_block_id(ref: str) -> str:
    slug, _, name = ref.partition("/")
    if not name:
        raise ConfigError(
            f"notification block {ref!r} must be TYPE/NAME, e.g. slack-webhook/alerts"
        )
    with get_client(sync_client=True) as client:
        try:
            return str(client.read_block_document_by_name(name, slug).id)
        except ObjectNotFound:
            raise ConfigError(
                f"no {slug} block named {name!r}: create the notification block first "
                "(Prefect UI > Blocks, or its Python class .save(name))"
            ) from None


def load_automations(directory: Path, servers: list[str], notify: str) -> list[AutomationCore]:
    """The automations of every *.yaml file, per-server files once for each server."""
    files = sorted(directory.glob("*.yaml"))
    if not files:
        raise ConfigError(f"no automation files (*.yaml) in {directory}")
    block_id = _notification_block_id(notify)
    result = []
    for path in files:
        text = path.read_text()
        raw = parse_yaml(text, str(path))
        if not isinstance(raw, dict):
            raise ConfigError(f"{path} must be a mapping (one automation)")
        per_server = "${server}" in text
        for server in servers if per_server else [None]:
            data = _substitute(raw, {"server": server or "", "notify": notify})
            for action in data.get("actions", []) + data.get("actions_on_trigger", []):
                if action.get("type") == "send-notification" and "block" in action:
                    action.pop("block")
                    action["block_document_id"] = block_id
            try:
                result.append(AutomationCore.model_validate(data))
            except ValidationError as exc:
                raise ConfigError(f"{path.name}: {exc.errors()[0]['msg']}") from None
    return result


def apply_automations(automations: list[AutomationCore]) -> list[tuple[str, str]]:
    """Create or update each automation by name; (name, created|updated|unchanged) for each."""
    changes = []
    with get_client(sync_client=True) as client:
        for automation in automations:
            existing = client.read_automations_by_name(automation.name)
            if not existing:
                client.create_automation(automation)
                changes.append((automation.name, "created"))
                continue
            first, *duplicates = existing
            for extra in duplicates:
                client.delete_automation(extra.id)
            if _same(first, automation) and not duplicates:
                changes.append((automation.name, "unchanged"))
            else:
                client.update_automation(first.id, automation)
                changes.append((automation.name, "updated"))
    return changes


def _same(existing: Automation, wanted: AutomationCore) -> bool:
    def view(a: AutomationCore) -> dict[str, Any]:
        dumped = AutomationCore.model_validate(a.model_dump()).model_dump(mode="json")
        dumped["trigger"].pop("id", None)
        return {k: dumped[k] for k in COMPARED}

    return view(existing) == view(wanted)
