"""The no-queue baseline: FastAPI calling onnxruntime in the event loop, nothing between.

It speaks the V2 JSON infer request and answer of the same models, so that the benchmark sends
it the very bytes it sends inferhub. It is what a queue costs measured against: no Redis, no
worker, no batching, one ``session.run`` per request on the event loop.

    python bench/baseline.py --models models --port 8100
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
import uvicorn
from fastapi import FastAPI, Request, Response

DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32}
DATATYPES = {np.dtype(v).name: k for k, v in DTYPES.items()}


def create_app(models: Path) -> FastAPI:
    sessions: dict[str, ort.InferenceSession] = {}
    for folder in sorted(p for p in models.iterdir() if (p / "1" / "model.onnx").exists()):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1 if folder.name != "heavy" else 2
        options.inter_op_num_threads = 1
        sessions[folder.name] = ort.InferenceSession(
            str(folder / "1" / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
    app = FastAPI()

    @app.get("/readyz")  # what cli.processes.wait_ready asks, as of the hub
    async def ready() -> dict[str, bool]:
        return {"ready": True}

    @app.post("/v2/models/{model}/infer")
    async def infer(model: str, request: Request) -> Response:
        session = sessions[model]
        body = orjson.loads(await request.body())
        feed = {
            t["name"]: np.asarray(t["data"], dtype=DTYPES[t["datatype"]]).reshape(t["shape"])
            for t in body["inputs"]
        }
        names = [o.name for o in session.get_outputs()]
        outputs: list[dict[str, Any]] = [
            {
                "name": name,
                "datatype": DATATYPES.get(out.dtype.name, "BYTES"),
                "shape": list(out.shape),
                "data": out.reshape(-1),
            }
            for name, out in zip(names, session.run(names, feed), strict=True)
        ]
        content = orjson.dumps(
            {"model_name": model, "outputs": outputs}, option=orjson.OPT_SERIALIZE_NUMPY
        )
        return Response(content, media_type="application/json")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    # uvicorn's defaults, as the hub's (uvloop and httptools where installed), no access log
    uvicorn.run(
        create_app(args.models),
        host="127.0.0.1",
        port=args.port,
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
