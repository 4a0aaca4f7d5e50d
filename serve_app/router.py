"""The OpenAI-compatible router: authenticates, checks limits and quotas, finds the model and relays its reply."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from collections.abc import Awaitable, Callable
from types import MappingProxyType
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve_app.admission import ModelQueue
from serve_app.config import ClusterConfig, ModelConfig, RequestLimitsConfig, RouterConfig
from serve_app.engine_protocol import Endpoint
from serve_app.errors import ApiError, openai_error
from serve_app.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from serve_app.metrics import RouterMetrics, catalog_queues
from serve_app.ops_routes import OpsEndpoints
from serve_app.relay import Call, relay
from serve_app.request_id import REQUEST_ID_HEADER, RequestIdMiddleware, new_request_id
from serve_app.request_body import read_json_object
from serve_app.request_limits import LimitViolation, apply_limits
from serve_app.tenancy.keys import KeyStore, Tenant, load_key_store, served_model_names
from serve_app.tenancy.limiter import estimate_prompt_tokens

logger = logging.getLogger(__name__)

# Where each endpoint is served: OpenAI's paths, and vLLM's for tokenization.
ENDPOINT_PATHS = MappingProxyType({
    Endpoint.CHAT: "/v1/chat/completions", Endpoint.COMPLETIONS: "/v1/completions",
    Endpoint.RESPONSES: "/v1/responses", Endpoint.EMBEDDINGS: "/v1/embeddings",
    Endpoint.TOKENIZE: "/tokenize", Endpoint.DETOKENIZE: "/detokenize",
})
# Headers with which Ray Serve's HTTP proxy lets a caller change its timeout and disconnect handling.
PROXY_ONLY_HEADERS = ("x-request-timeout-seconds", "x-request-disconnect-disabled")

@dataclass
class ModelRoute:
    """One served model as the router sees it: its names, its deployment handle and its limits.

    `max_model_len` is the config's; without one, the engine's, learnt from the first reply of a replica."""

    name: str
    aliases: tuple[str, ...]
    handle: Any  # a Serve DeploymentHandle, or a fake with the same surface in tests
    cold_start_timeout_s: float
    max_model_len: int | None
    created: int
    limits: RequestLimitsConfig = field(default_factory=RequestLimitsConfig)
    queue: ModelQueue | None = None
    task: str = "generate"  # the config's `task`: which endpoints the model serves

    def __post_init__(self) -> None:
        if self.queue is None:
            self.queue = ModelQueue(self.name, bound=512, scales_to_zero=False, idle_after_s=60)

    @classmethod
    def of(cls, model: ModelConfig, handle: Any, created: int) -> ModelRoute:
        scaling = model.autoscaling
        queue = ModelQueue(model.name, scaling.max_queued_requests, scales_to_zero=scaling.min_replicas == 0,
                           idle_after_s=scaling.downscale_delay_s)
        return cls(name=model.name, aliases=model.aliases, handle=handle,
                   cold_start_timeout_s=scaling.cold_start_timeout_s, max_model_len=model.engine.get("max_model_len"),
                   created=created, limits=model.limits, queue=queue, task=model.task)


class ModelCatalog:
    """Maps every served name and alias to its route."""

    def __init__(self, routes: list[ModelRoute]) -> None:
        self.routes = routes
        self._by_name = {name: route for route in routes for name in (route.name, *route.aliases)}

    def find(self, name: str) -> ModelRoute | None:
        return self._by_name.get(name)

    @property
    def names(self) -> list[str]:
        return list(self._by_name)


def error_response(status: int, message: str, request_id: str, *, param: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = openai_error(status, message, param=param, request_id=request_id)
    return JSONResponse(body, status_code=status, headers=headers)


def create_api(catalog: ModelCatalog, keys: KeyStore | None = None, gate: Gate | None = None,
               settings: RouterConfig | None = None, assign_request_ids: bool = True,
               metrics: RouterMetrics | None = None, ops: OpsEndpoints | None = None) -> FastAPI:
    """The router's FastAPI app; every dependency is passed in, so tests can drive it with fakes.

    `assign_request_ids` is False behind Serve's proxy, which already gives each request its X-Request-Id.
    `ops` adds /ready (and `/health?ready=1`) and /admin/status."""
    settings = settings or RouterConfig()
    metrics = metrics or RouterMetrics(catalog_queues(catalog.routes))
    app = FastAPI(title="llmcluster", docs_url=None, redoc_url=None, openapi_url=None, lifespan=metrics.lifespan)
    install_error_handlers(app)
    if assign_request_ids:
        app.add_middleware(RequestIdMiddleware)
    authorize = Authorizer(keys or KeyStore({}), settings.auth.public_paths)
    _install_info_routes(app, catalog, authorize, metrics, ops)
    if ops is not None:
        ops.install(app, authorize)

    async def serve(endpoint: Endpoint, request: Request) -> Response:
        tenant = authorize(request)
        body = await read_json_object(request, settings.max_body_bytes, settings.body_timeout_s)
        return await _admit_and_relay(catalog, gate, tenant, endpoint, body, request.state.request_id, settings,
                                      metrics)

    _install_inference_routes(app, serve)
    return app


def _install_inference_routes(app: FastAPI, serve: Callable[[Endpoint, Request], Awaitable[Response]]) -> None:
    """A POST route per endpoint, at the path vLLM's own server gives it; each request goes to the model its
    body names."""

    def route(endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
        async def relay_request(request: Request) -> Response:
            return await serve(endpoint, request)

        return relay_request

    for endpoint, path in ENDPOINT_PATHS.items():
        app.add_api_route(path, route(endpoint), methods=["POST"], name=endpoint.value)


@dataclass(frozen=True)
class Authorizer:
    """Checks a request's API key (or lets it through on a public path) and gives it its request id.

    A per-route call, not a middleware: Starlette's BaseHTTPMiddleware would pass every stream through a
    memory stream of its own."""

    keys: KeyStore
    public_paths: tuple[str, ...]

    def __call__(self, request: Request) -> Tenant | None:
        request.state.request_id = _request_id(request)
        for header in PROXY_ONLY_HEADERS:
            if header in request.headers:
                # Serve's proxy obeys these from anyone (meant for its own HAProxy): a client could lift the
                # request timeout or keep generating after it hangs up. Refusing ends the request at once.
                raise ApiError(400, f"the {header} header is not accepted", param=header)
        if self.keys.open or request.url.path in self.public_paths:
            return None
        tenant = self.keys.authenticate(_bearer(request))
        if tenant is None:
            raise ApiError(401, "missing or invalid API key; send `Authorization: Bearer <key>`")
        return tenant


def _install_info_routes(app: FastAPI, catalog: ModelCatalog, authorize: Authorizer, metrics: RouterMetrics,
                         ops: OpsEndpoints | None) -> None:
    """/health, /v1/models and /metrics."""

    @app.get("/health")
    async def health(request: Request) -> Response:
        authorize(request)
        if ops is not None and request.query_params.get("ready", "").lower() in ("1", "true"):
            # The same answer as /ready, for probes that can only be pointed at /health.
            return await ops.ready_response(request)
        return JSONResponse({"status": "ok"})

    @app.get("/v1/models")
    async def list_models(request: Request) -> Response:
        tenant = authorize(request)
        cards = [_model_card(name, route) for route in catalog.routes if tenant is None or tenant.may_use(route.name)
                 for name in (route.name, *route.aliases)]
        return JSONResponse({"object": "list", "data": cards})

    @app.get("/metrics")
    async def metrics_text(request: Request) -> Response:
        authorize(request)
        return Response(await metrics.exposition(), media_type=METRICS_CONTENT_TYPE)


def install_error_handlers(app: FastAPI) -> None:
    """Every error the app answers, its own or Starlette's (unknown path, wrong method), is an OpenAI body."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return error_response(exc.status, exc.message, _request_id(request), param=exc.param, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return error_response(exc.status_code, str(exc.detail), _request_id(request), headers=exc.headers)


def _request_id(request: Request) -> str:
    # Serve's proxy (or RequestIdMiddleware) has set the header: the client's id, or a new one.
    return request.headers.get(REQUEST_ID_HEADER) or new_request_id()


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def _model_card(name: str, route: ModelRoute) -> dict[str, Any]:
    card = {"id": name, "object": "model", "created": route.created, "owned_by": "llmcluster",
            "root": route.name}
    if route.max_model_len:
        card["max_model_len"] = route.max_model_len
    return card


async def _admit_and_relay(catalog: ModelCatalog, gate: Gate | None, tenant: Tenant | None, endpoint: Endpoint,
                           body: dict[str, Any], request_id: str, settings: RouterConfig,
                           metrics: RouterMetrics) -> Response:
    route = _route_for(catalog, tenant, body, endpoint)
    observation = metrics.request(route.name, tenant.name if tenant else None)
    try:
        limited = apply_limits(endpoint, body, route.limits, route.name)
        if isinstance(limited, LimitViolation):
            raise ApiError(400, limited.message, param=limited.param)
        refusal = route.queue.refusal()
        if refusal:
            raise ApiError(refusal.status, refusal.message, headers={"Retry-After": str(refusal.retry_after_s)})
        admission = None
        if gate is not None and tenant is not None:
            admission = await gate.admit(tenant.name, estimate_prompt_tokens(endpoint, limited))
            if not admission.admitted:
                raise ApiError(429, f"API key {tenant.name!r} is over its {admission.limit} limit; retry later",
                               headers={**admission.headers, "Retry-After": str(admission.retry_after_s)})
    except ApiError as exc:
        observation.refused(exc.status)
        raise
    logger.debug("request %s: %s for model %s (key %s)", request_id, endpoint, route.name,
                 tenant.name if tenant else "-")
    call = Call(route, endpoint, limited, request_id, settings.max_attempts,
                deadline=time.monotonic() + settings.request_timeout_s, observation=observation)
    return await relay(call, route.queue.enter(), admission.headers if admission else {},
                       admission.finish if admission else _nothing)


def _route_for(catalog: ModelCatalog, tenant: Tenant | None, body: dict[str, Any], endpoint: Endpoint) -> ModelRoute:
    model = body.get("model")
    if not isinstance(model, str):
        raise ApiError(400, "`model` is required and must be a string", param="model")
    route = catalog.find(model)
    allowed = [n for r in catalog.routes if tenant is None or tenant.may_use(r.name) for n in (r.name, *r.aliases)]
    if route is None:
        # Only the names this key may use: a key must not learn what other tenants are served.
        raise ApiError(404, f"model {model!r} does not exist; served models: {', '.join(allowed)}", param="model")
    if tenant is not None and not tenant.may_use(route.name):
        raise ApiError(403, f"API key {tenant.name!r} may not use model {model!r}; its models: "
                            f"{', '.join(allowed) or 'none'}", param="model")
    if route.task not in endpoint.tasks:
        served = ", ".join(path for e, path in ENDPOINT_PATHS.items() if route.task in e.tasks)
        raise ApiError(400, f"model {model!r} has task {route.task!r}: it serves {served}, not "
                            f"{ENDPOINT_PATHS[endpoint]}", param="model")
    return route


def _nothing(_: int | None) -> None:
    return None


class Gate(Protocol):
    """The per-key quota limiter (serve_app.tenancy.limiter.QuotaGate)."""

    async def admit(self, key_name: str, prompt_tokens: int) -> Any: ...


class OpenAIRouter:
    """Serve ingress replica; `handles` maps each model's name to its deployment handle."""

    def __init__(self, config: ClusterConfig, handles: dict[str, Any], ledger: Any, metrics_hub: Any = None) -> None:
        from serve_app.log_setup import configure_logging
        from serve_app.metrics.hub_deployment import router_metrics
        from serve_app.tenancy.quota_deployment import quota_gate

        configure_logging(config.logging.format, config.logging.level, "serve_app")
        created = int(time.time())
        routes = [ModelRoute.of(model, handles[model.name], created) for model in config.models]
        keys = load_key_store(config.router, served_model_names(config))
        if keys.open:
            logger.warning("no API keys configured: the API is open to anyone who reaches port %d",
                           config.router.port)
        gate = quota_gate(keys, ledger, config.router.replicas)
        self._app = create_api(ModelCatalog(routes), keys, gate, config.router, assign_request_ids=False,
                               metrics=router_metrics(routes, metrics_hub),
                               ops=OpsEndpoints.for_serve(config, routes))

    def __serve_build_asgi_app__(self) -> FastAPI:
        return self._app
