"""KServe's InferenceRESTClient (V2) against a hub, as its users call it: health, then iris's
rows. Prints one JSON line of what it got.

Run by tests/test_v2.py in a process of its own (KServe's protos and tritonclient's clash in
one): ``python tests/kserve_rest_client.py http://127.0.0.1:PORT``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig


async def main(url: str) -> dict[str, Any]:
    rows = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0))
    try:
        got: dict[str, Any] = {
            "live": await client.is_server_live(url),
            "ready": await client.is_server_ready(url),
            "model_ready": await client.is_model_ready(url, "iris"),
        }
        tensor = InferInput("input", list(rows.shape), "FP32", data=rows.reshape(-1).tolist())
        response = await client.infer(url, InferRequest("iris", [tensor]), model_name="iris")
        got["outputs"] = {o.name: o.as_numpy().tolist() for o in response.outputs}
    finally:
        await client.close()
    return got


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1]))))
