"""uvicorn's server, shutting down as ``hub/middleware/drain.py`` describes, with a leaner
WebSocket protocol (``hub/wsprotocol.py``)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import uvicorn

from contract import collector
from hub.middleware.drain import Streams
from hub.wsprotocol import WebSocketProtocol

log = logging.getLogger(__name__)


class Server(uvicorn.Server):
    """uvicorn's server, shutting down in the steps of this module within ``grace_s``, its
    WebSockets served by ``hub/wsprotocol.py``."""

    def __init__(self, config: uvicorn.Config, streams: Streams, grace_s: float) -> None:
        config.ws = WebSocketProtocol  # read when the server loads the config
        super().__init__(config)
        self.streams = streams
        streams.connections = self.server_state.connections
        self.grace_s = grace_s

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)  # the lifespan's start-up, then listening
        collector.settle()  # start-up's objects out of the collector's scans

    async def shutdown(self, sockets: Any = None) -> None:
        deadline = time.monotonic() + self.grace_s
        for server in self.servers:
            server.close()  # stop accepting
        await self.streams.drain(timeout_s=min(2.0, self.grace_s / 2))
        # what is left of the grace period, for the requests in flight; then the lifespan
        remaining = max(0.1, deadline - time.monotonic() - 0.5)
        self.config.timeout_graceful_shutdown = remaining  # type: ignore[assignment]  # a float works
        try:
            async with asyncio.timeout(max(0.2, deadline - time.monotonic())):
                await super().shutdown(sockets)
        except TimeoutError:
            log.warning("shutdown grace of %g s spent; exiting now", self.grace_s)
