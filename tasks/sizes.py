"""Byte counts for people, in the terminal, the logs and the artifacts."""

from __future__ import annotations


def size(nbytes: float) -> str:
    """A byte count for people: 950 B, 12.3 kB, 4.5 MB, 1.20 GB."""
    for unit, scale, digits in (("GB", 1e9, 2), ("MB", 1e6, 1), ("kB", 1e3, 1)):
        if nbytes >= scale:
            return f"{nbytes / scale:.{digits}f} {unit}"
    return f"{nbytes:.0f} B"
