"""The service's database: API keys (stored as hashes) and the usage ledger, via SQLAlchemy.

A SQLite file by default (WAL journal, so several processes on one host can share it), or
any SQLAlchemy URL: ``postgresql+psycopg://user@host/db`` for replicas on several hosts.
Tables are created on first use (``create_all`` is idempotent).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import secrets
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

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


class KeyAdminError(Exception):
    """A key operation the user asked for that cannot be done (duplicate, unknown name)."""


def default_db_url() -> str:
    """SQLite in the user data directory (platformdirs), e.g. ~/.local/share/albert_jax."""
    import platformdirs

    directory = platformdirs.user_data_dir("albert_jax", appauthor=False)
    os.makedirs(directory, exist_ok=True)
    return "sqlite:///" + os.path.join(directory, "serve.db")


def connect(url: str | None = None) -> sa.Engine:
    """An engine for ``url`` (default: :func:`default_db_url`) with the tables created."""
    url = url or default_db_url()
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()
    else:
        engine = sa.create_engine(url, pool_pre_ping=True)
    for attempt in range(3):
        try:
            metadata.create_all(engine)
            break
        except (IntegrityError, ProgrammingError, OperationalError):
            # Two replicas creating the tables at once: the loser retries and finds them.
            if attempt == 2:
                raise
    return engine


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def create_key(engine: sa.Engine, name: str, rate_limit: int | None = None) -> str:
    """A new key for ``name``; returned once, stored only as its hash."""
    if not name.strip():
        raise KeyAdminError("the key name is empty")
    if rate_limit is not None and rate_limit < 1:
        raise KeyAdminError(f"--rate-limit must be at least 1 request per minute, got {rate_limit}")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    try:
        with engine.begin() as conn:
            conn.execute(api_keys.insert().values(
                name=name, key_hash=hash_key(key), prefix=key[: len(KEY_PREFIX) + 4],
                rate_limit=rate_limit, created_at=now()))
    except IntegrityError:
        raise KeyAdminError(f"a key named {name!r} already exists") from None
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
        raise KeyAdminError(f"no key named {name!r}")


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
