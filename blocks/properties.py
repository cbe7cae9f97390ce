"""What a database holds besides its contents: the properties of the database itself.

The engine blocks read them from a source server and apply them to a restore target;
the manifest records them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class DatabaseGrant(BaseModel):
    """One privilege on the database itself; grantee None is PUBLIC."""

    grantee: str | None
    privilege: Literal["CONNECT", "TEMPORARY", "CREATE"]
    grantable: bool = False


class DatabaseSetting(BaseModel):
    """A per-database default (ALTER DATABASE ... SET), or with role one for that role only
    (ALTER ROLE ... IN DATABASE ... SET); value is the text the server stored."""

    role: str | None = None
    name: str = Field(min_length=1, max_length=256)
    value: str


class DatabaseProperties(BaseModel):
    """Properties of the database itself, which the dump of its contents does not carry.

    acl None: the database had the default privileges. owner is informational: a
    restore leaves the database owned by the restoring login (as --no-owner does).
    """

    owner: str | None = None
    comment: str | None = None
    connection_limit: int = -1
    settings: list[DatabaseSetting] = Field(default_factory=list)
    acl: list[DatabaseGrant] | None = None
