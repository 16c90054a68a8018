"""``albert-jax serve``: load the models, start their engine threads, run uvicorn.

Start-up: the models load, uvicorn listens (``/health`` answers) and each engine thread
compiles every (batch, length) shape its batcher can produce; ``/ready`` says 200 when all
are compiled. With ``cache_dir`` JAX's persistent compilation cache makes restarts fast.

SIGTERM (or Ctrl+C): the server goes on listening but answers new work with 503
``draining`` (``/ready`` too, so a load balancer takes it out), answers every request it
accepted, then stops uvicorn, the engine threads and flushes the usage ledger; exit 0.
A second signal exits at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
import threading
from collections.abc import Sequence
from types import FrameType

import uvicorn

from albert_jax.serving import db
from albert_jax.serving.app import create_app
from albert_jax.serving.metrics import Metrics
from albert_jax.serving.models import ServedModel, load_model
from albert_jax.serving.service import Service, ServiceOptions

logger = logging.getLogger(__name__)

# How long an idle keep-alive connection stays open. uvicorn's default, 5 s, is shorter
# than the idle gaps of a busy client's connection pool (answers take seconds under load):
# the server then closes a connection just as the client sends its next request on it,
# and that request fails on the client with a read error, never reaching the server.
# Longer than the load balancers' usual idle timeouts (60 s), as nginx's default is.
KEEP_ALIVE_S = 75


@dataclasses.dataclass
class ServeConfig:
    """Everything ``albert-jax serve`` takes (its flags, one for one)."""

    models: Sequence[str]
    host: str = "127.0.0.1"
    port: int = 8000
    db: str | None = None
    price_per_second: float = 0.0005
    max_batch_size: int = 32
    max_batch_tokens: int = 8192
    max_wait_ms: float = 2.0
    max_queue: int = 512
    max_body_bytes: int = 1_000_000
    request_timeout_s: float = 30.0
    dtype: str = "float32"
    data: int = -1
    tensor: int = 1
    cache_dir: str | None = None
    allow_anonymous: bool = False
    length_buckets: tuple[int, ...] | None = None
    max_length: int | None = None
    pack_length: int = 64
    max_client_batch_size: int | None = None  # None: 32, or half of max_queue if less
    max_targets: int = 100
    max_top_k: int = 100
    forwarded_allow_ips: str | None = None  # proxies whose X-Forwarded-For is believed
    metrics_port: int | None = None  # /metrics on its own port (host: metrics_host)
    metrics_host: str = "127.0.0.1"


def check_config(cfg: ServeConfig) -> None:
    """ValueError naming the first bad setting."""
    for name in ("max_batch_size", "max_batch_tokens", "max_queue", "max_body_bytes",
                 "max_client_batch_size", "max_targets", "max_top_k"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got "
                             f"{getattr(cfg, name)}")
    if cfg.max_wait_ms < 0:
        raise ValueError(f"--max-wait-ms must be >= 0, got {cfg.max_wait_ms}")
    if cfg.request_timeout_s <= 0:
        raise ValueError(f"--request-timeout-s must be > 0, got {cfg.request_timeout_s}")
    if cfg.price_per_second < 0:
        raise ValueError(f"--price-per-second must be >= 0, got {cfg.price_per_second}")
    if cfg.pack_length < 0:
        raise ValueError(f"--pack-length must be >= 0, got {cfg.pack_length}")
    if not 0 <= cfg.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {cfg.port}")
    if cfg.metrics_port is not None and not 0 <= cfg.metrics_port <= 65535:
        raise ValueError(f"--metrics-port must be in 0..65535, got {cfg.metrics_port}")
    one_caller = -(-cfg.max_queue // 2)  # a caller alone holds half the queue at most
    if cfg.max_client_batch_size is not None and cfg.max_client_batch_size > one_caller:
        raise ValueError(f"--max-client-batch-size {cfg.max_client_batch_size} can never be "
                         f"queued: one caller holds at most half of --max-queue "
                         f"{cfg.max_queue} ({one_caller} rows)")


def client_batch_size(cfg: ServeConfig) -> int:
    """Inputs per request: the setting, else 32 or half of ``max_queue`` when less (a
    caller alone holds at most half the queue)."""
    if cfg.max_client_batch_size is not None:
        return cfg.max_client_batch_size
    return min(32, -(-cfg.max_queue // 2))


def build_service(cfg: ServeConfig) -> Service:
    """Loads every model and connects to the database (nothing started yet)."""
    check_config(cfg)
    metrics = Metrics()
    models: dict[str, ServedModel] = {}
    for spec in cfg.models:
        served = load_model(
            spec, price_per_second=cfg.price_per_second, max_batch_size=cfg.max_batch_size,
            max_batch_tokens=cfg.max_batch_tokens, max_wait_ms=cfg.max_wait_ms,
            max_queue=cfg.max_queue, metrics=metrics, dtype=cfg.dtype, data=cfg.data,
            tensor=cfg.tensor, cache_dir=cfg.cache_dir, length_buckets=cfg.length_buckets,
            max_length=cfg.max_length, pack_length=cfg.pack_length, top_k=cfg.max_top_k,
            num_targets=cfg.max_targets)
        if served.name in models:
            raise ValueError(f"two models are served as {served.name!r}: give one an alias "
                             "(--model ALIAS=NAME_OR_DIR)")
        models[served.name] = served
    options = ServiceOptions(request_timeout_s=cfg.request_timeout_s,
                             allow_anonymous=cfg.allow_anonymous,
                             max_body_bytes=cfg.max_body_bytes,
                             max_client_batch_size=client_batch_size(cfg),
                             max_targets=cfg.max_targets, max_top_k=cfg.max_top_k)
    return Service(models, db.connect(cfg.db), options, metrics)


class DrainingServer(uvicorn.Server):
    """uvicorn, with SIGTERM meaning: drain (503 to new work), answer the rest, exit."""

    def __init__(self, config: uvicorn.Config, service: Service, drain_timeout: float) -> None:
        super().__init__(config)
        self.service = service
        self.drain_timeout = drain_timeout
        self._draining = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not uvicorn's handler: it would re-raise the signal after shutdown (exit -15).
        if self._draining:
            self.force_exit = True
            self.should_exit = True
            return
        self._draining = True
        logger.info("signal %d: draining (new requests get 503)", sig)
        threading.Thread(target=self._drain, name="drain", daemon=True).start()

    def _drain(self) -> None:
        if not self.service.drain(self.drain_timeout):
            logger.warning("drain timed out after %.0f s", self.drain_timeout)
        self.should_exit = True


@contextlib.contextmanager
def _server_logging():
    """The server's own log lines (INFO, timestamped, access log included) on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log = logging.getLogger("albert_jax.serving")
    saved = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # Not twice through the command line's own handler.
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(saved[0])
        log.propagate = saved[1]


def serve(cfg: ServeConfig) -> int:
    """Runs the server until SIGTERM / Ctrl+C; 0 after a clean drain."""
    with _server_logging():
        return _serve(cfg)


def _serve(cfg: ServeConfig) -> int:
    service = build_service(cfg)
    service.start()  # Engine threads: compile every shape, then batch.
    app = create_app(service, metrics_elsewhere=cfg.metrics_port is not None)
    if cfg.metrics_port is not None:  # Prometheus' own HTTP server, on its own thread.
        import prometheus_client

        prometheus_client.start_http_server(cfg.metrics_port, addr=cfg.metrics_host,
                                            registry=service.metrics.registry)
        logger.info("metrics on http://%s:%d/metrics", cfg.metrics_host, cfg.metrics_port)
    # X-Forwarded-For is believed only from the proxies named (uvicorn's own default trusts
    # 127.0.0.1: a local client could pick its own address, and its rate limit with it).
    config = uvicorn.Config(app, host=cfg.host, port=cfg.port, access_log=False,
                            log_level="warning", timeout_graceful_shutdown=30,
                            timeout_keep_alive=KEEP_ALIVE_S,
                            proxy_headers=cfg.forwarded_allow_ips is not None,
                            forwarded_allow_ips=cfg.forwarded_allow_ips or "")
    server = DrainingServer(config, service, drain_timeout=cfg.request_timeout_s + 30)
    names = ", ".join(service.models)
    logger.info("serving %s on http://%s:%d (compiling; /ready says when done)", names,
                cfg.host, cfg.port)
    failed: list[str] = []

    def watch_startup() -> None:
        # A model that cannot compile would leave /ready at 503 for ever: stop instead.
        for name, served in service.models.items():
            served.batcher.ready.wait()
            if served.batcher.failure is not None:
                failed.append(f"compiling model {name} failed: {served.batcher.failure}")
                server.should_exit = True
                return

    threading.Thread(target=watch_startup, name="startup", daemon=True).start()
    try:
        server.run()
    finally:
        service.close()  # Rest of the queue (none after a drain), then the ledger flush.
        logger.info("stopped; usage ledger flushed")
    if failed:
        logger.error("%s", failed[0])
        return 1
    return 0


__all__ = ["DrainingServer", "ServeConfig", "build_service", "serve"]
