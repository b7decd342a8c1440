"""The Lua scripts, one ``.lua`` file each in ``lua/``, loaded once and called by name.

Each file starts with what it does and two header lines that name its keys and arguments::

    -- KEYS: record events
    -- ARGV: channel ttl fields...

A last argument ending in ``...`` takes a list (field, value, ...); so does a last key (the
per-job keys of a batch, declared so that Redis Cluster can route the call). A line ``-- uses: append``
prepends ``lua/append.lua`` (shared functions). Callers pass keys and arguments by those names,
so no caller can shift a position, and the header is the one place that documents them.

A script called thousands of times a second with names that do not change between calls (a
pool's keys) is ``bind``-ed to them: those are encoded once, and each call encodes only the rest
and sends the command as it is (``contract.connection.execute_packed``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError

from contract.connection import execute_packed, packs

LUA = Path(__file__).parent / "lua"
_HEADER = re.compile(r"^-- (KEYS|ARGV|uses):(.*)$", re.MULTILINE)


@dataclass(frozen=True)
class Script:
    name: str
    source: str
    keys: tuple[str, ...]
    args: tuple[str, ...]
    key_list: str = ""  # the name of a trailing list of keys, if the script takes one

    @cached_property  # read on every call: the hash of a few kB each time was 1% of a hub
    def sha(self) -> str:
        return hashlib.sha1(self.source.encode()).hexdigest()

    def positions(
        self, keys: Mapping[str, Any], args: Mapping[str, Any]
    ) -> tuple[list[str], list[Any]]:
        """The keys and arguments in the script's order; a wrong or missing name is a bug."""
        if set(keys) != {*self.keys, *([self.key_list] if self.key_list else [])}:
            raise TypeError(f"{self.name}.lua takes KEYS {self.keys}, got {sorted(keys)}")
        names = [a.removesuffix("...") for a in self.args]
        if set(args) != set(names):
            raise TypeError(f"{self.name}.lua takes ARGV {self.args}, got {sorted(args)}")
        flat: list[Any] = []
        for name, declared in zip(names, self.args, strict=True):
            if declared.endswith("..."):
                flat.extend(args[name])
            else:
                flat.append(args[name])
        more = list(keys[self.key_list]) if self.key_list else []
        return [keys[k] for k in self.keys] + more, flat

    async def __call__(self, redis: Redis, keys: Mapping[str, Any], args: Mapping[str, Any]) -> Any:
        """Run it (EVALSHA; after a Redis restart forgot it, load it and run it again)."""
        key_list, arg_list = self.positions(keys, args)
        try:
            return await redis.evalsha(self.sha, len(key_list), *key_list, *arg_list)  # type: ignore[misc]  # redis-py types sync and async as one
        except NoScriptError:
            await self.ensure(redis)
            return await redis.evalsha(self.sha, len(key_list), *key_list, *arg_list)  # type: ignore[misc]

    def queue(self, pipe: Pipeline, keys: Mapping[str, Any], args: Mapping[str, Any]) -> None:
        """Add a call to a pipeline (run ``ensure`` on NoScriptError and execute it again)."""
        key_list, arg_list = self.positions(keys, args)
        # as a bare command: redis-py's cluster pipeline refuses its evalsha method, yet sends
        # the command to the master of its keys' slot
        pipe.execute_command("EVALSHA", self.sha, len(key_list), *key_list, *arg_list)

    async def ensure(self, redis: Redis) -> None:
        await redis.script_load(self.source)

    def bind(self, redis: Redis, keys: Mapping[str, Any], args: Mapping[str, Any]) -> Bound:
        """The script with these keys and arguments given for every call (a script with no
        list of keys or arguments)."""
        if self.key_list or any(a.endswith("...") for a in self.args):
            raise TypeError(f"{self.name}.lua takes a list: its calls cannot be bound")
        if not set(keys) <= set(self.keys) or not set(args) <= set(self.args):
            raise TypeError(f"{self.name}.lua takes KEYS {self.keys}, ARGV {self.args}")
        return Bound(self, redis, dict(keys), dict(args))


class Bound:
    """A script with some of its keys and arguments given once (``Script.bind``): a call names
    the others. Those given are encoded once, in the command that each call completes and
    sends as it is; a cluster's client (whose command goes to a node picked by its keys)
    gets the plain call."""

    def __init__(
        self, script: Script, redis: Redis, keys: dict[str, Any], args: dict[str, Any]
    ) -> None:
        self.script = script
        self.redis = redis
        self.keys = keys
        self.args = args
        self.packed = packs(redis)
        if not self.packed:
            return
        encode = redis.connection_pool.get_encoder().encode  # type: ignore[no-untyped-call]
        # the command's parts: bytes encoded now, or (True for a key, its name) for each call
        self._encode = encode
        self._head = _bulks(
            encode,
            ["EVALSHA", script.sha, len(script.keys)],
            count=3 + len(script.keys) + len(script.args),
        )
        self._parts: list[bytes | tuple[bool, str]] = []
        for is_key, names, given in ((True, script.keys, keys), (False, script.args, args)):
            for name in names:
                if name not in given:
                    self._parts.append((is_key, name))
                elif self._parts and isinstance(self._parts[-1], bytes):
                    self._parts[-1] += _bulks(encode, [given[name]])  # one part, not two
                else:
                    self._parts.append(_bulks(encode, [given[name]]))
        self._missing = sum(not isinstance(part, bytes) for part in self._parts)

    async def __call__(self, keys: Mapping[str, Any], args: Mapping[str, Any]) -> Any:
        """Run it with the rest of its keys and arguments (as ``Script.__call__``)."""
        if not self.packed:
            return await self.script(self.redis, {**self.keys, **keys}, {**self.args, **args})
        command = self._command(keys, args)
        try:
            return await execute_packed(self.redis, command)
        except NoScriptError:
            await self.script.ensure(self.redis)
            return await execute_packed(self.redis, command)

    def _command(self, keys: Mapping[str, Any], args: Mapping[str, Any]) -> bytes:
        if len(keys) + len(args) != self._missing:  # a wrong name raises KeyError below
            raise TypeError(f"{self.script.name}.lua: {sorted(keys)}, {sorted(args)} given")
        encode = self._encode
        out = [self._head]
        for part in self._parts:
            if isinstance(part, bytes):
                out.append(part)
            else:
                is_key, name = part
                data = encode(keys[name] if is_key else args[name])
                out += (b"$%d\r\n" % len(data), data, b"\r\n")
        return b"".join(out)


def _bulks(encode: Any, values: list[Any], count: int | None = None) -> bytes:
    """Values in RESP, as bulk strings (after the array's length, if ``count``)."""
    out = [b"*%d\r\n" % count] if count is not None else []
    for value in values:
        data = encode(value)
        out += (b"$%d\r\n" % len(data), data, b"\r\n")
    return b"".join(out)


@cache
def load(name: str) -> Script:
    text = (LUA / f"{name}.lua").read_text()
    header: dict[str, list[str]] = {"KEYS": [], "ARGV": [], "uses": []}
    for field, names in _HEADER.findall(text):
        header[field] = names.split()
    source = "".join((LUA / f"{lib}.lua").read_text() for lib in header["uses"]) + text
    named = header["KEYS"]
    key_list = named.pop().removesuffix("...") if named and named[-1].endswith("...") else ""
    return Script(name, source, tuple(named), tuple(header["ARGV"]), key_list)
