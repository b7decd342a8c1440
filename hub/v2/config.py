"""What the catalogue says of a model, in the V2 protocol's forms: model metadata, Triton's
``model_config.proto`` JSON, the repository index. Pure functions of catalogue entries."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hub.catalogue import serving

EXTENSIONS = [
    "binary_tensor_data",
    "classification",
    "model_configuration",
    "model_repository",
    "schedule_policy",
    "statistics",
]

_TYPES = {"BYTES": "TYPE_STRING"}  # the rest are "TYPE_" + the V2 datatype


def metadata(entry: Mapping[str, Any], version: str) -> dict[str, Any]:
    signature = entry["versions"][version]
    return {
        "name": entry["name"],
        "versions": sorted(entry["versions"], key=int),
        "platform": entry["platform"],
        "inputs": signature["inputs"],
        "outputs": signature["outputs"],
    }


def not_ready_reason(entry: Mapping[str, Any]) -> str:
    return f"no live worker of pool '{entry['pool']}'"


def triton_config(entry: Mapping[str, Any], version: str) -> dict[str, Any]:
    """The model in Triton's ``model_config.proto`` JSON form.

    With ``max_batch_size > 0`` Triton leaves the batch dimension out of ``dims``; a tensor
    that is only the batch dimension becomes ``dims [1]`` reshaped to ``[]``, as Triton writes
    it. A model with a fixed first dimension cannot batch: ``max_batch_size`` 0, full dims.
    """
    signature = entry["versions"][version]
    tensors = signature["inputs"] + signature["outputs"]
    batched = all(t["shape"] and t["shape"][0] == -1 for t in tensors)

    def describe(tensor: dict[str, Any]) -> dict[str, Any]:
        dims = tensor["shape"][1:] if batched else tensor["shape"]
        out: dict[str, Any] = {
            "name": tensor["name"],
            "data_type": _TYPES.get(tensor["datatype"], "TYPE_" + tensor["datatype"]),
            "dims": dims or [1],
        }
        if not dims:
            out["reshape"] = {"shape": []}
        return out

    config: dict[str, Any] = {
        "name": entry["name"],
        "platform": entry["platform"],
        "backend": "onnxruntime",
        "version_policy": (
            {"latest": {"num_versions": entry["latest_versions"]}}
            if entry.get("latest_versions")
            else {"all": {}}
        ),
        "max_batch_size": entry["max_batch_size"] if batched else 0,
        "input": [describe(t) for t in signature["inputs"]],
        "output": [describe(t) for t in signature["outputs"]],
        "parameters": {
            "pool": {"string_value": entry["pool"]},
            "timeout_s": {"string_value": f"{entry['timeout_s']:g}"},
            "description": {"string_value": entry.get("description", "")},
            "labels": {"string_value": ",".join(entry.get("labels", []))},
        },
    }
    batching = entry.get("batching")
    if batched and batching:
        config["dynamic_batching"] = {
            "preferred_batch_size": [batching["preferred_batch_size"]],
            "max_queue_delay_microseconds": int(batching["max_queue_delay_ms"] * 1000),
        }
    return config


def repository_index(
    models: Mapping[str, Mapping[str, Any]],
    workers: Sequence[Mapping[str, Any]],
    only_ready: bool,
    unloaded: Mapping[str, Mapping[str, Any] | None] | None = None,
) -> list[dict[str, Any]]:
    """Every model version and its state, by name: READY while a live worker serves it, else
    UNAVAILABLE with the reason (no worker of its pool; unloaded)."""
    index: list[dict[str, Any]] = []
    gone = {name: (entry, "unloaded") for name, entry in (unloaded or {}).items()}
    known = {name: (entry, None) for name, entry in models.items()}
    for name, (entry, why) in sorted({**known, **gone}.items()):
        ready = why is None and entry is not None and bool(serving(name, workers))
        if only_ready and not ready:
            continue
        versions = sorted(entry["versions"], key=int) if entry is not None else [""]
        for version in versions:
            row: dict[str, Any] = {"name": name, "state": "READY" if ready else "UNAVAILABLE"}
            if version:
                row["version"] = version
            if not ready:
                row["reason"] = why or not_ready_reason(entry or {"pool": "?"})
            index.append(row)
    return index
