"""Which URLs a webhook may name, and which addresses a delivery may reach (SSRF).

``INFERHUB_WEBHOOK_ALLOWED_HOSTS`` lists host names (``hooks.example.org``), name patterns
(``*.example.org``; ``*``: any name), and addresses or networks (``10.1.2.3``, ``10.0.0.0/8``).
A URL passes when its host is a listed name or matches a pattern, or is an address inside a
listed network (or, with ``*``, a public one); then every address its host resolves to must be
public (globally routable) or inside a listed network. So loopback, private and link-local
addresses (a cloud's metadata service at 169.254.169.254) are reached only when listed as
addresses, whatever name points at them. The default lists loopback alone.

A delivery resolves and checks again, then connects to the address it checked (the name still
goes in ``Host`` and in TLS's SNI), so that a name pointed elsewhere after the submission (DNS
rebinding) reaches nothing it should not.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx

from contract.errors import InvalidInput

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*\.?")
SETTING = "INFERHUB_WEBHOOK_ALLOWED_HOSTS"


class Refused(InvalidInput):
    """A webhook URL or address that may not be reached: 422 at submission."""

    default_code = "webhook_not_allowed"


@dataclass(frozen=True)
class Target:
    """Where one delivery goes: ``url`` names the checked address; ``host`` is the URL's own
    host, for ``Host`` and SNI."""

    url: httpx.URL
    host: str
    headers: dict[str, str] = field(default_factory=dict)
    extensions: dict[str, str] = field(default_factory=dict)


class Targets:
    def __init__(self, allowed: Sequence[str], resolve_timeout_s: float = 5.0) -> None:
        self.allowed = list(allowed)
        self.resolve_timeout_s = resolve_timeout_s
        self.any_name = False
        self.names: set[str] = set()
        self.suffixes: list[str] = []
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in allowed:
            self._add(entry.strip().lower())

    def _add(self, entry: str) -> None:
        if entry == "*":
            self.any_name = True
            return
        if entry.startswith("*.") and _NAME.fullmatch(entry[2:]):
            self.suffixes.append(entry[1:].rstrip("."))
            return
        try:
            self.networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            return
        except ValueError:
            pass
        if not _NAME.fullmatch(entry):
            raise ValueError(
                f"{SETTING}: {entry!r} is not a host name, '*.domain', '*', an address or a "
                "network (like 10.0.0.0/8)"
            )
        self.names.add(entry.rstrip("."))

    def check_url(self, url: str) -> httpx.URL:
        """The URL, if its form and its host are allowed; else ``Refused`` saying what to set."""
        try:
            parsed = httpx.URL(url)
            host = parsed.raw_host.decode("ascii").lower()
        except (httpx.InvalidURL, UnicodeError):
            raise Refused(f"webhook URL {url[:100]!r} is not a URL") from None
        if parsed.scheme not in ("http", "https") or not host:
            raise Refused(f"webhook URL {url[:100]!r}: give an http:// or https:// URL with a host")
        if parsed.userinfo:
            raise Refused(
                "webhook URL: put no user or password in it; deliveries are signed "
                "(webhook-signature), and the URL shows in the job"
            )
        address = _address(host)
        if address is not None:
            allowed = self._listed(address) or (self.any_name and _public(address))
        else:
            allowed = _NAME.fullmatch(host) is not None and self._named(host.rstrip("."))
        if not allowed:
            raise Refused(
                f"webhook host '{host}' is not allowed: add it to {SETTING} (a JSON list of "
                f"names, '*.example.org', '*', addresses or networks; now {self.allowed})"
            )
        return parsed

    async def resolve(self, url: str) -> list[Target]:
        """Check the URL, resolve its host and check every address: a target pinned to each
        address, in the resolver's order. ``Refused`` if any address may not be reached."""
        parsed = self.check_url(url)
        host = parsed.raw_host.decode("ascii").lower()
        addresses = await self._addresses(
            host, parsed.port or (443 if parsed.scheme == "https" else 80)
        )
        for address in addresses:
            if not (self._listed(address) or _public(address)):
                raise Refused(
                    f"webhook host '{host}' resolves to {address}, which is not a public "
                    f"address: list it (or its network) in {SETTING} to allow it"
                )
        if _address(host) is not None:
            return [Target(parsed, host)]
        return [
            Target(
                parsed.copy_with(host=str(address)),
                host,
                headers={"Host": parsed.netloc.decode("ascii")},
                extensions={"sni_hostname": host} if parsed.scheme == "https" else {},
            )
            for address in dict.fromkeys(addresses)
        ]

    async def _addresses(self, host: str, port: int) -> list[IPAddress]:
        literal = _address(host)
        if literal is not None:
            return [literal]
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.resolve_timeout_s):
                found = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, TimeoutError) as exc:
            raise Refused(f"webhook host '{host}' does not resolve ({exc})") from None
        addresses = [_unmapped(ipaddress.ip_address(info[4][0])) for info in found]
        if not addresses:
            raise Refused(f"webhook host '{host}' does not resolve")
        return addresses

    def _listed(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks)

    def _named(self, host: str) -> bool:
        return self.any_name or host in self.names or any(host.endswith(s) for s in self.suffixes)


def _address(host: str) -> IPAddress | None:
    try:
        return _unmapped(ipaddress.ip_address(host))
    except ValueError:
        return None


def _unmapped(address: IPAddress) -> IPAddress:
    """``::ffff:10.0.0.1`` is 10.0.0.1 to the kernel: check it as that."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _public(address: IPAddress) -> bool:
    return address.is_global and not address.is_multicast
