"""Bounds of the numbers in blocks and dbbackup.yaml (docs/configuration.md, "Bounds").

Every number is finite and within a range that keeps the arithmetic done with it (dates,
timeouts, counts) meaningful: a value outside is refused when the block is built, so
`apply` saves nothing and a block saved earlier with one fails to load with a
configuration error that names the field.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, ValidationError

MAX_HOURS = 8760.0
"""A year: the most any *_hours setting (grace periods, tolerances) may be."""
MAX_KEEP = 1_000_000
"""The most backups or periods one retention rule may keep."""
MAX_CONNECT_SECONDS = 3600
MAX_DUMP_SECONDS = 30 * 24 * 3600
"""30 days: the longest a dump or restore may be allowed to run."""

Port = Annotated[int, Field(ge=1, le=65535, description="TCP port (1-65535).")]
Hours = Annotated[float, Field(allow_inf_nan=False, le=MAX_HOURS)]
KeepCount = Annotated[int, Field(ge=0, le=MAX_KEEP)]
RequestSeconds = Annotated[float, Field(gt=0, le=MAX_CONNECT_SECONDS, allow_inf_nan=False)]
"""A per-request network timeout: above 0, at most an hour, finite."""


def validation_problems(exc: ValidationError, where: str = "") -> str:
    """Each refused field of a ValidationError as `where.field: why`, joined by '; '
    (the values themselves are left out: one may be a secret)."""
    return "; ".join(
        ".".join(map(str, (*([where] if where else []), *e["loc"]))) + f": {e['msg']}"
        for e in exc.errors()
    )
