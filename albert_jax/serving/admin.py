"""What ``albert-jax keys`` and ``albert-jax usage`` print: keys and usage summaries.

Only ``keys create`` creates a database; listing, revoking and the usage report need one
already (:class:`db.DatabaseMissing` otherwise). Every string that comes from the database
is shown through :func:`printable` in the tables, so a name or a model holding a terminal
escape cannot reach the operator's terminal raw (``--json`` escapes them itself).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

import sqlalchemy as sa

from albert_jax.serving import db
from albert_jax.serving.text import printable


@contextlib.contextmanager
def _database(url: str | None, create: bool) -> Iterator[sa.Engine]:
    """The engine for ``url``; any database failure as a one-line, password-free
    :class:`db.DatabaseError`."""
    engine = db.connect(url, create=create)
    try:
        yield engine
    except sa.exc.SQLAlchemyError as e:
        raise db.DatabaseError(db.describe_error(url, e)) from None
    finally:
        engine.dispose()


def create_key(url: str | None, name: str, rate_limit: int | None) -> str:
    db.check_new_key(name, rate_limit)  # Before the database: a bad name creates nothing.
    with _database(url, create=True) as engine:
        return db.create_key(engine, name, rate_limit)


def revoke_key(url: str | None, name: str) -> None:
    with _database(url, create=False) as engine:
        db.revoke_key(engine, name)


def keys_table(url: str | None) -> str:
    with _database(url, create=False) as engine:
        rows = db.list_keys(engine)
    lines = [f"{'NAME':<24} {'KEY':<12} {'RATE/MIN':>8}  {'CREATED (UTC)':<19}  STATUS"]
    for r in rows:
        status = "revoked " + r["revoked_at"].strftime("%Y-%m-%d %H:%M") if r["revoked_at"] \
            else "active"
        rate = str(r["rate_limit"]) if r["rate_limit"] else "-"
        lines.append(f"{printable(r['name']):<24} {printable(r['prefix']) + '...':<12} "
                     f"{rate:>8}  {r['created_at'].strftime('%Y-%m-%d %H:%M:%S')}  {status}")
    return "\n".join(lines)


def usage_report(url: str | None, name: str | None, as_json: bool) -> str:
    """Per key, day and model: requests (failed), tokens, billed seconds, cost; and totals."""
    with _database(url, create=False) as engine:
        rows = db.usage_summary(engine, name)
    if as_json:
        return json.dumps(rows)
    lines = [f"{'KEY':<20} {'DAY':<10} {'MODEL':<20} {'REQUESTS':>8} {'FAILED':>6} "
             f"{'TOKENS':>9} {'SECONDS':>10} {'COST':>12}"]
    for r in rows:
        key = printable(r["key_name"]) if r["key_name"] else "(anonymous)"
        model = printable(r["model"]) if r["model"] else "-"
        lines.append(f"{key:<20} {printable(r['day']):<10} {model:<20} {r['requests']:>8} "
                     f"{r['failed']:>6} {r['tokens']:>9} {r['runtime_s']:>10.4f} "
                     f"{r['cost']:>12.8f}")
    total = {k: sum(r[k] for r in rows) for k in ("requests", "failed", "tokens", "runtime_s",
                                                   "cost")}
    lines.append(f"{'total':<20} {'':<10} {'':<20} {total['requests']:>8} {total['failed']:>6} "
                 f"{total['tokens']:>9} {total['runtime_s']:>10.4f} {total['cost']:>12.8f}")
    return "\n".join(lines)
