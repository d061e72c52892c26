"""The one parser of database URLs: every entry point (``from_env()``, the CLI, ``migrate()``,
the copy/export/import commands and both layers) reads a URL through :func:`parse_url`, so the
same URL means the same thing everywhere.

Two kinds of URL:

* SQL (``sqlite``, ``postgresql``/``postgres``, ``mysql``, ``mariadb``, each optionally with a
  ``+driver``): a :class:`SQLURL`, whose :meth:`SQLURL.async_url` is the SQLAlchemy URL on the
  async driver this package uses (``postgresql://`` -> ``postgresql+asyncpg://``). Query
  parameters of a SQL URL belong to the driver and are passed through, after a check that the
  driver takes them (:func:`sql_query_parameters`): a name the driver's ``connect()`` does not
  take (a misspelt one) would otherwise be a bare
  ``TypeError`` at every call, long after the layer was built. ``isolation_level`` is refused
  there as it is as an engine option (the layer's connections are AUTOCOMMIT by design), and
  so are a port that is not a number in 0..65535 and a URL that cannot be split. asyncpg's
  numeric and flag parameters (``command_timeout=30``, ``statement_cache_size=0``) are converted
  (:attr:`SQLURL.connect_args`), as SQLAlchemy does for the MySQL and SQLite drivers.
  ``prepared_statement_cache_size=0`` on a PostgreSQL URL (SQLAlchemy's name for asyncpg's
  statement cache) also tells this package it talks to a transaction-mode pooler (PgBouncer,
  Supavisor, Neon's pooler): see :attr:`SQLURL.transaction_pooler`.
* ``dynamodb://TABLE?region=...&endpoint_url=...&profile=...``: a :class:`DynamoURL`. Its
  parameters are this package's, so an unknown one (a misspelt ``regoin=``) is refused with the
  list of accepted ones instead of being silently ignored. ``dynamodb:///TABLE`` names the same
  table as ``dynamodb://TABLE``.

Schemes are case-insensitive (``DYNAMODB://t`` is DynamoDB). Credentials are never taken from a
``dynamodb://`` URL (it ends up in shell history and logs): they come from the AWS chain,
optionally a named ``profile``.

This module does no I/O. It imports a driver only to read the parameters its ``connect()``
takes, and a driver that is not installed is not an error here: checking that it is installed
is :meth:`SQLURL.async_url`'s job, done when a layer or migration is about to connect.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from chainlit_orm.defaults import DATABASE_URL_VARIABLES, STORAGE_URL_VARIABLE
from chainlit_orm.errors import ConfigurationError, MissingDependencyError, mask_url

__all__ = [
    "DATABASE_URL_VARIABLES",
    "DYNAMODB_PARAMETERS",
    "ISOLATION_LEVEL_REFUSED",
    "SQLURL",
    "SQL_DRIVERS",
    "STORAGE_URL_VARIABLE",
    "SUPPORTED_SCHEMES",
    "DatabaseURL",
    "DynamoURL",
    "async_database_url",
    "database_url_from_env",
    "parse_dynamodb_url",
    "parse_sql_url",
    "parse_url",
    "sql_query_parameters",
]

#: dialect (as written in a URL) -> (async SQLAlchemy driver name, driver module, pip extra).
SQL_DRIVERS: dict[str, tuple[str, str, str]] = {
    "postgresql": ("postgresql+asyncpg", "asyncpg", "postgres"),
    "postgres": ("postgresql+asyncpg", "asyncpg", "postgres"),
    "sqlite": ("sqlite+aiosqlite", "aiosqlite", ""),
    "mysql": ("mysql+asyncmy", "asyncmy", "mysql"),
    "mariadb": ("mariadb+asyncmy", "asyncmy", "mysql"),
}

#: The schemes a database URL may have, as messages name them (a ``+driver`` suffix is allowed on
#: the SQL ones; ``postgres://``, the spelling Heroku and others use, is ``postgresql://``).
SUPPORTED_SCHEMES: tuple[str, ...] = ("postgresql", "sqlite", "mysql", "mariadb", "dynamodb")

#: The async drivers, as the error messages name them.
SUPPORTED_DRIVERS = "sqlite+aiosqlite, postgresql+asyncpg, mysql+asyncmy, mariadb+asyncmy"

#: Why ``isolation_level`` is refused, as an engine option and in a URL's query alike.
ISOLATION_LEVEL_REFUSED = (
    "isolation_level is not supported: the layer's connections are "
    "AUTOCOMMIT by design (each write is one idempotent statement) and its "
    "multi-statement writes use the server's default isolation; set that default on "
    "the server or the role instead (PostgreSQL: default_transaction_isolation, "
    "MySQL/MariaDB: transaction_isolation)"
)

#: Query parameters SQLAlchemy's dialect consumes itself, per async driver, on top of what the
#: driver's ``connect()`` takes (read from its signature): asyncpg's statement-cache options
#: (SQLAlchemy's adapter), the ``ssl_*`` keys the MySQL dialect folds into ``ssl=``, and the
#: pysqlite list SQLAlchemy coerces (aiosqlite passes ``**kwargs`` on to ``sqlite3.connect``, so
#: its signature says nothing; ``isolation_level`` is left out, it is refused).
_DIALECT_PARAMETERS: dict[str, tuple[str, ...]] = {
    "postgresql+asyncpg": ("prepared_statement_cache_size", "prepared_statement_name_func"),
    "mysql+asyncmy": ("ssl_ca", "ssl_key", "ssl_cert", "ssl_capath", "ssl_cipher",
                      "ssl_check_hostname"),
    "mariadb+asyncmy": ("ssl_ca", "ssl_key", "ssl_cert", "ssl_capath", "ssl_cipher",
                        "ssl_check_hostname"),
    "sqlite+aiosqlite": ("uri", "timeout", "detect_types", "check_same_thread",
                         "cached_statements"),
}

#: ``connect()`` parameters that no URL can express (objects, or what the URL's own parts set).
_NOT_FROM_A_URL = frozenset({
    "dsn", "loop", "connection_class", "record_class", "conv", "cursor_cls", "query_callback",
    "password_creator", "auth_plugin_map", "sock", "database", "db", "user", "password",
    "port", "iter_chunk_size", "server_settings",
})

#: asyncpg's parameters that want a number or a flag, which a URL can only give as text:
#: SQLAlchemy's asyncpg dialect passes the text on (it converts only the port and
#: ``prepared_statement_cache_size``), and asyncpg then fails at the first connect with a bare
#: ``TypeError``. :attr:`SQLURL.connect_args` gives them converted; a value that does not convert
#: is refused at parse time. (SQLAlchemy's MySQL and SQLite dialects convert their own.)
_ASYNCPG_TYPED: dict[str, type] = {
    "timeout": float, "command_timeout": float, "statement_cache_size": int,
    "max_cached_statement_lifetime": int, "max_cacheable_statement_size": int,
    "direct_tls": bool,
}

_FLAGS = {"true": True, "1": True, "yes": True, "on": True,
          "false": False, "0": False, "no": False, "off": False}

#: A hint for a parameter another driver spells differently.
_HINTS: dict[tuple[str, str], str] = {}

#: Query parameters a ``dynamodb://`` URL may carry.
DYNAMODB_PARAMETERS: tuple[str, ...] = ("region", "endpoint_url", "profile")


Backend = Literal["postgresql", "sqlite", "mysql", "dynamodb"]


@dataclass(frozen=True)
class SQLURL:
    """A parsed SQL database URL.

    Attributes:
        url: the URL as SQLAlchemy parsed it, dialect lower-cased, driver as written.
        dialect: ``postgresql``, ``sqlite``, ``mysql`` or ``mariadb`` (``postgres`` is
            ``postgresql``).
        driver: the async SQLAlchemy driver name this package connects with, e.g.
            ``postgresql+asyncpg``.
    """

    url: URL
    dialect: str
    driver: str

    @property
    def connect_args(self) -> dict[str, Any]:
        """The query parameters the driver wants as numbers or flags, converted (see
        ``_ASYNCPG_TYPED``): ``connect_args`` for ``create_async_engine``, which win over the
        same parameters left as text in the URL. Empty for MySQL and SQLite, whose SQLAlchemy
        dialects convert their own."""
        if self.driver != "postgresql+asyncpg":
            return {}
        return {name: _convert(name, self.url.query[name], kind, self.shown)
                for name, kind in _ASYNCPG_TYPED.items() if name in self.url.query}

    @property
    def backend(self) -> Backend:
        """The backend family: MariaDB counts as ``mysql`` (one dialect, one DDL)."""
        if self.dialect == "mariadb":
            return "mysql"
        if self.dialect == "sqlite":
            return "sqlite"
        if self.dialect == "mysql":
            return "mysql"
        return "postgresql"

    @property
    def shown(self) -> str:
        """The URL as it may appear in messages: password and secret query values masked."""
        return mask_url(self.url.render_as_string(hide_password=True))

    @property
    def transaction_pooler(self) -> bool:
        """Whether the URL says the server is behind a transaction-mode pooler: a PostgreSQL URL
        with ``prepared_statement_cache_size=0``.

        Why this flag: behind such a pooler consecutive transactions of one client connection
        run on different server connections, so a named prepared statement made in one is
        missing in the next (asyncpg: ``prepared statement "__asyncpg_stmt_1__" does not
        exist``). ``prepared_statement_cache_size=0`` is the parameter users already put in the
        URL for SQLAlchemy; the layer reads it as "use no named prepared statement": its own
        connections run with asyncpg's ``statement_cache_size=0`` (unnamed statements only)."""
        if self.dialect != "postgresql":
            return False
        value = self.url.query.get("prepared_statement_cache_size")
        if isinstance(value, tuple):
            value = value[-1]
        return value is not None and value.strip() == "0"

    def async_url(self) -> URL:
        """The SQLAlchemy URL on this package's async driver, after checking it is installed.

        Raises:
            MissingDependencyError: the driver's extra is not installed.
        """
        _, module, extra = SQL_DRIVERS[self.dialect]
        try:
            __import__(module)
        except ImportError as exc:
            raise MissingDependencyError(module, extra or "all") from exc
        return self.url.set(drivername=self.driver)


@dataclass(frozen=True)
class DynamoURL:
    """A parsed ``dynamodb://TABLE?region=...&endpoint_url=...&profile=...`` URL."""

    table: str
    region: str | None = None
    endpoint_url: str | None = None
    profile: str | None = None

    @property
    def backend(self) -> Backend:
        """Always ``dynamodb``; lets callers dispatch on either URL type alike."""
        return "dynamodb"

    @property
    def shown(self) -> str:
        """The URL written back (it never carries a secret: credentials are refused)."""
        query = "&".join(f"{key}={value}" for key in DYNAMODB_PARAMETERS
                         if (value := getattr(self, key)))
        return f"dynamodb://{self.table}" + (f"?{query}" if query else "")


DatabaseURL = SQLURL | DynamoURL


def _scheme(url: str) -> str:
    head, sep, _ = url.strip().partition("://")
    return head.split("+", 1)[0].lower() if sep else ""


def _unsupported(url: object, scheme: str) -> ConfigurationError:
    return ConfigurationError(
        f"unsupported database URL {mask_url(url)}: supported schemes are "
        f"{', '.join(s + '://' for s in SUPPORTED_SCHEMES)} "
        "(e.g. postgresql+asyncpg://, sqlite+aiosqlite:///file.db, mysql+asyncmy://, "
        "dynamodb://TABLE?region=...)",
        detail=scheme,
    )


@functools.lru_cache(maxsize=8)
def sql_query_parameters(driver: str) -> tuple[str, ...] | None:
    """The query parameters a URL on ``driver`` (e.g. ``postgresql+asyncpg``) may carry, sorted;
    None when its driver is not installed (nothing to check against: the missing driver is
    reported when the layer connects).

    Read from the driver's own ``connect()`` signature (asyncpg, asyncmy) plus what SQLAlchemy's
    dialect consumes itself, so the list follows the installed driver version instead of a copy
    kept here. A SQLite URL with ``uri=true`` also takes any SQLite URI parameter
    (``mode=ro``, ``cache=shared``): :func:`parse_sql_url` does not check those.
    """
    _, module, _ = SQL_DRIVERS[driver.split("+", 1)[0]]
    try:
        connect = importlib.import_module(module).connect
    except ImportError:
        return None
    names = {name for name, parameter in inspect.signature(connect).parameters.items()
             if parameter.kind not in (inspect.Parameter.VAR_POSITIONAL,
                                       inspect.Parameter.VAR_KEYWORD)}
    if driver == "sqlite+aiosqlite":
        names = set()  # aiosqlite's own are not URL values; sqlite3's come from the list
    names |= set(_DIALECT_PARAMETERS[driver])
    names -= _NOT_FROM_A_URL
    if driver == "postgresql+asyncpg":
        names.add("host")  # SQLAlchemy's multi-host form, ?host=a:5432&host=b:5432
    return tuple(sorted(names))


#: libpq's ``sslmode`` values, which asyncpg's ``ssl`` takes as they are.
SSL_MODES: tuple[str, ...] = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def _sslmode_as_ssl(parsed: URL, shown: str) -> URL:
    """``?sslmode=X`` (libpq's name, in the URLs hosted PostgreSQL services hand out) as
    asyncpg's ``?ssl=X``. Why rename rather than refuse: the values mean the same to both
    drivers, and a URL copied from a provider's console should just work.

    Raises:
        ConfigurationError: the value is not one of :data:`SSL_MODES`, or the URL also has
            ``ssl=`` (two settings that could disagree).
    """
    value = parsed.query["sslmode"]
    mode = (value[-1] if isinstance(value, tuple) else value).strip().lower()
    if "ssl" in parsed.query:
        raise ConfigurationError(
            f"both sslmode= and ssl= in {shown}; give one (asyncpg takes ssl=)", detail="sslmode")
    if mode not in SSL_MODES:
        raise ConfigurationError(
            f"sslmode={mode!r} in {shown} is not one of {', '.join(SSL_MODES)}", detail="sslmode")
    return parsed.difference_update_query(["sslmode"]).update_query_dict({"ssl": mode})


def _check_query(parsed: URL, driver: str, shown: str) -> None:
    """Refuse a query parameter the driver would reject at the first call (see the module
    docstring); ``shown`` is the masked URL for the message."""
    query = parsed.query
    if "isolation_level" in query:
        raise ConfigurationError(
            f"the URL parameter {ISOLATION_LEVEL_REFUSED} (in {shown})", detail="isolation_level")
    if driver == "sqlite+aiosqlite" and str(query.get("uri", "")).lower() in ("true", "1"):
        return  # every other name is a SQLite URI parameter
    accepted = sql_query_parameters(driver)
    if accepted is None:
        return
    unknown = sorted(set(query) - set(accepted))
    if unknown:
        hint = "".join(_HINTS.get((driver, name), "") for name in unknown)
        raise ConfigurationError(
            f"unknown parameter(s) {', '.join(unknown)} in {shown}{hint}; {driver} accepts: "
            f"{', '.join(accepted)}",
            detail=unknown[0],
        )


def _convert(name: str, value: str | tuple[str, ...], kind: type, shown: str) -> Any:
    """``value`` (the URL's text; the last one when repeated) as ``kind``.

    Raises:
        ConfigurationError: it is not one (a number below 0 included), naming the parameter.
    """
    text = (value[-1] if isinstance(value, tuple) else value).strip()
    converted: Any = None
    if kind is bool:
        converted = _FLAGS.get(text.lower())
    else:
        try:
            converted = kind(text)
        except ValueError:
            converted = None
        if converted is not None and not (converted >= 0 and converted == converted):  # no NaN
            converted = None
    if converted is None:
        wanted = {bool: "true or false", int: "a whole number >= 0",
                  float: "a number of seconds >= 0"}[kind]
        raise ConfigurationError(
            f"the URL parameter {name}={text!r} in {shown} must be {wanted}", detail=name)
    return converted


def _unparsable(url: str | URL, exc: Exception) -> ConfigurationError:
    """Why ``make_url`` refused ``url``, in words: its own ``ValueError`` names only the text
    it failed to read as the port (``invalid literal for int()``)."""
    shown = mask_url(url)
    if isinstance(url, str):
        try:
            parts = urlsplit(url.strip())
        except ValueError as split:  # an unclosed IPv6 bracket
            return ConfigurationError(f"cannot parse database URL {shown}: {split}",
                                      detail="host")
        try:
            parts.port  # noqa: B018 - the property parses (and checks) the port
        except ValueError:
            port = parts.netloc.rpartition(":")[2]
            return ConfigurationError(
                f"invalid port {port!r} in database URL {shown}: the port must be a number in "
                "0..65535", detail="port")
    return ConfigurationError(f"cannot parse database URL {shown}: {exc}")


def parse_url(url: str | URL) -> DatabaseURL:
    """Parse any database URL into its typed value.

    Raises:
        ConfigurationError: an unsupported scheme or driver, a URL that cannot be parsed, or a
            ``dynamodb://`` URL without a table or with an unknown parameter; the message names
            what is accepted.
    """
    if isinstance(url, URL):
        return parse_sql_url(url)
    scheme = _scheme(url)
    if scheme == "dynamodb":
        return parse_dynamodb_url(url)
    if scheme not in SQL_DRIVERS:
        raise _unsupported(url, scheme)
    return parse_sql_url(url)


def parse_sql_url(url: str | URL) -> SQLURL:
    """Parse a SQL database URL (see :func:`parse_url`).

    Raises:
        ConfigurationError: not a SQL URL, unparsable (a port that is not a number in
            0..65535, an unclosed IPv6 bracket), an unsupported dialect or driver, or a query
            parameter the driver does not take (or ``isolation_level``): the message names the
            parameter and the accepted ones.
    """
    if isinstance(url, str):
        scheme = _scheme(url)
        if scheme not in SQL_DRIVERS:
            raise _unsupported(url, scheme)
    try:
        parsed = make_url(url.strip() if isinstance(url, str) else url)
    except ArgumentError as exc:
        raise ConfigurationError(f"cannot parse database URL {mask_url(url)}") from exc
    except ValueError as exc:  # make_url reads the port with int()
        raise _unparsable(url, exc) from exc
    if parsed.port is not None and not 0 <= parsed.port <= 65535:
        raise ConfigurationError(
            f"invalid port {parsed.port} in database URL {mask_url(url)}: the port must be a "
            "number in 0..65535", detail="port")
    drivername = parsed.drivername.lower()
    dialect, _, driver = drivername.partition("+")
    if dialect not in SQL_DRIVERS:
        raise ConfigurationError(
            f"unsupported database {parsed.drivername!r} in {mask_url(url)}; "
            f"supported: {SUPPORTED_DRIVERS}",
            detail=dialect,
        )
    wanted = SQL_DRIVERS[dialect][0]
    if driver and f"{dialect}+{driver}" != wanted:
        raise ConfigurationError(
            f"unsupported driver {parsed.drivername!r} in {mask_url(url)}; "
            f"supported: {SUPPORTED_DRIVERS}",
            detail=drivername,
        )
    canonical = "postgresql" if dialect == "postgres" else dialect
    if wanted == "postgresql+asyncpg" and "sslmode" in parsed.query:
        parsed = _sslmode_as_ssl(parsed, mask_url(url))
    result = SQLURL(url=parsed.set(drivername=drivername), dialect=canonical, driver=wanted)
    _check_query(parsed, wanted, result.shown)
    result.connect_args  # noqa: B018 - converts (and so checks) the typed parameters now
    return result


def async_database_url(url: str | URL) -> URL:
    """The SQLAlchemy URL to hand to ``create_async_engine`` for a database URL written in any
    form this package accepts (``sqlite:///chat.db``, ``postgres://...``,
    ``postgresql+asyncpg://...``): checked by :func:`parse_sql_url`, on the async driver this
    package uses. For code of your own that reads the same variable the layer does, such as an
    Alembic ``env.py``.

    Raises:
        ConfigurationError: the URL is not one :func:`parse_sql_url` accepts.
        MissingDependencyError: its async driver is not installed.
    """
    return parse_sql_url(url).async_url()


def parse_dynamodb_url(url: str) -> DynamoURL:
    """Parse a ``dynamodb://`` URL (see :func:`parse_url`).

    Raises:
        ConfigurationError: not a ``dynamodb://`` URL, no table name, or an unknown parameter.
    """
    parts = urlsplit(url.strip())
    if parts.scheme.lower() != "dynamodb":
        raise ConfigurationError(f"not a dynamodb:// URL: {mask_url(url)}")
    table = (parts.netloc + parts.path).strip("/")
    if not table:
        raise ConfigurationError(
            f"no table name in {mask_url(url)}; use dynamodb://TABLE?region=REGION"
        )
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - set(DYNAMODB_PARAMETERS))
    if unknown:
        raise ConfigurationError(
            f"unknown parameter(s) {', '.join(unknown)} in {mask_url(url)}; "
            f"supported: {', '.join(DYNAMODB_PARAMETERS)} (credentials come from the AWS chain)",
            detail=unknown[0],
        )
    values = {key: query[key][-1] or None for key in query}
    return DynamoURL(table=table, **values)


def database_url_from_env(env: Mapping[str, str]) -> str | None:
    """The database URL the environment names (see :data:`DATABASE_URL_VARIABLES`), or None.

    An empty variable counts as unset (``DATABASE_URL=`` in a ``.env`` file does not hide a
    ``CHAINLIT_ORM_DATABASE_URL``, and an empty ``CHAINLIT_ORM_DATABASE_URL`` falls back to
    ``DATABASE_URL``). The value is returned as written; :func:`parse_url` checks it.
    """
    for name in DATABASE_URL_VARIABLES:
        value = env.get(name)
        if value:
            return value
    return None
