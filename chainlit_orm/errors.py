"""One error tree for the whole package.

Every error the package raises on purpose is a :class:`ChainlitORMError`. Errors that come from a
driver, an SDK or a filesystem are raised ``from`` the original exception so the cause is never
lost; nothing in the package catches an error and merely logs it (the documented exceptions are
``close()``, the per-element URL signing in ``get_thread``, and, on DynamoDB, a step text kept in
storage that cannot be read back: that step reads as a marker so its thread still loads).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence

__all__ = [
    "BackendUnavailableError",
    "ChainlitORMError",
    "CheckFailedError",
    "ConfigurationError",
    "ConflictError",
    "InvalidCursorError",
    "InvalidIdentifierError",
    "InvalidInputError",
    "MigrationLockError",
    "MissingDependencyError",
    "NotFoundError",
    "OnDeleteError",
    "PayloadTooLargeError",
    "SchemaError",
    "SchemaOutdatedError",
    "StorageError",
    "StorageTimeoutError",
    "TimeoutExceededError",
    "VerificationError",
    "mask_url",
    "migrate_command",
]


class ChainlitORMError(Exception):
    """Base of every error raised by chainlit-orm.

    Args:
        message: the human-readable message; never contains a secret.
        detail: optional machine-readable detail (an id, a key, a dialect name).
    """

    def __init__(self, message: str, *, detail: object | None = None) -> None:
        super().__init__(message)
        self.detail = detail


class ConfigurationError(ChainlitORMError):
    """The package was configured in a way that cannot work (raised at construction)."""


class MissingDependencyError(ConfigurationError, ImportError):
    """An optional dependency is not installed; the message names the pip extra to install."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(
            f"{package} is not installed; install it with: pip install 'chainlit-orm[{extra}]'",
            detail=package,
        )


class InvalidInputError(ChainlitORMError, ValueError):
    """Input from Chainlit or the caller is malformed; nothing was written."""


class InvalidIdentifierError(InvalidInputError):
    """An id or an object key is empty, too long, or could escape its scope (path traversal)."""


class InvalidCursorError(InvalidInputError):
    """A pagination cursor is stale, forged or from another query."""


class PayloadTooLargeError(InvalidInputError):
    """A payload exceeds the configured size limit; nothing was written."""


class NotFoundError(ChainlitORMError, LookupError):
    """The requested entity does not exist."""


class ConflictError(ChainlitORMError):
    """A write conflicts with existing data (constraint violation, wrong owner, wrong thread)."""


class BackendUnavailableError(ChainlitORMError, ConnectionError):
    """The database or service cannot be reached, or kept failing after the bounded retries.

    ``sent`` is False only when the layer knows that no statement of the call reached the
    database (SQL: every attempt failed while connecting, e.g. connection refused): a write that
    certainly did not happen. True (the default) means its outcome is unknown.
    """

    sent: bool = True


class TimeoutExceededError(BackendUnavailableError, TimeoutError):
    """A database or DynamoDB call did not finish within its configured client-side timeout.

    The call may or may not have taken effect on the server (a commit whose answer was lost looks
    the same as a statement that never arrived); every write the layer sends is an idempotent
    upsert, so the caller may retry it.
    """


class MigrationLockError(TimeoutExceededError):
    """A lock a migration needs was not taken in time: the migration lock (another migration
    held it for the whole timeout, or the URL goes through a transaction-mode pooler, where a
    session lock cannot be held), or a table lock a schema change waits for (a long transaction
    holds the table), after the bounded retries. Nothing is left half-done that a rerun of
    ``chainlit-orm migrate`` does not finish."""


class VerificationError(ChainlitORMError):
    """A transfer's verification found a difference between source and destination; the message
    names the first differing user, thread or count."""


class SchemaError(ChainlitORMError):
    """The database schema cannot be used or migrated as asked."""


class SchemaOutdatedError(SchemaError):
    """The database schema is older than the models; run ``chainlit-orm migrate``."""


class StorageError(ChainlitORMError, OSError):
    """An element-storage operation failed (permissions, network, credentials)."""


class StorageTimeoutError(StorageError, TimeoutError):
    """A storage call did not finish within its configured client-side timeout.

    ``abandoned`` is True when the data layer stopped waiting at its call's deadline while the
    storage client's call may still be running (see the README's "Timeouts").
    """

    abandoned: bool = False


class OnDeleteError(ChainlitORMError):
    """The app's on-delete hook raised for one or more removed threads, or did not finish in
    time, or was not called for them because the run's breaker had opened.

    Raised after the delete is durable (it is not rolled back) and, in a purge, once at the end,
    after every other thread was handled. ``detail`` lists the thread ids whose hook failed or
    was skipped; ``failures`` maps each to the exception it raised (a
    :class:`TimeoutExceededError` for a call past ``on_delete_timeout`` and for a skipped one;
    the first real failure is also the ``__cause__``); ``skipped`` lists the threads whose hook
    was never called (the breaker, ``on_delete_breaker``, had opened: ``breaker`` says why;
    None when it stayed closed), so an app can run its clean-up for exactly those; ``report``
    is what the operation removed, when it has one.
    """

    def __init__(self, failures: dict[str, BaseException], *, report: object | None = None,
                 skipped: Sequence[str] = (), breaker: str | None = None) -> None:
        ids = list(failures)
        shown = ", ".join(ids[:20]) + (f" (+{len(ids) - 20} more)" if len(ids) > 20 else "")
        not_called = set(skipped)
        first = next((e for t, e in failures.items() if t not in not_called),
                     next(iter(failures.values())))
        text = (f"the on-delete hook failed for {len(ids)} removed thread(s): {shown} (first: "
                f"{type(first).__name__}: {first}); the threads' data is deleted")
        if breaker is not None:
            text += f"; {breaker}: the hook was not called for {len(not_called)} of them"
        super().__init__(text, detail=ids)
        self.failures = failures
        self.skipped = list(skipped)
        self.breaker = breaker
        self.report = report
        self.first = first


class CheckFailedError(ChainlitORMError):
    """``await layer.check()`` found problems: every one of them is listed in the message, one a
    line, each with its fix (the exact ``chainlit-orm migrate`` command for a schema problem).

    ``detail`` (and ``problems``) is the list of problem texts; ``errors`` holds the exception
    behind each problem that came from one (the first is also the ``__cause__``).
    """

    def __init__(self, problems: Sequence[str], errors: Sequence[BaseException] = ()) -> None:
        listed = "\n".join(f"  - {problem}" for problem in problems)
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(f"chainlit-orm startup check failed ({count}):\n{listed}",
                         detail=list(problems))
        self.problems = list(problems)
        self.errors = list(errors)


_PASSWORD_IN_URL = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*:)[^@\s]*(?P<at>@)")
_SECRET_QUERY = re.compile(
    r"(?P<k>(?:password|passwd|pwd|secret|token|key|sig|signature|credential|"
    r"aws_secret_access_key|account_key|sas_token|x-amz-signature|x-amz-credential)=)"
    # the value ends at '&', whitespace, or a ':' that ends the URL in a message ("URL: why")
    r"(?:[^&\s:]|:(?!\s|$))*",
    re.IGNORECASE,
)


def mask_url(url: object) -> str:
    """Return ``url`` as text with its password and secret query values replaced by ``***``.

    Used for every URL that goes into an error message or a log line, so credentials given in a
    database or storage URL never leak.
    """
    text = str(url)
    text = _PASSWORD_IN_URL.sub(r"\g<head>***\g<at>", text)
    return _SECRET_QUERY.sub(r"\g<k>***", text)


def migrate_command(url: object, models: object | None = None) -> str:
    """The exact ``chainlit-orm migrate`` command that brings ``url`` to ``models``' schema.

    Every "run migrate" hint of the package is made here, so each one can be pasted into a
    shell as it is: the URL has its secrets masked (:func:`mask_url`; put the password back) and
    is shell-quoted when it needs it (a DynamoDB URL's ``?`` and ``&``), and a custom model set
    adds ``--models MODULE:ATTR`` (without it, migrate would build the default set's schema and
    report nothing to do). Where that comes from is :meth:`~chainlit_orm.models.ModelSet.
    cli_spec`.

    Args:
        url: the database URL (a SQLAlchemy URL's text, or ``dynamodb://TABLE?...``).
        models: the layer's :class:`~chainlit_orm.models.ModelSet`; None or the default set adds
            no option.
    """
    command = f"chainlit-orm migrate {shlex.quote(mask_url(url))}"
    spec = getattr(models, "cli_spec", None)
    option = spec() if callable(spec) else None
    return command if option is None else f"{command} --models {shlex.quote(option)}"
