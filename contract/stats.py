"""Triton's statistics extension: the counts workers keep per model version in Redis, and the
JSON (``model_stats``) that Triton answers with.

Each worker adds what it ran since its last write (HINCRBY) to one hash per model version
(``keys.model_stats``), in a pipeline it sends anyway (the online reply, the heartbeat), so
the hash is the sum over every worker and nobody pays a round trip per request. The hub reads
the hashes on a stats request. Durations are nanoseconds, as Triton's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
"""Triton's ``inference_stats`` fields, each a count and a sum of nanoseconds."""

BATCH_DURATIONS = ("compute_input", "compute_infer", "compute_output")
"""Per batch size (``batch_stats``): the executions of that many rows, and their durations."""

INFERENCE_COUNT = "inference_count"  # rows run
EXECUTION_COUNT = "execution_count"  # onnxruntime calls
LAST_INFERENCE = "last_inference"  # unix ms of the latest request, written by HSET


def field(name: str, part: str) -> str:
    """The hash field of one duration's ``count`` or ``ns``."""
    return f"{name}:{part}"


def batch_field(rows: int, name: str, part: str) -> str:
    """The hash field of one batch size's duration's ``count`` or ``ns``."""
    return f"batch:{rows}:{name}:{part}"


def model_stats(name: str, version: str, raw: Mapping[bytes, bytes]) -> dict[str, Any]:
    """One model version's statistics in Triton's JSON form, from its hash (empty: zeros)."""
    counts = {k.decode(): int(v) for k, v in raw.items()}

    def duration(name: str, key: Any = field) -> dict[str, int]:
        return {"count": counts.get(key(name, "count"), 0), "ns": counts.get(key(name, "ns"), 0)}

    sizes = sorted({int(k.split(":")[1]) for k in counts if k.startswith("batch:")})
    batches = [
        {
            "batch_size": rows,
            **{
                d: duration(d, lambda n, part, rows=rows: batch_field(rows, n, part))
                for d in BATCH_DURATIONS
            },
        }
        for rows in sizes
    ]
    return {
        "name": name,
        "version": version,
        "last_inference": counts.get(LAST_INFERENCE, 0),
        "inference_count": counts.get(INFERENCE_COUNT, 0),
        "execution_count": counts.get(EXECUTION_COUNT, 0),
        "inference_stats": {
            **{d: duration(d) for d in DURATIONS},
            "cache_hit": {"count": 0, "ns": 0},  # inferhub has no response cache
            "cache_miss": {"count": 0, "ns": 0},
        },
        "batch_stats": batches,
        "memory_usage": [],
    }
