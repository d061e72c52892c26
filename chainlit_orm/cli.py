"""The ``chainlit-orm`` console command (on click): generate, check and apply the schemas; copy,
export and import chat history; erase users and purge old threads.

::

    chainlit-orm generate [--models pkg.mod:attr] [--out DIR] [--check]
    chainlit-orm migrate [URL] [--dry-run] [--dedupe-feedback] [--models pkg.mod:attr]
                         [--timeout SECONDS] [--history]
    chainlit-orm ddl DIALECT [--models pkg.mod:attr]
    chainlit-orm copy SRC DST [--src-storage URL] [--dst-storage URL] [--user IDENTIFIER]
                      [--since TIME] [--files/--no-files] [--batch N] [--source-kind KIND]
                      [--checkpoint FILE] [--verify] [--models pkg.mod:attr]
    chainlit-orm export SRC OUT [--src-storage URL] [--user IDENTIFIER] [--since TIME]
                        [--files/--no-files] [--batch N] [--source-kind KIND] [--canonical]
    chainlit-orm import IN DST [--dst-storage URL] [--files/--no-files] [--batch N]
                        [--checkpoint FILE] [--verify]
    chainlit-orm erase-user [URL] IDENTIFIER [--dry-run] [--storage URL] [--on-delete MOD:ATTR]
    chainlit-orm purge [URL] [--older-than AGE] [--keep-shared/--no-keep-shared]
                       [--keep-favorites/--no-keep-favorites] [--keep-metadata KEY]...
                       [--soft-delete AGE] [--batch N] [--dry-run] [--storage URL]
                       [--on-delete MOD:ATTR]
    chainlit-orm --version

A command that works on one database takes its URL as an optional argument: left out, it is read
from ``CHAINLIT_ORM_DATABASE_URL``, then ``DATABASE_URL``, by the same function ``from_env()``
uses (:func:`chainlit_orm.urls.database_url_from_env`), so the command and the app it serves
cannot disagree about which database they mean. Storage URLs default to
``CHAINLIT_ORM_STORAGE_URL``, as in the app.

Exit codes, one convention for every command:

* ``0``: done.
* ``1``: the command ran and refused or failed: ``generate --check`` found drift, a transfer's
  verification found a difference, an unreachable server, refused credentials, a schema that
  cannot be migrated, a refused bundle, a timeout. One line on stderr (``chainlit-orm: error:
  ...``, or ``chainlit-orm: verification failed: ...``), any password masked.
* ``2``: the command line cannot run as written. Click's usage errors (an unknown option, a
  missing argument, no database URL given and none in the environment) print the usage and the
  problem, and so do malformed option values (click types: a ``--timeout`` that is not a
  positive, finite number of seconds, a ``--batch`` out of range, a ``--since`` that is not an
  ISO-8601 time); a value refused before anything is done (an unsupported URL scheme or SQL
  dialect, a URL the driver cannot use: an unknown query parameter, a bad port; a ``--models``
  that does not name a ``ModelSet`` or whose module fails to import, a malformed
  ``--on-delete``, an unreadable age) prints one line ``chainlit-orm: error: ...``.

:class:`~chainlit_orm.errors.ChainlitORMError` is caught here, at the edge, and nowhere else; any
other exception is a bug and keeps its traceback.

Shell completion is click's: ``eval "$(_CHAINLIT_ORM_COMPLETE=bash_source chainlit-orm)"`` in
``~/.bashrc`` (``zsh_source`` in ``~/.zshrc``, ``fish_source`` for fish).

Imports: this module loads click and :mod:`chainlit_orm.defaults` only; each command imports what
it needs when it runs. So ``--version``, ``--help`` and a completion TAB stay fast, and
``generate``, ``ddl`` and a SQL ``migrate`` never import Chainlit. The commands that open a layer
or a storage client (``copy``, ``export``, ``import``, ``erase-user``, ``purge``, a DynamoDB
``migrate``) do: the layers are Chainlit data layers. Importing Chainlit writes
``.chainlit/config.toml``, its translations and ``.files/`` into ``CHAINLIT_APP_ROOT`` (the working
directory by default) and fails in a read-only one, so :func:`main` points
``CHAINLIT_APP_ROOT`` at a temporary directory for the run (unless it is set) and removes it
afterwards: no command writes into the directory it runs in, except the files it is asked to.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import importlib
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from click.shell_completion import CompletionItem

from chainlit_orm import __version__
from chainlit_orm.defaults import (
    DATABASE_URL_VARIABLES,
    DEFAULT_HOOK_BREAKER,
    DEFAULT_HOOK_TIMEOUT,
    DEFAULT_MIGRATE_TIMEOUT,
    DEFAULT_PURGE_BATCH,
    DEFAULT_TRANSFER_BATCH,
    DEFAULT_TRANSFER_TIMEOUT,
    SOURCE_KINDS,
    SQL_DIALECTS,
    STORAGE_URL_VARIABLE,
)
from chainlit_orm.errors import (
    ChainlitORMError,
    ConfigurationError,
    MissingDependencyError,
    VerificationError,
    mask_url,
)

if TYPE_CHECKING:
    from chainlit.data.storage_clients.base import BaseStorageClient

    from chainlit_orm.lifecycle.hooks import OnDelete
    from chainlit_orm.models.modelset import ModelSet
    from chainlit_orm.transfer.progress import Progress, Summary
    from chainlit_orm.urls import DatabaseURL

__all__ = ["cli", "load_models", "main", "url_backend"]

#: The command's name in usage lines and in the shell-completion variable
#: (``_CHAINLIT_ORM_COMPLETE``), whichever way it was started (``python -m chainlit_orm`` too).
PROG = "chainlit-orm"

F = TypeVar("F", bound=Callable[..., Any])


def load_models(spec: str | None) -> ModelSet:
    """Load the model set named ``package.module:attr`` (the default set when None).

    The current directory is put first on ``sys.path``, as uvicorn does for its app argument, so
    an app's own module is found when the command runs from the app's directory. ``attr`` must
    be a ``ModelSet``: nothing named on the command line is called (``os.path:join`` is refused,
    not run).

    Raises:
        ConfigurationError: a malformed spec, a module that cannot be imported or that raises
            while it is imported (the message names the module and the exception), a missing
            attribute, or something that is not a ``ModelSet``.
    """
    from chainlit_orm.models.modelset import DEFAULT_MODELS, ModelSet

    if spec is None:
        return DEFAULT_MODELS
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(f"--models must be package.module:attribute, got {spec!r}")
    cwd = os.getcwd()
    if sys.path[:1] != [cwd]:
        # first, even if an editable install put it at the end: a site-packages package with
        # the same top-level name (``tests`` is a common one) must not shadow the app's module
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"--models: cannot import {module_name!r}: {exc}") from exc
    except Exception as exc:  # the user's module failed: one line names it and the error
        raise ConfigurationError(
            f"--models: importing {module_name!r} raised {type(exc).__name__}: {exc}") from exc
    try:
        found = getattr(module, attribute)
    except AttributeError as exc:
        raise ConfigurationError(f"--models: {module_name} has no attribute {attribute!r}") from exc
    if not isinstance(found, ModelSet):
        what = f"the class {found.__name__}" if isinstance(found, type) else (
            f"a {type(found).__name__}")
        raise ConfigurationError(
            f"--models: {spec} is {what}, not a ModelSet "
            "(build one with chainlit_orm.models.ModelSet.build)"
        )
    return found


def url_backend(url: str) -> str:
    """The backend a database URL names: ``postgresql``, ``sqlite``, ``mysql`` or ``dynamodb``.

    Read by :func:`chainlit_orm.urls.parse_url`, as everywhere else, so ``postgres://`` is
    PostgreSQL here as in ``from_env()``, and ``mariadb`` URLs count as ``mysql`` (one dialect,
    one DDL).

    Raises:
        ConfigurationError: the URL is not a supported one; the message names what is.
    """
    from chainlit_orm.urls import parse_url

    return parse_url(url).backend


# --------------------------------------------------------------------------- the exit codes


class ArgumentError(click.ClickException):
    """A value the command refuses before doing anything: exit 2 (a usage error), shown as the
    one line ``chainlit-orm: error: ...`` the package's other refusals use, since the message
    (from the package's own parsers) already names what is accepted."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        print(f"{PROG}: error: {self.message}", file=file or sys.stderr)


@contextlib.contextmanager
def _arguments() -> Iterator[None]:
    """Read the command line's values inside this block: a typed error raised here means the
    command line is wrong (exit 2), not that the work failed (exit 1). A missing driver is the
    exception: the command line is right, the installation is not."""
    try:
        yield
    except MissingDependencyError:
        raise
    except ChainlitORMError as exc:
        raise ArgumentError(mask_url(exc)) from exc


def database_url(url: str | None) -> str:
    """The database URL argument, else the environment's, read exactly as ``from_env()`` does.

    Raises:
        click.UsageError: neither is given (exit 2, naming the variables).
    """
    from chainlit_orm.urls import database_url_from_env

    if url:
        return url
    found = database_url_from_env(os.environ)
    if found is None:
        raise click.UsageError(
            f"no database URL: pass URL, or set {' or '.join(DATABASE_URL_VARIABLES)} "
            "(read in that order, as from_env() reads them)")
    return found


# ----------------------------------------------------------------------- the value types
# Every malformed option value is a usage error (exit 2) before anything runs, never a failed run
# (exit 1), and no value is silently replaced by a default.


class _Seconds(click.ParamType):  # type: ignore[type-arg]  # generic from click 8.5; >=8.1 supported
    """A positive, finite number of seconds (``0``, ``-5``, ``nan`` and ``inf`` bound nothing;
    click's FloatRange lets ``nan`` through)."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> float:
        if isinstance(value, float) and math.isfinite(value) and value > 0:
            return value
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not (math.isfinite(number) and number > 0):
            self.fail(f"{value!r} is not a positive, finite number of seconds", param, ctx)
        return number


class _Timestamp(click.ParamType):  # type: ignore[type-arg]  # as _Seconds
    """An ISO-8601 instant, read by the parser the transfer itself uses
    (:func:`chainlit_orm.models.types.canonical_timestamp`), kept as written."""

    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> str:
        from chainlit_orm.models.types import canonical_timestamp

        try:
            canonical_timestamp(str(value))
        except ChainlitORMError as exc:
            self.fail(str(exc), param, ctx)
        return str(value)


SECONDS = _Seconds()
TIMESTAMP = _Timestamp()


# ------------------------------------------------------------------------ the command group


class _Commands(click.Group):
    """Lists the commands in the order they are defined (the README's order), not sorted."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


_EPILOG = f"""\b
A database URL left out is read from {' then '.join(DATABASE_URL_VARIABLES)}, as from_env()
reads them; storage URLs default to {STORAGE_URL_VARIABLE}.
Exit status: 0 done; 1 refused or failed (one line on stderr); 2 usage error.
Shell completion (bash; zsh_source and fish_source for zsh and fish):
  eval "$(_CHAINLIT_ORM_COMPLETE=bash_source {PROG})"
"""


@click.group(cls=_Commands, epilog=_EPILOG,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name=PROG, message="%(prog)s %(version)s")
def cli() -> None:
    """Generate, check and apply chainlit-orm's schemas; copy, export and import chat history;
    erase users and purge old threads."""


_MODELS_HELP = "model set as package.module:attribute (default: the five default models)"
_URL_HELP = ("URL is a SQLAlchemy URL or dynamodb://TABLE?region=...&endpoint_url=...; "
             f"left out, it is read from {' then '.join(DATABASE_URL_VARIABLES)}.")


def _models_option(function: F) -> F:
    return click.option("--models", metavar="MODULE:ATTR", help=_MODELS_HELP)(function)


def _url_argument(function: F) -> F:
    return click.argument("url", metavar="[URL]", required=False)(function)


def _run(work: Awaitable[Any]) -> Any:
    async def wrapped() -> Any:
        return await work

    return asyncio.run(wrapped())


# ----------------------------------------------------------------------- schema commands


@cli.command("generate", short_help="write the generated schemas (SQL DDL, DynamoDB mapping, "
             "CloudFormation)")
@_models_option
@click.option("--out", default="generated", metavar="DIR",
              help="output directory (default: ./generated)")
@click.option("--check", is_flag=True, help="write nothing; exit 1 with a diff when a file drifts")
def generate_command(models: str | None, out: str, check: bool) -> int:
    """Write the files generated from the models (SQL DDL per dialect, the DynamoDB mapping, the
    CloudFormation template), or with --check compare them with the files in DIR."""
    from chainlit_orm.schema_gen import generated_files

    with _arguments():
        files = generated_files(load_models(models))
    directory = Path(out)
    if check:
        drifted = 0
        for name, expected in files.items():
            path = directory / name
            actual = path.read_text(encoding="utf-8") if path.is_file() else ""
            if actual != expected:
                drifted += 1
                sys.stdout.writelines(difflib.unified_diff(
                    actual.splitlines(keepends=True), expected.splitlines(keepends=True),
                    fromfile=f"{path}" if path.is_file() else f"{path} (missing)",
                    tofile=f"{path} (from the models)",
                ))
        if drifted:
            print(f"{drifted} of {len(files)} files in {directory}/ drift from the models; "
                  f"run: chainlit-orm generate --out {directory}")
            return 1
        print(f"{directory}/ is up to date ({len(files)} files)")
        return 0
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = directory / name
        if path.is_file() and path.read_text(encoding="utf-8") == content:
            print(f"unchanged {path}")
            continue
        path.write_text(content, encoding="utf-8")
        print(f"wrote {path}")
    return 0


@cli.command("migrate", short_help="create or upgrade a database or DynamoDB table (additive, "
             "idempotent)", epilog=_URL_HELP)
@_url_argument
@click.option("--dry-run", is_flag=True, help="print the plan, change nothing")
@click.option("--dedupe-feedback", is_flag=True,
              help="keep one feedback per step (the newest) before adding the unique index on "
              "forId")
@_models_option
@click.option("--timeout", type=SECONDS, default=DEFAULT_MIGRATE_TIMEOUT, metavar="SECONDS",
              help=f"give up after this long (default: {DEFAULT_MIGRATE_TIMEOUT:g}; raise it for "
              "a backfill of a large table)")
@click.option("--history", is_flag=True,
              help="print the schema versions recorded in the database and what each added; "
              "change nothing")
def migrate_command(url: str | None, dry_run: bool, dedupe_feedback: bool, models: str | None,
                    timeout: float, history: bool) -> int:
    """Create or upgrade the tables of an existing database, or a DynamoDB table, to the models'
    schema. Additive (columns, indexes, tables) and idempotent: a second run changes nothing.
    The database itself must exist."""
    url = database_url(url)
    if history and dedupe_feedback:
        raise click.UsageError("--history changes nothing; it cannot be combined with "
                               "--dedupe-feedback")
    with _arguments():
        url_backend(url)  # a bad URL is refused before the models are imported
        model_set = load_models(models)
    if history:
        return _print_history(url, model_set)
    # imported here: the migrators load SQLAlchemy's Alembic machinery, the CLI's other commands
    # do not need it
    from chainlit_orm.migrations import migrate

    result = _run(migrate(url, models=model_set, dry_run=dry_run,
                          dedupe_feedback=dedupe_feedback, timeout=timeout))
    for line in result.lines:
        print(line)
    return 0


def _print_history(url: str, models: ModelSet) -> int:
    """``migrate --history``: the entries :func:`chainlit_orm.migrations.schema_history`
    returns, one line each (or a line saying there are none)."""
    from chainlit_orm.migrations import schema_history

    entries = _run(schema_history(url, models))
    lines = [entry.describe() for entry in entries] or ["no schema history recorded"]
    for line in lines:
        print(line)
    return 0


def _complete_dialect(ctx: click.Context, param: click.Parameter, incomplete: str
                      ) -> list[CompletionItem]:
    return [CompletionItem(d) for d in SQL_DIALECTS if d.startswith(incomplete)]


@cli.command("ddl", short_help="print the DDL for one SQL dialect",
             help=f"Print the DDL of the models for DIALECT: one of "
             f"{', '.join(SQL_DIALECTS)} (mysql also covers MariaDB).")
@click.argument("dialect", metavar="DIALECT", shell_complete=_complete_dialect)
@_models_option
def ddl_command(dialect: str, models: str | None) -> int:
    # the dialect is checked by ddl() itself (its message names the supported ones), not by a
    # click.Choice, so the library and the command refuse it with the same words
    from chainlit_orm.schema_gen import ddl

    with _arguments():
        text = ddl(load_models(models), dialect)
    sys.stdout.write(text)
    return 0


# ----------------------------------------------------------------------- transfer commands
# One small function per command, each delegating to chainlit_orm.transfer; the decorators only
# declare their options.


def _transfer_progress() -> Progress:
    from chainlit_orm.transfer.progress import for_stream

    return for_stream(sys.stderr)


def _print_summary(summary: Summary) -> int:
    for line in summary.lines():
        print(line)
    return 0


def _transfer_options(*, scope: bool, source_kind: bool, resume: bool) -> Callable[[F], F]:
    """The options copy, export and import share (``scope``: --user/--since; ``resume``:
    --checkpoint/--verify)."""
    options: list[Callable[[F], F]] = []
    if scope:
        options += [
            click.option("--user", metavar="IDENTIFIER",
                         help="one user's data only (a data-access export)"),
            click.option("--since", type=TIMESTAMP, metavar="TIME",
                         help="only threads active at or after TIME (ISO-8601)"),
        ]
    options += [
        click.option("--files/--no-files", default=True,
                     help="copy element files too (default: yes)"),
        click.option("--batch", type=click.IntRange(min=1), default=DEFAULT_TRANSFER_BATCH,
                     metavar="N", help=f"threads per batch (default: {DEFAULT_TRANSFER_BATCH})"),
    ]
    if source_kind:
        options.append(click.option("--source-kind", type=click.Choice(SOURCE_KINDS),
                                    help="which schema to read when SRC holds both"))
    if resume:
        options += [
            click.option("--checkpoint", metavar="FILE",
                         help="resume file (default: .chainlit-orm-copy-<hash>.json here)"),
            click.option("--verify", is_flag=True,
                         help="copy nothing; compare the destination with the source"),
            click.option("--retention", metavar="AGE",
                         help="a DynamoDB destination's retention= (e.g. 90d): thread items get "
                              "the TTL the layer writes (expiresAt)"),
        ]
    options += [
        click.option("--timeout", type=SECONDS, default=DEFAULT_TRANSFER_TIMEOUT,
                     metavar="SECONDS", help="seconds each statement may take "
                     f"(default: {DEFAULT_TRANSFER_TIMEOUT:g})"),
        _models_option,
    ]

    def apply(function: F) -> F:
        for option in reversed(options):
            function = option(function)
        return function

    return apply


_STORAGE_HELP = "storage URL of {} element files (default: " + STORAGE_URL_VARIABLE + ")"


@cli.command("copy", short_help="copy users, threads, steps, elements with files and feedback "
             "between stores (resumable, verified)")
@click.argument("src", metavar="SRC")
@click.argument("dst", metavar="DST")
@click.option("--src-storage", metavar="URL", help=_STORAGE_HELP.format("SRC's"))
@click.option("--dst-storage", metavar="URL", help=_STORAGE_HELP.format("DST's"))
@_transfer_options(scope=True, source_kind=True, resume=True)
def copy_command(src: str, dst: str, src_storage: str | None, dst_storage: str | None,
                 user: str | None, since: str | None, files: bool, batch: int,
                 source_kind: str | None, checkpoint: str | None, verify: bool,
                 retention: str | None, timeout: float, models: str | None) -> int:
    """Copy users, threads, steps, elements with their files, and feedback from SRC to DST, in
    batches, resumable and verified. SRC is a database URL, dynamodb://TABLE?..., or the
    PostgreSQL URL of Chainlit's official data layer; DST a database URL or
    dynamodb://TABLE?..."""
    from chainlit_orm.transfer import copy
    from chainlit_orm.urls import parse_url

    with _arguments():
        parse_url(src)
        parse_url(dst)
        model_set = load_models(models)
        kept = _retention(retention, dst)
    return _print_summary(_run(copy(
        src, dst, src_storage=src_storage, dst_storage=dst_storage, user=user, since=since,
        files=files, batch=batch, source_kind=source_kind, checkpoint=checkpoint,
        verify_only=verify, models=model_set, progress=_transfer_progress(), timeout=timeout,
        retention=kept)))


@cli.command("export", short_help="write a portable bundle directory")
@click.argument("src", metavar="SRC")
@click.argument("out", metavar="OUT")
@click.option("--src-storage", metavar="URL", help=_STORAGE_HELP.format("SRC's"))
@click.option("--canonical", is_flag=True,
              help="leave the export time and source out of the manifest")
@_transfer_options(scope=True, source_kind=True, resume=False)
def export_command(src: str, out: str, src_storage: str | None, canonical: bool,
                   user: str | None, since: str | None, files: bool, batch: int,
                   source_kind: str | None, timeout: float, models: str | None) -> int:
    """Write the chat history of SRC (as for copy) to the bundle directory OUT: JSON lines and
    the element files, with a manifest of digests."""
    from chainlit_orm.transfer import export
    from chainlit_orm.urls import parse_url

    with _arguments():
        parse_url(src)
        model_set = load_models(models)
    return _print_summary(_run(export(
        src, out, src_storage=src_storage, user=user, since=since, files=files, batch=batch,
        source_kind=source_kind, canonical=canonical, models=model_set,
        progress=_transfer_progress(), timeout=timeout)))


@cli.command("import", short_help="write a bundle into a store (resumable, verified)")
@click.argument("bundle", metavar="IN")
@click.argument("dst", metavar="DST")
@click.option("--dst-storage", metavar="URL", help=_STORAGE_HELP.format("DST's"))
@_transfer_options(scope=False, source_kind=False, resume=True)
def import_command(bundle: str, dst: str, dst_storage: str | None, files: bool, batch: int,
                   checkpoint: str | None, verify: bool, retention: str | None, timeout: float,
                   models: str | None) -> int:
    """Write the bundle directory IN into DST (a database URL or dynamodb://TABLE?...),
    resumable and verified; the whole bundle is checked before anything is written."""
    from chainlit_orm.transfer import import_bundle
    from chainlit_orm.urls import parse_url

    with _arguments():
        parse_url(dst)
        model_set = load_models(models)
        kept = _retention(retention, dst)
    return _print_summary(_run(import_bundle(
        bundle, dst, dst_storage=dst_storage, files=files, batch=batch, checkpoint=checkpoint,
        verify_only=verify, models=model_set, progress=_transfer_progress(), timeout=timeout,
        retention=kept)))


def _retention(retention: str | None, dst: str) -> Any:
    """``--retention AGE`` as a timedelta (None without it), refused for a SQL destination;
    call inside :func:`_arguments`."""
    from chainlit_orm.lifecycle.purge import parse_age
    from chainlit_orm.transfer.copy import check_retention

    kept = parse_age(retention) if retention is not None else None
    check_retention(dst, kept)
    return kept


# ---------------------------------------------------------------------- lifecycle commands
# chainlit_orm.lifecycle does the work; here only the layer is opened the way the app opens it.


@dataclass(frozen=True)
class _LayerSpec:
    """What the lifecycle commands open a layer with, read (and checked) from the command line
    before anything is done."""

    url: str
    parsed: DatabaseURL
    models: ModelSet
    hook: OnDelete | None
    storage: BaseStorageClient | None
    on_delete_timeout: float
    on_delete_breaker: int

    async def run(self, work: Callable[[Any], Awaitable[Any]], *, soft_delete: Any = None
                  ) -> Any:
        """``work(layer)`` on the layer the app would open, closed afterwards."""
        options: dict[str, Any] = {"models": self.models, "on_delete": self.hook,
                                   "soft_delete": soft_delete,
                                   "on_delete_timeout": self.on_delete_timeout,
                                   "on_delete_breaker": self.on_delete_breaker}
        layer: Any
        from chainlit_orm.urls import DynamoURL

        if isinstance(self.parsed, DynamoURL):
            from chainlit_orm.layers.dynamodb import DynamoDataLayer

            layer = DynamoDataLayer(self.parsed.table, storage=self.storage,
                                    region=self.parsed.region,
                                    endpoint_url=self.parsed.endpoint_url,
                                    profile=self.parsed.profile, **options)
        else:
            from chainlit_orm.layers.sql import SQLDataLayer

            layer = SQLDataLayer(self.url, storage=self.storage, create_schema=False, **options)
        try:
            return await work(layer)
        finally:
            await layer.close()


def _layer_spec(url: str | None, models: str | None, storage: str | None,
                on_delete: str | None, on_delete_timeout: float,
                on_delete_breaker: int) -> _LayerSpec:
    """The URL (else the environment's), the models, the ``--on-delete`` hook and the storage
    (``--storage``, else ``CHAINLIT_ORM_STORAGE_URL``), checked in that order."""
    from chainlit_orm.lifecycle.hooks import load_hook
    from chainlit_orm.urls import parse_url

    url = database_url(url)
    with _arguments():
        parsed = parse_url(url)  # a bad URL is refused before the models are imported
        model_set = load_models(models)
        hook = load_hook(on_delete) if on_delete else None
        storage_url = storage or os.environ.get(STORAGE_URL_VARIABLE) or None
        client = None
        if storage_url:
            from chainlit_orm.storage import FsspecStorage

            client = FsspecStorage(storage_url, mount=False)
    return _LayerSpec(url, parsed, model_set, hook, client, on_delete_timeout,
                      on_delete_breaker)


def _lifecycle_options(function: F) -> F:
    for option in reversed([
        click.option("--storage", metavar="URL",
                     help=f"element storage (default: {STORAGE_URL_VARIABLE})"),
        click.option("--on-delete", metavar="MODULE:ATTR",
                     help="async hook(thread_id, user_id) called for each removed thread"),
        click.option("--dry-run", is_flag=True,
                     help="report what would be removed, change nothing"),
        click.option("--timeout", type=SECONDS, default=None, metavar="SECONDS",
                     help="seconds each batch may take (default: the layer's 30 s per call)"),
        click.option("--on-delete-timeout", type=SECONDS, default=DEFAULT_HOOK_TIMEOUT,
                     metavar="SECONDS", help="seconds one hook call may take (default: "
                     f"{DEFAULT_HOOK_TIMEOUT:g})"),
        click.option("--on-delete-breaker", type=click.IntRange(min=1),
                     default=DEFAULT_HOOK_BREAKER, metavar="N",
                     help="hook calls in a row past --on-delete-timeout after which the run "
                     "stops calling the hook; the threads left are reported as failed "
                     f"(default: {DEFAULT_HOOK_BREAKER})"),
        _models_option,
    ]):
        function = option(function)
    return function


@cli.command("erase-user", short_help="remove a user and everything naming them (an erasure "
             "request)", epilog=_URL_HELP)
@_url_argument
@click.argument("identifier", metavar="IDENTIFIER", required=False)
@_lifecycle_options
def erase_user_command(url: str | None, identifier: str | None, storage: str | None,
                       on_delete: str | None, dry_run: bool, timeout: float | None,
                       on_delete_timeout: float, on_delete_breaker: int,
                       models: str | None) -> int:
    """Remove the user IDENTIFIER and everything naming them: threads, steps, elements with
    their files, feedback (an erasure request)."""
    if identifier is None:  # one argument: the identifier, the URL from the environment
        url, identifier = None, url
    if identifier is None:
        raise click.UsageError("Missing argument 'IDENTIFIER'.")
    spec = _layer_spec(url, models, storage, on_delete, on_delete_timeout, on_delete_breaker)
    name = identifier
    report = _run(spec.run(lambda layer: layer.erase_user(name, dry_run=dry_run,
                                                          timeout=timeout)))
    for line in report.lines():
        print(line)
    return 0


def _ages(older_than: str | None, soft_delete: str | None) -> tuple[Any, Any]:
    from chainlit_orm.lifecycle.purge import parse_age

    with _arguments():
        older = parse_age(older_than) if older_than else None
        trash = parse_age(soft_delete) if soft_delete else None
    if older is None and trash is None:
        raise click.UsageError("purge needs --older-than AGE (or --soft-delete AGE for the "
                               "trash only)")
    return older, trash


@cli.command("purge", short_help="remove threads inactive for longer than --older-than "
             "(retention)", epilog=_URL_HELP)
@_url_argument
@_lifecycle_options
@click.option("--older-than", metavar="AGE",
              help="e.g. 90d: threads whose last activity is older expire")
@click.option("--keep-shared/--no-keep-shared", default=True,
              help="keep shared threads (default: yes)")
@click.option("--keep-favorites/--no-keep-favorites", default=True,
              help="keep threads holding a favorited step (default: yes)")
@click.option("--keep-metadata", metavar="KEY", multiple=True,
              help="keep threads whose metadata has KEY set to true (repeatable)")
@click.option("--soft-delete", metavar="AGE",
              help="the app's trash window (soft_delete=): also remove threads trashed longer "
              "ago")
@click.option("--batch", type=click.IntRange(1, 10_000), default=DEFAULT_PURGE_BATCH,
              metavar="N", help=f"threads per batch (default: {DEFAULT_PURGE_BATCH})")
@click.option("--orphan-grace", metavar="AGE", default=None,
              help="SQL: also remove stored element files no row refers to, once older than "
              "AGE (e.g. 1h; default: no such sweep). Only when no other database or app "
              "shares the storage: their files look unreferenced from here")
def purge_command(url: str | None, storage: str | None, on_delete: str | None, dry_run: bool,
                  timeout: float | None, on_delete_timeout: float, on_delete_breaker: int,
                  models: str | None,
                  older_than: str | None, keep_shared: bool, keep_favorites: bool,
                  keep_metadata: tuple[str, ...], soft_delete: str | None, batch: int,
                  orphan_grace: str) -> int:
    """Remove the threads whose last activity is older than --older-than (with their steps,
    elements, files and feedback), except those kept by the --keep options."""
    older, trash = _ages(older_than, soft_delete)
    from chainlit_orm.lifecycle.purge import parse_age

    with _arguments():
        grace = parse_age(orphan_grace) if orphan_grace is not None else None
    spec = _layer_spec(url, models, storage, on_delete, on_delete_timeout, on_delete_breaker)
    report = _run(spec.run(lambda layer: layer.purge(
        older_than=older, keep_shared=keep_shared, keep_favorites=keep_favorites,
        keep_metadata=keep_metadata, dry_run=dry_run, batch=batch, timeout=timeout,
        orphan_grace=grace), soft_delete=trash))
    print(f"purge {mask_url(spec.url)}")
    for line in report.lines():
        print(line)
    return 0


# ------------------------------------------------------------------------------- the edge

#: Chainlit's variable for the directory it writes its config, translations and ``.files/`` to
#: when imported (the working directory by default).
CHAINLIT_APP_ROOT = "CHAINLIT_APP_ROOT"


@contextlib.contextmanager
def _chainlit_outside_cwd() -> Iterator[None]:
    """Point ``CHAINLIT_APP_ROOT`` at a temporary directory for the command's run (see the
    module docstring), unless it is set or Chainlit is already imported; remove it afterwards.

    Why not import only Chainlit's types: any ``chainlit.*`` import runs ``chainlit/__init__``,
    whose config module makes ``.files/`` and writes ``.chainlit/`` at import time. A temporary
    directory that cannot be made (no writable temp dir) leaves Chainlit's default in place."""
    if os.environ.get(CHAINLIT_APP_ROOT) or "chainlit" in sys.modules:
        yield
        return
    try:
        root = tempfile.mkdtemp(prefix="chainlit-orm-")
    except OSError:
        yield
        return
    os.environ[CHAINLIT_APP_ROOT] = root
    try:
        yield
    finally:
        if os.environ.get(CHAINLIT_APP_ROOT) == root:
            del os.environ[CHAINLIT_APP_ROOT]
        shutil.rmtree(root, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (the console script exits with it).

    ``argv`` defaults to ``sys.argv[1:]``. A shell-completion request (``_CHAINLIT_ORM_COMPLETE``
    set) prints its answer and raises ``SystemExit``, as click does for every program.
    """
    args = list(argv) if argv is not None else None
    try:
        with _chainlit_outside_cwd():
            code = cli.main(args=args, prog_name=PROG, standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        print("Aborted!", file=sys.stderr)
        return 1
    except VerificationError as exc:
        print(f"{PROG}: verification failed: {mask_url(exc)}", file=sys.stderr)
        return 1
    except ChainlitORMError as exc:
        print(f"{PROG}: error: {mask_url(exc)}", file=sys.stderr)
        return 1
    return code if isinstance(code, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
