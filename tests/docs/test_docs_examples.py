"""Every runnable code block of the documentation site is executed here, so the docs cannot rot.

Each page of ``docs/`` runs as one scenario, its blocks in order, in a fresh directory that has the
repository's ``tests``, ``bench``, ``generated`` and ``examples`` folders linked in (the pages
say "from a clone of the repository"). What a block is, is said by the HTML comment just before
its fence (invisible on the site):

* no comment, ``python``: run with this virtualenv's Python; ``bash``: run with ``bash -e``.
* ``<!-- docs-test: file PATH -->``: written to ``PATH`` for the blocks after it.
* ``<!-- docs-test: serve URL -->``: a ``bash`` block that starts a server; it must answer
  ``URL`` with HTTP 200, then it is stopped (its port is replaced by a free one).
* ``<!-- docs-test: cloud REASON -->``: needs a cloud account, so it is validated instead: a
  CloudFormation template with cfn-lint, an IAM policy as JSON whose actions cover every DynamoDB
  operation the package calls, other JSON parsed, ``bash`` checked by ``bash -n`` and each
  ``chainlit-orm`` command's subcommand and options against its ``--help``.
* ``<!-- docs-test: skip REASON -->``: not run; only the few listed in :data:`SKIPPED` may be.

Names in the pages are made unique per run: every ``chainlit_chat`` (a PostgreSQL or MariaDB
database, a DynamoDB table) and ``chainlit-chat-files`` (a bucket or container) gets a random
suffix, and the databases and tables are dropped afterwards. Other languages (``text``, ``json``
without a comment, ``toml``) are illustrations and are not counted.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
BIN = Path(sys.executable).parent
MOTO = os.environ.get("CHAINLIT_ORM_TEST_MOTO", "http://127.0.0.1:5055")
LINKED = ("tests", "bench", "generated", "examples")

#: Blocks that are shown but not run, by page, with the reason the page gives.
SKIPPED = {
    "getting-started.md": 2,  # the README's two commands (tested by tests/test_readme.py); pip
}

_FENCE = re.compile(
    r"(?:<!-- docs-test: (?P<mark>[^>]*?) -->\n)?^```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^```$",
    flags=re.S | re.M,
)
_SNIPPET = re.compile(r'^--8<-- "([^"]+)"$', flags=re.M)


@dataclass(frozen=True)
class Block:
    page: str
    index: int
    lang: str
    mark: str
    body: str

    @property
    def kind(self) -> str:
        return self.mark.split(" ", 1)[0] if self.mark else "run"

    @property
    def argument(self) -> str:
        return self.mark.split(" ", 1)[1] if " " in self.mark else ""


def page_blocks(page: Path) -> list[Block]:
    text = page.read_text(encoding="utf-8")
    return [Block(page.relative_to(DOCS).as_posix(), i, m["lang"], m["mark"] or "", m["body"])
            for i, m in enumerate(_FENCE.finditer(text))]


PAGES = sorted(p for p in DOCS.rglob("*.md"))


def _counted(block: Block) -> bool:
    """Whether a block is a runnable one (executed, validated or a listed skip)."""
    return block.lang in ("python", "bash") or block.kind in ("cloud", "file")


# ------------------------------------------------------------------------------------ resources


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CHAINLIT_", "AWS_", "AZURE_", "DATABASE_URL"))}
    env.update({
        "PATH": f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}",
        "VIRTUAL_ENV": str(BIN.parent),
        "PYTHONPATH": str(workdir),
        "HOME": str(workdir),
        "AWS_DEFAULT_REGION": "us-east-1",
        "NO_MKDOCS_2_WARNING": "1",
        "PGCONNECT_TIMEOUT": "10",
    })
    return env


def _cleanup(suffix: str) -> None:
    """Drop what the page made under its unique names (databases, DynamoDB tables)."""
    like = f"chainlit_chat_{suffix}%"
    psql = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-Atc",
         f"SELECT datname FROM pg_database WHERE datname LIKE '{like}'"],
        capture_output=True, text=True, check=True)
    for name in psql.stdout.split():
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-qc",
                        f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'], check=True)
    maria = subprocess.run(["mariadb", "-h", "127.0.0.1", "-u", "root", "-N", "-e",
                            f"SHOW DATABASES LIKE '{like}'"], capture_output=True, text=True,
                           check=True)
    for name in maria.stdout.split():
        subprocess.run(["mariadb", "-h", "127.0.0.1", "-u", "root", "-e",
                        f"DROP DATABASE IF EXISTS `{name}`"], check=True)
    dynamodb = boto3.client("dynamodb", endpoint_url=MOTO, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")
    for table in dynamodb.list_tables()["TableNames"]:
        if table.startswith(f"chainlit_chat_{suffix}"):
            dynamodb.delete_table(TableName=table)


@contextlib.contextmanager
def _server(body: str, url: str, workdir: Path, env: dict[str, str]) -> Iterator[int]:
    """Start a ``serve`` block on a free port; yield the status its URL answered."""
    port = str(re.search(r":(\d+)/", url).group(1))  # type: ignore[union-attr]
    free = str(_free_port())
    proc = subprocess.Popen(["bash", "-e", "-c", body.replace(port, free)], cwd=workdir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    status = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and status != 200 and proc.poll() is None:
            time.sleep(0.5)
            with contextlib.suppress(httpx.HTTPError):
                status = httpx.get(url.replace(port, free), timeout=5).status_code
        yield status or 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
        if status != 200:
            print(output)


# ----------------------------------------------------------------------------------- validation


def _expand_snippets(body: str) -> str:
    return _SNIPPET.sub(lambda m: (ROOT / m.group(1)).read_text(encoding="utf-8"), body)


def dynamodb_operations_called() -> set[str]:
    """The DynamoDB API operations the package sends (the backend's and the table client's
    ``self.call("get_item", ...)``, ``self.call("describe_table", ...)`` and the like),
    as IAM action names."""
    found: set[str] = set()
    for path in (ROOT / "chainlit_orm").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        found.update(re.findall(r"""(?:\b_call|\b_send|\b_raw|\.call)\(\s*["']([a-z_]+)["']""",
                                text))
    found.discard("transact_write_items")  # authorised by the item actions it carries
    return {"dynamodb:" + "".join(w.title() for w in op.split("_")) for op in found}


def _validate_cloud(block: Block, workdir: Path, cli_help: dict[str, str]) -> None:
    body = _expand_snippets(block.body)
    if block.lang == "json":
        document = json.loads(body)
        if "AWSTemplateFormatVersion" in document:
            template = workdir / f"template-{block.index}.json"
            template.write_text(body)
            lint = subprocess.run([str(BIN / "cfn-lint"), str(template)], capture_output=True,
                                  text=True)
            assert lint.returncode == 0, lint.stdout + lint.stderr
        elif "Statement" in document:
            assert document["Version"] == "2012-10-17"
            actions: set[str] = set()
            for statement in document["Statement"]:
                assert statement["Effect"] in ("Allow", "Deny")
                assert statement["Resource"]
                actions.update(statement["Action"])
            assert all(re.fullmatch(r"dynamodb:[A-Z][A-Za-z]+", a) for a in actions), actions
            missing = dynamodb_operations_called() - actions
            assert not missing, f"the IAM policy lacks {sorted(missing)}"
        return
    if block.lang == "bash":
        syntax = subprocess.run(["bash", "-n", "-c", body], capture_output=True, text=True)
        assert syntax.returncode == 0, syntax.stderr
        for line in body.replace("\\\n", " ").splitlines():
            if not line.startswith("chainlit-orm "):
                continue
            words = shlex.split(line.split("  #")[0])
            command = words[1]
            assert command in cli_help, f"no subcommand {command!r}: {line}"
            for option in (w.split("=")[0] for w in words[2:] if w.startswith("--")):
                assert option in cli_help[command], f"chainlit-orm {command} has no {option}"
        return
    raise AssertionError(f"{block.page} block {block.index}: no validation for {block.lang!r}")


@pytest.fixture(scope="module")
def cli_help() -> dict[str, str]:
    top = subprocess.run([str(BIN / "chainlit-orm"), "--help"], capture_output=True, text=True,
                         check=True).stdout
    names = re.findall(r"^ {2,4}([a-z][a-z0-9-]*)(?: {2,}|$)", top, flags=re.M)
    assert names
    return {name: subprocess.run([str(BIN / "chainlit-orm"), name, "--help"],
                                 capture_output=True, text=True, check=True).stdout
            for name in names}


# ----------------------------------------------------------------------------------------- tests


def test_every_page_is_scanned_and_the_markers_are_known() -> None:
    kinds = {b.kind for p in PAGES for b in page_blocks(p)}
    assert kinds <= {"run", "file", "serve", "cloud", "skip"}, kinds
    skips = {p.relative_to(DOCS).as_posix(): sum(b.kind == "skip" for b in page_blocks(p))
             for p in PAGES}
    assert {page: n for page, n in skips.items() if n} == SKIPPED


@pytest.mark.postgres
@pytest.mark.mariadb
@pytest.mark.dynamodb
@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(DOCS).as_posix())
def test_page_blocks_run(page: Path, tmp_path: Path, cli_help: dict[str, str]) -> None:
    suffix = uuid.uuid4().hex[:10]
    for name in LINKED:
        (tmp_path / name).symlink_to(ROOT / name)
    env = _env(tmp_path)
    counts = {"executed": 0, "validated": 0, "skipped": 0}
    try:
        for block in page_blocks(page):
            body = (block.body.replace("chainlit_chat", f"chainlit_chat_{suffix}")
                    .replace("chainlit-chat-files", f"chainlit-chat-files-{suffix}"))
            where = f"{block.page} block {block.index} ({block.lang}, {block.kind})"
            if block.kind == "skip":
                counts["skipped"] += 1
            elif block.kind == "cloud":
                _validate_cloud(block, tmp_path, cli_help)
                counts["validated"] += 1
            elif block.kind == "file":
                target = tmp_path / block.argument
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(body)
                counts["executed"] += 1  # written and used by the blocks after it
            elif block.kind == "serve":
                with _server(body, block.argument, tmp_path, env) as status:
                    assert status == 200, where
                counts["executed"] += 1
            elif block.lang in ("python", "bash"):
                argv = ([str(BIN / "python"), "-"] if block.lang == "python"
                        else ["bash", "-e", "-o", "pipefail", "-s"])
                done = subprocess.run(argv, input=body, cwd=tmp_path, env=env,
                                      capture_output=True, text=True, timeout=300)
                assert done.returncode == 0, f"{where}\n{done.stdout}\n{done.stderr}"
                counts["executed"] += 1
    finally:
        _cleanup(suffix)
    runnable = sum(_counted(b) for b in page_blocks(page))
    assert sum(counts.values()) == runnable
    print(f"\ndocs {page.relative_to(DOCS)}: {counts['executed']} executed, "
          f"{counts['validated']} validated, {counts['skipped']} skipped")


def test_count_of_documentation_blocks() -> None:
    """The totals for the release note (``pytest -s`` prints them)."""
    blocks = [b for p in PAGES for b in page_blocks(p) if _counted(b)]
    executed = [b for b in blocks if b.kind not in ("cloud", "skip")]
    validated = [b for b in blocks if b.kind == "cloud"]
    print(f"\ndocs blocks: {len(executed)} executed, {len(validated)} validated, "
          f"{len(blocks) - len(executed) - len(validated)} skipped, of {len(blocks)} runnable")
    assert len(executed) >= 30


def test_the_iam_policy_check_sees_the_operations_the_code_calls() -> None:
    operations = dynamodb_operations_called()
    assert {"dynamodb:GetItem", "dynamodb:Query", "dynamodb:UpdateItem",
            "dynamodb:DescribeTable", "dynamodb:BatchWriteItem"} <= operations
