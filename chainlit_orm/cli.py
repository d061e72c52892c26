"""The ``chainlit-orm`` console command: generate, check and apply the schemas.

::

    chainlit-orm generate [--models pkg.mod:attr] [--out DIR] [--check]
    chainlit-orm migrate URL [--dry-run] [--dedupe-feedback] [--models pkg.mod:attr] [--history]
    chainlit-orm ddl DIALECT [--models pkg.mod:attr]
    chainlit-orm copy SRC DST [--src-storage URL] [--dst-storage URL] [--user IDENTIFIER]
                      [--since TIME] [--files/--no-files] [--batch N] [--source-kind KIND]
                      [--checkpoint FILE] [--verify] [--models pkg.mod:attr]
    chainlit-orm export SRC OUT [--src-storage URL] [--user IDENTIFIER] [--since TIME]
                        [--files/--no-files] [--batch N] [--source-kind KIND] [--canonical]
    chainlit-orm import IN DST [--dst-storage URL] [--files/--no-files] [--batch N]
                        [--checkpoint FILE] [--verify]
    chainlit-orm erase-user URL IDENTIFIER [--dry-run] [--storage URL] [--on-delete MOD:ATTR]
    chainlit-orm purge URL [--older-than AGE] [--keep-shared/--no-keep-shared]
                       [--keep-favorites/--no-keep-favorites] [--keep-metadata KEY]...
                       [--soft-delete AGE] [--batch N] [--dry-run] [--storage URL]
                       [--on-delete MOD:ATTR]

Exit codes: 0 success; 1 ``generate --check`` found drift, or a transfer's verification found a
difference; 2 bad input (an unsupported
dialect, an unreachable server, refused credentials, a schema that cannot be migrated), reported
as one line with any password masked. :class:`~chainlit_orm.errors.ChainlitORMError` is caught
here, at the edge, and nowhere else; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chainlit_orm.errors import (
    ChainlitORMError,
    ConfigurationError,
    VerificationError,
    mask_url,
)
from chainlit_orm.layers.deadline import DEFAULT_MIGRATE_TIMEOUT
from chainlit_orm.models.modelset import DEFAULT_MODELS, ModelSet
from chainlit_orm.schema_gen import SUPPORTED_DIALECTS, ddl, generated_files
from chainlit_orm.urls import DynamoURL, parse_url

if TYPE_CHECKING:
    from chainlit_orm.transfer.progress import Progress, Summary

__all__ = ["load_models", "main", "url_backend"]



def load_models(spec: str | None) -> ModelSet:
    """Load the model set named ``package.module:attr`` (the default set when None).

    The current directory is put first on ``sys.path``, as uvicorn does for its app argument, so
    an app's own module is found when the command runs from the app's directory. ``attr`` may
    also be a callable returning a set.

    Raises:
        ConfigurationError: a malformed spec, a module that cannot be imported, a missing
            attribute, or something that is not a ``ModelSet``.
    """
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
    try:
        found = getattr(module, attribute)
    except AttributeError as exc:
        raise ConfigurationError(f"--models: {module_name} has no attribute {attribute!r}") from exc
    if callable(found) and not isinstance(found, type | ModelSet):
        found = found()
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
    return parse_url(url).backend


def _generate(args: argparse.Namespace) -> int:
    models = load_models(args.models)
    files = generated_files(models)
    out = Path(args.out)
    if args.check:
        drifted = 0
        for name, expected in files.items():
            path = out / name
            actual = path.read_text(encoding="utf-8") if path.is_file() else ""
            if actual != expected:
                drifted += 1
                sys.stdout.writelines(difflib.unified_diff(
                    actual.splitlines(keepends=True), expected.splitlines(keepends=True),
                    fromfile=f"{path}" if path.is_file() else f"{path} (missing)",
                    tofile=f"{path} (from the models)",
                ))
        if drifted:
            print(f"{drifted} of {len(files)} files in {out}/ drift from the models; "
                  f"run: chainlit-orm generate --out {out}")
            return 1
        print(f"{out}/ is up to date ({len(files)} files)")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = out / name
        if path.is_file() and path.read_text(encoding="utf-8") == content:
            print(f"unchanged {path}")
            continue
        path.write_text(content, encoding="utf-8")
        print(f"wrote {path}")
    return 0


def _migrate(args: argparse.Namespace) -> int:
    url_backend(args.url)  # a bad URL is refused before the models are imported
    models = load_models(args.models)
    # imported here: the migrators load SQLAlchemy's Alembic machinery, the CLI's other commands
    # do not need it
    from chainlit_orm.migrations import migrate, schema_history

    if args.history:  # print the recorded schema history, change nothing
        entries = asyncio.run(schema_history(args.url, models))
        print("\n".join(e.describe() for e in entries) or "no schema history recorded")
        return 0
    result = asyncio.run(migrate(args.url, models=models, dry_run=args.dry_run,
                                 dedupe_feedback=args.dedupe_feedback, timeout=args.timeout))
    lines = list(result.lines)
    for line in lines:
        print(line)
    return 0


def _ddl_command(args: argparse.Namespace) -> int:
    sys.stdout.write(ddl(load_models(args.models), args.dialect))
    return 0


# ------------------------------------------------------------------ transfer commands
# One small function per command, each delegating to chainlit_orm.transfer; the parser below only
# declares their options.


def _transfer_progress() -> Progress:
    from chainlit_orm.transfer.progress import for_stream

    return for_stream(sys.stderr)


def _print_summary(summary: Summary) -> int:
    for line in summary.lines():
        print(line)
    return 0


def _copy(args: argparse.Namespace) -> int:
    from chainlit_orm.transfer import copy

    return _print_summary(asyncio.run(copy(
        args.src, args.dst, src_storage=args.src_storage, dst_storage=args.dst_storage,
        user=args.user, since=args.since, files=args.files, batch=args.batch,
        source_kind=args.source_kind, checkpoint=args.checkpoint, verify_only=args.verify,
        models=load_models(args.models), progress=_transfer_progress())))


def _export(args: argparse.Namespace) -> int:
    from chainlit_orm.transfer import export

    return _print_summary(asyncio.run(export(
        args.src, args.out, src_storage=args.src_storage, user=args.user, since=args.since,
        files=args.files, batch=args.batch, source_kind=args.source_kind,
        canonical=args.canonical, models=load_models(args.models),
        progress=_transfer_progress())))


def _import(args: argparse.Namespace) -> int:
    from chainlit_orm.transfer import import_bundle

    return _print_summary(asyncio.run(import_bundle(
        args.bundle, args.dst, dst_storage=args.dst_storage, files=args.files,
        batch=args.batch, checkpoint=args.checkpoint, verify_only=args.verify,
        models=load_models(args.models), progress=_transfer_progress())))


# ----------------------------------------------------------------- lifecycle commands
# chainlit_orm.lifecycle does the work; here only the layer is opened the way the app opens it.


def _lifecycle_layer(args: argparse.Namespace, *, soft_delete: Any = None) -> Any:
    """The layer on ``args.url`` with the app's storage (``--storage``, else
    ``CHAINLIT_ORM_STORAGE_URL``) and ``--on-delete``."""
    from chainlit_orm.lifecycle.hooks import load_hook

    parsed = parse_url(args.url)  # a bad URL is refused before the models are imported
    models = load_models(args.models)
    hook = load_hook(args.on_delete) if args.on_delete else None
    storage_url = args.storage or os.environ.get("CHAINLIT_ORM_STORAGE_URL") or None
    storage = None
    if storage_url:
        from chainlit_orm.storage import FsspecStorage

        storage = FsspecStorage(storage_url, mount=False)
    options: dict[str, Any] = {"models": models, "on_delete": hook, "soft_delete": soft_delete}
    if isinstance(parsed, DynamoURL):
        from chainlit_orm.layers.dynamodb import DynamoDataLayer

        return DynamoDataLayer(parsed.table, storage=storage, region=parsed.region,
                               endpoint_url=parsed.endpoint_url, profile=parsed.profile,
                               **options)
    from chainlit_orm.layers.sql import SQLDataLayer

    return SQLDataLayer(args.url, storage=storage, create_schema=False, **options)


async def _with_layer(args: argparse.Namespace, work: Any, **options: Any) -> Any:
    layer = _lifecycle_layer(args, **options)
    try:
        return await work(layer)
    finally:
        await layer.close()


def _erase_user(args: argparse.Namespace) -> int:
    report = asyncio.run(_with_layer(
        args, lambda layer: layer.erase_user(args.identifier, dry_run=args.dry_run)))
    for line in report.lines():
        print(line)
    return 0


def _purge(args: argparse.Namespace) -> int:
    from chainlit_orm.lifecycle.purge import parse_age

    older = parse_age(args.older_than) if args.older_than else None
    trash = parse_age(args.soft_delete) if args.soft_delete else None
    if older is None and trash is None:
        raise ConfigurationError("purge needs --older-than AGE (or --soft-delete AGE for the "
                                 "trash only)")
    report = asyncio.run(_with_layer(args, lambda layer: layer.purge(
        older_than=older, keep_shared=args.keep_shared, keep_favorites=args.keep_favorites,
        keep_metadata=args.keep_metadata or (), dry_run=args.dry_run, batch=args.batch),
        soft_delete=trash))
    print(f"purge {mask_url(args.url)}")
    for line in report.lines():
        print(line)
    return 0


def _lifecycle_parsers(commands: Any, models_help: str) -> None:
    from chainlit_orm.lifecycle.purge import DEFAULT_BATCH

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("url", metavar="URL",
                            help="SQLAlchemy URL, or dynamodb://TABLE?region=...")
        parser.add_argument("--storage", metavar="URL",
                            help="element storage (default: CHAINLIT_ORM_STORAGE_URL)")
        parser.add_argument("--on-delete", metavar="MODULE:ATTR",
                            help="async hook(thread_id, user_id) called for each removed thread")
        parser.add_argument("--dry-run", action="store_true",
                            help="report what would be removed, change nothing")
        parser.add_argument("--models", metavar="MODULE:ATTR", help=models_help)

    erase = commands.add_parser(
        "erase-user", help="remove a user and everything naming them (an erasure request)")
    common(erase)
    erase.add_argument("identifier", metavar="IDENTIFIER", help="the user's identifier")
    erase.set_defaults(handler=_erase_user)

    purge = commands.add_parser(
        "purge", help="remove threads inactive for longer than --older-than (retention)")
    common(purge)
    purge.add_argument("--older-than", metavar="AGE",
                       help="e.g. 90d: threads whose last activity is older expire")
    purge.add_argument("--keep-shared", action=argparse.BooleanOptionalAction, default=True,
                       help="keep shared threads (default: yes)")
    purge.add_argument("--keep-favorites", action=argparse.BooleanOptionalAction, default=True,
                       help="keep threads holding a favorited step (default: yes)")
    purge.add_argument("--keep-metadata", metavar="KEY", action="append",
                       help="keep threads whose metadata has KEY set to true (repeatable)")
    purge.add_argument("--soft-delete", metavar="AGE",
                       help="the app's trash window (soft_delete=): also remove threads "
                            "trashed longer ago")
    purge.add_argument("--batch", type=int, default=DEFAULT_BATCH, metavar="N",
                       help=f"threads per batch (default: {DEFAULT_BATCH})")
    purge.set_defaults(handler=_purge)


def _transfer_parsers(commands: Any, models_help: str) -> None:
    from chainlit_orm.transfer.copy import DEFAULT_BATCH, SOURCE_KINDS

    def common(parser: argparse.ArgumentParser, *, scope: bool, source_kind: bool,
               resume: bool) -> None:
        if scope:
            parser.add_argument("--user", metavar="IDENTIFIER",
                                help="one user's data only (a data-access export)")
            parser.add_argument("--since", metavar="TIME",
                                help="only threads active at or after TIME (ISO-8601)")
        parser.add_argument("--files", action=argparse.BooleanOptionalAction, default=True,
                            help="copy element files too (default: yes)")
        parser.add_argument("--batch", type=int, default=DEFAULT_BATCH, metavar="N",
                            help=f"threads per batch (default: {DEFAULT_BATCH})")
        if source_kind:
            parser.add_argument("--source-kind", choices=SOURCE_KINDS,
                                help="which schema to read when SRC holds both")
        if resume:
            parser.add_argument("--checkpoint", metavar="FILE",
                                help="resume file (default: .chainlit-orm-copy-<hash>.json here)")
            parser.add_argument("--verify", action="store_true",
                                help="copy nothing; compare the destination with the source")
        parser.add_argument("--models", metavar="MODULE:ATTR", help=models_help)

    storage_help = "storage URL of {} element files (default: CHAINLIT_ORM_STORAGE_URL)"
    copy = commands.add_parser(
        "copy", help="copy users, threads, steps, elements with files and feedback between "
        "stores (resumable, verified)")
    copy.add_argument("src", metavar="SRC", help="database URL, dynamodb://TABLE?..., or the "
                      "PostgreSQL URL of Chainlit's official data layer")
    copy.add_argument("dst", metavar="DST", help="database URL or dynamodb://TABLE?...")
    copy.add_argument("--src-storage", metavar="URL", help=storage_help.format("SRC's"))
    copy.add_argument("--dst-storage", metavar="URL", help=storage_help.format("DST's"))
    common(copy, scope=True, source_kind=True, resume=True)
    copy.set_defaults(handler=_copy)

    export = commands.add_parser("export", help="write a portable bundle directory")
    export.add_argument("src", metavar="SRC", help="as for copy")
    export.add_argument("out", metavar="OUT", help="the bundle directory to create")
    export.add_argument("--src-storage", metavar="URL", help=storage_help.format("SRC's"))
    export.add_argument("--canonical", action="store_true",
                        help="leave the export time and source out of the manifest")
    common(export, scope=True, source_kind=True, resume=False)
    export.set_defaults(handler=_export)

    load = commands.add_parser("import", help="write a bundle into a store (resumable, verified)")
    load.add_argument("bundle", metavar="IN", help="a bundle directory")
    load.add_argument("dst", metavar="DST", help="database URL or dynamodb://TABLE?...")
    load.add_argument("--dst-storage", metavar="URL", help=storage_help.format("DST's"))
    common(load, scope=False, source_kind=False, resume=True)
    load.set_defaults(handler=_import)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chainlit-orm",
        description="Generate, check and apply chainlit-orm's schemas; copy, export and "
        "import chat history; erase users and purge old threads.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    models_help = "model set as package.module:attribute (default: the five default models)"

    generate = commands.add_parser(
        "generate", help="write the generated schemas (SQL DDL, DynamoDB mapping, CloudFormation)"
    )
    generate.add_argument("--models", metavar="MODULE:ATTR", help=models_help)
    generate.add_argument("--out", default="generated", metavar="DIR",
                          help="output directory (default: ./generated)")
    generate.add_argument("--check", action="store_true",
                          help="write nothing; exit 1 with a diff when a file drifts")
    generate.set_defaults(handler=_generate)

    migrate = commands.add_parser(
        "migrate", help="create or upgrade a database or DynamoDB table (additive, idempotent)"
    )
    migrate.add_argument("url", metavar="URL",
                         help="SQLAlchemy URL, or dynamodb://TABLE?region=...&endpoint_url=...")
    migrate.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    migrate.add_argument("--dedupe-feedback", action="store_true",
                         help="keep one feedback per step (the newest) before adding the "
                         "unique index on forId")
    migrate.add_argument("--models", metavar="MODULE:ATTR", help=models_help)
    migrate.add_argument("--timeout", type=float, default=DEFAULT_MIGRATE_TIMEOUT,
                         metavar="SECONDS",
                         help="give up after this long (default: %(default)g; raise it for a "
                              "backfill of a large table)")
    migrate.add_argument("--history", action="store_true",
                         help="print what each recorded migration added; change nothing")
    migrate.set_defaults(handler=_migrate)

    show = commands.add_parser("ddl", help="print the DDL for one SQL dialect")
    show.add_argument("dialect", metavar="DIALECT",
                      help=f"one of: {', '.join(SUPPORTED_DIALECTS)}")
    show.add_argument("--models", metavar="MODULE:ATTR", help=models_help)
    show.set_defaults(handler=_ddl_command)

    _transfer_parsers(commands, models_help)
    _lifecycle_parsers(commands, models_help)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (the console script exits with it)."""
    args = _parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except VerificationError as exc:
        print(f"chainlit-orm: verification failed: {mask_url(exc)}", file=sys.stderr)
        return 1
    except ChainlitORMError as exc:
        print(f"chainlit-orm: error: {mask_url(exc)}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
