"""API keys, tenants and scopes, and short-lived tickets for browsers.

Keys live in a TOML file (``INFERHUB_API_KEYS_FILE``) that holds only their SHA-256: a key is
``ih_<id>_<secret>``, its id finds the entry and the digest is compared in constant time.
A key has a tenant and scopes: ``submit``, ``read``, ``admin`` (sees every tenant's jobs).
With no keys file the hub has one tenant, ``anonymous``, with every scope, and serves only on
a loopback address.

The file also holds, per tenant, the secret its webhooks are signed with (``[tenants.<name>]
webhook_secret = "whsec_..."``): the hub needs it in the clear to sign, so the file is kept
readable by its owner only.

EventSource and browser WebSockets cannot send headers: ``POST /v1/tickets`` trades a key for a
single-use ticket, valid for a minute, accepted as ``?ticket=`` on the streaming routes.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
import secrets
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import orjson
from redis.asyncio import Redis

from contract import keys
from contract.errors import Forbidden, Unauthorized
from hub.webhooks.signing import new_secret, secret_key

SCOPES = ("submit", "read", "admin")
TICKET_TTL_S = 60


@dataclass(frozen=True)
class Principal:
    tenant: str
    scopes: frozenset[str]

    @property
    def admin(self) -> bool:
        return "admin" in self.scopes

    @property
    def visible(self) -> str | None:
        """The owner whose jobs this caller may see; None means every owner (admin)."""
        return None if self.admin else self.tenant

    def need(self, scope: str, why: str = "") -> Principal:
        if scope not in self.scopes and not self.admin:
            message = f"this key lacks the '{scope}' scope"
            raise Forbidden(f"{message}: {why}" if why else message)
        return self


ANONYMOUS = Principal("anonymous", frozenset(SCOPES))


@dataclass(frozen=True)
class _Entry:
    digest: bytes
    principal: Principal


class KeysFileError(ValueError):
    """A keys file the hub must not start with: it names the file, the entry and the fault."""


class KeyRing:
    """The keys of ``INFERHUB_API_KEYS_FILE``; empty (no file) means the hub is open."""

    def __init__(self, entries: dict[str, _Entry], webhook_secrets: dict[str, str]) -> None:
        self._entries = entries
        self._webhook_secrets = webhook_secrets

    @classmethod
    def load(cls, path: Path | None) -> KeyRing:
        """The file's keys. Every fault is fatal: a file that was meant to close the hub must
        never leave it open (a typo in a table name once did), nor half-read."""
        if path is None:
            return cls({}, {})
        try:
            doc = tomllib.loads(path.read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise KeysFileError(f"keys file {path}: cannot read it: {exc}") from None
        unknown = sorted(set(doc) - {"keys", "tenants"})
        if unknown:
            raise KeysFileError(
                f"keys file {path}: unknown top-level entry '{unknown[0]}': "
                "keys go in tables named [keys.<id>] (inferhub keys add writes them)"
            )
        raw = doc.get("keys", {})
        if not isinstance(raw, dict):
            raise KeysFileError(f"keys file {path}: 'keys' must be tables [keys.<id>]")
        entries = {key_id: _parse_entry(path, key_id, entry) for key_id, entry in raw.items()}
        if not entries:
            raise KeysFileError(
                f"keys file {path}: holds no key, so the hub would be open to anyone: add one "
                "(inferhub keys add --tenant NAME --file FILE), or unset INFERHUB_API_KEYS_FILE "
                "to serve one tenant on loopback"
            )
        return cls(entries, _webhook_secrets(path, doc.get("tenants", {})))

    @property
    def open(self) -> bool:
        return not self._entries

    @property
    def signs(self) -> bool:
        """Whether any tenant has a webhook secret."""
        return bool(self._webhook_secrets)

    def webhook_secret(self, tenant: str) -> str | None:
        return self._webhook_secrets.get(tenant)

    def verify(self, key: str) -> Principal | None:
        _, key_id, secret = [*key.split("_", 2), "", ""][:3]
        entry = self._entries.get(key_id)
        digest = hashlib.sha256(key.encode()).digest()
        # compare even for an unknown id, so that timing says nothing about which ids exist
        expected = entry.digest if entry else b"\0" * 32
        if hmac.compare_digest(digest, expected) and entry is not None and secret:
            return entry.principal
        return None


def bearer(keyring: KeyRing, authorization: str | None) -> Principal | None:
    """The caller an ``Authorization`` value names, for every transport (HTTP headers, gRPC
    metadata): everyone is ANONYMOUS on an open hub; None when it holds no bearer key; a key
    that is not valid is 401."""
    if keyring.open:
        return ANONYMOUS
    scheme, _, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        return None
    principal = keyring.verify(key.strip())
    if principal is None:
        raise unauthorized("the API key is not valid")
    return principal


def unauthorized(message: str) -> Unauthorized:
    return Unauthorized(message, headers={"WWW-Authenticate": "Bearer"})


_FIELDS = {"tenant", "scopes", "sha256", "created"}


def _parse_entry(path: Path, key_id: str, entry: object) -> _Entry:
    def fault(what: str) -> KeysFileError:
        return KeysFileError(f"keys file {path}: entry [keys.{key_id}]: {what}")

    if not isinstance(entry, dict):
        raise fault("must be a table with tenant, scopes and sha256")
    if not key_id or "_" in key_id:  # a key is ih_<id>_<secret>: such an id could never match
        raise fault("the id must be non-empty and hold no '_'")
    unknown = sorted(set(entry) - _FIELDS)
    if unknown:
        raise fault(f"unknown field '{unknown[0]}' (fields: {', '.join(sorted(_FIELDS))})")
    tenant, scopes, sha256 = entry.get("tenant"), entry.get("scopes"), entry.get("sha256")
    if not isinstance(tenant, str) or not tenant:
        raise fault("'tenant' must be a non-empty string")
    if not isinstance(scopes, list) or not scopes or not all(isinstance(s, str) for s in scopes):
        raise fault(f"'scopes' must be a non-empty list among {', '.join(SCOPES)}")
    if set(scopes) - set(SCOPES):
        raise fault(
            f"unknown scopes {sorted(set(scopes) - set(SCOPES))} (scopes: {', '.join(SCOPES)})"
        )
    if not isinstance(sha256, str) or len(sha256) != 64:
        raise fault("'sha256' must be the key's SHA-256 as 64 hex digits")
    try:
        digest = bytes.fromhex(sha256)
    except ValueError:
        raise fault("'sha256' must be the key's SHA-256 as 64 hex digits") from None
    return _Entry(digest, Principal(tenant, frozenset(scopes)))


def _webhook_secrets(path: Path, tenants: object) -> dict[str, str]:
    if not isinstance(tenants, dict):
        raise KeysFileError(f"keys file {path}: 'tenants' must be tables [tenants.<name>]")
    found: dict[str, str] = {}
    for tenant, entry in tenants.items():
        where = f"keys file {path}: entry [tenants.{tenant}]"
        if not isinstance(entry, dict) or set(entry) != {"webhook_secret"}:
            raise KeysFileError(f"{where}: holds one field, webhook_secret")
        secret = entry["webhook_secret"]
        try:
            secret_key(secret if isinstance(secret, str) else "")
        except ValueError as exc:
            raise KeysFileError(f"{where}: {exc}") from None
        found[tenant] = secret
    return found


def set_webhook_secret(path: Path, tenant: str) -> str:
    """Give the tenant a new webhook secret in the keys file (replacing its old one) and return
    it: the only time it is shown. The file is then readable by its owner only."""
    header = f"[tenants.{orjson.dumps(tenant).decode()}]\n"
    secret = new_secret()
    line = f'webhook_secret = "{secret}"\n'
    text = path.read_text() if path.exists() else ""
    if header in text:
        text, count = re.subn(
            re.escape(header) + r'webhook_secret = "[^"\n]*"\n', lambda _: header + line, text
        )
        if count != 1:
            raise ValueError(f"{path}: the entry {header.strip()} is not as written; edit it")
    else:
        text += f"\n{header}{line}"
    # written whole then renamed, so that a crash leaves the old file, never half of one
    fresh = path.with_name(path.name + ".new")
    with os.fdopen(os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(text)
    fresh.replace(path)
    return secret


def new_key(path: Path, tenant: str, scopes: list[str]) -> str:
    """Append a new key to the file and return it: the only time it is ever shown."""
    unknown = set(scopes) - set(SCOPES)
    if unknown or not scopes:
        raise ValueError(f"scopes must be among {', '.join(SCOPES)}")
    key_id = secrets.token_hex(4)
    key = f"ih_{key_id}_{secrets.token_urlsafe(24)}"
    entry = (
        f"\n[keys.{key_id}]\n"
        f"tenant = {orjson.dumps(tenant).decode()}\n"
        f"scopes = {orjson.dumps(sorted(set(scopes))).decode()}\n"
        f'sha256 = "{hashlib.sha256(key.encode()).hexdigest()}"\n'
        f'created = "{time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}"\n'
    )
    with path.open("a") as f:
        f.write(entry)
    KeyRing.load(path)  # the file still parses
    return key


async def issue_ticket(redis: Redis, principal: Principal) -> str:
    ticket = secrets.token_urlsafe(24)
    body = orjson.dumps({"tenant": principal.tenant, "scopes": sorted(principal.scopes)})
    await redis.set(keys.ticket(_digest(ticket)), body, ex=TICKET_TTL_S)
    return ticket


async def redeem_ticket(redis: Redis, ticket: str) -> Principal | None:
    """The ticket's principal, once: GETDEL makes a ticket single-use."""
    raw = await redis.getdel(keys.ticket(_digest(ticket)))
    if raw is None:
        return None
    body = orjson.loads(raw)
    return Principal(body["tenant"], frozenset(body["scopes"]))


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def exposure_problem(host: str, keyring: KeyRing, insecure: bool) -> str | None:
    """Why serving on ``host`` would be unsafe, or None."""
    if not keyring.open or insecure:
        return None
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        return None
    return (
        f"refusing to serve on {host} with no API keys: anyone who can reach it could run jobs "
        "and read every result. Create a key (inferhub keys add --tenant NAME) and set "
        "INFERHUB_API_KEYS_FILE, or pass --insecure if the network is yours alone."
    )
