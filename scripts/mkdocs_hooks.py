"""MkDocs hook: the reference pages are generated from the code at build time, so they cannot drift.

* ``reference/cli.md``: the ``--help`` of the ``chainlit-orm`` console command and of each of its
  subcommands, obtained by running the installed entry point (whatever framework it is written
  with: the subcommands are read off the top-level help).
* ``reference/configuration.md``: the signature and the documented arguments (the ``Args:``
  section of the docstring) of each public constructor and function an app configures, and the
  environment variables the package reads, found by scanning its source. A variable read by the
  code and missing from :data:`ENVIRONMENT` below (or listed there but no longer read) fails the
  build, so the table is complete and has no stale row.
* ``benchmark.md`` gets ``bench/results/quick.md`` included by the snippets extension and the plot
  copied from ``bench/results/`` (see :func:`on_files`).

Nothing here touches the network: the command runs locally and everything else is read from the
working tree.
"""

from __future__ import annotations

import importlib
import inspect
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "chainlit_orm"

#: What each environment variable the package reads means. The build fails when the code reads a
#: variable that is not here, or when a variable here is no longer read by the code.
ENVIRONMENT: dict[str, str] = {
    "CHAINLIT_ORM_DATABASE_URL": "the database `from_env()` connects to: a SQL URL or "
    "`dynamodb://TABLE?region=...&endpoint_url=...`",
    "DATABASE_URL": "fallback for `CHAINLIT_ORM_DATABASE_URL`",
    "CHAINLIT_ORM_STORAGE_URL": "element storage for `from_env()` and `FsspecStorage.from_env()`: "
    "`s3://bucket/prefix`, `az://container/prefix`, `file:///path`, `memory://name`",
    "CHAINLIT_ORM_STORAGE_SECRET": "signs local/memory read URLs (at least 16 characters)",
    "CHAINLIT_AUTH_SECRET": "Chainlit's login secret; signs local/memory read URLs when "
    "`CHAINLIT_ORM_STORAGE_SECRET` is unset",
    "CHAINLIT_ORM_STORAGE_PUBLIC_BASE_URL": "makes local/memory read URLs absolute "
    "(`https://host`)",
    "STORAGE_EXPIRY_TIME": "read-URL lifetime in seconds (default 3600, as in Chainlit)",
    "CHAINLIT_ORM_STORAGE_TIMEOUT": "deadline of each storage call in seconds (default 120)",
    "CHAINLIT_ORM_STORAGE_CONNECT_TIMEOUT": "S3/Azure connect timeout in seconds (default 5)",
    "CHAINLIT_ORM_STORAGE_READ_TIMEOUT": "S3/Azure read timeout in seconds (default 30)",
    "CHAINLIT_ROOT_PATH": "Chainlit's root path: prefixes relative local/memory read URLs",
    "CHAINLIT_PARENT_ROOT_PATH": "Chainlit's parent root path: prefixes relative local/memory "
    "read URLs",
    "AWS_ENDPOINT_URL_S3": "an S3-compatible endpoint (MinIO, moto) for `s3://` storage",
    "AWS_ENDPOINT_URL": "fallback endpoint for `s3://` storage",
    "AWS_ACCESS_KEY_ID": "S3 credentials (with `AWS_SECRET_ACCESS_KEY`); otherwise botocore's "
    "chain (profiles, SSO, instance role)",
    "AWS_SECRET_ACCESS_KEY": "S3 credentials (with `AWS_ACCESS_KEY_ID`)",
    "AWS_SESSION_TOKEN": "S3 temporary credentials",
    "AWS_REGION": "region for `s3://` storage",
    "AWS_DEFAULT_REGION": "fallback region for `s3://` storage",
    "AZURE_STORAGE_CONNECTION_STRING": "Azure Blob connection string (with `AccountKey`: SAS "
    "read URLs are signed with it)",
    "AZURE_STORAGE_ACCOUNT_NAME": "Azure Blob account name",
    "AZURE_STORAGE_ACCOUNT_KEY": "Azure Blob account key",
}

#: Public objects whose arguments an app sets: (heading, importable name).
CONFIGURED: tuple[tuple[str, str], ...] = (
    ("SQLDataLayer", "chainlit_orm:SQLDataLayer"),
    ("DynamoDataLayer", "chainlit_orm:DynamoDataLayer"),
    ("FsspecStorage", "chainlit_orm:FsspecStorage"),
    ("from_env", "chainlit_orm:from_env"),
    ("migrate", "chainlit_orm:migrate"),
    ("ModelSet.build", "chainlit_orm:ModelSet.build"),
)

_ENV_READ = re.compile(
    r"""(?:environ(?:\.get)?|getenv|env\.get|_env)\s*[\[(]\s*["']([A-Z][A-Z0-9_]+)["']""")


def environment_read_by_the_code() -> set[str]:
    """Every variable name the package's source reads through ``os.environ``/``getenv``."""
    found: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        found.update(_ENV_READ.findall(path.read_text(encoding="utf-8")))
    return found


def _cli(*args: str) -> str:
    """The output of the installed ``chainlit-orm`` entry point run with ``args``."""
    runner = (
        "import sys\n"
        "from importlib.metadata import entry_points\n"
        "(ep,) = entry_points(group='console_scripts', name='chainlit-orm')\n"
        "sys.argv[0] = 'chainlit-orm'\n"
        "sys.exit(ep.load()())\n"
    )
    done = subprocess.run([sys.executable, "-c", runner, *args], capture_output=True, text=True,
                          cwd=ROOT, env={"COLUMNS": "100", "PATH": "/usr/bin:/bin",
                                         "NO_COLOR": "1", "TERM": "dumb"}, check=False)
    if done.returncode != 0:
        raise PluginError(f"chainlit-orm {' '.join(args)} exited {done.returncode}: "
                          f"{done.stderr.strip()}")
    return done.stdout


def subcommands(top_help: str) -> list[str]:
    """The subcommand names a top-level ``--help`` lists (argparse's ``{a,b}`` or click's
    ``Commands:`` section)."""
    braces = re.search(r"\{([a-z][a-z0-9_,-]*)\}", top_help)
    if braces:
        return braces.group(1).split(",")
    section = re.search(r"^Commands:\n((?:  .*\n?)+)", top_help, flags=re.M)
    if section:
        return [line.split()[0] for line in section.group(1).splitlines() if line.strip()]
    raise PluginError("cannot find the subcommands in `chainlit-orm --help`")


def cli_page() -> str:
    top = _cli("--help")
    parts = [
        "# CLI reference",
        "",
        "Generated at build time from `chainlit-orm --help` and each subcommand's `--help` "
        "(the installed command, so this page is what it prints).",
        "",
        "```text",
        top.rstrip(),
        "```",
    ]
    for name in subcommands(top):
        parts += ["", f"## `chainlit-orm {name}`", "", "```text",
                  _cli(name, "--help").rstrip(), "```"]
    return "\n".join(parts) + "\n"


def _resolve(spec: str) -> Any:
    module_name, _, attribute = spec.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        obj = getattr(obj, part)
    return obj


def documented_arguments(obj: Any) -> dict[str, str]:
    """The ``Args:`` section of ``obj``'s docstring (the class's for a class), name -> text.

    A line ``a, b: text`` documents both names.
    """
    doc = inspect.getdoc(obj) or ""
    section = re.search(r"^Args:\n((?:(?: {4}.*)?\n)+)", doc + "\n", flags=re.M)
    if not section:
        return {}
    out: dict[str, str] = {}
    current: list[str] = []
    for line in section.group(1).splitlines():
        head = re.match(r"^ {4}(\*{0,2}[\w, ]+):\s*(.*)$", line)
        if head and not line.startswith(" " * 8):
            current = [n.strip() for n in head.group(1).split(",")]
            for name in current:
                out[name] = head.group(2)
        elif line.strip():
            for name in current:
                out[name] += " " + line.strip()
    return out


def _cell(text: str) -> str:
    """One Markdown table cell: reST roles and literals turned into code, pipes escaped."""
    text = re.sub(r":\w+:`~?([^`]+)`", lambda m: f"`{m.group(1).split('.')[-1]}`", text)
    text = text.replace("``", "`")
    return text.replace("|", "\\|")


def configuration_page() -> str:
    read = environment_read_by_the_code()
    missing = sorted(read - ENVIRONMENT.keys())
    stale = sorted(ENVIRONMENT.keys() - read)
    if missing or stale:
        raise PluginError(
            f"scripts/mkdocs_hooks.py ENVIRONMENT drifted from the code: read but not documented "
            f"{missing}, documented but not read {stale}"
        )
    parts = [
        "# Configuration reference",
        "",
        "Generated at build time from the signatures and docstrings of the public API and from "
        "the environment variables the package's source reads; the build fails when a variable "
        "is read but not described here.",
        "",
        "## Environment variables",
        "",
        "| variable | meaning |",
        "|---|---|",
        *(f"| `{name}` | {_cell(ENVIRONMENT[name])} |" for name in sorted(ENVIRONMENT)),
    ]
    for heading, spec in CONFIGURED:
        obj = _resolve(spec)
        target = obj.__init__ if inspect.isclass(obj) else obj
        signature = inspect.signature(target)
        args = documented_arguments(obj)
        rendered = str(signature).replace("'", "")
        parts += ["", f"## `{heading}`", "", "```python",
                  textwrap.fill(f"chainlit_orm.{heading}{rendered}", width=98,
                                subsequent_indent="    ", break_long_words=False,
                                break_on_hyphens=False),
                  "```", "", "| argument | default | meaning |", "|---|---|---|"]
        for name, parameter in signature.parameters.items():
            if name == "self":
                continue
            label = {inspect.Parameter.VAR_KEYWORD: f"**{name}",
                     inspect.Parameter.VAR_POSITIONAL: f"*{name}"}.get(parameter.kind, name)
            default = ("" if parameter.default is inspect.Parameter.empty
                       else f"`{parameter.default!r}`")
            text = args.get(label) or args.get(name) or ""
            parts.append(f"| `{label}` | {_cell(default)} | {_cell(text)} |")
    return "\n".join(parts) + "\n"


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add the generated reference pages and the benchmark plot."""
    files.append(File.generated(config, "reference/cli.md", content=cli_page()))
    files.append(File.generated(config, "reference/configuration.md",
                                content=configuration_page()))
    plot = ROOT / "bench" / "results" / "quick_w2.png"
    files.append(File.generated(config, "images/quick_w2.png", abs_src_path=str(plot)))
    return files
