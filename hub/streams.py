"""The event streams (SSE, WebSockets, gRPC streams) each tenant holds open on this hub."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator

from contract.errors import OverCapacity


class TenantStreams:
    """Counts each tenant's open streams (None: the admins) against one bound."""

    def __init__(self, most: int) -> None:
        self.most = most
        self._open: Counter[str | None] = Counter()

    def check(self, owner: str | None) -> None:
        """Refuse a new stream of a tenant at its bound (429 with what to do instead)."""
        if self._open[owner] >= self.most:
            raise OverCapacity(
                f"you have {self.most} event streams open on this hub "
                "(INFERHUB_MAX_STREAMS_PER_TENANT); close one, or follow several jobs on one "
                "WebSocket or one /v1/events feed",
                "too_many_streams",
                headers={"Retry-After": "1"},
            )

    @contextlib.contextmanager
    def slot(self, owner: str | None) -> Iterator[None]:
        """Count a stream of the tenant while the block runs (``check`` says whether it may)."""
        self.take(owner)
        try:
            yield
        finally:
            self.give(owner)

    def take(self, owner: str | None) -> None:
        """Count a stream of the tenant (``give`` it back when it ends)."""
        self._open[owner] += 1

    def give(self, owner: str | None) -> None:
        self._open[owner] -= 1
