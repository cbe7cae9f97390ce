"""Shift the clock dbbackup's own modules read (libfaketime cannot be used here).

dbbackup reads the time through `datetime.now(...)` of the `datetime` name each of its
modules imported. A shift replaces that name, in every prefect_dbbackup module, with a
subclass whose now() is the real time plus an offset; Prefect's own clock is left alone
(its API would refuse runs from the future). In a child process: `install(seconds)`
before the CLI starts.
"""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta


def _shifted(offset: timedelta) -> type[datetime]:
    class ShiftedDatetime(datetime):
        @classmethod
        def now(cls, tz=None):  # noqa: ANN001, ANN206
            return datetime.now(tz) + offset

        @classmethod
        def utcnow(cls):  # noqa: ANN206
            return datetime.now(tz=None) + offset

    return ShiftedDatetime


def _dbbackup_modules() -> list:
    import prefect_dbbackup

    for info in pkgutil.walk_packages(prefect_dbbackup.__path__, "prefect_dbbackup."):
        if ".deployments" in info.name:
            continue
        with contextlib.suppress(Exception):
            importlib.import_module(info.name)
    return [m for n, m in list(sys.modules.items()) if n.startswith("prefect_dbbackup.") and m]


@contextlib.contextmanager
def shifted_clock(seconds: float) -> Iterator[None]:
    """dbbackup's clock `seconds` ahead (negative: behind) for the duration."""
    if not seconds:
        yield
        return
    fake = _shifted(timedelta(seconds=seconds))
    patched = [m for m in _dbbackup_modules() if getattr(m, "datetime", None) is datetime]
    for module in patched:
        module.datetime = fake
    try:
        yield
    finally:
        for module in patched:
            module.datetime = datetime


@contextlib.contextmanager
def pinned_clock(instant: datetime) -> Iterator[None]:
    """dbbackup's clock reads `instant` on entry, then runs on at the real pace."""
    with shifted_clock((instant - datetime.now(UTC)).total_seconds() or 1e-6):
        yield


def install(seconds: float) -> None:
    """Shift dbbackup's clock for the rest of this (child) process."""
    shifted_clock(seconds).__enter__()
