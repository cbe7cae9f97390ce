"""Errors an operator can act on, each with the CLI exit code it maps to."""

from __future__ import annotations

import errno
from collections.abc import Iterable


class DbBackupError(Exception):
    """Base error: the message says what failed and what to do."""

    exit_code = 2
    retryable = False


class ReportedFailure(DbBackupError):
    """A run that ended with a report of what did and did not happen: the CLI prints
    `report` before the error line. Pickled with its report and exit code (Prefect keeps a
    failed run's exception), without calling the subclass's constructor again."""

    def __init__(self, message: str, report: object) -> None:
        super().__init__(message)
        self.report = report

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuilt, (type(self), self.args, self.__dict__))


def _rebuilt(cls: type[ReportedFailure], args: tuple, state: dict) -> ReportedFailure:
    failure = cls.__new__(cls)
    Exception.__init__(failure, *args)
    failure.__dict__.update(state)
    return failure


class ConfigError(DbBackupError):
    """Bad configuration or usage: unknown block, bad config file, missing key."""

    exit_code = 3


class AuthError(DbBackupError):
    """Authentication or credentials rejected (database login, storage keys, age identity)."""

    exit_code = 4


class PermissionDenied(DbBackupError):
    """The login was accepted but lacks a privilege for the operation: grant it, then rerun.

    Exit 3 like configuration: retrying cannot help, and the credentials are fine
    (AuthError, exit 4, is for rejected logins only).
    """

    exit_code = 3


class ConnectionFailed(DbBackupError):
    """A server or storage could not be reached; retrying later may help."""

    retryable = True


class DatabaseNotFound(DbBackupError):
    """The named database does not exist on the server."""

    exit_code = 3


class TargetExists(DbBackupError):
    """Restore target already exists and --replace was not given."""

    exit_code = 3


class BackupNotFound(DbBackupError):
    """No complete backup (with a manifest) matches the request."""

    exit_code = 3


class IntegrityError(DbBackupError):
    """A stored backup is corrupted or truncated: it does not match its manifest."""


class Interrupted(DbBackupError):
    """The run was stopped (Ctrl-C, SIGTERM): its client processes were killed. Never retried."""

    exit_code = 130


class ToolFailed(DbBackupError):
    """pg_dump, mariadb-dump, pg_restore or mariadb exited non-zero, was killed or timed out."""


class StorageError(DbBackupError):
    """Writing to or reading from backup storage failed."""

    retryable = True


class ObjectLocked(DbBackupError):
    """Storage refused to delete an object under object lock (retention not yet expired)."""


class DiskFull(DbBackupError):
    """No space left (storage or work dir): retrying will not help until space is freed."""


def is_disk_full(exc: BaseException) -> bool:
    """Whether exc means 'no space left', also when a library wrapped the OSError."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    # pyrage wraps the write error of its output in EncryptError('OSError: [Errno 28] ...')
    return isinstance(exc, Exception) and any(
        text in str(exc) for text in ("No space left on device", "Disk quota exceeded")
    )


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """Replace every non-empty secret in text with '***'."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text
