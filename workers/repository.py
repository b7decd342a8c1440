"""The model repository, in Triton's layout: ``<root>/<name>/config.toml`` and
``<root>/<name>/<version>/model.onnx``, with an optional ``<root>/<name>/examples.json``.

Signatures come from the ONNX graph; ``config.toml`` adds what the graph cannot say;
``examples.json`` holds rows to try the model with (``[{"name", "inputs": {input: one row's
values}}]``). A broken model is reported with its path and reason and skipped, so the rest
still serve.
"""

from __future__ import annotations

import contextlib
import logging
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnxruntime as ort
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

log = logging.getLogger(__name__)

# onnxruntime's type strings -> V2 datatypes
_ORT_TYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


class Batching(BaseModel):
    model_config = ConfigDict(extra="forbid")
    preferred_batch_size: int = Field(64, gt=0)
    max_queue_delay_ms: float = Field(2.0, ge=0)


class SessionOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    intra_op_num_threads: int = Field(1, ge=0)
    inter_op_num_threads: int = Field(1, ge=0)
    # onnxruntime's threads spin between calls by default: fast alone, but on a machine
    # shared with the hub and Redis they burn the cores those need
    allow_spinning: bool = False


class ModelConfig(BaseModel):
    """``config.toml``; unknown keys are an error so that a typo does not pass silently."""

    model_config = ConfigDict(extra="forbid")
    description: str = ""
    pool: str = "default"
    max_batch_size: int = Field(256, gt=0)
    timeout_s: float = Field(30.0, gt=0)
    # serve only the newest N versions, as Triton's version_policy "latest" (0: every version);
    # with 1, a new version dropped into the repository replaces the old one, which drains
    latest_versions: int = Field(0, ge=0)
    labels: list[str] = []
    features: list[str] = []  # the names of the values of one row of the (first) input
    batching: Batching = Batching()
    onnxruntime: SessionOptions = SessionOptions()


class Example(BaseModel):
    """One row to try the model with, per input: the values of that row, flat."""

    model_config = ConfigDict(extra="forbid")
    name: str
    inputs: dict[str, list[Any]]


_EXAMPLES = TypeAdapter(list[Example])


@dataclass
class ModelVersion:
    version: str
    path: Path
    session: ort.InferenceSession
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    stamp: tuple[int, int] = (0, 0)  # the file's mtime (ns) and size when it was loaded

    @property
    def batchable(self) -> bool:
        """Whether rows can be split and joined along the first dimension."""
        return all(t["shape"][:1] == [-1] for t in (*self.inputs, *self.outputs))


@dataclass
class Model:
    name: str
    config: ModelConfig
    versions: dict[str, ModelVersion] = field(default_factory=dict)
    examples: list[Example] = field(default_factory=list)

    @property
    def latest(self) -> str:
        return max(self.versions, key=int)

    def catalogue_entry(self) -> dict[str, Any]:
        """What the hub needs to validate requests and describe the model."""
        return {
            "name": self.name,
            "platform": "onnxruntime_onnx",
            "latest": self.latest,
            "versions": {
                v: {"inputs": mv.inputs, "outputs": mv.outputs} for v, mv in self.versions.items()
            },
            **self.config.model_dump(),
            "examples": [e.model_dump() for e in self.examples],
        }


@dataclass
class Repository:
    models: dict[str, Model]
    errors: list[str]


def load_repository(root: Path, pool: str | None = None) -> Repository:
    """Load every model of ``pool`` (all pools when None) under ``root``."""
    models: dict[str, Model] = {}
    errors: list[str] = []
    if not root.is_dir():
        errors.append(f"{root}: the model repository does not exist")
    for model_dir in model_dirs(root):
        try:
            model = load_model(model_dir, pool)
        except Exception as exc:  # onnxruntime raises its own types: any failure skips the model
            errors.append(f"{model_dir}: {reason(exc)}")
            continue
        if model is not None:
            models[model.name] = model
    for error in errors:
        log.error("model skipped: %s", error)
    return Repository(models, errors)


def longest_timeout(root: Path, default: float = 30.0) -> float:
    """The longest ``timeout_s`` of the models under ``root`` (whatever their pool: any of them
    may be loaded later), read from their configs alone."""
    timeouts = []
    for model_dir in model_dirs(root):
        with contextlib.suppress(Exception):  # a broken config is reported when it is loaded
            raw = tomllib.loads((model_dir / "config.toml").read_text())
            timeouts.append(ModelConfig.model_validate(raw).timeout_s)
    return max(timeouts, default=default)


def model_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("*") if p.is_dir()) if root.is_dir() else []


def reason(exc: Exception) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def fingerprint(model_dir: Path) -> tuple[tuple[str, int, int], ...]:
    """What changes when a file of the model changes: each file's path, mtime and size."""
    files = [model_dir / "config.toml", model_dir / "examples.json"]
    files += sorted(model_dir.glob("*/model.onnx"))
    return tuple(
        (str(f.relative_to(model_dir)), st.st_mtime_ns, st.st_size)
        for f in files
        if (st := _stat(f)) is not None
    )


def _stat(path: Path) -> Any:
    try:
        return path.stat()
    except OSError:
        return None


def load_model(model_dir: Path, pool: str | None, previous: Model | None = None) -> Model | None:
    """The model of ``model_dir`` if it is of ``pool`` (any when None); the versions of
    ``previous`` whose file is unchanged keep their session."""
    config_path = model_dir / "config.toml"
    raw = tomllib.loads(config_path.read_text()) if config_path.exists() else {}
    config = ModelConfig.model_validate(raw)
    if pool is not None and config.pool != pool:
        return None
    model = Model(model_dir.name, config)
    version_dirs = [p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    if not version_dirs:
        raise ValueError("no numeric version folder (expected <name>/1/model.onnx)")
    version_dirs.sort(key=lambda p: int(p.name))
    if config.latest_versions:
        version_dirs = version_dirs[-config.latest_versions :]
    kept = previous.versions if previous and previous.config == config else {}
    for version_dir in version_dirs:
        path = version_dir / "model.onnx"
        if not path.exists():
            raise ValueError(f"{path} is missing")
        version = str(int(version_dir.name))
        stat = path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        if version in kept and kept[version].stamp == stamp:
            model.versions[version] = kept[version]
            continue
        session = _session(path, config.onnxruntime)
        model.versions[version] = ModelVersion(
            version=version,
            path=path,
            session=session,
            inputs=[_signature(arg) for arg in session.get_inputs()],
            outputs=[_signature(arg) for arg in session.get_outputs()],
            stamp=stamp,
        )
    inputs = model.versions[model.latest].inputs
    _check_features(config.features, inputs)
    examples_path = model_dir / "examples.json"
    if examples_path.exists():
        model.examples = _EXAMPLES.validate_json(examples_path.read_bytes())
        _check_examples(model.examples, inputs)
    return model


def _row_size(tensor: dict[str, Any]) -> int | None:
    """The values in one row of ``tensor`` (None when a dimension past the first varies)."""
    rest = tensor["shape"][1:]
    return None if any(d < 0 for d in rest) else math.prod(rest)


def _check_features(features: list[str], inputs: list[dict[str, Any]]) -> None:
    size = _row_size(inputs[0]) if inputs else None
    if features and size is not None and len(features) != size:
        raise ValueError(
            f"config.toml names {len(features)} features; input '{inputs[0]['name']}' "
            f"has {size} values a row"
        )


def _check_examples(examples: list[Example], inputs: list[dict[str, Any]]) -> None:
    """Each example gives one row of every input, of the input's size."""
    sizes = {t["name"]: _row_size(t) for t in inputs}
    for example in examples:
        if set(example.inputs) != set(sizes):
            raise ValueError(
                f"examples.json: '{example.name}' gives {sorted(example.inputs)}; "
                f"the model's inputs are {sorted(sizes)}"
            )
        for name, values in example.inputs.items():
            if sizes[name] is not None and len(values) != sizes[name]:
                raise ValueError(
                    f"examples.json: '{example.name}' has {len(values)} values for '{name}', "
                    f"which takes {sizes[name]} a row"
                )


def _session(path: Path, options: SessionOptions) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = options.intra_op_num_threads
    so.inter_op_num_threads = options.inter_op_num_threads
    spinning = "1" if options.allow_spinning else "0"
    so.add_session_config_entry("session.intra_op.allow_spinning", spinning)
    so.add_session_config_entry("session.inter_op.allow_spinning", spinning)
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def _signature(arg: Any) -> dict[str, Any]:
    if arg.type not in _ORT_TYPES:
        raise ValueError(f"'{arg.name}' has type {arg.type}, which inferhub cannot carry")
    shape = [d if isinstance(d, int) else -1 for d in arg.shape]
    return {"name": arg.name, "datatype": _ORT_TYPES[arg.type], "shape": shape}
