"""What ``albert-jax keys`` and ``albert-jax usage`` print: keys and usage summaries."""

from __future__ import annotations

import json

from albert_jax.serving import db


def create_key(url: str | None, name: str, rate_limit: int | None) -> str:
    return db.create_key(db.connect(url), name, rate_limit)


def revoke_key(url: str | None, name: str) -> None:
    db.revoke_key(db.connect(url), name)


def keys_table(url: str | None) -> str:
    rows = db.list_keys(db.connect(url))
    lines = [f"{'NAME':<24} {'KEY':<12} {'RATE/MIN':>8}  {'CREATED (UTC)':<19}  STATUS"]
    for r in rows:
        status = "revoked " + r["revoked_at"].strftime("%Y-%m-%d %H:%M") if r["revoked_at"] \
            else "active"
        rate = str(r["rate_limit"]) if r["rate_limit"] else "-"
        lines.append(f"{r['name']:<24} {r['prefix'] + '...':<12} {rate:>8}  "
                     f"{r['created_at'].strftime('%Y-%m-%d %H:%M:%S')}  {status}")
    return "\n".join(lines)


def usage_report(url: str | None, name: str | None, as_json: bool) -> str:
    """Per key, day and model: requests (failed), tokens, billed seconds, cost; and totals."""
    rows = db.usage_summary(db.connect(url), name)
    if as_json:
        return json.dumps(rows)
    lines = [f"{'KEY':<20} {'DAY':<10} {'MODEL':<20} {'REQUESTS':>8} {'FAILED':>6} "
             f"{'TOKENS':>9} {'SECONDS':>10} {'COST':>12}"]
    for r in rows:
        lines.append(f"{(r['key_name'] or '(anonymous)'):<20} {r['day']:<10} "
                     f"{(r['model'] or '-'):<20} {r['requests']:>8} {r['failed']:>6} "
                     f"{r['tokens']:>9} {r['runtime_s']:>10.4f} {r['cost']:>12.8f}")
    total = {k: sum(r[k] for r in rows) for k in ("requests", "failed", "tokens", "runtime_s",
                                                   "cost")}
    lines.append(f"{'total':<20} {'':<10} {'':<20} {total['requests']:>8} {total['failed']:>6} "
                 f"{total['tokens']:>9} {total['runtime_s']:>10.4f} {total['cost']:>12.8f}")
    return "\n".join(lines)
