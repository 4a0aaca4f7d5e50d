"""A replica's link to the metrics hub: it sends its own metrics on a timer and fetches the others' for /metrics."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import Any

from serve_app.metrics.families import Family
from serve_app.metrics.hub import PUSH_EVERY_S, HubClient

logger = logging.getLogger(__name__)

# A scrape waits at most this for the hub, then shows this replica's metrics alone rather than time out.
HUB_TIMEOUT_S = 2.0


def replica_id() -> str:
    """Serve's id of the replica this runs in (what the `replica` label holds); a random one outside Serve."""
    from ray import serve
    from ray.serve.exceptions import RayServeException

    try:
        return serve.get_replica_context().replica_id.unique_id
    except RayServeException:
        return uuid.uuid4().hex[:8]


class ServeHubClient:
    """The hub behind a Serve DeploymentHandle (the `metrics-hub` deployment)."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    async def push(self, source: str, families: list[Family]) -> None:
        await self._handle.push.remote(source, families)

    async def gather(self, exclude: str | None = None) -> list[Family]:
        return await self._handle.gather.remote(exclude)


class HubLink:
    """Sends `families()` to the hub every `every_s` once started; a hub that fails only costs a log line."""

    def __init__(self, hub: HubClient, source: str, *, every_s: float = PUSH_EVERY_S,
                 timeout_s: float = HUB_TIMEOUT_S) -> None:
        self._hub, self.source = hub, source
        self._every_s, self._timeout_s = every_s, timeout_s
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def start(self, families: Callable[[], list[Family]]) -> None:
        """Starts sending, from the running event loop; once."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._push_forever(families))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def cancel(self) -> None:
        """Stops sending without waiting, for a replica's sync teardown."""
        if self._task is not None:
            self._task.cancel()

    async def gather(self) -> list[Family]:
        """Every other source's families, as the hub has them; none when the hub cannot answer in time."""
        try:
            families = await asyncio.wait_for(self._hub.gather(self.source), self._timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a scrape must still answer: with this replica's own metrics
            logger.warning("metrics hub unreachable, /metrics shows this replica only: %r", exc)
            return []
        return families

    async def push(self, families: list[Family]) -> None:
        try:
            await asyncio.wait_for(self._hub.push(self.source, families), self._timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Once per outage at WARNING: Serve restarting the hub takes several rounds of pushes.
            logger.log(logging.DEBUG if self._failing else logging.WARNING, "metrics push to the hub failed: %r", exc)
            self._failing = True
            return
        self._failing = False

    async def _push_forever(self, families: Callable[[], list[Family]]) -> None:
        while True:
            await self.push(families())
            await asyncio.sleep(self._every_s)
