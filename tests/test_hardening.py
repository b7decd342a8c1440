"""The operator's side of issue 13: keys files that would have opened the hub, Host checks
against DNS rebinding, readiness during a Redis outage, admin-only views of every tenant's
activity, and a port already taken. Real hubs (``inferhub serve``/``up`` as subprocesses, or
the app with its lifespan), the module's worker and Redis database, and Chromium for the dashboard.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import ROOT, TestClient
from playwright.sync_api import sync_playwright
from pydantic import SecretStr
from stack import Stack, Worker

from cli.processes import free_port, ready
from contract.settings import Settings
from hub.app import create_app
from hub.auth import KeysFileError, new_key

DIGEST = "0" * 64
DEAD_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1


def inferhub(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )


def cli_env(stack: Stack, **fields: Any) -> dict[str, str]:
    """The environment of an ``inferhub`` run: this process's without its ``INFERHUB_``
    settings, then the stack's settings and ``fields``."""
    own = {k: v for k, v in os.environ.items() if not k.startswith("INFERHUB_")}
    return {**own, **stack.env(**fields)}


# --- item 7: a keys file that holds no valid key, or any invalid entry, stops start-up --------

BAD_KEYS_FILES = {
    "empty": ("", "holds no key"),
    "only a comment": ("# keys to come\n", "holds no key"),
    "table typo": (
        f'[key.ab12cd34]\ntenant = "acme"\nscopes = ["read"]\nsha256 = "{DIGEST}"\n',
        "unknown top-level entry 'key'",
    ),
    "no tenant": (f'[keys.ab12cd34]\nscopes = ["read"]\nsha256 = "{DIGEST}"\n', "'tenant'"),
    "tenant not a string": (
        f'[keys.ab12cd34]\ntenant = 7\nscopes = ["read"]\nsha256 = "{DIGEST}"\n',
        "'tenant'",
    ),
    "no sha256": ('[keys.ab12cd34]\ntenant = "acme"\nscopes = ["read"]\n', "'sha256'"),
    "sha256 not hex": (
        f'[keys.ab12cd34]\ntenant = "acme"\nscopes = ["read"]\nsha256 = "{"z" * 64}"\n',
        "'sha256'",
    ),
    "scopes a string": (
        f'[keys.ab12cd34]\ntenant = "acme"\nscopes = "read"\nsha256 = "{DIGEST}"\n',
        "'scopes'",
    ),
    "unknown role": (
        f'[keys.ab12cd34]\ntenant = "acme"\nscopes = ["root"]\nsha256 = "{DIGEST}"\n',
        "unknown scopes ['root']",
    ),
    "unknown field": (
        f'[keys.ab12cd34]\ntenant = "acme"\nscope = ["read"]\nsha256 = "{DIGEST}"\n',
        "unknown field 'scope'",
    ),
    "not toml": ("[keys.ab12cd34\n", "cannot read it"),
}


@pytest.mark.parametrize("case", sorted(BAD_KEYS_FILES))
def test_a_bad_keys_file_stops_serve_with_one_line_naming_file_and_entry(
    case: str, stack: Stack, tmp_path: Path
) -> None:
    text, fault = BAD_KEYS_FILES[case]
    path = tmp_path / "keys.toml"
    path.write_text(text)
    port = str(free_port())
    env = cli_env(stack, redis_url=DEAD_REDIS, api_keys_file=path)
    result = inferhub("serve", "--port", port, env=env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0] and fault in lines[0]
    if "[keys." in text and case != "not toml":
        assert "entry [keys.ab12cd34]" in lines[0]


def test_a_bad_keys_file_stops_up_before_anything_starts(stack: Stack, tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    path.write_text(BAD_KEYS_FILES["table typo"][0])
    env = cli_env(stack, api_keys_file=path)
    del env["INFERHUB_REDIS_URL"]  # up would start its own Redis
    result = inferhub("up", "--port", str(free_port()), env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "embedded Redis" not in result.stdout
    assert result.stderr.count("\n") == 1 and str(path) in result.stderr


def test_the_app_refuses_an_empty_keys_file_rather_than_serving_open(
    settings: Settings, tmp_path: Path
) -> None:
    """The reproduction: the hub came up open and its tickets carried admin."""
    path = tmp_path / "empty.toml"
    path.write_text("")
    with pytest.raises(KeysFileError, match="holds no key"):
        create_app(settings.model_copy(update={"api_keys_file": path}))


# --- minor: Host checks against DNS rebinding -------------------------------------------------


@pytest.fixture(scope="module")
def open_hub(stack: Stack) -> int:
    """A keyless ``inferhub serve`` on loopback, with no allowed hosts configured."""
    stack.first_worker(wait=False)  # the hub is ready once the worker is
    return stack.hub("open").port


def raw_status(port: int, request: str) -> str:
    """The status line of a hand-written HTTP/1.1 request (any Host header it likes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request.encode())
        return s.makefile("rb").readline().decode().strip()


def ws_upgrade(host: str) -> str:
    return (
        f"GET /v1/ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )


def test_a_keyless_hub_answers_only_to_loopback_host_names(open_hub: int) -> None:
    url = f"http://127.0.0.1:{open_hub}"
    for host in (
        f"localhost:{open_hub}",
        f"127.0.0.1:{open_hub}",
        f"[::1]:{open_hub}",
        "localhost",
    ):
        r = httpx.get(f"{url}/v1/models", headers={"Host": host}, timeout=10)
        assert r.status_code == 200, (host, r.text)
    for host in (
        "evil.example",
        f"evil.example:{open_hub}",
        "127.0.0.1.evil.example",
        "x@localhost",
    ):
        r = httpx.get(f"{url}/v1/models", headers={"Host": host}, timeout=10)
        assert r.status_code == 400, (host, r.text)
        error = r.json()["error"]
        assert error["code"] == "host_not_allowed" and "INFERHUB_ALLOWED_HOSTS" in error["message"]
    # the WebSocket too: refused before the upgrade, accepted from a loopback name
    assert raw_status(open_hub, ws_upgrade("evil.example")).startswith("HTTP/1.1 400")
    assert raw_status(open_hub, ws_upgrade(f"localhost:{open_hub}")).startswith("HTTP/1.1 101")


def test_allowed_hosts_lists_more_names_and_a_keyed_hub_checks_only_a_list(
    stack: Stack, worker: Worker, tmp_path: Path
) -> None:
    with stack.app(allowed_hosts=["hub.internal", "*.example.org"], wait_ready=False) as client:
        for host, status in [("hub.internal", 200), ("a.example.org", 200), ("evil.example", 400)]:
            assert client.get("/healthz", headers={"Host": host}).status_code == status, host
    keys_file = tmp_path / "keys.toml"
    key = new_key(keys_file, "acme", ["read"])
    with stack.app(api_keys_file=keys_file, allowed_hosts=[], wait_ready=False) as client:
        r = client.get(
            "/v1/models", headers={"Host": "any.example", "Authorization": f"Bearer {key}"}
        )
        assert r.status_code == 200, r.text


# --- minor: readiness during a Redis outage ---------------------------------------------------


def test_readiness_gives_up_on_a_dead_redis_within_its_bound(settings: Settings) -> None:
    """A hub whose Redis port has nothing behind it: 503 with the reason, after the probe's
    bound (0.8 s) rather than the client's seconds of reconnect retries."""
    dead = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    with TestClient(create_app(dead)) as client:
        r = client.get("/readyz")
        assert r.status_code == 503
        assert r.json() == {"ready": False, "reason": "redis unreachable: no answer within 0.8 s"}
        r = client.get("/v2/health/ready")
        assert r.status_code == 503
        assert r.json() == {"error": "not ready: Redis is unreachable: no answer within 0.8 s"}


# --- minor: every tenant's activity only to admin (or the metrics token) ----------------------


@pytest.fixture(scope="module")
def keyed_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    path = tmp_path_factory.mktemp("keys") / "keys.toml"
    return path, new_key(path, "acme", ["submit", "read"]), new_key(path, "ops", ["admin"])


def test_queues_workers_and_metrics_need_admin_or_the_metrics_token(
    stack: Stack, worker: Worker, keyed_keys: tuple[Path, str, str]
) -> None:
    path, tenant, admin = keyed_keys
    bearer = lambda key: {"Authorization": f"Bearer {key}"}  # noqa: E731
    token = SecretStr("scrape-me-please")
    with stack.app(api_keys_file=path, metrics_token=token, wait_ready=False) as client:
        for route in ("/v1/queues", "/v1/workers", "/metrics"):
            r = client.get(route, headers=bearer(tenant))
            assert r.status_code == 403, (route, r.text)
            assert "admin" in r.json()["error"]["message"]
            assert client.get(route).status_code == 401
            assert client.get(route, headers=bearer(admin)).status_code == 200, route
        assert client.get("/v1/models", headers=bearer(tenant)).status_code == 200
        scrape = client.get("/metrics", headers=bearer("scrape-me-please"))
        assert scrape.status_code == 200 and "inferhub_workers" in scrape.text
        assert client.get("/metrics", headers=bearer("scrape-me-not")).status_code == 401
        # the token reads metrics only
        assert client.get("/v1/workers", headers=bearer("scrape-me-please")).status_code == 401


def test_an_open_hub_still_shows_queues_workers_and_metrics(client: TestClient) -> None:
    for route in ("/v1/queues", "/v1/workers", "/metrics"):
        assert client.get(route).status_code == 200, route


def test_the_dashboard_with_a_tenant_key_notes_the_admin_only_panels(
    transient: Stack, worker: Worker, keyed_keys: tuple[Path, str, str]
) -> None:
    path, tenant, _ = keyed_keys
    url = transient.hub("keyed", api_keys_file=path).url
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page()
        page.set_default_timeout(15_000)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        page.add_init_script(f"sessionStorage.setItem('inferhub.key', {tenant!r})")
        page.goto(url + "/")
        page.wait_for_selector("#conn[data-state=open]")
        page.wait_for_selector("#models-list li[data-model=digits]")
        page.wait_for_selector("#workers-admin", state="visible")
        page.wait_for_selector("#queues-admin", state="visible")
        assert not page.is_visible("#workers-table")
        assert page.inner_text("#stat-workers") == "\u2013"  # an en dash: nothing to show
        assert page.inner_text("#stat-waiting") == "\u2013"
        assert page.locator("#queues li").count() == 0
        assert not page.is_visible("#toast")
        # the page asks for nothing it may not see: its stats come without those panels
        assert errors == []
        browser.close()


# --- minor: a port already taken --------------------------------------------------------------


def test_serve_and_up_say_the_port_is_in_use(stack: Stack) -> None:
    with socket.socket() as other:  # another program on the port
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = str(other.getsockname()[1])
        served = inferhub("serve", "--port", port, env=cli_env(stack, redis_url=DEAD_REDIS))
        assert served.returncode == 2
        assert served.stderr.strip() == f"inferhub: port {port} is in use; pass --port"
        env = cli_env(stack)
        del env["INFERHUB_REDIS_URL"]
        upped = inferhub("up", "--port", port, env=env)
        assert upped.returncode == 2
        assert upped.stderr.strip() == f"inferhub: port {port} is in use; pass --port"
        assert "embedded Redis" not in upped.stdout


def test_a_second_up_does_not_take_the_running_hub_for_its_own(stack: Stack, open_hub: int) -> None:
    port = str(open_hub)
    env = cli_env(stack)
    del env["INFERHUB_REDIS_URL"]
    second = inferhub("up", "--port", port, env=env)
    assert "inferhub is up" not in second.stdout
    assert second.returncode == 2
    assert f"port {port} is in use; pass --port" in second.stderr
    assert ready(f"http://127.0.0.1:{port}")  # the first one is untouched
