"""A job's outputs, stored once: packed, in one Redis value beside the record, with its TTL.

The worker writes the packed tensors (msgpack, binary) to ``keys.job_outputs`` in the same
script as the ``succeeded`` event. The event and the record carry them inline only when they
are small (``INFERHUB_INLINE_OUTPUT_BYTES``); otherwise a summary (names, datatypes, shapes,
bytes, and class counts for a label output) and the URL that serves them in every format.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from contract.tensors import unpack_tensor
from contract.wire import dumps, loads


def url(job_id: str) -> str:
    return f"/v1/jobs/{job_id}/outputs"


def stored(packed: Sequence[Mapping[str, Any]]) -> bytes:
    """What the outputs key holds."""
    return dumps(list(packed))


def load(blob: bytes) -> list[dict[str, Any]]:
    return list(loads(blob))


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
