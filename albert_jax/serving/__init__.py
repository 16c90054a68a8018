"""The hosted fill-mask service behind ``albert-jax serve`` (needs the ``serve`` extra).

Modules, one job each:

- :mod:`~albert_jax.serving.batcher`: continuous dynamic batching on one JAX thread per
  engine, device time apportioned by tokens;
- :mod:`~albert_jax.serving.models`: the served models (FillMask + batcher + card);
- :mod:`~albert_jax.serving.service`: a request's steps (readiness, key, rate limit,
  tokenisation off the event loop, batching, decoding, billing);
- :mod:`~albert_jax.serving.app`: FastAPI routes, the error contract, the middleware
  (request id, body limit, headers, ledger row, access log);
- :mod:`~albert_jax.serving.db` and :mod:`~albert_jax.serving.ledger`: API keys (hashes)
  and the usage ledger through SQLAlchemy (SQLite with WAL, or PostgreSQL);
- :mod:`~albert_jax.serving.ratelimit`, :mod:`~albert_jax.serving.metrics`,
  :mod:`~albert_jax.serving.page`, :mod:`~albert_jax.serving.admin`,
  :mod:`~albert_jax.serving.server` (uvicorn with drain on SIGTERM).
"""
