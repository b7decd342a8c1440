"""The model repository: signatures from the ONNX graph, config from config.toml, errors kept."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT

from workers.repository import Repository, load_repository

LABEL = {"name": "label", "datatype": "INT64", "shape": [-1]}


@pytest.fixture(scope="module")
def repo(model_repo: Path) -> Repository:
    return load_repository(model_repo)


def signature(repo: Repository, name: str) -> tuple[list[dict], list[dict]]:
    version = repo.models[name].versions["1"]
    return version.inputs, version.outputs


def test_loads_every_good_model_and_only_those(repo: Repository) -> None:
    assert sorted(repo.models) == [
        "breast_cancer",
        "digits",
        "failing",
        "iris",
        "orphan",
        "pair",
        "slow",
    ]
    for model in repo.models.values():
        assert model.latest == "1"
        assert list(model.versions) == ["1"]


@pytest.mark.parametrize(
    ("name", "features", "classes"), [("digits", 64, 10), ("iris", 4, 3), ("breast_cancer", 30, 2)]
)
def test_example_model_signatures_come_from_the_graph(
    repo: Repository, name: str, features: int, classes: int
) -> None:
    inputs, outputs = signature(repo, name)
    assert inputs == [{"name": "input", "datatype": "FP32", "shape": [-1, features]}]
    assert outputs == [LABEL, {"name": "probabilities", "datatype": "FP32", "shape": [-1, classes]}]


def test_example_model_config_values(repo: Repository) -> None:
    digits = repo.models["digits"].config
    assert digits.pool == "default"
    assert digits.max_batch_size == 256
    assert digits.timeout_s == 30
    assert digits.labels == [str(i) for i in range(10)]
    assert digits.description.startswith("Handwritten digit classifier")
    assert digits.batching.preferred_batch_size == 64
    assert digits.onnxruntime.intra_op_num_threads == 1
    assert repo.models["iris"].config.labels == ["setosa", "versicolor", "virginica"]
    assert repo.models["breast_cancer"].config.labels == ["malignant", "benign"]


def test_test_model_signatures_and_config(repo: Repository) -> None:
    assert signature(repo, "slow") == (
        [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}],
        [{"name": "y", "datatype": "FP32", "shape": [-1, 1024]}],
    )
    slow = repo.models["slow"].config
    assert (slow.max_batch_size, slow.timeout_s, slow.pool) == (2, 60, "default")
    assert slow.labels == []  # defaults fill what config.toml leaves out

    assert signature(repo, "failing") == (
        [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        [{"name": "y", "datatype": "FP32", "shape": [1, 4]}],
    )
    assert signature(repo, "pair")[0] == [
        {"name": "a", "datatype": "FP32", "shape": [-1, 2]},
        {"name": "b", "datatype": "FP32", "shape": [-1, 2]},
    ]
    assert repo.models["orphan"].config.pool == "nobody"


def test_catalogue_entry_carries_signature_and_config(repo: Repository) -> None:
    entry = repo.models["iris"].catalogue_entry()
    assert entry["name"] == "iris"
    assert entry["latest"] == "1"
    assert entry["platform"] == "onnxruntime_onnx"
    assert entry["versions"]["1"]["inputs"] == [
        {"name": "input", "datatype": "FP32", "shape": [-1, 4]}
    ]
    assert entry["pool"] == "default"
    assert entry["max_batch_size"] == 256
    assert entry["labels"] == ["setosa", "versicolor", "virginica"]


def test_loaded_sessions_run(repo: Repository) -> None:
    session = repo.models["iris"].versions["1"].session
    labels, probabilities = session.run(
        None, {"input": np.array([[5.1, 3.5, 1.4, 0.2]], np.float32)}
    )
    assert labels.tolist() == [0]  # a textbook setosa
    assert probabilities.shape == (1, 3)


def test_broken_and_badconfig_are_reported_with_path_and_reason(
    repo: Repository, model_repo: Path
) -> None:
    assert "broken" not in repo.models
    assert "badconfig" not in repo.models
    assert len(repo.errors) == 2, repo.errors
    broken = next(e for e in repo.errors if e.startswith(f"{model_repo / 'broken'}: "))
    badconfig = next(e for e in repo.errors if e.startswith(f"{model_repo / 'badconfig'}: "))
    assert "INVALID_PROTOBUF" in broken, broken
    assert "max_batch_sise" in badconfig, badconfig
    assert "Extra inputs are not permitted" in badconfig, badconfig


def test_pool_filter_loads_only_that_pool(model_repo: Path) -> None:
    nobody = load_repository(model_repo, "nobody")
    assert sorted(nobody.models) == ["orphan"]
    # a model that cannot be read is reported whatever the pool: its pool is unknown
    assert any(e.startswith(f"{model_repo / 'badconfig'}: ") for e in nobody.errors)


def test_missing_repository_is_an_error_not_an_exception(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder"
    repo = load_repository(missing)
    assert repo.models == {}
    assert repo.errors == [f"{missing}: the model repository does not exist"]


def test_empty_version_folder_is_reported(tmp_path: Path) -> None:
    (tmp_path / "empty" / "1").mkdir(parents=True)
    (tmp_path / "noversion").mkdir()
    repo = load_repository(tmp_path)
    assert repo.models == {}
    assert sorted(repo.errors) == [
        f"{tmp_path / 'empty'}: {tmp_path / 'empty' / '1' / 'model.onnx'} is missing",
        f"{tmp_path / 'noversion'}: no numeric version folder (expected <name>/1/model.onnx)",
    ]


def test_example_models_ship_real_rows_and_feature_names(repo: Repository) -> None:
    iris = repo.models["iris"]
    assert iris.config.features[0] == "sepal length (cm)" and len(iris.config.features) == 4
    names = [e.name for e in iris.examples]
    assert names[:3] == ["setosa", "versicolor", "virginica"]  # one of each class first
    session = iris.versions["1"].session
    rows = np.array([e.inputs["input"] for e in iris.examples], np.float32)
    labels, _ = session.run(None, {"input": rows})  # held-out rows, named by their true class
    assert [iris.config.labels[i] for i in labels] == names
    entry = repo.models["digits"].catalogue_entry()
    assert len(entry["examples"]) == 10 and entry["features"] == []
    assert all(len(e["inputs"]["input"]) == 64 for e in entry["examples"])


def test_bad_examples_or_features_are_reported(tmp_path: Path, model_repo: Path) -> None:
    for name, config, examples in (
        ("wrongsize", "", '[{"name": "x", "inputs": {"input": [1, 2]}}]'),
        ("wrongname", "", '[{"name": "x", "inputs": {"in": [1, 2, 3, 4]}}]'),
        ("notalist", "", '{"name": "x"}'),
        ("features", 'features = ["a", "b"]\n', "[]"),
    ):
        (tmp_path / name / "1").mkdir(parents=True)
        shutil.copy(model_repo / "iris" / "1" / "model.onnx", tmp_path / name / "1")
        (tmp_path / name / "config.toml").write_text(config)
        (tmp_path / name / "examples.json").write_text(examples)
    repo = load_repository(tmp_path)
    assert repo.models == {}
    reasons = dict(e.split(": ", 1) for e in repo.errors)
    assert (
        "'x' has 2 values for 'input', which takes 4 a row" in reasons[str(tmp_path / "wrongsize")]
    )
    assert "the model's inputs are ['input']" in reasons[str(tmp_path / "wrongname")]
    assert "list" in reasons[str(tmp_path / "notalist")]
    assert "names 2 features; input 'input' has 4" in reasons[str(tmp_path / "features")]


def test_the_example_models_rebuild_byte_for_byte(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_example_models.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert built.returncode == 0, built.stderr
    committed = sorted(p.relative_to(ROOT / "models") for p in (ROOT / "models").rglob("*.*"))
    assert committed == sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.*"))
    for path in committed:
        assert (tmp_path / path).read_bytes() == (ROOT / "models" / path).read_bytes(), path
