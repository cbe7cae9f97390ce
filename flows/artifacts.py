"""Text helpers shared by the artifacts of every flow (backup, verify, prune, restore)."""

from __future__ import annotations

import re


def artifact_key(kind: str, server: str) -> str:
    """A valid artifact key (lowercase letters, digits, dashes) for one server."""
    return "-".join(filter(None, [kind, re.sub(r"[^a-z0-9-]+", "-", server.lower()).strip("-")]))


def md(text: str) -> str:
    """text escaped for markdown (table cells and lists)."""
    return re.sub(r"([\\`*\[\]<>|])", r"\\\1", text.replace("\n", " "))


def first_line(text: str | None) -> str:
    """The first line of an error message ('' for none)."""
    lines = (text or "").strip().splitlines()
    return lines[0] if lines else ""
