"""The encoding of everything stored in Redis or passed to arq: msgpack, never pickle."""

from __future__ import annotations

from typing import Any

import msgpack


def dumps(obj: Any) -> bytes:
    """msgpack, used for arq jobs and events: data only, nothing that can run code."""
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


def loads(raw: bytes) -> Any:
    return msgpack.unpackb(raw, raw=False)
