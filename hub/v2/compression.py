"""``Content-Encoding`` of V2 bodies: requests inflated with a bound, responses deflated as
``Accept-Encoding`` allows. Pure functions, no FastAPI."""

from __future__ import annotations

import gzip
import zlib

from contract.errors import MalformedRequest, TooLarge

# "deflate" is the zlib format (RFC 9110), which tritonclient sends
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def is_identity(encoding: str | None) -> bool:
    return (encoding or "identity").strip().lower() == "identity"


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body as sent before ``Content-Encoding``; at most ``limit`` bytes once expanded."""
    if is_identity(encoding):
        return body
    name = (encoding or "").strip().lower()
    if name not in _WBITS:
        raise MalformedRequest(
            f"Content-Encoding {encoding!r} is not supported; use gzip or deflate", "unsupported"
        )
    inflater = zlib.decompressobj(_WBITS[name])
    try:
        # bounded, so that a small compressed body cannot expand into memory without limit
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise MalformedRequest(
            f"the body is not valid {name} data: {exc}", "malformed_encoding"
        ) from None
    if len(out) > limit:
        raise TooLarge(f"the decompressed body is over {limit} bytes; send fewer rows")
    if not inflater.eof or inflater.unused_data:
        raise MalformedRequest(
            f"the {name} body is truncated or has bytes after its end", "malformed_encoding"
        )
    return out


def compress(body: bytes, accept_encoding: str | None) -> tuple[bytes, str | None]:
    """The response body in the first of gzip, deflate that ``Accept-Encoding`` allows."""
    if not accept_encoding:  # most clients of a hot route: nothing to parse
        return body, None
    accepted = _accepted(accept_encoding)
    if "gzip" in accepted:
        return gzip.compress(body, compresslevel=6, mtime=0), "gzip"
    if "deflate" in accepted:
        return zlib.compress(body, 6), "deflate"
    return body, None


def _accepted(header: str) -> set[str]:
    names = set()
    for item in header.split(","):
        name, _, params = item.strip().lower().partition(";")
        q = params.strip()
        if q.startswith("q="):
            try:
                if float(q[2:]) <= 0:
                    continue
            except ValueError:
                continue
        names.add(name.strip())
    return names
