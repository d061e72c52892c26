"""chainlit-orm demo: a Chainlit app whose chat history lives in SQL and files in storage.

Run it with ``bash examples/run.sh`` (creates the virtualenv on first use), or, inside the
virtualenv::

    CHAINLIT_APP_ROOT=examples chainlit run examples/app.py --headless

What it shows:

* password login with two demo users, ``alice`` and ``bob`` (passwords from
  ``DEMO_ALICE_PASSWORD`` / ``DEMO_BOB_PASSWORD``, demo defaults ``alice-pass`` / ``bob-pass``);
* a bot that answers every message through a ``think`` tool step and a reply carrying a
  ``cl.Text`` element; files uploaded with a message are stored and shown again after a reload;
* chat history in the sidebar, resume, rename, delete, feedback and thread sharing.

Where things are stored (environment variables, read once when Chainlit first needs the layer):

``CHAINLIT_ORM_DATABASE_URL``
    Any URL :class:`chainlit_orm.SQLDataLayer` accepts. Default: a SQLite file,
    ``examples/.data/chainlit.db``, whose schema is created on first use. A PostgreSQL or MySQL
    database must be created first with ``chainlit-orm migrate``: the app checks the database,
    its schema and the storage at start (``layer.check()``) and exits with the list of
    problems, each with its fix, when something is wrong.
``CHAINLIT_ORM_STORAGE_URL``
    Where uploaded files go, through :class:`chainlit_orm.FsspecStorage`: ``s3://bucket/prefix``,
    ``az://container/prefix``, ``file:///path`` or a plain path. Default: ``examples/.data/files``
    on local disk, served to the browser by a signed, expiring route mounted on Chainlit's app.
    For an S3-compatible server (MinIO, moto) set ``AWS_ENDPOINT_URL_S3`` (and the usual
    ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_REGION``).
``CHAINLIT_AUTH_SECRET``
    Signs Chainlit's login tokens (and, unless ``CHAINLIT_ORM_STORAGE_SECRET`` is set, the local
    file URLs). When it is unset, the demo generates one and keeps it in
    ``examples/.data/auth-secret`` so logins survive a restart. Set your own in production.
"""

from __future__ import annotations

import hmac
import os
import secrets
import sys
from pathlib import Path
from typing import Any

import chainlit as cl
from chainlit.config import config
from chainlit.data import get_data_layer
from chainlit.logger import logger
from chainlit.types import ThreadDict

import chainlit_orm
from chainlit_orm.errors import ChainlitORMError, mask_url

HERE = Path(__file__).resolve().parent
DATA_DIR = HERE / ".data"

DEMO_USERS = {
    # identifier: (environment variable, demo default)
    "alice": ("DEMO_ALICE_PASSWORD", "alice-pass"),
    "bob": ("DEMO_BOB_PASSWORD", "bob-pass"),
}


def _password(identifier: str) -> str:
    variable, default = DEMO_USERS[identifier]
    return os.environ.get(variable) or default


def _ensure_auth_secret() -> str:
    """Return where CHAINLIT_AUTH_SECRET comes from, generating a persistent one if unset.

    Chainlit reads the variable after importing this module, so setting it here is enough.
    """
    if os.environ.get("CHAINLIT_AUTH_SECRET"):
        return "CHAINLIT_AUTH_SECRET from the environment"
    path = DATA_DIR / "auth-secret"
    if path.exists():
        secret = path.read_text().strip()
        origin = f"generated earlier, kept in {path}"
    else:
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        secret = secrets.token_urlsafe(48)
        path.touch(mode=0o600)
        path.write_text(secret + "\n")
        origin = f"generated now (CHAINLIT_AUTH_SECRET was unset), kept in {path}"
    os.environ["CHAINLIT_AUTH_SECRET"] = secret
    return origin


def database_url() -> str:
    url = os.environ.get("CHAINLIT_ORM_DATABASE_URL")
    if url:
        return url
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    return f"sqlite+aiosqlite:///{DATA_DIR / 'chainlit.db'}"


def storage_url() -> str:
    url = os.environ.get("CHAINLIT_ORM_STORAGE_URL")
    if url:
        return url
    files = DATA_DIR / "files"
    files.mkdir(parents=True, exist_ok=True)
    return str(files)


def _banner(secret_origin: str) -> str:
    lines = [""]
    # examples/run.sh has already printed the URL and the logins (before the slow imports).
    if not os.environ.get("CHAINLIT_ORM_DEMO_LAUNCHER"):
        host = config.run.host or "127.0.0.1"
        url = f"http://{host}:{config.run.port}{config.run.root_path or ''}"
        lines += ["chainlit-orm demo", f"  open      {url}"]
        for identifier, (variable, default) in DEMO_USERS.items():
            shown = default if not os.environ.get(variable) else f"<${variable}>"
            lines.append(f"  login     {identifier} / {shown}")
    lines += [
        f"  database  {mask_url(database_url())}",
        f"  files     {mask_url(storage_url())}",
        f"  secret    {secret_origin}",
        "",
    ]
    return "\n".join(lines)


_SECRET_ORIGIN = _ensure_auth_secret()
print(_banner(_SECRET_ORIGIN), file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- persistence


@cl.data_layer
def data_layer() -> chainlit_orm.SQLDataLayer:
    # FsspecStorage mounts its signed read-URL route on Chainlit's app by itself when the storage
    # is local disk or memory; S3 and Azure hand out presigned/SAS URLs instead.
    storage = chainlit_orm.FsspecStorage(storage_url())
    return chainlit_orm.SQLDataLayer(database_url(), storage=storage)


@cl.on_app_startup
async def check_persistence() -> None:
    # Database reachable, schema migrated, storage writable: checked before anyone logs in.
    # Chainlit logs an Exception raised here and serves the app anyway (the error would come at
    # the first login); SystemExit stops it at start ("Application startup failed. Exiting.").
    # "from None": the message lists every problem with its fix; the chained tracebacks would
    # print it three times. get_data_layer() is inside the try: it builds the layer, and a
    # setting that cannot work (an unsupported URL, a storage secret under 16 characters) is a
    # ConfigurationError raised there; ChainlitORMError, the package's base class, covers it
    # and CheckFailedError alike.
    try:
        layer = get_data_layer()
        if not isinstance(layer, chainlit_orm.ChainlitLayer):
            raise SystemExit(f"expected a chainlit-orm data layer, got {type(layer).__name__}")
        await layer.check()
    except ChainlitORMError as err:
        raise SystemExit(str(err)) from None


# --------------------------------------------------------------------------- auth


@cl.password_auth_callback
def password_auth(username: str, password: str) -> cl.User | None:
    if username not in DEMO_USERS:
        return None
    if not hmac.compare_digest(password.encode(), _password(username).encode()):
        return None
    return cl.User(identifier=username, display_name=username.title(),
                   metadata={"role": "user", "provider": "credentials"})


@cl.on_shared_thread_view
async def on_shared_thread_view(thread: ThreadDict, viewer: cl.User | None) -> bool:
    # Chainlit shows a thread through its share link when this returns True *or* the thread's
    # metadata says is_shared. Returning True unconditionally would publish every thread to anyone
    # who knows its id, so only shared threads (and the author's own) are readable.
    metadata = thread.get("metadata") or {}
    if isinstance(metadata, dict) and metadata.get("is_shared"):
        return True
    return viewer is not None and viewer.identifier == thread.get("userIdentifier")


# --------------------------------------------------------------------------- chat


@cl.on_chat_start
async def on_chat_start() -> None:
    cl.user_session.set("turns", 0)


@cl.on_chat_resume
async def on_chat_resume(thread: ThreadDict) -> None:
    # Chainlit rebuilds the messages and the chat context from get_thread(), and seeds the user
    # session with the thread's metadata; whatever is in the user session when the browser leaves
    # is written back with update_thread(metadata=...), which chainlit-orm merges into the stored
    # metadata (so a flag set meanwhile, like is_shared, survives).
    turns = sum(1 for step in thread["steps"] if step.get("type") == "user_message")
    cl.user_session.set("turns", turns)
    cl.user_session.set("resumes", int(cl.user_session.get("resumes") or 0) + 1)


@cl.on_chat_end
async def on_chat_end() -> None:
    session = cl.context.session
    if session.thread_id and getattr(session, "has_first_interaction", False):
        logger.info("chat session ended; saving session metadata of thread %s", session.thread_id)


def _describe(element: Any) -> str:
    size = None
    if getattr(element, "path", None):
        try:
            size = os.path.getsize(element.path)
        except OSError:
            size = None
    mime = getattr(element, "mime", None) or "unknown type"
    return f"{element.name} ({mime}{f', {size} bytes' if size is not None else ''})"


@cl.on_message
async def on_message(message: cl.Message) -> None:
    turns = (cl.user_session.get("turns") or 0) + 1
    cl.user_session.set("turns", turns)
    files = [_describe(e) for e in message.elements or []]

    async with cl.Step(name="think", type="tool") as step:
        step.input = message.content
        words = len(message.content.split())
        step.output = f"{words} word{'s' if words != 1 else ''}, {len(files)} file(s)"

    notes = "\n".join(f"- {f}" for f in files) or "- no files"
    summary = cl.Text(
        name="summary",
        content=f"Turn {turns}\nMessage: {message.content}\nFiles:\n{notes}",
        display="inline",
    )
    reply = f"You said: {message.content}"
    if files:
        reply += f"\n\nReceived {len(files)} file(s): " + ", ".join(files)
    await cl.Message(content=reply, elements=[summary]).send()
