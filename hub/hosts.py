"""The ``Host`` header check that keeps a keyless hub out of reach of DNS rebinding.

A page on ``evil.example`` whose name the attacker then points at 127.0.0.1 talks to a loopback
hub from the victim's browser, same-origin as far as the browser knows; only the ``Host`` header
still says ``evil.example``. So a hub with no API keys answers only to loopback names
(``localhost``, loopback addresses, any port) and those in ``INFERHUB_ALLOWED_HOSTS``; a keyed
hub checks the list only when one is given. HTTP and WebSocket alike: a refused WebSocket gets
the same 400 (the denial response) where the server supports it, else a close before accept.

Starlette's ``TrustedHostMiddleware`` would check the names, but answers in plain text without
saying which setting to change; this one answers in the hub's error shape.
"""

from __future__ import annotations

import ipaddress
import re

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from hub.responses import JSON

LOOPBACK_NAMES = ("localhost",)
_VERDICTS_KEPT = 1024


_HOST = re.compile(r"(?P<name>[A-Za-z0-9.-]+|\[(?P<ipv6>[0-9A-Fa-f:.]+)\])(?::[0-9]{1,5})?")


def host_name(header: str) -> str | None:
    """The name of a ``Host`` header, lower case, without port or IPv6 brackets; None if the
    header is not a host (a user part, a path, anything a browser would not send)."""
    match = _HOST.fullmatch(header)
    if match is None:
        return None
    return (match["ipv6"] or match["name"]).lower()


def is_loopback(name: str) -> bool:
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class AllowedHosts:
    """ASGI middleware: requests whose ``Host`` is neither loopback nor listed get 400."""

    def __init__(self, app: ASGIApp, *, allowed: list[str], keyless: bool) -> None:
        self.app = app
        self.allowed = {name.lower() for name in allowed}
        self.suffixes = tuple(name[1:] for name in self.allowed if name.startswith("*."))
        # a keyed hub with no list keeps answering to every name, as before
        self.any = "*" in self.allowed or (not keyless and not self.allowed)
        self.keyless = keyless
        # a verdict per Host value seen: parsing it is a regex and an ip_address() per request,
        # while a deployment sees a handful of values; bounded, as Host is the client's to choose
        self._verdicts: dict[str, bool] = {}

    def allows(self, name: str | None) -> bool:
        if name is None:
            return False
        return (
            is_loopback(name)
            or name in self.allowed
            or any(name.endswith(suffix) for suffix in self.suffixes)
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.any or scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        header = Headers(scope=scope).get("host", "")
        if self.admits(header):
            await self.app(scope, receive, send)
        else:
            await self.refuse(header, scope, receive, send)

    def admits(self, header: str) -> bool:
        """Whether a request whose ``Host`` header is ``header`` may be answered."""
        if self.any:
            return True
        allowed = self._verdicts.get(header)
        if allowed is None:
            allowed = self.allows(host_name(header))
            if len(self._verdicts) < _VERDICTS_KEPT:
                self._verdicts[header] = allowed
        return allowed

    async def refuse(self, header: str, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer a request whose ``Host`` is not admitted: 400 saying what to change."""
        if scope["type"] == "websocket" and "websocket.http.response" not in scope.get(
            "extensions", {}
        ):
            await send({"type": "websocket.close", "code": 1008, "reason": "host not allowed"})
            return
        # JSON is a starlette Response: on a WebSocket it is sent as the denial response
        await JSON({"error": {"code": "host_not_allowed", "message": self._why(header)}}, 400)(
            scope, receive, send
        )

    def _why(self, header: str) -> str:
        who = "this hub has no API keys, so it" if self.keyless else "this hub"
        return (
            f"the Host header {header!r} is not allowed: {who} answers only to localhost, "
            "loopback addresses and the names in INFERHUB_ALLOWED_HOSTS (the setting "
            "allowed_hosts), which guards against DNS rebinding; add this name there"
        )
