"""The Kubernetes manifests (deploy/), checked offline.

Each overlay is rendered by kustomize (``kubectl kustomize``, as ``kubectl apply -k`` renders
it). Every Kubernetes resource is validated against the API's own schemas, in strict mode (an
unknown field fails), for the oldest and the newest Kubernetes release we claim; every KEDA
ScaledObject against deploy/schemas/keda-scaledobject.schema.json. Then what no schema can
tell: each pool's ScaledObject scales that pool's Deployment on that pool's series, which a real
hub exports; the probes name routes the hub answers; the grace period covers the drain.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from helpers import ROOT
from prometheus_client.parser import text_string_to_metric_families

from contract.settings import Settings

DEPLOY = ROOT / "deploy"
OVERLAYS = ("single-redis", "sentinel", "second-pool")
KUBERNETES = ("1.30", "1.37")  # the oldest release the manifests claim, and the newest known
KEDA_SCHEMA = json.loads((DEPLOY / "schemas" / "keda-scaledobject.schema.json").read_text())

Resource = dict[str, Any]


def kustomize(folder: Path) -> list[Resource]:
    """The resources ``kubectl apply -k folder`` would send."""
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with its built-in kustomize) is needed to render deploy/"
    out = subprocess.run(
        [kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> list[Resource]:
    return kustomize(DEPLOY / "overlays" / request.param)


def of_kind(resources: list[Resource], kind: str) -> list[Resource]:
    return [r for r in resources if r["kind"] == kind]


def named(resources: list[Resource], kind: str, name: str) -> Resource:
    found = [r for r in of_kind(resources, kind) if r["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def container(deployment: Resource) -> Resource:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(only)


def env(deployment: Resource) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container(deployment).get("env", [])}


def workers(resources: list[Resource]) -> Iterator[Resource]:
    for deployment in of_kind(resources, "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        if labels.get("app.kubernetes.io/component") == "worker":
            yield deployment


# --- schemas ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES)
def test_every_kubernetes_resource_is_valid(rendered: list[Resource], version: str) -> None:
    checked = 0
    for resource in rendered:
        if resource["apiVersion"].startswith("keda.sh/"):
            continue
        kubernetes_validate.validate(resource, version, strict=True)  # raises on any error
        checked += 1
    assert checked >= 6  # ConfigMap, Service, Deployments, PodDisruptionBudgets, the HPA


def test_every_scaledobject_is_valid(rendered: list[Resource]) -> None:
    scaled = of_kind(rendered, "ScaledObject")
    assert scaled
    for resource in scaled:
        jsonschema.validate(resource, KEDA_SCHEMA, cls=jsonschema.Draft202012Validator)


def test_the_validators_refuse_a_misspelt_field() -> None:
    """Strict validation bites: a typo the cluster would silently drop fails here."""
    resources = kustomize(DEPLOY / "overlays" / "single-redis")
    hub = named(resources, "Deployment", "inferhub-hub")
    container(hub)  # one container
    hub["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="livenessprobe"):
        kubernetes_validate.validate(hub, KUBERNETES[-1], strict=True)
    (scaled,) = of_kind(resources, "ScaledObject")
    scaled["spec"]["triggers"][0]["metadata"]["treshold"] = "3"
    with pytest.raises(jsonschema.ValidationError, match="treshold"):
        jsonschema.validate(scaled, KEDA_SCHEMA, cls=jsonschema.Draft202012Validator)
    jsonschema.Draft202012Validator.check_schema(KEDA_SCHEMA)


# --- what the schemas cannot tell -------------------------------------------------------------

_POOL_SELECTOR = re.compile(r'\{pool="([^"]+)"\}')
_SERIES = re.compile(r"\b(inferhub_[a-z_]+)\{")


def test_each_pool_scales_its_own_workers_on_its_own_backlog(rendered: list[Resource]) -> None:
    scaled = {s["spec"]["scaleTargetRef"]["name"]: s for s in of_kind(rendered, "ScaledObject")}
    pools = set()
    for deployment in workers(rendered):
        pool = env(deployment)["INFERHUB_POOL"]
        pools.add(pool)
        assert deployment["spec"]["selector"]["matchLabels"]["inferhub.io/pool"] == pool
        assert "replicas" not in deployment["spec"], "KEDA owns the worker count"
        # onnxruntime writes under $HOME/.cache (seen with strace): it must be writable
        mounts = {m["mountPath"] for m in container(deployment)["volumeMounts"]}
        assert container(deployment)["securityContext"]["readOnlyRootFilesystem"]
        assert env(deployment)["HOME"] in mounts
        so = scaled.pop(deployment["metadata"]["name"])  # one ScaledObject per worker Deployment
        assert so["spec"]["minReplicaCount"] >= 1, "a pool without workers has no models"
        (trigger,) = so["spec"]["triggers"]
        assert trigger["type"] == "prometheus"
        query = trigger["metadata"]["query"]
        assert set(_POOL_SELECTOR.findall(query)) == {pool}, query
        assert set(_SERIES.findall(query)) == {"inferhub_queue_depth", "inferhub_jobs_running"}
        budget = [
            p
            for p in of_kind(rendered, "PodDisruptionBudget")
            if p["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
        ]
        assert len(budget) == 1
    assert not scaled, f"ScaledObjects without their Deployment: {list(scaled)}"
    assert len(pools) == len(list(workers(rendered))), "two Deployments serve one pool"


def test_the_second_pool_overlay_adds_a_pool() -> None:
    resources = kustomize(DEPLOY / "overlays" / "second-pool")
    assert {env(d)["INFERHUB_POOL"] for d in workers(resources)} == {"default", "batch"}


def test_the_hub_drains_within_its_grace_and_scales_on_cpu(rendered: list[Resource]) -> None:
    hub = named(rendered, "Deployment", "inferhub-hub")
    spec = hub["spec"]["template"]["spec"]
    main = container(hub)
    grace_s = float(env(hub)["INFERHUB_SHUTDOWN_GRACE_S"])
    pre_stop = main["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    # SIGTERM comes after preStop, and the kubelet kills at the grace period's end
    assert spec["terminationGracePeriodSeconds"] >= float(pre_stop[1]) + grace_s + 2
    assert Settings.model_fields["shutdown_grace_s"].default == grace_s  # the documented one
    assert "replicas" not in hub["spec"], "the HPA owns the hub count"
    hpa = named(rendered, "HorizontalPodAutoscaler", "inferhub-hub")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "inferhub-hub"
    assert hpa["spec"]["minReplicas"] >= 2  # the PDB lets one go at a time
    assert main["resources"]["requests"]["cpu"], "CPU utilisation is relative to the request"
    pdb = named(rendered, "PodDisruptionBudget", "inferhub-hub")
    labels = hub["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = named(rendered, "Service", "inferhub")
    assert service["spec"]["selector"].items() <= labels.items()


def test_every_referenced_config_map_and_service_port_exists(rendered: list[Resource]) -> None:
    config_maps = {c["metadata"]["name"] for c in of_kind(rendered, "ConfigMap")}
    for deployment in of_kind(rendered, "Deployment"):
        for source in container(deployment).get("envFrom", []):
            assert source["configMapRef"]["name"] in config_maps
    hub = named(rendered, "Deployment", "inferhub-hub")
    ports = {p["name"]: p["containerPort"] for p in container(hub)["ports"]}
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"INFERHUB_PORT={ports['http']}" in dockerfile
    assert f"INFERHUB_GRPC_PORT={ports['grpc']}" in dockerfile
    for port in named(rendered, "Service", "inferhub")["spec"]["ports"]:
        assert port["targetPort"] in ports


def test_hubs_and_workers_run_the_image_of_the_dockerfile(rendered: list[Resource]) -> None:
    """One image, set once by the overlay's ``images:``; the hub's command is the image's."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'CMD ["inferhub", "serve"]' in dockerfile
    images = set()
    for deployment in of_kind(rendered, "Deployment"):
        images.add(container(deployment)["image"])
        role = deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        assert container(deployment)["command"] == ["inferhub", {"hub": "serve"}.get(role, role)]
    assert images == {"inferhub:latest"}


def test_the_redis_url_is_the_documented_choice(rendered: list[Resource]) -> None:
    (config,) = of_kind(rendered, "ConfigMap")
    url = config["data"]["INFERHUB_REDIS_URL"]
    if of_kind(rendered, "StatefulSet"):  # the single Redis of deploy/redis
        assert url == "redis://redis:6379/0"
        assert named(rendered, "Service", "redis")
    else:
        assert re.fullmatch(r"redis\+sentinel://[^/]+:26379(,[^/,]+:26379)+/mymaster/0", url)


# --- against a real hub ----------------------------------------------------------------------


def test_the_probes_and_the_scaled_series_are_the_hubs(client: Any) -> None:
    """The probes' routes answer, and /metrics exports the series each ScaledObject queries,
    with its pool label (a real hub with a real worker of pool "default")."""
    resources = kustomize(DEPLOY / "overlays" / "single-redis")
    main = container(named(resources, "Deployment", "inferhub-hub"))
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        path = main[probe]["httpGet"]["path"]
        assert client.get(path).status_code == 200, (probe, path)
    assert main["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert main["livenessProbe"]["httpGet"]["path"] == "/healthz"
    exported = {
        (sample.name, sample.labels.get("pool"))
        for family in text_string_to_metric_families(client.get("/metrics").text)
        for sample in family.samples
    }
    (scaled,) = of_kind(resources, "ScaledObject")
    query = scaled["spec"]["triggers"][0]["metadata"]["query"]
    (pool,) = set(_POOL_SELECTOR.findall(query))
    for series in _SERIES.findall(query):
        assert (series, pool) in exported, series
