"""The heavy benchmark model, generated with a fixed seed (not committed): an MLP of MatMul+Relu."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def build_mlp(
    folder: Path,
    *,
    input_dim: int = 1024,
    width: int = 1024,
    layers: int = 8,
    config: str = "",
    seed: int = 0,
) -> Path:
    """x FP32 [-1, input_dim] -> layers x (MatMul + Relu) of width ``width`` -> y FP32 [-1, width]."""
    rng = np.random.default_rng(seed)
    dims = [input_dim] + [width] * layers
    weights = [
        (rng.standard_normal((dims[i], dims[i + 1])) * np.sqrt(2.0 / dims[i])).astype(np.float32)
        for i in range(layers)
    ]
    nodes, last = [], "x"
    for i in range(layers):
        out = "y" if i == layers - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [last, f"w{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Relu", [f"m{i}"], [out]))
        last = out
    graph = helper.make_graph(
        nodes,
        folder.name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", input_dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])],
        initializer=[numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(weights)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (folder / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "1" / "model.onnx")
    (folder / "config.toml").write_text(config)
    return folder / "1" / "model.onnx"
