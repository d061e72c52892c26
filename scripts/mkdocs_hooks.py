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

import ast
import importlib
import inspect
import json
import re
import subprocess
import sys
import textwrap
import warnings
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
    "CHAINLIT_ORM_TRACING": "`1` turns on OpenTelemetry spans for every layer and storage made "
    "afterwards (`otel` extra; default off); a `tracing=` argument wins",
    "CHAINLIT_APP_ROOT": "Chainlit's app directory (its `.chainlit/` and `.files/`); the "
    "`chainlit-orm` command sets it to a temporary directory for its run when it is unset, so "
    "importing Chainlit writes nothing into the directory the command runs in",
}

#: Public members (besides Chainlit's data-layer methods) an app calls on a configured object:
#: heading -> member names; each is listed with its signature and docstring's first paragraph.
MEMBERS: dict[str, tuple[str, ...]] = {
    "SQLDataLayer": ("engine", "table", "models"),
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

#: A string literal of the package that names an environment variable (as a whole string: a
#: constant, a tuple item, an ``environ.get`` argument; docstrings never match as a whole).
_ENV_NAME = re.compile(r"(?:CHAINLIT_|AWS_|AZURE_|STORAGE_|DATABASE_URL)[A-Z0-9_]*")


def environment_read_by_the_code() -> set[str]:
    """Every environment-variable name written as a string literal in the package's source."""
    found: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        # names in ``__all__`` are the module's Python names (``DATABASE_URL_VARIABLES``), not
        # variables it reads
        exported = {id(item) for node in ast.walk(tree) if isinstance(node, ast.Assign)
                    and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)
                    and isinstance(node.value, ast.List | ast.Tuple) for item in node.value.elts}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and id(node) not in exported and _ENV_NAME.fullmatch(node.value)):
                found.add(node.value)
    return found


_RUNNER = """
import contextlib, io, json, sys
from importlib.metadata import entry_points
(ep,) = entry_points(group="console_scripts", name="chainlit-orm")
main = ep.load()
out = {}
for line in sys.stdin.read().splitlines():
    args = json.loads(line)
    sys.argv = ["chainlit-orm", *args]
    buffer = io.StringIO()
    code = 0
    with contextlib.redirect_stdout(buffer):
        try:
            code = main()
        except SystemExit as exc:
            code = exc.code
    out[" ".join(args)] = [code or 0, buffer.getvalue()]
print(json.dumps(out))
"""


def _cli(*invocations: tuple[str, ...]) -> list[str]:
    """The outputs of the installed ``chainlit-orm`` entry point run with each argument tuple,
    in one process (importing the package once)."""
    stdin = "\n".join(json.dumps(list(args)) for args in invocations)
    done = subprocess.run([sys.executable, "-c", _RUNNER], input=stdin, capture_output=True,
                          text=True, cwd=ROOT, check=False,
                          env={"COLUMNS": "100", "PATH": "/usr/bin:/bin", "NO_COLOR": "1",
                               "TERM": "dumb"})
    if done.returncode != 0:
        raise PluginError(f"running chainlit-orm failed: {done.stderr.strip()[-2000:]}")
    results = json.loads(done.stdout)
    outputs = []
    for args in invocations:
        code, text = results[" ".join(args)]
        if code != 0:
            raise PluginError(f"chainlit-orm {' '.join(args)} exited {code}")
        outputs.append(text)
    return outputs


def subcommands(top_help: str) -> list[str]:
    """The subcommand names a top-level ``--help`` lists: the lower-case words that start the
    entries of argparse's ``positional arguments:`` section (or ``{a,b}``) or click's
    ``Commands:`` section."""
    braces = re.search(r"\{([a-z][a-z0-9_,-]*)\}", top_help)
    if braces:
        return braces.group(1).split(",")
    section = re.search(r"^(?:positional arguments|Commands):\n((?:[ \t]+.*\n?)+)", top_help,
                        flags=re.M)
    names = re.findall(r"^ {2,4}([a-z][a-z0-9_-]*)(?: {2,}|$)", section.group(1), flags=re.M
                       ) if section else []
    if not names:
        raise PluginError("cannot find the subcommands in `chainlit-orm --help`")
    return names


def cli_page() -> str:
    (top,) = _cli(("--help",))
    names = subcommands(top)
    helps = _cli(*((name, "--help") for name in names))
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
    for name, text in zip(names, helps, strict=True):
        parts += ["", f"## `chainlit-orm {name}`", "", "```text", text.rstrip(), "```"]
    return "\n".join(parts) + "\n"


def _resolve(spec: str) -> Any:
    module_name, _, attribute = spec.partition(":")
    with warnings.catch_warnings():  # Chainlit's dependencies warn about their own deprecations
        warnings.simplefilter("ignore")
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
    text = re.sub(r":\w+:`~?([^`]+)`", lambda m: f"`{m.group(1).split('.')[-1].strip()}`", text)
    text = text.replace("``", "`")
    return text.replace("|", "\\|")


def _default(value: Any) -> str:
    """A parameter default as written in code: a public constant by its name, else its repr."""
    import chainlit_orm

    for name in chainlit_orm.__all__:
        if name.isupper() and getattr(chainlit_orm, name) is value:
            return name
    return repr(value)


def _signature(qualified: str, signature: inspect.Signature) -> str:
    """``name(a, *, b=1)`` without ``self``, annotations or long default reprs, wrapped."""
    params = []
    star = False
    for name, p in signature.parameters.items():
        if name == "self":
            continue
        if p.kind is inspect.Parameter.KEYWORD_ONLY and not star:
            params.append("*")
            star = True
        prefix = {inspect.Parameter.VAR_KEYWORD: "**",
                  inspect.Parameter.VAR_POSITIONAL: "*"}.get(p.kind, "")
        star = star or p.kind is inspect.Parameter.VAR_POSITIONAL
        default = "" if p.default is inspect.Parameter.empty else f"={_default(p.default)}"
        params.append(f"{prefix}{name}{default}")
    return textwrap.fill(f"{qualified}({', '.join(params)})", width=98, subsequent_indent="    ",
                         break_long_words=False, break_on_hyphens=False)


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
        "the environment variables named in the package's source; the build fails when a "
        "variable the code names is not described here.",
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
        # an argument the class does not document may be documented by a base class
        args: dict[str, str] = {}
        for source in reversed(inspect.getmro(obj) if inspect.isclass(obj) else (obj,)):
            args.update({k: v for k, v in documented_arguments(source).items() if v})
        parts += ["", f"## `{heading}`", "", "```python",
                  _signature(f"chainlit_orm.{heading}", signature),
                  "```", "", _cell((inspect.getdoc(obj) or "").split("\n\n")[0].replace("\n", " ")),
                  "", "| argument | default | meaning |", "|---|---|---|"]
        for name, parameter in signature.parameters.items():
            if name == "self":
                continue
            label = {inspect.Parameter.VAR_KEYWORD: f"**{name}",
                     inspect.Parameter.VAR_POSITIONAL: f"*{name}"}.get(parameter.kind, name)
            default = ("" if parameter.default is inspect.Parameter.empty
                       else f"`{_default(parameter.default)}`")
            text = args.get(label) or args.get(name) or ""
            parts.append(f"| `{label}` | {_cell(default)} | {_cell(text)} |")
        parts += members_section(heading, obj)
    return "\n".join(parts) + "\n"


def members_section(heading: str, cls: Any) -> list[str]:
    """The ``MEMBERS`` of ``heading`` as a table: how each is used, and its docstring's first
    paragraph (an attribute without a docstring of its own is described in ``MEMBERS_TEXT``)."""
    names = MEMBERS.get(heading, ())
    if not names:
        return []
    rows = ["", "Members for your own queries:", "", "| member | meaning |", "|---|---|"]
    for name in names:
        member = inspect.getattr_static(cls, name, None)
        if isinstance(member, property):
            usage, doc = f"layer.{name}", inspect.getdoc(member.fget) or ""
        elif callable(member):
            params = [p for p in inspect.signature(member).parameters if p != "self"]
            usage, doc = f"layer.{name}({', '.join(params)})", inspect.getdoc(member) or ""
        else:
            usage, doc = f"layer.{name}", MEMBERS_TEXT[name]
        rows.append(f"| `{usage}` | {_cell(doc.split(chr(10) * 2)[0].replace(chr(10), ' '))} |")
    return rows


#: Attributes listed in ``MEMBERS`` that are set in ``__init__`` (no docstring to read).
MEMBERS_TEXT: dict[str, str] = {
    "models": "The layer's `ModelSet` (the `models=` argument): `layer.models.table(entity)` is "
    "`layer.table(entity)`.",
}


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add the generated reference pages and the benchmark plot."""
    files.append(File.generated(config, "reference/cli.md", content=cli_page()))
    files.append(File.generated(config, "reference/configuration.md",
                                content=configuration_page()))
    plot = ROOT / "bench" / "results" / "quick_w2.png"
    files.append(File.generated(config, "images/quick_w2.png", abs_src_path=str(plot)))
    return files
