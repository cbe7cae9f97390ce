"""The engine contract as written down (docs/architecture.md and the DatabaseServer
docstring) is the one in the code: what an engine must implement are the abstract
methods, what it may override are the methods the engines do override."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
from prefect_dbbackup.blocks.mysql import MySQLServer
from prefect_dbbackup.blocks.postgres import PostgresServer
from prefect_dbbackup.blocks.server import DatabaseServer

ROOT = Path(__file__).resolve().parents[2]
ENGINES = (PostgresServer, MySQLServer)


def _methods(cls: type) -> set[str]:
    """The methods written in a class's own body (not inherited, not made by pydantic)."""
    found = set()
    for name, value in vars(cls).items():
        function = getattr(value, "__func__", value)  # staticmethod, classmethod
        if inspect.isfunction(function) and function.__qualname__ == f"{cls.__name__}.{name}":
            found.add(name)
    return found


def _named(text: str, start: str, end: str) -> set[str]:
    """The DatabaseServer methods named between start and end in text."""
    part = text[text.index(start) :]
    part = part[: part.index(end)]
    return {w for w in re.findall(r"\w+", part) if w in _methods(DatabaseServer)}


DOC = (ROOT / "docs" / "architecture.md").read_text()
WRITTEN = {
    "docs/architecture.md": (
        _named(DOC, "**must implement**", "**may override**"),
        _named(DOC, "**may override**", "\n\n"),
    ),
    "DatabaseServer docstring": (
        _named(DatabaseServer.__doc__, "must implement", "It may override"),
        _named(DatabaseServer.__doc__, "may override", "The rest is shared"),
    ),
}


@pytest.mark.parametrize("where", WRITTEN)
def test_the_written_contract_is_the_code(where: str) -> None:
    must, may = WRITTEN[where]
    assert must == set(DatabaseServer.__abstractmethods__), where
    overridden = set().union(*(_methods(cls) for cls in ENGINES)) & _methods(DatabaseServer)
    assert may == overridden - must, where
