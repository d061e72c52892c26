"""The distributions a release would publish: built from this tree, checked with ``twine check``,
and the wheel installed into a clean virtualenv where the demo app starts and answers HTTP 200.

Why: the editable install every other test uses hides packaging mistakes (a module left out of
the wheel, metadata PyPI would refuse, a dependency only the development groups bring). The
clean virtualenv uses Python 3.13 when this machine has it (the suite itself runs on 3.11), so
the two ends of ``requires-python`` that can be installed here are both exercised. Its cost is
bounded: one build, one install pinned by ``constraints.txt`` (about two minutes), one app start.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from email.parser import Parser
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _python_313() -> str:
    """Python 3.13 if installed (on PATH or under pyenv), else the interpreter running the tests."""
    found = shutil.which("python3.13")
    if found and subprocess.run([found, "--version"], capture_output=True).returncode == 0:
        return found
    candidates = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.13*/bin/python3.13")))
    return candidates[-1] if candidates else sys.executable


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (wheel,) = out.glob("chainlit_orm-*.whl")
    (sdist,) = out.glob("chainlit_orm-*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


def test_twine_check_passes_on_the_wheel_and_the_sdist(dist: dict[str, Path]) -> None:
    done = subprocess.run([str(BIN / "twine"), "check", "--strict", str(dist["wheel"]),
                           str(dist["sdist"])], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("PASSED") == 2


def test_the_wheel_carries_the_package_and_its_metadata(dist: dict[str, Path]) -> None:
    import chainlit_orm

    with zipfile.ZipFile(dist["wheel"]) as wheel:
        names = set(wheel.namelist())
        (meta_name,) = (n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(wheel.read(meta_name).decode())
    assert "chainlit_orm/py.typed" in names and "chainlit_orm/alembic.py" in names
    assert not any(n.startswith(("tests/", "bench/", "docs/")) for n in names)
    assert metadata["Version"] == chainlit_orm.__version__
    assert set(metadata["Requires-Python"].split(",")) == {">=3.11", "<3.14"}
    assert "Programming Language :: Python :: 3.13" in metadata.get_all("Classifier")
    assert {url.split(",")[0] for url in metadata.get_all("Project-URL")} == {
        "Homepage", "Documentation", "Source", "Changelog", "Issues"}
    # the development tools are dependency groups, not published extras
    assert set(metadata.get_all("Provides-Extra")) == {
        "postgres", "mysql", "dynamodb", "s3", "azure", "otel", "all"}
    requires = " ".join(metadata.get_all("Requires-Dist"))
    assert "pytest" not in requires and "playwright" not in requires
    with tarfile.open(dist["sdist"]) as sdist:
        members = {m.name.split("/", 1)[1] for m in sdist.getmembers() if "/" in m.name}
    assert {"pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md"} <= members


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _started(argv: list[str], cwd: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=30)


def test_the_wheel_in_a_clean_virtualenv_runs_the_demo_app(dist: dict[str, Path],
                                                           tmp_path: Path) -> None:
    python = _python_313()
    venv = tmp_path / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=120)
    install = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-c",
         str(ROOT / "constraints.txt"), str(dist["wheel"])],
        capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stderr[-3000:]
    app = tmp_path / "app"
    shutil.copytree(ROOT / "examples", app, ignore=shutil.ignore_patterns(".data", ".files"))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CHAINLIT_", "PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import sys, chainlit_orm; print(chainlit_orm.__file__, chainlit_orm.__version__, "
         "sys.version_info[:2])"],
        capture_output=True, text=True, cwd=app, env=env, check=True).stdout
    assert where.startswith(str(venv)), where  # the wheel's copy, not this source tree
    print(f"\nclean virtualenv: {where.strip()}")
    port = _free_port()
    argv = [str(venv / "bin" / "chainlit"), "run", "app.py", "--headless", "--host",
            "127.0.0.1", "--port", str(port)]
    status = None
    with _started(argv, app, {**env, "CHAINLIT_APP_ROOT": str(app)}) as proc:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and status != 200 and proc.poll() is None:
            time.sleep(0.5)
            with contextlib.suppress(httpx.HTTPError):
                status = httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code
    assert status == 200
