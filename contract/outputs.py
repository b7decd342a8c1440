"""A job's outputs, stored once: packed, in one Redis value beside the record, with its TTL.

The event and the record carry them inline when they are small
(``INFERHUB_INLINE_OUTPUT_BYTES``), and then nothing more; otherwise the worker writes the packed
tensors to ``keys.job_outputs`` in the same script as the ``succeeded`` event, and the event and
the record carry a summary (names, datatypes, shapes, bytes, and class counts for a label
output) and the URL that serves them in every format.

A job that streams its outputs (``stream_outputs``) stores each chunk once, under
``keys.job_outputs_chunk``, as it is done, with an ``output`` event for it; its outputs key then
holds the list of its chunks' row ranges instead of the tensors again.

The stored form is ``MAGIC``, a msgpack header (each tensor's name, datatype, shape and size;
BYTES elements in it), then the tensors' raw bytes one after the other: a reader views them in
place (``load``) instead of copying them out of msgpack, and a writer joins them once.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from contract.tensors import pack_tensor, unpack_tensor
from contract.wire import dumps, loads


def url(job_id: str) -> str:
    return f"/v1/jobs/{job_id}/outputs"


MAGIC = b"IHT1"  # inferhub tensors, form 1; a blob without it is msgpack (an older worker's)


def stored(packed: Sequence[Mapping[str, Any]]) -> bytes:
    """What the outputs key (or a chunk's key) holds."""
    head: list[dict[str, Any]] = []
    raws: list[Any] = []
    for tensor in packed:
        entry = {k: tensor[k] for k in ("name", "datatype", "shape")}
        if isinstance(tensor["raw"], list):  # BYTES
            entry["raw"] = tensor["raw"]
        else:
            entry["nbytes"] = len(tensor["raw"])
            raws.append(tensor["raw"])
        head.append(entry)
    header = dumps(head)
    return b"".join([MAGIC, struct.pack("<I", len(header)), header, *raws])


def chunk_list(ranges: Sequence[tuple[int, int]]) -> bytes:
    """What a streamed job's outputs key holds: its chunks' row ranges, in order."""
    return dumps({"chunks": [list(r) for r in ranges]})


def load(blob: bytes) -> list[dict[str, Any]]:
    """The packed tensors an outputs or chunk key holds, their bytes views of ``blob``."""
    if not blob.startswith(MAGIC):
        return list(loads(blob))
    view = memoryview(blob)
    (length,) = struct.unpack_from("<I", view, len(MAGIC))
    at = len(MAGIC) + 4 + length
    packed = []
    for entry in loads(blob[len(MAGIC) + 4 : at]):
        if "nbytes" in entry:
            size = entry.pop("nbytes")
            entry["raw"], at = view[at : at + size], at + size
        packed.append(entry)
    return packed


def chunk_ranges(blob: bytes) -> list[tuple[int, int]] | None:
    """A streamed job's chunk ranges, if that is what its outputs key holds."""
    if blob.startswith(MAGIC):
        return None
    value = loads(blob)
    return [(int(a), int(b)) for a, b in value["chunks"]] if isinstance(value, dict) else None


def row_count(packed: Sequence[Mapping[str, Any]]) -> int:
    shape = packed[0]["shape"] if packed else [0]
    return int(shape[0]) if shape else 1


def join(chunks: Sequence[Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """A streamed job's outputs, from its chunks in order."""
    names = [t["name"] for t in chunks[0]]
    arrays = [{t["name"]: unpack_tensor(t) for t in chunk} for chunk in chunks]
    return [pack_tensor(n, np.concatenate([a[n] for a in arrays])) for n in names]


def rows(packed: Sequence[Mapping[str, Any]], start: int, end: int) -> list[dict[str, Any]]:
    """Rows ``start`` to ``end`` (excluded) of every output."""
    return [pack_tensor(t["name"], unpack_tensor(t)[start:end]) for t in packed]


def chunk_event_data(
    job_id: str,
    rows: tuple[int, int],
    packed: Sequence[Mapping[str, Any]],
    blob: bytes,
    inline_bytes: int,
) -> dict[str, Any]:
    """An ``output`` event's data: the chunk's rows, and its outputs when small, else their URL."""
    start, end = rows
    data: dict[str, Any] = {"rows": [start, end]}
    if len(blob) <= inline_bytes:
        data["outputs"] = [dict(p) for p in packed]
    else:
        data["outputs_url"] = f"{url(job_id)}?rows={start}:{end}"
        data["outputs_bytes"] = len(blob)
    return data


def summary(
    packed: Sequence[Mapping[str, Any]], labels: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """Each output's name, datatype, shape and bytes; for an integer output of a model with
    labels (its class answers), how many rows got each class."""
    out = []
    for tensor in packed:
        raw = tensor["raw"]
        size = sum(len(x) for x in raw) if isinstance(raw, list) else len(raw)
        entry: dict[str, Any] = {
            "name": tensor["name"],
            "datatype": tensor["datatype"],
            "shape": list(tensor["shape"]),
            "bytes": size,
        }
        if labels and tensor["datatype"].startswith("INT") and len(tensor["shape"]) == 1:
            classes, counts = np.unique(unpack_tensor(tensor), return_counts=True)
            entry["classes"] = {
                (labels[c] if 0 <= c < len(labels) else str(c)): int(n)
                for c, n in zip(classes.tolist(), counts.tolist(), strict=True)
            }
        out.append(entry)
    return out


def event_data(
    job_id: str,
    packed: Sequence[Mapping[str, Any]],
    blob: bytes,
    inline_bytes: int,
    labels: Sequence[str],
) -> dict[str, Any]:
    """The ``succeeded`` event's data: the outputs when small, else their summary and URL."""
    if len(blob) <= inline_bytes:
        return {"outputs": [dict(p) for p in packed]}
    return {
        "outputs_summary": summary(packed, labels),
        "outputs_bytes": len(blob),
        "outputs_url": url(job_id),
    }
