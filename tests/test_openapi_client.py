"""A client generated from the hub's ``/openapi.json`` by openapi-python-client (installed by
``.ci/install test`` in ``.venv-openapi``: it pins older typer and httpx than the hub's) calls
V2 infer, at both of its paths, and ``/v1/jobs`` against a hub process and a real worker.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import numpy as np
import pytest
from helpers import ROOT
from stack import Stack
from test_v2 import ROWS, local_run

GENERATOR = ROOT / ".venv-openapi" / "bin" / "openapi-python-client"


@pytest.fixture(scope="module")
def hub(stack: Stack) -> str:
    stack.first_worker(wait=False)
    return stack.hub("openapi").url


@pytest.fixture(scope="module")
def generated(hub: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """The client package, generated from the running hub's document and imported."""
    assert GENERATOR.exists(), f"{GENERATOR} is missing: run `bash .ci/install test`"
    folder = tmp_path_factory.mktemp("openapi")
    document = folder / "openapi.json"
    document.write_bytes(httpx.get(f"{hub}/openapi.json", timeout=30).content)
    output = folder / "inferhub_client"
    run = subprocess.run(
        [
            str(GENERATOR),
            "generate",
            "--path",
            str(document),
            "--meta",
            "none",
            "--output-path",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=folder,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    # no V2 operation or body was skipped as unparsable (POST /v1/jobs's .npy and .npz bodies
    # are: the generator knows no such media types; its JSON body is generated)
    skipped = [line for line in run.stdout.splitlines() if line.startswith("WARNING parsing")]
    assert not [line for line in skipped if "/v2" in line], skipped
    sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module("inferhub_client")
    finally:
        sys.path.remove(str(folder))
        for name in [m for m in sys.modules if m.split(".")[0] == "inferhub_client"]:
            del sys.modules[name]


def _module(package: ModuleType, name: str) -> Any:
    return importlib.import_module(f"{package.__name__}.{name}")


def iris_request(generated: ModuleType) -> Any:
    models = _module(generated, "models")
    rows = ROWS["iris"][:3].astype(np.float32)
    return models.InferRequest(
        id="generated",
        inputs=[
            models.RequestInput(
                name="input", shape=[3, 4], datatype="FP32", data=rows.ravel().tolist()
            )
        ],
    )


def test_v2_infer_at_both_paths(generated: ModuleType, hub: str, model_repo: Path) -> None:
    client = generated.Client(base_url=hub, raise_on_unexpected_status=True)
    expected = local_run(model_repo, "iris", ROWS["iris"][:3].astype(np.float32))
    latest = _module(generated, "api.v2.infer_v2_models_model_infer_post")
    versioned = _module(
        generated, "api.v2.infer_version_v2_models_model_versions_version_infer_post"
    )
    body = iris_request(generated)
    for answer in (
        latest.sync(model="iris", client=client, body=body),
        versioned.sync(model="iris", version="1", client=client, body=body),
    ):
        assert type(answer).__name__ == "InferResponse", answer
        assert answer.model_name == "iris" and answer.model_version == "1"
        assert answer.id == "generated"
        outputs = {o.name: o for o in answer.outputs}
        assert outputs["label"].shape == [3]
        assert outputs["label"].data == expected["label"].tolist()
        np.testing.assert_allclose(
            np.array(outputs["probabilities"].data).reshape(3, 3),
            expected["probabilities"],
            rtol=1e-6,
        )
    missing = latest.sync_detailed(model="nope", client=generated.Client(base_url=hub), body=body)
    assert missing.status_code == 404


def test_v1_jobs(generated: ModuleType, hub: str, model_repo: Path) -> None:
    client = generated.Client(base_url=hub, raise_on_unexpected_status=True)
    submit = _module(generated, "api.jobs.submit_v1_jobs_post")
    get_job = _module(generated, "api.jobs.get_job_v1_jobs_job_id_get")
    request = _module(generated, "models").SubmitV1JobsPostJsonJobRequest
    rows = ROWS["iris"][:2].astype(np.float32)
    expected = local_run(model_repo, "iris", rows)["label"].tolist()

    done = submit.sync_detailed(
        client=client, body=request(model="iris", data=rows.tolist()), prefer="wait=30"
    )
    assert done.status_code == 200
    job = done.parsed
    assert type(job).__name__ == "Job" and job.status.value == "succeeded"
    labels = {o.name: o.data for o in job.outputs}["label"]
    assert labels == expected

    queued = submit.sync_detailed(client=client, body=request(model="iris", data=rows.tolist()))
    assert queued.status_code in (200, 202)  # 202 unless it finished in the same breath
    assert type(queued.parsed).__name__ == "Job" and queued.parsed.model == "iris"
    again = get_job.sync_detailed(job_id=queued.parsed.id, client=client)
    assert again.status_code == 200
