"""Build the example model repository under ``models/`` (Triton layout).

Trains three small scikit-learn classifiers on bundled datasets (no download),
converts them to ONNX with skl2onnx, checks them with onnxruntime and writes
``models/<name>/config.toml``, ``models/<name>/1/model.onnx`` and
``models/<name>/examples.json``: real rows of the held-out test split, a few of each class,
named by their true class (the dashboard's Try panel offers them).

Run from the repository root (needs the ``test`` extra: scikit-learn, skl2onnx)::

    python scripts/build_example_models.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.base import ClassifierMixin
from sklearn.datasets import load_breast_cancer, load_digits, load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.utils import Bunch

SEED = 0
EXAMPLES = 10  # rows per model in examples.json, spread evenly over the classes
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
IR_VERSION = 8  # matches opset 17; readable by onnxruntime >= 1.14
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "models"


@dataclass(frozen=True)
class Spec:
    name: str
    summary: str  # "<what it is>", the start of the config description
    dataset: str
    load: Callable[[], Bunch]
    make_model: Callable[[], ClassifierMixin | Pipeline]
    labels: Callable[[Bunch], list[str]]
    features: bool = True  # name the input's values after the dataset's feature names


SPECS = [
    Spec(
        name="digits",
        summary="Handwritten digit classifier (8x8 grayscale, raw pixel values 0..16): "
        "an MLP with one hidden layer of 64 units",
        dataset="digits",
        load=load_digits,
        make_model=lambda: MLPClassifier(hidden_layer_sizes=(64,), max_iter=500, random_state=SEED),
        labels=lambda ds: [str(i) for i in range(10)],
        features=False,  # 64 pixels: the dashboard draws them
    ),
    Spec(
        name="iris",
        summary="Iris species classifier (4 flower measurements in cm): logistic regression",
        dataset="iris",
        load=load_iris,
        make_model=lambda: LogisticRegression(max_iter=1000, random_state=SEED),
        labels=lambda ds: [str(n) for n in ds.target_names],
    ),
    Spec(
        name="breast_cancer",
        summary="Breast tumour classifier (30 cell-nucleus features): "
        "a random forest of 50 trees of depth <= 8",
        dataset="breast_cancer",
        load=load_breast_cancer,
        make_model=lambda: RandomForestClassifier(n_estimators=50, max_depth=8, random_state=SEED),
        labels=lambda ds: [str(n) for n in ds.target_names],
    ),
]


def toml_str(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def toml_list(values: list[str]) -> str:
    return "[" + ", ".join(toml_str(value) for value in values) + "]"


def config_toml(description: str, labels: list[str], features: list[str]) -> str:
    return (
        f"description = {toml_str(description)}\n"
        'pool = "default"\n'
        "max_batch_size = 256\n"
        "timeout_s = 30\n"
        f"labels = {toml_list(labels)}\n"
        + (f"features = {toml_list(features)}\n" if features else "")
        + "\n"
        "[batching]\n"
        "preferred_batch_size = 64\n"
        "max_queue_delay_ms = 2\n"
        "\n"
        "[onnxruntime]\n"
        "intra_op_num_threads = 1\n"
        "inter_op_num_threads = 1\n"
    )


def to_onnx(model: ClassifierMixin | Pipeline, n_features: int) -> onnx.ModelProto:
    proto = convert_sklearn(
        model,
        initial_types=[("input", FloatTensorType([None, n_features]))],
        options={id(model): {"zipmap": False}},
        target_opset=TARGET_OPSET,
    )
    # Fixed metadata so that reruns produce byte-identical files.
    proto.ir_version = IR_VERSION
    proto.producer_name = "inferhub"
    proto.producer_version = "1"
    proto.domain = "inferhub.examples"
    proto.model_version = 1
    proto.doc_string = ""
    proto.graph.name = "model"
    del proto.metadata_props[:]
    # skl2onnx may list a domain twice, in hash-seed-dependent order: keep one, sorted.
    opsets: dict[str, int] = {}
    for op in proto.opset_import:
        opsets[op.domain] = max(op.version, opsets.get(op.domain, 0))
    del proto.opset_import[:]
    for domain, version in sorted(opsets.items()):
        proto.opset_import.append(onnx.helper.make_opsetid(domain, version))
    onnx.checker.check_model(proto)
    return proto


def build(spec: Spec, out: Path) -> tuple[float, int]:
    ds = spec.load()
    x = ds.data.astype(np.float32)
    x_train, x_test, y_train, y_test, _, test_rows = train_test_split(
        x, ds.target, np.arange(len(x)), test_size=0.25, random_state=SEED, stratify=ds.target
    )
    model = spec.make_model()
    model.fit(x_train, y_train)
    proto = to_onnx(model, x.shape[1])

    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input"], sess.get_inputs()
    assert [o.name for o in sess.get_outputs()] == ["label", "probabilities"], sess.get_outputs()
    onnx_label, onnx_proba = sess.run(None, {"input": x_test})
    agreement = float(np.mean(onnx_label == model.predict(x_test)))
    assert agreement >= 0.99, f"{spec.name}: ONNX/sklearn agreement {agreement:.3f}"
    assert onnx_proba.shape == (len(x_test), len(ds.target_names))
    accuracy = float(np.mean(onnx_label == y_test))

    model_dir = out / spec.name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    onnx_path = model_dir / "1" / "model.onnx"
    onnx_path.write_bytes(proto.SerializeToString())
    description = (
        f"{spec.summary}, trained on scikit-learn's {spec.dataset} dataset; "
        f"test accuracy {accuracy:.3f} (n={len(x_test)})"
    )
    labels = spec.labels(ds)
    features = [str(f) for f in ds.feature_names] if spec.features else []
    config = config_toml(description, labels, features)
    tomllib.loads(config)  # must parse
    (model_dir / "config.toml").write_text(config, encoding="utf-8")
    examples = examples_json(ds.data[test_rows], y_test, labels)  # as written, not as FP32
    (model_dir / "examples.json").write_text(examples, encoding="utf-8")
    return accuracy, onnx_path.stat().st_size


def examples_json(rows: np.ndarray, y: np.ndarray, labels: list[str]) -> str:
    """Rows of the test split, as the dataset has them, up to ``EXAMPLES`` of them: the first
    of each class, then the second of each, and so on; each named by its true class. One
    example a line: ``{"name": "setosa", "inputs": {"input": [5.0, 3.4, 1.6, 0.4]}}``."""
    per_class = max(1, EXAMPLES // len(labels))
    by_class = [np.flatnonzero(y == c)[:per_class] for c in range(len(labels))]
    chosen = [found[k] for k in range(per_class) for found in by_class if k < len(found)]
    examples = [
        {"name": labels[y[i]], "inputs": {"input": [_number(v) for v in rows[i]]}} for i in chosen
    ]
    return "[\n" + ",\n".join(" " + json.dumps(e) for e in examples) + "\n]\n"


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else float(value)


ONE_THREAD = {
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_CORETYPE": "Haswell",  # AVX2: the same kernels on every x86-64 of the last decade
}


def main() -> None:
    # BLAS reads its thread count and picks its kernels when it loads: on two threads, or
    # another CPU's kernels, the MLP's sums run in another order and the bytes would depend on
    # the machine (tests/test_repository.py rebuilds them), so start again with them fixed
    if any(os.environ.get(k) != v for k, v in ONE_THREAD.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **ONE_THREAD})
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="model repository dir")
    args = parser.parse_args()
    for spec in SPECS:
        accuracy, size = build(spec, args.out)
        print(f"{spec.name:<14} accuracy={accuracy:.3f}  model.onnx={size:,} bytes")


if __name__ == "__main__":
    main()
