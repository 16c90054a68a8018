"""What a request goes through, apart from HTTP: readiness, key, model, limits, rate
limit, tokenisation (in a worker thread), the batcher, decoding and encoding the answer (in
a worker thread), billing (the row committed before the answer leaves).

Each step that fails raises :class:`~albert_jax.serving.errors.ServiceError`; the request's
:class:`RequestContext` collects what the ledger row and the access log need. Database
work runs on its own small thread pools (key lookups; usage reads), apart from the CPU work
(tokenising, decoding, JSON), so a slow database or a burst of usage reads never stalls
the answers.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import sqlalchemy as sa

from albert_jax.engine import Row
from albert_jax.serving import db
from albert_jax.serving.batcher import QueueFull
from albert_jax.serving.errors import ServiceError
from albert_jax.serving.ledger import Ledger, LedgerUnavailable, _is_outage
from albert_jax.serving.metrics import Metrics
from albert_jax.serving.models import ServedModel
from albert_jax.serving.ratelimit import TokenBuckets, retry_after
from albert_jax.serving.text import printable

logger = logging.getLogger(__name__)

# What the ledger stores for a request whose path names no served model: one fixed
# marker, never the path (which the client chose).
UNKNOWN_MODEL = "(unknown)"
# The longest string stored in a ledger row's text columns (they hold 200).
_STORED = 200


@dataclasses.dataclass
class ServiceOptions:
    request_timeout_s: float = 30.0
    allow_anonymous: bool = False
    anonymous_rate_limit: int = 60  # inputs per minute per client address
    max_body_bytes: int = 1_000_000
    max_client_batch_size: int = 32  # inputs per request (413 beyond)
    max_targets: int = 100  # targets per request (413 beyond)
    max_top_k: int = 100  # top_k per request (422 beyond)
    unknown_key_cache_s: float = 10.0  # how long an unknown key is refused from memory
    # Longest wait for the database (a key lookup, a usage read, a ledger commit) before
    # 503: a stopped or unreachable server must not hang requests (its own timeouts,
    # albert_jax.serving.db, bound the threads).
    db_timeout_s: float = 5.0


class _NegativeCache:
    """Hashes of keys the database did not know, each refused from memory for ``ttl_s``
    (so a flood of wrong keys costs no database round trip each); at most ``size`` kept."""

    def __init__(self, ttl_s: float, size: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.size = size
        self._until: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._lock = threading.Lock()

    def __contains__(self, key_hash: str) -> bool:
        with self._lock:
            until = self._until.get(key_hash)
            if until is None:
                return False
            if until < time.monotonic():
                del self._until[key_hash]
                return False
            return True

    def add(self, key_hash: str) -> None:
        if self.ttl_s <= 0:
            return
        with self._lock:
            self._until[key_hash] = time.monotonic() + self.ttl_s
            self._until.move_to_end(key_hash)
            while len(self._until) > self.size:
                self._until.popitem(last=False)


@dataclasses.dataclass
class RequestContext:
    """One HTTP request's facts, filled in as it goes (ledger row, log line, headers)."""

    request_id: str
    start: float
    endpoint: str = ""
    ledger: bool = False  # an inference request: gets a ledger row
    key_name: str | None = None
    model: str | None = None
    tokens: int = 0
    runtime_s: float = 0.0
    cost: float = 0.0
    status: int = 0
    error_type: str | None = None
    body_too_large: bool = False
    billed: bool = False  # its row is committed already (an answered request)


@dataclasses.dataclass
class Caller:
    key_name: str | None  # None: anonymous
    rate_limit: int | None
    bucket: str


class Service:
    """The models, the database (keys and ledger), rate limits, metrics and drain state."""

    def __init__(self, models: dict[str, ServedModel], engine: sa.Engine,
                 options: ServiceOptions, metrics: Metrics) -> None:
        if not models:
            raise ValueError("no model to serve")
        self.models = models
        self.default_model = next(iter(models))
        self.db = engine
        self.options = options
        self.metrics = metrics
        self.ledger = Ledger(
            engine, on_write=lambda n, s: metrics.ledger_commit_seconds.observe(s),
            on_drop=lambda n: metrics.ledger_dropped.inc(n))
        self.buckets = TokenBuckets()
        self._unknown_keys = _NegativeCache(options.unknown_key_cache_s)
        # Own pools: key lookups, usage reads and CPU work never wait for one another.
        self._db_pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="db")
        self._usage_pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="usage")
        self._cpu_pool = concurrent.futures.ThreadPoolExecutor(
            max(2, min(8, os.cpu_count() or 2)), thread_name_prefix="cpu")
        self.replica = f"{socket.gethostname()}:{os.getpid()}"
        self.draining = False
        self._inflight = 0
        self._last_answer = 0.0
        self._inflight_cond = threading.Condition()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        for model in self.models.values():
            model.batcher.start()

    @property
    def ready(self) -> bool:
        """Every shape compiled (whether the engine threads still run: :meth:`check_open`)."""
        return all(m.batcher.ready.is_set() and m.batcher.failure is None
                   for m in self.models.values())

    def _run(self, pool: concurrent.futures.Executor, fn: Callable, *args: Any):
        return asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    async def _db(self, pool: concurrent.futures.Executor, fn: Callable, *args: Any) -> Any:
        """``fn(*args)`` on a database pool, or 503 after ``db_timeout_s``."""
        try:
            return await asyncio.wait_for(self._run(pool, fn, *args), self.options.db_timeout_s)
        except asyncio.TimeoutError:
            raise self._unavailable(TimeoutError(f"no answer within "
                                                 f"{self.options.db_timeout_s:g} s")) from None

    def compile_progress(self) -> tuple[int, int]:
        done = sum(m.batcher.compiled for m in self.models.values())
        return done, sum(len(m.batcher.shapes) for m in self.models.values())

    def enter(self) -> None:
        with self._inflight_cond:
            self._inflight += 1

    def leave(self) -> None:
        with self._inflight_cond:
            self._inflight -= 1
            self._last_answer = time.monotonic()
            self._inflight_cond.notify_all()

    def drain(self, timeout: float, quiet_s: float = 0.5) -> bool:
        """Refuses new work (503) and waits until every accepted request is answered and no
        request came for ``quiet_s`` (clients and load balancers have seen the 503s: none
        is still sending when the listener closes)."""
        self.draining = True
        deadline = time.monotonic() + timeout
        with self._inflight_cond:
            while True:
                now = time.monotonic()
                quiet = now - self._last_answer
                if not self._inflight and quiet >= quiet_s:
                    return True
                if now >= deadline:
                    return False
                wait = quiet_s - quiet if not self._inflight else deadline - now
                self._inflight_cond.wait(max(0.001, min(wait, deadline - now)))

    def close(self) -> None:
        for model in self.models.values():
            model.batcher.stop()
        self.ledger.close()
        for pool in (self._db_pool, self._usage_pool, self._cpu_pool):
            pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ ledger
    def _row(self, ctx: RequestContext, status: int | None = None) -> dict:
        """The request's ledger row; every string bounded and free of NUL (PostgreSQL
        refuses NUL in text), though none of them comes from the client unchecked."""
        now = db.now()

        def bounded(text: str | None) -> str | None:
            return None if text is None else text.replace("\x00", "")[:_STORED]

        return {
            "request_id": ctx.request_id, "created_at": now, "day": now.strftime("%Y-%m-%d"),
            "key_name": bounded(ctx.key_name), "model": bounded(ctx.model),
            "endpoint": bounded(ctx.endpoint),
            "status": ctx.status if status is None else status,
            "error_type": bounded(ctx.error_type), "tokens": ctx.tokens,
            "runtime_ms": ctx.runtime_s * 1000.0, "cost": ctx.cost,
            "latency_ms": (time.perf_counter() - ctx.start) * 1000.0,
            "replica": bounded(self.replica),
        }

    def record(self, ctx: RequestContext) -> None:
        """A finished request's audit row (failed requests: nothing billed, not waited for)."""
        if not ctx.billed:
            self.ledger.record(self._row(ctx))

    async def bill(self, ctx: RequestContext, expected: bool = False) -> None:
        """Commits an answered request's row (``expected``: announced to the ledger); 503
        when the ledger cannot store it within ``db_timeout_s`` (the row is then not
        billed: :meth:`Ledger.abandon`)."""
        future = self.ledger.commit(self._row(ctx, status=200), expected=expected)
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)),
                                   self.options.db_timeout_s)
        except asyncio.TimeoutError:
            self.ledger.abandon(future, ctx.request_id)
            raise self._unavailable(TimeoutError(
                f"a commit took longer than {self.options.db_timeout_s:g} s")) from None
        except LedgerUnavailable:  # (Its reason, the driver's message, is in the log.)
            raise ServiceError(503, "unavailable", "the usage ledger is unavailable: retry "
                               "shortly", {"Retry-After": "2"}) from None
        except sa.exc.SQLAlchemyError:  # The row's own values refused: a bug, logged.
            raise ServiceError(500, "internal", f"internal error (request id "
                               f"{ctx.request_id})") from None
        ctx.billed = True

    # ------------------------------------------------------------------ steps
    def unhealthy(self) -> str | None:
        """Why the service cannot answer now (an engine thread or the ledger writer ended,
        the database is unavailable), or None."""
        for name, served in self.models.items():
            if served.batcher.ready.is_set() and (served.batcher.failure is not None
                                                  or not served.batcher.alive):
                return f"the engine of model {name} has stopped"
        if not self.ledger.alive:
            return "the usage ledger writer has stopped"
        if not self.ledger.healthy:
            return "the database is unavailable"  # (the driver's message: in the log)
        return None

    def check_open(self) -> None:
        if self.draining:
            raise ServiceError(503, "draining", "the server is shutting down: retry on "
                               "another replica", {"Retry-After": "1"})
        reason = self.unhealthy()
        if reason is not None:
            raise ServiceError(503, "unavailable", f"{reason}: retry shortly",
                               {"Retry-After": "2"})
        if not self.ready:
            done, total = self.compile_progress()
            raise ServiceError(503, "not_ready", f"the server is compiling its models "
                               f"({done} of {total} shapes done)", {"Retry-After": "5"})

    def _unavailable(self, error: BaseException) -> ServiceError:
        self.ledger.set_unhealthy(error)  # Fail fast until the probe sees it answer.
        return ServiceError(503, "unavailable", "the database is unavailable: retry shortly",
                            {"Retry-After": "2"})

    async def authenticate(self, authorization: str | None, client: str,
                           ctx: RequestContext) -> Caller:
        if not authorization:
            if self.options.allow_anonymous:
                return Caller(None, self.options.anonymous_rate_limit, f"anonymous:{client}")
            raise ServiceError(401, "unauthorized", "missing API key: send the header "
                               "'Authorization: Bearer KEY'", {"WWW-Authenticate": "Bearer"})
        scheme, _, key = authorization.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise ServiceError(401, "unauthorized", "malformed Authorization header: expected "
                               "'Bearer KEY'", {"WWW-Authenticate": "Bearer"})
        unknown = ServiceError(401, "unauthorized", "unknown API key",
                               {"WWW-Authenticate": "Bearer"})
        key_hash = db.hash_key(key)
        if key_hash in self._unknown_keys:
            raise unknown
        if not self.ledger.healthy:
            raise self._unavailable(RuntimeError(self.ledger.last_error or "unavailable"))
        try:
            row = await self._db(self._db_pool, db.lookup_key, self.db, key)
        except sa.exc.SQLAlchemyError as e:
            if _is_outage(e):
                raise self._unavailable(e) from None
            raise
        if row is None:
            self._unknown_keys.add(key_hash)
            raise unknown
        ctx.key_name = row["name"]
        if row["revoked_at"] is not None:
            raise ServiceError(403, "forbidden", f"the API key {row['name']!r} was revoked")
        return Caller(row["name"], row["rate_limit"], f"key:{row['name']}")

    async def usage(self, key_name: str) -> list[dict]:
        """The key's committed usage rows by day and model (its own pool; no flush: answered
        requests' rows are committed before their answers)."""
        try:
            return await self._db(self._usage_pool, db.usage_summary, self.db, key_name)
        except sa.exc.SQLAlchemyError as e:
            if _is_outage(e):
                raise self._unavailable(e) from None
            raise

    def model(self, name: str, ctx: RequestContext) -> ServedModel:
        served = self.models.get(name)
        if served is None:
            raise ServiceError(404, "not_found", f"no model '{printable(name, 60)}' here (served: "
                               f"{', '.join(self.models)})")
        ctx.model = name
        return served

    def check_limits(self, served: ServedModel, caller: Caller, inputs: int, top_k: int,
                     targets: Any) -> None:
        """413/422 for a request that can never be served as sent (never 429)."""
        o = self.options
        if inputs > o.max_client_batch_size:
            raise ServiceError(413, "payload_too_large", f"{inputs} inputs: this server takes "
                               f"at most {o.max_client_batch_size} per request "
                               "(--max-client-batch-size)")
        if inputs > served.batcher.largest_request:
            raise ServiceError(413, "payload_too_large", f"{inputs} inputs: this server queues "
                               f"at most {served.batcher.largest_request} of one caller "
                               "(--max-queue)")
        if top_k > o.max_top_k:
            raise ServiceError(422, "validation", f"top_k: {top_k} is more than this server's "
                               f"limit of {o.max_top_k} (--max-top-k)")
        n_targets = 1 if isinstance(targets, str) else len(targets or ())
        if n_targets > o.max_targets:
            raise ServiceError(413, "payload_too_large", f"{n_targets} targets: this server "
                               f"takes at most {o.max_targets} per request (--max-targets)")
        if caller.rate_limit is not None and inputs > caller.rate_limit:
            raise ServiceError(413, "payload_too_large", f"{inputs} inputs: more than the rate "
                               f"limit of {caller.rate_limit} inputs per minute allows at once")

    def rate_limit(self, caller: Caller, inputs: int) -> None:
        if caller.rate_limit is None:
            return
        wait = self.buckets.take(caller.bucket, caller.rate_limit, inputs)
        if wait > 0:
            raise ServiceError(429, "rate_limited", f"rate limit of {caller.rate_limit} "
                               "inputs per minute exceeded",
                               {"Retry-After": retry_after(wait)})

    @staticmethod
    def _prepare(served: ServedModel, texts: Sequence[str], targets):
        fm = served.fill_mask
        prepared = []
        for i, text in enumerate(texts):
            index = i if len(texts) > 1 else None
            where = f"input {index} " if index is not None else "input "
            if not text.strip():
                raise ValueError(f"{where}is empty")
            p = fm.prepare(text, index)  # ValueError: mask count, longer than the model
            if len(p.ids) > served.max_length:
                raise ValueError(f"{where}is {len(p.ids)} tokens long; this server accepts "
                                 f"at most {served.max_length} (its --max-batch-tokens)")
            prepared.append(p)
        target_ids = None
        if targets is not None:
            targets = [targets] if isinstance(targets, str) else list(targets)
            if not targets:
                raise ValueError("targets is an empty list")
            ids = []
            # Each target must give a token: none is silently dropped. Resolved without a
            # log line each (the client chose them).
            for t in dict.fromkeys(targets):
                tid, _exact = fm.resolve_target(t)
                if tid is None:
                    raise ValueError(f"unknown target '{printable(t, 60)}': it has no vocabulary "
                                     "piece")
                ids.append(tid)
            target_ids = np.asarray(sorted(set(ids)), dtype=np.int64)  # as FillMask does
        return prepared, target_ids

    async def fill_mask(self, name: str, texts: Sequence[str], top_k: int, targets,
                        caller_authorization: str | None, client: str, ctx: RequestContext,
                        render: Callable[[list[list[dict]]], Any]) -> bytes:
        """The JSON body ``render(answers)`` of each text's ranked completions, its row
        committed to the ledger (billed to the caller); ServiceError if not."""
        self.check_open()
        caller = await self.authenticate(caller_authorization, client, ctx)
        served = self.model(name, ctx)
        if not texts:
            raise ServiceError(400, "invalid_input", "inputs is an empty list")
        self.check_limits(served, caller, len(texts), top_k, targets)
        self.rate_limit(caller, len(texts))
        try:
            prepared, target_ids = await self._run(self._cpu_pool, self._prepare, served,
                                                   texts, targets)
        except ValueError as e:
            raise ServiceError(400, "invalid_input", str(e)) from None
        ctx.tokens = sum(len(p.ids) for p in prepared)
        rows = [Row(p.ids, position=p.mask_index,  # as FillMask runs them
                    targets=() if target_ids is None else tuple(target_ids.tolist()))
                for p in prepared]
        try:
            futures = served.batcher.submit(rows, owner=caller.bucket)
        except QueueFull as e:
            raise ServiceError(429, "queue_full", f"the server is busy ({e}): retry shortly",
                               {"Retry-After": "1"}) from None
        except RuntimeError as e:  # The engine thread has ended: /ready says so too.
            raise ServiceError(503, "unavailable", f"{e}: retry on another replica",
                               {"Retry-After": "2"}) from None
        waiting = [asyncio.wrap_future(f) for f in futures]
        left = self.options.request_timeout_s - (time.perf_counter() - ctx.start)
        try:
            results = await asyncio.wait_for(asyncio.gather(*waiting), max(left, 0.001))
        except asyncio.TimeoutError:  # Not the builtin before Python 3.11.
            raise ServiceError(504, "timeout", f"no answer within "
                               f"{self.options.request_timeout_s:g} s") from None
        ctx.runtime_s = sum(r.runtime_s for r in results)
        ctx.cost = ctx.runtime_s * served.price_per_second
        fm = served.fill_mask

        def encode() -> bytes:  # Off the event loop: 32 inputs x 100 records is real work.
            answers = []
            for p, r in zip(prepared, results, strict=True):
                scores, ids, target_probs = r.output  # [K], [K], [T] from the device
                if target_ids is None:  # Best first already; K >= top_k (the server's cap).
                    answers.append(fm.format_top_k(p, scores[:top_k], ids[:top_k]))
                    continue
                # Ranked as FillMask ranks them (lax.top_k over the ascending target ids:
                # ties, lower id first); the entries past the targets are padding (id 0).
                probs = target_probs[: len(target_ids)]
                best = np.argsort(-probs, kind="stable")[:top_k]
                answers.append(fm.format_top_k(p, probs[best], target_ids[best]))
            return json.dumps(render(answers), ensure_ascii=False,
                              allow_nan=False).encode("utf-8")

        self.ledger.expecting(1)  # This batch's rows come together: one commit for them.
        try:
            body = await self._run(self._cpu_pool, encode)
        except BaseException:
            self.ledger.expecting(-1)
            raise
        await self.bill(ctx, expected=True)  # Committed before the answer leaves.
        return body
