"""What a request goes through, apart from HTTP: readiness, key, model, rate limit,
tokenisation (in a worker thread), the batcher, decoding (in a worker thread), billing.

Each step that fails raises :class:`~albert_jax.serving.errors.ServiceError`; the request's
:class:`RequestContext` collects what the ledger row and the access log need.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import threading
import time
from collections.abc import Sequence

import numpy as np
import sqlalchemy as sa

from albert_jax.engine import Row
from albert_jax.serving import db
from albert_jax.serving.batcher import QueueFull
from albert_jax.serving.errors import ServiceError
from albert_jax.serving.ledger import Ledger
from albert_jax.serving.metrics import Metrics
from albert_jax.serving.models import ServedModel
from albert_jax.serving.ratelimit import TokenBuckets, retry_after

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class ServiceOptions:
    request_timeout_s: float = 30.0
    allow_anonymous: bool = False
    anonymous_rate_limit: int = 60  # requests per minute per client address
    max_body_bytes: int = 1_000_000


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
        self.ledger = Ledger(engine)
        self.buckets = TokenBuckets()
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
        return all(m.batcher.ready.is_set() and m.batcher.failure is None
                   for m in self.models.values())

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

    # ------------------------------------------------------------------ ledger
    def record(self, ctx: RequestContext) -> None:
        now = db.now()
        self.ledger.record({
            "request_id": ctx.request_id, "created_at": now, "day": now.strftime("%Y-%m-%d"),
            "key_name": ctx.key_name, "model": ctx.model, "endpoint": ctx.endpoint,
            "status": ctx.status, "error_type": ctx.error_type, "tokens": ctx.tokens,
            "runtime_ms": ctx.runtime_s * 1000.0, "cost": ctx.cost,
            "latency_ms": (time.perf_counter() - ctx.start) * 1000.0, "replica": self.replica,
        })

    # ------------------------------------------------------------------ steps
    def check_open(self) -> None:
        if self.draining:
            raise ServiceError(503, "draining", "the server is shutting down: retry on "
                               "another replica", {"Retry-After": "1"})
        if not self.ready:
            done, total = self.compile_progress()
            raise ServiceError(503, "not_ready", f"the server is compiling its models "
                               f"({done} of {total} shapes done)", {"Retry-After": "5"})

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
        row = await asyncio.to_thread(db.lookup_key, self.db, key)
        if row is None:
            raise ServiceError(401, "unauthorized", "unknown API key",
                               {"WWW-Authenticate": "Bearer"})
        ctx.key_name = row["name"]
        if row["revoked_at"] is not None:
            raise ServiceError(403, "forbidden", f"the API key {row['name']!r} was revoked")
        return Caller(row["name"], row["rate_limit"], f"key:{row['name']}")

    def model(self, name: str, ctx: RequestContext) -> ServedModel:
        served = self.models.get(name)
        if served is None:
            raise ServiceError(404, "not_found", f"no model {name!r} here (served: "
                               f"{', '.join(self.models)})")
        ctx.model = name
        return served

    def rate_limit(self, caller: Caller) -> None:
        if caller.rate_limit is None:
            return
        wait = self.buckets.take(caller.bucket, caller.rate_limit)
        if wait > 0:
            raise ServiceError(429, "rate_limited", f"rate limit of {caller.rate_limit} "
                               "requests per minute exceeded",
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
            for t in targets:  # Each target must give a token: none is silently dropped.
                try:
                    ids.extend(fm.target_ids([t]).tolist())
                except ValueError:
                    raise ValueError(f"unknown target {t!r}: it has no vocabulary "
                                     "piece") from None
            target_ids = np.asarray(sorted(set(ids)), dtype=np.int64)  # as FillMask does
        return prepared, target_ids

    async def fill_mask(self, name: str, texts: Sequence[str], top_k: int, targets,
                        caller_authorization: str | None, client: str,
                        ctx: RequestContext) -> list[list[dict]]:
        """The ranked completions of each text, billed to the caller; ServiceError if not."""
        self.check_open()
        caller = await self.authenticate(caller_authorization, client, ctx)
        served = self.model(name, ctx)
        self.rate_limit(caller)
        if not texts:
            raise ServiceError(400, "invalid_input", "inputs is an empty list")
        try:
            prepared, target_ids = await asyncio.to_thread(self._prepare, served, texts,
                                                           targets)
        except ValueError as e:
            raise ServiceError(400, "invalid_input", str(e)) from None
        ctx.tokens = sum(len(p.ids) for p in prepared)
        rows = [Row(p.ids, position=p.mask_index) for p in prepared]  # as FillMask runs them
        try:
            futures = served.batcher.submit(rows)
        except QueueFull as e:
            raise ServiceError(429, "queue_full", f"the server is busy ({e}): retry shortly",
                               {"Retry-After": "1"}) from None
        waiting = [asyncio.wrap_future(f) for f in futures]
        left = self.options.request_timeout_s - (time.perf_counter() - ctx.start)
        try:
            results = await asyncio.wait_for(asyncio.gather(*waiting), max(left, 0.001))
        except asyncio.TimeoutError:  # Not the builtin before Python 3.11.
            raise ServiceError(504, "timeout", f"no answer within "
                               f"{self.options.request_timeout_s:g} s") from None
        fm = served.fill_mask

        def decode() -> list[list[dict]]:
            return [fm.format(p, r.output, top_k, target_ids)
                    for p, r in zip(prepared, results, strict=True)]

        answers = await asyncio.to_thread(decode)
        ctx.runtime_s = sum(r.runtime_s for r in results)
        ctx.cost = ctx.runtime_s * served.price_per_second
        return answers
