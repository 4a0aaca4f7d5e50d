"""The router's operator endpoints: `GET /ready` for load balancers and `GET /admin/status` for operators.

Both answer from the cluster state a router replica keeps polling (cluster_state.StateWatch), never by asking
Serve's controller per request, so they stay fast while the cluster is busy or a replica starts."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from serve_app.cluster_state import StateWatch, serve_snapshot
from serve_app.config import ClusterConfig
from serve_app.errors import ApiError, openai_error
from serve_app.names import model_deployment_name
from serve_app.readiness import Readiness, ServedModel, readiness
from serve_app.status_report import ModelLoad, status_document
from serve_app.tenancy.keys import Tenant

# The watch refreshes every 2 s; a snapshot this old means the controller has stopped answering.
STATE_MAX_AGE_S = 10.0
READY_RETRY_AFTER_S = 5
Authorize = Callable[[Request], "Tenant | None"]


def served_models(config: ClusterConfig) -> list[ServedModel]:
    return [ServedModel(model.name, model_deployment_name(model), model.autoscaling.min_replicas)
            for model in config.models]


class OpsEndpoints:
    """/ready and /admin/status of one router replica. `routes` are the router's ModelRoutes (their queues
    hold this replica's in-flight and waiting requests); `watch` keeps the cluster state."""

    def __init__(self, app_name: str, models: list[ServedModel], routes: list[Any], watch: StateWatch,
                 clock: Callable[[], float] = time.time) -> None:
        self._app_name, self._models, self._routes = app_name, models, routes
        self._watch, self._clock = watch, clock

    @classmethod
    def for_serve(cls, config: ClusterConfig, routes: list[Any]) -> OpsEndpoints:
        return cls(config.cluster.name, served_models(config), routes, StateWatch(serve_snapshot))

    def install(self, app: FastAPI, authorize: Authorize) -> None:
        @app.get("/ready")
        async def ready(request: Request) -> Response:
            authorize(request)
            return await self.ready_response(request)

        @app.get("/admin/status")
        async def status(request: Request) -> Response:
            tenant = authorize(request)
            if tenant is not None and not tenant.admin:
                raise ApiError(403, f"API key {tenant.name!r} is not an admin key; the status needs one "
                                    "(`admin: true` in the keys file)")
            snapshot = await self._watch.latest()
            if snapshot is None:
                raise ApiError(503, f"the cluster state is not known yet ({self._watch.error or 'no answer'})",
                               headers={"Retry-After": str(READY_RETRY_AFTER_S)})
            load = {route.name: ModelLoad(route.queue.serving, route.queue.waiting) for route in self._routes}
            return JSONResponse(status_document(snapshot, self._app_name, self._models, self._judge(snapshot),
                                                "router", self._clock(), load))

    async def ready_response(self, request: Request) -> Response:
        """200 when every model that must stay up has a running replica, else 503 naming the ones that lack one."""
        state = await self._readiness()
        if state.ready:
            return JSONResponse({"status": "ready"})
        body = openai_error(503, f"not ready: {state.reason}", request_id=request.state.request_id)
        body["not_ready"] = list(state.not_ready)
        return JSONResponse(body, status_code=503, headers={"Retry-After": str(READY_RETRY_AFTER_S)})

    async def _readiness(self) -> Readiness:
        return self._judge(await self._watch.latest())

    def _judge(self, snapshot: Any) -> Readiness:
        state = readiness(snapshot, self._app_name, self._models, self._clock(), STATE_MAX_AGE_S)
        if snapshot is None and self._watch.error:
            return Readiness(False, f"{state.reason} ({self._watch.error})")
        return state
