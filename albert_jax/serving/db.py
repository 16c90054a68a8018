"""The service's database: API keys (stored as hashes) and the usage ledger, via SQLAlchemy.

A SQLite file by default (WAL journal, so several processes on one host can share it), or
any SQLAlchemy URL: ``postgresql+psycopg://user@host/db`` for replicas on several hosts.
Tables are created on first use (``create_all`` is idempotent) by ``serve`` and ``keys
create``; the read-only commands (``usage``, ``keys list/revoke``) never create anything.
A new SQLite file is mode 0600 in a 0700 directory; messages show URLs with the password
hidden (:func:`redact`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import re
import secrets
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote, quote_plus

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError, ProgrammingError

from albert_jax.serving.text import printable

metadata = sa.MetaData()

api_keys = sa.Table(
    "api_keys", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    # sha256 of the key: keys are 256 random bits, so a fast hash is enough (no brute force).
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("prefix", sa.String(16), nullable=False),
    sa.Column("rate_limit", sa.Integer, nullable=True),  # requests per minute; None: no limit
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
)

usage = sa.Table(
    "usage", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("day", sa.String(10), nullable=False, index=True),  # UTC YYYY-MM-DD
    sa.Column("key_name", sa.String(200), nullable=True, index=True),  # None: anonymous
    sa.Column("model", sa.String(200), nullable=True),
    sa.Column("endpoint", sa.String(200), nullable=False),
    sa.Column("status", sa.Integer, nullable=False),  # HTTP status code
    sa.Column("error_type", sa.String(64), nullable=True),
    sa.Column("tokens", sa.Integer, nullable=False),
    sa.Column("runtime_ms", sa.Float, nullable=False),  # billed device time
    sa.Column("cost", sa.Float, nullable=False),  # runtime_s x price
    sa.Column("latency_ms", sa.Float, nullable=False),  # wall time in the server
    sa.Column("replica", sa.String(200), nullable=False),
)

KEY_PREFIX = "ajk_"
# Key names end up in the access log and the usage table: a short, plain alphabet only.
KEY_NAME_RULE = ("1 to 64 characters from A-Z a-z 0-9 . _ @ + -, starting with a letter or "
                 "a digit")
_KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")

# Timeouts: an unreachable or stuck database must fail a request (or a command) within
# seconds, not hang it until the client or TCP gives up (minutes).
# PostgreSQL: longest wait to establish a connection (libpq's connect_timeout, whole
# seconds, at least 2)...
PG_CONNECT_TIMEOUT_S = 5
# ...and longest statement: a key lookup or a ledger insert takes milliseconds, a usage
# summary over a large ledger well under this; a lock held by a stuck client does not.
PG_STATEMENT_TIMEOUT_MS = 10_000
# Longest wait for a free connection of the pool (all busy): a request waits this at most.
POOL_TIMEOUT_S = 5
# SQLite: longest wait for another process's write lock (WAL: only writers wait). Ledger
# writes are short transactions, so a lock held longer than this is a stuck writer.
SQLITE_BUSY_TIMEOUT_S = 5

_TABLES = ("api_keys", "usage")
_CREATES = "`albert-jax keys create` or `serve` creates"


class KeyAdminError(Exception):
    """A key operation the user asked for that cannot be done (duplicate, unknown name)."""


class DatabaseError(Exception):
    """The database cannot be used (bad URL, unreachable, refused); the message is one line,
    names the database with its password hidden (:func:`redact`) and never holds it."""


class DatabaseMissing(DatabaseError):  # noqa: N818 - the condition, as the API names it
    """``connect(url, create=False)``: there is no database (or none of the tables) yet."""


def default_db_url() -> str:
    """SQLite in the user data directory (platformdirs), e.g. ~/.local/share/albert_jax.

    Nothing is created here: :func:`connect` creates the directory (0700) and the file (0600).
    """
    return "sqlite:///" + os.path.join(_default_dir(), "serve.db")


def _default_dir() -> str:
    import platformdirs

    return platformdirs.user_data_dir("albert_jax", appauthor=False)


def redact(url: str) -> str:
    """``url`` with its password shown as ``***`` (in the user part or a ``password=`` query
    parameter; a URL without one as it is written); ``(unparseable URL)`` if it is not one
    (the text of something that does not parse may be anything, a password included)."""
    try:
        parsed = make_url(url)
        if not _passwords(parsed):
            return url
        if "password" in parsed.query:
            parsed = parsed.update_query_dict({"password": "***"})
        return parsed.render_as_string(hide_password=True).replace("%2A%2A%2A", "***")
    except (ArgumentError, ValueError, TypeError):
        return "(unparseable URL)"


def _passwords(url: sa.URL) -> list[str]:
    found = [url.password] if url.password else []
    query = url.query.get("password")  # psycopg takes it there too
    found += [query] if isinstance(query, str) else list(query or ())
    return [str(p) for p in found if p]


def _scrub(url: str, text: str) -> str:
    """``text`` without ``url``'s password (raw or URL-encoded) or ``url`` itself."""
    secrets_in = [url]
    with contextlib.suppress(ArgumentError, ValueError, TypeError):
        for password in _passwords(make_url(url)):
            secrets_in += [password, quote_plus(password), quote(password, safe="")]
    for secret in sorted(set(secrets_in), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def describe_error(url: str | None, error: BaseException) -> str:
    """One line for a failure of the database at ``url`` (None: the default): the redacted
    URL and the driver's own message (not SQLAlchemy's SQL and parameters), password-free."""
    url = url or default_db_url()
    orig = getattr(error, "orig", None)  # DBAPIError: the driver's exception
    text = str(orig if orig is not None else error) or type(error).__name__
    return f"database {redact(url)}: {' '.join(_scrub(url, text).split())}"


def _prepare_sqlite(url: sa.URL, text: str, create: bool, default: bool) -> None:
    """The file of a SQLite URL: created empty with mode 0600 (its directory 0700 if new)
    before SQLite opens it, so it is never readable by others; DatabaseMissing when absent
    and not ``create``. SQLite gives the -wal and -shm files the main file's mode."""
    database = url.database
    if not database or database == ":memory:" or url.query.get("uri"):
        return  # In memory, or a file: URI whose options SQLite interprets itself.
    path = os.path.abspath(database)
    directory = os.path.dirname(path)
    ours = hasattr(os, "getuid") and os.path.isdir(directory) and \
        os.stat(directory).st_uid == os.getuid()
    if default and ours:
        os.chmod(directory, 0o700)  # Ours (an older version made it 0755): tighten it.
    if os.path.exists(path):
        return
    if not create:
        raise DatabaseMissing(f"no database at {redact(text)} ({_CREATES} one)")
    if not os.path.isdir(directory):
        os.makedirs(directory, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)  # Whatever the umask: it is new, and ours.
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0),
                     0o600)
    except FileExistsError:
        return  # Another process created it first.
    try:
        os.fchmod(fd, 0o600)  # A umask can only take bits away: owner read-write whatever it is.
    finally:
        os.close(fd)


def _sqlite_engine(url: sa.URL, wal: bool) -> sa.Engine:
    engine = sa.create_engine(
        url, pool_timeout=POOL_TIMEOUT_S,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False})

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        if wal:  # Readers never block the writer. (Persistent: set once, by the creator.)
            cursor.execute("PRAGMA journal_mode=WAL")
        # Ledger rows are billing records: a committed transaction must survive a power
        # loss, which NORMAL does not promise in WAL mode (FULL syncs the WAL at each commit).
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    return engine


def _server_engine(url: sa.URL) -> sa.Engine:
    connect_args: dict[str, Any] = {}
    if url.get_backend_name() == "postgresql" and url.get_driver_name() in ("psycopg",
                                                                             "psycopg2"):
        # Settings in the URL's query win; a statement timeout is added to its options.
        if "connect_timeout" not in url.query:
            connect_args["connect_timeout"] = PG_CONNECT_TIMEOUT_S
        options = url.query.get("options", "")
        options = options if isinstance(options, str) else " ".join(options)
        if "statement_timeout" not in options:
            connect_args["options"] = \
                f"{options} -c statement_timeout={PG_STATEMENT_TIMEOUT_MS}".strip()
    return sa.create_engine(url, pool_pre_ping=True, pool_timeout=POOL_TIMEOUT_S,
                            connect_args=connect_args)


def _create_tables(engine: sa.Engine) -> None:
    for attempt in range(3):
        try:
            metadata.create_all(engine)
            return
        except (IntegrityError, ProgrammingError, OperationalError) as e:
            # Two replicas creating the tables at once: the loser retries and finds them.
            # (Not a connection failure: that would only wait its timeout three times.)
            race = not isinstance(e, OperationalError) or "already exists" in str(e.orig)
            if attempt == 2 or not race:
                raise


def _check_tables(engine: sa.Engine, text: str) -> None:
    present = set(sa.inspect(engine).get_table_names())
    missing = [name for name in _TABLES if name not in present]
    if len(missing) == len(_TABLES):
        raise DatabaseMissing(f"database {redact(text)} has no albert-jax tables "
                              f"({', '.join(_TABLES)}; {_CREATES} them)")
    if missing:
        raise DatabaseMissing(f"database {redact(text)} has no {' or '.join(missing)} table "
                              f"({_CREATES} it)")


def connect(url: str | None = None, *, create: bool = True) -> sa.Engine:
    """An engine for ``url`` (default: :func:`default_db_url`), checked by connecting.

    ``create``: the database file (SQLite) and the tables are created where absent; else
    :class:`DatabaseMissing` says there are none. Any other failure (a URL that does not
    parse, an unknown driver, the server unreachable or refusing) is a :class:`DatabaseError`.
    """
    text = url or default_db_url()
    try:
        parsed = make_url(text)
    except (ArgumentError, ValueError, TypeError):
        raise DatabaseError("the database URL does not parse (expected "
                            "sqlite:///PATH or postgresql+psycopg://USER@HOST/DB)") from None
    sqlite = parsed.get_backend_name() == "sqlite"
    try:
        if sqlite:
            _prepare_sqlite(parsed, text, create, default=url is None)
        # Not create: nothing is written, not even the WAL flag into a file not ours.
        engine = _sqlite_engine(parsed, wal=create) if sqlite else _server_engine(parsed)
    except OSError as e:  # The file or its directory cannot be created (the path is shown).
        raise DatabaseError(f"cannot create the database {redact(text)}: "
                            f"{e.strerror or e}") from None
    except (sa.exc.SQLAlchemyError, ImportError, ValueError, TypeError) as e:
        raise DatabaseError(describe_error(text, e)) from None
    try:
        if create:
            _create_tables(engine)
        else:
            _check_tables(engine, text)
    except DatabaseMissing:
        engine.dispose()
        raise
    except sa.exc.SQLAlchemyError as e:
        engine.dispose()
        raise DatabaseError(describe_error(text, e)) from None
    return engine


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def check_new_key(name: str, rate_limit: int | None = None) -> None:
    """KeyAdminError unless ``name`` follows :data:`KEY_NAME_RULE` and ``rate_limit`` is
    None or at least 1 (checked before any database is created)."""
    if not _KEY_NAME.fullmatch(name):
        raise KeyAdminError(f"invalid key name '{printable(name, 80)}': {KEY_NAME_RULE}")
    if rate_limit is not None and rate_limit < 1:
        raise KeyAdminError(f"--rate-limit must be at least 1 request per minute, got {rate_limit}")


def create_key(engine: sa.Engine, name: str, rate_limit: int | None = None) -> str:
    """A new key for ``name``; returned once, stored only as its hash."""
    check_new_key(name, rate_limit)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    try:
        with engine.begin() as conn:
            conn.execute(api_keys.insert().values(
                name=name, key_hash=hash_key(key), prefix=key[: len(KEY_PREFIX) + 4],
                rate_limit=rate_limit, created_at=now()))
    except IntegrityError:
        raise KeyAdminError(f"a key named '{name}' already exists") from None
    return key


def list_keys(engine: sa.Engine) -> list[dict]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(api_keys).order_by(api_keys.c.name)).mappings().all()
    return [{k: v for k, v in row.items() if k != "key_hash"} for row in rows]


def revoke_key(engine: sa.Engine, name: str) -> None:
    with engine.begin() as conn:
        found = conn.execute(api_keys.update().where(api_keys.c.name == name)
                             .values(revoked_at=now())).rowcount
    if not found:
        raise KeyAdminError(f"no key named '{printable(name, 80)}'")


def lookup_key(engine: sa.Engine, key: str) -> dict | None:
    """The key's row (name, rate_limit, revoked_at), or None when unknown."""
    with engine.connect() as conn:
        row = conn.execute(sa.select(api_keys.c.name, api_keys.c.rate_limit,
                                     api_keys.c.revoked_at)
                           .where(api_keys.c.key_hash == hash_key(key))).mappings().first()
    return dict(row) if row else None


def insert_usage(engine: sa.Engine, rows: Sequence[dict]) -> None:
    if rows:
        with engine.begin() as conn:
            conn.execute(usage.insert(), list(rows))


def unbill(engine: sa.Engine, request_ids: Sequence[str]) -> None:
    """Marks rows unbilled (status 503 ``unavailable``, no runtime, no cost): rows written
    after their requests were answered 503."""
    with engine.begin() as conn:
        conn.execute(usage.update().where(usage.c.request_id.in_(list(request_ids))).values(
            status=503, error_type="unavailable", runtime_ms=0.0, cost=0.0))


def usage_summary(engine: sa.Engine, name: str | None = None) -> list[dict]:
    """Requests, failures, tokens, billed seconds and cost per (key, day, model)."""
    c = usage.c
    query = (sa.select(
        c.key_name, c.day, c.model,
        sa.func.count().label("requests"),
        sa.func.sum(sa.case((c.status >= 400, 1), else_=0)).label("failed"),
        sa.func.sum(c.tokens).label("tokens"),
        (sa.func.sum(c.runtime_ms) / 1000.0).label("runtime_s"),
        sa.func.sum(c.cost).label("cost"),
    ).group_by(c.key_name, c.day, c.model).order_by(c.key_name, c.day, c.model))
    if name is not None:
        query = query.where(c.key_name == name)
    with engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    return [{**row, "failed": int(row["failed"] or 0), "tokens": int(row["tokens"] or 0),
             "runtime_s": float(row["runtime_s"] or 0.0), "cost": float(row["cost"] or 0.0)}
            for row in rows]
