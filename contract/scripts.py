"""The Lua scripts, one ``.lua`` file each in ``lua/``, loaded once and called by name.

Each file starts with what it does and two header lines that name its keys and arguments::

    -- KEYS: record events
    -- ARGV: channel ttl fields...

A last argument ending in ``...`` takes a list (field, value, ...); so does a last key (the
per-job keys of a batch, declared so that Redis Cluster can route the call). A line ``-- uses: append``
prepends ``lua/append.lua`` (shared functions). Callers pass keys and arguments by those names,
so no caller can shift a position, and the header is the one place that documents them.
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
