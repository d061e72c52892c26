"""The ``chainlit-orm`` command as a user meets it (issue 20): ``--version``, ``python -m
chainlit_orm``, the database URL read from the environment exactly as ``from_env()`` reads it,
shell completion, and one exit-code convention (0 done, 1 refused or failed with one line on
stderr, 2 usage).

The schema commands' own output is in ``tests/schema/test_cli.py``, the transfer and lifecycle
commands' in ``tests/transfer`` and ``tests/lifecycle``.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import sqlite3
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

import chainlit_orm
from chainlit_orm import migrations
from chainlit_orm.cli import main
from chainlit_orm.errors import ConfigurationError
from chainlit_orm.models import DEFAULT_MODELS
from chainlit_orm.schema_gen import SCHEMA_VERSION
from chainlit_orm.urls import DATABASE_URL_VARIABLES, database_url_from_env

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CLI = str(BIN / "chainlit-orm")
COMMANDS = ["generate", "migrate", "ddl", "copy", "export", "import", "erase-user", "purge"]

#: What every command that works on one database prints when it has no URL at all.
NO_URL = ("Error: no database URL: pass URL, or set CHAINLIT_ORM_DATABASE_URL or DATABASE_URL "
          "(read in that order, as from_env() reads them)\n")


def _env(**values: str) -> dict[str, str]:
    """This process's environment without any database URL, plus ``values``."""
    env = {k: v for k, v in os.environ.items() if k not in DATABASE_URL_VARIABLES}
    env.update(values)
    return env


def _files(directory: Path) -> list[str]:
    """What a command left in ``directory``: everything (the CLI keeps Chainlit's
    ``.chainlit``/``.files`` out of the working directory since outside attack #20 F3)."""
    return sorted(p.name for p in directory.iterdir())


def _run(*argv: str, env: dict[str, str] | None = None, cwd: Path = REPO
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, cwd=cwd,
                          env=env if env is not None else _env(), timeout=120, check=False)


@pytest.fixture
def no_database_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in DATABASE_URL_VARIABLES:
        monkeypatch.delenv(name, raising=False)


# ------------------------------------------------------------------------------ --version


def test_version_is_the_distributions() -> None:
    expected = version("chainlit-orm")
    assert chainlit_orm.__version__ == expected
    for argv in ([CLI, "--version"], [sys.executable, "-m", "chainlit_orm", "--version"]):
        done = _run(*argv)
        assert (done.returncode, done.stdout, done.stderr) == (0, f"chainlit-orm {expected}\n", "")


# ------------------------------------------------------------------------- python -m


def test_python_m_chainlit_orm_is_the_command() -> None:
    by_module = _run(sys.executable, "-m", "chainlit_orm", "--help")
    by_script = _run(CLI, "--help")
    assert (by_module.returncode, by_module.stderr) == (0, "")
    assert by_module.stdout == by_script.stdout
    lines = by_module.stdout.splitlines()
    assert lines[0] == "Usage: chainlit-orm [OPTIONS] COMMAND [ARGS]..."
    start = lines.index("Commands:") + 1
    listed = [line.split()[0] for line in lines[start:] if line.startswith("  ")
              and not line.startswith("   ")][:len(COMMANDS)]
    assert listed == COMMANDS  # the README's order, not sorted
    ddl = _run(sys.executable, "-m", "chainlit_orm", "ddl", "sqlite")
    assert (ddl.returncode, ddl.stdout) == (0, (REPO / "generated" / "sqlite.sql").read_text())


# --------------------------------------------------------- the URL from the environment


@pytest.mark.parametrize(
    ("variables", "chosen"),
    [
        ({"CHAINLIT_ORM_DATABASE_URL": "a", "DATABASE_URL": "b"}, "a"),  # both: the package's
        ({"DATABASE_URL": "b"}, "b"),
        ({"CHAINLIT_ORM_DATABASE_URL": "", "DATABASE_URL": "b"}, "b"),  # empty counts as unset
        ({"CHAINLIT_ORM_DATABASE_URL": "a", "DATABASE_URL": ""}, "a"),
        ({"CHAINLIT_ORM_DATABASE_URL": "", "DATABASE_URL": ""}, None),
        ({}, None),
    ],
)
def test_the_command_and_from_env_pick_the_same_database(
        variables: dict[str, str], chosen: str | None, tmp_path: Path) -> None:
    """Each case runs the real command (migrate, URL left out) and the real ``from_env()``."""
    env = {name: f"sqlite:///{tmp_path / value}.db" if value else ""
           for name, value in variables.items()}
    expected = env["CHAINLIT_ORM_DATABASE_URL" if chosen == "a" else "DATABASE_URL"] if chosen \
        else None
    assert database_url_from_env(env) == expected
    done = _run(CLI, "migrate", env=_env(**env), cwd=tmp_path)
    if chosen is None:
        assert (done.returncode, done.stdout) == (2, "")
        assert done.stderr == ("Usage: chainlit-orm migrate [OPTIONS] [URL]\n"
                               "Try 'chainlit-orm migrate --help' for help.\n\n" + NO_URL)
        with pytest.raises(ConfigurationError, match="no database"):
            chainlit_orm.from_env(env)
        assert _files(tmp_path) == []
        return
    assert (done.returncode, done.stderr) == (0, "")
    shown = expected.replace("sqlite://", "sqlite+aiosqlite://")  # as the layer connects
    assert done.stdout.splitlines()[0] == (
        f"migrating {shown}: schema version none recorded -> "
        f"{SCHEMA_VERSION}")
    assert _files(tmp_path) == [f"{chosen}.db"]  # only that one
    layer = chainlit_orm.from_env(env)
    try:
        assert layer.sql.url_text == shown  # type: ignore[attr-defined]
    finally:
        asyncio.run(layer.close())


def test_an_explicit_url_wins_over_the_environment(tmp_path: Path) -> None:
    env = _env(CHAINLIT_ORM_DATABASE_URL=f"sqlite:///{tmp_path / 'env.db'}",
               DATABASE_URL=f"sqlite:///{tmp_path / 'fallback.db'}")
    done = _run(CLI, "migrate", f"sqlite:///{tmp_path / 'given.db'}", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert _files(tmp_path) == ["given.db"]


def test_erase_user_and_purge_read_the_url_from_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        no_database_env: None) -> None:
    url = f"sqlite:///{tmp_path / 'chat.db'}"
    assert main(["migrate", url]) == 0
    capsys.readouterr()
    monkeypatch.setenv("DATABASE_URL", url)
    # one argument: the identifier (the URL comes from the environment)
    assert main(["erase-user", "nobody@example.com", "--dry-run"]) == 0
    assert capsys.readouterr().out == (
        "erase-user user 'nobody@example.com' (no user row): would remove user 0, thread 0, "
        "step 0, element 0, feedback 0, file 0 (dry run: nothing changed)\n")
    assert main(["purge", "--older-than", "90d", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert (out[0], out[-1]) == (f"purge {url}", "dry run: nothing changed")
    monkeypatch.delenv("DATABASE_URL")
    for argv, usage in ((["erase-user", "nobody@example.com"], "erase-user [OPTIONS] [URL] "
                         "IDENTIFIER"), (["purge", "--older-than", "90d"], "purge [OPTIONS] [URL]")):
        assert main(argv) == 2
        command = argv[0]
        assert capsys.readouterr() == ("", (
            f"Usage: chainlit-orm {usage}\nTry 'chainlit-orm {command} --help' for help.\n\n"
            + NO_URL))


# ----------------------------------------------------------------------- shell completion


def test_bash_completion_script_is_printed_and_completes() -> None:
    done = _run(CLI, env=_env(_CHAINLIT_ORM_COMPLETE="bash_source"))
    assert (done.returncode, done.stderr) == (0, "")
    assert "_chainlit_orm_completion() {" in done.stdout
    assert "complete -o nosort -F _chainlit_orm_completion chainlit-orm" in done.stdout
    # the script, loaded into a real bash, completes commands and dialects
    for words, cword, expected in (("chainlit-orm mi", 1, "migrate"),
                                   ("chainlit-orm e", 1, "export erase-user"),
                                   ("chainlit-orm ddl ", 2, "postgresql sqlite mysql"),
                                   ("chainlit-orm migrate --dr", 2, "--dry-run")):
        empty = " ''" if words.endswith(" ") else ""  # the word being typed, still empty
        script = ('eval "$(_CHAINLIT_ORM_COMPLETE=bash_source chainlit-orm)"\n'
                  f"COMP_WORDS=({words}{empty}); COMP_CWORD={cword}; "
                  '_chainlit_orm_completion chainlit-orm; echo "${COMPREPLY[*]}"')
        shell = _run("bash", "-c", script, env=_env(PATH=f"{BIN}:{os.environ['PATH']}"))
        assert (shell.returncode, shell.stdout, shell.stderr) == (0, expected + "\n", ""), words


@pytest.mark.parametrize(("shell", "marker"), [("zsh_source", "#compdef chainlit-orm"),
                                               ("fish_source", "complete --no-files --command "
                                                "chainlit-orm")])
def test_zsh_and_fish_scripts(shell: str, marker: str) -> None:
    done = _run(CLI, env=_env(_CHAINLIT_ORM_COMPLETE=shell))
    assert (done.returncode, done.stderr) == (0, "")
    assert marker in done.stdout


# ---------------------------------------------------------------------------- exit codes


def test_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ddl", "sqlite"]) == 0
    assert main(["--help"]) == 0
    assert main(["migrate", "--help"]) == 0
    assert capsys.readouterr().err == ""


def test_exit_1_is_one_line_on_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      no_database_env: None) -> None:
    # the work ran and failed: a refused connection, password masked
    assert main(["migrate", "postgresql://postgres:s3cret@127.0.0.1:1/nowhere"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.splitlines()) == 1
    assert captured.err.startswith("chainlit-orm: error: ")
    assert "postgres:***@127.0.0.1:1/nowhere" in captured.err and "s3cret" not in captured.err
    # drift found by generate --check (its diff and summary go to stdout)
    assert main(["generate", "--check", "--out", str(tmp_path / "empty")]) == 1
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"5 of 5 files in {tmp_path / 'empty'}/ drift from the models; run: chainlit-orm "
        f"generate --out {tmp_path / 'empty'}")
    # the same store on both sides of a copy: refused
    url = f"sqlite:///{tmp_path / 'one.db'}"
    assert main(["copy", url, url]) == 1
    assert capsys.readouterr().err == (
        "chainlit-orm: error: the source and the destination are the same store\n")


def test_migrate_history(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--history`` prints what ``migrations.schema_history`` returns, one line per recorded
    migration (what it added), and changes nothing."""
    url = f"sqlite:///{tmp_path / 'h.db'}"
    # a file that does not exist: reading it would create it (outside attack #20 F6)
    assert main(["migrate", url, "--history"]) == 1
    assert capsys.readouterr().err == (
        f"chainlit-orm: error: the SQLite database {tmp_path / 'h.db'} does not exist: no schema "
        "history to report\n")
    assert not (tmp_path / "h.db").exists()
    assert main(["migrate", url]) == 0
    capsys.readouterr()
    code = main(["migrate", url, "--history"])
    captured = capsys.readouterr()
    assert (code, captured.err) == (0, "")
    fingerprint = migrations.report.fingerprint(DEFAULT_MODELS)
    assert re.fullmatch(
        r"#1 \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z version 5 \(models "
        + re.escape(fingerprint[:16]) + r"\): added tables users, threads, steps, elements, "
        r"feedbacks, chainlit_orm_erased, chainlit_orm_version; added indexes threads\.ix_threads_activity, "
        r"threads\.ix_threads_deleted, threads\.ix_threads_user_activity, "
        r"threads\.ix_threads_user_created, steps\.ix_steps_favorite, "
        r"steps\.ix_steps_thread_created, elements\.ix_elements_for, elements\.ix_elements_thread, "
        r"feedbacks\.ix_feedbacks_for, feedbacks\.ix_feedbacks_thread, threads\.threads_name_fts, "
        r"steps\.steps_output_fts\n", captured.out), captured.out
    assert main(["migrate", url, "--history", "--dedupe-feedback"]) == 2
    assert capsys.readouterr().err.endswith(
        "Error: --history changes nothing; it cannot be combined with --dedupe-feedback\n")


@pytest.mark.parametrize(
    ("argv", "err"),
    [
        # click's usage errors: the usage, then the problem
        (["migrate", "sqlite:///x.db", "--nope"],
         "Usage: chainlit-orm migrate [OPTIONS] [URL]\nTry 'chainlit-orm migrate --help' for "
         "help.\n\nError: No such option '--nope'.\n"),
        (["ddl"], "Usage: chainlit-orm ddl [OPTIONS] DIALECT\nTry 'chainlit-orm ddl --help' for "
         "help.\n\nError: Missing argument 'DIALECT'.\n"),
        (["nope"], "Usage: chainlit-orm [OPTIONS] COMMAND [ARGS]...\nTry 'chainlit-orm --help' "
         "for help.\n\nError: No such command 'nope'.\n"),
        (["purge", "sqlite:///x.db"],
         "Usage: chainlit-orm purge [OPTIONS] [URL]\nTry 'chainlit-orm purge --help' for help."
         "\n\nError: purge needs --older-than AGE (or --soft-delete AGE for the trash only)\n"),
        (["purge", "sqlite:///x.db", "--older-than", "1d", "--batch", "x"],
         "Usage: chainlit-orm purge [OPTIONS] [URL]\nTry 'chainlit-orm purge --help' for help."
         "\n\nError: Invalid value for '--batch': 'x' is not a valid integer range.\n"),
        (["copy", "sqlite:///a.db", "sqlite:///b.db", "--source-kind", "other"],
         "Usage: chainlit-orm copy [OPTIONS] SRC DST\nTry 'chainlit-orm copy --help' for help."
         "\n\nError: Invalid value for '--source-kind': 'other' is not one of 'chainlit-orm', "
         "'official'.\n"),
        # values the command refuses before doing anything: one line
        (["ddl", "oracle"], "chainlit-orm: error: unsupported SQL dialect 'oracle'; supported: "
         "postgresql, sqlite, mysql (mysql also covers MariaDB)\n"),
        (["copy", "mongodb://u:pw@h/db", "sqlite:///b.db"],
         "chainlit-orm: error: unsupported database URL mongodb://u:***@h/db: supported schemes "
         "are postgresql://, sqlite://, mysql://, mariadb://, dynamodb:// (e.g. "
         "postgresql+asyncpg://, sqlite+aiosqlite:///file.db, mysql+asyncmy://, "
         "dynamodb://TABLE?region=...)\n"),
        (["purge", "sqlite:///x.db", "--older-than", "90x"],
         None),  # parse_age's own message, one line
        (["erase-user", "sqlite:///x.db", "who", "--on-delete", "nodots"],
         "chainlit-orm: error: --on-delete must be package.module:attribute, got 'nodots'\n"),
        (["migrate", "dynamodb://t?regoin=eu-west-1"],
         "chainlit-orm: error: unknown parameter(s) regoin in dynamodb://t?regoin=eu-west-1; "
         "supported: region, endpoint_url, profile (credentials come from the AWS chain)\n"),
    ],
)
def test_exit_2_is_a_usage_error(argv: list[str], err: str | None, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    if err is None:
        assert captured.err.startswith("chainlit-orm: error: ")
        assert len(captured.err.splitlines()) == 1
    else:
        assert captured.err == err
    assert _files(tmp_path) == []  # nothing was created


def test_the_console_script_exits_with_mains_code(tmp_path: Path) -> None:
    for argv, code in (([CLI, "ddl", "sqlite"], 0), ([CLI, "ddl", "oracle"], 2),
                       ([CLI, "generate", "--check", "--out", str(tmp_path)], 1)):
        assert _run(*argv).returncode == code, argv
    db = tmp_path / "s.db"
    assert _run(CLI, "migrate", f"sqlite:///{db}").returncode == 0
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM chainlit_orm_version").fetchone() == (1,)


def test_an_empty_retention_is_refused_not_taken_as_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--retention ""`` (an empty shell variable) is a usage error: taken as "no retention",
    a rerun of a copy would remove the TTL it wrote (outside attack, finding F6)."""
    argv = ["copy", f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}",
            "--retention", ""]
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        "chainlit-orm: error: an age is a positive whole number and a unit (s, m, h, d, w), "
        "e.g. 90d: ''\n")
    assert not (tmp_path / "b.db").exists()


# ------------------------------------------------------------- outside attack #20 F3, F4


def _tree(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


@pytest.mark.parametrize(("argv", "extra_env"), [
    (["--version"], {}),
    (["--help"], {}),
    (["migrate", "--help"], {}),
    ([], {"_CHAINLIT_ORM_COMPLETE": "bash_complete", "COMP_WORDS": "chainlit-orm mi",
          "COMP_CWORD": "1"}),
    ([], {"_CHAINLIT_ORM_COMPLETE": "bash_source"}),
])
def test_version_help_and_completion_leave_the_directory_empty(
        argv: list[str], extra_env: dict[str, str], tmp_path: Path) -> None:
    """outside attack #20 F3: each imported Chainlit, which wrote 27 entries (.chainlit/,
    translations, .files/) into the working directory and cost ~3 s of CPU."""
    done = _run(sys.executable, "-m", "chainlit_orm", *argv, env=_env(**extra_env), cwd=tmp_path)
    assert (done.returncode, done.stderr) == (0, "")
    assert _tree(tmp_path) == []


def test_importing_the_cli_imports_neither_chainlit_nor_sqlalchemy() -> None:
    """outside attack #20 F3: ``import chainlit_orm.cli`` (what every run, --version and a
    completion TAB included, starts with) loads click and the package's small modules only."""
    code = ("import sys, chainlit_orm.cli\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('chainlit', 'sqlalchemy', 'sqlmodel', 'pydantic')))")
    done = _run(sys.executable, "-c", code)
    assert (done.returncode, done.stdout, done.stderr) == (0, "[]\n", "")


def _every_command(work: Path) -> list[list[str]]:
    """One run of each command, every path it writes under ``work`` (the database, the bundle,
    the generated files, the copy's checkpoint)."""
    chat = f"sqlite:///{work / 'chat.db'}"
    return [
        ["--version"],
        ["migrate", f"sqlite:///{work / 'new.db'}"],
        ["migrate", chat, "--dry-run"],
        ["migrate", chat, "--history"],
        ["ddl", "sqlite"],
        ["generate", "--check", "--out", str(REPO / "generated")],
        ["generate", "--out", str(work / "generated")],
        ["copy", chat, f"sqlite:///{work / 'copy.db'}", "--no-files",
         "--checkpoint", str(work / "copy.json")],
        ["export", chat, str(work / "bundle"), "--no-files"],
        ["import", str(work / "bundle"), f"sqlite:///{work / 'imported.db'}", "--no-files",
         "--checkpoint", str(work / "import.json")],
        ["purge", chat, "--older-than", "90d", "--dry-run"],
        ["erase-user", chat, "nobody", "--dry-run"],
    ]


def test_no_command_writes_into_the_working_directory(tmp_path: Path) -> None:
    """outside attack #20 F3/F4: the commands that open a layer import Chainlit (its data layer
    classes), with ``CHAINLIT_APP_ROOT`` pointed at a temporary directory of the run; the
    others never import it. Either way the working directory stays empty."""
    cwd, work = tmp_path / "cwd", tmp_path / "work"
    cwd.mkdir()
    work.mkdir()
    assert main(["migrate", f"sqlite:///{work / 'chat.db'}"]) == 0
    for argv in _every_command(work):
        done = _run(sys.executable, "-m", "chainlit_orm", *argv, cwd=cwd)
        assert done.returncode == 0, (argv, done.stderr)
        assert _tree(cwd) == [], argv


def test_every_command_runs_in_a_read_only_working_directory(tmp_path: Path) -> None:
    """outside attack #20 F4: in a read-only working directory (a container with a read-only
    root filesystem) every command, ``--version`` included, died with OSError '.files'. Run in
    a private mount namespace with the directory bind-mounted read-only (as root, where chmod
    would not stop a write)."""
    readonly, work = tmp_path / "ro", tmp_path / "work"
    readonly.mkdir()
    work.mkdir()
    assert main(["migrate", f"sqlite:///{work / 'chat.db'}"]) == 0
    for argv in _every_command(work):
        inner = (f"mount --bind {readonly} {readonly} && "
                 f"mount -o remount,bind,ro {readonly} && cd {readonly} && "
                 f"exec {sys.executable} -m chainlit_orm {' '.join(map(shlex.quote, argv))}")
        done = _run("unshare", "-m", "bash", "-c", inner)
        assert (done.returncode, "Traceback" in done.stderr) == (0, False), (argv, done.stderr)
    # without --checkpoint, copy's resume file goes into the working directory: one line, exit 1
    inner = (f"mount --bind {readonly} {readonly} && mount -o remount,bind,ro {readonly} && "
             f"cd {readonly} && exec {sys.executable} -m chainlit_orm copy "
             f"sqlite:///{work / 'chat.db'} sqlite:///{work / 'again.db'} --no-files")
    done = _run("unshare", "-m", "bash", "-c", inner)
    assert done.returncode == 1
    last = done.stderr.splitlines()[-1]
    assert re.fullmatch(
        rf"chainlit-orm: error: cannot write the checkpoint {readonly}/\.chainlit-orm-copy-"
        r"[0-9a-f]{16}\.json: Read-only file system; pass --checkpoint FILE in a writable "
        r"directory \(what is copied so far stays; a rerun resumes from the last checkpoint "
        r"written\)", last), last
    assert "Traceback" not in done.stderr


# ------------------------------------------------------------------ outside attack #20 F5


@pytest.mark.parametrize(("argv", "error"), [
    (["migrate", "{db}", "--timeout", "abc"],
     "Invalid value for '--timeout': 'abc' is not a number of seconds"),
    (["migrate", "{db}", "--timeout", "-5"],
     "Invalid value for '--timeout': '-5' is not a positive, finite number of seconds"),
    (["migrate", "{db}", "--timeout", "0"],
     "Invalid value for '--timeout': '0' is not a positive, finite number of seconds"),
    (["migrate", "{db}", "--timeout", "nan"],
     "Invalid value for '--timeout': 'nan' is not a positive, finite number of seconds"),
    (["migrate", "{db}", "--timeout", "inf"],
     "Invalid value for '--timeout': 'inf' is not a positive, finite number of seconds"),
    (["copy", "{db}", "sqlite:///{d}/f.db", "--no-files", "--batch", "0"],
     "Invalid value for '--batch': 0 is not in the range x>=1."),
    (["copy", "{db}", "sqlite:///{d}/f.db", "--no-files", "--timeout", "-1"],
     "Invalid value for '--timeout': '-1' is not a positive, finite number of seconds"),
    (["purge", "{db}", "--older-than", "90d", "--batch", "-1", "--dry-run"],
     "Invalid value for '--batch': -1 is not in the range 1<=x<=10000."),
    (["purge", "{db}", "--older-than", "90d", "--batch", "0", "--dry-run"],
     "Invalid value for '--batch': 0 is not in the range 1<=x<=10000."),
    (["purge", "{db}", "--older-than", "90d", "--on-delete-timeout", "0", "--dry-run"],
     "Invalid value for '--on-delete-timeout': '0' is not a positive, finite number of "
     "seconds"),
    (["export", "{db}", "{d}/out", "--since", "notadate"],
     "Invalid value for '--since': not an ISO-8601 timestamp: 'notadate'"),
])
def test_a_malformed_option_value_is_a_usage_error(
        argv: list[str], error: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """outside attack #20 F5: these exited 1 like a failed run (``purge --batch 0`` ran with 500
    instead); now click refuses each before anything runs: exit 2, usage and the problem."""
    monkeypatch.chdir(tmp_path)
    db = f"sqlite:///{tmp_path / 'e.db'}"
    assert main(["migrate", db]) == 0
    capsys.readouterr()
    argv = [a.format(db=db, d=tmp_path) for a in argv]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines()[-1] == f"Error: {error}"
    assert _files(tmp_path) == ["e.db"]


async def test_purge_batch_0_is_refused_by_the_library_too(tmp_path: Path) -> None:
    """outside attack #20 F5: ``layer.purge(batch=0)`` ran with the default 500 (``batch or
    DEFAULT_BATCH``); 0 is now refused like -1."""
    from datetime import timedelta

    from chainlit_orm.errors import InvalidInputError

    layer = chainlit_orm.SQLDataLayer(f"sqlite+aiosqlite:///{tmp_path / 'p.db'}")
    try:
        with pytest.raises(InvalidInputError) as refused:
            await layer.purge(older_than=timedelta(days=90), batch=0, dry_run=True)
        assert str(refused.value) == "batch must be an int in 1..10000, got 0"
    finally:
        await layer.close()


# ------------------------------------------------------------------ outside attack #20 F6


def test_dry_run_and_history_create_no_sqlite_file(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """outside attack #20 F6: both promise to change nothing, yet created the (misspelt)
    database file. Now: no file, one line, exit 1 (nothing to report)."""
    path = tmp_path / "typo.db"
    assert main(["migrate", f"sqlite:///{path}", "--dry-run"]) == 1
    assert capsys.readouterr() == ("", (
        f"chainlit-orm: error: the SQLite database {path} does not exist: nothing to report "
        "(the dry run creates nothing; migrate without --dry-run creates it)\n"))
    assert main(["migrate", f"sqlite:///{path}", "--history"]) == 1
    assert capsys.readouterr() == ("", (
        f"chainlit-orm: error: the SQLite database {path} does not exist: no schema history "
        "to report\n"))
    assert _files(tmp_path) == []
    # relative to the working directory, as SQLite opens it
    assert main(["migrate", "sqlite:///typo.db", "--dry-run"]) == 1
    assert f"the SQLite database {Path.cwd() / 'typo.db'} does not exist" in (
        capsys.readouterr().err)


# ----------------------------------------------------------------- outside attack #20 F10


def test_models_never_calls_what_it_names(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """outside attack #20 F10: ``--models os.path:join`` called os.path.join (a TypeError
    traceback, exit 1); a module raising at import gave a 37-line traceback. Both: one line,
    exit 2."""
    monkeypatch.chdir(tmp_path)
    assert main(["ddl", "sqlite", "--models", "os.path:join"]) == 2
    assert capsys.readouterr() == ("", (
        "chainlit-orm: error: --models: os.path:join is a function, not a ModelSet (build one "
        "with chainlit_orm.models.ModelSet.build)\n"))
    (tmp_path / "atk20_broken_models.py").write_text("raise RuntimeError('no config')\n")
    assert main(["ddl", "sqlite", "--models", "atk20_broken_models:MODELS"]) == 2
    assert capsys.readouterr() == ("", (
        "chainlit-orm: error: --models: importing 'atk20_broken_models' raised RuntimeError: "
        "no config\n"))
    (tmp_path / "atk20_factory.py").write_text(
        "from chainlit_orm.models import ModelSet\n"
        "def MODELS():\n    return ModelSet.build(prefix='f_')\n")
    assert main(["ddl", "sqlite", "--models", "atk20_factory:MODELS"]) == 2
    assert capsys.readouterr().err == (
        "chainlit-orm: error: --models: atk20_factory:MODELS is a function, not a ModelSet "
        "(build one with chainlit_orm.models.ModelSet.build)\n")


# ----------------------------------------------------------------- outside attack #20 F11


def test_main_carries_a_development_version() -> None:
    """outside attack #20 F11: main said 0.1.0, the version CHANGELOG.md dates 2026-12-06,
    while carrying 30 unreleased entries. A dev version tells the two apart; ``--version``
    prints it (one source: pyproject's ``version``, read through the package metadata)."""
    from packaging.version import Version

    changelog = (REPO / "CHANGELOG.md").read_text(encoding="utf-8")
    unreleased = changelog.split("## [Unreleased]", 1)[1].split("\n## [", 1)[0]
    latest = re.search(r"^## \[(\d[^\]]*)\]", changelog, re.M)
    assert latest is not None and latest.group(1) == "0.1.0"
    assert re.search(r"^- ", unreleased, re.M)  # unreleased entries exist
    assert chainlit_orm.__version__ == "0.2.0.dev0"
    assert Version(chainlit_orm.__version__).is_devrelease
    assert Version(chainlit_orm.__version__) > Version(latest.group(1))
    done = _run(CLI, "--version")
    assert (done.returncode, done.stdout) == (0, "chainlit-orm 0.2.0.dev0\n")


def test_the_defaults_the_help_shows_are_the_ones_the_code_uses() -> None:
    """outside attack #20 F3: the help's defaults moved to chainlit_orm.defaults (so the CLI
    need not import the heavy modules); the modules use the same objects."""
    import importlib

    from chainlit_orm import defaults
    from chainlit_orm.schema_gen import SUPPORTED_DIALECTS

    deadline, hooks, purge, copy, _layer = (
        importlib.import_module(f"chainlit_orm.{name}") for name in (
            "layers.deadline", "lifecycle.hooks", "lifecycle.purge", "transfer.copy",
            "transfer._layer"))

    assert defaults.SQL_DIALECTS == SUPPORTED_DIALECTS == ("postgresql", "sqlite", "mysql")
    assert (deadline.DEFAULT_MIGRATE_TIMEOUT, hooks.DEFAULT_HOOK_TIMEOUT, purge.DEFAULT_BATCH,
            copy.DEFAULT_BATCH, _layer.DEFAULT_TRANSFER_TIMEOUT, copy.SOURCE_KINDS) == (
        600.0, 30.0, 500, 200, 300.0, ("chainlit-orm", "official"))
