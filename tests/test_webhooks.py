"""Webhooks across the module's real Redis database and worker: deliveries to a receiver the
test starts (an HTTP server on a loopback port), verified with the standardwebhooks package (an
independent verifier) and with the snippet of docs/protocol.md; retried while the receiver is
down, across a hub restart; refused for hosts and addresses that are not allowed; recorded on
the job.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from helpers import ROOT, TestClient, wait_for
from pydantic import SecretStr
from redis import Redis
from standardwebhooks import Webhook, WebhookVerificationError

from cli.processes import free_port
from contract import keys
from contract.settings import Settings
from hub.app import create_app
from hub.auth import new_key, set_webhook_secret
from hub.webhooks import signing
from hub.webhooks.targets import Refused, Targets

SECRET = signing.new_secret()
ROW = [[5.1, 3.5, 1.4, 0.2]]


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]  # names in lower case
    body: bytes


class Receiver:
    """A webhook receiver on a loopback port: keeps every request, answers 200. Until
    ``start`` (and after ``stop``) nothing listens on its port: a receiver that is down."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.requests: list[Received] = []
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> Receiver:
        received = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append(Received({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        serve = self._server.serve_forever
        threading.Thread(target=serve, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def wait(self, count: int) -> list[Received]:
        wait_for(lambda: len(self.requests) >= count, what=f"{count} webhook deliveries")
        return self.requests[:count]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    up = Receiver().start()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def hook_settings(settings: Settings) -> Settings:
    """The module's settings with a webhook secret, and retries quick enough for a test."""
    return settings.model_copy(
        update={
            "webhook_secret": SecretStr(SECRET),
            "webhook_backoff_s": 0.05,
            "webhook_backoff_max_s": 0.5,
            "webhook_timeout_s": 5.0,
        }
    )


@contextmanager
def hub(settings: Settings) -> Iterator[TestClient]:
    """A hub with its webhook sender; the only one of the module that signs, while it runs."""
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def hooks(hook_settings: Settings, worker: Any) -> Iterator[TestClient]:
    with hub(hook_settings) as client:
        yield client


def submit(client: TestClient, webhook: dict[str, Any], model: str = "iris", **headers: str) -> str:
    body = {"model": model, "data": ROW, "webhook": webhook}
    r = client.post("/v1/jobs", json=body, headers=headers)
    assert r.status_code in (200, 202), r.text
    assert r.json()["webhook"]["url"] == webhook["url"]
    return str(r.json()["id"])


def job_webhook(
    client: TestClient, job_id: str, until: Callable[[dict[str, Any]], bool], **headers: str
) -> dict[str, Any]:
    """The job's ``webhook`` once ``until`` holds for it."""

    def reached() -> dict[str, Any] | None:
        view = client.get(f"/v1/jobs/{job_id}", headers=headers).json()["webhook"]
        return view if until(view) else None

    return wait_for(reached, what=f"job {job_id}'s webhook to be recorded")


def delivered(view: dict[str, Any]) -> bool:
    return view["last_status"] == 200


def docs_verify() -> Callable[[str, dict[str, str], bytes], None]:
    """The verification snippet of docs/protocol.md, run as written."""
    text = (ROOT / "docs" / "protocol.md").read_text()
    section = text[text.index("## Webhooks") :]
    snippet = re.search(r"```python\n(.*?)```", section, re.S)
    assert snippet is not None
    scope: dict[str, Any] = {}
    exec(snippet.group(1), scope)
    return scope["verify"]  # type: ignore[no-any-return]


def test_delivery_is_signed_recorded_and_verified(
    hooks: TestClient, receiver: Receiver, redis: Redis
) -> None:
    job_id = submit(hooks, {"url": receiver.url})
    (got,) = receiver.wait(1)

    # the independent verifier: the standardwebhooks package
    event = Webhook(SECRET).verify(got.body, got.headers)
    assert event["type"] == "succeeded" and event["job_id"] == job_id
    assert got.headers["webhook-id"] == event["id"]  # receivers de-duplicate by it
    assert [o["name"] for o in event["data"]["outputs"]] == ["label", "probabilities"]
    assert got.headers["content-type"] == "application/json"
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(got.body.replace(b"succeeded", b"failed"), got.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(signing.new_secret()).verify(got.body, got.headers)
    # and the snippet the docs give
    verify = docs_verify()
    verify(SECRET, got.headers, got.body)
    with pytest.raises(ValueError, match="signature"):
        verify(signing.new_secret(), got.headers, got.body)

    view = job_webhook(hooks, job_id, delivered)
    assert view == {
        "url": receiver.url,
        "events": ["succeeded", "failed", "canceled"],
        "attempts": 1,
        "last_status": 200,
        "last_error": None,
        "delivered_at": view["delivered_at"],
    }
    assert view["delivered_at"] <= time.time()
    assert redis.zcard(keys.webhooks("default")) == 0  # nothing left to send


def test_the_events_asked_for_each_come_once(hooks: TestClient, receiver: Receiver) -> None:
    job_id = submit(hooks, {"url": receiver.url, "events": ["queued", "started", "succeeded"]})
    received = receiver.wait(3)
    events = [Webhook(SECRET).verify(got.body, got.headers) for got in received]
    assert sorted(e["type"] for e in events) == ["queued", "started", "succeeded"]
    assert {e["job_id"] for e in events} == {job_id}
    assert len({got.headers["webhook-id"] for got in received}) == 3
    job_webhook(hooks, job_id, lambda v: v["attempts"] == 3 and delivered(v))


def test_a_canceled_job_is_pushed(hooks: TestClient, receiver: Receiver, orphan_model: str) -> None:
    wait_for(lambda: hooks.get(f"/v1/models/{orphan_model}").status_code == 200)
    job_id = submit(hooks, {"url": receiver.url}, model=orphan_model)  # no worker takes it
    assert hooks.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "canceled"
    (got,) = receiver.wait(1)
    assert Webhook(SECRET).verify(got.body, got.headers)["type"] == "canceled"


def test_websocket_submit_takes_a_webhook(hooks: TestClient, receiver: Receiver) -> None:
    with hooks.websocket_connect("/v1/ws") as ws:
        message = {"type": "submit", "ref": 1, "model": "iris", "data": ROW}
        ws.send_json({**message, "webhook": {"url": receiver.url}})
        accepted = ws.receive_json()
    assert accepted["type"] == "accepted", accepted
    assert accepted["job"]["webhook"]["url"] == receiver.url
    (got,) = receiver.wait(1)
    assert Webhook(SECRET).verify(got.body, got.headers)["job_id"] == accepted["job"]["id"]


def test_retried_while_the_receiver_is_down_and_across_a_hub_restart(
    hook_settings: Settings, worker: Any, redis: Redis
) -> None:
    down = Receiver()  # nothing listens on its port yet
    with hub(hook_settings) as first:
        job_id = submit(first, {"url": down.url})
        view = job_webhook(first, job_id, lambda v: v["attempts"] >= 2)
        assert view["last_status"] is None and "connect" in view["last_error"]
        assert "delivered_at" not in view
    # the hub is gone; the delivery waits in Redis for the next one
    assert redis.zcard(keys.webhooks("default")) == 1
    up = down.start()
    try:
        with hub(hook_settings) as second:
            (got,) = up.wait(1)
            assert Webhook(SECRET).verify(got.body, got.headers)["job_id"] == job_id
            view = job_webhook(second, job_id, delivered)
            assert view["attempts"] >= 3 and view["last_error"] is None
            assert len(up.requests) == 1 and redis.zcard(keys.webhooks("default")) == 0
    finally:
        up.stop()


REFUSED = [
    pytest.param("http://10.0.0.1/hook", "'10.0.0.1' is not allowed", id="a private address"),
    pytest.param("http://169.254.169.254/latest", "not allowed", id="a metadata service"),
    pytest.param("http://[::ffff:10.0.0.1]/", "'::ffff:10.0.0.1' is not allowed", id="mapped"),
    pytest.param("http://0.0.0.0:9/", "not allowed", id="any address"),
    pytest.param("http://example.org/hook", "'example.org' is not allowed", id="a name not listed"),
    pytest.param("ftp://127.0.0.1/x", "http:// or https://", id="not http"),
    pytest.param("http://user:pw@127.0.0.1:9/x", "no user or password", id="credentials"),
    pytest.param("127.0.0.1:9/hook", "http:// or https://", id="no scheme"),
]


@pytest.mark.parametrize(("url", "says"), REFUSED)
def test_a_host_not_allowed_is_refused_at_submission(
    hooks: TestClient, redis: Redis, url: str, says: str
) -> None:
    before = redis.zcard(keys.owner_jobs("default", "anonymous"))
    r = hooks.post("/v1/jobs", json={"model": "iris", "data": ROW, "webhook": {"url": url}})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "webhook_not_allowed"
    assert says in error["message"]
    if "not allowed" in says:
        assert "INFERHUB_WEBHOOK_ALLOWED_HOSTS" in error["message"]  # what to set
    assert redis.zcard(keys.owner_jobs("default", "anonymous")) == before  # nothing written
    assert redis.zcard(keys.webhooks("default")) == 0


def test_a_hub_with_no_secret_takes_no_webhook(client: TestClient, receiver: Receiver) -> None:
    body = {"model": "iris", "data": ROW, "webhook": {"url": receiver.url}}
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "webhook_secret_missing"
    assert "INFERHUB_WEBHOOK_SECRET" in r.json()["error"]["message"]


def test_each_tenant_signs_with_its_own_secret(
    hook_settings: Settings, worker: Any, receiver: Receiver, tmp_path: Path
) -> None:
    path = tmp_path / "keys.toml"
    acme = {"Authorization": f"Bearer {new_key(path, 'acme', ['submit', 'read'])}"}
    globex = {"Authorization": f"Bearer {new_key(path, 'globex', ['submit', 'read'])}"}
    acme_secret = set_webhook_secret(path, "acme")
    assert set_webhook_secret(path, "acme") != acme_secret  # replaced
    acme_secret = set_webhook_secret(path, "acme")
    assert path.stat().st_mode & 0o077 == 0  # it holds secrets: its owner's only
    keyed = hook_settings.model_copy(update={"api_keys_file": path, "webhook_secret": None})
    with hub(keyed) as secure:
        job_id = submit(secure, {"url": receiver.url}, **acme)
        (got,) = receiver.wait(1)
        assert Webhook(acme_secret).verify(got.body, got.headers)["job_id"] == job_id
        with pytest.raises(WebhookVerificationError):
            Webhook(SECRET).verify(got.body, got.headers)
        body = {"model": "iris", "data": ROW, "webhook": {"url": receiver.url}}
        r = secure.post("/v1/jobs", json=body, headers=globex)
        assert r.status_code == 422 and r.json()["error"]["code"] == "webhook_secret_missing"
        assert "inferhub keys webhook-secret --tenant globex" in r.json()["error"]["message"]


# ---- the checks alone (no request leaves the machine: every host is refused or local)


async def test_an_address_that_is_not_public_must_be_listed_as_one() -> None:
    # any name, but no address besides public ones: loopback is refused, even by its name
    anywhere = Targets(["*"])
    with pytest.raises(Refused, match=re.escape("'127.0.0.1' is not allowed")):
        await anywhere.resolve("http://127.0.0.1/hook")
    with pytest.raises(
        Refused, match=re.escape("resolves to 127.0.0.1, which is not a public address")
    ):
        await anywhere.resolve("http://localhost/hook")
    # a network listed: its addresses pass (checked only, nothing is sent)
    (target,) = await Targets(["10.0.0.0/8"]).resolve("https://10.1.2.3:8443/x")
    assert str(target.url) == "https://10.1.2.3:8443/x"
    assert Targets(["*.example.org"]).check_url("https://hooks.example.org/x").host == (
        "hooks.example.org"
    )
    with pytest.raises(Refused):
        Targets(["*.example.org"]).check_url("https://example.org.evil.net/x")


async def test_a_name_is_pinned_to_the_address_that_was_checked() -> None:
    targets = await Targets(["localhost", "127.0.0.1", "::1"]).resolve("http://localhost:9/x")
    assert {t.url.host for t in targets} <= {"127.0.0.1", "::1"}
    assert all(t.headers == {"Host": "localhost:9"} for t in targets)


def test_a_bad_allowed_hosts_entry_stops_the_hub() -> None:
    with pytest.raises(ValueError, match="INFERHUB_WEBHOOK_ALLOWED_HOSTS: 'http://x' is not"):
        Targets(["http://x"])


def test_signatures_follow_the_specification() -> None:
    # the example of the Standard Webhooks specification
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    headers = signing.headers(
        secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}'
    )
    assert headers["webhook-signature"] == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    for bad in ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_not base64!", "whsec_c2hvcnQ="):
        with pytest.raises(ValueError):
            signing.secret_key(bad)
