"""The FastAPI application: routes, the error contract, and the per-request middleware
(request id, body limit, security and compute headers, ledger row, access-log line,
metrics).

Nothing the client chose reaches the ledger or the log raw: the ledger stores the route
(``POST /v1/inference/{model}``) and the model only when it is served (else one fixed
marker), and the access log shows the path bounded and with control characters escaped.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from albert_jax.serving import page
from albert_jax.serving.errors import ServiceError
from albert_jax.serving.schemas import (
    ErrorResponse,
    HFRequest,
    InferenceRequest,
    InferenceResponse,
    ModelInfo,
    Prediction,
    UsageResponse,
)
from albert_jax.serving.service import UNKNOWN_MODEL, RequestContext, Service
from albert_jax.serving.text import printable

logger = logging.getLogger(__name__)
access_log = logging.getLogger("albert_jax.serving.access")

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 413, 422, 429, 500, 503, 504)
}
_HTTP_TYPES = {404: "not_found", 405: "method_not_allowed"}
# Inference routes: (path prefix, the route as the ledger stores it).
_INFERENCE = (("/v1/inference/", "/v1/inference/{model}"), ("/models/", "/models/{model}"))
# Probes a load balancer sends every few seconds: logged at DEBUG, not INFO.
_PROBES = frozenset({"/ready", "/health"})
_LOGGED_PATH = 200  # characters of a path the access log shows


def _json_error(status: int, error_type: str, message: str,
                headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "error_type": error_type}, status_code=status,
                        headers=headers)


class _BodyTooLarge(Exception):  # noqa: N818
    pass


def _too_large(ctx: RequestContext, limit: int) -> JSONResponse:
    ctx.error_type = "payload_too_large"
    return _json_error(413, "payload_too_large", f"request body larger than {limit} bytes")


class ServeMiddleware:
    """Pure ASGI middleware around every HTTP request (no hand-written HTTP parsing)."""

    def __init__(self, app: Any, service: Service) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        service = self.service
        path = scope["path"]
        ctx = RequestContext(request_id=uuid.uuid4().hex, start=time.perf_counter(),
                             endpoint=f"{scope['method']} {printable(path, _LOGGED_PATH)}")
        if scope["method"] == "POST":
            for prefix, route in _INFERENCE:
                if path.startswith(prefix):  # Hub names hold a slash ("albert/albert-base-v2").
                    ctx.ledger = True
                    ctx.endpoint = f"POST {route}"
                    name = path[len(prefix):]
                    ctx.model = name if name in service.models else UNKNOWN_MODEL
                    break
        scope["albert_ctx"] = ctx
        started = False
        limit = service.options.max_body_bytes

        async def send_wrapper(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                ctx.status = message["status"]
                headers = list(message.get("headers", []))
                headers.extend(page.SECURITY_HEADERS)
                headers.append((b"x-request-id", ctx.request_id.encode()))
                if ctx.ledger:
                    headers.append((b"x-compute-time", f"{ctx.runtime_s:.6f}".encode()))
                    headers.append((b"x-compute-tokens", str(ctx.tokens).encode()))
                message = {**message, "headers": headers}
            await send(message)

        received = 0

        async def receive_wrapper() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    ctx.body_too_large = True
                    raise _BodyTooLarge
            return message

        service.enter()
        try:
            declared = dict(scope["headers"]).get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise _BodyTooLarge
            await self.app(scope, receive_wrapper, send_wrapper)
        except _BodyTooLarge:
            if not started:
                await _too_large(ctx, limit)(scope, receive, send_wrapper)
        except Exception:
            logger.exception("internal error in request %s (%s)", ctx.request_id, ctx.endpoint)
            ctx.error_type = "internal"
            if not started:
                await _json_error(500, "internal", f"internal error (request id "
                                  f"{ctx.request_id})")(scope, receive, send_wrapper)
        finally:
            service.leave()
            self._done(ctx)

    def _done(self, ctx: RequestContext) -> None:
        ms = (time.perf_counter() - ctx.start) * 1000.0
        if ctx.status == 0:  # The client went away before an answer (nginx's 499).
            ctx.status, ctx.error_type = 499, ctx.error_type or "client_closed"
        if ctx.ledger:
            if not ctx.billed:
                ctx.runtime_s = ctx.cost = 0.0  # Failed requests are recorded, not billed.
            self.service.record(ctx)  # (an answered request's row is committed already)
            model = ctx.model if ctx.model in self.service.models else "-"
            self.service.metrics.requests.labels(model, str(ctx.status)).inc()
            self.service.metrics.request_seconds.labels(model).observe(ms / 1000.0)
        level = logging.DEBUG if ctx.endpoint.split(" ", 1)[-1] in _PROBES else logging.INFO
        access_log.log(level, "%s key=%s model=%s \"%s\" %d %.1fms", ctx.request_id,
                       printable(ctx.key_name or "-"), ctx.model or "-", ctx.endpoint,
                       ctx.status, ms)


def _json_body(body: bytes) -> Response:
    """An answer encoded already (off the event loop): sent as it is, not re-validated."""
    return Response(body, media_type="application/json")


def create_app(service: Service, metrics_elsewhere: bool = False) -> FastAPI:
    """The service's routes; ``metrics_elsewhere``: ``/metrics`` is served on its own port
    (``--metrics-port``), not here."""
    app = FastAPI(title="albert_jax fill-mask service",
                  description="ALBERT fill-mask inference with API keys, metering and dynamic "
                              "batching.", version="1", docs_url=None, redoc_url=None)
    app.state.service = service

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        request.scope["albert_ctx"].error_type = exc.error_type
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        request.scope["albert_ctx"].error_type = "validation"
        parts = []
        for err in exc.errors()[:5]:
            where = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
            parts.append(f"{where}: {err.get('msg', 'invalid')}")
        return _json_error(422, "validation", "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if request.scope["albert_ctx"].body_too_large:  # FastAPI's body parser caught it
            return _too_large(request.scope["albert_ctx"], service.options.max_body_bytes)
        error_type = _HTTP_TYPES.get(exc.status_code, "http_error")
        request.scope["albert_ctx"].error_type = error_type
        return _json_error(exc.status_code, error_type, str(exc.detail), exc.headers)

    def ctx_of(request: Request) -> RequestContext:
        return request.scope["albert_ctx"]

    def client_of(request: Request) -> str:
        return request.client.host if request.client else "unknown"

    # ------------------------------------------------------------------ inference
    @app.post("/v1/inference/{model:path}", response_model=InferenceResponse, responses=_ERRORS,
              summary="Fill the [MASK] of one input")
    async def inference(model: str, body: InferenceRequest, request: Request,
                        authorization: str | None = Header(None)) -> Response:
        ctx = ctx_of(request)

        def render(answers: list[list[dict]]) -> dict:
            return {"results": answers[0], "request_id": ctx.request_id,
                    "inference_status": {"status": "succeeded",
                                         "runtime_ms": ctx.runtime_s * 1000.0,
                                         "cost": ctx.cost, "tokens_input": ctx.tokens}}

        return _json_body(await service.fill_mask(
            model, [body.input], body.top_k, body.targets, authorization, client_of(request),
            ctx, render))

    @app.post("/models/{model:path}", response_model=list[Prediction] | list[list[Prediction]],
              responses=_ERRORS, summary="Hugging Face Inference API shape")
    async def hf_inference(model: str, body: HFRequest, request: Request,
                           authorization: str | None = Header(None)) -> Response:
        ctx = ctx_of(request)
        single = isinstance(body.inputs, str)
        texts = [body.inputs] if single else list(body.inputs)
        return _json_body(await service.fill_mask(
            model, texts, body.parameters.top_k, body.parameters.targets, authorization,
            client_of(request), ctx, lambda answers: answers[0] if single else answers))

    # ------------------------------------------------------------------ public
    @app.get("/v1/models", response_model=list[ModelInfo], summary="The models served")
    async def list_models() -> list[dict]:
        return [m.info() for m in service.models.values()]

    @app.get("/v1/usage", response_model=UsageResponse, responses=_ERRORS,
             summary="The caller's own usage by day")
    async def usage(request: Request, authorization: str | None = Header(None)) -> dict:
        ctx = ctx_of(request)
        caller = await service.authenticate(authorization, client_of(request), ctx)
        if caller.key_name is None:
            raise ServiceError(401, "unauthorized", "usage needs an API key",
                               {"WWW-Authenticate": "Bearer"})

        rows = await service.usage(caller.key_name)
        return {"key": caller.key_name, "days": [
            {k: r[k] for k in ("day", "model", "requests", "failed", "tokens", "runtime_s",
                               "cost")} for r in rows]}

    @app.get("/health", summary="Liveness")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready", summary="Readiness: every shape compiled, not draining",
             responses={503: {"model": ErrorResponse}})
    async def ready() -> Any:
        try:
            service.check_open()
        except ServiceError as e:
            return JSONResponse(e.body(), status_code=e.status, headers=e.headers)
        _done, total = service.compile_progress()
        return {"status": "ready", "models": list(service.models), "compiled_shapes": total}

    if not metrics_elsewhere:
        @app.get("/metrics", summary="Prometheus metrics")
        async def metrics() -> Response:
            return Response(service.metrics.render(), media_type=service.metrics.content_type)

    pages = page.render_pages(service)  # Once: the cards do not change while serving.

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def home() -> HTMLResponse:
        return HTMLResponse(pages[service.default_model])

    @app.get("/models/{model:path}", response_class=HTMLResponse, include_in_schema=False)
    async def model_page(model: str, request: Request) -> HTMLResponse:
        service.model(model, ctx_of(request))
        return HTMLResponse(pages[model])

    # Swagger UI from our own origin (FastAPI's /docs loads it from a CDN with an inline
    # script, which the Content-Security-Policy forbids).
    docs = page.docs_page()
    if docs is not None:
        @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
        async def api_docs() -> HTMLResponse:
            return HTMLResponse(docs)

        app.mount("/static/swagger", StaticFiles(directory=page.SWAGGER_DIR), name="swagger")
    app.mount("/static", StaticFiles(directory=page.STATIC_DIR), name="static")
    app.add_middleware(ServeMiddleware, service=service)
    return app
