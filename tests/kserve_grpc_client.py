"""KServe's InferenceGRPCClient against a hub, as its users call it: health, then iris's rows as
raw and as typed contents, then an unknown model. Prints one JSON line of what it got.

Run by tests/test_grpc.py in a process of its own (KServe's protos and tritonclient's clash in
one): ``python tests/kserve_grpc_client.py 127.0.0.1:PORT``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import grpc
import numpy as np
from kserve import InferenceGRPCClient, InferInput, InferRequest
from sklearn.datasets import load_iris


async def main(url: str) -> dict[str, Any]:
    rows = load_iris().data[:5].astype(np.float32)
    got: dict[str, Any] = {}
    async with InferenceGRPCClient(url, retries=0) as client:
        got["live"] = await client.is_server_live()
        got["ready"] = await client.is_server_ready()
        got["model_ready"] = await client.is_model_ready("iris")
        raw = InferInput("input", list(rows.shape), "FP32")
        raw.set_data_from_numpy(rows)  # binary: raw_input_contents
        typed = InferInput("input", list(rows.shape), "FP32", data=rows.reshape(-1).tolist())
        for form, tensor in (("raw", raw), ("typed", typed)):
            response = await client.infer(InferRequest("iris", [tensor], request_id=form))
            outputs = {o.name: o.as_numpy().tolist() for o in response.outputs}
            got[form] = outputs
        try:
            await client.infer(InferRequest("nope", [raw], request_id="x"))
        except grpc.RpcError as exc:
            got["unknown_model"] = str(exc.code())
    return got


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1]))))
